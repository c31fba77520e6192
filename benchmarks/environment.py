"""Where the benchmarks run: their own local MLflow servers, marketplace configurations pointing
at them, and a Dagster home per run of the sync job."""

from __future__ import annotations

import datetime as dt
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import yaml

from harness.local_servers import LocalServer, free_port, start, stop
from harness.postgres import PostgresServer, server_root

ROOT = Path(__file__).resolve().parent.parent


def today() -> dt.date:
    """The partition day for models seeded until now. Read at each use: a run of the benchmark can
    cross midnight (UTC), and a day's partition does not see a version registered after it."""
    return dt.datetime.now(dt.UTC).date()


# Runs share this 2-core machine with each other and with every MLflow server: here a pool of
# threads per run adds CPU (about half as much again per version at 3 runs at once) instead of
# hiding latency, as it does against remote registries. Item 1 measures the default pool too.
BENCH_CLIENT = {"max_workers": 1}
# A marketplace registry on PostgreSQL runs as an enterprise runs it: several workers.
POSTGRES_WORKERS = 4


class Bench:
    """The MLflow servers of a benchmark run, under `folder`, each on a port of its own, and the
    one PostgreSQL server (started when first asked for) that holds the PostgreSQL registries'
    and Dagster instances' databases."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.servers: list[LocalServer] = []
        self._ports: set[int] = set()
        self._postgres: PostgresServer | None = None

    def server(self, name: str, *, postgres: bool = False) -> LocalServer:
        """An MLflow server on SQLite with one worker, or on a PostgreSQL database of its own
        (named `name`) with POSTGRES_WORKERS workers."""
        # A port of its own for the whole run, not one a server stopped earlier may still hold.
        port = free_port(avoid=self._ports)
        self._ports.add(port)
        root = self.folder / "servers" / name
        if postgres:
            database = self.postgres().create_database(name)
            server = LocalServer(
                name, root, port, backend_store_uri=database, workers=POSTGRES_WORKERS
            )
        else:
            server = LocalServer(name, root, port)
        self.servers.append(server)
        return server

    def postgres(self) -> PostgresServer:
        if self._postgres is None:
            port = free_port(avoid=self._ports)
            self._ports.add(port)
            root = server_root(self.folder / "postgres")
            self._postgres = PostgresServer(root, port=port).start()
        return self._postgres

    def start_all(self, servers: list[LocalServer]) -> None:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(start, servers))

    def stop_all(self) -> None:
        """Stop every server started so far: each costs about 550 MB, and items need their own."""
        for server in self.servers:
            stop(server)
        self.servers = []

    def close(self) -> None:
        self.stop_all()
        if self._postgres is not None:
            self._postgres.stop()
            # Under root its folder is outside `folder` (see server_root): remove it too.
            shutil.rmtree(self._postgres.root, ignore_errors=True)
            self._postgres = None


def write_config(
    path: Path, storage: Path, marketplace: LocalServer, workspaces: list[dict], **extra
) -> Path:
    extra.setdefault("client", BENCH_CLIENT)
    raw = {
        "start_date": (today() - dt.timedelta(days=40)).isoformat(),
        "external_storage": {"uri": str(storage)},
        "marketplace": {"tracking_uri": marketplace.uri},
        "workspaces": workspaces,
        **extra,
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def dagster_home(folder: Path) -> Path:
    home = folder / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dg.DagsterInstance.from_config(str(home)).dispose()  # create its storage before concurrent runs
    return home


def fresh_marketplace(
    bench: Bench, name: str, folder: Path, workspaces: list[dict], postgres: bool = False, **extra
) -> tuple[LocalServer, Path, Path]:
    """A fresh marketplace server, started, with its configuration (the same sources) and Dagster
    home."""
    market = bench.server(name, postgres=postgres)
    bench.start_all([market])
    config = write_config(
        folder / f"{name}.yaml", folder / f"{name}_storage", market, workspaces, **extra
    )
    return market, config, dagster_home(folder / name)
