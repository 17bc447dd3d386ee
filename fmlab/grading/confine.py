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
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE, MS_REC = 32, 1024, 2048, 4096, 8192, 16384
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
        self.lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

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


PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "ppc64": 203,
              "s390x": 217, "i686": 217, "armv7l": 218}  # the system call's number
MNT_DETACH = 2
DEVICES = ("null", "zero", "full", "random", "urandom")


def _target(new_root: str, path: str) -> str:
    return new_root + path if path != os.sep else new_root


def _bind(libc: _Libc, source: str, target: str) -> None:
    """Bind ``source`` (a folder and what is mounted below it, or a file) at ``target``,
    creating the mount point in the new root's own folders where it is missing."""
    if not os.path.lexists(target):
        if os.path.isdir(source):
            os.makedirs(target, mode=0o755)
        else:
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
    libc.mount(source, target, None, MS_BIND | MS_REC)


def _fresh(libc: _Libc, target: str, mode: int, size: str, flags: int = 0) -> None:
    os.makedirs(target, mode=0o755, exist_ok=True)
    libc.mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | flags, f"mode={mode:o},size={size}")


def build_view(cfg: dict, libc: _Libc) -> None:
    """The child's whole file system, built from what it may see (run as root of the new mount
    namespace): a new, empty root holding the read-only folders of ``cfg["read"]`` (the
    operating system's, Python's, fmlab's, the checks), the writable ``cfg["keep"]``, fresh
    private /tmp, /var/tmp and /dev/shm, a few devices and its own /proc; nothing else exists
    there, and the old root is detached, so /proc/self/mountinfo lists this view only."""
    libc.mount(None, "/", None, MS_REC | MS_PRIVATE)
    new, scratch = cfg["root"], f"{cfg['scratch_mb']}m"
    libc.mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    _fresh(libc, _target(new, "/dev"), 0o755, "64k", MS_NOEXEC)
    for name in DEVICES:
        _bind(libc, f"/dev/{name}", _target(new, f"/dev/{name}"))
    for name, fd in (("fd", ""), ("stdin", "/0"), ("stdout", "/1"), ("stderr", "/2")):
        os.symlink(f"/proc/self/fd{fd}", _target(new, f"/dev/{name}"))
    writable = [_target(new, d) for d in ("/tmp", "/var/tmp", "/dev/shm")]
    for folder in writable:
        _fresh(libc, folder, 0o1777, scratch)
    for link, points_to in cfg["links"].items():  # /lib -> usr/lib where /usr is merged
        os.symlink(points_to, _target(new, link))
    bound: list[str] = []
    wanted = [(p, False) for p in cfg["read"]] + [(p, True) for p in cfg["keep"]]
    for path, keep in sorted(wanted, key=lambda item: (item[0].count(os.sep), item[1])):
        if not os.path.lexists(path) or (not keep and any(_under(path, b) for b in bound)):
            continue  # shown already, as part of a folder bound before
        if path == cfg.get("work"):  # its work folder: in memory, of a capped size, its own
            _fresh(libc, _target(new, path), 0o700, f"{cfg['work_mb']}m")
            if cfg["uid"] is not None:
                os.chown(_target(new, path), cfg["uid"], cfg["uid"])
        else:
            _bind(libc, path, _target(new, path))
        bound.append(path)
        if keep:
            writable.append(_target(new, path))
    os.makedirs(_target(new, "/proc"), mode=0o755, exist_ok=True)
    libc.mount("proc", _target(new, "/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for h in cfg["hide"]:  # what must not be read inside the folders shown (undeclared data)
        target = _target(new, h)
        if not any(_under(h, b) for b in bound) or not os.path.lexists(target):
            continue
        if os.path.isdir(target) and not os.path.islink(target):
            libc.mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       "mode=0,size=4k")
        elif os.path.isfile(target):
            libc.mount("/dev/null", target, None, MS_BIND)
    info = _mountinfo()
    for point, options in info:  # every other mount of the view read-only, the root's too
        if (not _under(point, new) or point in writable or _under(point, _target(new, "/proc"))
                or "ro" in options.split(",")):
            continue
        libc.mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _mount_flags(point, info))
    _switch_root(libc, new)


def _switch_root(libc: _Libc, new: str) -> None:
    """Make ``new`` this mount namespace's root and detach the old one."""
    import platform

    os.chdir(new)
    number = PIVOT_ROOT.get(platform.machine())
    if number is not None:
        libc._check(libc.lib.syscall(number, b".", b"."), "pivot_root")
        libc._check(libc.lib.umount2(b".", MNT_DETACH), "umount the old root")
    else:  # an architecture whose pivot_root number is not listed: move the mount, chroot
        libc.mount(new, "/", None, MS_MOVE)
        os.chroot(".")
    os.chdir("/")


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring up the loopback interface of this process's network namespace, which a new one
    leaves down (the ioctl needs CAP_NET_ADMIN there: before privileges are dropped). The
    child's own processes then reach each other on 127.0.0.1; nothing outside the namespace is
    reachable."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sh", b"lo", 0)))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


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
    for procs in cfg.get("cgroup", []):  # its control group, before it starts anything
        with open(procs, "w") as f:
            f.write("0")
    libc = _Libc() if cfg["mode"] != "none" else None
    if cfg["mode"] in ("root", "userns"):
        build_view(cfg, libc)
        try:  # its own network namespace: loopback only, for processes that talk to each other
            loopback_up()
        except OSError as err:
            print(f"fmlab grading: the loopback interface stays down ({err})", file=sys.stderr,
                  flush=True)
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
