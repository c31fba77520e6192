"""Asset checks over the whole marketplace: tables, manifests, reconciliation with the sources, freshness.

Each returns the counts it looked at. They run without a partition, so they can be executed
alone from the UI; the load check, which needs the partition's imports, lives in assets.py.
"""

import datetime as dt
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import dagster as dg

from marketplace import summary
from marketplace.config import MarketplaceConfig
from marketplace.gate import FAILED, PENDING, age, configured_holds
from marketplace.layout import EXPORTS_DIR, export_folder_of_file
from marketplace.lifecycle import divergences
from marketplace.manifest import MANIFEST_NAME, ManifestError, verify_export
from marketplace.marketplace_versions import marketplace_versions_of
from marketplace.polling import poll_workspaces
from marketplace.production_marker import marketplace_production
from marketplace.registry import configure_http
from marketplace.scanning import scan_folder
from marketplace.signatures import SignatureError, verify_export_signature
from marketplace.source_webhooks import inspect_webhook
from marketplace.telemetry import registry_time
from marketplace_dagster.keys import (
    APPROVALS_PENDING,
    EXPORT_SUMMARY,
    EXPORT_SUMMARY_UNIQUE,
    EXPORTS,
    EXPORTS_MATCH_MANIFESTS,
    EXPORTS_SIGNED_AND_CLEAN,
    GATE_PASSED,
    IMPORT_SUMMARY,
    IMPORT_SUMMARY_UNIQUE,
    MARKETPLACE_MATCHES_SOURCES,
    NO_STRAY_EXPORTS,
    PARTITIONS_FRESH,
    PRODUCTION_MODELS,
    PRODUCTION_VERSIONS_SYNCED,
    REGISTRATION,
    SOURCE_WEBHOOKS_REGISTERED,
)
from marketplace_dagster.partitions import partition_key
from marketplace_dagster.resources import ExternalStorageResource, MarketplaceRegistryResource

RECONCILE_DAYS = 30
RECONCILE_POLL_SECONDS = 120
LISTED = 20


def _listing(items: list[str]) -> str:
    return ", ".join(items[:LISTED]) + (
        f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    )


def _unique_keys_check(asset: dg.AssetKey, table: str, name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name=name,
        description=f"{table} has one row per (workspace, model_name, version).",
    )
    def check(external_storage: ExternalStorageResource) -> dg.AssetCheckResult:
        rows = external_storage.read_rows(table, columns=list(summary.KEY_COLUMNS))
        counts = Counter((r["workspace"], r["model_name"], r["version"]) for r in rows)
        duplicates = [
            f"{w}/{m} v{v} ({n} rows)" for (w, m, v), n in sorted(counts.items()) if n > 1
        ]
        return dg.AssetCheckResult(
            passed=not duplicates,
            description=(
                f"duplicate rows in {table}: {_listing(duplicates)}"
                if duplicates
                else f"{len(rows)} rows, all unique"
            ),
            metadata={"rows": len(rows), "keys": len(counts), "duplicated_keys": len(duplicates)},
        )

    return check


