"""The parent's side of one grading child: spawn it behind its boundary, enforce the limits,
collect its files, and leave no process of it alive.

Explained in book/instructors.md. :func:`run_in_children` runs a submission's cases in a child
process (:mod:`fmlab.grading.child`) started through :mod:`fmlab.grading.boundary`, starting a
fresh child for the remaining cases when one dies or hangs, and returns what each case's child
produced, as checked plain data.

Limits count the student's work, not the machine's load: a cell's or case's limit is CPU time
(measured by the kernel for the child and the children it waited for), and a wall-clock ceiling
:data:`~fmlab.grading.messages.WALL_RATIO` times longer stops what sleeps. The child runs one
torch thread by default, so that its threads never wait for each other on a busy machine. A
case stopped at the wall-clock ceiling while the machine was busy (load above its cores) runs
once more in a fresh child; if it is stopped again, its message says to regrade it.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import boundary, messages
from .spec import NotData, to_data

GRACE_S = 3.0  # the child stops itself at a limit; the parent kills it this much later
STARTUP_S = 120.0  # wall time to start the child and import torch, fmlab and the checks
WALL_MARK = "stopped at the wall-clock ceiling"


class GradingError(RuntimeError):
    """The grader itself could not run (not the student's fault): a bad checks file, a child
    that cannot even start. ``fmlab grade`` exits with status 2."""


@dataclass
class Limits:
    """Resource limits of the grading child.

    ``case_timeout`` (CPU seconds) overrides every question's own ``timeout`` when set;
    ``cell_timeout`` is CPU seconds per notebook cell. A cell or case also stops at a wall-clock
    ceiling of ``WALL_RATIO`` times its CPU limit. ``total_timeout`` is the wall-clock limit of
    the whole submission. ``threads``: torch (OpenMP, MKL) threads of the child.
    """

    case_timeout: float | None = None
    cell_timeout: float = 60.0
    total_timeout: float = 900.0
    memory_mb: int = 4096
    threads: int = 1
    file_mb: int = 512


@dataclass
class Entry:
    """One case to run: which question, its prepared inputs, its limit, and what came back."""

    index: int
    qid: str
    name: str
    hidden: bool
    case: dict
    timeout: float
    got: object = None
    error: str | None = None  # set when the child could not produce a value
    done: bool = False
    retried: bool = False  # run again once after a wall-clock stop on a busy machine


@dataclass
class Outcome:
    notes: list[str] = field(default_factory=list)  # about the notebook's cells
    children: int = 0


_warned: set[str] = set()


def isolation() -> boundary.Isolation:
    """The boundary this grader gives its children; its warning is printed once."""
    try:
        iso = boundary.detect()
    except ValueError as err:
        raise GradingError(str(err)) from None
    if iso.warning and iso.warning not in _warned:
        _warned.add(iso.warning)
        print(f"fmlab grade: {iso.warning}", file=sys.stderr)
    return iso


# multiprocessing puts UNIX sockets in the temporary folder (DataLoader workers share tensors
# through them), and a socket's path may be at most 107 bytes: a deep working folder makes
# the workers wait forever for data that never comes.
SOCKET_ROOM = 60


def _child_env(workdir: str, limits: Limits, private_tmp: bool = False) -> dict:
    """The child's whole environment. Its temporary folder is its working folder, or /tmp
    where that is its own (``private_tmp``, with namespaces) or the working folder's path
    leaves too little room for a socket's name."""
    threads = str(max(1, int(limits.threads or 1)))
    tmp = "/tmp" if private_tmp or len(workdir) > SOCKET_ROOM else workdir
    return {
        "PATH": os.defpath, "HOME": workdir, "TMPDIR": tmp, "LANG": "C.UTF-8",
        "USER": "grader", "LOGNAME": "grader",
        "FMLAB_GRADING": "1", "FMLAB_PROFILE": "quick", "FMLAB_DEVICE": "cpu",
        "FMLAB_DATA": os.path.join(workdir, "data"), "CUDA_VISIBLE_DEVICES": "",
        "MPLBACKEND": "Agg", "MPLCONFIGDIR": workdir, "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "FMLAB_THREADS": threads,
    }


def _death_message(proc: subprocess.Popen, log: Path, memory_mb: int) -> str:
    code = proc.returncode
    try:
        tail = log.read_bytes()[-4000:].decode("utf-8", "replace")
    except OSError:
        tail = ""
    if messages.mentions_out_of_memory(tail):
        return messages.out_of_memory(memory_mb)
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"the process was killed by {name} (out of memory, or a crash in native code)"
    return f"the process exited (os._exit / sys.exit, status {code})"


def _private(path: Path):
    """``path`` opened for writing, readable by its owner only."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


class _Child:
    """One child process behind its boundary, and the parent's view of its progress."""

    def __init__(self, root: Path, attempt: int, job: dict, limits: Limits, forbidden: list[str],
                 iso: boundary.Isolation):
        self.root, self.limits, self.iso = root, limits, iso
        self.uid = boundary.allocate_uid() if iso.own_uid else None
        self.work = root / f"work-{attempt}"
        self.out = root / f"out-{attempt}"
        for folder in (self.work, self.out):
            folder.mkdir(mode=0o700)
            if self.uid is not None:
                os.chown(folder, self.uid, self.uid)
        self.log = root / f"log-{attempt}.txt"
        job_file, cfg_file = root / f"job-{attempt}.pt", root / f"boundary-{attempt}.json"
        hidden = forbidden + [str(root / "job"), str(job_file), str(cfg_file)]
        # With namespaces the child's /tmp is its own: multiprocessing's sockets go there
        writable = [str(self.work)] + (["/tmp"] if iso.namespaces else [])
        job = dict(job, cwd=str(self.work), out=str(self.out), writable=writable,
                   forbidden=hidden, memory_mb=limits.memory_mb, processes=iso.processes_allowed)
        with _private(job_file) as f:  # 0600: no other child's uid may read it
            torch.save(job, f)
        cfg = boundary.child_config(iso, uid=self.uid, keep=[str(self.work), str(self.out)],
                                    hide=forbidden, read=[job["checks"]], cwd=str(self.work),
                                    cpu_s=limits.total_timeout * max(1, int(limits.threads or 1)),
                                    memory_mb=limits.memory_mb, file_mb=limits.file_mb)
        with _private(cfg_file) as f:
            f.write(json.dumps(cfg).encode())
        job_fd, cfg_fd = os.open(job_file, os.O_RDONLY), os.open(cfg_file, os.O_RDONLY)
        read_fd, write_fd = os.pipe()
        cmd = [*iso.prefix(), sys.executable, "-I", "-S", boundary.__file__, str(cfg_fd), "--",
               sys.executable, "-I", "-m", "fmlab.grading.child", str(job_fd), str(write_fd)]
        try:
            with _private(self.log) as log:
                self.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=_child_env(str(self.work), limits, iso.namespaces), cwd=str(self.work),
                    pass_fds=(write_fd, job_fd, cfg_fd), start_new_session=True)
        finally:
            for fd in (write_fd, job_fd, cfg_fd):
                os.close(fd)
        self.fd = read_fd
        self.buffer = b""
        self.pid: int | None = None if iso.namespaces else self.proc.pid  # the Python child
        self.progress: _Progress | None = None
        self.stopped: str | None = None  # why the parent stopped it, if it did

    def attach(self) -> None:
        """Learn the child's pid: in a PID namespace, the first process, child of unshare."""
        if self.iso.namespaces and self.pid is None:
            self.pid = boundary.pid_of_first(self.proc.pid)

    def cpu(self) -> float:
        self.attach()
        value = boundary.cpu_seconds(self.pid) if self.pid else None
        return value or 0.0

    def lines(self, timeout: float) -> list[str] | None:
        """Progress lines that arrived within ``timeout``; None once the pipe is closed."""
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if not ready:
            return []
        data = os.read(self.fd, 65536)
        if not data:
            return None
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        return [c.decode("ascii", "replace").strip() for c in complete]

    def kill(self) -> None:
        self.attach()
        if self.iso.namespaces and self.pid:
            try:  # the first process of the namespace: the kernel then kills all the others
                os.kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=10)  # unshare returns once the namespace is empty
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def close(self) -> None:
        """Kill the child and every process it started, wherever they went (``setsid``
        included), before anything it produced is read. In a PID namespace, ``unshare`` returns
        only once its first process is reaped, which the kernel allows only once every other
        process of the namespace is gone; with a uid of its own, no process of that uid may be
        left either."""
        if self.proc.poll() is None:
            self.kill()
        self.proc.wait()
        if not self.iso.namespaces:
            try:  # its process group, in case a process outlived it
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not boundary.sweep(uid=self.uid):
            raise GradingError("a process of the student's code could not be killed")
        os.close(self.fd)


