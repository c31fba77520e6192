"""Exports pin down mlflow-export-import's traps: silent success, missing files, debris."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
from mlflow import MlflowClient
from mlflow_export_import.model.export_model import export_model

from marketplace.export_records import export_dir
from marketplace.exports import ExportError, _verify_contents, export_version
from marketplace.layout import path_component
from marketplace.manifest import MANIFEST_NAME, verify_export
from marketplace.registry import process_tracking_uri, select_production_versions

from .conftest import register_version


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


@pytest.mark.parametrize(
    "name",
    [
        "plain",
        "with space",
        " leading",
        "back\\slash",
        "ünïcödé",
        "dots.in.name",
        "x" * 1000,
        "%41",
    ],
)
def test_model_names_become_one_safe_distinct_folder(name, tmp_path):
    component = path_component(name)
    assert "/" not in component and component not in (".", "..")
    assert len(component.encode()) <= 180
    folder = tmp_path / component
    folder.mkdir()
    assert folder.parent == tmp_path


def test_long_names_differing_only_at_the_end_do_not_collide():
    assert path_component("x" * 1000 + "a") != path_component("x" * 1000 + "b")
    assert path_component("%41") != path_component("A")


def test_a_quarantine_holds_while_its_findings_block_under_the_policy_of_the_day(tmp_path):
    from marketplace.export_records import quarantine_of, record_quarantine
    from marketplace.layout import skip_record_key
    from marketplace.scanning import Finding, ScanPolicy
    from marketplace.storage import LocalStorage

    storage = LocalStorage(tmp_path)
    key = skip_record_key("dev01", "fraud", 2)
    finding = Finding(
        "python_model.pkl", "posix.system", "critical", "Use of unsafe operator 'system'"
    )
    record_quarantine(
        storage,
        key,
        checksum="c1",
        findings=[finding.to_dict()],
        reason="quarantined: ...",
        day=dt.date(2026, 12, 1),
    )

    assert quarantine_of(storage, key)["findings"] == [finding.to_dict()]
    assert quarantine_of(storage, key, "c1", ScanPolicy()) is not None
    assert quarantine_of(storage, key, "c2", ScanPolicy()) is None  # a new export is scanned again
    # The operator reviewed it, or lowered the bar: the version is scanned (and imported) again.
    assert quarantine_of(storage, key, "c1", ScanPolicy(allow_globals=("posix.system",))) is None
    assert quarantine_of(storage, key, "c1", ScanPolicy(mode="warn")) is None
    assert quarantine_of(storage, key, "c1", ScanPolicy(mode="off")) is None
    storage.write(
        key,
        '{"reason": "quarantined", "quarantined": true, "checksum": "c1", "findings": [{"x": 1}]}',
    )
    assert (
        quarantine_of(storage, key, "c1", ScanPolicy()) is None
    )  # not a record we wrote: scan again
