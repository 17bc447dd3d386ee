"""One grading child seen from the parent: start it behind its boundary, follow its progress,
stop it at a limit, and leave no process of it alive.

Explained in book/instructors.md; :mod:`fmlab.grading.runner` decides which cases a child runs
and reads what comes back.

Limits count the student's work, not the machine's load: a cell's or case's limit is CPU time
(measured by the kernel for the child and the children it waited for), and a wall-clock ceiling
:data:`~fmlab.grading.messages.WALL_RATIO` times longer stops what sleeps. The child runs one
torch thread by default, so that its threads never wait for each other on a busy machine.
"""
from __future__ import annotations

import io
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from . import boundary, messages

if TYPE_CHECKING:
    from .runner import Entry

GRACE_S = 3.0  # the child stops itself at a limit; the parent kills it this much later
STARTUP_S = 120.0  # wall time to start the child and import torch, fmlab and the checks
CLOSING_S = 5.0  # CPU seconds for the child to exit once it has been sent its last case


class GradingError(RuntimeError):
    """The grader itself could not run (not the student's fault): a bad checks file, a child
    that cannot even start. ``fmlab grade`` exits with status 2."""


@dataclass
class Limits:
    """Resource limits of the grading child.

    ``case_timeout`` (CPU seconds) overrides every question's own ``timeout`` when set;
    ``cell_timeout`` is CPU seconds per notebook cell. A cell or case also stops at a wall-clock
    ceiling of ``WALL_RATIO`` times its CPU limit. ``total_timeout`` is the wall-clock limit of
    the whole submission. ``threads``: torch (OpenMP, MKL) threads of the child (and, where it
    has a control group, the cores it may use). ``memory_mb``: memory of the whole submission
    where it has a control group (its processes and in-memory folders together), else of each
    process. ``file_mb``: the largest file it may write; ``work_mb``: the size of its work
    folder (in memory, with namespaces).
    """

    case_timeout: float | None = None
    cell_timeout: float = 60.0
    total_timeout: float = 900.0
    memory_mb: int = 4096
    threads: int = 1
    file_mb: int = 512
    work_mb: int = 1024


_warned: set[str] = set()


def isolation() -> boundary.Isolation:
    """The boundary this grader gives its children; its warning is printed once."""
    try:
        iso = boundary.detect()
    except ValueError as err:
        raise GradingError(str(err)) from None
    if iso.warning:
        _warn_once(iso.warning)
    return iso


def _warn_once(text: str) -> None:
    """One line to the instructor, printed once per grader however many children it starts."""
    if text not in _warned:
        _warned.add(text)
        print(f"fmlab grade: {text}", file=sys.stderr)


# multiprocessing puts UNIX sockets in the temporary folder (DataLoader workers share tensors
# through them), and a socket's path may be at most 107 bytes: a deep working folder makes
# the workers wait forever for data that never comes.
SOCKET_ROOM = 60


def child_env(workdir: str, limits: Limits, private_tmp: bool = False) -> dict:
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


def tail(path: Path, size: int) -> str:
    """The last ``size`` bytes of the child's log, as text (the log may be as large as the
    child's file-size limit: it is never read whole)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read(size).decode("utf-8", "replace")
    except OSError:
        return ""


def _private(path: Path):
    """``path`` opened for writing, readable by its owner only."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


