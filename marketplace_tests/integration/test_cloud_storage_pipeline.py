"""The pipeline with external storage on S3 and on ADLS, each against its emulator on loopback.

Every test runs twice, once per backend (`cloud` fixture): exports, snapshots, skip records,
locks and both Delta tables live in a bucket or container of the test's own.
"""

from __future__ import annotations

import os

import pytest
from mlflow import MlflowClient

from harness.seeding import register_version
from marketplace.external import configured_storage
from marketplace.layout import export_key
from marketplace.manifest import MANIFEST_NAME
from marketplace.provenance import TAG_CHECKSUM, TAG_SOURCE_VERSION
from marketplace_dagster import keys
from marketplace_dagster.keys import EXPORTS_MATCH_MANIFESTS, NO_STRAY_EXPORTS
from marketplace_tests.testing.deployments import (
    assert_nothing_new,
    materializations,
    materialize_in_processes,
    one_model_each,
    step_failure_message,
)
from marketplace_tests.testing.emulators import CLOUD_KEYS
from marketplace_tests.testing.support import assert_predicts_like_source, table_rows


@pytest.fixture
def synced_pair(servers, deploy, uid, cloud):
    """ws_a by stage, ws_b by alias, on cloud storage; neither synced yet."""
    _, storage_config = cloud
    register_version(servers["ws_a"].uri, f"{uid}_iris", stage="Archived")
    register_version(servers["ws_a"].uri, f"{uid}_iris", stage="Production")
    register_version(servers["ws_b"].uri, f"{uid}_diabetes", alias="champion", kind="diabetes")
    deployment = deploy(
        [
            {
                "name": "cloud-a",
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            },
            {
                "name": "cloud-b",
                "tracking_uri": servers["ws_b"].uri,
                "production": {"alias": "champion"},
                "include": [f"{uid}_*"],
            },
        ],
        external_storage=storage_config,
        marketplace={"name_template": uid + ".{workspace}.{model}"},
    )
    return deployment


def test_full_pipeline_on_cloud_storage(synced_pair, servers, uid):
    deployment = synced_pair
    storage = configured_storage(deployment.config)
    for workspace in ("cloud-a", "cloud-b"):
        result = deployment.sync(workspace)
        assert result.success, step_failure_message(result)
        assert materializations(result, keys.EXPORTS)["exported"] == 1
        assert materializations(result, keys.IMPORTS)["imported"] == 1
        assert [
            c.passed
            for c in result.get_asset_check_evaluations()
            if c.check_name == keys.IMPORT_LOADS_CHECK
        ] == [True]

    exports = {r["workspace"]: r for r in table_rows(deployment, "export_summary")}
    assert sorted(exports) == ["cloud-a", "cloud-b"] and exports["cloud-a"]["version"] == 2
    key = export_key("cloud-a", f"{uid}_iris", 2)
    assert exports["cloud-a"]["export_path"] == storage.location(key)
    assert exports["cloud-a"]["export_path"].startswith(("s3://", "abfss://"))
    stored = storage.list(key)
    assert MANIFEST_NAME in stored and any(name.endswith("artifacts/MLmodel") for name in stored)
    assert (
        sum(e.size for n, e in stored.items() if n != MANIFEST_NAME)
        == exports["cloud-a"]["size_bytes"]
    )
    assert storage.list("production_models")  # the snapshots are there too
    assert storage.list(".locks") == {}  # every lock was released

    market = MlflowClient(servers["marketplace"].uri)
    production = market.get_model_version_by_alias(f"{uid}.cloud-a.{uid}_iris", "production")
    assert (
        production.tags[TAG_SOURCE_VERSION] == "2"
        and production.tags[TAG_CHECKSUM] == exports["cloud-a"]["checksum"]
    )
    imports = table_rows(deployment, "import_summary")
    assert sorted((r["workspace"], r["marketplace_version"]) for r in imports) == [
        ("cloud-a", 1),
        ("cloud-b", 1),
    ]

    assert_predicts_like_source(
        servers["ws_b"].uri,
        f"models:/{uid}_diabetes@champion",
        servers["marketplace"].uri,
        f"models:/{uid}.cloud-b.{uid}_diabetes@production",
    )

    manifest_before = storage.list(key)[MANIFEST_NAME]
    assert_nothing_new(deployment.sync("cloud-a"), already_exported=1)
    assert storage.list(key)[MANIFEST_NAME] == manifest_before
    assert len(market.search_model_versions(f"name='{uid}.cloud-a.{uid}_iris'")) == 1

    # The catalog's table and page on the same storage; a second refresh changes no row.
    first = deployment.refresh_catalog()
    assert materializations(first, keys.CATALOG)["rows_inserted"] == 2
    assert sorted(r["marketplace_name"] for r in table_rows(deployment, "catalog")) == [
        f"{uid}.cloud-a.{uid}_iris",
        f"{uid}.cloud-b.{uid}_diabetes",
    ]
    assert f"{uid}.cloud-b.{uid}_diabetes".encode() in storage.read("catalog.html")
    again = deployment.refresh_catalog()
    assert (
        materializations(again, keys.CATALOG)["rows_inserted"],
        materializations(again, keys.CATALOG)["rows_updated"],
    ) == (0, 0)