@dg.asset_check(
    asset=EXPORTS,
    name=EXPORTS_MATCH_MANIFESTS,
    description="Every exported version's files match its SHA-256 manifest and recorded checksum.",
)
def exports_match_manifests(external_storage: ExternalStorageResource) -> dg.AssetCheckResult:
    rows = external_storage.read_rows(summary.EXPORT_SUMMARY)
    problems = {}
    for row in rows:
        try:
            verify_export(
                external_storage.tree_at(row["export_path"]),
                expected_checksum=row["checksum"],
                identity=(row["workspace"], row["model_name"], row["version"]),
                signing_key=external_storage.signing_key,
            )
        except ManifestError as exc:
            problems[f"{row['workspace']}/{row['model_name']} v{row['version']}"] = str(exc)
    return dg.AssetCheckResult(
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


@dg.asset_check(
    asset=IMPORT_SUMMARY,
    name=PRODUCTION_VERSIONS_SYNCED,
    description="Every production version seen in the last 30 days' partitions is exported (or superseded "
    "by a newer export), and every exported version is imported or superseded by a newer import.",
)
def production_versions_synced(external_storage: ExternalStorageResource) -> dg.AssetCheckResult:
    exported = {
        (r["workspace"], r["model_name"], r["version"])
        for r in external_storage.read_rows(summary.EXPORT_SUMMARY)
    }
    imported = {
        (r["workspace"], r["model_name"], r["version"])
        for r in external_storage.read_rows(summary.IMPORT_SUMMARY)
    }
    newest_import: dict[tuple[str, str], int] = {}
    for workspace, model, version in imported:
        newest_import[(workspace, model)] = max(version, newest_import.get((workspace, model), 0))
    seen: set[tuple[str, str, int]] = set()
    since = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=RECONCILE_DAYS)
    for snapshot in external_storage.snapshots(since):
        seen |= {(snapshot.workspace, v.model_name, v.version) for v in snapshot.versions}
    newest_export: dict[tuple[str, str], int] = {}
    for workspace, model, version in exported:
        newest_export[(workspace, model)] = max(version, newest_export.get((workspace, model), 0))
    # A version replaced by a newer exported one before it was exported itself is superseded, not lost.
    not_exported = sorted(
        f"{w}/{m} v{v}"
        + (f" (skipped: {reason})" if (reason := external_storage.skip_reason(w, m, v)) else "")
        for w, m, v in seen - exported
        if newest_export.get((w, m), 0) < v
    )
    # A quarantined version (its scan blocked it) says so: it stays here until its export changes.
    not_imported = sorted(
        f"{w}/{m} v{v}"
        + (f" ({reason})" if (reason := external_storage.skip_reason(w, m, v)) else "")
        for w, m, v in exported - imported
        if newest_import.get((w, m), 0) < v
    )
    problems = ([f"not exported: {_listing(not_exported)}"] if not_exported else []) + (
        [f"exported but not imported: {_listing(not_imported)}"] if not_imported else []
    )
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or "every production version seen is exported and imported",
        metadata={
            "production_versions_seen": len(seen),
            "exported": len(exported),
            "imported": len(imported),
            "missing_exports": len(not_exported),
            "missing_imports": len(not_imported),
        },
    )


def build_reconciliation_check(config: MarketplaceConfig) -> dg.AssetChecksDefinition:
    """The marketplace against every workspace's production versions now, read from the registries."""

    @dg.asset_check(
        asset=REGISTRATION,
        name=MARKETPLACE_MATCHES_SOURCES,
        blocking=False,
        description="For every workspace's curated models, the marketplace's production marker points at the "
        "copy of the source's production version now (or the promotion gate holds that version), and models "
        "with none (retired) carry no marker.",
    )
    def marketplace_matches_sources(
        external_storage: ExternalStorageResource, marketplace: MarketplaceRegistryResource
    ) -> dg.AssetCheckResult:
        configure_http(config.sensor.request_timeout_seconds, 0)
        polled = poll_workspaces(
            config.workspaces,
            max_workers=config.sensor.max_workers,
            deadline_seconds=RECONCILE_POLL_SECONDS,
        )
        held: dict[str, set[str]] = {}
        for row in external_storage.read_rows(
            summary.IMPORT_SUMMARY, columns=["workspace", "model_name"]
        ):
            held.setdefault(row["workspace"], set()).add(row["model_name"])
        client = marketplace.client()
        marker = marketplace.marker
        differ, unreachable, compared = [], [], 0
        with registry_time() as spent:
            gated: dict[str, dict[str, int]] = {}
            for hold in configured_holds(config, client):
                gated.setdefault(hold.workspace, {})[hold.model_name] = hold.source_version
            for workspace in config.workspaces:
                result = polled[workspace.name]
                if result.error:
                    unreachable.append(f"{workspace.name} ({result.error})")
                    continue
                models = sorted(result.production.keys() | held.get(workspace.name, set()))
                names = {model: marketplace.model_name(workspace.name, model) for model in models}
                known = marketplace_versions_of(client, list(names.values()))
                current = marketplace_production(client, marker, names.values(), known)
                differ += divergences(
                    workspace.name,
                    result.production,
                    {model: current[name] for model, name in names.items()},
                    marker,
                    gated.get(workspace.name),
                )
                compared += len(models)
        problems = ([f"differ: {_listing(differ)}"] if differ else []) + (
            [f"unreachable, not compared: {_listing(unreachable)}"] if unreachable else []
        )
        return dg.AssetCheckResult(
            passed=not problems,
            # A difference misleads everyone who deploys; an unreachable workspace is only unknown.
            severity=dg.AssetCheckSeverity.ERROR if differ else dg.AssetCheckSeverity.WARN,
            description="; ".join(problems)
            or f"{compared} model(s) in {len(polled)} workspace(s) match their sources",
            metadata={
                "workspaces_compared": len(polled) - len(unreachable),
                "workspaces_unreachable": len(unreachable),
                "models_compared": compared,
                "models_differing": len(differ),
                "differences": dg.MetadataValue.json(differ[:200]),
                **spent.metadata(),
            },
        )

    return marketplace_matches_sources


