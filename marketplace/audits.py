"""What the table-wide checks find, as verdicts: whether each passes, what it says, what it counted.

Each `audit_*` reads what it looks at (the summary tables, the export folders, the sources'
webhooks) and hands plain data to a pure function that judges it; the Dagster checks only turn a
Verdict into an AssetCheckResult. The reconciliations with the snapshots and the sources are in
reconciliation.py.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from marketplace import summary
from marketplace.config import MarketplaceConfig, SecurityConfig
from marketplace.external import ExternalStorage
from marketplace.gate import FAILED, PENDING, Held, age
from marketplace.layout import EXPORTS_DIR, ExportFolder, export_folder_of_file
from marketplace.manifest import MANIFEST_NAME, ManifestError, verify_export
from marketplace.registry import configure_http
from marketplace.scanning import scan_folder, scan_policy
from marketplace.signatures import MIS_SIGNED, UNSIGNED, export_signature_state
from marketplace.source_webhooks import WebhookState, inspect_webhook
from marketplace.telemetry import RegistryTime

LISTED = 20  # items named in a description; the rest are counted
DETAILED = 200  # items kept in a JSON metadata value


@dataclass(frozen=True)
class Verdict:
    """A check's result. `warn`: a failure that is only a warning. `metadata`: numbers and text,
    lists and dicts (shown as JSON)."""

    passed: bool
    description: str
    metadata: dict = field(default_factory=dict)
    warn: bool = False


def listing(items: Sequence[str]) -> str:
    """The first LISTED items, and how many more."""
    return ", ".join(items[:LISTED]) + (
        f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    )


def unique_keys(rows: Iterable[Mapping], table: str) -> Verdict:
    """One row per (workspace, model_name, version) in a summary table."""
    rows = list(rows)
    counts = Counter((r["workspace"], r["model_name"], r["version"]) for r in rows)
    duplicates = [f"{w}/{m} v{v} ({n} rows)" for (w, m, v), n in sorted(counts.items()) if n > 1]
    return Verdict(
        passed=not duplicates,
        description=(
            f"duplicate rows in {table}: {listing(duplicates)}"
            if duplicates
            else f"{len(rows)} rows, all unique"
        ),
        metadata={"rows": len(rows), "keys": len(counts), "duplicated_keys": len(duplicates)},
    )


def audit_manifests(storage: ExternalStorage) -> Verdict:
    """Every recorded export's files against its SHA-256 manifest and recorded checksum."""
    rows = storage.read_rows(summary.EXPORT_SUMMARY)
    problems = {}
    for row in rows:
        try:
            verify_export(
                storage.tree_at(row["export_path"]),
                expected_checksum=row["checksum"],
                identity=(row["workspace"], row["model_name"], row["version"]),
                signing_key=storage.signing_key,
            )
        except ManifestError as exc:
            problems[f"{row['workspace']}/{row['model_name']} v{row['version']}"] = str(exc)
    return manifests_verdict(rows, problems)


def manifests_verdict(rows: Sequence[Mapping], problems: Mapping[str, str]) -> Verdict:
    return Verdict(
        passed=not problems,
        description=(
            "; ".join(f"{k}: {v}" for k, v in list(problems.items())[:LISTED])
            if problems
            else f"{len(rows)} export(s) verified"
        ),
        metadata={
            "exports_checked": len(rows),
            "exports_failing": len(problems),
            "bytes_verified": sum(r["size_bytes"] for r in rows),
        },
    )


def audit_signed_and_clean(
    storage: ExternalStorage,
    public_keys: Mapping[str, str | None],
    required: bool,
    security: SecurityConfig,
) -> Verdict:
    """Every recorded export of a configured workspace, as an auditor sees it: its signature
    under its workspace's key, and a scan under the blocking severity (whatever the scan mode)."""
    policy = scan_policy(security, "block")
    rows = [r for r in storage.read_rows(summary.EXPORT_SUMMARY) if r["workspace"] in public_keys]
    found: dict[str, list[str]] = {UNSIGNED: [], MIS_SIGNED: [], "unsafe": []}
    scanned = 0
    for row in rows:
        label = f"{row['workspace']}/{row['model_name']} v{row['version']}"
        key = storage.storage.key_of(row["export_path"])
        if key is None:
            continue
        with storage.storage.local_tree(key) as local:
            state = export_signature_state(
                local, row["export_path"], row["workspace"], public_keys[row["workspace"]], required
            )
            if state.state in (UNSIGNED, MIS_SIGNED):
                found[state.state].append(f"{label}: {state.reason}")
            if security.scan != "off":
                report = scan_folder(local)
                scanned += report.files_scanned
                if blocking := report.blocking(policy):
                    found["unsafe"].append(f"{label}: {report.describe(blocking)}")
    return signed_and_clean_verdict(
        len(rows), found[UNSIGNED], found[MIS_SIGNED], found["unsafe"], scanned
    )


def signed_and_clean_verdict(
    checked: int, unsigned: list[str], mis_signed: list[str], unsafe: list[str], scanned: int
) -> Verdict:
    problems = [
        f"{what}: {listing(items)}"
        for what, items in (
            ("unsigned", unsigned),
            ("mis-signed", mis_signed),
            ("blocking scan findings", unsafe),
        )
        if items
    ]
    return Verdict(
        passed=not problems,
        description="; ".join(problems) or f"{checked} export(s) signed as configured and clean",
        metadata={
            "exports_checked": checked,
            "unsigned": len(unsigned),
            "mis_signed": len(mis_signed),
            "with_blocking_findings": len(unsafe),
            "files_scanned": scanned,
        },
    )


