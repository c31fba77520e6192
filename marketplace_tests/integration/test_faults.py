"""Faults caused for real: server errors and timeouts from a workspace's registry, retried or failed
clearly."""

from __future__ import annotations

import threading
import time

from mlflow import MlflowClient

from harness.seeding import register_version
from marketplace_dagster import keys
from marketplace_tests.testing.deployments import materializations, step_failure_message
from marketplace_tests.testing.faults import FaultProxy, Hold


def _deploy_through(deploy, proxy, name: str, uid: str, **client):
    """Workspace `name` reached through `proxy`, the test's models only, with `client`'s
    timeout and retries."""
    return deploy(
        [
            {
                "name": name,
                "tracking_uri": proxy.uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ],
        client=client,
    )


def test_transient_server_errors_are_retried_and_the_sync_completes(servers, deploy, uid):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    with FaultProxy(servers["ws_a"].uri, fail_first=2, status=503) as proxy:
        deployment = _deploy_through(deploy, proxy, "flaky", uid, timeout_seconds=5, max_retries=3)
        result = deployment.sync("flaky")
    assert result.success, step_failure_message(result)
    assert proxy.failed == 2 and proxy.forwarded > 0  # the faults were served, then retried past
    assert materializations(result, keys.EXPORTS)["exported"] == 1
    assert MlflowClient(servers["marketplace"].uri).get_model_version(f"flaky.{uid}_m", "1")


def test_persistent_server_errors_fail_the_partition_clearly_within_bounds(servers, deploy, uid):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    with FaultProxy(servers["ws_a"].uri, fail_first=None, status=500) as proxy:
        deployment = _deploy_through(deploy, proxy, "broken", uid, timeout_seconds=5, max_retries=1)
        result = deployment.sync("broken")
    assert not result.success
    message = step_failure_message(result)
    assert "broken" in message and proxy.uri in message, message
    # The server's answer is named: urllib3's "too many 500 error responses" once the retries are
    # spent, or the body's error code where MLflow asked once (its server-info probe).
    assert "500" in message or "TEMPORARILY_UNAVAILABLE: injected fault" in message, message
    # client.max_retries=1: the first request and one retry, not the library's default seven.
    assert 1 <= proxy.failed <= 2, proxy.failed
    assert (
        MlflowClient(servers["marketplace"].uri).search_registered_models(
            filter_string=f"name='broken.{uid}_m'"
        )
        == []
    )


def test_a_request_that_times_out_is_retried_and_the_sync_completes(servers, deploy, uid):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    hold = Hold("GET", "/registered-models/search")  # no answer until the client has given up on it
    with FaultProxy(servers["ws_a"].uri, holds=[hold]) as proxy:
        deployment = _deploy_through(deploy, proxy, "slow", uid, timeout_seconds=2, max_retries=2)

        def release_after_the_retry() -> None:
            hold.reached.wait(300)
            deadline = time.monotonic() + 120
            while sum(1 for m, p in proxy.requests if "/registered-models/search" in p) < 2:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            hold.abandoned = True
            hold.release.set()

        releaser = threading.Thread(target=release_after_the_retry, daemon=True)
        releaser.start()
        result = deployment.sync("slow")
        releaser.join(timeout=5)
    searches = [path for _, path in proxy.requests if "/registered-models/search" in path]
    assert (
        hold.reached.is_set() and len(searches) >= 2
    )  # the held request timed out and was sent again
    assert result.success, step_failure_message(result)
    assert MlflowClient(servers["marketplace"].uri).get_model_version(f"slow.{uid}_m", "1")
