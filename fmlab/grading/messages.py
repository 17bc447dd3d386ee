"""What a student reads when their code fails: one wording, wherever the failure is seen.

Explained in book/instructors.md. Used by the in-notebook ``check()`` (:mod:`.check`), the
grading child (:mod:`.child`) and the parent that watches it (:mod:`.runner`).
"""
from __future__ import annotations

import os
import traceback

WALL_RATIO = 5.0  # the wall-clock ceiling of a cell or case, as a multiple of its CPU limit
_OOM_SIGNS = ("MemoryError", "bad_alloc", "can't allocate memory", "Cannot allocate memory",
              "DefaultCPUAllocator: not enough memory")


class TimeLimit(BaseException):
    """A cell or case ran past its CPU limit or its wall-clock ceiling. Not an ``Exception``,
    so a student's ``except Exception`` does not swallow it; ``str()`` is the message."""


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def busy() -> bool:
    """True when the machine runs more than it has cores for (1-minute load average)."""
    return load() > cores()


def _conditions(cpu: float, wall: float) -> str:
    return (f"{cpu:.1f} s of CPU time in {wall:.1f} s of wall time; machine load "
            f"{load():.1f} on {cores()} cores")


def cpu_limit(limit: float, cpu: float, wall: float) -> str:
    return f"timed out: stopped at its CPU-time limit of {limit:g} s ({_conditions(cpu, wall)})"


def wall_ceiling(limit: float, cpu: float, wall: float) -> str:
    hint = "; it was mostly waiting (sleep, input, a lock)" if cpu < 0.5 * wall else ""
    return (f"timed out: stopped at the wall-clock ceiling of {WALL_RATIO * limit:g} s "
            f"({WALL_RATIO:g} × its CPU-time limit of {limit:g} s; {_conditions(cpu, wall)}{hint})")


def mentions_out_of_memory(text: str) -> bool:
    """True when an error message or a log says an allocation failed."""
    return any(sign in text for sign in _OOM_SIGNS)


def out_of_memory(memory_mb: int | None) -> str:
    limit = f" (the limit is {memory_mb} MB)" if memory_mb else ""
    return f"ran out of memory{limit}"


def _where(err: BaseException) -> str:
    """' (line 3 of accuracy, cell 5)' for the innermost frame of the student's own code: a
    grading cell (``<cell N>``) or a notebook cell (IPython's files); else the innermost frame
    outside fmlab and the installed packages."""
    frames, tb = [], err.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        frames.append((module, traceback.FrameSummary(tb.tb_frame.f_code.co_filename, tb.tb_lineno,
                                                      tb.tb_frame.f_code.co_name)))
        tb = tb.tb_next
    mine = [f for _, f in frames if f.filename.startswith("<cell ") or "ipykernel" in f.filename
            or f.filename.startswith("<ipython-input")]
    if not mine:  # the course's code, the checks and installed packages are not the student's
        mine = [f for m, f in frames if not m.startswith("fmlab") and "site-packages" not in f.filename
                and "/lib/python" not in f.filename]
    if not mine:
        return ""
    f = mine[-1]
    cell = f", {f.filename.strip('<>')}" if f.filename.startswith("<cell ") else ""
    name = "" if f.name == "<module>" else f" of {f.name}"
    return f" (line {f.lineno}{name}{cell})"


def describe_error(err: BaseException, memory_mb: int | None = None) -> str:
    """A message for the student about an exception from their code."""
    if isinstance(err, TimeLimit):
        return str(err)
    if isinstance(err, SystemExit):
        return (f"called sys.exit({err.code!r}) / exit(), which would stop the whole program; "
                "return a value instead")
    if isinstance(err, MemoryError) or mentions_out_of_memory(str(err)):
        return out_of_memory(memory_mb)
    if isinstance(err, NotImplementedError):
        return "not implemented yet (the function still raises NotImplementedError)"
    text = str(err).strip().splitlines()
    first = text[0][:300] if text else ""
    return f"raised {type(err).__name__}: {first}{_where(err)}"
