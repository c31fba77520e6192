"""The six assets end to end against real MLflow servers and real Delta tables."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from harness.local_servers import free_port
from harness.seeding import register_version
from marketplace.export_records import export_dir
from marketplace.manifest import MANIFEST_NAME
from marketplace.provenance import (
    TAG_CHECKSUM,
    TAG_SOURCE_MODEL,
    TAG_SOURCE_VERSION,
    TAG_SOURCE_WORKSPACE,
)
from marketplace.registry import MARKER_PREFIX
from marketplace_dagster import keys
from marketplace_tests.testing.deployments import (
    TODAY,
    assert_nothing_new,
    materializations,
    step_failure_message,
)
from marketplace_tests.testing.support import assert_predicts_like_source, table_rows


@pytest.fixture
def two_workspaces(servers, deploy, uid):
    """ws_a selects by stage, ws_b by alias; each holds this test's models only."""
    a, b = servers["ws_a"].uri, servers["ws_b"].uri
    register_version(a, f"{uid}_iris", stage="Archived", description="first try")
    register_version(a, f"{uid}_iris", stage="Production", description="the good one")
    register_version(a, f"{uid}_draft")  # no production version
    register_version(b, f"{uid}_diabetes", alias="champion", kind="diabetes")
    deployment = deploy(
        [
            {
                "name": f"a{uid}",
                "tracking_uri": a,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            },
            {
                "name": f"b{uid}",
                "tracking_uri": b,
                "production": {"alias": "champion"},
                "include": [f"{uid}_*"],
            },
        ]
    )
    return deployment, f"a{uid}", f"b{uid}"


def test_sync_exports_imports_and_registers_the_newest_production_version(
    two_workspaces, servers, uid
):
    deployment, ws_a, _ws_b = two_workspaces
    result = deployment.sync(ws_a)
    assert result.success, step_failure_message(result)

    seen = materializations(result, keys.PRODUCTION_MODELS)
    assert seen["production_versions"] == 1
    assert seen["models_seen"] >= 2  # the server is shared with other tests
    assert seen["skipped"][f"{uid}_draft"] == "no version in stage Production"
    assert materializations(result, keys.EXPORTS)["exported"] == 1
    assert materializations(result, keys.IMPORTS)["imported"] == 1

    source = MlflowClient(servers["ws_a"].uri)
    marked = source.get_model_version(f"{uid}_iris", "2")
    assert (
        marked.description == f"{MARKER_PREFIX}{TODAY.isoformat()}, old description: the good one"
    )
    assert marked.tags["marketplace.exported_on"] == TODAY.isoformat()
    assert source.get_model_version(f"{uid}_iris", "1").description == "first try"

    market = MlflowClient(servers["marketplace"].uri)
    name = f"{ws_a}.{uid}_iris"
    versions = market.search_model_versions(f"name='{name}'")
    assert len(versions) == 1
    production = market.get_model_version_by_alias(name, "production")
    assert production.current_stage == "Production"
    assert production.tags[TAG_SOURCE_WORKSPACE] == ws_a
    assert production.tags[TAG_SOURCE_MODEL] == f"{uid}_iris"
    assert production.tags[TAG_SOURCE_VERSION] == "2"
    registered = market.get_registered_model(name)
    assert registered.tags[TAG_SOURCE_WORKSPACE] == ws_a
    assert ws_a in registered.description and f"{uid}_iris" in registered.description
    assert market.search_registered_models(filter_string=f"name='{ws_a}.{uid}_draft'") == []

    exports = table_rows(deployment, "export_summary")
    assert [(r["workspace"], r["model_name"], r["version"]) for r in exports] == [
        (ws_a, f"{uid}_iris", 2)
    ]
    assert exports[0]["export_date"] == TODAY and exports[0]["size_bytes"] > 0
    assert exports[0]["checksum"] == production.tags[TAG_CHECKSUM]
    imports = table_rows(deployment, "import_summary")
    assert [(r["marketplace_model"], r["marketplace_version"]) for r in imports] == [
        (name, int(production.version))
    ]


