"""The grading child: runs a submission's cells, then the student's side of each case.

Explained in book/instructors.md. Started by :mod:`fmlab.grading.runner`, behind the boundary
of :mod:`fmlab.grading.boundary`, as ``python -I -m fmlab.grading.child JOB_FD PROGRESS_FD CASES_FD``,
with a scrubbed environment, a fresh working folder, no stdin and a memory limit.

The job (plain data, read from the open file JOB_FD with ``weights_only=True``) names the
public checks file and the notebook's code cells (already converted by IPython's input
transformer); no case is in it. The child:

1. imports torch, fmlab, the public checks and the modules they declare (``MODULES``), then
   installs the audit hook of :mod:`fmlab.grading.sandbox`;
2. executes the code cells in order in one namespace that has what a notebook has
   (``display``, ``get_ipython()``); a cell that raises (``SystemExit`` included) is recorded and
   the next cell runs;
3. says ``ready``, then reads the cases from the pipe CASES_FD, one at a time: the parent sends
   the next only once the last one's result has come back, so no case's inputs exist in this
   process before the notebook's cells have run or before the case begins;
4. for each case calls ``question.run(ns, case)``, converts the value with ``to_data`` and saves
   it at once as its own file (written atomically), then says ``done``.

Each cell and case stops itself at its CPU-time limit (``ITIMER_PROF``) or at its wall-clock
ceiling, :data:`~fmlab.grading.messages.WALL_RATIO` times longer (``ITIMER_REAL``); the parent
enforces both from outside, with its own clock. Progress goes as lines on the pipe PROGRESS_FD
(``start``, ``cell i``, ``ready``, ``done k``, ``finished``). Nothing this process writes is
trusted: the parent re-checks every value and grades it itself, and a forged line gains nothing
(a ``done`` sent early only ends the case without its result).
"""
from __future__ import annotations

import builtins
import importlib
import io
import os
import resource
import signal
import sys
import time

from .messages import WALL_RATIO, TimeLimit, cpu_limit, describe_error, wall_ceiling

# Magics whose argument or body is ordinary code that a notebook runs (the rest do nothing).
RUN_BODY_OF = {"time", "timeit", "capture", "prun"}
# %timeit's options (IPython's "n:r:tcp:qo"): those that take a value, and the flags.
TIMEIT_VALUES, TIMEIT_FLAGS = {"-n", "-r", "-p"}, {"-t", "-c", "-q", "-o"}


def timeit_statement(line: str) -> tuple[str, bool]:
    """``%timeit``'s line without its options (``-n 3``, ``-n3``, ``-r 2 -q -o``), and whether it
    asked for a result (``-o``).

    >>> timeit_statement("-n 3 -r2 -o -q f(x, -1)")
    ('f(x, -1)', True)
    >>> timeit_statement("-qo -n1 f()")
    ('f()', True)
    >>> timeit_statement("x - 1")
    ('x - 1', False)
    """
    words, i, result = line.split(" "), 0, False
    while i < len(words):
        word = words[i]
        if word == "":
            i += 1
        elif word in TIMEIT_VALUES:
            i += 2
        elif word[:2] in TIMEIT_VALUES and word[2:].isdigit():
            i += 1
        elif word[:1] == "-" and len(word) > 1 and {f"-{c}" for c in word[1:]} <= TIMEIT_FLAGS:
            result = result or "o" in word[1:]  # -o, or flags run together: -qo
            i += 1
        else:
            break
    return " ".join(words[i:]), result


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def display(*objs, **kwargs) -> None:
    """``display(...)`` while grading: nothing to show, nothing fails."""
    return None


