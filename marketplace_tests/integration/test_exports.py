"""Exports pin down mlflow-export-import's traps: silent success, missing files, debris."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
from mlflow import MlflowClient
from mlflow_export_import.model.export_model import export_model

from harness.seeding import register_version
from marketplace.export_records import export_dir
from marketplace.exports import ExportError, _verify_contents, export_version
from marketplace.manifest import MANIFEST_NAME, verify_export
from marketplace.registry import process_tracking_uri, select_production_versions


def _production(uri: str, uid: str):
    (version,) = select_production_versions(
        MlflowClient(uri), stage="Production", alias=None, include=[f"{uid}_*"]
    ).versions
    return version


def test_verification_catches_an_export_missing_model_files(servers, uid, tmp_path):
    """The library can report success without the logged model's files; ours does not trust it.

    (it was seen with MLFLOW_TRACKING_URI unset and proxied artifacts; with the local
    servers' direct artifact root it does not happen, so the loss is made by hand here.)
    """
    uri = servers["ws_a"].uri
    register_version(uri, f"{uid}_m", stage="Production")
    version = _production(uri, uid)
    client = MlflowClient(uri)
    raw = tmp_path / "raw"
    with process_tracking_uri(uri):
        ok, _ = export_model(
            f"{uid}_m", str(raw), versions=[str(version.version)], mlflow_client=client
        )
    assert ok is True
    _verify_contents(raw, client, version)  # complete: passes

    model_file = next(raw.glob("m-*/artifacts/MLmodel"))
    model_file.write_text(model_file.read_text()[:10])
    with pytest.raises(ExportError, match="MLmodel is missing or truncated"):
        _verify_contents(raw, client, version)
    shutil.rmtree(model_file.parent.parent)
    with pytest.raises(ExportError, match="logged model .* was not exported"):
        _verify_contents(raw, client, version)


def test_export_version_writes_a_verifying_manifest(servers, uid, tmp_path):
    uri = servers["ws_a"].uri
    register_version(uri, f"{uid}_m", stage="Production")
    version = _production(uri, uid)
    record = export_version(
        MlflowClient(uri),
        uri,
        storage=tmp_path,
        workspace="w",
        version=version,
        export_date=dt.date(2026, 11, 2),
    )
    assert record.path == export_dir(tmp_path, "w", f"{uid}_m", version.version)
    manifest = verify_export(record.path)
    assert manifest.export_date == "2026-11-02" and manifest.model_name == f"{uid}_m"
    assert any(name.endswith("/artifacts/MLmodel") for name in manifest.files)
    assert json.loads((record.path / MANIFEST_NAME).read_text())["version"] == version.version
    assert [p.name for p in record.path.parent.iterdir()] == [str(version.version)]


def test_failed_export_leaves_nothing_behind(servers, uid, tmp_path):
    uri = servers["ws_a"].uri
    register_version(uri, f"{uid}_m", stage="Production")
    version = _production(uri, uid)
    missing = type(version)(**{**version.__dict__, "version": 99})
    with pytest.raises(ExportError, match="99"):
        export_version(
            MlflowClient(uri),
            uri,
            storage=tmp_path,
            workspace="w",
            version=missing,
            export_date=dt.date(2026, 11, 2),
        )
    folder = export_dir(tmp_path, "w", f"{uid}_m", 99)
    assert not folder.exists()
    assert list(folder.parent.iterdir()) == []  # no staging folder either
