"""How tests drive a marketplace against real servers: source workspaces and their production
versions, runs through the `dagster` CLI, sensor ticks, checks, and rows for the summary tables."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from mlflow import MlflowClient

from harness.local_dagster import instance_env, sync_job_command
from marketplace.manifest import SIGNATURE_NAME
from marketplace.provenance import TAG_SOURCE_VERSION
from marketplace_dagster import keys

from .deployments import TODAY, step_failure_message
from .support import ROOT

# The two ways a source marks its production version, as its workspace's `production` key says.
ALIAS = "production"  # the marketplace's alias on the version it serves
STAGE = {"stage": "Production"}
CHAMPION = {"alias": "champion"}
SENSOR = "production_version_sensor"
MATCHES_SOURCES = "marketplace_matches_sources"
CHECKS_JOB = "marketplace_checks_job"
MODEL_SIGNING = Path(sys.executable).parent / "model_signing"  # OpenSSF model-signing's CLI
DAY_1 = dt.date(2026, 11, 2)


def workspace(name: str, uri: str, production: dict, uid: str, **curation) -> dict:
    """A workspace entry of the configuration, scoped to this test's models."""
    return {
        "name": name,
        "tracking_uri": uri,
        "production": production,
        "include": [f"{uid}_*"],
        **curation,
    }


def promote(uri: str, model: str, version: int | str, production: dict) -> None:
    """Make `version` the source's production version: the alias moves, or it becomes the only
    version in stage Production (the one there before is archived)."""
    client = MlflowClient(uri)
    if "alias" in production:
        client.set_registered_model_alias(model, production["alias"], str(version))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated, still served
        client.transition_model_version_stage(
            model, str(version), "Production", archive_existing_versions=True
        )


def versions_of(market: MlflowClient, mp: str) -> list:
    return market.search_model_versions(f"name='{mp}'")


def copy_of(market: MlflowClient, mp: str, source_version: int) -> str:
    """The marketplace version imported from `source_version` (exactly one)."""
    (found,) = [
        v.version
        for v in versions_of(market, mp)
        if v.tags.get(TAG_SOURCE_VERSION) == str(source_version)
    ]
    return found


def check_evaluations(deployment) -> dict[str, dg.AssetCheckEvaluation]:
    """Run the checks job in process; its evaluations by check name."""
    result = deployment.defs.resolve_job_def(CHECKS_JOB).execute_in_process(
        instance=deployment.instance, raise_on_error=False
    )
    assert result.success, step_failure_message(result)  # a failing check does not fail the run
    found = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert found[MATCHES_SOURCES].asset_key == keys.REGISTRATION
    return found


@dataclass
class Launched:
    process: subprocess.Popen
    log: Path

    def finish(self) -> None:
        try:
            self.process.wait(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        assert self.process.returncode == 0, self.log.read_text(errors="replace")[-3000:]


class Cli:
    """marketplace_sync_job runs in `dagster job execute` processes, as a run worker runs them,
    on one persistent Dagster instance."""

    def __init__(self, deployment, folder: Path, instance_file: Path | None = None):
        """`instance_file`: the instance's dagster.yaml (deploy/dagster.yaml, say), else SQLite."""
        self.deployment = deployment
        self.folder = folder
        self.home = folder / "dagster_home"
        self.home.mkdir()
        if instance_file is not None:
            shutil.copy(instance_file, self.home / "dagster.yaml")
        # Dagster creates its SQLite storage on first use, and racing first uses collide: create it
        # once.
        dg.DagsterInstance.from_config(str(self.home)).dispose()
        self.launched = 0

    def launch(self, workspace_name: str, day: dt.date = TODAY) -> Launched:
        self.launched += 1
        log = self.folder / f"run-{self.launched}.log"
        env = instance_env(self.deployment.path, self.home)
        with open(log, "wb") as output:  # a pipe read only at the end could fill and stall a run
            process = subprocess.Popen(
                sync_job_command(day, workspace_name),
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return Launched(process, log)

    def sync(self, workspace_name: str, day: dt.date = TODAY) -> dict:
        """One run, which must succeed; the metadata of its registration."""
        self.launch(workspace_name, day).finish()
        return self.newest_metadata(keys.REGISTRATION)

    def refresh_catalog(self):
        """Materialize marketplace/catalog on this persistent instance."""
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            return dataclasses.replace(self.deployment, instance=instance).refresh_catalog()

    def newest_metadata(self, asset_key: dg.AssetKey) -> dict:
        """The metadata of the asset's newest materialization on this persistent instance."""
        instance = dg.DagsterInstance.from_config(str(self.home))
        try:
            record = instance.fetch_materializations(asset_key, limit=1).records[0]
        finally:
            instance.dispose()
        return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def sensor_tick(deployment, cursor: str | None = None):
    sensor = deployment.defs.resolve_sensor_def(SENSOR)
    context = dg.build_sensor_context(instance=deployment.instance, cursor=cursor)
    result = sensor(context)
    return result, result.cursor


def export_row(
    workspace: str, model_name: str, version: int, day: dt.date = DAY_1, **overrides
) -> dict:
    row = {
        "workspace": workspace,
        "model_name": model_name,
        "version": version,
        "run_id": f"run-{workspace}-{model_name}-{version}",
        "source": f"models:/{model_name}/{version}",
        "export_date": day,
        "exported_at": dt.datetime.combine(day, dt.time(3, 4, 5, 123456), tzinfo=dt.UTC),
        "export_path": f"/exports/{workspace}/{model_name}/{version}",
        "checksum": f"{version:064x}",
        "size_bytes": 1000 + version,
        "file_count": 3,
    }
    row.update(overrides)
    return row


def model_signing_verify(
    folder: Path, public_key: Path, *, git_files: bool = True
) -> subprocess.CompletedProcess:
    command = [
        str(MODEL_SIGNING), "verify", "key", "--signature", str(folder / SIGNATURE_NAME),
        "--public_key", str(public_key), *(["--no-ignore-git-paths"] if git_files else []),
        str(folder),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