class Shell:
    """What ``get_ipython()`` returns while grading: shell commands and other magics do nothing;
    the code of ``%time`` / ``%%time`` / ``%%capture`` (and the like) runs, as in a notebook."""

    def __init__(self, ns: dict, notes: list[str]):
        self.user_ns = ns
        self._notes = notes

    def _run(self, source: str, where: str) -> None:
        from IPython.core.inputtransformer2 import TransformerManager

        exec(compile(TransformerManager().transform_cell(source), where, "exec"), self.user_ns)

    def run_cell_magic(self, name: str, line: str, cell: str):
        if name == "writefile":  # into the working folder, which is on sys.path
            args = line.split()
            append = "-a" in args or "--append" in args
            target = next((a for a in args if not a.startswith("-")), None)
            if target is None:
                self._notes.append("a %%writefile cell names no file")
                return None
            with open(target, "a" if append else "w", encoding="utf-8") as f:
                f.write(cell)
            return None
        if name not in RUN_BODY_OF:
            self._notes.append(f"a %%{name} cell was skipped while grading")
            return None
        if name == "timeit":  # %%timeit -n 3 setup: the setup, then the body, once
            setup, _ = timeit_statement(line)
            self._run(setup, "<cell %%timeit setup>")
        self._run(cell, f"<cell %%{name}>")

    def run_line_magic(self, name: str, line: str, _stack_depth: int = 1):
        if name == "timeit":  # %timeit -n 3 -o f(): the statement runs once, timed
            statement, result = timeit_statement(line)
            start = time.perf_counter()
            self._run(statement, "<line %timeit>")
            if result:
                from IPython.core.magics.execution import TimeitResult

                took = time.perf_counter() - start
                return TimeitResult(1, 1, took, took, [took], 0.0, 3)
        elif name in RUN_BODY_OF:  # %time x = f(): the statement runs, once
            self._run(line, f"<line %{name}>")

    def getoutput(self, cmd, split=True):
        return []

    def __getattr__(self, name):  # run_line_magic, system, magic, ...: harmless no-ops
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