class Child:
    """One child process behind its boundary, and the parent's view of its progress."""

    def __init__(self, root: Path, attempt: int, job: dict, limits: Limits, forbidden: list[str],
                 iso: boundary.Isolation):
        self.root, self.limits, self.iso = root, limits, iso
        self.uid = boundary.allocate_uid() if iso.own_uid else None
        self._make_folders(attempt)
        self.group, self.out_mounted, self.oom = None, False, False
        if iso.mode == "root":
            self._contain()
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
                                    memory_mb=limits.memory_mb, file_mb=limits.file_mb,
                                    root=str(self.view), work=str(self.work),
                                    work_mb=limits.work_mb,
                                    cgroup=self.group.procs if self.group else None)
        with _private(cfg_file) as f:
            f.write(json.dumps(cfg).encode())
        job_fd, cfg_fd = os.open(job_file, os.O_RDONLY), os.open(cfg_file, os.O_RDONLY)
        read_fd, write_fd = os.pipe()
        cases_read, self.cases_fd = os.pipe()  # the case inputs, sent one at a time
        cmd = [*iso.prefix(), sys.executable, "-I", "-S", boundary.PROGRAM, str(cfg_fd), "--",
               sys.executable, "-I", "-m", "fmlab.grading.child", str(job_fd), str(write_fd),
               str(cases_read)]
        try:
            with _private(self.log) as log:
                self.proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=child_env(str(self.work), limits, iso.namespaces), cwd=str(self.work),
                    pass_fds=(write_fd, job_fd, cfg_fd, cases_read), start_new_session=True)
        except BaseException:
            self.release()
            raise
        finally:
            for fd in (write_fd, job_fd, cfg_fd, cases_read):
                os.close(fd)
        # A thread writes the cases, so that a child that does not read cannot block the parent
        self.outbox: queue.Queue = queue.Queue()
        self.writer = threading.Thread(target=self._write_cases, daemon=True)
        self.writer.start()
        self.fd = read_fd
        self.buffer = b""
        self.pid: int | None = None if iso.namespaces else self.proc.pid  # the Python child
        self.progress: Progress | None = None
        self.stopped: str | None = None  # why the parent stopped it, if it did

    def _make_folders(self, attempt: int) -> None:
        """Its work and output folders (its own uid's) and the folder its view is built in."""
        self.work, self.out = self.root / f"work-{attempt}", self.root / f"out-{attempt}"
        for folder in (self.work, self.out):
            folder.mkdir(mode=0o700)
            if self.uid is not None:
                os.chown(folder, self.uid, self.uid)
        self.view = self.root / f"view-{attempt}"  # where its namespace builds its file system
        self.view.mkdir(mode=0o700)

    def send(self, case: dict | None) -> None:
        """Send the child one case (plain data), or None: there are no more."""
        if case is None:
            self.outbox.put(b"0\n")
            return
        buf = io.BytesIO()
        torch.save(case, buf)
        self.outbox.put(b"%d\n" % buf.tell() + buf.getvalue())

    def _write_cases(self) -> None:
        while (data := self.outbox.get()) is not None:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.cases_fd, view):]
            except OSError:  # the child is gone
                return

    def _contain(self) -> None:
        """As root: a control group for the child's whole process tree (memory, its in-memory
        folders included; processes; CPU), and its output folder in memory, capped at the
        file-size limit (the parent reads each result from there, then deletes it)."""
        from . import cgroup
        from .confine import MS_NODEV, MS_NOEXEC, MS_NOSUID, _Libc

        self.group, why = cgroup.create(self.limits.memory_mb, boundary.NPROC,
                                        max(1, int(self.limits.threads or 1)))
        if why:
            _warn_once(f"no control group per submission ({why}): memory, process and CPU "
                       f"limits hold per process only")
        try:
            _Libc().mount("tmpfs", str(self.out), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                          f"mode=0700,uid={self.uid},gid={self.uid},size={self.limits.file_mb}m")
            self.out_mounted = True
        except OSError as err:
            _warn_once(f"the output folder stays on disk, uncapped ({err})")

    def release(self) -> None:
        """Once no process of the child is left: unmount its output folder and remove its
        group, noting whether the kernel stopped it for memory."""
        if self.group is not None:
            self.oom = self.group.out_of_memory()
            self.group.remove()
            self.group = None
        if self.out_mounted:
            from .confine import MNT_DETACH, _Libc

            _Libc().lib.umount2(str(self.out).encode(), MNT_DETACH)
            self.out_mounted = False

    def attach(self) -> None:
        """Learn the child's pid: in a PID namespace, the first process, child of unshare."""
        if self.iso.namespaces and self.pid is None:
            self.pid = boundary.pid_of_first(self.proc.pid)

    def cpu(self) -> float:
        """CPU seconds of the child: of its whole group where it has one (every process it
        started, exited or not), else of its first process and the children it waited for."""
        if self.group is not None:
            value = self.group.cpu_seconds()
            if value is not None:
                return value
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
        self.buffer = self.buffer[-256:]  # a progress line is short: a flood is not kept
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
        self.outbox.put(None)
        self.writer.join(timeout=10)  # a write to a dead child fails at once (EPIPE)
        os.close(self.fd)
        os.close(self.cases_fd)
        self.release()