def test_parallel_partitions_write_the_summary_tables_without_losing_a_row(
    servers, deploy, uid, cloud, tmp_path
):
    _, storage_config = cloud
    workspaces = ("p1", "p2", "p3", "p4")
    deployment = one_model_each(servers, deploy, uid, workspaces, external_storage=storage_config)
    materialize_in_processes(deployment, workspaces, tmp_path)

    for table in ("export_summary", "import_summary"):
        rows = table_rows(deployment, table)
        assert sorted((r["workspace"], r["model_name"]) for r in rows) == [
            (w, f"{uid}_{w}_m") for w in workspaces
        ], table


def test_an_upload_cut_short_is_not_counted_and_is_replaced(synced_pair, uid):
    deployment = synced_pair
    storage = configured_storage(deployment.config)
    key = export_key("cloud-a", f"{uid}_iris", 2)
    storage.write(f"{key}/run-folder/run.json", b"{truncated")  # files, but the manifest never came

    result = deployment.sync("cloud-a", selection=keys.CHAIN[:3])

    assert result.success, step_failure_message(result)
    assert materializations(result, keys.EXPORTS)["exported"] == 1
    stored = storage.list(key)
    assert MANIFEST_NAME in stored and "run-folder/run.json" not in stored
    assert [r["version"] for r in table_rows(deployment, "export_summary")] == [2]


def test_a_changed_object_is_refused_at_import_and_by_the_manifest_check(synced_pair, servers, uid):
    deployment = synced_pair
    storage = configured_storage(deployment.config)
    assert deployment.sync("cloud-a", selection=keys.CHAIN[:3]).success
    key = export_key("cloud-a", f"{uid}_iris", 2)
    pickled = next(
        n for n in storage.list(key) if "/artifacts/model." in n and not n.endswith(".json")
    )
    storage.write(
        f"{key}/{pickled}", storage.read(f"{key}/{pickled}")[::-1]
    )  # same size, other bytes

    result = deployment.sync("cloud-a", selection=[keys.IMPORTS])

    assert not result.success
    message = step_failure_message(result)
    assert f"(changed: {pickled})" in message and storage.location(key) in message
    assert (
        MlflowClient(servers["marketplace"].uri).search_registered_models(
            filter_string=f"name='{uid}.cloud-a.{uid}_iris'"
        )
        == []
    )
    checks = deployment.defs.resolve_job_def("marketplace_checks_job").execute_in_process(
        instance=deployment.instance, raise_on_error=False
    )
    evaluations = {c.check_name: c for c in checks.get_asset_check_evaluations()}
    assert evaluations[EXPORTS_MATCH_MANIFESTS].passed is False
    assert pickled in evaluations[EXPORTS_MATCH_MANIFESTS].description
    assert evaluations[NO_STRAY_EXPORTS].passed is True
    assert evaluations[NO_STRAY_EXPORTS].metadata["export_folders"].value == 1


def test_housekeeping_on_cloud_storage(synced_pair, uid):
    deployment = synced_pair
    storage = configured_storage(deployment.config)
    assert deployment.sync("cloud-a").success
    debris = export_key("cloud-a", f"{uid}_iris", 7)
    storage.write(f"{debris}/half.bin", b"x" * 10)

    job = deployment.defs.resolve_job_def("marketplace_maintenance_job")
    result = job.execute_in_process(
        instance=deployment.instance,
        run_config={
            "ops": {
                "housekeep_external_storage": {
                    "config": {"debris_retention_hours": 0, "vacuum_retention_hours": 0}
                }
            }
        },
    )

    assert result.success
    assert storage.list(debris) == {}
    assert MANIFEST_NAME in storage.list(export_key("cloud-a", f"{uid}_iris", 2))
    assert (
        len(table_rows(deployment, "export_summary")) == 1
        and len(table_rows(deployment, "import_summary")) == 1
    )


def test_a_missing_storage_credential_fails_naming_its_variable(synced_pair, monkeypatch):
    deployment = synced_pair
    secret = os.environ[CLOUD_KEYS["secret"]]
    monkeypatch.delenv(CLOUD_KEYS["secret"])

    result = deployment.sync("cloud-a")

    assert not result.success
    message = step_failure_message(result)
    assert CLOUD_KEYS["secret"] in message and deployment.config.storage_root in message
    assert secret not in message
