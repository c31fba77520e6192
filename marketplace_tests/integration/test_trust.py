"""Trust at import, end to end against real MLflow servers: scanning and OpenSSF signatures.

A model whose pickle runs a command when loaded is scanned before anything loads it and
quarantined (the command never runs); each workspace signs its exports with its own EC key, and
imports refuse an export its workspace's key did not sign as it stands.

The unsafe models here are real pyfunc versions whose `python_model.pkl` was rewritten in the
source's artifact store; nothing in these tests ever unpickles one, and each test asserts that
the command's marker file was never created.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
from pathlib import Path

import dagster as dg
import mlflow
import pytest
from mlflow import MlflowClient

from harness.seeding import register_version
from marketplace import imports, scanning
from marketplace.export_records import export_dir, skip_record_path
from marketplace.manifest import SIGNATURE_NAME, build_manifest, read_manifest, write_manifest
from marketplace.production_marker import TAG_QUARANTINED_VERSION
from marketplace.provenance import TAG_SOURCE_VERSION
from marketplace.registry import process_tracking_uri
from marketplace.signatures import generate_key_pair, sign_export
from marketplace_dagster import keys
from marketplace_dagster.keys import EXPORTS_SIGNED_AND_CLEAN, PRODUCTION_VERSIONS_SYNCED
from marketplace_tests.testing.deployments import materializations, step_failure_message
from marketplace_tests.testing.driving import (
    ALIAS,
    CHAMPION,
    STAGE,
    Cli,
    check_evaluations,
    model_signing_verify,
    promote,
    sensor_tick,
    versions_of,
    workspace,
)

NOT_SIGNED = "it is not signed (no model.sig)"
WRONG_KEY = "its signature was not made with the key configured for it"
FILES_DIFFER = "its signature does not match its files"


class ShellOnLoad:
    """Runs `touch marker` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[float], params=None) -> list[float]:
        return [2 * value for value in model_input]


def register_unsafe_version(uri: str, model: str, marker: Path) -> str:
    """Register a pyfunc version, then rewrite its python_model.pkl in the source's artifact
    store to run `touch marker` when loaded; promote it to stage Production. Returns the version."""
    with process_tracking_uri(uri):
        mlflow.set_experiment(f"/tests/{model}")
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=Doubler(),
                registered_model_name=model,
                pip_requirements=["mlflow"],
            )
    # The servers run with --no-serve-artifacts: the logged model's files are a local folder.
    location = MlflowClient(uri).get_logged_model(info.model_id).artifact_location
    pickled = Path(location.removeprefix("file://")) / "python_model.pkl"
    assert pickled.is_file(), pickled
    pickled.write_bytes(pickle.dumps(ShellOnLoad(marker)))
    version = str(info.registered_model_version)
    promote(uri, model, version, STAGE)
    return version


def counts(evaluation: dg.AssetCheckEvaluation) -> dict[str, int]:
    """What exports_signed_and_clean counted."""
    names = ("exports_checked", "unsigned", "mis_signed", "with_blocking_findings")
    return {name: evaluation.metadata[name].value for name in names}


def signing(key_env: str, public_key: str) -> dict:
    return {"signing": {"private_key_env": key_env, "public_key": public_key}}


def rewrite_consistently(folder: Path) -> str:
    """Change a file of the export and rebuild manifest.json to match, so that only the signature
    can tell; returns the changed file's path in the export."""
    target = min(folder.rglob("requirements.txt"))
    target.write_text(target.read_text() + "evil-package==6.6.6\n")
    manifest, _ = read_manifest(folder)
    identity = {k: v for k, v in vars(manifest).items() if k not in ("files", "signature")}
    write_manifest(folder, build_manifest(folder, **identity))
    return target.relative_to(folder).as_posix()


def test_a_model_that_runs_code_when_loaded_is_quarantined_and_never_loaded(
    servers, deploy, uid, tmp_path
):
    source = servers["ws_a"].uri
    ws, clean, unsafe = f"a{uid}", f"{uid}_clean", f"{uid}_unsafe"
    marker = tmp_path / "the-pickle-ran"
    market = MlflowClient(servers["marketplace"].uri)
    register_version(source, clean, stage="Production")
    register_unsafe_version(source, unsafe, marker)
    deployment = deploy([workspace(ws, source, STAGE, uid)])
    cli = Cli(deployment, tmp_path)

    registered = cli.sync(ws)
    assert not marker.exists()
    assert versions_of(market, f"{ws}.{unsafe}") == []
    assert market.get_model_version_by_alias(f"{ws}.{clean}", ALIAS).tags[TAG_SOURCE_VERSION] == "1"
    assert "quarantined" in registered["waiting"][f"{ws}/{unsafe}"]

    imported = cli.newest_metadata(keys.IMPORTS)
    assert (imported["imported"], imported["quarantined"]) == (1, 1)
    assert imported["files_scanned"] > 0
    findings = imported["quarantined_versions"][f"{ws}/{unsafe} v1"]
    assert [(Path(f["file"]).name, f["operator"], f["severity"]) for f in findings] == [
        ("python_model.pkl", "posix.system", "critical")
    ]
    record = json.loads(skip_record_path(deployment.config.storage_root, ws, unsafe, 1).read_text())
    assert record["quarantined"] is True
    assert (
        record["reason"].startswith("quarantined: ")
        and "posix.system (critical)" in record["reason"]
    )
    assert record["findings"] == findings
    assert (
        record["checksum"]
        == read_manifest(export_dir(deployment.config.storage_root, ws, unsafe, 1))[1]
    )

    # The same export again: counted as quarantined from its record, not scanned again.
    cli.sync(ws)
    again = cli.newest_metadata(keys.IMPORTS)
    assert (again["imported"], again["already_imported"], again["quarantined"]) == (0, 1, 1)
    assert again["files_scanned"] == 0
    assert again["quarantined_versions"] == {f"{ws}/{unsafe} v1": findings}
    assert versions_of(market, f"{ws}.{unsafe}") == []
    assert not marker.exists()


