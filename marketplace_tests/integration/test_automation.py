"""Materializing an upstream asset carries the chain down, for any date, never past a failed
gate."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from harness.seeding import register_version
from marketplace_dagster import keys
from marketplace_tests.testing.deployments import TODAY, step_failure_message


def _requested(result, key: dg.AssetKey) -> set[str]:
    for evaluation in result.results:
        if evaluation.key == key:
            return {str(k) for k in evaluation.true_subset.expensively_compute_partition_keys()}
    return set()


def _one_workspace(servers, deploy, uid):
    """Workspace a<uid> on ws_a with one production model, not synced yet."""
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    ws = f"a{uid}"
    return ws, deploy(
        [
            {
                "name": ws,
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ]
    )


def test_past_date_upstream_materialization_requests_the_next_step_once(servers, deploy, uid):
    ws, deployment = _one_workspace(servers, deploy, uid)
    defs = deployment.defs
    yesterday = TODAY - dt.timedelta(days=1)
    key = f"{yesterday.isoformat()}|{ws}"

    first = dg.evaluate_automation_conditions(defs=defs, instance=deployment.instance)
    assert _requested(first, keys.EXPORTS) == set()  # nothing upstream yet

    assert deployment.sync(ws, yesterday, selection=[keys.PRODUCTION_MODELS]).success
    second = dg.evaluate_automation_conditions(
        defs=defs, instance=deployment.instance, cursor=first.cursor
    )
    # A past date (eager() would look at the latest only), and the chain down to the blocking
    # load check in the same tick; what follows waits for that check to pass.
    for downstream in (keys.EXPORTS, keys.EXPORT_SUMMARY, keys.IMPORTS):
        assert _requested(second, downstream) == {key}, downstream
    assert _requested(second, keys.IMPORT_SUMMARY) == set()

    ran = deployment.sync(
        ws, yesterday, selection=[keys.EXPORTS, keys.EXPORT_SUMMARY, keys.IMPORTS]
    )
    assert ran.success, step_failure_message(ran)
    third = dg.evaluate_automation_conditions(
        defs=defs, instance=deployment.instance, cursor=second.cursor
    )
    assert _requested(third, keys.EXPORTS) == set()  # requested once
    assert _requested(third, keys.IMPORT_SUMMARY) == {key}
    assert _requested(third, keys.REGISTRATION) == {key}


def test_failed_blocking_check_stops_the_chain(servers, deploy, uid):
    ws, deployment = _one_workspace(servers, deploy, uid)
    defs = deployment.defs
    key = f"{TODAY.isoformat()}|{ws}"
    start = dg.evaluate_automation_conditions(defs=defs, instance=deployment.instance)
    upto_imports = [keys.PRODUCTION_MODELS, keys.EXPORTS, keys.EXPORT_SUMMARY, keys.IMPORTS]
    result = deployment.sync(ws, selection=upto_imports)
    assert result.success, step_failure_message(result)
    passed = dg.evaluate_automation_conditions(
        defs=defs, instance=deployment.instance, cursor=start.cursor
    )
    assert key in _requested(passed, keys.IMPORT_SUMMARY)  # the check passed: the chain goes on

    # The same partition's imports materialized again, its blocking load check now failing.
    deployment.instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=keys.IMPORTS, partition=key)
    )
    deployment.instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=keys.IMPORTS,
            check_name=keys.IMPORT_LOADS_CHECK,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            partition=key,
        )
    )
    failed = dg.evaluate_automation_conditions(
        defs=defs, instance=deployment.instance, cursor=passed.cursor
    )
    assert key not in _requested(failed, keys.IMPORT_SUMMARY)


def _requested_at_all(result, key: dg.AssetKey) -> bool:
    return any(e.key == key and e.true_subset.size > 0 for e in result.results)


def test_a_sync_requests_a_catalog_refresh_once(servers, deploy, uid):
    ws, deployment = _one_workspace(servers, deploy, uid)
    defs = deployment.defs
    start = dg.evaluate_automation_conditions(defs=defs, instance=deployment.instance)
    assert not _requested_at_all(start, keys.CATALOG)  # nothing synced yet
    synced = deployment.sync(ws)
    assert synced.success, step_failure_message(synced)
    after_sync = dg.evaluate_automation_conditions(
        defs=defs, instance=deployment.instance, cursor=start.cursor
    )
    assert _requested_at_all(after_sync, keys.CATALOG)
    assert deployment.refresh_catalog().success
    after_refresh = dg.evaluate_automation_conditions(
        defs=defs, instance=deployment.instance, cursor=after_sync.cursor
    )
    assert not _requested_at_all(after_refresh, keys.CATALOG)  # once per sync