class Child:
    def __init__(self, job: dict, progress_fd: int, cases_fd: int):
        self.job = job
        self.progress = progress_fd
        self.cases = cases_fd
        self.memory_mb = int(job.get("memory_mb", 0))
        self.cell_errors: list[str] = []

    def emit(self, line: str) -> None:
        try:
            os.write(self.progress, (line + "\n").encode())
        except OSError:
            os._exit(3)  # the parent is gone: nobody to grade for

    def timed(self, limit: float, fn, *args):
        """``fn(*args)``, stopped by :class:`TimeLimit` after ``limit`` s of CPU time or
        ``WALL_RATIO × limit`` s of wall time."""
        wall0, cpu0 = time.monotonic(), _cpu()

        def stop(signum, frame):
            cpu, wall = _cpu() - cpu0, time.monotonic() - wall0
            raise TimeLimit((cpu_limit if signum == signal.SIGPROF else wall_ceiling)(limit, cpu, wall))

        signal.signal(signal.SIGPROF, stop)
        signal.signal(signal.SIGALRM, stop)
        signal.setitimer(signal.ITIMER_PROF, max(limit, 0.01))
        signal.setitimer(signal.ITIMER_REAL, max(limit * WALL_RATIO, 0.01))
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _read(self, n: int) -> bytes | None:
        data = bytearray()
        while len(data) < n:
            chunk = os.read(self.cases, min(n - len(data), 1 << 20))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def next_case(self) -> dict | None:
        """The next case from the parent (``<length>\\n`` and that many bytes of a saved dict),
        or None when it sends ``0`` or is gone."""
        import torch

        header = b""
        while not header.endswith(b"\n"):
            byte = os.read(self.cases, 1)
            if not byte or len(header) > 20:
                return None
            header += byte
        size = int(header) if header.strip().isdigit() else 0
        data = self._read(size) if size else None
        return None if data is None else torch.load(io.BytesIO(data), weights_only=True)

    def run_cells(self, ns: dict) -> None:
        limit = float(self.job["cell_timeout"])
        for i, src in enumerate(self.job["cells"]):
            self.emit(f"cell {i}")
            first = next((l.strip() for l in src.splitlines() if l.strip()), "")
            where = f"cell {i + 1} ({first[:40]!r})"
            try:
                code = compile(src, f"<cell {i + 1}>", "exec")
            except SyntaxError as err:
                self.cell_errors.append(
                    f"code {where} has a syntax error at line {err.lineno}: {err.msg}; it did not run")
                continue
            try:
                self.timed(limit, exec, code, ns)
            except BaseException as err:  # noqa: BLE001 - any failure of a cell is the student's
                self.cell_errors.append(f"code {where} {describe_error(err, self.memory_mb)}")

    def run_case(self, question, ns: dict, case: dict, limit: float) -> dict:
        from .forbid import blocked, static_problems
        from .spec import NotData, seeded, to_data

        missing = [name for name in question.requires if name not in ns]
        if missing:
            hint = f" ({len(self.cell_errors)} code cell(s) failed, see the notes)" if self.cell_errors else ""
            return {"ok": False, "error": f"{', '.join(missing)} is not defined in the notebook{hint}"}
        delegated = [p for name in question.requires for p in static_problems(ns[name], question.forbid, question.id)]
        if delegated:
            return {"ok": False, "error": delegated[0]}
        try:
            def call():
                with seeded(), blocked(question.forbid, question.id):
                    return to_data(question.run(ns, case))

            value = self.timed(limit, call)
        except NotData as err:
            return {"ok": False, "error": f"returned {err}; return tensors, numbers, lists or dicts"}
        except BaseException as err:  # noqa: BLE001
            return {"ok": False, "error": describe_error(err, self.memory_mb)}
        return {"ok": True, "value": value}

    def save(self, sandbox, name: str, result: dict) -> None:
        import torch

        from ..runtime import atomic_write
        from .sandbox import open_gate

        final = os.path.join(self.job["out"], name)

        def write(value: dict):  # serialized first: a failed write leaves no open file behind
            buffer = io.BytesIO()
            torch.save(value, buffer)
            atomic_write(final, lambda tmp: tmp.write_bytes(buffer.getbuffer()))

        with open_gate(sandbox):
            try:
                write(result)
            except Exception as err:  # noqa: BLE001 - e.g. the file-size limit, a full folder
                write({"ok": False, "error": f"the result could not be saved: {err}"})

    def main(self) -> None:
        from . import sandbox as sandbox_mod
        from .spec import load_module, load_questions

        checks = load_module(self.job["checks"])
        # Modules the lab's notebook uses, imported before the audit hook is installed: the
        # checks file declares them as MODULES (its own imports are loaded already).
        # torch._dynamo is torch's own: the first torch.optim optimizer built in a process
        # imports it (1.3-2 s of CPU measured here), which would be charged to whichever case
        # first builds one, and a case's CPU limit can be a few seconds.
        for name in ("torch._dynamo", *getattr(checks, "MODULES", ())):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a missing optional module is the notebook's problem
                pass
        questions = {q.id: q for q in load_questions(self.job["checks"], checks)}
        sys.dont_write_bytecode = True
        os.chdir(self.job["cwd"])
        sys.path.insert(0, self.job["cwd"])  # as a notebook's folder is: %%writefile, then import
        box = sandbox_mod.install(self.job["writable"], self.job["forbidden"], [self.job["out"]],
                                  allow_processes=bool(self.job.get("processes")))
        self.emit("start")

        ns = {"__name__": "__main__", "__builtins__": builtins, "display": display}
        shell = Shell(ns, self.cell_errors)
        ns["get_ipython"] = lambda: shell
        self.run_cells(ns)
        notes = {"ok": True, "value": {"cell_errors": list(self.cell_errors)}}
        self.save(box, "notes.pt", notes)
        self.emit("ready")  # the parent reads the notes now, before any case runs
        timed_out: set[str] = set()
        while (entry := self.next_case()) is not None:
            index, qid = entry["index"], entry["qid"]
            if qid in timed_out:  # the next case would most likely hang too: save the time
                result = {"ok": False, "error": f"not run: an earlier case of {qid} timed out"}
            else:
                result = self.run_case(questions[qid], ns, entry["case"], float(entry["timeout"]))
                if result.get("error", "").startswith("timed out"):
                    timed_out.add(qid)
            self.save(box, f"case-{index}.pt", result)
            self.emit(f"done {index}")
        self.emit("finished")


def _limit_self(memory_mb: int) -> None:
    """Lower this process's own memory limit (the parent also sets it, where the OS allows)."""
    try:
        value = memory_mb << 20
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard == resource.RLIM_INFINITY or value < hard:
            resource.setrlimit(resource.RLIMIT_DATA, (value, value))
    except (ValueError, OSError):
        pass


def main(argv: list[str]) -> None:
    import torch

    with os.fdopen(int(argv[1]), "rb") as f:
        job = torch.load(f, weights_only=True)
    if job.get("memory_mb"):
        _limit_self(int(job["memory_mb"]))
    Child(job, int(argv[2]), int(argv[3])).main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip atexit handlers and finalizers the student may have registered


if __name__ == "__main__":
    main(sys.argv)
