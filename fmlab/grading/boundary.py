"""The operating-system boundary around a grading child: whose files it may read, what it may
write, which processes it may see, and that none of its processes outlives the grading.

Explained in book/instructors.md. The audit hook of :mod:`fmlab.grading.sandbox` sees only what
Python does; native code (``torch.from_file``, a compiled extension) goes around it. The walls
here are the kernel's. Which ones a run gets depends on what the grader may do (:func:`detect`,
overridden by ``FMLAB_GRADING_ISOLATION=root|userns|uid|none``):

``root``  (the grader runs as root, as CI does, and may create namespaces)
    Each child gets new mount, PID, network and IPC namespaces (``unshare``) and then runs under
    an unprivileged uid of its own, a different one per child. Its file system is built from
    what it needs and nothing else (an allowlist): the operating system's folders (/usr, /etc,
    the libraries), Python and its installed packages, fmlab's package files and the lab's
    public checks, all read-only; its own work and output folders; fresh, private ``/tmp``,
    ``/var/tmp`` and ``/dev/shm``; a few devices and its own ``/proc``. The checkout (``.git``
    included), the hidden tests, the masters, other submissions, home folders and the data
    no lab declares do not exist there, and ``/proc/self/mountinfo`` lists this view only. It
    sees only its own processes, has no network but a loopback interface of its own (on which
    its own processes may talk to each other), and cannot read any other process's memory.
    Killing the namespace's first process kills every process in it, ``setsid`` or not.
``userns``  (not root, but unprivileged user namespaces are allowed)
    The same view, built inside a user namespace; the child keeps the grader's uid (the kernel
    gives no other to an unprivileged user), so it loses every capability instead, and what
    the view lacks or shows read-only keeps it from the grader's files.
``uid``  (root, but namespaces are refused, e.g. a container without CAP_SYS_ADMIN)
    Only the uid of its own and 0700 folders: files that every user may read stay readable.
    The grader says which, in one line.
``none``  (nothing of the above)
    Only the audit hook, which then also refuses to start processes. One line says so and how
    to get more.

This module is the parent's side: what is possible, what a child needs, finding and killing its
processes. The child's side, :mod:`fmlab.grading.confine`, is the first program of every child
(:data:`PROGRAM`): it builds the view, drops privileges and executes the real child.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading

from . import confine

PROGRAM = confine.__file__  # run as ``python -I -S PROGRAM CONFIG_FD -- COMMAND...``
ISOLATION_ENV = "FMLAB_GRADING_ISOLATION"
MODES = ("root", "userns", "uid", "none")
UID_BASE = 1 << 30  # far above the uids of real users and system accounts
NPROC = 512  # processes and threads of one child's uid (root mode)
# What a child sees of the operating system, read-only: programs, shared libraries, settings
# (/etc: a child's uid reads only what every user may), and what torch reads about the CPUs.
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
SYSTEM_INFO = ("/sys/devices/system/cpu", "/sys/devices/system/node")
_NS_FLAGS = ["--mount", "--pid", "--net", "--ipc", "--fork", "--kill-child", "--propagation", "private"]


class Isolation:
    """What the kernel enforces for this grader: ``mode`` (one of :data:`MODES`) and, when it
    is weaker than it could be, a one-line ``warning`` for the instructor."""

    def __init__(self, mode: str, warning: str | None = None, unshare: str | None = None):
        self.mode, self.warning, self.unshare = mode, warning, unshare

    @property
    def namespaces(self) -> bool:
        return self.mode in ("root", "userns")

    @property
    def own_uid(self) -> bool:
        return self.mode in ("root", "uid")

    @property
    def processes_allowed(self) -> bool:
        """Forking (DataLoader workers) is allowed when every descendant can be found and killed."""
        return self.mode != "none"

    def prefix(self) -> list[str]:
        """The command that starts a child inside its namespaces ([] without namespaces)."""
        if not self.namespaces:
            return []
        user = ["--user", "--map-root-user"] if self.mode == "userns" else []
        return [self.unshare, *user, *_NS_FLAGS, "--"]

    def __repr__(self) -> str:
        return f"Isolation({self.mode!r})"


# ---------------------------------------------------------------------------------------------
# Parent side: what is possible, what the child needs, finding and killing its processes
# ---------------------------------------------------------------------------------------------

_detected: dict[str, Isolation] = {}
_lock = threading.Lock()


def _unshare() -> str | None:
    for folder in (os.environ.get("PATH", "") + os.pathsep + "/usr/bin:/bin:/usr/sbin:/sbin").split(os.pathsep):
        path = os.path.join(folder, "unshare")
        if folder and os.access(path, os.X_OK):
            return path
    return None


def _probe(unshare: str | None, user: bool) -> str | None:
    """None when ``unshare`` can create the namespaces, else why not."""
    if unshare is None:
        return "the unshare command (util-linux) is not installed"
    cmd = [unshare, *(["--user", "--map-root-user"] if user else []), *_NS_FLAGS, "--", "true"]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as err:
        return str(err)
    return None if run.returncode == 0 else (run.stderr.strip().splitlines() or ["refused"])[-1]


def reachable_by_others(path: str) -> bool:
    """True when a user with no relation to the file's owner can read ``path`` (each folder on
    the way must be searchable by others, the path itself readable)."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(1, len(parts)):
        folder = os.sep.join(parts[:i]) or os.sep
        try:
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
    return mode & need == need


