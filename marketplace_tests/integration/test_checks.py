"""The asset checks: they pass on a synced marketplace and fail, saying what is wrong, when it is
broken."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
from deltalake import DeltaTable, write_deltalake
from mlflow import MlflowClient

from harness.seeding import register_version
from marketplace import loading, summary
from marketplace.export_records import export_dir
from marketplace.manifest import MANIFEST_NAME
from marketplace_dagster import keys
from marketplace_tests.testing.deployments import TODAY, materializations, step_failure_message
from marketplace_tests.testing.driving import CHECKS_JOB
from marketplace_tests.testing.support import table_rows

FRESHNESS_JOB = "marketplace_freshness_job"


def run_checks(deployment, job: str = CHECKS_JOB) -> dict[str, dg.AssetCheckEvaluation]:
    """Execute a checks job in process; its evaluations by check name."""
    result = deployment.defs.resolve_job_def(job).execute_in_process(
        instance=deployment.instance, raise_on_error=False
    )
    # A failing non-blocking check does not fail the run; anything else would be a broken check.
    assert result.success, step_failure_message(result)
    return evaluations(result)


def evaluations(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def meta(evaluation: dg.AssetCheckEvaluation) -> dict:
    return {k: v.value for k, v in evaluation.metadata.items()}


def table_uri(deployment, name: str) -> str:
    return str(Path(deployment.config.storage_root) / name)


@pytest.fixture
def synced(servers, deploy, uid):
    """One workspace with one production model, synced today: (deployment, workspace, model)."""
    ws, model = f"a{uid}", f"{uid}_iris"
    register_version(servers["ws_a"].uri, model, stage="Production")
    deployment = deploy(
        [
            {
                "name": ws,
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ]
    )
    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    return deployment, ws, model


def test_every_check_passes_on_a_synced_marketplace(synced):
    deployment, _ws, _model = synced
    found = run_checks(deployment)
    assert set(found) == {
        keys.EXPORT_SUMMARY_UNIQUE,
        keys.IMPORT_SUMMARY_UNIQUE,
        keys.EXPORTS_MATCH_MANIFESTS,
        keys.PRODUCTION_VERSIONS_SYNCED,
        keys.MARKETPLACE_MATCHES_SOURCES,
        keys.NO_STRAY_EXPORTS,
        keys.EXPORTS_SIGNED_AND_CLEAN,
        keys.GATE_PASSED,
        keys.APPROVALS_PENDING,
        keys.SOURCE_WEBHOOKS_REGISTERED,
    }
    assert {name: e.passed for name, e in found.items()} == dict.fromkeys(found, True)
    hooks = meta(
        found[keys.SOURCE_WEBHOOKS_REGISTERED]
    )  # no webhook configured: polled, nothing to warn of
    assert (hooks["workspaces_with_webhook"], hooks["polling_only"]) == (0, 1)
    for name in (keys.EXPORT_SUMMARY_UNIQUE, keys.IMPORT_SUMMARY_UNIQUE):
        assert meta(found[name]) == {"rows": 1, "keys": 1, "duplicated_keys": 0}
    exported = table_rows(deployment, summary.EXPORT_SUMMARY)
    assert meta(found[keys.EXPORTS_MATCH_MANIFESTS]) == {
        "exports_checked": 1,
        "exports_failing": 0,
        "bytes_verified": exported[0]["size_bytes"],
    }
    assert found[keys.EXPORTS_MATCH_MANIFESTS].description == "1 export(s) verified"
    assert meta(found[keys.PRODUCTION_VERSIONS_SYNCED]) == {
        "production_versions_seen": 1,
        "exported": 1,
        "imported": 1,
        "missing_exports": 0,
        "missing_imports": 0,
    }
    clean = meta(found[keys.EXPORTS_SIGNED_AND_CLEAN])
    assert (clean["exports_checked"], clean["unsigned"], clean["with_blocking_findings"]) == (
        1,
        0,
        0,
    )
    assert clean["files_scanned"] >= 1  # the model's skops file, opened as a zip of .npy members
    matches = meta(found[keys.MARKETPLACE_MATCHES_SOURCES])
    assert (
        matches["workspaces_compared"],
        matches["models_compared"],
        matches["models_differing"],
    ) == (1, 1, 0)
    assert matches["registry_requests"] >= 1 and matches["registry_seconds"] > 0


def test_duplicate_rows_fail_the_unique_key_checks(synced):
    deployment, ws, model = synced
    for table, failing in (
        (summary.EXPORT_SUMMARY, {keys.EXPORT_SUMMARY_UNIQUE}),
        (summary.IMPORT_SUMMARY, {keys.EXPORT_SUMMARY_UNIQUE, keys.IMPORT_SUMMARY_UNIQUE}),
    ):
        uri = table_uri(deployment, table)
        write_deltalake(uri, DeltaTable(uri).to_pyarrow_table().slice(0, 1), mode="append")
        found = run_checks(deployment)
        assert {name for name, e in found.items() if not e.passed} == failing
        broken = found[
            keys.EXPORT_SUMMARY_UNIQUE
            if table == summary.EXPORT_SUMMARY
            else keys.IMPORT_SUMMARY_UNIQUE
        ]
        assert broken.description == f"duplicate rows in {table}: {ws}/{model} v1 (2 rows)"
        assert meta(broken) == {"rows": 2, "keys": 1, "duplicated_keys": 1}
        assert broken.severity == dg.AssetCheckSeverity.ERROR


def test_changed_or_unmanifested_export_fails_exports_match_manifests(synced):
    deployment, ws, model = synced
    path = export_dir(deployment.config.storage_root, ws, model, 1)
    target = next(
        p
        for p in path.rglob("*")
        if p.is_file() and p.name.startswith("model.") and p.suffix != ".json"
    )
    original = target.read_bytes()
    target.write_bytes(original[::-1])  # same size, different bytes: only a hash sees it

    found = run_checks(deployment)
    failing = found[keys.EXPORTS_MATCH_MANIFESTS]
    assert not failing.passed
    assert failing.description.startswith(f"{ws}/{model} v1: ")
    assert (
        "does not match its manifest" in failing.description
        and f"changed: {target.relative_to(path)}" in failing.description
    )
    assert meta(failing)["exports_failing"] == 1
    assert found[keys.EXPORT_SUMMARY_UNIQUE].passed  # only the broken thing is reported

    target.write_bytes(original)
    assert run_checks(deployment)[keys.EXPORTS_MATCH_MANIFESTS].passed

    (path / MANIFEST_NAME).unlink()
    failing = run_checks(deployment)[keys.EXPORTS_MATCH_MANIFESTS]
    assert not failing.passed
    assert (
        failing.description.startswith(f"{ws}/{model} v1: ")
        and f"no {MANIFEST_NAME}" in failing.description
    )


def test_missing_import_is_reported_until_a_newer_import_supersedes_it(synced, servers):
    deployment, ws, model = synced
    market = MlflowClient(servers["marketplace"].uri)
    market.delete_model_version(f"{ws}.{model}", "1")
    DeltaTable(table_uri(deployment, summary.IMPORT_SUMMARY)).delete(f"model_name = '{model}'")

    failing = run_checks(deployment)[keys.PRODUCTION_VERSIONS_SYNCED]
    assert not failing.passed
    assert failing.description == f"exported but not imported: {ws}/{model} v1"
    assert meta(failing) == {
        "production_versions_seen": 1,
        "exported": 1,
        "imported": 0,
        "missing_exports": 0,
        "missing_imports": 1,
    }

    # v2 becomes production and is synced: v1, exported but never imported again, is superseded.
    register_version(servers["ws_a"].uri, model, stage="Production")
    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    superseded = run_checks(deployment)[keys.PRODUCTION_VERSIONS_SYNCED]
    assert superseded.passed, superseded.description
    assert meta(superseded) == {
        "production_versions_seen": 1,
        "exported": 2,
        "imported": 1,
        "missing_exports": 0,
        "missing_imports": 0,
    }


def test_production_version_not_exported_is_reported(synced, servers):
    deployment, ws, model = synced
    register_version(servers["ws_a"].uri, model, stage="Production")  # v2
    only_snapshot = deployment.sync(ws, selection=[keys.PRODUCTION_MODELS])
    assert only_snapshot.success, step_failure_message(only_snapshot)

    failing = run_checks(deployment)[keys.PRODUCTION_VERSIONS_SYNCED]
    assert not failing.passed
    assert failing.description == f"not exported: {ws}/{model} v2"
    assert meta(failing)["missing_exports"] == 1 and meta(failing)["missing_imports"] == 0

    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    # The sync job runs the reconciliation itself, after the import summary is written.
    assert evaluations(result)[keys.PRODUCTION_VERSIONS_SYNCED].passed
    assert run_checks(deployment)[keys.PRODUCTION_VERSIONS_SYNCED].passed


def test_marker_moved_by_hand_fails_the_reconciliation_until_the_next_sync_puts_it_back(
    synced, servers
):
    deployment, ws, model = synced
    register_version(servers["ws_a"].uri, model, stage="Production")  # v2
    assert deployment.sync(ws).success
    name = f"{ws}.{model}"
    market = MlflowClient(servers["marketplace"].uri)
    assert market.get_model_version_by_alias(name, "production").version == "2"
    market.set_registered_model_alias(name, "production", "1")

    failed = run_checks(deployment)[keys.MARKETPLACE_MATCHES_SOURCES]
    assert not failed.passed
    assert failed.severity == dg.AssetCheckSeverity.ERROR and failed.blocking is False
    assert (
        failed.description
        == f"differ: {ws}/{model}: source production v2, marketplace @production is the copy of v1"
    )
    assert (meta(failed)["models_compared"], meta(failed)["models_differing"]) == (1, 1)

    again = deployment.sync(ws)
    assert again.success, step_failure_message(again)
    assert market.get_model_version_by_alias(name, "production").version == "2"
    assert (
        materializations(again, keys.REGISTRATION)["rolled_back"] == 0
    )  # put back, not a change of the source
    assert run_checks(deployment)[keys.MARKETPLACE_MATCHES_SOURCES].passed


def _artifact_dir(client: MlflowClient, name: str, version: str) -> Path:
    """Where the marketplace server keeps a model version's files (a local folder:
    --no-serve-artifacts)."""
    location = client.get_model_version(name, version).source
    if location.startswith("models:/"):  # MLflow 3: the version points at a logged model
        location = client.get_logged_model(
            location.removeprefix("models:/").split("/")[0]
        ).artifact_location
    return Path(location.removeprefix("file://"))


def test_marketplace_copy_that_no_longer_loads_blocks_the_rest_of_the_chain(synced, servers):
    deployment, ws, model = synced
    name = f"{ws}.{model}"
    market = MlflowClient(servers["marketplace"].uri)
    files = _artifact_dir(market, name, "1")
    assert (
        files.is_relative_to(servers["marketplace"].artifact_root) and (files / "MLmodel").exists()
    )
    shutil.rmtree(files)
    files.mkdir()
    (files / "MLmodel").write_text("not: [a model")

    result = deployment.sync(ws)
    assert not result.success
    loads = evaluations(result)[keys.IMPORT_LOADS_CHECK]
    assert not loads.passed
    assert loads.severity == dg.AssetCheckSeverity.ERROR and loads.blocking is True
    assert f"models:/{name}/1 does not load" in loads.description
    assert meta(loads)["models_failed"] == 1
    # Blocking: the imports step fails because of the check (its materialization was recorded),
    # and no step downstream of it starts.
    assert {e.step_key for e in result.all_events if e.is_step_failure} == {"marketplace__imports"}
    assert "DagsterAssetCheckFailedError" in step_failure_message(result)
    downstream = {"external_storage__import_summary", "marketplace__registered_models"}
    assert downstream <= {
        node.name for node in deployment.defs.resolve_job_def("marketplace_sync_job").graph.nodes
    }
    assert not downstream & {e.step_key for e in result.all_events if e.is_step_start}
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == {keys.PRODUCTION_MODELS, keys.EXPORTS, keys.EXPORT_SUMMARY, keys.IMPORTS}


def test_freshness_check_names_each_workspace_not_synced_by_the_deadline(servers, deploy, uid):
    ws_a, ws_b = f"a{uid}", f"b{uid}"
    register_version(servers["ws_a"].uri, f"{uid}_iris", stage="Production")
    deployment = deploy(
        [
            {
                "name": ws_a,
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            },
            {
                "name": ws_b,
                "tracking_uri": servers["ws_b"].uri,
                "production": {"alias": "champion"},
                "include": [f"{uid}_*"],
            },
        ],
        freshness={"deadline": "00:00"},  # today's partitions are due all day
    )
    assert deployment.sync(ws_a).success

    stale = run_checks(deployment, FRESHNESS_JOB)
    assert set(stale) == {keys.PARTITIONS_FRESH}
    check = stale[keys.PARTITIONS_FRESH]
    assert not check.passed
    assert f"not synced for {TODAY}" in check.description and ws_b in check.description
    assert ws_a not in check.description
    assert meta(check) == {"day": TODAY.isoformat(), "workspaces_checked": 2, "workspaces_stale": 1}

    assert deployment.sync(ws_b).success
    fresh = run_checks(deployment, FRESHNESS_JOB)[keys.PARTITIONS_FRESH]
    assert fresh.passed, fresh.description
    assert meta(fresh) == {"day": TODAY.isoformat(), "workspaces_checked": 2, "workspaces_stale": 0}


def test_load_check_reloads_only_new_or_changed_copies(synced, servers):
    deployment, ws, model = synced
    name = f"{ws}.{model}"
    market = MlflowClient(servers["marketplace"].uri)
    verified = market.get_model_version(name, "1").tags.get(loading.TAG_VERIFIED)
    assert verified == loading.artifact_fingerprint(servers["marketplace"].uri, f"models:/{name}/1")

    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    unchanged = evaluations(result)[keys.IMPORT_LOADS_CHECK]
    assert unchanged.passed
    assert (
        meta(unchanged)["models_loaded"],
        meta(unchanged)["models_unchanged_since_verified"],
    ) == (0, 1)

    # A file added to the copy changes its listing: the check loads it again (and it still passes).
    (_artifact_dir(market, name, "1") / "notes.txt").write_text("added after the import")
    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    reloaded = evaluations(result)[keys.IMPORT_LOADS_CHECK]
    assert (meta(reloaded)["models_loaded"], meta(reloaded)["models_unchanged_since_verified"]) == (
        1,
        0,
    )
    assert "predicts the same as its export" in meta(reloaded)["details"][f"{name} v1"]
    assert market.get_model_version(name, "1").tags[loading.TAG_VERIFIED] != verified


def test_export_folders_the_marketplace_did_not_write_are_ignored_and_reported(synced, servers):
    deployment, ws, model = synced
    ours = export_dir(deployment.config.storage_root, ws, model, 1)
    ghost = export_dir(
        deployment.config.storage_root, "ghost", model, 1
    )  # not a configured workspace
    unrecorded = export_dir(
        deployment.config.storage_root, ws, model, 7
    )  # a version no partition exported
    for folder in (ghost, unrecorded):
        shutil.copytree(ours, folder)

    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    market = MlflowClient(servers["marketplace"].uri)
    assert [v.version for v in market.search_model_versions(f"name='{ws}.{model}'")] == ["1"]
    assert market.search_registered_models(filter_string=f"name='ghost.{model}'") == []

    stray = run_checks(deployment)[keys.NO_STRAY_EXPORTS]
    assert not stray.passed and stray.severity == dg.AssetCheckSeverity.WARN
    assert meta(stray) == {"export_folders": 3, "stray_folders": 2}
    assert "workspace 'ghost' is not configured" in stray.description
    assert f"{ws}/{model}/7 (not in the export summary" in stray.description
