"""A control group per grading child: limits for its whole process tree, and its CPU time as
the kernel counts it.

Explained in book/instructors.md. Per-process limits (``setrlimit``) let a submission multiply
what it gets: each forked process has its own memory allowance, and the files of the private
``/tmp``, ``/var/tmp`` and ``/dev/shm`` live in memory outside every process's. A control
group counts them all together: memory (processes and the files of its in-memory folders,
which the kernel charges to the group that wrote them), the number of processes, and CPU (at
most ``cpus`` cores). It is used where the grader runs as root and may create groups; with
cgroup v1 (separate hierarchies per controller) or v2 (one hierarchy, where the grader's
group must be able to hand controllers down). Elsewhere :func:`create` says why not, and the
per-process limits stay the only ones.

The child joins its group itself, first thing, before anything else runs
(:mod:`fmlab.grading.confine` writes ``0`` to each ``cgroup.procs`` of :attr:`Group.procs`),
so no process of the submission starts outside it.
"""
from __future__ import annotations

import itertools
import os
import threading
import time

CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
PERIOD_US = 100_000
_count = itertools.count(1)
_lock = threading.Lock()


def _mounts() -> tuple[dict[str, str], str | None]:
    """Where each v1 controller's hierarchy is mounted, and where the v2 hierarchy is."""
    v1, v2 = {}, None
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return v1, v2
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, after = left.split(), right.split() + ["", "", ""]
        fstype, options = after[0], after[2]  # fstype, source, super options
        point = fields[4].encode().decode("unicode_escape")
        if fstype == "cgroup2":
            v2 = v2 or point
        elif fstype == "cgroup":
            for name in options.split(","):
                if name in CONTROLLERS:
                    v1.setdefault(name, point)
    return v1, v2


def _own_paths() -> dict[str, str]:
    """This process's group in each hierarchy: controller (or "" for v2) -> path."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            for name in names.split(",") if names else [""]:
                own[name] = path
    return own


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


class Group:
    """One child's group: a folder per hierarchy (v1: one per controller; v2: one)."""

    def __init__(self, folders: dict[str, str], v2: bool):
        self.folders, self.v2 = folders, v2

    @property
    def procs(self) -> list[str]:
        """The files a process writes ``0`` to, to join the group (each folder once)."""
        return [os.path.join(f, "cgroup.procs") for f in dict.fromkeys(self.folders.values())]

    def cpu_seconds(self) -> float | None:
        """CPU time of every process the group has held (exited ones included)."""
        if self.v2:
            text = _read(os.path.join(self.folders["cpu"], "cpu.stat")) or ""
            for line in text.splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
            return None
        text = _read(os.path.join(self.folders.get("cpuacct", ""), "cpuacct.usage"))
        return int(text) / 1e9 if text and text.strip().isdigit() else None

    def memory_peak_mb(self) -> float | None:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        text = _read(os.path.join(self.folders["memory"], name))
        return int(text) / 2**20 if text and text.strip().isdigit() else None

    def out_of_memory(self) -> bool:
        """Whether the kernel killed a process of the group for its memory limit (or refused
        it memory, where the kernel does not count kills)."""
        folder = self.folders["memory"]
        if self.v2:
            text = _read(os.path.join(folder, "memory.events")) or ""
            counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
            return int(counts.get("oom_kill", 0)) > 0
        text = _read(os.path.join(folder, "memory.oom_control")) or ""
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        if "oom_kill" in counts:
            return int(counts["oom_kill"]) > 0
        return int((_read(os.path.join(folder, "memory.failcnt")) or "0").strip() or 0) > 0

    def remove(self, timeout: float = 10.0) -> None:
        """Remove the group's folders (once its processes are gone; their dead memory moves to
        the parent group)."""
        end = time.monotonic() + timeout
        for folder in sorted(set(self.folders.values()), key=len, reverse=True):
            while True:
                try:
                    os.rmdir(folder)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > end:
                        break  # left for the machine's owner; it holds no process
                    time.sleep(0.05)


def create(memory_mb: int, pids: int, cpus: float) -> tuple[Group | None, str | None]:
    """A new group capped at ``memory_mb`` MB (no swap beyond it), ``pids`` processes and
    threads, and ``cpus`` cores; or (None, why not)."""
    if os.geteuid() != 0:
        return None, "control groups are created by root only"
    try:
        v1, v2 = _mounts()
        own = _own_paths()
    except (OSError, ValueError) as err:
        return None, f"the control groups could not be read ({err})"
    with _lock:
        name = f"fmlab-grade-{os.getpid()}-{next(_count)}"
    if all(c in v1 for c in CONTROLLERS):
        return _create_v1(v1, own, name, memory_mb, pids, cpus)
    if v2 is not None and "" in own:
        return _create_v2(v2, own[""], name, memory_mb, pids, cpus)
    missing = [c for c in CONTROLLERS if c not in v1]
    return None, f"no cgroup v2 hierarchy, and cgroup v1 lacks {', '.join(missing)}"


def _inside(mount: str, own: str) -> str:
    """The grader's own group's folder, or the mount's top where the hierarchy is mounted from
    that group down (a container without a cgroup namespace sees its group as the top)."""
    folder = os.path.normpath(os.path.join(mount, own.lstrip("/")))
    return folder if os.path.isdir(folder) else mount


def _create_v1(v1, own, name, memory_mb, pids, cpus):
    folders = {c: os.path.join(_inside(v1[c], own.get(c, "/")), name) for c in CONTROLLERS}
    group = Group(folders, v2=False)
    try:
        for folder in dict.fromkeys(folders.values()):
            os.mkdir(folder)
        memory = folders["memory"]
        _write(os.path.join(memory, "memory.limit_in_bytes"), str(memory_mb << 20))
        if os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes")):
            _write(os.path.join(memory, "memory.memsw.limit_in_bytes"), str(memory_mb << 20))
        _write(os.path.join(folders["pids"], "pids.max"), str(pids))
        _write(os.path.join(folders["cpu"], "cpu.cfs_period_us"), str(PERIOD_US))
        _write(os.path.join(folders["cpu"], "cpu.cfs_quota_us"), str(int(cpus * PERIOD_US)))
    except OSError as err:
        group.remove(timeout=1)
        return None, f"a cgroup v1 group could not be set up ({err.strerror}: {err.filename})"
    return group, None


def _create_v2(mount, own, name, memory_mb, pids, cpus):
    parent = _inside(mount, own)
    folder = os.path.join(parent, name)
    group = Group({c: folder for c in CONTROLLERS}, v2=True)
    try:
        enabled = (_read(os.path.join(parent, "cgroup.subtree_control")) or "").split()
        wanted = [c for c in ("memory", "pids", "cpu") if c not in enabled]
        if wanted:  # refused where the grader's own group holds processes (not the root group)
            _write(os.path.join(parent, "cgroup.subtree_control"),
                   " ".join(f"+{c}" for c in wanted))
        os.mkdir(folder)
        _write(os.path.join(folder, "memory.max"), str(memory_mb << 20))
        if os.path.exists(os.path.join(folder, "memory.swap.max")):
            _write(os.path.join(folder, "memory.swap.max"), "0")
        _write(os.path.join(folder, "pids.max"), str(pids))
        _write(os.path.join(folder, "cpu.max"), f"{int(cpus * PERIOD_US)} {PERIOD_US}")
    except OSError as err:
        group.remove(timeout=1)
        return None, (f"a cgroup v2 group could not be set up in {parent} ({err.strerror}); "
                      f"give the grader a group of its own whose controllers it may hand down")
    return group, None
