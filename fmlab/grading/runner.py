"""The parent's side of one grading child: spawn it, enforce the limits, collect its files.

Explained in book/instructors.md. :func:`run_in_children` runs a submission's cases in a child
process (:mod:`fmlab.grading.child`), starting a fresh child for the remaining cases when one
dies or hangs, and returns what each case's child produced, as checked plain data.
"""
from __future__ import annotations

import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .spec import NotData, to_data

GRACE_S = 3.0  # the child stops itself at the limit; the parent kills it this much later
STARTUP_S = 120.0  # importing torch and fmlab in the child


class GradingError(RuntimeError):
    """The grader itself could not run (not the student's fault): a bad checks file, a child
    that cannot even start. ``fmlab grade`` exits with status 2."""


@dataclass
class Limits:
    """Resource limits of the grading child.

    ``case_timeout`` overrides every question's own ``timeout`` when set.
    """

    case_timeout: float | None = None
    cell_timeout: float = 60.0
    total_timeout: float = 900.0
    memory_mb: int = 4096
    threads: int | None = None
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


@dataclass
class Outcome:
    notes: list[str] = field(default_factory=list)  # about the notebook's cells
    children: int = 0


def _child_env(workdir: str, limits: Limits) -> dict:
    threads = limits.threads or max(1, min(4, os.cpu_count() or 1))
    return {
        "PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
        "FMLAB_GRADING": "1", "FMLAB_PROFILE": "quick", "FMLAB_DEVICE": "cpu",
        "FMLAB_DATA": os.path.join(workdir, "data"), "CUDA_VISIBLE_DEVICES": "",
        "MPLBACKEND": "Agg", "MPLCONFIGDIR": workdir, "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
    }


def _death_message(proc: subprocess.Popen, log: Path, memory_mb: int) -> str:
    code = proc.returncode
    try:
        tail = log.read_bytes()[-4000:].decode("utf-8", "replace")
    except OSError:
        tail = ""
    oom = any(s in tail for s in ("MemoryError", "bad_alloc", "can't allocate memory", "Cannot allocate memory"))
    if oom:
        return f"ran out of memory (the limit is {memory_mb} MB)"
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"the process was killed by {name} (out of memory, or a crash in native code)"
    return f"the process exited (os._exit / sys.exit, status {code})"


class _Child:
    """One child process and the parent's view of its progress."""

    def __init__(self, root: Path, attempt: int, job: dict, limits: Limits, forbidden: list[str]):
        self.root, self.limits = root, limits
        self.work = root / f"work-{attempt}"
        self.out = root / f"out-{attempt}"
        self.work.mkdir()
        self.out.mkdir()
        self.log = root / f"log-{attempt}.txt"
        job_file = root / f"job-{attempt}.pt"
        job = dict(job, cwd=str(self.work), out=str(self.out), writable=[str(self.work)],
                   forbidden=forbidden + [str(root / "job"), str(job_file)],
                   memory_mb=limits.memory_mb)
        torch.save(job, job_file)
        read_fd, write_fd = os.pipe()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-m", "fmlab.grading.child", str(job_file), str(write_fd)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=_child_env(str(self.work), limits), cwd=str(self.work),
                pass_fds=(write_fd,), start_new_session=True)
        os.close(write_fd)
        self._limit(self.proc.pid)
        self.fd = read_fd
        self.buffer = b""

    def _limit(self, pid: int) -> None:
        """Set the child's limits from outside (Linux); elsewhere the child sets its own."""
        if not hasattr(resource, "prlimit"):
            return
        mem = self.limits.memory_mb << 20
        fsize = self.limits.file_mb << 20
        for which, value in ((resource.RLIMIT_DATA, mem), (resource.RLIMIT_FSIZE, fsize),
                             (resource.RLIMIT_CORE, 0)):
            try:
                resource.prlimit(pid, which, (value, value))
            except (ProcessLookupError, PermissionError):
                pass

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
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        os.close(self.fd)


def _load_result(path: Path) -> tuple[object, str | None]:
    """A case file from the child: (value, None) or (None, message). Only plain data passes."""
    try:
        raw = torch.load(path, weights_only=True, map_location="cpu")
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


