"""The schedules: the daily sync of every workspace, the audits and the housekeeping."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from marketplace.config import ConfigError
from marketplace_dagster.partitions import split_partition_key
from marketplace_tests.testing.deployments import UNUSED_URI

UTC = dt.UTC


def _workspaces(*names: str) -> list[dict]:
    return [
        {"name": name, "tracking_uri": UNUSED_URI, "production": {"stage": "Production"}}
        for name in names
    ]


def test_daily_schedule_requests_one_run_per_workspace_for_the_scheduled_day(configure, uid):
    names = [f"a{uid}", f"b{uid}", f"c{uid}"]
    deployment = configure(
        _workspaces(*names), schedule={"cron": "30 3 * * *"}, start_date="2026-11-01"
    )  # the dates below are fixed; the default start moves
    defs = deployment.defs
    schedule = defs.resolve_schedule_def("daily_marketplace_schedule")
    assert schedule.cron_schedule == "30 3 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.job_name == "marketplace_sync_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING

    context = dg.build_schedule_context(
        instance=deployment.instance,
        scheduled_execution_time=dt.datetime(2026, 11, 20, 2, 0, tzinfo=UTC),
        # resolves each request against the job's partitions
        repository_def=defs.get_repository_def(),
    )
    data = schedule.evaluate_tick(context)
    requests = list(data.run_requests or [])
    assert data.skip_message is None
    assert sorted(str(r.partition_key) for r in requests) == sorted(
        f"2026-11-20|{name}" for name in names
    )
    assert [split_partition_key(r.partition_key) for r in requests] == [
        (dt.date(2026, 11, 20), n) for n in names
    ]
    assert len({r.run_key for r in requests}) == len(names)
    assert all(r.tags["marketplace/trigger"] == "daily_marketplace_schedule" for r in requests)

    # Every requested partition is one the sync job can run (resolution tagged each request with
    # it).
    job = defs.resolve_job_def("marketplace_sync_job")
    assert {str(r.partition_key) for r in requests} <= set(job.partitions_def.get_partition_keys())
    assert sorted(r.tags["dagster/partition"] for r in requests) == sorted(
        f"2026-11-20|{n}" for n in names
    )

    # The next day's tick asks for the next day's partitions, under other run keys.
    later = schedule.evaluate_tick(
        dg.build_schedule_context(
            instance=deployment.instance,
            scheduled_execution_time=dt.datetime(2026, 11, 21, 3, 30, tzinfo=UTC),
            repository_def=defs.get_repository_def(),
        )
    )
    assert sorted(str(r.partition_key) for r in later.run_requests) == sorted(
        f"2026-11-21|{n}" for n in names
    )
    assert not {r.run_key for r in later.run_requests} & {r.run_key for r in requests}


def test_invalid_schedule_cron_fails_at_load_naming_the_key(configure, uid):
    with pytest.raises(ConfigError) as error:
        configure(_workspaces(f"a{uid}"), schedule={"cron": "every day at two"})
    assert "schedule.cron" in str(error.value)
    assert "every day at two" in str(error.value)
    assert error.value.key == "schedule.cron"


@pytest.mark.parametrize(
    ("section", "key"),
    [("freshness", "check_cron"), ("checks", "cron"), ("housekeeping", "cron")],
)
def test_invalid_cron_of_other_schedules_fails_at_load_naming_the_key(configure, uid, section, key):
    with pytest.raises(ConfigError) as error:
        configure(_workspaces(f"a{uid}"), **{section: {key: "61 * * * *"}})
    assert error.value.key == f"{section}.{key}"


def test_audit_and_housekeeping_schedules_use_the_configured_crons_and_statuses(configure, uid):
    deployment = configure(
        _workspaces(f"a{uid}"),
        schedule={"cron": "15 1 * * *", "default_status": "stopped"},
        freshness={"check_cron": "10 * * * *", "default_status": "stopped"},
        checks={"cron": "45 6 * * 1-5", "default_status": "stopped"},
        housekeeping={"cron": "0 4 * * 6", "default_status": "stopped"},
    )
    defs = deployment.defs
    expected = {
        "daily_marketplace_schedule": (
            "15 1 * * *",
            dg.DefaultScheduleStatus.STOPPED,
            "marketplace_sync_job",
        ),
        "marketplace_freshness_schedule": (
            "10 * * * *",
            dg.DefaultScheduleStatus.STOPPED,
            "marketplace_freshness_job",
        ),
        "marketplace_checks_schedule": (
            "45 6 * * 1-5",
            dg.DefaultScheduleStatus.STOPPED,
            "marketplace_checks_job",
        ),
        "marketplace_maintenance_schedule": (
            "0 4 * * 6",
            dg.DefaultScheduleStatus.STOPPED,
            "marketplace_maintenance_job",
        ),
    }
    for name, (cron, status, job) in expected.items():
        schedule = defs.resolve_schedule_def(name)
        assert (schedule.cron_schedule, schedule.default_status, schedule.job_name) == (
            cron,
            status,
            job,
        ), name
        assert schedule.execution_timezone == "UTC", name
        defs.resolve_job_def(job)  # the target exists in the definitions

    # The defaults when nothing is configured.
    defaults = configure(_workspaces(f"b{uid}")).defs
    assert {
        name: (
            defaults.resolve_schedule_def(name).cron_schedule,
            defaults.resolve_schedule_def(name).default_status,
        )
        for name in expected
    } == {
        "daily_marketplace_schedule": ("0 2 * * *", dg.DefaultScheduleStatus.RUNNING),
        "marketplace_freshness_schedule": ("0 * * * *", dg.DefaultScheduleStatus.RUNNING),
        "marketplace_checks_schedule": ("0 5 * * *", dg.DefaultScheduleStatus.RUNNING),
        "marketplace_maintenance_schedule": ("0 4 * * 0", dg.DefaultScheduleStatus.RUNNING),
    }


def test_non_daily_schedules_request_an_unpartitioned_run(configure, uid):
    defs = configure(_workspaces(f"a{uid}")).defs
    context = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2026, 11, 20, 5, 0, tzinfo=UTC),
        repository_def=defs.get_repository_def(),
    )
    for name in (
        "marketplace_freshness_schedule",
        "marketplace_checks_schedule",
        "marketplace_maintenance_schedule",
    ):
        requests = defs.resolve_schedule_def(name).evaluate_tick(context).run_requests
        assert len(requests) == 1 and requests[0].partition_key is None, name