def build_freshness_check(config: MarketplaceConfig) -> dg.AssetChecksDefinition:
    """Per workspace, unlike Dagster's FreshnessPolicy, which one fresh partition satisfies."""
    deadline = config.freshness.deadline
    workspaces = [w.name for w in config.workspaces]

    @dg.asset_check(
        asset=REGISTRATION,
        name=PARTITIONS_FRESH,
        description=f"Each workspace's partition for a day is registered by {deadline:%H:%M} UTC that day "
        "(before the deadline, the previous day's must be).",
    )
    def todays_partitions_synced_by_deadline(
        context: dg.AssetCheckExecutionContext,
    ) -> dg.AssetCheckResult:
        now = dt.datetime.now(dt.UTC)
        day = now.date() if now.time() >= deadline else now.date() - dt.timedelta(days=1)
        if day < config.start_date:
            return dg.AssetCheckResult(
                passed=True,
                description=f"no partition due yet (start {config.start_date})",
                metadata={"workspaces_checked": 0},
            )
        stale = []
        for workspace in workspaces:
            records = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=REGISTRATION, asset_partitions=[str(partition_key(day, workspace))]
                ),
                limit=1,
            ).records
            if not records:
                stale.append(workspace)
        return dg.AssetCheckResult(
            passed=not stale,
            description=(
                f"not synced for {day} (due {deadline:%H:%M} UTC): {_listing(stale)}; materialize those partitions "
                "or look at their failed runs"
                if stale
                else f"all {len(workspaces)} workspace(s) synced for {day}"
            ),
            metadata={
                "day": day.isoformat(),
                "workspaces_checked": len(workspaces),
                "workspaces_stale": len(stale),
            },
        )

    return todays_partitions_synced_by_deadline


def build_checks(config: MarketplaceConfig) -> dict[str, dg.AssetChecksDefinition]:
    return {
        EXPORT_SUMMARY_UNIQUE: _unique_keys_check(
            EXPORT_SUMMARY, summary.EXPORT_SUMMARY, EXPORT_SUMMARY_UNIQUE
        ),
        IMPORT_SUMMARY_UNIQUE: _unique_keys_check(
            IMPORT_SUMMARY, summary.IMPORT_SUMMARY, IMPORT_SUMMARY_UNIQUE
        ),
        EXPORTS_MATCH_MANIFESTS: exports_match_manifests,
        PRODUCTION_VERSIONS_SYNCED: production_versions_synced,
        MARKETPLACE_MATCHES_SOURCES: build_reconciliation_check(config),
        PARTITIONS_FRESH: build_freshness_check(config),
        NO_STRAY_EXPORTS: build_stray_exports_check(config),
        EXPORTS_SIGNED_AND_CLEAN: build_signed_and_clean_check(config),
        **dict(zip((GATE_PASSED, APPROVALS_PENDING), build_gate_checks(config))),
        SOURCE_WEBHOOKS_REGISTERED: build_webhooks_check(config),
    }