def run_in_children(entries: list[Entry], cells: list[str], checks: Path, limits: Limits,
                    forbidden: list[str], deadline: float) -> Outcome:
    """Fill each entry's ``got`` or ``error`` by running the cases in child processes."""
    outcome = Outcome()
    root = Path(tempfile.mkdtemp(prefix="fmlab-grade-"))
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
            child = _Child(root, attempt, job, limits, forbidden)
            outcome.children += 1
            try:
                _watch(child, remaining, limits, outcome, deadline, first=attempt == 1)
            finally:
                child.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return outcome


def _watch(child: _Child, remaining: list[Entry], limits: Limits, outcome: Outcome,
           deadline: float, first: bool) -> None:
    """Follow one child's progress, enforce the hard limits, then collect its files."""
    by_index = {e.index: e for e in remaining}
    order = [e.index for e in remaining]
    phase, phase_limit, started = "startup", STARTUP_S, time.monotonic()
    last_cell, pos, current, finished, timed_out = -1, 0, None, False, False
    while True:
        now = time.monotonic()
        limit_at = min(started + phase_limit + GRACE_S, deadline)
        lines = child.lines(min(limit_at - now, 0.5))
        if lines is None:  # pipe closed: the child finished or died
            break
        for line in lines:
            kind, _, arg = line.partition(" ")
            if kind == "start" and phase == "startup":
                phase, phase_limit, started = "cells", limits.cell_timeout, time.monotonic()
            elif kind == "cell" and phase == "cells" and arg.isdigit() and int(arg) > last_cell:
                last_cell, started = int(arg), time.monotonic()
            elif kind == "ready" and phase == "cells":
                phase = "cases"
            elif kind == "case" and phase == "cases" and arg.lstrip("-").isdigit():
                # only the next expected case may start: progress lines never move backwards
                if pos < len(order) and int(arg) == order[pos]:
                    current, started = by_index[order[pos]], time.monotonic()
                    phase_limit = current.timeout
                    pos += 1
            elif kind == "done" and current is not None and arg == str(current.index):
                current = None
            elif kind == "finished" and phase == "cases":
                finished = True
        if time.monotonic() > limit_at and child.proc.poll() is None:
            timed_out = True
            child.kill()
            break
    child.proc.wait()
    if phase == "startup":
        tail = child.log.read_bytes()[-3000:].decode("utf-8", "replace") if child.log.exists() else ""
        raise GradingError(f"the grading process could not start (status {child.proc.returncode}):\n{tail}")

    # Collect every case file the child wrote, whatever happened afterwards.
    notes_file = child.out / "notes.pt"
    if first and notes_file.exists():
        value, _ = _load_result(notes_file)
        if isinstance(value, dict) and isinstance(value.get("cell_errors"), list):
            outcome.notes = [str(n) for n in value["cell_errors"]][:50]
    for e in remaining:
        path = child.out / f"case-{e.index}.pt"
        if path.exists():
            e.got, e.error = _load_result(path)
            e.done = True
    if finished:
        for e in remaining:
            if not e.done:
                e.done, e.error = True, "no result came back for this case"
        return
    why = (f"timed out after {phase_limit:g} s" if timed_out and time.monotonic() < deadline
           else f"the whole submission ran past its {limits.total_timeout:g} s limit" if timed_out
           else _death_message(child.proc, child.log, limits.memory_mb))
    if phase != "cases":  # the notebook's own cells killed the child: no retry
        where = f"code cell {last_cell + 1}" if last_cell >= 0 else "the notebook"
        msg = f"not graded: while running {where}, {why}; fix that cell so the notebook runs to the end"
        for e in remaining:
            if not e.done:
                e.done, e.error = True, msg
        return
    if current is None:  # died between two cases: blame the next one, so that retries end
        current = next((e for e in remaining if not e.done), None)
    if current is not None and not current.done:
        current.done = True
        current.error = why if timed_out else f"{why} during {current.qid} ({current.name})"
        for e in remaining:  # one dead child per question at most: the rest would die too
            if e.qid == current.qid and not e.done:
                e.done = True
                e.error = f"not run: an earlier case of {current.qid} " + (
                    "timed out" if timed_out else "stopped the process")
