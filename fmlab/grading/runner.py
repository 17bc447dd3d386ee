"""The cases of one submission, run in grading children: which child runs which case, and what
came back.

Explained in book/instructors.md. :func:`run_in_children` runs a submission's cases in a child
process (:mod:`fmlab.grading.child`), started, watched and stopped by
:mod:`fmlab.grading.process`, starting a fresh child for the remaining cases when one dies or
hangs, and returns what each case's child produced, as checked plain data. A case stopped at
the wall-clock ceiling while the machine was busy (load above its cores) runs once more in a
fresh child; if it is stopped again, its message says to regrade it.
"""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import messages
from .process import Child, GradingError, Limits, isolation, watch  # noqa: F401
from .spec import NotData, to_data

WALL_MARK = "stopped at the wall-clock ceiling"


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
            child = Child(root, attempt, job, limits, forbidden, iso)
            outcome.children += 1
            try:
                watch(child, remaining, limits, deadline)
            finally:
                child.close()
            _collect(child, remaining, limits, outcome, first=attempt == 1)
    finally:
        _remove(root)
    return outcome


def _collect(child: Child, remaining: list[Entry], limits: Limits, outcome: Outcome,
             first: bool) -> None:
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
