"""Dagster on PostgreSQL with the production instance file (deploy/dagster.yaml): the real
webserver and daemon as two processes, the sensor and a backfill over 6 workspaces x 3 days at
once, at most one run per workspace at a time, and the daemon killed mid-backfill."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections import defaultdict
from itertools import pairwise

import dagster as dg
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as RANGE_END
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG as RANGE_START
from mlflow import MlflowClient

from harness.local_dagster import DagsterServices
from marketplace_dagster import keys
from marketplace_dagster.partitions import WORKSPACE_TAG
from marketplace_dagster.sensors import TRIGGER_TAG
from marketplace_tests.testing.deployments import TODAY, one_model_each
from marketplace_tests.testing.support import ROOT

WORKSPACES = ("q1", "q2", "q3", "q4", "q5", "q6")
DAYS = [TODAY - dt.timedelta(days=2), TODAY - dt.timedelta(days=1), TODAY]
BACKFILL_TAG = "dagster/backfill"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@pytest.fixture
def production_home(tmp_path, postgres, uid, monkeypatch):
    """A DAGSTER_HOME holding deploy/dagster.yaml as shipped, on a database of its own."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    database = f"dagster_{uid}"
    postgres.create_database(database)
    for name, value in postgres.dagster_env(database).items():
        monkeypatch.setenv(name, value)  # the webserver and daemon inherit them
    return home


def _partition(tags: dict[str, str]) -> str | None:
    """A run's one partition: the sensor's runs name it; a backfill's give it as a range of one."""
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    start, end = tags.get(RANGE_START), tags.get(RANGE_END)
    assert start == end, f"a run over several partitions: {tags}"
    return start


def _wait(predicate, timeout: float, what: str, services: DagsterServices) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}; daemon log:\n{services.daemon_log.read_text()[-3000:]}")
        time.sleep(2)


def test_sensor_and_backfill_on_postgres_one_run_per_workspace_through_a_daemon_restart(
    servers, deploy, uid, production_home
):
    stopped = {"default_status": "stopped"}
    deployment = one_model_each(
        servers,
        deploy,
        uid,
        WORKSPACES,
        sensor={"default_status": "running"},
        client={"timeout_seconds": 60, "max_retries": 2},  # up to six runs share two cores
        automation=stopped,
        schedule=stopped,
        freshness=stopped,
        checks=stopped,
        housekeeping=stopped,
    )
    services = DagsterServices(deployment.path, production_home)
    instance = dg.DagsterInstance.from_config(str(production_home))
    try:
        services.wait_until_loaded()
        partitions = [f"{day.isoformat()}|{w}" for day in DAYS for w in WORKSPACES]
        backfill = services.launch_backfill(partitions, [k.path for k in keys.CHAIN])

        def succeeded() -> int:
            runs = services.backfill_status(backfill)["runs"]
            return sum(r["status"] == "SUCCESS" for r in runs)

        _wait(lambda: succeeded() >= 4, 900, "no 4 backfill runs succeeded", services)
        services.kill_daemon()
        time.sleep(3)
        services.start_daemon()
        status = services.wait_for_backfill(backfill, timeout=1500)
        assert status["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), status

        def all_finished() -> bool:
            records = instance.get_run_records()
            return bool(records) and all(r.dagster_run.status in FINISHED for r in records)

        _wait(all_finished, 600, "runs still queued or running", services)
        records = instance.get_run_records()
    finally:
        services.stop()
        instance.dispose()

    by_partition = defaultdict(list)
    by_workspace = defaultdict(list)
    for record in records:
        run = record.dagster_run
        partition = _partition(run.tags)
        if partition is None:  # the catalog's refresh after a sync: no workspace's run
            assert WORKSPACE_TAG not in run.tags, run.tags
            continue
        workspace = partition.split("|")[1]
        # Every run carries its workspace: the sensor's set it, the backfill's got it in the queue.
        assert run.tags.get(WORKSPACE_TAG) == workspace, run.tags
        by_workspace[workspace].append(record)
        if run.tags.get(BACKFILL_TAG) == backfill:
            by_partition[partition].append(run.status)
    # Nothing lost or duplicated: one successful run per partition of the backfill.
    assert sorted(by_partition) == sorted(partitions)
    for partition, statuses in by_partition.items():
        assert statuses.count(dg.DagsterRunStatus.SUCCESS) == 1, (partition, statuses)
    # The sensor asked too (every workspace had a new production version).
    assert any(TRIGGER_TAG in r.dagster_run.tags for r in records)
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records), [
        (r.dagster_run.job_name, r.dagster_run.tags, r.dagster_run.status) for r in records
    ]
    # At most one run per workspace at a time, from the run records' own start and end times.
    for workspace, runs in by_workspace.items():
        spans = sorted((r.start_time, r.end_time) for r in runs)
        for (_, end), (start, _) in pairwise(spans):
            assert end <= start, f"two runs of {workspace} overlapped: {spans}"

    market = MlflowClient(servers["marketplace"].uri)
    for w in WORKSPACES:
        name = f"{uid}-{w}.{uid}_{w}_m"
        assert [v.version for v in market.search_model_versions(f"name='{name}'")] == ["1"], name
        assert market.get_model_version_by_alias(name, "production").version == "1"
