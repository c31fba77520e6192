"""A throwaway PostgreSQL server from the machine's own binaries, for the tests, `make dev-postgres`
and the benchmark: `initdb` into a folder of its own, `pg_ctl` on a free loopback port.

PostgreSQL refuses to run as root; under root the server runs as the `postgres` user (`runuser`),
in a folder that user owns. Clients connect over TCP with a password (scram-sha-256).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.local_servers import free_port

ROLE = "marketplace"
SERVER_USER = "postgres"  # who runs the server when we are root
# What a throwaway server may trade for speed; `make dev-postgres` keeps PostgreSQL's defaults.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
# Dagster's daemon, webserver and run processes, and MLflow's workers, each keep a pool.
MAX_CONNECTIONS = 400


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries here, or the server would not start: the message says which."""


def binaries() -> Path:
    """The folder holding `initdb` and `pg_ctl`: on PATH, else Debian's newest
    /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent

    def version(initdb: str) -> int:
        name = Path(initdb).parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if not found:
        raise PostgresUnavailable(
            "PostgreSQL's initdb and pg_ctl were found neither on PATH nor under "
            "/usr/lib/postgresql/*/bin; install Debian's postgresql package "
            "(apt-get install postgresql)"
        )
    return Path(found[-1]).parent


@dataclass
class PostgresServer:
    """One server: `data` holds its cluster, `log` its output."""

    root: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    fast: bool = True
    host: str = "127.0.0.1"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str, driver: str = "psycopg2") -> str:
        """A SQLAlchemy URL; the driver named, since SQLAlchemy 2.1 defaults to psycopg 3."""
        return f"postgresql+{driver}://{ROLE}:{self.password}@{self.host}:{self.port}/{database}"

    def dagster_env(self, database: str) -> dict[str, str]:
        """The DAGSTER_PG_* variables deploy/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": ROLE,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": database,
        }

    def start(self, wait_seconds: float = 60) -> PostgresServer:
        bin_dir = binaries()
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.data / "PG_VERSION").exists():
            self._init(bin_dir)
        options = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.data),
            "max_connections": str(MAX_CONNECTIONS),
            **(FAST_SETTINGS if self.fast else {}),
        }
        flags = " ".join(f"-c {key}={value}" for key, value in options.items())
        started = self._run(
            [str(bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", flags]
            + ["-w", "-t", str(int(wait_seconds)), "start"],
        )
        if started.returncode != 0:
            raise PostgresUnavailable(
                f"PostgreSQL did not start on port {self.port} (data {self.data}): "
                f"{started.stdout}{started.stderr}\n{self._log_tail()}"
            )
        return self

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        self._run([str(binaries() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def create_database(self, name: str) -> str:
        """Create `name` (if absent); returns its SQLAlchemy URL."""
        import psycopg2

        connection = psycopg2.connect(
            host=self.host, port=self.port, user=ROLE, password=self.password, dbname="postgres"
        )
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def _init(self, bin_dir: Path) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        password_file = self.root / "password"
        password_file.write_text(self.password)
        self._own(self.root)
        done = self._run(
            [str(bin_dir / "initdb"), "-D", str(self.data), "-U", ROLE, "-E", "UTF8"]
            + ["--pwfile", str(password_file), "--auth-host=scram-sha-256", "--auth-local=trust"]
            + ["--no-instructions"],
        )
        password_file.unlink()
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed in {self.data}: {done.stdout}{done.stderr}")

    def _run(self, command: list[str]) -> subprocess.CompletedProcess:
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    @staticmethod
    def _own(path: Path) -> None:
        """Under root, the server's folder belongs to its user."""
        if os.geteuid() != 0:
            return
        for folder, _, files in os.walk(path):
            shutil.chown(folder, SERVER_USER, SERVER_USER)
            for name in files:
                shutil.chown(os.path.join(folder, name), SERVER_USER, SERVER_USER)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def server_root(preferred: Path) -> Path:
    """`preferred`, or under root (where the server runs as `postgres`, who cannot enter root's
    private folders such as pytest's) a fresh folder in the system's temporary directory."""
    preferred.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or _reachable_by_others(preferred.parent):
        return preferred
    return Path(tempfile.mkdtemp(prefix="marketplace-postgres-"))


def _reachable_by_others(folder: Path) -> bool:
    folder = folder.resolve()
    return all(os.stat(p).st_mode & 0o001 for p in [folder, *folder.parents])