def _load_result(path: Path, file_mb: int) -> tuple[object, str | None]:
    """A case file from the child: (value, None) or (None, message). Only a plain file the child
    wrote itself (no link) holding plain data passes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None, "the result file is not a plain file (a link?)"
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_size > file_mb << 20:
            return None, "the result file is not a plain file of its own"
        try:
            raw = torch.load(f, weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - anything that is not plain data is refused
            return None, f"the returned value is not plain data ({type(err).__name__})"
    if type(raw) is not dict or type(raw.get("ok")) is not bool:
        return None, "the result file is malformed"
    if not raw["ok"]:
        return None, str(raw.get("error"))[:2000]
    try:
        return to_data(raw.get("value")), None
    except NotData as err:
        return None, f"returned {err}"


def _remove(root: Path) -> None:
    def retry(func, path, _exc):  # a folder the child made unreadable to its owner
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass

    shutil.rmtree(root, onerror=retry)


def run_in_children(entries: list[Entry], cells: list[str], checks: Path, limits: Limits,
                    forbidden: list[str], deadline: float) -> Outcome:
    """Fill each entry's ``got`` or ``error`` by running the cases in child processes."""
    iso = isolation()
    outcome = Outcome()
    root = Path(tempfile.mkdtemp(prefix="fmlab-grade-"))
    if iso.own_uid:
        os.chmod(root, 0o711)  # each child's uid reaches its own folders, lists nothing
    (root / "job").mkdir()
    try:
        attempt = 0
        while True:
            remaining = [e for e in entries if not e.done]
            if not remaining:
                break
            attempt += 1
            if time.monotonic() > deadline:
                for e in remaining:
                    e.done, e.error = True, f"not run: the whole submission ran past its {limits.total_timeout:g} s limit"
                break
            job = {"checks": str(checks), "cells": cells, "cell_timeout": limits.cell_timeout,
                   "cases": [{"index": e.index, "qid": e.qid, "case": e.case, "timeout": e.timeout}
                             for e in remaining]}
            child = _Child(root, attempt, job, limits, forbidden, iso)
            outcome.children += 1
            try:
                _watch(child, remaining, limits, deadline)
            finally:
                child.close()
            _collect(child, remaining, limits, outcome, first=attempt == 1)
    finally:
        _remove(root)
    return outcome


