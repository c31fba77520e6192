"""`make dev-postgres`: `make dev` on the production shape. A local PostgreSQL server (the tests'
harness/postgres.py) holds the marketplace registry (`mlflow server --workers 4`) and the Dagster
instance (deploy/dagster.yaml, its run queue included); the workspaces' servers stay on SQLite.

    python -m harness.dev_postgres dev | up | stop
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
from pathlib import Path

from harness import demo
from harness.local_servers import LocalServer, free_port, start, stop
from harness.postgres import PostgresServer, server_root
from marketplace.config import MarketplaceConfig, load_config

DAGSTER_DB = "dagster"
REGISTRY_DB = "mlflow_marketplace"
DEPLOY_INSTANCE = Path(__file__).resolve().parents[1] / "deploy" / "dagster.yaml"


def _state(config: MarketplaceConfig) -> Path:
    return demo.state_dir(config) / "postgres"


def _remembered(path: Path, make) -> str:
    """A value kept in `path` across restarts (the server's port and password)."""
    if not path.exists():
        path.write_text(str(make()))
        path.chmod(0o600)
    return path.read_text().strip()


def postgres(config: MarketplaceConfig) -> PostgresServer:
    state = _state(config)
    state.mkdir(parents=True, exist_ok=True)
    root = Path(_remembered(state / "root", lambda: server_root(state / "server")))
    return PostgresServer(
        root,
        port=int(_remembered(state / "port", free_port)),
        password=_remembered(state / "password", lambda: secrets.token_urlsafe(16)),
        fast=False,
    )


def _marketplace_servers(config: MarketplaceConfig) -> tuple[LocalServer, LocalServer]:
    """The demo's SQLite marketplace server, and the PostgreSQL one that takes its port."""
    sqlite = next(s for s in demo.local_servers(config) if s.name == "marketplace")
    server = postgres(config)
    on_postgres = LocalServer(
        "marketplace-postgres",
        _state(config) / "mlflow",
        sqlite.port,
        backend_store_uri=server.url(REGISTRY_DB),
        workers=4,
    )
    return sqlite, on_postgres


def up(config: MarketplaceConfig) -> dict[str, str]:
    """PostgreSQL, the marketplace registry on it, the workspaces' servers; returns the
    DAGSTER_PG_* variables."""
    server = postgres(config)
    if not (server.data / "postmaster.pid").exists():
        server.start()
    server.create_database(DAGSTER_DB)
    server.create_database(REGISTRY_DB)
    demo.say(f"  postgresql   {server.host}:{server.port}  (data: {server.data})")
    sqlite, on_postgres = _marketplace_servers(config)
    if stop(sqlite):
        demo.say("  marketplace  the SQLite server of `make demo` stopped: its port is reused")
    start(on_postgres)
    demo.say(f"  marketplace  {on_postgres.uri}  on PostgreSQL, 4 workers")
    for workspace in demo.local_servers(config):
        if workspace.name != "marketplace":
            start(workspace)
            demo.say(f"  {workspace.name:<12} {workspace.uri}")
    return server.dagster_env(DAGSTER_DB)


def down(config: MarketplaceConfig) -> None:
    if not (_state(config) / "root").exists():
        return  # make dev-postgres never ran here
    _, on_postgres = _marketplace_servers(config)
    if stop(on_postgres):
        demo.say("  marketplace on PostgreSQL stopped")
    server = postgres(config)
    if (server.data / "postmaster.pid").exists():
        server.stop()
        demo.say("  postgresql stopped")


def dev(config: MarketplaceConfig) -> int:
    """Everything up, the demo's models seeded, then `dagster dev` on the production instance."""
    demo.say("Servers:")
    os.environ.update(up(config))
    demo.say("Demo models:")
    demo.seed(config)
    demo.say("Webhooks on the demo's servers:")
    demo.webhooks(config)
    home = demo.state_dir(config) / "dagster_home_postgres"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEPLOY_INSTANCE, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    demo.say(f"Dagster on PostgreSQL (instance {home / 'dagster.yaml'}): http://127.0.0.1:3000")
    return demo.dev(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.dev_postgres", description=__doc__)
    parser.add_argument("command", choices=["dev", "up", "stop"])
    args = parser.parse_args(argv)
    config = load_config()
    if args.command == "dev":
        return dev(config)
    if args.command == "up":
        for name, value in up(config).items():
            print(f"export {name}={value}")
        return 0
    down(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
