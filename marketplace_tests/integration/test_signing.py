"""Signed manifests: write access to external storage alone cannot plant or replay a model."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow import MlflowClient

from harness.seeding import register_version
from marketplace.export_records import export_dir
from marketplace.manifest import MANIFEST_NAME, read_manifest
from marketplace_dagster import keys
from marketplace_tests.testing.deployments import materializations, step_failure_message

KEY_ENV = "MARKETPLACE_TEST_SIGNING_KEY"


@pytest.fixture
def signed(servers, deploy, uid, monkeypatch):
    """A workspace with two production models and a signing key from the environment."""
    monkeypatch.setenv(KEY_ENV, "s3cret-signing-key")
    for model in ("a", "b"):
        register_version(servers["ws_a"].uri, f"{uid}_{model}", stage="Production")
    return deploy(
        [
            {
                "name": "signed",
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ],
        external_storage={"uri": "external", "signing_key_env": KEY_ENV},
    )


def _export(deployment, uid: str, model: str):
    return export_dir(deployment.config.storage_root, "signed", f"{uid}_{model}", 1)


def test_signed_exports_import_and_their_signature_is_checked(signed, uid, servers):
    result = signed.sync("signed")
    assert result.success, step_failure_message(result)
    manifest, _ = read_manifest(_export(signed, uid, "a"))
    assert len(manifest.signature) == 64
    assert manifest.signature_problem("s3cret-signing-key") is None
    assert "does not verify" in manifest.signature_problem("another key")
    assert MlflowClient(servers["marketplace"].uri).get_model_version(f"signed.{uid}_a", "1")


def test_planted_or_replayed_export_is_refused_at_import(signed, uid, servers):
    # Model a is exported and signed; b's folder is then filled by someone with storage access
    # alone: a's signed export relabelled as b (a replay), before b is exported.
    result = signed.sync("signed", selection=keys.CHAIN[:2])
    assert result.success, step_failure_message(result)
    planted = _export(signed, uid, "b")
    shutil.rmtree(planted)
    shutil.copytree(_export(signed, uid, "a"), planted)
    document = json.loads((planted / MANIFEST_NAME).read_text())
    document["model_name"] = f"{uid}_b"  # the identity the signature covers
    (planted / MANIFEST_NAME).write_text(json.dumps(document))

    result = signed.sync("signed")
    assert not result.success
    message = step_failure_message(result)
    assert f"signed/{uid}_b v1" in message and "signature does not verify" in message
    market = MlflowClient(servers["marketplace"].uri)
    assert market.search_model_versions(f"name='signed.{uid}_b'") == []
    assert market.get_model_version(
        f"signed.{uid}_a", "1"
    )  # the rest of the partition still synced


def test_unsigned_export_is_refused_when_a_key_is_configured(signed, uid, servers):
    result = signed.sync("signed", selection=keys.CHAIN[:2])
    assert result.success, step_failure_message(result)
    manifest_path = _export(signed, uid, "b") / MANIFEST_NAME
    document = json.loads(manifest_path.read_text())
    document["signature"] = ""
    manifest_path.write_text(json.dumps(document))

    result = signed.sync("signed")
    assert not result.success
    assert f"signed/{uid}_b v1" in step_failure_message(result)
    assert "not signed, and a signing key is configured" in step_failure_message(result)


def test_missing_signing_key_variable_fails_naming_it(signed, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    # Read when the export needs it: the partition fails, naming the variable, and nothing is
    # exported.
    result = signed.sync("signed")
    assert not result.success
    message = step_failure_message(result)
    assert (
        f"external_storage.signing_key_env: the environment variable {KEY_ENV} is not set"
        in message
    )
    assert "s3cret" not in message


def test_export_copied_into_another_versions_place_is_replaced_not_counted(servers, deploy, uid):
    for model in ("a", "b"):
        register_version(servers["ws_a"].uri, f"{uid}_{model}", stage="Production")
    deployment = deploy(
        [
            {
                "name": "signed",
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ]
    )
    result = deployment.sync("signed", selection=keys.CHAIN[:2])
    assert result.success, step_failure_message(result)
    planted = _export(deployment, uid, "b")
    shutil.rmtree(planted)
    shutil.copytree(
        _export(deployment, uid, "a"), planted
    )  # a's export, manifest and all, in b's place

    result = deployment.sync("signed", selection=keys.CHAIN[:2])
    assert result.success, step_failure_message(result)
    exported = materializations(result, keys.EXPORTS)
    assert (exported["exports_replaced"], exported["exported"], exported["already_exported"]) == (
        1,
        1,
        1,
    )
    manifest, _ = read_manifest(planted)
    assert manifest.identity == ("signed", f"{uid}_b", 1)
