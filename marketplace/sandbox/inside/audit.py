"""The audit hook (PEP 578) of a sandboxed load: what a model's code may not do, denied and
recorded.

Runs inside the sandbox, imported by plain name: it imports nothing of the marketplace. The
namespaces are the boundary; this hook is defence in depth, and a record of what was tried."""

from __future__ import annotations

import json
import os
import sys
import threading

PROCESS_EVENTS = frozenset(
    {
        "os.system",
        "subprocess.Popen",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "pty.spawn",
        "os.startfile",
    }
)
NETWORK_EVENTS = frozenset(
    {
        "socket.connect",
        "socket.bind",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.sendto",
        "socket.sendmsg",
    }
)
# Events that write, rename or remove: the indexes of the paths they change, and of the folder
# handles (dir_fd) those paths may be relative to.
PATH_EVENTS = {
    "os.rename": ((0, 1), (2, 3)),
    "os.remove": ((0,), (1,)),
    "os.rmdir": ((0,), (1,)),
    "os.mkdir": ((0,), (2,)),
    "os.truncate": ((0,), ()),
    "os.chmod": ((0,), (2,)),
    "os.chown": ((0,), (3,)),
    "os.link": ((0, 1), (2, 3)),
    "os.symlink": ((1,), (2,)),
    "os.utime": ((0,), (3,)),
    "shutil.rmtree": ((0,), (1,)),
    "os.chflags": ((0,), ()),
    "os.lchflags": ((0,), ()),
    "os.mkfifo": ((0,), (2,)),
    "os.mknod": ((0,), (3,)),
}
# C functions ctypes may not look up: what the events above cover, reached around them.
DENIED_SYMBOLS = frozenset(
    {
        "system",
        "popen",
        "fork",
        "vfork",
        "clone",
        "clone3",
        "execl",
        "execlp",
        "execle",
        "execv",
        "execvp",
        "execvpe",
        "execve",
        "execveat",
        "fexecve",
        "posix_spawn",
        "posix_spawnp",
        "syscall",
        "socket",
        "connect",
        "bind",
        "sendto",
        "sendmsg",
        "getaddrinfo",
        "gethostbyname",
        "open",
        "open64",
        "openat",
        "openat64",
        "creat",
        "creat64",
        "fopen",
        "fopen64",
        "freopen",
        "unlink",
        "unlinkat",
        "rename",
        "renameat",
        "renameat2",
        "mkdir",
        "mkdirat",
        "rmdir",
        "truncate",
        "ftruncate",
        "chmod",
        "fchmod",
        "fchmodat",
        "link",
        "linkat",
        "symlink",
        "symlinkat",
        "ptrace",
        "kill",
        "dlopen",
        "dlmopen",
        "mprotect",
        "prctl",
        "unshare",
        "setns",
        "mount",
    }
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
MAX_RECORDED = 50


class Denied(PermissionError):
    """What the hook raises in place of a denied operation."""


def describe(event: str, args: tuple) -> str:
    """`event(args)` as a person reads it: os.system('touch /tmp/x')."""
    shown = []
    for arg in args:
        if isinstance(arg, bytes):
            arg = os.fsdecode(arg)
        text = repr(arg)
        shown.append(text if len(text) <= 200 else text[:197] + "...")
    return f"{event}({', '.join(shown)})"


class Guard:
    """Denies and records, once armed, what the model's code tries (see the module docstring).

    `scratch` is the one writable folder; `libraries` the folders whose shared libraries ctypes
    may load (site-packages and the interpreter's own); `loaded`, libraries already mapped before
    arming (loading them again adds no code). Records go to `events_fd`, a line of JSON each."""

    def __init__(self) -> None:
        self.armed = False
        self.scratch = ""
        self.libraries: tuple[str, ...] = ()
        self.loaded: frozenset[str] = frozenset()
        self.events_fd: int | None = None
        self.denied: list[str] = []
        self.total = 0
        self._inside = threading.local()

    def arm(self, scratch: str, libraries: tuple[str, ...], events_fd: int) -> None:
        self.scratch = os.path.realpath(scratch)
        self.libraries = tuple(os.path.realpath(p) for p in libraries)
        self.loaded = frozenset(_mapped_libraries())
        self.events_fd = events_fd
        self.armed = True

    def __call__(self, event: str, args: tuple) -> None:
        if not self.armed or getattr(self._inside, "busy", False):
            return
        self._inside.busy = True
        try:
            reason = self._reason(event, args)
        finally:
            self._inside.busy = False
        if reason is not None:
            self._record(describe(event, args))
            raise Denied(f"denied by the marketplace sandbox: {describe(event, args)} ({reason})")

    def _reason(self, event: str, args: tuple) -> str | None:
        if event in PROCESS_EVENTS:
            return "no process may be started"
        if event in NETWORK_EVENTS:
            return "no network"
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if not writes or not isinstance(path, str | bytes):
                return None
            # os.open (no mode) may be relative to a folder handle the event does not show.
            if not self._writable(path) or (mode is None and not os.path.isabs(os.fsdecode(path))):
                return "writes only in its scratch folder"
            return None
        if event in PATH_EVENTS:
            paths, handles = PATH_EVENTS[event]
            folders = [_folder_of(args[i]) if i < len(args) else None for i in handles]
            for n, index in enumerate(paths):
                if index >= len(args) or not isinstance(args[index], str | bytes):
                    continue
                path = os.fsdecode(args[index])
                # A path relative to a folder handle (shutil.rmtree's way) is that folder's.
                folder = folders[min(n, len(folders) - 1)] if folders else None
                if folder is False or not self._writable(
                    os.path.join(folder, path) if folder else path
                ):
                    return "changes files only in its scratch folder"
            return None
        if event == "ctypes.dlopen":
            name = args[0] if args else None
            if not self._library_allowed(name):
                return "loads shared libraries only from site-packages"
        if event == "ctypes.dlsym":
            name = args[1] if len(args) > 1 else None
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            if name in DENIED_SYMBOLS:
                return (
                    "calls no C function that starts processes, reaches the network or changes "
                    "files"
                )
        return None

    def _writable(self, path: str | bytes) -> bool:
        real = os.path.realpath(os.fsdecode(path))
        return real == os.devnull or real == self.scratch or real.startswith(self.scratch + os.sep)

    def _library_allowed(self, name) -> bool:
        if not isinstance(name, str | bytes):
            return False  # dlopen(NULL): the whole process, libc's fork and socket included
        name = os.fsdecode(name)
        if os.sep not in name:
            return any(os.path.basename(p) == name for p in self.loaded)
        real = os.path.realpath(name)
        return real in self.loaded or any(real.startswith(p + os.sep) for p in self.libraries)

    def _record(self, text: str) -> None:
        self.total += 1
        if len(self.denied) >= MAX_RECORDED:
            return
        self.denied.append(text)
        if self.events_fd is not None:
            try:
                os.write(self.events_fd, (json.dumps(text) + "\n").encode())
            except OSError:
                pass  # the result carries the list too


def _folder_of(handle) -> str | None | bool:
    """The folder an open handle (dir_fd) names; None for none, False when it cannot be told."""
    if not isinstance(handle, int) or handle == -1:
        return None
    try:
        return os.readlink(f"/proc/self/fd/{handle}")
    except OSError:
        return False


def _mapped_libraries() -> set[str]:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return {
                line.split(None, 5)[5].strip()
                for line in maps
                if line.count(" ") >= 5 and ".so" in line
            }
    except OSError:
        return set()


GUARD = Guard()


def install() -> Guard:
    """Install the hook (once per process; hooks cannot be removed). It does nothing until armed."""
    sys.addaudithook(GUARD)
    return GUARD


def close_unaudited() -> None:
    """What starts a process without an audit event, replaced in an armed child by a denial:
    subprocess's own fork_exec (subprocess.Popen itself is audited)."""
    import _posixsubprocess

    def fork_exec(*args, **kwargs):
        GUARD("os.exec", ("_posixsubprocess.fork_exec",))  # records and raises
        raise Denied("denied by the marketplace sandbox: _posixsubprocess.fork_exec")

    _posixsubprocess.fork_exec = fork_exec
