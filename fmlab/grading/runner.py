"""The cases of one submission, run in grading children: which child runs which case, and what
came back.

Explained in book/instructors.md. :func:`run_in_children` runs a submission's cases in a child
process (:mod:`fmlab.grading.child`), started, watched and stopped by
:mod:`fmlab.grading.process`, starting a fresh child for the remaining cases when one dies or
hangs. Each case's result is read as soon as the child says it is done, checked as plain data
of at most :data:`RESULT_MB`, handed to the grader's ``grade`` callback and dropped, so the
parent holds one result at a time. A case stopped at the wall-clock ceiling while the machine
was busy (load above its cores) runs once more in a fresh child; if it is stopped again, its
message says to regrade it.
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import messages
from .process import Child, GradingError, Limits, isolation, tail, watch  # noqa: F401
from .spec import NotData, to_data

WALL_MARK = "stopped at the wall-clock ceiling"
# The largest result a master lab's case returns, measured over every public and hidden case
# of the seven labs, is 2.5 MB (a trained model's weights); 16 MB leaves six times that, and
# tests/test_labs.py grades every master under it. A result over it fails its case, unread.
RESULT_MB = 16
# What the notebook's own cells say (their errors, in the student's words) reaches the report
# as at most this many notes of at most this many characters, marked as the notebook's.
NOTES_MAX, NOTE_CHARS = 20, 300


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
    result: object = None  # what the grader made of it (``grade``'s callback sets it)
    done: bool = False
    retried: bool = False  # run again once after a wall-clock stop on a busy machine


@dataclass
class Outcome:
    notes: list[str] = field(default_factory=list)  # about the notebook's cells
    children: int = 0


def _death_message(proc: subprocess.Popen, log: Path, memory_mb: int, oom: bool = False) -> str:
    code = proc.returncode
    if oom or messages.mentions_out_of_memory(tail(log, 4000)):
        return messages.out_of_memory(memory_mb)
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"the process was killed by {name} (out of memory, or a crash in native code)"
    return f"the process exited (os._exit / sys.exit, status {code})"


def _load_result(path: Path, file_mb: float) -> tuple[object, str | None]:
    """A case file from the child: (value, None) or (None, message). Only a plain file the child
    wrote itself (no link) of at most ``file_mb`` MB, holding plain data, passes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None, "the result file is not a plain file (a link?)"
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return None, "the result file is not a plain file of its own"
        limit = int(file_mb * 2**20)
        # read once, bounded: the child may still be running and could grow the file
        data = f.read(limit + 1) if info.st_size <= limit else b""
        if info.st_size > limit or len(data) > limit:
            size = max(info.st_size, len(data))
            return None, (f"the result is {size / 2**20:.0f} MB; at most {file_mb:g} MB "
                          "may come back from a case")
        try:
            raw = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
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
                    forbidden: list[str], deadline: float,
                    grade: Callable[[Entry], None] = lambda e: None) -> Outcome:
    """Run the cases in child processes. Each case that comes back is passed to ``grade`` at
    once (its ``got`` or ``error`` set), and its ``got`` is dropped after; a case that does not
    come back keeps an ``error`` (what stopped it), for the caller to grade."""
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
            job = {"checks": str(checks), "cells": cells, "cell_timeout": limits.cell_timeout}
            child = Child(root, attempt, job, limits, forbidden, iso)
            outcome.children += 1

            def arrived(e: Entry, child: Child = child) -> None:
                path = child.out / f"case-{e.index}.pt"
                if os.path.lexists(path):
                    e.got, e.error = _load_result(path, RESULT_MB)
                    os.unlink(path)
                else:
                    e.got, e.error = None, "no result came back for this case"
                e.done = True
                grade(e)
                e.got = None

            def notes(child: Child = child, first: bool = attempt == 1) -> None:
                if first:
                    outcome.notes = _notes(child.out / "notes.pt")

            try:
                watch(child, remaining, limits, deadline, arrived, notes)
            finally:
                child.close()
            _collect(child, remaining)
    finally:
        _remove(root)
    return outcome


def _notes(path: Path) -> list[str]:
    """The notebook's notes (its cells' errors), capped, each marked as the notebook's own."""
    if not os.path.lexists(path):
        return []
    value, _ = _load_result(path, 1)
    if not (isinstance(value, dict) and isinstance(value.get("cell_errors"), list)):
        return ["[from the notebook] (its notes could not be read)"]
    notes = [str(n) for n in value["cell_errors"]]
    kept = [f"[from the notebook] {n[:NOTE_CHARS]}" + ("…" if len(n) > NOTE_CHARS else "")
            for n in notes[:NOTES_MAX]]
    if len(notes) > NOTES_MAX:
        kept.append(f"[from the notebook] … and {len(notes) - NOTES_MAX} more")
    return kept


def _collect(child: Child, remaining: list[Entry]) -> None:
    """After the child has ended: blame what stopped it on the case it was running (and on the
    rest, where the notebook's own cells stopped it)."""
    progress = child.progress
    if progress.finished or progress.phase == "closing":
        for e in remaining:
            if not e.done:
                e.done, e.error = True, "no result came back for this case"
        _retry_if_busy(remaining)
        return
    why = child.stopped or _death_message(child.proc, child.log, child.limits.memory_mb, child.oom)
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
                other.result = None
