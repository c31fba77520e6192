"""The six sync assets, one lineage chain per (date, workspace) partition.

Each asset reads what it needs from durable state (the registries, external storage and the
summary tables) rather than from the previous step's memory, so any step can be re-run alone
and a crash between two steps loses nothing. Each calls one domain step per partition of its
run and shows what it returned (reporting.Report); the partitions themselves come from the
configuration file, so build_sync_assets applies them when the definitions load.
"""

import contextlib
import datetime as dt

import dagster as dg

from marketplace import summary
from marketplace.export_records import LocalCopies, export_row
from marketplace.imports import import_row, import_versions, marketplace_versions_of
from marketplace.lifecycle import CHANGES
from marketplace.loading import Checked, verify_loads
from marketplace.provenance import SourceKey
from marketplace.quarantine import quarantine_blocked
from marketplace.registration import register_partition
from marketplace.registry import redact_uri, registry_errors
from marketplace.snapshots import take_snapshot
from marketplace.telemetry import registry_time
from marketplace_dagster.engines import run_exports
from marketplace_dagster.keys import (
    EXPORT_SUMMARY,
    EXPORTS,
    GROUP,
    IMPORT_LOADS_CHECK,
    IMPORT_SUMMARY,
    IMPORTS,
    PRODUCTION_MODELS,
    REGISTRATION,
)
from marketplace_dagster.reporting import (
    Report,
    load_check_result,
    registration_row,
    sandbox_mode,
    scan_policy_note,
    table_metadata,
    version_link,
)
from marketplace_dagster.resources import (
    ExternalStorageResource,
    MarketplaceRegistryResource,
    SandboxResource,
    WorkspaceRegistriesResource,
    explained,
)

# Eager, but over every date (AutomationCondition.eager() only looks at the latest one) and
# never past a failed blocking check.
SYNC_DOWNSTREAM = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("eager over every date")
# Dagster's policy sees the newest materialization of any partition; per-workspace
# freshness is the todays_partitions_synced_by_deadline check.
DAILY = dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=26))


@dg.asset(key=PRODUCTION_MODELS, group_name=GROUP, kinds={"mlflow"})
def production_models(
    context: dg.AssetExecutionContext,
    workspaces: WorkspaceRegistriesResource,
    external_storage: ExternalStorageResource,
    sandbox: SandboxResource,
) -> dg.MaterializeResult:
    """The workspace's production models: each registered model's newest production version."""
    report = Report(context, "models", ["model", "version", "selected by", "registered"])
    skipped: dict[str, dict[str, str]] = {}

    def scan(day: dt.date, name: str) -> None:
        # A moved version is likely loaded later in this run: its imports start the sandbox now.
        snapshot = take_snapshot(workspaces, external_storage, name, day, moving=sandbox.begin)
        versions = snapshot.versions
        context.log.info(
            f"{name} on {day}: {len(versions)} production version(s) among "
            f"{snapshot.models_seen} model(s)"
        )
        report.count("models_seen", snapshot.models_seen)
        report.count("production_versions", len(versions))
        report.count("models_skipped", len(snapshot.skipped))
        skipped[f"{day}|{name}" if report.several else ""] = dict(snapshot.skipped)
        workspace = workspaces.get(name)
        report.rows += [
            [
                f"{day}|{name}",
                version_link(workspace, v.model_name, v.version),
                v.version,
                v.selected_by,
                f"{v.created_at:%Y-%m-%d %H:%M}",
            ]
            for v in versions
        ]

    report.run(scan)
    return report.result(skipped=dg.MetadataValue.json(skipped.get("", skipped)))


