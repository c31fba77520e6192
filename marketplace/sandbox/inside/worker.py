"""The warm process of a sandbox: imports the model libraries once, then forks a fresh child per
request, so no two models share a process. Requests and results are lines of JSON on
stdin/stdout; nothing of a model is ever pickled back.

Runs inside the sandbox as `python -E -s worker.py ARGS`, importing nothing of the marketplace."""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import signal
import sys
import time

import audit
import warm

sys.dont_write_bytecode = (
    True  # importing a model's code writes nothing beside it (its folder is read-only)
)
GUARD = audit.install()  # before anything of a model is read; armed only in each child


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--max-processes", type=int, default=64)
    parser.add_argument("--library", action="append", default=[])
    options = parser.parse_args()
    os.environ.setdefault(
        "DO_NOT_TRACK", "true"
    )  # MLflow's telemetry: no network, and nothing to report
    seconds = warm.import_libraries()
    reply({"ready": True, "warm_seconds": round(seconds, 3), "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        reply(serve(request, options))


def reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve(request: dict, options) -> dict:
    """Run one request in a fresh child under the limits; its result, or why there is none."""
    if request.get("task") == "evaluate":
        warm.import_evaluation()  # once, here, before the hook is armed in a child
    scratch = os.path.join(options.scratch, f"r{request['id']}")
    os.makedirs(os.path.join(scratch, "tmp"), exist_ok=True)
    result_read, result_write = os.pipe()
    events_read, events_write = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(result_read)
        os.close(events_read)
        _child(request, options, scratch, result_write, events_write)
    os.close(result_write)
    os.close(events_write)
    output, events, timed_out = _collect(pid, result_read, events_read, options.timeout)
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(scratch, ignore_errors=True)
    denied = [
        json.loads(line) for line in events.decode(errors="replace").splitlines() if line.strip()
    ]
    try:
        result = json.loads(output.decode()) if output else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        result = {"status": "died", "error": _death(status)}
    if timed_out:
        result = {
            "status": "timeout",
            "error": f"still running after the time limit of {options.timeout:g} s",
        }
    result.setdefault("denied", denied)
    result["denied"] = result["denied"] or denied
    result["id"] = request["id"]
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _collect(pid: int, result_fd: int, events_fd: int, timeout: float) -> tuple[bytes, bytes, bool]:
    """Read the child's result and events until both close or the time limit passes (then kill
    it)."""
    deadline = time.monotonic() + timeout
    buffers = {result_fd: bytearray(), events_fd: bytearray()}
    open_fds = set(buffers)
    timed_out = False
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            _kill(pid)
            break
        ready, _, _ = select.select(list(open_fds), [], [], min(left, 1.0))
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk and len(buffers[fd]) < 1 << 20:
                buffers[fd] += chunk
            elif not chunk:
                open_fds.discard(fd)
    if timed_out:  # what arrived before the kill still names the events
        for fd in open_fds:
            try:
                os.set_blocking(fd, False)
                buffers[fd] += os.read(fd, 65536)
            except OSError:
                pass
    for fd in buffers:
        os.close(fd)
    return bytes(buffers[result_fd]), bytes(buffers[events_fd]), timed_out


def _kill(pid: int) -> None:
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
        except OSError:
            pass


def _death(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return f"the load process died of signal {number} ({signal.Signals(number).name})"
    return (
        f"the load process exited with status {os.waitstatus_to_exitcode(status)} without a result"
    )


def _child(request: dict, options, scratch: str, result_fd: int, events_fd: int) -> None:
    code = 0
    try:
        os.setsid()  # its own group: a timeout kills whatever it started
        limit = options.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_NPROC, (options.max_processes, options.max_processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.chdir(scratch)
        os.environ["HOME"] = scratch
        os.environ["TMPDIR"] = os.path.join(scratch, "tmp")
        import tempfile

        tempfile.tempdir = None
        import tasks

        GUARD.arm(scratch, tuple(options.library), events_fd)
        audit.close_unaudited()
        result = tasks.run(request, scratch)
    except MemoryError:
        result = {
            "status": "memory",
            "error": f"allocated past the memory limit of {options.memory_mb} MB",
        }
    except BaseException as exc:  # noqa: BLE001 - whatever the model raised is its result
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
    if GUARD.denied:
        result = {**result, "status": "denied"}
    result["denied"] = GUARD.denied
    result["denied_total"] = GUARD.total
    try:
        data = json.dumps(result, default=str).encode()
        while data:
            data = data[os.write(result_fd, data) :]
    except BaseException:  # noqa: BLE001
        code = 3
    os._exit(code)


if __name__ == "__main__":
    main()
