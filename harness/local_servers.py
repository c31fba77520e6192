"""Local `mlflow server` processes for the embedded default and the tests.

Flags found to work on this kind of machine: a SQLite backend, a local artifact root that clients
write to directly (`--no-serve-artifacts`, which mlflow-export-import's import needs), one worker
and no job runner (a default server costs 2 GB and 10 s; trimmed, about 550 MB and 6 s).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import requests

PID_FILE = "server.pid"
LOG_FILE = "server.log"


@dataclass(frozen=True)
class LocalServer:
    name: str
    root: Path
    port: int
    host: str = "127.0.0.1"
    # Another database (a PostgreSQL URL, say) than the SQLite file in `root`, and more workers.
    backend_store_uri: str | None = None
    workers: int = 1

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def artifact_root(self) -> Path:
        return self.root / "artifacts"

    @property
    def log_path(self) -> Path:
        return self.root / LOG_FILE

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            # A database URL given goes through the environment (MLFLOW_BACKEND_STORE_URI): its
            # password is then not on the process's command line for every `ps` to read.
            *([] if self.backend_store_uri else
              ["--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}"]),
            "--default-artifact-root", str(self.artifact_root),
            "--no-serve-artifacts",
            "--host", self.host,
            "--port", str(self.port),
            "--workers", str(self.workers),
        ]  # fmt: skip


def webhook_env(server: LocalServer) -> dict[str, str]:
    """What a local server needs to deliver webhooks to the receiver on loopback: private addresses
    and plain http allowed, the webhook list re-read every second (MLflow caches it for 60 s), and
    a secret-encryption key of its own, kept beside its database so a restart still reads its
    webhooks' secrets."""
    from cryptography.fernet import Fernet

    key_file = server.root / "webhook.key"
    if not key_file.exists():
        server.root.mkdir(parents=True, exist_ok=True)
        key_file.write_text(Fernet.generate_key().decode())
        key_file.chmod(0o600)
    return {
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": key_file.read_text().strip(),
    }


def free_port(avoid: Collection[int] = ()) -> int:
    """A port free now and not in `avoid`: the ports of servers picked but not started yet (the OS
    can hand a closed port out again, and `start` reuses whatever server answers on a port)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port


def is_healthy(uri: str, timeout: float = 2.0) -> bool:
    try:
        return requests.get(f"{uri}/health", timeout=timeout).ok
    except requests.RequestException:
        return False


def _pid(server: LocalServer) -> int | None:
    try:
        pid = int((server.root / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def start(server: LocalServer, *, wait_seconds: float = 120) -> subprocess.Popen | None:
    """Start `server` detached from the terminal, output in its log; reuse it if already up."""
    if is_healthy(server.uri):
        return None
    server.artifact_root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **webhook_env(server)}
    if server.backend_store_uri:
        env["MLFLOW_BACKEND_STORE_URI"] = server.backend_store_uri
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(server.log_path, "ab") as log:
        process = subprocess.Popen(
            server.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=server.root,
            start_new_session=True,
        )
    (server.root / PID_FILE).write_text(str(process.pid))
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"mlflow server {server.name} on port {server.port} exited; log "
                f"{server.log_path}:\n{tail}"
            )
        if is_healthy(server.uri):
            return process
        time.sleep(0.25)
    stop(server)
    raise TimeoutError(
        f"mlflow server {server.name} did not answer on {server.uri} within {wait_seconds:.0f} s; "
        f"see {server.log_path}"
    )


def stop(server: LocalServer, *, wait_seconds: float = 15) -> bool:
    """Stop the server's whole process group; True if one was running."""
    pid = _pid(server)
    if pid is None:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if not _alive(pid):
            break
    (server.root / PID_FILE).unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