@dg.asset(
    key=EXPORTS,
    deps=[PRODUCTION_MODELS],
    group_name=GROUP,
    kinds={"mlflow"},
    automation_condition=SYNC_DOWNSTREAM,
)
def exports(
    context: dg.AssetExecutionContext,
    workspaces: WorkspaceRegistriesResource,
    external_storage: ExternalStorageResource,
    sandbox: SandboxResource,
) -> dg.MaterializeResult:
    """Export folders in external storage: each production version, once, with its manifest."""
    report = Report(context, "exports", ["model", "version", "files", "bytes", "path"])
    report.zero(
        "exported",
        "already_exported",
        "exports_replaced",
        "skipped",
        "failed",
        "markers_written",
        "bytes_exported",
    )
    skipped: dict[str, str] = {}

    def export(day: dt.date, name: str) -> None:
        versions = external_storage.read_snapshot(name, day).versions
        for outcome in run_exports(context, workspaces, name, external_storage, versions, day):
            report.count("exports_replaced", bool(outcome.replaced))
            report.count("markers_written", outcome.marker_written)
            report.count(outcome.status)
            if outcome.status == "skipped":
                skipped[f"{name}/{outcome.label}"] = outcome.detail
            elif outcome.status == "failed":
                uri = redact_uri(workspaces.get(name).tracking_uri)
                report.fail(f"workspace {name} ({uri}) {outcome.label}", outcome.detail)
            elif outcome.status == "exported":
                sandbox.begin()  # its imports overlap this run's waits on the registries
                report.count("bytes_exported", outcome.size_bytes)
                report.rows.append(
                    [
                        f"{day}|{name}",
                        outcome.model_name,
                        outcome.version,
                        outcome.files,
                        outcome.size_bytes,
                        outcome.location,
                    ]
                )

    report.run(export)
    return report.result(
        engines=sorted({workspaces.get(n).export.engine for _, n in report.partitions}),
        skipped_versions=dg.MetadataValue.json(skipped),
    )


@dg.asset(
    key=EXPORT_SUMMARY,
    deps=[EXPORTS],
    group_name=GROUP,
    kinds={"delta"},
    automation_condition=SYNC_DOWNSTREAM,
    freshness_policy=DAILY,
)
def export_summary(
    context: dg.AssetExecutionContext, external_storage: ExternalStorageResource
) -> dg.MaterializeResult:
    """The export summary Delta table: one row per exported version."""
    report = Report(context, "rows", [])
    rows = []

    def collect(day: dt.date, name: str) -> None:
        for version in external_storage.read_snapshot(name, day).versions:
            record = external_storage.existing_export(name, version.model_name, version.version)
            if record is not None:
                rows.append(export_row(name, record))

    report.run(collect)
    with explained():
        # One MERGE for every partition of the run: one commit, not one per workspace.
        report.count("rows_inserted", external_storage.merge_rows(summary.EXPORT_SUMMARY, rows))
        report.count("rows_for_partitions", len(rows))
        return report.result(**table_metadata(external_storage, summary.EXPORT_SUMMARY))