_child_path: list[str] = []


def _child_sys_path() -> list[str]:
    """The ``sys.path`` of a child (``python -I``: the standard library, site-packages and the
    folders its .pth files add; never the grader's working folder, PYTHONPATH or what the
    grader itself put on its own path), asked of the interpreter once."""
    if not _child_path:
        run = subprocess.run([sys.executable, "-I", "-c", "import json, sys; print(json.dumps(sys.path))"],
                             capture_output=True, text=True, timeout=60, cwd=os.sep,
                             env={"PATH": os.defpath, "LANG": "C.UTF-8"})
        if run.returncode != 0:
            raise RuntimeError(f"could not ask {sys.executable} for its path: {run.stderr[-500:]}")
        _child_path.extend(p for p in json.loads(run.stdout) if p)
    return list(_child_path)


def required_paths() -> list[str]:
    """What a child must read: the interpreter and its standard library, the virtual
    environment, the folders on a child's ``sys.path`` (site-packages and what its .pth files
    add), and fmlab's package and public checks (an editable install maps them through a
    finder, from the checkout: only those two folders of it)."""
    paths = {os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix),
             os.path.realpath(sys.prefix), os.path.realpath(sys.exec_prefix)}
    paths |= {os.path.realpath(p) for p in _child_sys_path() if os.path.isdir(p)}
    import importlib.util

    for name in ("fmlab", "fmlab.checks"):
        spec = importlib.util.find_spec(name)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            paths.add(os.path.realpath(loc))
    return sorted(paths)


def detect() -> Isolation:
    """The strongest isolation this process can give a child (cached), or the one
    ``FMLAB_GRADING_ISOLATION`` asks for (an error when that one is not possible)."""
    wanted = os.environ.get(ISOLATION_ENV, "auto").strip().lower() or "auto"
    with _lock:
        if wanted not in _detected:
            _detected[wanted] = _detect(wanted)
        return _detected[wanted]


def _detect(wanted: str) -> Isolation:
    if wanted not in ("auto", *MODES):
        raise ValueError(f"{ISOLATION_ENV}={wanted!r}: use one of auto, {', '.join(MODES)}")
    how = ("grade as root in a throw-away container or CI runner, or allow unprivileged user "
           "namespaces (Linux)")
    if wanted == "none" or not sys.platform.startswith("linux"):
        why = f"{ISOLATION_ENV}=none" if wanted == "none" else f"no OS boundary on {sys.platform}"
        return Isolation("none", f"isolation is weaker: {why}; the student's code runs as this "
                                 f"user, guarded only by a Python audit hook. For a kernel-enforced "
                                 f"boundary, {how}.")
    unshare, root = _unshare(), os.geteuid() == 0
    if wanted in ("auto", "root") and root:
        why = _probe(unshare, user=False)
        if why is None:
            return Isolation("root", unshare=unshare)
        if wanted == "root":
            raise ValueError(f"{ISOLATION_ENV}=root: namespaces are not available ({why})")
        ns_why = why
    elif wanted == "userns" or (wanted == "auto" and not root):  # root may ask for it to test it
        why = _probe(unshare, user=True)
        if why is None:
            return Isolation("userns", unshare=unshare)
        if wanted == "userns":
            raise ValueError(f"{ISOLATION_ENV}=userns: user namespaces are not available ({why})")
        return Isolation("none", f"isolation is weaker: user namespaces are refused ({why}); the "
                                 f"student's code runs as this user, guarded only by a Python audit "
                                 f"hook. For a kernel-enforced boundary, {how}.")
    else:
        if wanted in ("root", "uid") and not root:
            raise ValueError(f"{ISOLATION_ENV}={wanted}: only root can give a child a uid of its own")
        ns_why = "not asked for"
    closed = [p for p in required_paths() if not reachable_by_others(p)]
    if closed:
        if wanted == "uid":
            raise ValueError(f"{ISOLATION_ENV}=uid: another user cannot read {closed[0]}")
        return Isolation("none", f"isolation is weaker: no namespaces ({ns_why}), and another user "
                                 f"could not read {closed[0]}, so the student's code runs as root, "
                                 f"guarded only by a Python audit hook. Install Python where every "
                                 f"user can read it, or allow namespaces (CAP_SYS_ADMIN).")
    return Isolation("uid", f"isolation: a user of its own per submission but no namespaces "
                            f"({ns_why}); files every user may read (check the hidden tests, the "
                            f"masters and the data: chmod o-rwx) stay readable to the student's "
                            f"code. Allow namespaces (CAP_SYS_ADMIN) for the full boundary.")