def build_webhooks_check(config: MarketplaceConfig) -> dg.AssetChecksDefinition:
    """Is each source that should push changes set up to? A source that cannot (a file store, an older
    MLflow, Unity Catalog) or whose webhook is missing still syncs, by polling: a warning, not an error."""
    interval = config.sensor.minimum_interval_seconds

    @dg.asset_check(
        asset=PRODUCTION_MODELS,
        name=SOURCE_WEBHOOKS_REGISTERED,
        blocking=False,
        description="Every workspace with a `webhook` holds an active marketplace-sync webhook to the receiver "
        f"({config.webhooks.base_url}); the others are polled every {interval} s.",
    )
    def source_webhooks_registered() -> dg.AssetCheckResult:
        configure_http(config.sensor.request_timeout_seconds, 0)
        hooked = [w for w in config.workspaces if w.webhook is not None]
        with ThreadPoolExecutor(max(1, min(config.sensor.max_workers, len(hooked)))) as pool:
            states = list(pool.map(lambda w: inspect_webhook(w, config.webhooks.base_url), hooked))
        bad = [
            f"{s.workspace}: {s.action}" + (f" ({s.detail})" if s.detail else "")
            for s in states
            if not s.registered
        ]
        polling_only = sorted(w.name for w in config.workspaces if w.webhook is None)
        return dg.AssetCheckResult(
            passed=not bad,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"polled every {interval} s instead: {_listing(bad)}"
                if bad
                else f"{len(states)} workspace(s) push changes; {len(polling_only)} polled every {interval} s"
            ),
            metadata={
                "workspaces_with_webhook": len(hooked),
                "webhooks_registered": len(states) - len(bad),
                "webhooks_not_registered": len(bad),
                "polling_only": len(polling_only),
                "problems": dg.MetadataValue.json(bad[:200]),
            },
        )

    return source_webhooks_registered


def _holds(config: MarketplaceConfig, marketplace: MarketplaceRegistryResource):
    """The held versions of the configured workspaces (one search of the marketplace; none
    where no gate is configured)."""
    with registry_time() as spent:
        holds = configured_holds(config, marketplace.client())
    return holds, spent


def build_gate_checks(
    config: MarketplaceConfig,
) -> tuple[dg.AssetChecksDefinition, dg.AssetChecksDefinition]:
    """What the promotion gate holds: failed or rejected versions, and those awaiting approval."""

    @dg.asset_check(
        asset=REGISTRATION,
        name=GATE_PASSED,
        blocking=False,
        description="No source's production version is held by the promotion gate (failed its "
        "required metadata or its evaluation, or was rejected): held versions are listed with why.",
    )
    def gate_passed(marketplace: MarketplaceRegistryResource) -> dg.AssetCheckResult:
        holds, spent = _holds(config, marketplace)
        failed = [h for h in holds if h.state != PENDING]
        lines = [f"{h.label}: {h.state}" + (f": {h.detail}" if h.detail else "") for h in failed]
        return dg.AssetCheckResult(
            passed=not failed,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"held: {_listing(lines)}"
            if failed
            else "no production version is held by the gate",
            metadata={
                "held_versions": len(failed),
                "failed": sum(h.state == FAILED for h in failed),
                "held": dg.MetadataValue.json(lines[:200]),
                **spent.metadata(),
            },
        )

    @dg.asset_check(
        asset=REGISTRATION,
        name=APPROVALS_PENDING,
        blocking=False,
        description="No version waits for a reviewer's approval (tag marketplace.approval on the "
        "marketplace version: approved, with marketplace.approved_by, or rejected).",
    )
    def approvals_pending(marketplace: MarketplaceRegistryResource) -> dg.AssetCheckResult:
        holds, spent = _holds(config, marketplace)
        now = dt.datetime.now(dt.UTC)
        pending = [h for h in holds if h.state == PENDING]
        lines = [f"{h.label} waiting {age(h.since, now)}" for h in pending]
        return dg.AssetCheckResult(
            passed=not pending,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"awaiting approval: {_listing(lines)}"
            if pending
            else "no version awaits approval",
            metadata={
                "pending_versions": len(pending),
                "oldest_hours": round(
                    max(
                        ((now - h.since).total_seconds() / 3600 for h in pending if h.since),
                        default=0,
                    ),
                    2,
                ),
                "pending": dg.MetadataValue.json(lines[:200]),
                **spent.metadata(),
            },
        )

    return gate_passed, approvals_pending