class _Progress:
    """Where the child is: its phase, the current cell or case, and when that began."""

    def __init__(self, child: _Child, remaining: list[Entry], limits: Limits):
        self.child, self.limits = child, limits
        self.by_index = {e.index: e for e in remaining}
        self.order = [e.index for e in remaining]
        self.phase, self.limit = "startup", STARTUP_S
        self.wall0, self.cpu0 = time.monotonic(), 0.0
        self.last_cell, self.pos, self.current, self.finished = -1, 0, None, False

    def begin(self, limit: float) -> None:
        self.limit, self.wall0, self.cpu0 = limit, time.monotonic(), self.child.cpu()

    def read(self, line: str) -> None:
        kind, _, arg = line.partition(" ")
        if kind == "start" and self.phase == "startup":
            self.child.attach()
            self.phase = "cells"
            self.begin(self.limits.cell_timeout)
        elif kind == "cell" and self.phase == "cells" and arg.isdigit() and int(arg) > self.last_cell:
            self.last_cell = int(arg)
            self.begin(self.limits.cell_timeout)
        elif kind == "ready" and self.phase == "cells":
            self.phase = "cases"
        elif kind == "case" and self.phase == "cases" and arg.lstrip("-").isdigit():
            # only the next expected case may start: progress lines never move backwards
            if self.pos < len(self.order) and int(arg) == self.order[self.pos]:
                self.current = self.by_index[self.order[self.pos]]
                self.pos += 1
                self.begin(self.current.timeout)
        elif kind == "done" and self.current is not None and arg == str(self.current.index):
            self.current = None
        elif kind == "finished" and self.phase == "cases":
            self.finished = True

    def over(self, deadline: float) -> str | None:
        """Why the child must be stopped now, if it must."""
        now = time.monotonic()
        if now > deadline:
            return f"the whole submission ran past its {self.limits.total_timeout:g} s limit"
        wall = now - self.wall0
        if self.phase == "startup":
            return f"the grading process did not start within {STARTUP_S:g} s" if wall > STARTUP_S else None
        if self.phase == "cases" and self.current is None:
            return None  # between cases: the child is saving a result
        cpu = self.child.cpu() - self.cpu0
        if cpu > self.limit + GRACE_S:
            return messages.cpu_limit(self.limit, cpu, wall)
        if wall > self.limit * messages.WALL_RATIO + GRACE_S:
            return messages.wall_ceiling(self.limit, cpu, wall)
        return None