def audit_stray_exports(storage: ExternalStorage, configured: Iterable[str]) -> Verdict:
    """Export folders the marketplace did not write (imports ignore them)."""
    recorded = {
        storage.storage.key_of(r["export_path"])
        for r in storage.read_rows(summary.EXPORT_SUMMARY, columns=["export_path"])
    }
    folders = [
        found[0]
        for relative in storage.storage.list(EXPORTS_DIR)
        if (found := export_folder_of_file(relative)) and found[1] == MANIFEST_NAME
    ]
    return stray_exports(folders, set(configured), recorded)


def stray_exports(
    folders: Sequence[ExportFolder], configured: set[str], recorded: set[str | None]
) -> Verdict:
    """Folders of a workspace not configured, or not in the export summary: a warning."""
    stray = []
    for folder in sorted(folders, key=lambda f: f.key):
        shown = folder.key.removeprefix(f"{EXPORTS_DIR}/")
        if folder.workspace not in configured:
            stray.append(f"{shown} (workspace {folder.workspace!r} is not configured)")
        elif folder.key not in recorded:
            stray.append(f"{shown} (not in the export summary: no partition exported it)")
    return Verdict(
        passed=not stray,
        warn=True,
        description=(
            f"ignored export folders: {listing(stray)}"
            if stray
            else f"{len(folders)} export folder(s), all recorded"
        ),
        metadata={"export_folders": len(folders), "stray_folders": len(stray)},
    )


def audit_webhooks(config: MarketplaceConfig) -> Verdict:
    """Is each source with a `webhook` set up to push its changes to the receiver?"""
    configure_http(config.sensor.request_timeout_seconds, 0)
    hooked = [w for w in config.workspaces if w.webhook is not None]
    with ThreadPoolExecutor(max(1, min(config.sensor.max_workers, len(hooked)))) as pool:
        states = list(pool.map(lambda w: inspect_webhook(w, config.webhooks.base_url), hooked))
    polling_only = sorted(w.name for w in config.workspaces if w.webhook is None)
    return webhooks_verdict(states, polling_only, config.sensor.minimum_interval_seconds)


def webhooks_verdict(
    states: Sequence[WebhookState], polling_only: Sequence[str], interval: int
) -> Verdict:
    """A source without its webhook still syncs, by polling: a warning, not an error."""
    bad = [
        f"{s.workspace}: {s.action}" + (f" ({s.detail})" if s.detail else "")
        for s in states
        if not s.registered
    ]
    return Verdict(
        passed=not bad,
        warn=True,
        description=(
            f"polled every {interval} s instead: {listing(bad)}"
            if bad
            else (
                f"{len(states)} workspace(s) push changes; {len(polling_only)} polled every "
                f"{interval} s"
            )
        ),
        metadata={
            "workspaces_with_webhook": len(states),
            "webhooks_registered": len(states) - len(bad),
            "webhooks_not_registered": len(bad),
            "polling_only": len(polling_only),
            "problems": bad[:DETAILED],
        },
    )


def gate_verdict(holds: Sequence[Held], registry: RegistryTime) -> Verdict:
    """Versions the promotion gate holds for a reason (failed, rejected), each with why."""
    failed = [h for h in holds if h.state != PENDING]
    lines = [f"{h.label}: {h.state}" + (f": {h.detail}" if h.detail else "") for h in failed]
    return Verdict(
        passed=not failed,
        warn=True,
        description=f"held: {listing(lines)}"
        if failed
        else "no production version is held by the gate",
        metadata={
            "held_versions": len(failed),
            "failed": sum(h.state == FAILED for h in failed),
            "held": lines[:DETAILED],
            **registry.metadata(),
        },
    )


def approvals_verdict(holds: Sequence[Held], now: dt.datetime, registry: RegistryTime) -> Verdict:
    """Versions waiting for a reviewer's approval, and for how long."""
    pending = [h for h in holds if h.state == PENDING]
    lines = [f"{h.label} waiting {age(h.since, now)}" for h in pending]
    oldest = max(((now - h.since).total_seconds() / 3600 for h in pending if h.since), default=0)
    return Verdict(
        passed=not pending,
        warn=True,
        description=f"awaiting approval: {listing(lines)}"
        if pending
        else "no version awaits approval",
        metadata={
            "pending_versions": len(pending),
            "oldest_hours": round(oldest, 2),
            "pending": lines[:DETAILED],
            **registry.metadata(),
        },
    )


def due_day(now: dt.datetime, deadline: dt.time, start: dt.date) -> dt.date | None:
    """The day whose partitions must be synced by now: today once past the deadline, else
    yesterday; None before the first partition is due."""
    day = now.date() if now.time() >= deadline else now.date() - dt.timedelta(days=1)
    return day if day >= start else None


def freshness_verdict(
    day: dt.date | None,
    workspaces: Sequence[str],
    stale: Sequence[str],
    deadline: dt.time,
    start: dt.date,
) -> Verdict:
    """`stale`: the workspaces whose partition of `day` is not registered."""
    if day is None:
        return Verdict(
            passed=True,
            description=f"no partition due yet (start {start})",
            metadata={"workspaces_checked": 0},
        )
    return Verdict(
        passed=not stale,
        description=(
            f"not synced for {day} (due {deadline:%H:%M} UTC): {listing(stale)}; materialize those "
            "partitions or look at their failed runs"
            if stale
            else f"all {len(workspaces)} workspace(s) synced for {day}"
        ),
        metadata={
            "day": day.isoformat(),
            "workspaces_checked": len(workspaces),
            "workspaces_stale": len(stale),
        },
    )