def build_signed_and_clean_check(config: MarketplaceConfig) -> dg.AssetChecksDefinition:
    """Every recorded export, as an auditor would see it: its OpenSSF signature under its
    workspace's key, and a scan under the configured severity (whatever the scan mode)."""
    public_keys = {w.name: config.public_key(w.name) for w in config.workspaces}
    required = config.require_signatures
    security = config.security
    policy = security.policy("block")

    @dg.asset_check(
        asset=EXPORTS,
        name=EXPORTS_SIGNED_AND_CLEAN,
        blocking=False,
        description="Every exported version is signed with its workspace's key (where keys are configured) "
        "and its files hold nothing the scan blocks.",
    )
    def exports_signed_and_clean(external_storage: ExternalStorageResource) -> dg.AssetCheckResult:
        storage = external_storage.storage
        rows = [
            r
            for r in external_storage.read_rows(summary.EXPORT_SUMMARY)
            if r["workspace"] in public_keys
        ]
        unsigned, mis_signed, unsafe = [], [], []
        scanned = 0
        for row in rows:
            label = f"{row['workspace']}/{row['model_name']} v{row['version']}"
            key = storage.key_of(row["export_path"])
            if key is None:
                continue
            with storage.local_tree(key) as local:
                public_key = public_keys[row["workspace"]]
                if public_key is not None:
                    try:
                        verify_export_signature(local, public_key)
                    except SignatureError as exc:
                        reason = str(exc).replace(str(local), row["export_path"])
                        (unsigned if "not signed" in reason else mis_signed).append(
                            f"{label}: {reason}"
                        )
                elif required:
                    unsigned.append(f"{label}: workspace {row['workspace']} has no public key")
                if security.scan != "off":
                    report = scan_folder(local)
                    scanned += report.files_scanned
                    if blocking := report.blocking(policy):
                        unsafe.append(f"{label}: {report.describe(blocking)}")
        problems = [
            f"{what}: {_listing(items)}"
            for what, items in (
                ("unsigned", unsigned),
                ("mis-signed", mis_signed),
                ("blocking scan findings", unsafe),
            )
            if items
        ]
        return dg.AssetCheckResult(
            passed=not problems,
            description="; ".join(problems)
            or f"{len(rows)} export(s) signed as configured and clean",
            metadata={
                "exports_checked": len(rows),
                "unsigned": len(unsigned),
                "mis_signed": len(mis_signed),
                "with_blocking_findings": len(unsafe),
                "files_scanned": scanned,
            },
        )

    return exports_signed_and_clean


def build_stray_exports_check(config: MarketplaceConfig) -> dg.AssetChecksDefinition:
    """Export folders the marketplace did not write: never imported (imports go by the export
    summary and each manifest's identity), and reported here."""
    configured = {w.name for w in config.workspaces}

    @dg.asset_check(asset=EXPORTS, name=NO_STRAY_EXPORTS)
    def no_stray_exports(external_storage: ExternalStorageResource) -> dg.AssetCheckResult:
        """Every export folder in external storage belongs to a configured workspace and is in the
        export summary; others are ignored by imports and listed here."""
        storage = external_storage.storage
        recorded = {
            storage.key_of(r["export_path"])
            for r in external_storage.read_rows(summary.EXPORT_SUMMARY, columns=["export_path"])
        }
        folders = [
            found[0]
            for relative in storage.list(EXPORTS_DIR)
            if (found := export_folder_of_file(relative)) and found[1] == MANIFEST_NAME
        ]
        stray = []
        for folder in sorted(folders, key=lambda f: f.key):
            shown = folder.key.removeprefix(f"{EXPORTS_DIR}/")
            if folder.workspace not in configured:
                stray.append(f"{shown} (workspace {folder.workspace!r} is not configured)")
            elif folder.key not in recorded:
                stray.append(f"{shown} (not in the export summary: no partition exported it)")
        return dg.AssetCheckResult(
            passed=not stray,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"ignored export folders: {_listing(stray)}"
                if stray
                else f"{len(folders)} export folder(s), all recorded"
            ),
            metadata={"export_folders": len(folders), "stray_folders": len(stray)},
        )

    return no_stray_exports
