"""The operating-system boundary around a grading child: whose files it may read, what it may
write, which processes it may see, and that none of its processes outlives the grading.

Explained in book/instructors.md. The audit hook of :mod:`fmlab.grading.sandbox` sees only what
Python does; native code (``torch.from_file``, a compiled extension) goes around it. The walls
here are the kernel's. Which ones a run gets depends on what the grader may do (:func:`detect`,
overridden by ``FMLAB_GRADING_ISOLATION=root|userns|uid|none``):

``root``  (the grader runs as root, as CI does, and may create namespaces)
    Each child gets new mount, PID, network and IPC namespaces (``unshare``) and then runs under
    an unprivileged uid of its own, a different one per child. In its view of the file system the
    hidden tests, the masters, the results path, the held-out data and the submissions folder
    are empty (a read-only tmpfs, or ``/dev/null`` for a file); ``/tmp``, ``/var/tmp`` and
    ``/dev/shm`` are fresh and private, holding only its own work and output folders (owned by
    its uid, mode 0700); the grader's home folder is empty but for the Python installation and
    packages it may hold; every other mount is read-only. It sees only its own processes, has no
    network, and cannot read any other process's memory. Killing the namespace's first process
    kills every process in it, ``setsid`` or not.
``userns``  (not root, but unprivileged user namespaces are allowed)
    The same view, built inside a user namespace; the child keeps the grader's uid (the kernel
    gives no other to an unprivileged user), so it loses every capability instead, and the
    read-only mounts and the private ``/tmp`` keep it from the grader's files.
``uid``  (root, but namespaces are refused, e.g. a container without CAP_SYS_ADMIN)
    Only the uid of its own and 0700 folders: files that every user may read stay readable.
    The grader says which, in one line.
``none``  (nothing of the above)
    Only the audit hook, which then also refuses to start processes. One line says so and how
    to get more.

This module is also the first program of every child: ``python -I -S boundary.py CONFIG_FD --
COMMAND...`` builds the view, drops privileges and executes the real child. It uses the
standard library only, so that nothing is imported before the walls stand.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading

ISOLATION_ENV = "FMLAB_GRADING_ISOLATION"
MODES = ("root", "userns", "uid", "none")
UID_BASE = 1 << 30  # far above the uids of real users and system accounts
NPROC = 512  # processes and threads of one child's uid (root mode)
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")  # replaced by fresh, private tmpfs in a namespace
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


def required_paths() -> list[str]:
    """What a child must read: the interpreter and its standard library, the virtual
    environment, everything on ``sys.path`` (site-packages, an editable fmlab)."""
    paths = {os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix),
             os.path.realpath(sys.prefix), os.path.realpath(sys.exec_prefix)}
    here = {os.path.realpath(os.getcwd()), os.path.realpath(os.path.dirname(sys.argv[0] or "."))}
    paths |= {os.path.realpath(p) for p in sys.path[1:] if p and os.path.isdir(p)} - here
    import importlib.util

    for name in ("fmlab", "fmlab.checks"):  # editable installs map packages through a finder
        spec = importlib.util.find_spec(name)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            paths.add(os.path.realpath(loc))
    return sorted(paths)


def _outermost_closed(path: str) -> str | None:
    """The outermost folder on the way to ``path`` that others may not search, if any."""
    parts = os.path.realpath(path).split(os.sep)
    for i in range(2, len(parts)):
        folder = os.sep.join(parts[:i])
        try:
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                return folder
        except OSError:
            return None
    return None


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
                 read: list[str], cwd: str, cpu_s: float, memory_mb: int, file_mb: int) -> dict:
    """What the child's first program needs to build its boundary (plain JSON). ``cpu_s``: a
    last-resort CPU limit for each of its processes; ``memory_mb`` limits each process's data
    and caps its private /tmp and /dev/shm, whose files live in memory; ``file_mb``: the
    largest file it may write. ``keep``: its work and output folders; ``read``: what it must
    read besides Python and the installed packages (the checks file)."""
    cfg = {"mode": isolation.mode, "uid": uid, "keep": [os.path.realpath(p) for p in keep],
           "hide": sorted({os.path.realpath(p) for p in hide if p and os.path.lexists(p)}),
           "cwd": cwd, "cpu_s": int(cpu_s) + 1, "nproc": NPROC, "replace": {}, "expose": [],
           "memory_mb": int(memory_mb), "file_mb": int(file_mb),
           "scratch_mb": max(int(memory_mb), 64)}
    if isolation.namespaces:
        # bound back wherever a replaced folder holds them
        cfg["expose"] = sorted(set(required_paths()) | {os.path.realpath(p) for p in read})
        for d in SCRATCH:
            if os.path.isdir(d) and not os.path.islink(d):
                cfg["replace"][d] = 0o1777
        home = os.path.realpath(os.path.expanduser("~"))
        if home != os.sep and os.path.isdir(home):  # the grader's own files (keys, caches)
            cfg["replace"][home] = 0o755
    if isolation.mode == "root":  # folders on the way to Python that the child's uid cannot search
        needed = required_paths() + cfg["keep"] + [os.path.realpath(p) for p in read]
        for p in needed:
            closed = _outermost_closed(p)
            if closed and closed not in cfg["replace"]:
                cfg["replace"][closed] = 0o755

    return cfg


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


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


# ---------------------------------------------------------------------------------------------
# Child side: build the view, drop privileges, run the real child
# ---------------------------------------------------------------------------------------------

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
_OPTION_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                 "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 1, 24, 28, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SECURE_BITS = 0x2F  # NOROOT, NOROOT_LOCKED, NO_SETUID_FIXUP, NO_SETUID_FIXUP_LOCKED, KEEP_CAPS_LOCKED


class _Libc:
    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        self.lib.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            err = self.ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def mount(self, source, target, fstype, flags, data=None) -> None:
        enc = lambda s: None if s is None else s.encode()  # noqa: E731
        self._check(self.lib.mount(enc(source), enc(target), enc(fstype), flags, enc(data)),
                    f"mount {target}")

    def prctl(self, option: int, arg: int = 0) -> None:
        self._check(self.lib.prctl(option, arg, 0, 0, 0), f"prctl {option}")

    def drop_capabilities(self) -> None:
        ctypes = self.ctypes

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]

        self.prctl(PR_SET_SECUREBITS, SECURE_BITS)  # exec never gives capabilities back
        self._drop_bounding_set()
        self.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        data = (Data * 2)()
        self._check(self.lib.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")

    def _drop_bounding_set(self) -> None:
        try:
            last = int(open("/proc/sys/kernel/cap_last_cap").read())
        except (OSError, ValueError):
            last = 40
        for cap in range(last + 1):
            self.lib.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)


def _mount_flags(mountpoint: str, mountinfo: list[tuple[str, str]]) -> int:
    options = next((o for m, o in reversed(mountinfo) if m == mountpoint), "")
    return sum(_OPTION_FLAGS.get(o, 0) for o in options.split(","))


def _mountinfo() -> list[tuple[str, str]]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # \040 for spaces
            out.append((point, fields[5]))
    return out


def _replace(libc: _Libc, folder: str, mode: int, keeps: list[tuple[str, int]], readonly: bool,
             size_mb: int):
    """Cover ``folder`` with an empty tmpfs, then bind back the kept paths (opened beforehand)."""
    libc.mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode:o},size={size_mb}m")
    for path, fd in keeps:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            open(path, "a").close()
        libc.mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
    if readonly:
        libc.mount(None, folder, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_view(cfg: dict, libc: _Libc) -> None:
    """The child's view of the file system (run as root of the new mount namespace)."""
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)
    keep, expose, hide = cfg["keep"], cfg["expose"], cfg["hide"]
    wanted = keep + expose
    # Hidden folders that hold something the child needs become replaced folders too.
    replace = dict(cfg["replace"])
    for h in hide:
        if os.path.isdir(h) and any(_under(p, h) for p in wanted):
            replace[h] = 0o711
    fds = {p: os.open(p, os.O_PATH) for p in wanted if os.path.exists(p)}
    for folder in sorted(replace, key=lambda d: d.count(os.sep)):
        if not os.path.isdir(folder):
            continue  # inside a folder replaced before: gone from this view already
        inside = sorted(p for p in fds if _under(p, folder) and p != folder)
        outer = [p for p in inside if not any(q != p and _under(p, q) for q in inside)]
        readonly = folder not in cfg["replace"] or cfg["replace"][folder] != 0o1777
        _replace(libc, folder, replace[folder], [(p, fds[p]) for p in outer], readonly,
                 1 if readonly else cfg["scratch_mb"])
    for h in hide:
        if h in replace or not os.path.lexists(h):
            continue
        if os.path.isdir(h):
            libc.mount("tmpfs", h, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0,size=4k")
        else:
            libc.mount("/dev/null", h, None, MS_BIND)
            libc.mount(None, h, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    libc.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for p in keep:  # a mount of its own, so that it stays writable below
        if not any(_under(p, d) for d in replace):
            libc.mount(p, p, None, MS_BIND | MS_REC)
    for fd in fds.values():
        os.close(fd)
    scratch = {d for d, m in cfg["replace"].items() if m == 0o1777}
    info = _mountinfo()
    for point, options in info:
        if point in keep or point in scratch or _under(point, "/proc") or "ro" in options.split(","):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | _mount_flags(point, info)
        try:
            libc.mount(None, point, None, flags)
        except OSError:
            if point == "/":
                raise


def enter(cfg: dict) -> None:
    """Build the boundary ``cfg`` describes around this process, then drop privileges."""
    import resource

    limits = [(resource.RLIMIT_CPU, cfg["cpu_s"]), (resource.RLIMIT_CORE, 0)]
    limits += [(which, cfg[key] << 20) for which, key in ((resource.RLIMIT_DATA, "memory_mb"),
                                                         (resource.RLIMIT_FSIZE, "file_mb")) if cfg[key] > 0]
    for which, value in limits:
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass
    libc = _Libc() if cfg["mode"] != "none" else None
    if cfg["mode"] in ("root", "userns"):
        build_view(cfg, libc)
    if cfg["mode"] in ("root", "uid"):
        uid = int(cfg["uid"])
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
        libc._drop_bounding_set()
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    elif cfg["mode"] == "userns":
        libc.drop_capabilities()
    if libc is not None:
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1)  # no set-uid program gives anything back
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change: set again
    os.chdir(cfg["cwd"])


def main(argv: list[str]) -> None:
    """``boundary.py CONFIG_FD -- COMMAND...``: enter the boundary, then execute COMMAND."""
    fd = int(argv[1])
    with os.fdopen(fd, "r") as f:
        cfg = json.load(f)
    command = argv[argv.index("--") + 1:]
    try:
        enter(cfg)
    except Exception as err:  # noqa: BLE001 - say why on the log the parent reads
        print(f"fmlab grading: the boundary could not be built: {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)
        os._exit(70)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
