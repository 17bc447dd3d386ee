"""The first program of every grading child: build its view of the file system, drop its
privileges, then execute the real child.

Explained in book/instructors.md; :mod:`fmlab.grading.boundary` decides which walls a child
gets and writes the configuration this program reads. ``python -I -S confine.py CONFIG_FD --
COMMAND...`` enters the boundary and executes COMMAND. It uses the standard library only, so
that nothing is imported before the walls stand.
"""
from __future__ import annotations

import json
import os
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
_OPTION_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                 "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 1, 24, 28, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
# NOROOT, NOROOT_LOCKED, NO_SETUID_FIXUP, NO_SETUID_FIXUP_LOCKED, KEEP_CAPS_LOCKED
SECURE_BITS = 0x2F


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


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


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
            libc.mount("tmpfs", h, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       "mode=0,size=4k")
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
        if (point in keep or point in scratch or _under(point, "/proc")
                or "ro" in options.split(",")):
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
    sized = ((resource.RLIMIT_DATA, "memory_mb"), (resource.RLIMIT_FSIZE, "file_mb"))
    limits += [(which, cfg[key] << 20) for which, key in sized if cfg[key] > 0]
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
