"""What the grading child refuses once the student's code runs: an audit hook.

Explained in book/instructors.md. This is the first line, not the wall: Python's audit hooks
see what Python code does (``open``, ``subprocess``, ``os.fork`` ...), not what native code does,
and the student's code can switch the hook off. The wall is the kernel's, built by
:mod:`fmlab.grading.boundary`; and the score is computed in the parent, from plain data, with
references the child never sees.

Refused after :func:`install`:

* reading anything under the forbidden folders (the hidden tests, the data files of held-out
  sets, the results file) and listing them;
* writing, deleting or renaming anything outside the writable folders (the child's temp dir);
* only where the kernel does not fence the child in (``allow_processes=False``): ``ctypes``
  (inside the kernel's boundary a library's import may use it: native code meets the same walls
  as any other); starting
  processes (``subprocess``, ``os.system``, ``os.exec*``, ``os.fork``, ``os.posix_spawn``), sending
  signals (``os.kill``) and sockets. Inside the boundary these are allowed, so that DataLoader
  workers run: the child's processes see nothing outside and die with it.
"""
from __future__ import annotations

import os
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

_BLOCKED = {
    "subprocess.Popen": "starting a process",
    "os.system": "starting a process",
    "os.exec": "starting a process",
    "os.posix_spawn": "starting a process",
    "os.spawn": "starting a process",
    "os.fork": "forking",
    "os.forkpty": "forking",
    "os.kill": "sending a signal",
    "os.killpg": "sending a signal",
    "signal.pthread_kill": "sending a signal",
    "socket.__new__": "opening a socket",
    "socket.connect": "opening a socket",
    "socket.bind": "opening a socket",
    "socket.getaddrinfo": "network access",
    "urllib.Request": "network access",
    "os.chroot": "changing the root",
    "sys.remote_exec": "attaching to a process",
}
# (event, index of the path argument) for events that change the file system.
_FS_CHANGES = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
    "os.replace": (0, 1), "os.link": (0, 1), "os.symlink": (1,), "os.truncate": (0,),
    "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,), "os.mkfifo": (0,), "os.mknod": (0,),
    "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,),
    "shutil.copytree": (1,), "shutil.move": (1,), "shutil.chown": (0,),
}
_LISTINGS = {"os.listdir", "os.scandir", "glob.glob", "os.walk"}


class Sandbox:
    def __init__(self, writable: list[str], forbidden: list[str], gated: list[str],
                 allow_processes: bool = False):
        self.allow_processes = allow_processes
        self.writable = [os.path.realpath(p) for p in writable]
        self.forbidden = [os.path.realpath(p) for p in forbidden if p]
        self.gated = [os.path.realpath(p) for p in gated]  # writable only while the grader writes
        self.gate_open = False
        self.active = False

    @staticmethod
    def _under(path: str, roots: list[str]) -> bool:
        return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)

    def _resolve(self, path) -> str | None:
        if isinstance(path, int) or path is None:
            return None  # an already-open file descriptor: it was checked when opened
        try:
            path = os.fsdecode(os.fspath(path))
        except TypeError:
            return None
        return os.path.realpath(os.path.abspath(path))

    def _deny(self, what: str, path: str | None = None):
        where = f": {path}" if path else ""
        raise PermissionError(f"not allowed while grading ({what}){where}")

    def _check_write(self, path: str, event: str) -> None:
        if path == os.devnull:  # torch.compile, among others, writes its noise there
            return
        if self._under(path, self.forbidden):
            self._deny(f"{event} in a protected folder", path)
        if self._under(path, self.writable):
            return
        if self.gate_open and self._under(path, self.gated):
            return
        self._deny(f"{event} outside the working folder", path)

    def hook(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open":
            path = self._resolve(args[0])
            if path is None:
                return
            mode, flags = (args + (None, None))[1:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if self._under(path, self.forbidden):
                self._deny("reading a protected file", path)
            if writing:
                self._check_write(path, "writing")
            elif mode is None and os.path.isdir(path) and not self._under(path, self.writable):
                # os.open(dir) would give a dir_fd that later relative opens could escape with
                self._deny("opening a folder", path)
            return
        if event in _FS_CHANGES:
            for i in _FS_CHANGES[event]:
                if i < len(args):
                    path = self._resolve(args[i])
                    if path is not None:
                        self._check_write(path, event)
            return
        if event in _LISTINGS:
            path = self._resolve(args[0] if args else ".")
            if path is not None and self._under(path, self.forbidden):
                self._deny("listing a protected folder", path)
            return
        if self.allow_processes:  # the kernel's boundary holds: native code meets it anyway
            return
        if event.startswith("ctypes."):
            self._deny("ctypes")
        for prefix, what in _BLOCKED.items():
            if event == prefix or event.startswith(prefix):
                self._deny(what)


_SANDBOX: Sandbox | None = None


def install(writable: list[str], forbidden: list[str], gated: list[str],
            allow_processes: bool = False) -> Sandbox:
    """Install the hook (once per process; audit hooks cannot be removed)."""
    global _SANDBOX
    if _SANDBOX is None:
        _SANDBOX = Sandbox(writable, forbidden, gated, allow_processes)
        sys.addaudithook(_SANDBOX.hook)
    _SANDBOX.active = True
    return _SANDBOX


class open_gate:
    """``with open_gate(sandbox):`` lets the grader itself write its result files."""

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox

    def __enter__(self):
        self.sandbox.gate_open = True

    def __exit__(self, *exc):
        self.sandbox.gate_open = False