_uid_lock = threading.Lock()
_uid_count = 0


def allocate_uid() -> int:
    """An unprivileged uid that no process on this machine runs as now: from a range of this
    grader's own (by its pid), skipping any uid in use (another grader's child, say)."""
    global _uid_count
    with _uid_lock:
        for _ in range(0x1000):
            _uid_count += 1
            uid = UID_BASE + ((os.getpid() & 0x3FFFF) << 12) + (_uid_count & 0xFFF)
            if not _matching(uid):
                return uid
    raise RuntimeError("no free uid for a grading child")


def child_config(isolation: Isolation, *, uid: int | None, keep: list[str], hide: list[str],
                 read: list[str], cwd: str, cpu_s: float, memory_mb: int, file_mb: int,
                 root: str | None = None, work: str | None = None, work_mb: int = 0,
                 cgroup: list[str] | None = None) -> dict:
    """What the child's first program needs to build its boundary (plain JSON). ``cpu_s``: a
    last-resort CPU limit for each of its processes; ``memory_mb`` limits each process's data
    and caps its private /tmp, /var/tmp and /dev/shm, whose files live in memory; ``file_mb``:
    the largest file it may write. ``keep``: its work and output folders (writable); ``read``:
    what it must read besides the operating system's folders, Python and the installed
    packages (the checks file); ``hide``: what must stay unreadable even inside those (the
    data no lab declares). With namespaces, ``root`` is an empty folder of the grader's where
    the child's view is built: nothing else of this machine's file system is in it, and its
    ``work`` folder (one of ``keep``) is a fresh one in memory of ``work_mb`` MB. ``cgroup``:
    the ``cgroup.procs`` files of its control group (:mod:`fmlab.grading.cgroup`), joined
    first."""
    cfg = {"mode": isolation.mode, "uid": uid, "keep": [os.path.realpath(p) for p in keep],
           "hide": sorted({os.path.realpath(p) for p in hide if p and os.path.lexists(p)}),
           "cwd": cwd, "cpu_s": int(cpu_s) + 1, "nproc": NPROC, "read": [], "links": {},
           "root": None, "memory_mb": int(memory_mb), "file_mb": int(file_mb),
           "scratch_mb": max(int(memory_mb), 64), "cgroup": list(cgroup or []),
           "work": os.path.realpath(work) if work and work_mb else None, "work_mb": int(work_mb)}
    if isolation.namespaces:
        if root is None:
            raise ValueError("a child with namespaces needs an empty folder for its view (root=)")
        cfg["root"] = os.path.realpath(root)
        system = []
        for folder in SYSTEM:
            if os.path.islink(folder):
                cfg["links"][folder] = os.readlink(folder)
            elif os.path.isdir(folder):
                system.append(folder)
        shown = system + [p for p in SYSTEM_INFO if os.path.isdir(p)] + required_paths()
        cfg["read"] = sorted(set(shown) | {os.path.realpath(p) for p in read})
    return cfg


def pid_of_first(launcher_pid: int) -> int | None:
    """The pid (as the grader sees it) of the first process in a child's PID namespace: the
    child of ``unshare``."""
    try:
        with open(f"/proc/{launcher_pid}/task/{launcher_pid}/children") as f:
            kids = [int(p) for p in f.read().split()]
        if kids:
            return kids[0]
    except OSError:
        pass
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == launcher_pid:
                    return int(entry.name)
            except (OSError, IndexError, ValueError):
                continue
    return None


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of ``pid`` and of its children it has waited for."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11:15]) / ticks  # utime stime cutime cstime


def _matching(uid: int) -> list[int]:
    """The live processes (not zombies) that run as ``uid``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            if status.get("State", "").strip().startswith("Z"):
                continue  # a zombie runs nothing; its parent reaps it
            if int(status["Uid"].split()[0]) == uid:
                found.append(int(entry.name))
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return found


def sweep(uid: int | None = None, timeout: float = 10.0) -> bool:
    """Kill every process that runs as ``uid``, until none is left; True when none is. A
    process that forks while being killed loses the race: the kernel refuses ``fork`` to a
    process with a pending SIGKILL."""
    import time

    if uid is None:
        return True
    end = time.monotonic() + timeout
    while True:
        pids = _matching(uid)
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
