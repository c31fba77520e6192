"""The table-wide checks' verdicts (marketplace.audits) as plain data: unique keys, manifests,
signature states, stray folders, webhooks, the gate's holds, freshness."""

from __future__ import annotations

import datetime as dt

from marketplace.audits import (
    approvals_verdict,
    due_day,
    freshness_verdict,
    gate_verdict,
    manifests_verdict,
    signed_and_clean_verdict,
    stray_exports,
    unique_keys,
    webhooks_verdict,
)
from marketplace.gate import Held
from marketplace.layout import ExportFolder
from marketplace.signatures import (
    MIS_SIGNED,
    UNCHECKED,
    UNSIGNED,
    VERIFIED,
    export_signature_state,
    signature_state,
)
from marketplace.telemetry import RegistryTime
from marketplace.webhooks import WebhookState

NOW = dt.datetime(2026, 12, 7, 9, 30, tzinfo=dt.UTC)


def row(workspace: str, model: str, version: int, **more) -> dict:
    return {"workspace": workspace, "model_name": model, "version": version, **more}


def test_duplicate_rows_are_named_with_their_count():
    rows = [row("a", "m", 1), row("a", "m", 1), row("a", "m", 2), row("b", "m", 1)]
    verdict = unique_keys(rows, "export_summary")
    assert not verdict.passed
    assert verdict.description == "duplicate rows in export_summary: a/m v1 (2 rows)"
    assert verdict.metadata == {"rows": 4, "keys": 3, "duplicated_keys": 1}
    assert unique_keys(rows[1:], "t").description == "3 rows, all unique"


def test_manifest_problems_are_listed_and_bytes_counted():
    rows = [row("a", "m", 1, size_bytes=10), row("a", "m", 2, size_bytes=32)]
    verdict = manifests_verdict(rows, {"a/m v2": "model.pkl changed"})
    assert (verdict.passed, verdict.description) == (False, "a/m v2: model.pkl changed")
    assert verdict.metadata == {"exports_checked": 2, "exports_failing": 1, "bytes_verified": 42}
    assert manifests_verdict(rows, {}).description == "2 export(s) verified"


def test_signature_state_under_a_key_required_or_not():
    def state(**given):
        return signature_state("ws", **{"required": False, "signed": True, "error": None, **given})

    assert state(has_key=True) == state(has_key=True, required=True)
    assert state(has_key=True).state == VERIFIED
    assert state(has_key=True, signed=False, error="not signed").state == UNSIGNED
    bad = state(has_key=True, error="its signature was not made with the key configured for it")
    assert (bad.state, bad.reason) == (
        MIS_SIGNED,
        "its signature was not made with the key configured for it",
    )
    # No key: a signature is neither checked nor needed, unless signatures are required.
    assert state(has_key=False).state == UNCHECKED
    assert state(has_key=False, signed=False).state == UNCHECKED
    missing = state(has_key=False, required=True)
    assert (missing.state, missing.reason) == (UNSIGNED, "workspace ws has no public key")


def test_signed_and_clean_lists_each_kind_of_problem():
    verdict = signed_and_clean_verdict(
        3, unsigned=["a/m v1: no key"], mis_signed=[], unsafe=["a/m v2: os.system"], scanned=9
    )
    assert not verdict.passed
    assert verdict.description == (
        "unsigned: a/m v1: no key; blocking scan findings: a/m v2: os.system"
    )
    assert verdict.metadata == {
        "exports_checked": 3,
        "unsigned": 1,
        "mis_signed": 0,
        "with_blocking_findings": 1,
        "files_scanned": 9,
    }
    clean = signed_and_clean_verdict(3, [], [], [], 9)
    assert (clean.passed, clean.description) == (True, "3 export(s) signed as configured and clean")


def test_stray_folders_are_those_of_other_workspaces_or_not_recorded():
    folders = [
        ExportFolder("b", "m", 1),
        ExportFolder("a", "m", 2),
        ExportFolder("a", "m", 1),
        ExportFolder("gone", "m", 1),
    ]
    verdict = stray_exports(folders, {"a", "b"}, {"exports/a/m/1", "exports/b/m/1", None})
    assert (verdict.passed, verdict.warn) == (False, True)
    assert verdict.description == (
        "ignored export folders: a/m/2 (not in the export summary: no partition exported it), "
        "gone/m/1 (workspace 'gone' is not configured)"
    )
    assert verdict.metadata == {"export_folders": 4, "stray_folders": 2}
    assert stray_exports(folders[:1], {"b"}, {"exports/b/m/1"}).passed


