"""Fixtures: real MLflow servers shared by the session, and per-test configurations.

Servers are shared (each costs about 550 MB and several seconds); tests stay apart by giving
every model a unique name and scoping each workspace with an `include` pattern.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from harness import local_servers
from marketplace.config import MarketplaceConfig, load_config
from marketplace.registry import filter_literal, process_tracking_uri
from marketplace_dagster import keys
from marketplace_dagster.assets.sync import build_sync_assets
from marketplace_dagster.definitions import build_definitions
from marketplace_dagster.keys import CATALOG
from marketplace_dagster.partitions import build_marketplace_partitions_def, partition_key
from marketplace_dagster.resources import build_resources

TODAY = dt.datetime.now(dt.UTC).date()


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


def sklearn_requirements() -> list[str]:
    """Given, not inferred: MLflow infers a model's requirements by loading it in a subprocess,
    about 4 s a model, most of a test's set-up."""
    import sklearn

    return [f"scikit-learn=={sklearn.__version__}"]


def _fit(kind: str, seed: int):
    from sklearn import datasets
    from sklearn.linear_model import LinearRegression, LogisticRegression

    if kind == "iris":
        x, y = datasets.load_iris(return_X_y=True, as_frame=True)
        return LogisticRegression(max_iter=500, C=1.0 / seed).fit(x, y), x.head(5)
    x, y = datasets.load_diabetes(return_X_y=True, as_frame=True)
    return LinearRegression().fit(x.iloc[: 200 + seed], y.iloc[: 200 + seed]), x.head(5)


def register_version(
    tracking_uri: str,
    model_name: str,
    *,
    stage: str | None = None,
    alias: str | None = None,
    kind: str = "iris",
    description: str | None = None,
) -> str:
    """Log a small scikit-learn model, register it as a new version, promote it; returns the version."""
    client = MlflowClient(tracking_uri)
    with process_tracking_uri(tracking_uri):
        # Experiment names are limited to 500 characters; model names are not.
        mlflow.set_experiment(
            f"/tests/{model_name}" if len(model_name) < 400 else f"/tests/{uuid.uuid4().hex}"
        )
        literal = filter_literal(model_name)
        count = (
            len(client.search_model_versions(f"name={literal}"))
            if client.search_registered_models(filter_string=f"name={literal}")
            else 0
        )
        model, example = _fit(kind, count + 1)
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                input_example=example,
                registered_model_name=model_name,
                pip_requirements=sklearn_requirements(),
            )
    version = str(info.registered_model_version)
    if description is not None:
        client.update_model_version(model_name, version, description=description)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if stage:
            client.transition_model_version_stage(model_name, version, stage)
    if alias:
        client.set_registered_model_alias(model_name, alias, version)
    return version


@dataclass
class Deployment:
    """One test's configuration file, its loaded config and a Dagster instance to run on."""

    path: Path
    config: MarketplaceConfig
    instance: dg.DagsterInstance

    @property
    def defs(self) -> dg.Definitions:
        return build_definitions(self.config)

    def sync(
        self, workspace: str, day: dt.date = TODAY, *, selection=None, raise_on_error: bool = False
    ):
        """Run the whole chain (or `selection`) for one partition; returns the execution result."""
        defs = self.defs
        key = partition_key(day, workspace)
        if selection is None:
            job = defs.resolve_job_def("marketplace_sync_job")
            return job.execute_in_process(
                partition_key=key, instance=self.instance, raise_on_error=raise_on_error
            )
        return dg.materialize(
            build_sync_assets(build_marketplace_partitions_def(self.config)),
            selection=selection,
            partition_key=key,
            resources=build_resources(self.config),
            instance=self.instance,
            raise_on_error=raise_on_error,
        )

    def refresh_catalog(self, *, raise_on_error: bool = True):
        """Materialize marketplace/catalog, as the automation sensor does after a sync."""
        job = self.defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={CATALOG}
        )
        return job.execute_in_process(instance=self.instance, raise_on_error=raise_on_error)


# A registry address no test talks to: for definitions, schedules and configuration alone.
UNUSED_URI = "http://127.0.0.1:9"


def pytest_collection_modifyitems(items):
    """The `servers` tier: every test that starts MLflow servers, emulators or the benchmark's;
    `make test-fast` runs the rest (`-m "not servers"`)."""
    for item in items:
        if {"servers", "emulators"} & set(
            getattr(item, "fixturenames", ())
        ) or "test_benchmarks" in item.nodeid:
            item.add_marker(pytest.mark.servers)


@pytest.fixture
def deploy(tmp_path, servers):
    """Write a configuration for this test (workspaces scoped to its models) and load it."""
    yield from _deployments(tmp_path, servers["marketplace"].uri)


@pytest.fixture
def configure(tmp_path):
    """Like `deploy`, for tests that never reach a registry (no server is started)."""
    yield from _deployments(tmp_path, UNUSED_URI)