class Progress:
    """Where the child is: its phase, the current cell or case, and when that began.

    The parent sends each case and starts its clock; a case ends when the child says ``done``
    for it (its result is then read, whether or not the child wrote one) or at its limit.
    ``arrived(entry)`` is called for each case that ended with a ``done``, ``notes()`` once the
    cells have run."""

    def __init__(self, child: Child, remaining: list[Entry], limits: Limits,
                 arrived: Callable[[Entry], None], notes: Callable[[], None]):
        self.child, self.limits = child, limits
        self.arrived, self.notes = arrived, notes
        self.order = list(remaining)
        self.phase, self.limit = "startup", STARTUP_S
        self.wall0, self.cpu0 = time.monotonic(), 0.0
        self.last_cell, self.pos, self.current, self.finished = -1, 0, None, False

    def begin(self, limit: float) -> None:
        self.limit, self.wall0, self.cpu0 = limit, time.monotonic(), self.child.cpu()

    def send_next(self) -> None:
        if self.pos < len(self.order):
            self.current = self.order[self.pos]
            self.pos += 1
            self.child.send({"index": self.current.index, "qid": self.current.qid,
                             "case": self.current.case, "timeout": self.current.timeout})
            self.begin(self.current.timeout)
        else:
            self.current, self.phase = None, "closing"
            self.child.send(None)
            self.begin(CLOSING_S)

    def read(self, line: str) -> None:
        kind, _, arg = line.partition(" ")
        if kind == "start" and self.phase == "startup":
            self.child.attach()
            self.phase = "cells"
            self.begin(self.limits.cell_timeout)
        elif (kind == "cell" and self.phase == "cells" and arg.isdigit()
              and int(arg) > self.last_cell):
            self.last_cell = int(arg)
            self.begin(self.limits.cell_timeout)
        elif kind == "ready" and self.phase == "cells":
            self.phase = "cases"
            self.notes()
            self.send_next()
        elif kind == "done" and self.current is not None and arg == str(self.current.index):
            self.arrived(self.current)
            self.send_next()
        elif kind == "finished" and self.phase == "closing":
            self.finished = True

    def over(self, deadline: float) -> str | None:
        """Why the child must be stopped now, if it must."""
        now = time.monotonic()
        if now > deadline:
            return f"the whole submission ran past its {self.limits.total_timeout:g} s limit"
        wall = now - self.wall0
        if self.phase == "startup":
            if wall > STARTUP_S:
                return f"the grading process did not start within {STARTUP_S:g} s"
            return None
        cpu = self.child.cpu() - self.cpu0
        if cpu > self.limit + GRACE_S:
            return messages.cpu_limit(self.limit, cpu, wall)
        if wall > self.limit * messages.WALL_RATIO + GRACE_S:
            return messages.wall_ceiling(self.limit, cpu, wall)
        return None


def watch(child: Child, remaining: list[Entry], limits: Limits, deadline: float,
          arrived: Callable[[Entry], None], notes: Callable[[], None]) -> None:
    """Follow one child's progress, send it its cases, and enforce the hard limits."""
    progress = child.progress = Progress(child, remaining, limits, arrived, notes)
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
        raise GradingError(f"the grading process could not start "
                           f"(status {child.proc.returncode}):\n{tail(child.log, 3000)}")