def test_marketplace_model_predicts_the_same_as_its_source(two_workspaces, servers, uid):
    deployment, _, ws_b = two_workspaces
    result = deployment.sync(ws_b)
    assert result.success, step_failure_message(result)
    check = result.get_asset_check_evaluations()
    assert [c.passed for c in check if c.check_name == keys.IMPORT_LOADS_CHECK] == [True]

    assert_predicts_like_source(
        servers["ws_b"].uri,
        f"models:/{uid}_diabetes@champion",
        servers["marketplace"].uri,
        f"models:/{ws_b}.{uid}_diabetes@production",
    )


def test_second_run_changes_nothing(two_workspaces, servers, uid):
    deployment, ws_a, _ = two_workspaces
    assert deployment.sync(ws_a).success
    path = export_dir(deployment.config.storage_root, ws_a, f"{uid}_iris", 2)
    manifest_mtime = (path / MANIFEST_NAME).stat().st_mtime_ns
    source = MlflowClient(servers["ws_a"].uri).get_model_version(f"{uid}_iris", "2")

    assert_nothing_new(deployment.sync(ws_a), already_exported=1)
    assert (path / MANIFEST_NAME).stat().st_mtime_ns == manifest_mtime
    after = MlflowClient(servers["ws_a"].uri).get_model_version(f"{uid}_iris", "2")
    assert after.description == source.description  # the marker is written once
    assert (
        len(
            MlflowClient(servers["marketplace"].uri).search_model_versions(
                f"name='{ws_a}.{uid}_iris'"
            )
        )
        == 1
    )
    assert len(table_rows(deployment, "export_summary")) == 1
    assert len(table_rows(deployment, "import_summary")) == 1


def test_new_production_version_is_imported_and_takes_the_alias(two_workspaces, servers, uid):
    deployment, ws_a, _ = two_workspaces
    assert deployment.sync(ws_a).success
    register_version(servers["ws_a"].uri, f"{uid}_iris", stage="Production")  # v3

    result = deployment.sync(ws_a)
    assert result.success, step_failure_message(result)
    market = MlflowClient(servers["marketplace"].uri)
    name = f"{ws_a}.{uid}_iris"
    assert len(market.search_model_versions(f"name='{name}'")) == 2
    production = market.get_model_version_by_alias(name, "production")
    assert production.tags[TAG_SOURCE_VERSION] == "3"
    assert production.current_stage == "Production"
    rows = table_rows(deployment, "export_summary")
    assert sorted(r["version"] for r in rows) == [2, 3]


def test_corrupted_export_is_refused_at_import(two_workspaces, servers, uid):
    deployment, ws_a, _ = two_workspaces
    upto_summary = [keys.PRODUCTION_MODELS, keys.EXPORTS, keys.EXPORT_SUMMARY]
    assert deployment.sync(ws_a, selection=upto_summary).success
    path = export_dir(deployment.config.storage_root, ws_a, f"{uid}_iris", 2)
    target = next(
        p
        for p in path.rglob("*")
        if p.is_file() and p.name.startswith("model.") and p.suffix != ".json"
    )
    target.write_bytes(target.read_bytes()[::-1])  # same size, different bytes

    result = deployment.sync(ws_a)
    assert not result.success
    message = step_failure_message(result)
    assert "does not match its manifest" in message and target.name in message and ws_a in message
    market = MlflowClient(servers["marketplace"].uri)
    assert market.search_registered_models(filter_string=f"name='{ws_a}.{uid}_iris'") == []


