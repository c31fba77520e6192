"""The code location as Dagster and the CLI load it."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import dagster as dg
import pytest
import yaml

from harness.local_dagster import DAGSTER
from marketplace.config import ConfigError, load_config
from marketplace_dagster import keys
from marketplace_dagster.definitions import build_definitions, defs
from marketplace_tests.testing.deployments import TODAY
from marketplace_tests.testing.support import ROOT


def test_project_defines_the_chain_the_job_and_the_partitions():
    definitions = build_definitions(load_config(ROOT / "marketplace.yaml"))
    graph = definitions.resolve_asset_graph()
    chain = keys.CHAIN
    assert set(graph.get_all_asset_keys()) == {*chain, keys.CATALOG}
    for upstream, downstream in itertools.pairwise(chain):
        assert graph.get(downstream).parent_keys == {upstream}
    # The catalog: the whole marketplace, unpartitioned, after registration, not in the sync job.
    catalog = graph.get(keys.CATALOG)
    assert catalog.parent_keys == {keys.REGISTRATION} and catalog.partitions_def is None
    assert catalog.group_name == "marketplace_catalog" and catalog.kinds >= {"delta", "html"}
    assert chain[2].path[-1] == "export_summary" and chain[4].path[-1] == "import_summary"

    job = definitions.resolve_job_def("marketplace_sync_job")
    partitions = job.partitions_def
    assert isinstance(partitions, dg.MultiPartitionsDefinition)
    assert {d.name for d in partitions.partitions_defs} == {"date", "workspace"}
    partition_keys = partitions.get_partition_keys()
    assert f"{TODAY.isoformat()}|dev01" in partition_keys and "2026-10-01|dev03" in partition_keys
    check_keys = {key.name for key in graph.asset_check_keys}
    assert check_keys == {
        keys.IMPORT_LOADS_CHECK,
        keys.EXPORT_SUMMARY_UNIQUE,
        keys.IMPORT_SUMMARY_UNIQUE,
        keys.EXPORTS_MATCH_MANIFESTS,
        keys.PRODUCTION_VERSIONS_SYNCED,
        keys.MARKETPLACE_MATCHES_SOURCES,
        keys.EXPORTS_SIGNED_AND_CLEAN,
        keys.PARTITIONS_FRESH,
        keys.NO_STRAY_EXPORTS,
        "gate_passed",
        "approvals_pending",
        "source_webhooks_registered",
    }
    assert {j.name for j in definitions.resolve_all_job_defs()} >= {
        "marketplace_sync_job",
        "marketplace_checks_job",
        "marketplace_freshness_job",
        "marketplace_maintenance_job",
    }
    sync_checks = {k.name for k in job.asset_layer.asset_graph.asset_check_keys}
    assert (
        keys.EXPORTS_MATCH_MANIFESTS not in sync_checks and keys.IMPORT_LOADS_CHECK in sync_checks
    )
    assert {"gate_passed", "approvals_pending"} <= sync_checks  # each sync says what the gate holds
    assert (
        keys.MARKETPLACE_MATCHES_SOURCES not in sync_checks
        and keys.EXPORTS_SIGNED_AND_CLEAN not in sync_checks
    )  # it reads every workspace: the checks job's
    assert "source_webhooks_registered" not in sync_checks  # it reads every source too

    sensor = definitions.resolve_sensor_def("production_version_sensor")
    assert (
        sensor.default_status == dg.DefaultSensorStatus.RUNNING
    )  # the embedded default turns it on
    # Evaluated on every loop of the daemon (5 s) for webhook events; every workspace polled every
    # 20 s.
    assert sensor.minimum_interval_seconds < 5
    assert "every workspace polled every 20 s" in sensor.description
    assert (
        definitions.resolve_sensor_def("marketplace_automation_sensor").default_status
        == dg.DefaultSensorStatus.RUNNING
    )
    schedule = definitions.resolve_schedule_def("daily_marketplace_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 2 * * *", "UTC")
    for name in (
        "marketplace_freshness_schedule",
        "marketplace_checks_schedule",
        "marketplace_maintenance_schedule",
    ):
        definitions.resolve_schedule_def(name)
    for key in chain:
        assert graph.get(key).backfill_policy == dg.BackfillPolicy.multi_run(
            max_partitions_per_run=1
        )
    for key in chain[1:]:
        assert graph.get(key).automation_condition is not None
    for key in (keys.EXPORT_SUMMARY, keys.IMPORT_SUMMARY, keys.REGISTRATION):
        assert graph.get(key).freshness_policy is not None


def test_sensor_is_stopped_unless_configured(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "external_storage: {uri: x}\nmarketplace: {tracking_uri: 'http://127.0.0.1:1'}\n"
        "workspaces: [{name: w, tracking_uri: 'http://127.0.0.1:2', "
        "production: {stage: Production}}]\n"
    )
    sensor = build_definitions(load_config(path)).resolve_sensor_def("production_version_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert "every workspace polled every 20 s" in sensor.description  # the default poll interval


def test_configuration_is_read_when_definitions_load_not_at_import(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    env = {**os.environ, "MARKETPLACE_CONFIG": str(missing)}
    imported = subprocess.run(
        [sys.executable, "-c", "import marketplace_dagster.definitions"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr


def test_lazy_definitions_report_a_bad_configuration(monkeypatch, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("workspaces: []\n")
    monkeypatch.setenv("MARKETPLACE_CONFIG", str(bad))
    with pytest.raises(ConfigError) as error:
        defs()
    assert str(bad) in str(error.value)


def test_dagster_validates_the_workspace_file(tmp_path):
    # Its own DAGSTER_HOME: a fresh checkout has none until `make demo` creates it.
    env = {k: v for k, v in os.environ.items() if k != "MARKETPLACE_CONFIG"}
    env["DAGSTER_HOME"] = str(tmp_path)
    result = subprocess.run(
        [str(DAGSTER), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_embedded_instance_dequeues_within_a_second_and_keeps_what_a_user_set(tmp_path):
    from harness.local_dagster import ensure_instance

    (tmp_path / "dagster.yaml").write_text(
        "telemetry:\n  enabled: true\nconcurrency:\n  runs:\n    max_concurrent_runs: 3\n"
    )
    ensure_instance(tmp_path)
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        assert instance.run_coordinator.dequeue_interval_seconds == 1
        settings = yaml.safe_load((tmp_path / "dagster.yaml").read_text())
        assert (
            settings["telemetry"] == {"enabled": True}
            and settings["concurrency"]["runs"]["max_concurrent_runs"] == 3
        )
    finally:
        instance.dispose()