def _watch(child: _Child, remaining: list[Entry], limits: Limits, deadline: float) -> None:
    """Follow one child's progress and enforce the hard limits."""
    progress = child.progress = _Progress(child, remaining, limits)
    while True:
        lines = child.lines(0.5)
        if lines is None or (not lines and child.proc.poll() is not None):
            break  # the child finished or died (a process it left may still hold the pipe)
        for line in lines:
            progress.read(line)
        why = progress.over(deadline)
        if why is not None and child.proc.poll() is None:
            child.stopped = why
            child.kill()
            break
    child.proc.wait()
    if progress.phase == "startup":
        tail = child.log.read_bytes()[-3000:].decode("utf-8", "replace") if child.log.exists() else ""
        raise GradingError(f"the grading process could not start (status {child.proc.returncode}):\n{tail}")


def _collect(child: _Child, remaining: list[Entry], limits: Limits, outcome: Outcome, first: bool) -> None:
    """Read every case file the child wrote (whatever happened afterwards), and blame what
    stopped it on the case it was running."""
    progress = child.progress
    notes_file = child.out / "notes.pt"
    if first and notes_file.exists():
        value, _ = _load_result(notes_file, limits.file_mb)
        if isinstance(value, dict) and isinstance(value.get("cell_errors"), list):
            outcome.notes = [str(n) for n in value["cell_errors"]][:50]
    for e in remaining:
        path = child.out / f"case-{e.index}.pt"
        if os.path.lexists(path):
            e.got, e.error = _load_result(path, limits.file_mb)
            e.done = True
    if progress.finished:
        for e in remaining:
            if not e.done:
                e.done, e.error = True, "no result came back for this case"
        _retry_if_busy(remaining)
        return
    why = child.stopped or _death_message(child.proc, child.log, limits.memory_mb)
    if progress.phase != "cases":  # the notebook's own cells killed the child: no retry
        where = f"code cell {progress.last_cell + 1}" if progress.last_cell >= 0 else "the notebook"
        msg = f"not graded: while running {where}, {why}; fix that cell so the notebook runs to the end"
        for e in remaining:
            if not e.done:
                e.done, e.error = True, msg
        return
    current = progress.current
    if current is None:  # died between two cases: blame the next one, so that retries end
        current = next((e for e in remaining if not e.done), None)
    if current is not None and not current.done:
        current.done = True
        current.error = why if child.stopped else f"{why} during {current.qid} ({current.name})"
        timed_out = bool(child.stopped) and why.startswith("timed out")
        for e in remaining:  # one dead child per question at most: the rest would die too
            if e.qid == current.qid and not e.done:
                e.done = True
                e.error = f"not run: an earlier case of {current.qid} " + (
                    "timed out" if timed_out else "stopped the process")
    _retry_if_busy(remaining)


def _retry_if_busy(remaining: list[Entry]) -> None:
    """A case stopped at the wall-clock ceiling while the machine was busy runs once more (with
    the cases of its question it kept from running); stopped again, it says to regrade."""
    if not messages.busy():
        return
    for e in remaining:
        if not (e.done and e.error and WALL_MARK in e.error):
            continue
        if e.retried:
            if "regrade" not in e.error:
                e.error += ("; it ran twice on a busy machine (load above its cores): "
                            "regrade it when the machine is idle")
            continue
        for other in remaining:
            if other is e or (other.qid == e.qid and other.error
                              and other.error.startswith("not run: an earlier case")):
                other.done, other.got, other.error, other.retried = False, None, None, True