@dg.asset(
    key=IMPORTS,
    deps=[EXPORT_SUMMARY],
    group_name=GROUP,
    kinds={"mlflow"},
    automation_condition=SYNC_DOWNSTREAM,
    check_specs=[
        dg.AssetCheckSpec(
            IMPORT_LOADS_CHECK,
            asset=IMPORTS,
            blocking=True,
            description=(
                "Each imported model loads with mlflow.pyfunc and predicts as its export does."
            ),
        )
    ],
)
def imports(
    context: dg.AssetExecutionContext,
    external_storage: ExternalStorageResource,
    workspaces: WorkspaceRegistriesResource,
    marketplace: MarketplaceRegistryResource,
    sandbox: SandboxResource,
):
    """Marketplace model versions: each verified export imported once, tagged with its source."""
    report = Report(context, "imports", ["source", "marketplace model", "version"])
    report.zero("imported", "already_imported", "skipped", "quarantined", "failed", "files_scanned")
    listed: dict[str, dict] = {"skipped": {}, "quarantined": {}, "warnings": {}}
    policy = marketplace.scan_policy
    scan_seconds = 0.0
    newest: list[Checked] = []
    with explained():
        client = marketplace.client()

    def import_partition(day: dt.date, name: str) -> None:
        nonlocal scan_seconds
        versions = external_storage.read_snapshot(name, day).versions
        recorded = {
            (r["workspace"], r["model_name"], r["version"]): r
            for r in external_storage.read_rows(summary.EXPORT_SUMMARY, workspace=name)
        }
        for outcome in import_versions(
            client,
            marketplace=marketplace,
            storage=external_storage,
            sources=workspaces,
            workspace=name,
            versions=versions,
            recorded=recorded,
            copies=copies,
            day=day,
            log=context.log,
            importing=sandbox.begin,
        ):
            report.count(outcome.status)
            report.count("files_scanned", outcome.files_scanned)
            scan_seconds += outcome.scan_seconds
            if outcome.status == "failed":
                report.fail(outcome.label, outcome.detail)
            elif outcome.status == "skipped":
                listed["skipped"][outcome.label] = outcome.detail
            elif outcome.status == "quarantined":
                listed["quarantined"][outcome.label] = outcome.findings
            else:
                if outcome.findings:
                    listed["warnings"][outcome.label] = outcome.findings
                new = outcome.status == "imported"
                newest.append(
                    Checked(
                        outcome.marketplace_name,
                        outcome.version,
                        outcome.export_location,
                        new,
                        outcome.source,
                        outcome.checksum,
                    )
                )
                if new:
                    link = version_link(
                        marketplace, outcome.marketplace_name, outcome.version.version
                    )
                    report.rows.append(
                        [f"{day}|{name}", outcome.label, link, outcome.version.version]
                    )

    # Exports in an object store are downloaded to verify and import them, kept for the load check.
    with contextlib.ExitStack() as stack:
        copies = LocalCopies(external_storage.storage, stack)
        report.run(import_partition)
        yield report.result(
            skipped_versions=dg.MetadataValue.json(listed["skipped"]),
            quarantined_versions=dg.MetadataValue.json(listed["quarantined"]),
            scan_findings_not_blocking=dg.MetadataValue.json(listed["warnings"]),
            scan_seconds=round(scan_seconds, 3),
            scan_policy=scan_policy_note(policy),
        )
        with registry_time() as spent:
            results = verify_loads(
                client,
                marketplace.tracking_uri,
                marketplace.registry_uri,
                newest,
                copies,
                policy,
                sandbox,
                hashed=copies.hashed,
                max_workers=marketplace.max_workers,
            )
            with explained():
                blocked = quarantine_blocked(
                    client,
                    external_storage,
                    newest,
                    results,
                    dt.datetime.now(dt.UTC).date(),
                    context.log,
                )
        yield load_check_result(
            IMPORT_LOADS_CHECK, results, spent, sandbox_mode(sandbox.settings, results), blocked
        )


@dg.asset(
    key=IMPORT_SUMMARY,
    deps=[IMPORTS],
    group_name=GROUP,
    kinds={"delta"},
    automation_condition=SYNC_DOWNSTREAM,
    freshness_policy=DAILY,
)
def import_summary(
    context: dg.AssetExecutionContext,
    external_storage: ExternalStorageResource,
    marketplace: MarketplaceRegistryResource,
) -> dg.MaterializeResult:
    """The import summary Delta table: one row per imported version."""
    report = Report(context, "rows", [])
    with explained():
        client = marketplace.client()
    rows, missing = [], []

    def collect(day: dt.date, name: str) -> None:
        versions = external_storage.read_snapshot(name, day).versions
        names = {v.model_name: marketplace.model_name(name, v.model_name) for v in versions}
        with registry_errors(
            f"the marketplace (syncing workspace {name})", marketplace.tracking_uri
        ):
            known = marketplace_versions_of(client, list(names.values()))
        for version in versions:
            mp_name = names[version.model_name]
            found = known.get(mp_name, {}).get(SourceKey(name, version.model_name, version.version))
            if found is None:
                missing.append(f"{name}/{version.model_name} v{version.version}")
            else:
                rows.append(
                    import_row(name, version.model_name, version.version, mp_name, found, day)
                )

    report.run(collect)
    with explained():
        report.count("rows_inserted", external_storage.merge_rows(summary.IMPORT_SUMMARY, rows))
        report.count("rows_for_partitions", len(rows))
        if missing:
            context.log.warning(f"not in the marketplace yet: {', '.join(missing)}")
        return report.result(
            not_imported=dg.MetadataValue.json(missing),
            **table_metadata(external_storage, summary.IMPORT_SUMMARY),
        )


