"""A test's deployment (configuration file, loaded config, Dagster instance) and reading its
runs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import yaml

from harness.local_dagster import DAGSTER, instance_env
from marketplace.config import MarketplaceConfig, load_config
from marketplace_dagster import keys
from marketplace_dagster.assets.sync import build_sync_assets
from marketplace_dagster.definitions import build_definitions
from marketplace_dagster.keys import CATALOG
from marketplace_dagster.partitions import build_marketplace_partitions_def, partition_key
from marketplace_dagster.resources import build_resources

TODAY = dt.datetime.now(dt.UTC).date()


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


def deployments(tmp_path: Path, marketplace_uri: str):
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


def one_model_each(
    servers, deploy, uid: str, workspaces, marketplace: dict | None = None, **overrides
) -> Deployment:
    """A deployment of `workspaces` on ws_a, each with a Production model of its own
    ({uid}_{workspace}_m) registered first, named `{uid}-{workspace}.{model}` in the marketplace."""
    from harness.seeding import register_version  # imports a model class: only when used

    marketplace = marketplace or {}
    for workspace in workspaces:
        register_version(servers["ws_a"].uri, f"{uid}_{workspace}_m", stage="Production")
    return deploy(
        [
            {
                "name": w,
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_{w}_*"],
            }
            for w in workspaces
        ],
        marketplace={"name_template": uid + "-{workspace}.{model}", **marketplace},
        **overrides,
    )


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


def materialize_command(partition: str) -> list[str]:
    """`dagster asset materialize` of every asset of the definitions, for one partition."""
    return [
        str(DAGSTER),
        "asset",
        "materialize",
        "-m",
        "marketplace_dagster.definitions",
        "--select",
        "*",
        "--partition",
        partition,
    ]


def materialize_in_processes(
    deployment: Deployment, workspaces, tmp_path: Path, day: dt.date = TODAY
) -> None:
    """Sync today's partition of each workspace at once, one `dagster asset materialize` process
    each, on one persistent instance; each must succeed."""
    import subprocess

    from .support import ROOT

    home = tmp_path / "dagster_home"
    home.mkdir()
    # Dagster creates its SQLite storage on first use, and racing first uses collide: create it
    # once.
    dg.DagsterInstance.from_config(str(home)).dispose()
    env = instance_env(deployment.path, home)
    logs = [tmp_path / f"{w}.log" for w in workspaces]
    processes = []
    for w, log in zip(workspaces, logs):
        with open(log, "wb") as output:  # a pipe read only at the end could fill and stall a run
            processes.append(
                subprocess.Popen(
                    materialize_command(f"{day.isoformat()}|{w}"),
                    cwd=ROOT,
                    env=env,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            )
    for process, log in zip(processes, logs):
        process.wait(timeout=600)
        assert process.returncode == 0, log.read_text(errors="replace")[-3000:]
