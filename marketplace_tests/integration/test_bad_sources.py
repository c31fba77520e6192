"""Source versions that cannot be exported: each skipped with its reason, the rest synced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient

from harness.seeding import register_version
from marketplace.export_records import export_dir, skip_record_path
from marketplace.registry import process_tracking_uri
from marketplace_dagster import keys
from marketplace_tests.testing.deployments import materializations, step_failure_message


def _version_without_run(tracking_uri: str, name: str, where: Path) -> str:
    """A version of a logged model that no run produced (MLflow 3 allows both)."""
    from sklearn.linear_model import LinearRegression

    with process_tracking_uri(tracking_uri):
        mlflow.sklearn.save_model(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]), str(where))
        client = MlflowClient(tracking_uri)
        experiment = mlflow.set_experiment(f"/tests/{name}").experiment_id
        logged = client.create_logged_model(experiment, name="model")
        client.log_model_artifacts(logged.model_id, str(where))
        client.finalize_logged_model(logged.model_id, "READY")
        client.create_registered_model(name)
        version = client.create_model_version(
            name, source=f"models:/{logged.model_id}", model_id=logged.model_id
        ).version
    client.transition_model_version_stage(name, version, "Production")
    return version


def test_versions_that_cannot_be_exported_are_skipped_with_a_reason_and_the_rest_synced(
    servers, deploy, uid
):
    ws = servers["ws_a"].uri
    client = MlflowClient(ws)
    register_version(ws, f"{uid}_ok", stage="Production")
    register_version(ws, f"{uid}_deleted_run", stage="Production")
    client.delete_run(client.get_model_version(f"{uid}_deleted_run", "1").run_id)
    register_version(ws, f"{uid}_no_files", stage="Production")
    logged = client.get_logged_model(
        client.get_model_version(f"{uid}_no_files", "1").source.split("models:/")[1]
    )
    shutil.rmtree(urlparse(logged.artifact_location).path)
    _version_without_run(ws, f"{uid}_no_run", Path(servers["ws_a"].root) / f"{uid}-loose")
    deployment = deploy(
        [
            {
                "name": "bad",
                "tracking_uri": ws,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ]
    )

    result = deployment.sync("bad")

    assert result.success, step_failure_message(result)
    exports = materializations(result, keys.EXPORTS)
    assert (exports["exported"], exports["skipped"], exports["failed"]) == (1, 3, 0)
    reasons = exports["skipped_versions"]
    assert "was deleted" in reasons[f"bad/{uid}_deleted_run v1"]
    assert (
        "files of its logged model" in reasons[f"bad/{uid}_no_files v1"]
        and "missing" in reasons[f"bad/{uid}_no_files v1"]
    )
    assert "has no run" in reasons[f"bad/{uid}_no_run v1"]
    imports = materializations(result, keys.IMPORTS)
    assert (imports["imported"], imports["skipped"], imports["failed"]) == (1, 3, 0)
    assert "was deleted" in imports["skipped_versions"][f"bad/{uid}_deleted_run v1"]
    market = MlflowClient(servers["marketplace"].uri)
    assert market.get_model_version_by_alias(f"bad.{uid}_ok", "production").version == "1"
    for broken in ("deleted_run", "no_files", "no_run"):
        assert market.search_registered_models(filter_string=f"name='bad.{uid}_{broken}'") == []
        assert not export_dir(deployment.config.storage_root, "bad", f"{uid}_{broken}", 1).exists()
        assert (
            "marketplace.exported_on" not in client.get_model_version(f"{uid}_{broken}", "1").tags
        )
    # The reason is recorded where the UI shows it: the sync check names each skipped version.
    checks = {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    synced = checks["production_versions_synced"]
    assert (
        not synced.passed
        and "was deleted" in synced.description
        and "has no run" in synced.description
    )

    recorded = skip_record_path(deployment.config.storage_root, "bad", f"{uid}_deleted_run", 1)
    assert "was deleted" in json.loads(recorded.read_text())["reason"]

    # Once the source is mended (the run restored), the next run exports it and clears the reason.
    client.restore_run(client.get_model_version(f"{uid}_deleted_run", "1").run_id)
    again = deployment.sync("bad")
    assert again.success, step_failure_message(again)
    exports = materializations(again, keys.EXPORTS)
    assert (exports["exported"], exports["already_exported"], exports["skipped"]) == (1, 1, 2)
    assert f"bad/{uid}_deleted_run v1" not in exports["skipped_versions"]
    assert market.get_model_version_by_alias(f"bad.{uid}_deleted_run", "production").version == "1"
    assert not recorded.exists()
