"""The production instance file (deploy/dagster.yaml) and its run coordinator's one decision."""

from __future__ import annotations

from pathlib import Path

import yaml
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as RANGE_END
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG as RANGE_START

from marketplace_dagster.partitions import PARTITION_WORKSPACE_TAG, WORKSPACE_TAG
from marketplace_dagster.run_queue import WorkspaceRunCoordinator, workspace_tags

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_a_run_of_a_workspace_gets_its_workspace_tag_once():
    assert workspace_tags({PARTITION_WORKSPACE_TAG: "dev01"}) == {WORKSPACE_TAG: "dev01"}
    assert workspace_tags({PARTITION_WORKSPACE_TAG: "dev01", WORKSPACE_TAG: "dev01"}) == {}
    # The partition decides: a stale or hand-set tag naming another workspace is corrected.
    assert workspace_tags({PARTITION_WORKSPACE_TAG: "dev01", WORKSPACE_TAG: "dev02"}) == {
        WORKSPACE_TAG: "dev01"
    }
    assert workspace_tags({}) == {}  # the catalog's refresh: no workspace


def test_a_backfills_run_gets_the_workspace_of_its_partition_range():
    # A backfill's runs carry only the range of partitions they materialize.
    one = {RANGE_START: "2026-12-05|dev01", RANGE_END: "2026-12-05|dev01"}
    assert workspace_tags(one) == {WORKSPACE_TAG: "dev01"}
    days = {RANGE_START: "2026-12-01|dev01", RANGE_END: "2026-12-05|dev01"}
    assert workspace_tags(days) == {WORKSPACE_TAG: "dev01"}
    # Over two workspaces it is no one workspace's run; a key not ours names none.
    assert workspace_tags({RANGE_START: "2026-12-05|dev01", RANGE_END: "2026-12-05|dev02"}) == {}
    assert workspace_tags({RANGE_START: "2026-12-05", RANGE_END: "2026-12-06"}) == {}


def test_the_production_instance_file_is_valid_and_queues_one_run_per_workspace(monkeypatch):
    for name, value in {
        "DAGSTER_PG_HOST": "db.example.internal",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_USER": "dagster",
        "DAGSTER_PG_PASSWORD": "secret",
        "DAGSTER_PG_DB": "dagster",
    }.items():
        monkeypatch.setenv(name, value)
    config, _ = dagster_instance_config(str(DEPLOY))  # Dagster's own schema, as the daemon reads it

    postgres = config["storage"]["postgres"]["postgres_db"]
    assert postgres["scheme"] == "postgresql+psycopg2"
    assert {key: postgres[key] for key in ("hostname", "username", "db_name")} == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "username": {"env": "DAGSTER_PG_USER"},
        "db_name": {"env": "DAGSTER_PG_DB"},
    }
    coordinator = config["run_coordinator"]
    assert (coordinator["module"], coordinator["class"]) == (
        "marketplace_dagster.run_queue",
        WorkspaceRunCoordinator.__name__,
    )
    assert coordinator["config"]["dequeue_interval_seconds"] <= 1
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    per_workspace = {
        limit["key"]
        for limit in limits
        if limit["limit"] == 1 and limit.get("value") == {"applyLimitPerUniqueValue": True}
    }
    assert WORKSPACE_TAG in per_workspace
    assert config["run_monitoring"]["enabled"] and config["run_retries"]["enabled"]
    assert config["run_retries"]["max_retries"] >= 1


def test_the_coordinator_takes_the_queued_coordinators_config():
    raw = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_coordinator"]["config"]
    coordinator = WorkspaceRunCoordinator.from_config_value(None, raw)
    assert isinstance(coordinator, WorkspaceRunCoordinator)
    assert coordinator.dequeue_interval_seconds == raw["dequeue_interval_seconds"]