def test_an_unsafe_new_production_version_leaves_production_on_the_last_safe_copy(
    servers, deploy, uid, tmp_path
):
    source = servers["ws_a"].uri
    ws, model = f"a{uid}", f"{uid}_m"
    mp = f"{ws}.{model}"
    marker = tmp_path / "the-pickle-ran"
    market = MlflowClient(servers["marketplace"].uri)
    register_version(source, model, stage="Production")
    deployment = deploy([workspace(ws, source, STAGE, uid)])
    first = deployment.sync(ws)
    assert first.success, step_failure_message(first)
    safe_copy = market.get_model_version_by_alias(mp, ALIAS).version

    register_unsafe_version(source, model, marker)  # v2
    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    assert materializations(result, keys.IMPORTS)["quarantined"] == 1
    assert market.get_model_version_by_alias(mp, ALIAS).version == safe_copy
    assert market.get_registered_model(mp).tags[TAG_QUARANTINED_VERSION] == "2"
    assert [v.tags[TAG_SOURCE_VERSION] for v in versions_of(market, mp)] == ["1"]

    tick, _ = sensor_tick(deployment)
    assert tick.run_requests == []  # a quarantined version is not asked for again

    found = check_evaluations(deployment)
    synced = found[PRODUCTION_VERSIONS_SYNCED]
    assert not synced.passed
    assert f"{ws}/{model} v2 (quarantined: " in synced.description
    assert "posix.system" in synced.description
    audit = found[EXPORTS_SIGNED_AND_CLEAN]
    assert not audit.passed and counts(audit)["with_blocking_findings"] == 1
    assert (
        f"{ws}/{model} v2: " in audit.description and "posix.system (critical)" in audit.description
    )

    # A clean version promoted after it: production moves there and the tag goes.
    register_version(source, model, stage="Production")  # v3
    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    assert market.get_model_version_by_alias(mp, ALIAS).tags[TAG_SOURCE_VERSION] == "3"
    assert TAG_QUARANTINED_VERSION not in market.get_registered_model(mp).tags
    assert not marker.exists()


def test_with_scanning_off_nothing_is_scanned(servers, deploy, uid, monkeypatch):
    def no_scan(path):
        raise AssertionError(f"{path} was scanned with security.scan off")

    monkeypatch.setattr(imports, "scan_folder", no_scan)
    monkeypatch.setattr(
        scanning, "scan_folder", no_scan
    )  # the load check and the gate scan through scanning.refused
    source = servers["ws_a"].uri
    ws = f"a{uid}"
    register_version(source, f"{uid}_m", stage="Production")
    deployment = deploy([workspace(ws, source, STAGE, uid)], security={"scan": "off"})

    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    imported = materializations(result, keys.IMPORTS)
    assert (imported["imported"], imported["files_scanned"], imported["scan_seconds"]) == (1, 0, 0)
    assert imported["scan_policy"].startswith("off")
    (check,) = [
        c for c in result.get_asset_check_evaluations() if c.check_name == keys.IMPORT_LOADS_CHECK
    ]
    assert check.passed, check.description


@pytest.fixture
def signed_workspaces(servers, deploy, uid, tmp_path, monkeypatch):
    """a<uid> (ws_a, by stage) and b<uid> (ws_b, by alias), each signing with a key of its own: the
    private keys in the environment, the public keys in files beside the configuration."""
    entries = []
    for ws, server, production in ((f"a{uid}", "ws_a", STAGE), (f"b{uid}", "ws_b", CHAMPION)):
        private, public = generate_key_pair()
        variable = f"MARKETPLACE_TEST_SIGNING_KEY_{ws.upper()}"
        monkeypatch.setenv(variable, private)
        (tmp_path / f"{ws}.pub.pem").write_text(public)
        entries.append(
            workspace(
                ws, servers[server].uri, production, uid, **signing(variable, f"{ws}.pub.pem")
            )
        )
    return deploy(entries)


