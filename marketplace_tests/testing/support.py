"""Helpers shared by the test modules."""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cloudpickle
import mlflow
import pytest

from harness import local_servers
from marketplace import summary
from marketplace.config import MarketplaceConfig
from marketplace.external import ExternalStorage
from marketplace.registry import process_tracking_uri

ROOT = Path(__file__).resolve().parents[2]


class HasConfig(Protocol):
    """A test deployment (deployments.Deployment), or anything else holding a configuration."""

    config: MarketplaceConfig


def table_rows(
    where: HasConfig | MarketplaceConfig | Path | str, table: str, *, workspace: str | None = None
) -> list[dict]:
    """The rows of summary table `table` of a deployment, a configuration, or a local storage root
    (a Path or str); [] while the table does not exist."""
    if isinstance(where, (Path, str)):
        return summary.read_rows(str(Path(where) / table), workspace=workspace)
    config = where if isinstance(where, MarketplaceConfig) else where.config
    return ExternalStorage.of(config).read_rows(table, workspace=workspace)


@dataclass(frozen=True)
class AuthenticatedServer(local_servers.LocalServer):
    """`mlflow server --app-name basic-auth` (needs `mlflow[auth]`): every request logs in, and
    with `default_permission = NO_PERMISSIONS` a user reads only what is granted to them."""

    admin_password: str = ""
    # The users' and permissions' database: a SQLite file in `root` unless given (PostgreSQL).
    auth_database_uri: str | None = None

    @property
    def auth_config(self) -> Path:
        return self.root / "basic_auth.ini"

    def command(self) -> list[str]:
        return [*super().command(), "--app-name", "basic-auth"]


def start_authenticated(server: AuthenticatedServer) -> None:
    """Start `server` with its own auth ini and user database in its folder; its first start
    creates the user `admin` with `server.admin_password` (MLflow ships no default password)."""
    server.root.mkdir(parents=True, exist_ok=True)
    database = server.auth_database_uri or f"sqlite:///{server.root / 'basic_auth.db'}"
    server.auth_config.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {database}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    # The server reads these when it starts (local_servers.start passes this process's environment).
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_AUTH_CONFIG_PATH", str(server.auth_config))
        env.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", server.admin_password)
        env.setenv(
            "MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(16)
        )  # the auth app's CSRF key
        local_servers.start(server)


def poll_all_next(cursor: str | None) -> str | None:
    """production_version_sensor's cursor with its full poll due, as it is once
    `sensor.minimum_interval_seconds` have passed (between full polls a tick polls only the
    workspaces a webhook event named)."""
    if cursor is None:
        return None
    state = json.loads(cursor)
    state.pop("polled_at", None)
    return json.dumps(state)


@contextlib.contextmanager
def by_value(*objects) -> Iterator[None]:
    """Pickle the modules of `objects` by value while saving a model: a sandbox sees no test
    module."""
    modules = {sys.modules[o.__module__] for o in objects}
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)


def assert_predicts_like_source(
    source_tracking_uri: str, source_model: str, market_tracking_uri: str, market_model: str
) -> None:
    """The marketplace copy loads by its alias and predicts exactly as the source (diabetes
    models)."""
    import numpy as np
    from sklearn import datasets

    features = datasets.load_diabetes(return_X_y=True, as_frame=True)[0].tail(20)
    with process_tracking_uri(source_tracking_uri):
        source = mlflow.pyfunc.load_model(source_model)
    with process_tracking_uri(market_tracking_uri):
        copy = mlflow.pyfunc.load_model(market_model)
    np.testing.assert_array_equal(copy.predict(features), source.predict(features))