def test_debris_of_an_interrupted_export_is_replaced(two_workspaces, uid):
    deployment, ws_a, _ = two_workspaces
    debris = export_dir(deployment.config.storage_root, ws_a, f"{uid}_iris", 2)
    (debris / "half").mkdir(parents=True)
    (debris / "half" / "run.json").write_text("{truncated")
    result = deployment.sync(ws_a)
    assert result.success, step_failure_message(result)
    assert materializations(result, keys.EXPORTS)["exported"] == 1
    assert not (debris / "half").exists() and (debris / MANIFEST_NAME).exists()


def test_unreachable_workspace_fails_fast_naming_it_and_others_succeed(servers, deploy, uid):
    register_version(servers["ws_a"].uri, f"{uid}_ok", stage="Production")
    dead = f"http://127.0.0.1:{free_port()}"
    deployment = deploy(
        [
            {"name": "down", "tracking_uri": dead, "production": {"stage": "Production"}},
            {
                "name": f"a{uid}",
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            },
        ]
    )
    started = time.monotonic()
    result = deployment.sync("down")
    elapsed = time.monotonic() - started
    assert not result.success
    message = step_failure_message(result)
    assert "workspace down" in message and dead in message
    assert elapsed < 60, f"an unreachable workspace took {elapsed:.0f} s to fail"
    assert deployment.sync(f"a{uid}").success


def test_name_owned_by_another_source_is_refused(two_workspaces, servers, uid):
    deployment, ws_a, _ = two_workspaces
    market = MlflowClient(servers["marketplace"].uri)
    market.create_registered_model(
        f"{ws_a}.{uid}_iris", tags={TAG_SOURCE_WORKSPACE: "elsewhere", TAG_SOURCE_MODEL: "other"}
    )
    result = deployment.sync(ws_a)
    assert not result.success
    assert "maps to the same name" in step_failure_message(result)
    assert market.search_model_versions(f"name='{ws_a}.{uid}_iris'") == []


def test_a_name_a_prompt_holds_is_refused(two_workspaces, servers, uid):
    # Our clients skip MLflow's read-before-write prompt check; the import makes it once itself.
    import mlflow

    from marketplace.registry import process_tracking_uri

    deployment, ws_a, _ = two_workspaces
    market = MlflowClient(servers["marketplace"].uri)
    with process_tracking_uri(servers["marketplace"].uri):
        mlflow.genai.register_prompt(name=f"{ws_a}.{uid}_iris", template="Classify {{flower}}")
    result = deployment.sync(ws_a)
    assert not result.success
    assert "is held by an MLflow prompt" in step_failure_message(result)
    assert market.search_model_versions(f"name='{ws_a}.{uid}_iris'") == []


def test_bulk_read_of_marketplace_versions_matches_reading_each_model(servers, uid):
    from marketplace.marketplace_versions import marketplace_versions, marketplace_versions_of
    from marketplace.provenance import SourceKey

    market = MlflowClient(servers["marketplace"].uri)
    seed = market.get_model_version(
        f"{uid}_seed", register_version(servers["marketplace"].uri, f"{uid}_seed")
    )
    names = [f"{uid}.plain", f"{uid}.o'quote", f'{uid}.d"quote', f"{uid}.space name", f"{uid}.ünï"]
    for i, name in enumerate(names):
        market.create_registered_model(name)
        for version in (1, 2):
            market.create_model_version(
                name,
                seed.source,
                tags=SourceKey("ws", f"m{i}", version).tags(),
                model_id=seed.source.removeprefix("models:/"),
            )
        market.create_model_version(
            name, seed.source, model_id=seed.source.removeprefix("models:/")
        )  # no source tags: not an import
    absent = f"{uid}.never_registered"

    one_by_one = {name: marketplace_versions(market, name) for name in [*names, absent]}
    for chunk in (2, 50):  # several IN searches, and one
        bulk = marketplace_versions_of(market, [*names, absent, names[0]], chunk=chunk)
        assert {n: {k: v.version for k, v in found.items()} for n, found in bulk.items()} == {
            n: {k: v.version for k, v in found.items()} for n, found in one_by_one.items() if found
        }
    assert {k.version: v.version for k, v in one_by_one[names[1]].items()} == {1: "1", 2: "2"}
    assert one_by_one[absent] == {}


