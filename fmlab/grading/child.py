"""The grading child: runs a submission's cells, then the student's side of each case.

Explained in book/instructors.md. Started by :mod:`fmlab.grading.grader` as
``python -I -m fmlab.grading.child JOB_FILE PROGRESS_FD``, with a scrubbed environment, a fresh
working folder, no stdin, a memory limit and its own process group.

The job file (plain data, loaded with ``weights_only=True``) names the public checks file, the
notebook's code cells and the cases to run, with inputs the parent chose. The child:

1. imports torch, fmlab and the public checks, then installs the audit hook of
   :mod:`fmlab.grading.sandbox`;
2. executes the code cells in order in one namespace; a cell that raises (``SystemExit``
   included) is recorded and the next cell runs;
3. for each case calls ``question.run(ns, case)``, converts the value with ``to_data`` and saves
   it at once as its own file (``torch.save``, then an atomic rename), so a later crash loses
   nothing.

It reports progress as lines on the pipe PROGRESS_FD (``start``, ``cell i``, ``ready``,
``case k``, ``done k``, ``finished``); the parent enforces the hard time limits with them.
Nothing this process writes is trusted: the parent re-checks every value and grades it itself.
"""
from __future__ import annotations

import builtins
import importlib
import os
import signal
import sys
import traceback


class TimeLimit(BaseException):
    """Raised by the alarm when a cell or case runs past its limit (not an Exception, so a
    student's ``except Exception`` does not swallow it)."""


def _alarm(signum, frame):
    raise TimeLimit()


def _student_frame(err: BaseException) -> str:
    """' (line 3 of accuracy, cell 5)' for the innermost frame of the student's own code."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename.startswith("<cell ")]
    if not frames:
        return ""
    f = frames[-1]
    return f" (line {f.lineno} of {f.name}, {f.filename.strip('<>')})".replace("of <module>, ", "of ")


def describe_error(err: BaseException, limit: float, memory_mb: int) -> str:
    """A message for the student about an exception from their code."""
    if isinstance(err, TimeLimit):
        return f"timed out after {limit:g} s"
    if isinstance(err, SystemExit):
        return (f"called sys.exit({err.code!r}) / exit(), which would stop the whole program; "
                "return a value instead")
    if isinstance(err, MemoryError) or "can't allocate memory" in str(err) or "bad_alloc" in str(err):
        return f"ran out of memory (the limit is {memory_mb} MB)"
    if isinstance(err, NotImplementedError):
        return "not implemented yet (the function still raises NotImplementedError)"
    text = str(err).strip().splitlines()
    first = text[0][:300] if text else ""
    return f"raised {type(err).__name__}: {first}{_student_frame(err)}"


class Child:
    def __init__(self, job: dict, progress_fd: int):
        self.job = job
        self.progress = progress_fd
        self.memory_mb = int(job.get("memory_mb", 0))
        self.cell_errors: list[str] = []

    def emit(self, line: str) -> None:
        try:
            os.write(self.progress, (line + "\n").encode())
        except OSError:
            os._exit(3)  # the parent is gone: nobody to grade for

    def timed(self, limit: float, fn, *args):
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, max(limit, 0.01))
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

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
                if isinstance(err, TimeLimit):
                    msg = f"ran longer than {limit:g} s and was stopped"
                else:
                    msg = describe_error(err, limit, self.memory_mb)
                self.cell_errors.append(f"code {where} {msg}")

    def run_case(self, question, ns: dict, case: dict, limit: float) -> dict:
        from .spec import NotData, seeded, to_data

        missing = [name for name in question.requires if name not in ns]
        if missing:
            hint = f" ({len(self.cell_errors)} code cell(s) failed, see the notes)" if self.cell_errors else ""
            return {"ok": False, "error": f"{', '.join(missing)} is not defined in the notebook{hint}"}
        from .forbid import blocked, static_problems

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
            return {"ok": False, "error": describe_error(err, limit, self.memory_mb)}
        return {"ok": True, "value": value}

    def save(self, sandbox, name: str, result: dict) -> None:
        import torch

        from .sandbox import open_gate

        final = os.path.join(self.job["out"], name)
        tmp = final + ".tmp"
        with open_gate(sandbox):
            try:
                torch.save(result, tmp)
            except Exception as err:  # noqa: BLE001 - e.g. the file-size limit
                torch.save({"ok": False, "error": f"the result could not be saved: {err}"}, tmp)
            os.replace(tmp, final)

    def main(self) -> None:
        import torch  # noqa: F401 - imported before the hook, as are fmlab and the checks

        import fmlab
        from . import sandbox as sandbox_mod
        from .spec import load_questions

        from .spec import load_module

        checks = load_module(self.job["checks"])
        # Modules the lab's notebook uses, imported while reading files is unrestricted: the
        # checks file declares them as MODULES (its own imports are loaded already).
        for name in ("numpy", "tqdm.auto", *getattr(checks, "MODULES", ())):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a missing optional module is the notebook's problem
                pass
        del fmlab
        questions = {q.id: q for q in load_questions(self.job["checks"], checks)}
        sys.dont_write_bytecode = True
        os.chdir(self.job["cwd"])
        box = sandbox_mod.install(self.job["writable"], self.job["forbidden"], [self.job["out"]])
        self.emit("start")

        ns = {"__name__": "__main__", "__builtins__": builtins}
        self.run_cells(ns)
        self.emit("ready")
        notes = {"ok": True, "value": {"cell_errors": list(self.cell_errors)}}
        self.save(box, "notes.pt", notes)
        timed_out: set[str] = set()
        for entry in self.job["cases"]:
            index, qid = entry["index"], entry["qid"]
            self.emit(f"case {index}")
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
    """Lower this process's own limits (the parent also sets them, where the OS allows)."""
    import resource

    for which, value in ((resource.RLIMIT_DATA, memory_mb << 20), (resource.RLIMIT_CORE, 0)):
        try:
            soft, hard = resource.getrlimit(which)
            if hard == resource.RLIM_INFINITY or value < hard:
                resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass


def main(argv: list[str]) -> None:
    import torch

    job = torch.load(argv[1], weights_only=True)
    if job.get("memory_mb"):
        _limit_self(int(job["memory_mb"]))
    try:
        os.remove(argv[1])  # the parent keeps the case inputs; nothing is left to read back
    except OSError:
        pass
    Child(job, int(argv[2])).main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip atexit handlers and finalizers the student may have registered


if __name__ == "__main__":
    main(sys.argv)