def _deployments(tmp_path: Path, marketplace_uri: str):
    instances = []

    def make(workspaces: list[dict], **overrides) -> Deployment:
        raw = {
            "start_date": (TODAY - dt.timedelta(days=10)).isoformat(),
            "external_storage": {"uri": "external"},
            "marketplace": {"tracking_uri": marketplace_uri},
            "workspaces": workspaces,
            "client": {"timeout_seconds": 5, "max_retries": 0},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        path = tmp_path / f"marketplace-{len(instances)}.yaml"
        path.write_text(yaml.safe_dump(raw))
        instance = dg.DagsterInstance.ephemeral()
        instances.append(instance)
        return Deployment(path=path, config=load_config(path), instance=instance)

    yield make
    for instance in instances:
        instance.dispose()


def materializations(result, asset_key: dg.AssetKey) -> dict:
    """The metadata values of the asset's materialization in `result`."""
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == asset_key:
            return {k: v.value for k, v in materialization.metadata.items()}
    raise AssertionError(f"{asset_key.to_user_string()} was not materialized")


def assert_nothing_new(result, already_exported: int) -> None:
    """A re-run that found everything done: nothing exported, imported, inserted or changed."""
    assert result.success, step_failure_message(result)
    exported = materializations(result, keys.EXPORTS)
    assert (exported["exported"], exported["already_exported"]) == (0, already_exported)
    assert materializations(result, keys.IMPORTS)["imported"] == 0
    assert materializations(result, keys.EXPORT_SUMMARY)["rows_inserted"] == 0
    assert materializations(result, keys.IMPORT_SUMMARY)["rows_inserted"] == 0
    assert materializations(result, keys.REGISTRATION)["registry_changes"] == 0


def step_failure_message(result) -> str:
    """All step failure descriptions of a failed run, joined."""
    messages = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.event_specific_data.error
            messages.append(error.message if error else "")
    return "\n".join(messages)


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
    from .emulators import start_azurite, start_s3

    folder = tmp_path_factory.mktemp("emulators")
    started = {}
    try:
        started["s3"] = start_s3(folder)
        started["azure"] = start_azurite(folder)
        yield started
    finally:
        for emulator in started.values():
            emulator.stop()


CLOUD_KEYS = {"id": "MARKETPLACE_TEST_STORAGE_KEY_ID", "secret": "MARKETPLACE_TEST_STORAGE_SECRET"}


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


def assert_predicts_like_source(
    source_tracking_uri: str, source_model: str, market_tracking_uri: str, market_model: str
) -> None:
    """The marketplace copy loads by its alias and predicts exactly as the source (diabetes models)."""
    import numpy as np
    from sklearn import datasets

    features = datasets.load_diabetes(return_X_y=True, as_frame=True)[0].tail(20)
    with process_tracking_uri(source_tracking_uri):
        source = mlflow.pyfunc.load_model(source_model)
    with process_tracking_uri(market_tracking_uri):
        copy = mlflow.pyfunc.load_model(market_model)
    np.testing.assert_array_equal(copy.predict(features), source.predict(features))


def materialize_in_processes(
    deployment: Deployment, workspaces, tmp_path: Path, day: dt.date = TODAY
) -> None:
    """Sync today's partition of each workspace at once, one `dagster asset materialize` process
    each, on one persistent instance; each must succeed."""
    import subprocess

    from .support import DAGSTER, ROOT

    home = tmp_path / "dagster_home"
    home.mkdir()
    # Dagster creates its SQLite storage on first use, and racing first uses collide: create it once.
    dg.DagsterInstance.from_config(str(home)).dispose()
    env = {**os.environ, "MARKETPLACE_CONFIG": str(deployment.path), "DAGSTER_HOME": str(home)}
    logs = [tmp_path / f"{w}.log" for w in workspaces]
    processes = []
    for w, log in zip(workspaces, logs):
        with open(log, "wb") as output:  # a pipe read only at the end could fill and stall a run
            processes.append(
                subprocess.Popen(
                    [
                        str(DAGSTER),
                        "asset",
                        "materialize",
                        "-m",
                        "marketplace_dagster.definitions",
                        "--select",
                        "*",
                        "--partition",
                        f"{day.isoformat()}|{w}",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            )
    for process, log in zip(processes, logs):
        process.wait(timeout=600)
        assert process.returncode == 0, log.read_text(errors="replace")[-3000:]


@pytest.fixture
def own_databricks_profiles(monkeypatch):
    """Each test writes its own Databricks profile file; the process environment is put back after."""
    from marketplace import databricks

    monkeypatch.setattr(databricks, "_profiles", databricks._Profiles())
    monkeypatch.setenv(databricks.CONFIG_FILE_ENV, "put back after the test")
    monkeypatch.delenv(databricks.CONFIG_FILE_ENV)
