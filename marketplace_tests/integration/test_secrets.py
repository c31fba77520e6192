"""A canary secret in the configuration's environment and URIs never reaches any output."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster._serdes import serialize_value
from mlflow import MlflowClient

from harness.local_servers import free_port
from harness.seeding import register_version
from marketplace import summary
from marketplace_tests.testing.deployments import step_failure_message
from marketplace_tests.testing.support import table_rows

CANARY = "CANARY-7f3a9c-do-not-leak"
KEY_CANARY = "KEYCANARY-51d2e8-do-not-leak"


def _with_credentials(uri: str) -> str:
    return uri.replace("http://", f"http://canary-user:{CANARY}@")


def test_canary_secrets_appear_in_no_log_metadata_tag_row_or_file(
    servers, deploy, uid, monkeypatch
):
    monkeypatch.setenv("MARKETPLACE_CANARY_KEY", KEY_CANARY)
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    deployment = deploy(
        [
            {
                "name": "reach",
                "tracking_uri": _with_credentials(servers["ws_a"].uri),
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            },
            {
                "name": "gone",
                "tracking_uri": _with_credentials(f"http://127.0.0.1:{free_port()}"),
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            },
        ],
        external_storage={"uri": "external", "signing_key_env": "MARKETPLACE_CANARY_KEY"},
        sensor={"default_status": "running"},
    )
    outputs: list[str] = []

    synced = deployment.sync("reach")
    assert synced.success
    failed = deployment.sync("gone")
    assert not failed.success
    gone_uri = deployment.config.workspace("gone").tracking_uri.replace(
        f"canary-user:{CANARY}@", ""
    )
    assert gone_uri in step_failure_message(failed)  # names the workspace's URI, without the secret
    checks = deployment.defs.resolve_job_def("marketplace_checks_job").execute_in_process(
        instance=deployment.instance, raise_on_error=False
    )
    assert checks.success
    sensor = deployment.defs.resolve_sensor_def("production_version_sensor")
    tick = sensor(dg.build_sensor_context(instance=deployment.instance))
    outputs.append(repr(tick))

    # Every event of every run: logs, failures, materialization and check metadata, run tags.
    for run in deployment.instance.get_runs():
        outputs.append(serialize_value(run))
        outputs.extend(serialize_value(entry) for entry in deployment.instance.all_logs(run.run_id))
    assert any("127.0.0.1" in text for text in outputs)  # the URIs are there, redacted
    # The Delta tables, the registries' tags and descriptions, every file under external storage.
    for table in (summary.EXPORT_SUMMARY, summary.IMPORT_SUMMARY):
        rows = table_rows(deployment, table)
        assert rows
        outputs.append(repr(rows))
    for uri in (servers["marketplace"].uri, servers["ws_a"].uri):
        client = MlflowClient(uri)
        for model in client.search_registered_models(filter_string=f"name LIKE '%{uid}%'"):
            outputs.append(repr((model.name, model.description, model.tags)))
            for version in client.search_model_versions(f"name='{model.name}'"):
                outputs.append(repr((version.description, version.tags, version.source)))
    files = [
        p
        for p in Path(deployment.config.storage_root).rglob("*")
        if p.is_file() and p.stat().st_size < 10**6
    ]
    assert files
    outputs.extend(p.read_text(errors="replace") for p in files)

    leaks = [
        text[max(0, text.find(s) - 200) : text.find(s) + 50]
        for text in outputs
        for s in (CANARY, KEY_CANARY)
        if s in text
    ]
    assert not leaks, leaks
