"""Backfills launched through the webserver's GraphQL API, run by the real daemon."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness.local_dagster import DagsterDev
from harness.seeding import register_version
from marketplace.provenance import TAG_SOURCE_VERSION
from marketplace_dagster import keys
from marketplace_tests.testing.deployments import TODAY
from marketplace_tests.testing.faults import FaultProxy
from marketplace_tests.testing.support import table_rows


def _backdate(server, model: str, version: str, when: dt.datetime) -> None:
    """Give a version a past registration time, as if it had been registered then."""
    with sqlite3.connect(server.root / "mlflow.db") as db:
        db.execute(
            "UPDATE model_versions SET creation_time = ? WHERE name = ? AND version = ?",
            (int(when.timestamp() * 1000), model, int(version)),
        )


@pytest.fixture
def dagster_dev(tmp_path):
    started = []

    def start(config_path: Path) -> DagsterDev:
        dev = DagsterDev(config_path, tmp_path / "dagster_home")
        started.append(dev)
        dev.wait_until_loaded()
        return dev

    yield start
    for dev in started:
        dev.stop()


def test_backfill_runs_one_run_per_partition_is_idempotent_and_never_moves_the_alias_back(
    servers, deploy, uid, dagster_dev
):
    a, b = f"a{uid}", f"b{uid}"
    old = register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    _backdate(servers["ws_a"], f"{uid}_m", old, dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")  # v2, registered today
    register_version(servers["ws_b"].uri, f"{uid}_n", alias="champion", kind="diabetes")
    stopped = {"default_status": "stopped"}
    deployment = deploy(
        [
            {
                "name": a,
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            },
            {
                "name": b,
                "tracking_uri": servers["ws_b"].uri,
                "production": {"alias": "champion"},
                "include": [f"{uid}_*"],
            },
        ],
        automation=stopped,
        schedule=stopped,
        freshness=stopped,
        checks=stopped,
        housekeeping=stopped,
    )
    days = [TODAY - dt.timedelta(days=2), TODAY - dt.timedelta(days=1), TODAY]
    partitions = [f"{day.isoformat()}|{w}" for day in days for w in (a, b)]
    dev = dagster_dev(deployment.path)

    first = dev.backfill(partitions, [k.path for k in keys.CHAIN])
    assert first["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), first
    assert {r["status"] for r in first["runs"]} == {"SUCCESS"}
    assert len(first["runs"]) == len(partitions)  # one run per partition: each fails alone

    exports = table_rows(deployment, "export_summary")
    # A past date syncs the versions that are production now and were registered by its end.
    assert sorted((r["workspace"], r["version"]) for r in exports) == sorted(
        [(a, 1), (a, 2), (b, 1)]
    )
    dates = {(r["workspace"], r["version"]): r["export_date"] for r in exports}
    # v1 was production by the end of both past dates; whichever run got there first exported it.
    assert dates[(a, 1)] in days[:2] and dates[(a, 2)] == TODAY and dates[(b, 1)] == TODAY
    market = MlflowClient(servers["marketplace"].uri)
    name = f"{a}.{uid}_m"
    assert len(market.search_model_versions(f"name='{name}'")) == 2
    assert market.get_model_version_by_alias(name, "production").tags[TAG_SOURCE_VERSION] == "2"

    # Again: nothing changes, and a past date never takes the alias back to v1.
    second = dev.backfill(partitions, [k.path for k in keys.CHAIN])
    assert {r["status"] for r in second["runs"]} == {"SUCCESS"}
    assert len(table_rows(deployment, "export_summary")) == 3
    assert len(table_rows(deployment, "import_summary")) == 3
    assert len(market.search_model_versions(f"name='{name}'")) == 2
    assert market.get_model_version_by_alias(name, "production").tags[TAG_SOURCE_VERSION] == "2"

    # Only the past date, after the later one: the alias stays on the newest version.
    third = dev.backfill([f"{days[0].isoformat()}|{a}"], [k.path for k in keys.CHAIN])
    assert {r["status"] for r in third["runs"]} == {"SUCCESS"}
    assert market.get_model_version_by_alias(name, "production").tags[TAG_SOURCE_VERSION] == "2"


def _by_partition(status: dict) -> dict[str, str]:
    """Each run's partition and how it ended."""
    ended = {}
    for run in status["runs"]:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        partition = tags.get("dagster/partition") or tags.get("dagster/asset_partition_range_start")
        assert partition and partition == tags.get(
            "dagster/asset_partition_range_end", partition
        ), tags
        ended[partition] = run["status"]
    return ended


def test_a_workspace_that_is_down_fails_alone_and_a_backfill_again_completes_it(
    servers, deploy, uid, dagster_dev
):
    """Three workspaces over two dates, the third's registry down: the other two sync; once it is
    back, the same backfill launched again syncs it too."""
    names = [f"a{uid}", f"b{uid}", f"c{uid}"]
    for name in names:
        register_version(servers["ws_a"].uri, f"{uid}_{name}_m", stage="Production")
    stopped = {"default_status": "stopped"}
    with FaultProxy(servers["ws_a"].uri, fail_first=None) as down:  # every request answered 503
        workspaces = [
            {
                "name": name,
                "tracking_uri": down.uri if name == names[2] else servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_{name}_*"],
            }
            for name in names
        ]
        deployment = deploy(
            workspaces,
            automation=stopped,
            schedule=stopped,
            freshness=stopped,
            checks=stopped,
            housekeeping=stopped,
            sensor=stopped,
            marketplace={"name_template": "{workspace}.{model}"},
        )
        days = [TODAY - dt.timedelta(days=1), TODAY]
        partitions = [f"{day.isoformat()}|{w}" for day in days for w in names]
        dev = dagster_dev(deployment.path)

        first = dev.backfill(partitions, [k.path for k in keys.CHAIN])
        ended = _by_partition(first)
        assert {p: s for p, s in ended.items() if p.endswith(names[2])} == {
            f"{day.isoformat()}|{names[2]}": "FAILURE" for day in days
        }
        assert {s for p, s in ended.items() if not p.endswith(names[2])} == {"SUCCESS"}
        assert len(ended) == len(partitions)
        imported = table_rows(deployment, "import_summary")
        assert sorted(r["workspace"] for r in imported) == names[:2]
        market = MlflowClient(servers["marketplace"].uri)
        for name in names[:2]:
            assert (
                market.get_model_version_by_alias(f"{name}.{uid}_{name}_m", "production").version
                == "1"
            )
        assert (
            market.search_registered_models(filter_string=f"name='{names[2]}.{uid}_{names[2]}_m'")
            == []
        )

        down.fail_first = 0  # the registry is back
        again = dev.backfill(partitions, [k.path for k in keys.CHAIN])
        assert set(_by_partition(again).values()) == {"SUCCESS"}
    imported = table_rows(deployment, "import_summary")
    assert sorted(r["workspace"] for r in imported) == names
    assert (
        market.get_model_version_by_alias(f"{names[2]}.{uid}_{names[2]}_m", "production").version
        == "1"
    )