def test_a_missing_webhook_is_a_warning_naming_why():
    states = [WebhookState("a", "registered"), WebhookState("b", "missing", detail="404")]
    verdict = webhooks_verdict(states, ["c"], 60)
    assert (verdict.passed, verdict.warn) == (False, True)
    assert verdict.description == "polled every 60 s instead: b: missing (404)"
    assert verdict.metadata == {
        "workspaces_with_webhook": 2,
        "webhooks_registered": 1,
        "webhooks_not_registered": 1,
        "polling_only": 1,
        "problems": ["b: missing (404)"],
    }
    fine = webhooks_verdict(states[:1], ["c", "d"], 60)
    assert fine.description == "1 workspace(s) push changes; 2 polled every 60 s"


def _hold(state: str, detail: str = "", since: dt.datetime | None = None) -> Held:
    return Held("a.m", "3", "a", "m", 2, state, detail, since)


def test_the_gate_check_lists_failed_and_rejected_holds_not_pending_ones():
    spent = RegistryTime(1, 0.5)
    holds = [_hold("failed", "rmse worse"), _hold("rejected", "ana"), _hold("pending")]
    verdict = gate_verdict(holds, spent)
    assert (verdict.passed, verdict.warn) == (False, True)
    assert verdict.description == (
        "held: a.m v3 (a/m v2): failed: rmse worse, a.m v3 (a/m v2): rejected: ana"
    )
    assert verdict.metadata["held_versions"] == 2
    assert verdict.metadata["failed"] == 1
    assert verdict.metadata["registry_requests"] == 1
    assert gate_verdict(holds[2:], spent).passed


def test_the_approvals_check_lists_pending_holds_with_their_age():
    holds = [
        _hold("pending", since=NOW - dt.timedelta(days=1, hours=2, minutes=5)),
        _hold("pending"),
        _hold("failed"),
    ]
    verdict = approvals_verdict(holds, NOW, RegistryTime())
    assert (verdict.passed, verdict.warn) == (False, True)
    assert verdict.description == (
        "awaiting approval: a.m v3 (a/m v2) waiting 1d 2h 05m, a.m v3 (a/m v2) waiting ?"
    )
    assert verdict.metadata["pending_versions"] == 2
    assert verdict.metadata["oldest_hours"] == 26.08
    assert approvals_verdict(holds[2:], NOW, RegistryTime()).metadata["oldest_hours"] == 0


def test_the_day_due_is_today_past_the_deadline_and_none_before_the_start():
    deadline = dt.time(9, 0)
    start = dt.date(2026, 12, 1)
    assert due_day(NOW, deadline, start) == dt.date(2026, 12, 7)
    assert due_day(NOW, dt.time(10, 0), start) == dt.date(2026, 12, 6)
    assert due_day(NOW, dt.time(10, 0), dt.date(2026, 12, 7)) is None


def test_freshness_names_the_stale_workspaces():
    deadline, start = dt.time(9, 0), dt.date(2026, 12, 1)
    day = dt.date(2026, 12, 7)
    stale = freshness_verdict(day, ["a", "b"], ["b"], deadline, start)
    assert not stale.passed
    assert stale.description == (
        "not synced for 2026-12-07 (due 09:00 UTC): b; materialize those partitions or look at "
        "their failed runs"
    )
    assert stale.metadata == {"day": "2026-12-07", "workspaces_checked": 2, "workspaces_stale": 1}
    assert freshness_verdict(day, ["a"], [], deadline, start).description == (
        "all 1 workspace(s) synced for 2026-12-07"
    )
    early = freshness_verdict(None, ["a"], [], deadline, start)
    assert (early.passed, early.description) == (True, "no partition due yet (start 2026-12-01)")


def test_an_export_folder_without_a_signature_is_unsigned_naming_its_location(tmp_path):
    (tmp_path / "model.pkl").write_bytes(b"weights")
    state = export_signature_state(tmp_path, "s3://bucket/exports/a/m/1", "a", "a key", False)
    assert state == export_signature_state(tmp_path, "s3://bucket/exports/a/m/1", "a", "k", True)
    assert state.state == UNSIGNED
    assert state.reason == "s3://bucket/exports/a/m/1: it is not signed (no model.sig)"
    assert export_signature_state(tmp_path, "x", "a", None, False).state == UNCHECKED


def test_an_export_folder_with_a_broken_signature_is_mis_signed(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public_key = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    (tmp_path / "model.pkl").write_bytes(b"weights")
    (tmp_path / "model.sig").write_text("{}")
    state = export_signature_state(tmp_path, "exports/a/m/1", "a", public_key, False)
    assert state.state == MIS_SIGNED
    assert state.reason.startswith("exports/a/m/1: ")