def test_each_workspace_signs_its_exports_and_imports_refuse_what_its_key_did_not_sign(
    servers, signed_workspaces, uid
):
    deployment = signed_workspaces
    root = deployment.config.storage_root
    ws_a, ws_b = f"a{uid}", f"b{uid}"
    market = MlflowClient(servers["marketplace"].uri)
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    register_version(servers["ws_b"].uri, f"{uid}_m", alias="champion")
    for ws in (ws_a, ws_b):
        result = deployment.sync(ws)
        assert result.success, step_failure_message(result)
        assert materializations(result, keys.IMPORTS)["imported"] == 1
        assert (export_dir(root, ws, f"{uid}_m", 1) / SIGNATURE_NAME).is_file()
        # The model card names the signer: the workspace's key, by its fingerprint.
        card = market.get_registered_model(f"{ws}.{uid}_m").description
        assert f"| Signed by | workspace {ws}'s key (SHA-256 " in card, card
    audit = check_evaluations(deployment)[EXPORTS_SIGNED_AND_CLEAN]
    assert audit.passed, audit.description
    assert counts(audit) == {
        "exports_checked": 2,
        "unsigned": 0,
        "mis_signed": 0,
        "with_blocking_findings": 0,
    }

    reasons = {
        "swapped": WRONG_KEY,
        "unsigned": NOT_SIGNED,
        "tampered": FILES_DIFFER,
        "foreign": WRONG_KEY,
    }
    for case in reasons:
        register_version(servers["ws_b"].uri, f"{uid}_{case}", alias="champion")
    # Exported, not yet in the export summary: it records each manifest's checksum, which would
    # refuse the tampered export's rebuilt manifest before its signature is looked at.
    prepared = deployment.sync(ws_b, selection=keys.CHAIN[:2])
    assert prepared.success, step_failure_message(prepared)
    folders = {case: export_dir(root, ws_b, f"{uid}_{case}", 1) for case in reasons}
    shutil.copyfile(
        export_dir(root, ws_a, f"{uid}_m", 1) / SIGNATURE_NAME, folders["swapped"] / SIGNATURE_NAME
    )
    (folders["unsigned"] / SIGNATURE_NAME).unlink()
    changed = rewrite_consistently(folders["tampered"])
    sign_export(folders["foreign"], generate_key_pair()[0])  # a key no workspace is configured with

    result = deployment.sync(ws_b)
    assert not result.success
    message = step_failure_message(result)
    for case, reason in reasons.items():
        refusal = (
            f"{ws_b}/{uid}_{case} v1: not imported: signature refused: {folders[case]}: {reason}"
        )
        assert refusal in message, message
        assert versions_of(market, f"{ws_b}.{uid}_{case}") == []
    assert f"changed: {changed}, manifest.json) (workspace {ws_b}'s key)" in message

    audit = check_evaluations(deployment)[EXPORTS_SIGNED_AND_CLEAN]
    assert not audit.passed
    assert counts(audit) == {
        "exports_checked": 6,
        "unsigned": 1,
        "mis_signed": 3,
        "with_blocking_findings": 0,
    }
    assert (
        f"unsigned: {ws_b}/{uid}_unsigned v1: {folders['unsigned']}: {NOT_SIGNED}"
        in audit.description
    )
    for case in ("swapped", "tampered", "foreign"):
        assert f"{ws_b}/{uid}_{case} v1: {folders[case]}: {reasons[case]}" in audit.description


def test_the_model_signing_cli_verifies_a_synced_export(
    servers, deploy, uid, tmp_path, monkeypatch
):
    private, public = generate_key_pair()
    monkeypatch.setenv("MARKETPLACE_TEST_SIGNING_KEY", private)
    (tmp_path / "a.pub.pem").write_text(public)
    ws, model = f"a{uid}", f"{uid}_m"
    register_version(servers["ws_a"].uri, model, stage="Production")
    deployment = deploy(
        [
            workspace(
                ws,
                servers["ws_a"].uri,
                STAGE,
                uid,
                **signing("MARKETPLACE_TEST_SIGNING_KEY", "a.pub.pem"),
            )
        ]
    )
    result = deployment.sync(ws)
    assert result.success, step_failure_message(result)
    folder = export_dir(deployment.config.storage_root, ws, model, 1)

    verified = model_signing_verify(folder, tmp_path / "a.pub.pem")
    assert verified.returncode == 0, verified.stderr
    assert "Verification succeeded" in verified.stdout

    target = next(folder.rglob("MLmodel"))
    target.write_text(target.read_text() + "\n")
    tampered = model_signing_verify(folder, tmp_path / "a.pub.pem")
    assert tampered.returncode != 0
    assert "Hash mismatch" in tampered.stderr and "MLmodel" in tampered.stderr
