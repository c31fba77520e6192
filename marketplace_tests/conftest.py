"""Fixtures: real MLflow servers shared by the session, and per-test configurations.

Servers are shared (each costs about 550 MB and several seconds); tests stay apart by giving
every model a unique name and scoping each workspace with an `include` pattern. Tests live in
`unit/` (no server, process or browser: `make test-fast`) and `integration/` (the rest);
helpers in `testing/`.
"""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest

from harness import local_servers
from marketplace_tests.testing.deployments import UNUSED_URI, deployments
from marketplace_tests.testing.emulators import CLOUD_KEYS


@pytest.fixture(scope="session")
def servers(tmp_path_factory) -> dict[str, local_servers.LocalServer]:
    root = tmp_path_factory.mktemp("mlflow-servers")
    wanted: dict[str, local_servers.LocalServer] = {}
    for name in ("marketplace", "ws_a", "ws_b"):
        port = local_servers.free_port(avoid={s.port for s in wanted.values()})
        wanted[name] = local_servers.LocalServer(name, root / name, port)
    with ThreadPoolExecutor(len(wanted)) as pool:
        list(pool.map(local_servers.start, wanted.values()))
    yield wanted
    for server in wanted.values():
        local_servers.stop(server)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL server from the machine's binaries (harness/postgres.py); each test
    makes databases of its own on it."""
    import shutil

    from harness.postgres import PostgresServer, server_root

    root = server_root(tmp_path_factory.mktemp("postgres") / "server")
    server = PostgresServer(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_marketplace(tmp_path_factory, postgres):
    """A marketplace `mlflow server` on PostgreSQL with 4 workers, as registry operators run it."""
    server = local_servers.LocalServer(
        "pg-marketplace",
        tmp_path_factory.mktemp("pg-marketplace"),
        local_servers.free_port(),
        backend_store_uri=postgres.create_database("mlflow_marketplace"),
        workers=4,
    )
    local_servers.start(server)
    yield server
    local_servers.stop(server)


@pytest.fixture(autouse=True)
def _isolated_mlflow_state(monkeypatch):
    """No test leaks the process-wide tracking URI (or an active run) into another."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(None)
    yield
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def uid() -> str:
    """A short unique prefix for this test's model names."""
    return "t" + uuid.uuid4().hex[:8]


# The longest files, measured with --durations: started first, so that two workers
# (`make test`, pytest-xdist by file) finish together instead of one waiting on the smoke benchmark.
LONGEST_FIRST = (
    "test_benchmarks.py",
    "test_postgres_instance.py",
    "test_backfill.py",
    "test_lifecycle.py",
    "test_propagation.py",
    "test_governance.py",
    "test_crashes.py",
    "test_cloud_storage_pipeline.py",
    "test_concurrent_runs.py",
    "test_grants_basic_auth.py",
    "test_postgres_registry.py",
)


SERVER_FIXTURES = {"servers", "emulators", "postgres", "pg_marketplace"}


def pytest_collection_modifyitems(items):
    """Everything under `integration/` is the `servers` tier; a unit test asking for a server
    fixture is a mistake caught here, not a slow `make test-fast`."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.path)).name, len(rank)))
    for item in items:
        tier = Path(str(item.path)).parent.name
        if tier == "integration":
            item.add_marker(pytest.mark.servers)
        elif tier == "unit" and SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(f"{item.nodeid} starts servers: move it to integration/")


@pytest.fixture
def deploy(tmp_path, servers):
    """Write a configuration for this test (workspaces scoped to its models) and load it."""
    yield from deployments(tmp_path, servers["marketplace"].uri)


@pytest.fixture
def configure(tmp_path):
    """Like `deploy`, for tests that never reach a registry (no server is started)."""
    yield from deployments(tmp_path, UNUSED_URI)


@pytest.fixture(autouse=True)
def _no_config_env(monkeypatch):
    monkeypatch.delenv("MARKETPLACE_CONFIG", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # The pipeline sets MLflow's HTTP bounds process-wide; monkeypatch puts them back after.
    for name in ("TIMEOUT", "MAX_RETRIES", "BACKOFF_FACTOR", "BACKOFF_JITTER"):
        monkeypatch.setenv(
            f"MLFLOW_HTTP_REQUEST_{name}", os.environ.get(f"MLFLOW_HTTP_REQUEST_{name}", "")
        )
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}")


@pytest.fixture(scope="session")
def emulators(tmp_path_factory):
    """The S3 emulator and Azurite, started once; a backend that cannot start fails its tests."""
    from marketplace_tests.testing.emulators import start_azurite, start_s3

    folder = tmp_path_factory.mktemp("emulators")
    started = {}
    try:
        started["s3"] = start_s3(folder)
        started["azure"] = start_azurite(folder)
        yield started
    finally:
        for emulator in started.values():
            emulator.stop()


@pytest.fixture(params=["s3", "azure"])
def cloud(request, emulators, uid, monkeypatch):
    """One test's external storage on an emulator: a bucket (S3) or container (ADLS) of its own,
    credentials in the environment as a user would give them."""
    emulator = emulators[request.param]
    space = f"{uid}-{request.param}"
    emulator.make_space(space)
    for name, value in emulator.credentials(CLOUD_KEYS).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(
        "AWS_EC2_METADATA_DISABLED", "true"
    )  # no instance-metadata look-ups off loopback
    return emulator, emulator.storage_config(space, "marketplace", CLOUD_KEYS)


@pytest.fixture
def own_databricks_profiles(monkeypatch):
    """Each test writes its own Databricks profile file; the environment is put back after."""
    from marketplace import databricks

    monkeypatch.setattr(databricks, "_profiles", databricks._Profiles())
    monkeypatch.setenv(databricks.CONFIG_FILE_ENV, "put back after the test")
    monkeypatch.delenv(databricks.CONFIG_FILE_ENV)


# A model folder and the file a payload would create, for the scanning tests
# (unit/test_scanning_*.py).


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran"