def test_new_marketplace_model_is_created_with_its_provenance(servers, deploy, uid):
    register_version(servers["ws_a"].uri, f"{uid}_prov", stage="Production")
    deployment = deploy(
        [
            {
                "name": "prov",
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ]
    )
    result = deployment.sync("prov", selection=keys.CHAIN[:4])  # up to the import, no registration
    assert result.success, step_failure_message(result)
    created = MlflowClient(servers["marketplace"].uri).get_registered_model(f"prov.{uid}_prov")
    assert (
        created.tags[TAG_SOURCE_WORKSPACE] == "prov"
        and created.tags[TAG_SOURCE_MODEL] == f"{uid}_prov"
    )
    assert created.tags["marketplace.latest_source_version"] == "1"
    assert created.description.startswith(
        f"Marketplace copy of model '{uid}_prov' from workspace 'prov'"
    )
    # Registration then promotes it: the alias, the stage, its status (active, since when) and its
    # model card.
    result = deployment.sync("prov")
    assert result.success, step_failure_message(result)
    registration = materializations(result, keys.REGISTRATION)
    assert registration["registry_changes"] == 5
    # Each step reports its registry traffic: the Delta-only step makes none.
    assert registration["registry_requests"] >= 3 and registration["registry_seconds"] > 0
    assert materializations(result, keys.IMPORT_SUMMARY)["registry_requests"] >= 1
    assert materializations(result, keys.EXPORT_SUMMARY)["registry_requests"] == 0


def test_every_kind_of_tampering_is_refused_at_import_saying_what_differs(servers, deploy, uid):
    kinds = ("changed", "added", "removed", "manifest_deleted", "manifest_edited")
    for kind in kinds:
        register_version(servers["ws_a"].uri, f"{uid}_{kind}", stage="Production")
    deployment = deploy(
        [
            {
                "name": "tamper",
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ]
    )
    assert deployment.sync("tamper", selection=keys.CHAIN[:3]).success
    folder = {
        kind: export_dir(deployment.config.storage_root, "tamper", f"{uid}_{kind}", 1)
        for kind in kinds
    }
    pickled = {
        kind: next(p for p in folder[kind].rglob("model.*") if p.suffix != ".json")
        for kind in kinds
    }
    pickled["changed"].write_bytes(pickled["changed"].read_bytes()[::-1])
    (pickled["added"].parent / "planted.py").write_text("import os\n")
    pickled["removed"].unlink()
    (folder["manifest_deleted"] / MANIFEST_NAME).unlink()
    # An edit that keeps the manifest consistent with the files: only its recorded checksum tells.
    manifest = folder["manifest_edited"] / MANIFEST_NAME
    manifest.write_text(manifest.read_text().replace('"exported_at": "', '"exported_at": "1'))

    result = deployment.sync("tamper", selection=[keys.IMPORTS])

    assert not result.success
    failures = _failures(result)
    says = {
        "changed": f"(changed: {pickled['changed'].relative_to(folder['changed']).as_posix()})",
        "added": "(added: "
        + (pickled["added"].parent / "planted.py").relative_to(folder["added"]).as_posix(),
        "removed": f"(missing: {pickled['removed'].relative_to(folder['removed']).as_posix()})",
        "manifest_deleted": "no manifest.json",
        "manifest_edited": "checksum",
    }
    for kind in kinds:
        assert says[kind] in failures[f"tamper/{uid}_{kind} v1"], (kind, failures)
    market = MlflowClient(servers["marketplace"].uri)
    for kind in kinds:
        assert market.search_registered_models(filter_string=f"name='tamper.{uid}_{kind}'") == []


def _failures(result) -> dict:
    for event in result.all_events:
        if event.is_step_failure:
            return event.event_specific_data.user_failure_data.metadata["failures"].value
    return {}