@dg.asset(
    key=REGISTRATION,
    deps=[IMPORT_SUMMARY],
    group_name=GROUP,
    kinds={"mlflow"},
    automation_condition=SYNC_DOWNSTREAM,
    freshness_policy=DAILY,
)
def registered_models(
    context: dg.AssetExecutionContext,
    external_storage: ExternalStorageResource,
    workspaces: WorkspaceRegistriesResource,
    marketplace: MarketplaceRegistryResource,
    sandbox: SandboxResource,
) -> dg.MaterializeResult:
    """Marketplace registered models: production marker, status, provenance and history, following
    what each source has in production now (promotions, rollbacks, retirements, restorations)."""
    report = Report(context, "models", ["marketplace model", "version", "change", "source"])
    report.zero(
        "models_registered", "registry_changes", *CHANGES, "history_rows_inserted", "held_by_gate"
    )
    with explained():
        client = marketplace.client()
    withheld: dict[str, str] = {}
    waiting: dict[str, str] = {}
    read_at: dict[str, str] = {}

    def register(day: dt.date, name: str) -> None:
        done = register_partition(
            client,
            marketplace=marketplace,
            storage=external_storage,
            sources=workspaces,
            workspace=name,
            day=day,
            run_id=context.run.run_id,
            sandbox=sandbox,
        )
        if done.withheld:
            # A past date's backfill imports what it saw; only the newest snapshot moves production.
            withheld[f"{day}|{name}"] = done.withheld
            return
        read_at[f"{day}|{name}"] = done.snapshot.taken_at
        production = done.snapshot.production
        report.count("history_rows_inserted", done.history_rows_inserted)
        for outcome in done.done.outcomes:
            label = f"{name}/{outcome.model_name}"
            if outcome.error:
                report.fail(
                    f"{label} ({outcome.marketplace_name})", f"not registered: {outcome.error}"
                )
                continue
            if outcome.grant_error:
                report.fail(
                    f"{label} ({outcome.marketplace_name})",
                    f"grant not applied: {outcome.grant_error}",
                )
            if outcome.held:
                report.count("held_by_gate")
            if outcome.waiting:
                waiting[label] = outcome.waiting
            report.count("registry_changes", outcome.registry_changes)
            if outcome.change is not None:
                report.count(outcome.change.kind)
            if outcome.target is not None:
                report.count("models_registered")
            if outcome.change is not None or outcome.target is not None:
                report.rows.append(registration_row(day, name, outcome, production, marketplace))

    report.run(register)
    with explained():
        return report.result(
            alias=marketplace.alias,
            waiting=dg.MetadataValue.json(waiting),
            production_moves_withheld=dg.MetadataValue.json(withheld),
            snapshots_taken_at=dg.MetadataValue.json(read_at),
            **table_metadata(external_storage, summary.PRODUCTION_HISTORY),
        )


SYNC_ASSETS = [
    production_models,
    exports,
    export_summary,
    imports,
    import_summary,
    registered_models,
]


def build_sync_assets(partitions_def: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The six assets partitioned by `partitions_def` (date x workspace, from the configuration),
    one partition per run: in a run of several partitions a failed step skips every partition's
    later steps, so one workspace's failure fails its own run only (see docs/operations.md)."""
    one_per_run = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
    return [
        asset.map_asset_specs(
            lambda spec: spec.replace_attributes(partitions_def=partitions_def)
        ).with_attributes(backfill_policy=one_per_run)
        for asset in SYNC_ASSETS
    ]
