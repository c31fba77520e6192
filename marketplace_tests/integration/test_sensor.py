"""production_version_sensor ticks against real MLflow servers."""

from __future__ import annotations

import json

from mlflow import MlflowClient

from harness.local_servers import free_port
from harness.seeding import register_version
from marketplace_dagster.partitions import partition_key
from marketplace_tests.testing.deployments import TODAY, step_failure_message
from marketplace_tests.testing.driving import sensor_tick


def _workspace(name, uri, uid, **extra):
    return {
        "name": name,
        "tracking_uri": uri,
        "production": {"stage": "Production"},
        "include": [f"{uid}_*"],
        **extra,
    }


def test_new_production_version_yields_exactly_one_request_then_none(servers, deploy, uid):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    register_version(servers["ws_a"].uri, f"{uid}_n", stage="Production")
    deployment = deploy([_workspace(f"s{uid}", servers["ws_a"].uri, uid)])

    first, cursor = sensor_tick(deployment)
    assert len(first.run_requests) == 1  # one per workspace, however many versions
    request = first.run_requests[0]
    assert request.partition_key == partition_key(TODAY, f"s{uid}")
    assert f"{uid}_m@1" in request.tags["marketplace/pending_versions"]

    second, cursor = sensor_tick(deployment, cursor)
    assert second.run_requests == []
    assert "already requested" in second.skip_reason.skip_message


def test_synced_workspace_is_skipped_with_a_reason(servers, deploy, uid):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    deployment = deploy([_workspace(f"s{uid}", servers["ws_a"].uri, uid)])
    result = deployment.sync(f"s{uid}")
    assert result.success, step_failure_message(result)

    tick, _ = sensor_tick(deployment)
    assert tick.run_requests == []
    assert "in sync" in tick.skip_reason.skip_message

    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")  # promote v2
    tick, _ = sensor_tick(deployment)
    assert [r.tags["marketplace/pending_versions"] for r in tick.run_requests] == [f"{uid}_m@2"]


def test_rollback_retirement_and_restoration_each_get_a_request(servers, deploy, uid):
    """The sensor compares each source with where the marketplace points, not with what it
    imported."""
    source = MlflowClient(servers["ws_b"].uri)
    register_version(servers["ws_b"].uri, f"{uid}_m", alias="champion")
    register_version(servers["ws_b"].uri, f"{uid}_m", alias="champion")  # v2
    deployment = deploy(
        [
            {
                "name": f"s{uid}",
                "tracking_uri": servers["ws_b"].uri,
                "production": {"alias": "champion"},
                "include": [f"{uid}_*"],
            }
        ]
    )
    assert deployment.sync(f"s{uid}").success

    def pending() -> list[str]:
        tick, _ = sensor_tick(deployment)
        return [r.tags["marketplace/pending_versions"] for r in tick.run_requests]

    assert pending() == []
    source.set_registered_model_alias(
        f"{uid}_m", "champion", "1"
    )  # rolled back to a version never imported
    assert pending() == [f"{uid}_m@1"]
    assert deployment.sync(f"s{uid}").success
    assert pending() == []
    source.delete_registered_model_alias(f"{uid}_m", "champion")  # retired
    assert pending() == [f"{uid}_m@retired"]
    assert deployment.sync(f"s{uid}").success
    assert pending() == []
    source.set_registered_model_alias(f"{uid}_m", "champion", "2")  # restored
    assert pending() == [f"{uid}_m@2"]


def test_alias_workspace_is_polled_by_alias(servers, deploy, uid):
    register_version(servers["ws_b"].uri, f"{uid}_m", alias="champion")
    deployment = deploy(
        [
            {
                "name": f"s{uid}",
                "tracking_uri": servers["ws_b"].uri,
                "production": {"alias": "champion"},
                "include": [f"{uid}_*"],
            }
        ]
    )
    tick, _ = sensor_tick(deployment)
    assert [r.tags["marketplace/pending_versions"] for r in tick.run_requests] == [f"{uid}_m@1"]


def test_unreachable_workspace_is_reported_and_others_are_requested(servers, deploy, uid):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    dead = f"http://127.0.0.1:{free_port()}"
    deployment = deploy(
        [_workspace("down", dead, uid), _workspace(f"s{uid}", servers["ws_a"].uri, uid)],
        sensor={"request_timeout_seconds": 2},
    )
    tick, cursor = sensor_tick(deployment)
    assert [r.partition_key for r in tick.run_requests] == [partition_key(TODAY, f"s{uid}")]
    assert "down" not in json.loads(cursor)["workspaces"]

    # With nothing else to do, the skip reason names the unreachable workspace and its URI.
    tick, _ = sensor_tick(deployment, cursor)
    assert (
        "down unreachable" in tick.skip_reason.skip_message
        and dead in tick.skip_reason.skip_message
    )


def test_failed_run_is_requested_again_with_a_new_run_key(servers, deploy, uid):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    deployment = deploy(
        [_workspace(f"s{uid}", servers["ws_a"].uri, uid)], sensor={"retry_backoff_seconds": 0}
    )
    first, cursor = sensor_tick(deployment)
    (request,) = first.run_requests

    # The requested run fails (as Dagster records it), so its run key can never be used again.
    job = deployment.defs.resolve_job_def("marketplace_sync_job")
    run = deployment.instance.create_run_for_job(
        job_def=job, tags={**request.tags, "dagster/run_key": request.run_key}
    )
    deployment.instance.report_run_failed(run)

    retry, cursor = sensor_tick(deployment, cursor)
    (again,) = retry.run_requests
    assert again.run_key != request.run_key
    assert again.tags["marketplace/attempt"] == "1"
    assert again.partition_key == request.partition_key

    settled, _ = sensor_tick(deployment, cursor)
    assert settled.run_requests == []


def test_backoff_delays_the_retry_of_a_failed_run(servers, deploy, uid):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    deployment = deploy(
        [_workspace(f"s{uid}", servers["ws_a"].uri, uid)], sensor={"retry_backoff_seconds": 3600}
    )
    first, cursor = sensor_tick(deployment)
    (request,) = first.run_requests
    job = deployment.defs.resolve_job_def("marketplace_sync_job")
    run = deployment.instance.create_run_for_job(
        job_def=job, tags={"dagster/run_key": request.run_key}
    )
    deployment.instance.report_run_failed(run)
    later, _ = sensor_tick(deployment, cursor)
    assert later.run_requests == []
    assert "retrying after" in later.skip_reason.skip_message


def test_tick_over_65_workspaces_answers_for_every_one(servers, deploy, uid):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    uris = [servers["ws_a"].uri, servers["ws_b"].uri]
    deployment = deploy([_workspace(f"w{i:02d}", uris[i % 2], uid) for i in range(65)])
    tick, cursor = sensor_tick(deployment)
    requested = sorted(str(r.partition_key).split("|")[1] for r in tick.run_requests)
    assert requested == [f"w{i:02d}" for i in range(0, 65, 2)]  # the workspaces on ws_a
    assert len(json.loads(cursor)["workspaces"]) == 33
