"""The six marketplace assets, one lineage chain per (date, workspace) partition.

Each asset reads what it needs from durable state (the registries, external storage and the
summary tables) rather than from the previous step's memory, so any step can be re-run alone
and a crash between two steps loses nothing.
"""


import contextlib
import dataclasses
import datetime as dt
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import requests
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from marketplace import registration, summary
from marketplace.engines import run_exports
from marketplace.exports import ExportRecord, LocalCopies
from marketplace.imports import (
    TAG_CHECKSUM,
    TAG_IMPORT_DATE,
    NameCollision,
    ImportError_,
    SourceKey,
    check_name_owner,
    import_export,
    marketplace_versions,
    marketplace_versions_of,
    settle_duplicates,
)
from marketplace.loading import TAG_VERIFIED, LoadResult, artifact_fingerprint, load_and_predict
from marketplace.manifest import ManifestError, read_manifest
from marketplace.storage import LockLost, StorageError
from marketplace.partitions import split_partition_key
from marketplace.registry import (
    ProductionVersion,
    model_version_url,
    redact_text,
    redact_uri,
    select_production_versions,
)
from marketplace.resources import (
    ExternalStorageResource,
    MarketplaceRegistryResource,
    WorkspaceRegistriesResource,
)
from marketplace.registration import CHANGES, Wanted, recorded_states, register_workspace
from marketplace.scanning import ScanPolicy, scan_folder
from marketplace.signatures import SignatureError, verify_export_signature
from marketplace.telemetry import RegistryTime, registry_time

GROUP = "marketplace_sync"
PRODUCTION_MODELS = dg.AssetKey(["workspaces", "production_models"])
EXPORTS = dg.AssetKey(["external_storage", "exports"])
EXPORT_SUMMARY = dg.AssetKey(["external_storage", "export_summary"])
IMPORTS = dg.AssetKey(["marketplace", "imports"])
IMPORT_SUMMARY = dg.AssetKey(["external_storage", "import_summary"])
REGISTRATION = dg.AssetKey(["marketplace", "registered_models"])
CHAIN = [PRODUCTION_MODELS, EXPORTS, EXPORT_SUMMARY, IMPORTS, IMPORT_SUMMARY, REGISTRATION]

IMPORT_LOADS_CHECK = "newest_import_loads_and_predicts"

# Eager, but over every date (AutomationCondition.eager() only looks at the latest one) and
# never past a failed blocking check.
SYNC_DOWNSTREAM = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("eager over every date")

REGISTRY_ERRORS = (MlflowException, requests.exceptions.RequestException, OSError)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _end_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)


def _partitions(context: dg.AssetExecutionContext) -> list[tuple[dt.date, str]]:
    """Every (day, workspace) of the run: one (backfills run a partition each), or a range launched by hand."""
    return [split_partition_key(key) for key in context.partition_keys]


def _snapshot_versions(external_storage: ExternalStorageResource, day: dt.date, workspace: str) -> list[ProductionVersion]:
    snapshot = external_storage.read_snapshot(workspace, day)
    return [ProductionVersion.from_dict(v) for v in snapshot["versions"]]


class _Report:
    """What one asset did over the run's partitions: counts, table rows and failures.

    A failing partition or model does not stop the others; the step fails at the end,
    naming each failure, after everything that could be done was done.
    """

    def __init__(self, context: dg.AssetExecutionContext, what: str, columns: list[str]):
        self.context = context
        self.what = what
        self.columns = columns
        self.counts: dict[str, int] = {}
        self.rows: list[list] = []
        self.failures: dict[str, str] = {}
        self.partitions = _partitions(context)
        self.registry = RegistryTime()

    def count(self, name: str, amount: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + int(amount)

    def fail(self, where: str, error: str) -> None:
        error = redact_text(error)
        self.context.log.error(f"{where}: {error}")
        self.failures[where] = error

    def run(self, body: Callable[[dt.date, str], None]) -> None:
        with registry_time() as spent:
            for day, workspace in self.partitions:
                try:
                    body(day, workspace)
                except dg.Failure as exc:
                    self.fail(f"{day.isoformat()}|{workspace}", exc.description or str(exc))
        self.registry.add(spent)

    def result(self, **extra) -> dg.MaterializeResult:
        metadata = {
            **({"workspace": self.partitions[0][1]} if len(self.partitions) == 1 else {"partitions": len(self.partitions)}),
            **self.counts,
            **self.registry.metadata(),
            **extra,
        }
        if self.columns:
            metadata[self.what] = _markdown_table(["partition", *self.columns], self.rows)
        if self.failures:
            listing = "; ".join(f"{where}: {error}" for where, error in self.failures.items())
            raise dg.Failure(
                description=f"{len(self.failures)} failure(s) in {self.what}: {listing}",
                metadata={**metadata, "failures": dg.MetadataValue.json(self.failures)},
            )
        return dg.MaterializeResult(metadata=metadata)


@contextlib.contextmanager
def _registry_errors(who: str, uri: str, consequence: str = "") -> Iterator[None]:
    """An unreachable or failing registry fails the partition, naming it and its URI."""
    try:
        yield
    except REGISTRY_ERRORS as exc:
        # Not chained: the cause's text quotes the request URL, credentials included.
        raise dg.Failure(
            description=f"{who}: registry at {redact_uri(uri)} failed: {type(exc).__name__}: {redact_text(str(exc))}"
            + (f" ({consequence})" if consequence else "")
        ) from None


def _ui_host(registry) -> str | None:
    """A Databricks registry's web address (its URIs name a credentials profile, not a host)."""
    return registry.databricks.host if registry.databricks else None


def _markdown_table(header: list[str], rows: list[list[str]]) -> dg.MetadataValue:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    if not rows:
        lines.append("| " + " | ".join(["—"] * len(header)) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def _table_schema(table: str) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(f.name, str(f.type), constraints=dg.TableColumnConstraints(nullable=f.nullable))
                 for f in summary.SCHEMAS[table]]
    )


def build_sync_assets(partitions_def: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # backfill_policy: chosen knowingly
        return _build_sync_assets(partitions_def)


def _build_sync_assets(partitions_def: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    common = {
        "partitions_def": partitions_def,
        "group_name": GROUP,
        # One partition per run, so that one workspace's failure fails its own run only: in a run of
        # several partitions a failed step skips every partition's later steps (see docs/operations.md).
        "backfill_policy": dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    }
    downstream = {**common, "automation_condition": SYNC_DOWNSTREAM}
    # Dagster's policy sees the newest materialization of any partition; per-workspace
    # freshness is the todays_partitions_synced_by_deadline check.
    daily = {**downstream, "freshness_policy": dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=26))}

    @dg.asset(key=PRODUCTION_MODELS, kinds={"mlflow"}, **common)
    def production_models(
        context: dg.AssetExecutionContext,
        workspaces: WorkspaceRegistriesResource,
        external_storage: ExternalStorageResource,
    ) -> dg.MaterializeResult:
        """The workspace's production models: each registered model's newest production version."""
        report = _Report(context, "models", ["model", "version", "selected by", "registered"])
        skipped: dict[str, dict[str, str]] = {}

        def scan(day: dt.date, name: str) -> None:
            workspace = workspaces.get(name)
            with _registry_errors(f"workspace {name}", workspace.tracking_uri,
                                  consequence="nothing is retired while it cannot be read"):
                selection = select_production_versions(
                    workspaces.client(name),
                    stage=workspace.production_stage,
                    alias=workspace.production_alias,
                    include=workspace.include,
                    exclude=workspace.exclude,
                    registered_by=_end_of(day) if day < _utc_now().date() else None,
                )
            external_storage.write_snapshot(
                name,
                day,
                {
                    "workspace": name,
                    "date": day.isoformat(),
                    "taken_at": _utc_now().isoformat(),
                    "models_seen": selection.models_seen,
                    "versions": [v.to_dict() for v in selection.versions],
                    "skipped": selection.skipped,
                },
            )
            context.log.info(f"{name} on {day}: {len(selection.versions)} production version(s) among {selection.models_seen} model(s)")
            report.count("models_seen", selection.models_seen)
            report.count("production_versions", len(selection.versions))
            report.count("models_skipped", len(selection.skipped))
            skipped.update({f"{day}|{name}": selection.skipped} if len(report.partitions) > 1 else {"": selection.skipped})
            report.rows += [
                [
                    f"{day}|{name}",
                    f"[{v.model_name}]({model_version_url(workspace.tracking_uri, v.model_name, v.version, _ui_host(workspace))})",
                    v.version,
                    v.selected_by,
                    f"{v.created_at:%Y-%m-%d %H:%M}",
                ]
                for v in selection.versions
            ]

        report.run(scan)
        return report.result(skipped=dg.MetadataValue.json(skipped.get("", skipped)))

    @dg.asset(key=EXPORTS, deps=[PRODUCTION_MODELS], kinds={"mlflow"}, **downstream)
    def exports(
        context: dg.AssetExecutionContext,
        workspaces: WorkspaceRegistriesResource,
        external_storage: ExternalStorageResource,
    ) -> dg.MaterializeResult:
        """Export folders in external storage: each production version, once, with its manifest."""
        report = _Report(context, "exports", ["model", "version", "files", "bytes", "path"])
        for counter in ("exported", "already_exported", "exports_replaced", "skipped", "failed", "markers_written",
                        "bytes_exported"):
            report.count(counter, 0)
        skipped: dict[str, str] = {}

        def export(day: dt.date, name: str) -> None:
            workspace = workspaces.get(name)
            versions = _snapshot_versions(external_storage, day, name)
            for outcome in run_exports(context, workspaces, name, external_storage, versions, day):
                report.count("exports_replaced", bool(outcome.replaced))
                report.count("markers_written", outcome.marker_written)
                if outcome.status == "skipped":
                    report.count("skipped")
                    skipped[f"{name}/{outcome.label}"] = outcome.detail
                elif outcome.status == "failed":
                    report.count("failed")
                    report.fail(f"workspace {name} ({redact_uri(workspace.tracking_uri)}) {outcome.label}",
                                outcome.detail)
                else:
                    report.count(outcome.status)
                if outcome.status == "exported":
                    report.count("bytes_exported", outcome.size_bytes)
                    report.rows.append([f"{day}|{name}", outcome.model_name, outcome.version, outcome.files,
                                        outcome.size_bytes, outcome.location])

        report.run(export)
        return report.result(engines=sorted({workspaces.get(n).export.engine for _, n in report.partitions}),
                             skipped_versions=dg.MetadataValue.json(skipped))

    @dg.asset(key=EXPORT_SUMMARY, deps=[EXPORTS], kinds={"delta"}, **daily)
    def export_summary(
        context: dg.AssetExecutionContext, external_storage: ExternalStorageResource
    ) -> dg.MaterializeResult:
        """The export summary Delta table: one row per exported version."""
        report = _Report(context, "rows", [])
        rows = []

        def collect(day: dt.date, name: str) -> None:
            for version in _snapshot_versions(external_storage, day, name):
                record = external_storage.existing_export(name, version.model_name, version.version)
                if record is not None:
                    rows.append(export_row(name, record))

        report.run(collect)
        # One MERGE for every partition of the run: one commit, not one per workspace.
        report.count("rows_inserted", external_storage.merge_rows(summary.EXPORT_SUMMARY, rows))
        report.count("rows_for_partitions", len(rows))
        return report.result(**_table_metadata(external_storage, summary.EXPORT_SUMMARY))

    @dg.asset(
        key=IMPORTS,
        deps=[EXPORT_SUMMARY],
        kinds={"mlflow"},
        check_specs=[
            dg.AssetCheckSpec(
                IMPORT_LOADS_CHECK,
                asset=IMPORTS,
                blocking=True,
                description="Each imported model loads with mlflow.pyfunc and predicts as its export does.",
            )
        ],
        **downstream,
    )
    def imports(
        context: dg.AssetExecutionContext,
        external_storage: ExternalStorageResource,
        workspaces: WorkspaceRegistriesResource,
        marketplace: MarketplaceRegistryResource,
    ):
        """Marketplace model versions: each verified export imported once, tagged with its source."""
        report = _Report(context, "imports", ["source", "marketplace model", "version"])
        for counter in ("imported", "already_imported", "skipped", "quarantined", "failed", "files_scanned"):
            report.count(counter, 0)
        skipped: dict[str, str] = {}
        quarantined: dict[str, list[dict]] = {}
        scan_warnings: dict[str, list[dict]] = {}
        policy = marketplace.scan_policy
        scan_seconds = 0.0
        client = marketplace.client()
        newest: list[Checked] = []
        recorded = {
            (r["workspace"], r["model_name"], r["version"]): r
            for r in external_storage.read_rows(summary.EXPORT_SUMMARY)
        }

        def import_partition(day: dt.date, name: str) -> None:
            versions = _snapshot_versions(external_storage, day, name)
            known = _known_versions(client, marketplace, name, versions)
            for version in versions:
                label = f"{name}/{version.model_name} v{version.version}"
                row = recorded.get((name, version.model_name, version.version))
                if row is None:
                    reason = external_storage.skip_reason(name, version.model_name, version.version)
                    if reason is not None:
                        report.count("skipped")
                        skipped[label] = f"not exported: {reason}"
                    else:
                        report.count("failed")
                        report.fail(label, "not in the export summary (export it first)")
                    continue
                mp_name = marketplace.model_name(name, version.model_name)
                source = SourceKey(name, version.model_name, version.version)
                held = external_storage.quarantine(name, version.model_name, version.version, row["checksum"], policy)
                if held is not None:
                    # Not scanned again until its export changes.
                    report.count("quarantined")
                    quarantined[label] = held.get("findings", [])
                    continue
                if source in known.get(mp_name, {}):
                    report.count("already_imported")
                    newest.append(Checked(mp_name, known[mp_name][source], row["export_path"], new=False))
                    continue
                try:
                    # One importer per marketplace model at a time, across processes: the check
                    # for an existing version and the import must not interleave.
                    with external_storage.lock("import", mp_name) as held:
                        with _registry_errors(f"the marketplace (syncing workspace {name})", marketplace.tracking_uri):
                            existing = marketplace_versions(client, mp_name)
                        if source in existing:  # imported by a concurrent run since the search above
                            report.count("already_imported")
                            newest.append(Checked(mp_name, existing[source], row["export_path"], new=False))
                            continue
                        check_name_owner(client, mp_name, name, version.model_name)
                        local = copies.verified(
                            row["export_path"],
                            expected_checksum=row["checksum"],
                            identity=(name, version.model_name, version.version),
                            signing_key=external_storage.signing_key,
                        )
                        trusted(local, name, row["export_path"])
                        scan = scan_folder(local) if policy.mode != "off" else None
                        if scan is not None:
                            nonlocal scan_seconds
                            scan_seconds += scan.seconds
                            report.count("files_scanned", scan.files_scanned)
                            if blocking := scan.blocking(policy):
                                findings = [f.to_dict() for f in blocking]
                                external_storage.record_quarantine(
                                    name, version.model_name, version.version, checksum=row["checksum"],
                                    findings=findings, reason=f"quarantined: {scan.describe(blocking)}", day=day)
                                context.log.error(f"{label} quarantined, not imported: {scan.describe(blocking)}")
                                report.count("quarantined")
                                quarantined[label] = findings
                                continue
                            if scan.findings:
                                scan_warnings[label] = [f.to_dict() for f in scan.findings]
                                context.log.warning(f"{label}: scan findings that do not block: {scan.describe()}")
                        context.log.info(f"importing {label} as {mp_name}")
                        held.check()  # a lost lock imports nothing
                        created = _import_once(client, marketplace, row, local, mp_name, source, day,
                                               redact_uri(workspaces.get(name).tracking_uri))
                    report.count("imported")
                    report.rows.append(
                        [f"{day}|{name}", label,
                         f"[{mp_name}]({model_version_url(marketplace.tracking_uri, mp_name, created.version, _ui_host(marketplace))})",
                         created.version]
                    )
                    newest.append(Checked(mp_name, created, row["export_path"], new=True))
                except dg.Failure:
                    raise
                except Exception as exc:  # noqa: BLE001 - one model's failure must not hide the others'
                    report.count("failed")
                    detail = (str(exc) if isinstance(exc, ManifestError | NameCollision | SignatureError)
                              else f"{type(exc).__name__}: {exc}")
                    report.fail(label, f"not imported: {detail}")

        def trusted(local: Path, name: str, location: str) -> None:
            """The export carries a valid signature of its workspace's key, where signatures are required."""
            public_key = workspaces.get(name).signing.public_key
            if public_key is not None:
                try:
                    verify_export_signature(local, public_key)
                except SignatureError as exc:
                    raise SignatureError(f"signature refused: {str(exc).replace(str(local), location)} "
                                         f"(workspace {name}'s key)") from None
            elif marketplace.require_signatures:
                raise SignatureError(f"signature refused: {location}: workspace {name} has no public key, and "
                                     "marketplace.require_signatures is on")

        # Exports in an object store are downloaded to verify and import them, kept for the load check.
        with contextlib.ExitStack() as stack:
            copies = LocalCopies(external_storage.storage, stack)
            report.run(import_partition)
            yield report.result(
                skipped_versions=dg.MetadataValue.json(skipped),
                quarantined_versions=dg.MetadataValue.json(quarantined),
                scan_findings_not_blocking=dg.MetadataValue.json(scan_warnings),
                scan_seconds=round(scan_seconds, 3),
                scan_policy=f"{policy.mode}, blocking at {policy.block_severity} and above"
                + (f", {len(policy.allow_globals)} allowed global(s)" if policy.allow_globals else ""),
            )
            yield _load_check(client, marketplace.tracking_uri, marketplace.registry_uri, newest, copies, policy)

    @dg.asset(key=IMPORT_SUMMARY, deps=[IMPORTS], kinds={"delta"}, **daily)
    def import_summary(
        context: dg.AssetExecutionContext,
        external_storage: ExternalStorageResource,
        marketplace: MarketplaceRegistryResource,
    ) -> dg.MaterializeResult:
        """The import summary Delta table: one row per imported version."""
        report = _Report(context, "rows", [])
        client = marketplace.client()
        rows, missing = [], []

        def collect(day: dt.date, name: str) -> None:
            versions = _snapshot_versions(external_storage, day, name)
            known = _known_versions(client, marketplace, name, versions)
            for version in versions:
                mp_name = marketplace.model_name(name, version.model_name)
                found = known.get(mp_name, {}).get(SourceKey(name, version.model_name, version.version))
                if found is None:
                    missing.append(f"{name}/{version.model_name} v{version.version}")
                else:
                    rows.append(import_row(name, version.model_name, version.version, mp_name, found, day))

        report.run(collect)
        report.count("rows_inserted", external_storage.merge_rows(summary.IMPORT_SUMMARY, rows))
        report.count("rows_for_partitions", len(rows))
        if missing:
            context.log.warning(f"not in the marketplace yet: {', '.join(missing)}")
        return report.result(
            not_imported=dg.MetadataValue.json(missing), **_table_metadata(external_storage, summary.IMPORT_SUMMARY)
        )

    @dg.asset(key=REGISTRATION, deps=[IMPORT_SUMMARY], kinds={"mlflow"}, **daily)
    def registered_models(
        context: dg.AssetExecutionContext,
        external_storage: ExternalStorageResource,
        workspaces: WorkspaceRegistriesResource,
        marketplace: MarketplaceRegistryResource,
    ) -> dg.MaterializeResult:
        """Marketplace registered models: production marker, status, provenance and history, following
        what each source has in production now (promotions, rollbacks, retirements, restorations)."""
        report = _Report(context, "models", ["marketplace model", "version", "change", "source"])
        for counter in ("models_registered", "registry_changes", *CHANGES, "history_rows_inserted"):
            report.count(counter, 0)
        client = marketplace.client()
        withheld: dict[str, str] = {}
        waiting: dict[str, str] = {}
        read_at: dict[str, str] = {}

        def register(day: dt.date, name: str) -> None:
            newest = external_storage.newest_snapshot_date(name)
            if newest is not None and newest > day:
                # A past date's backfill imports what it saw; only the newest snapshot moves production.
                withheld[f"{day}|{name}"] = f"production follows the newer snapshot of {newest}"
                return
            snapshot = external_storage.read_snapshot(name, day)
            read_at[f"{day}|{name}"] = snapshot.get("taken_at", "")
            production = {v["model_name"]: int(v["version"]) for v in snapshot["versions"]}
            imported = {r["model_name"] for r in external_storage.read_rows(
                summary.IMPORT_SUMMARY, workspace=name, columns=["workspace", "model_name"])}
            # One registration of a workspace at a time: the history read, the registry changes and
            # the rows written from them must not interleave with another run's.
            with external_storage.lock("register", name) as held:
                history = external_storage.read_rows(summary.PRODUCTION_HISTORY, workspace=name)
                wanted = [
                    Wanted(model, marketplace.model_name(name, model), production.get(model))
                    for model in sorted(production.keys() | imported | {r["model_name"] for r in history})
                ]
                with _registry_errors(f"the marketplace (registering workspace {name})", marketplace.tracking_uri):
                    known = marketplace_versions_of(client, [w.marketplace_name for w in wanted])
                    quarantined = {
                        w.model_name: w.source_version for w in wanted
                        if w.source_version is not None
                        and SourceKey(name, w.model_name, w.source_version) not in known.get(w.marketplace_name, {})
                        and external_storage.quarantine(name, w.model_name, w.source_version,
                                                        policy=marketplace.scan_policy) is not None
                    }
                    done = register_workspace(
                        client, marketplace.marker, name, wanted, known, recorded_states(history),
                        source_uri=redact_uri(workspaces.get(name).tracking_uri), run_id=context.run.run_id,
                        snapshot_date=day, max_workers=marketplace.max_workers, quarantined=quarantined,
                    )
                try:
                    held.check()  # the registry moved; the rows that record it are written only while held
                except LockLost as exc:
                    raise dg.Failure(description=f"workspace {name}: history not recorded: {exc}") from None
                report.count("history_rows_inserted",
                             external_storage.merge_rows(summary.PRODUCTION_HISTORY, done.history_rows))
            for outcome in done.outcomes:
                label = f"{name}/{outcome.model_name}"
                if outcome.error:
                    report.fail(f"{label} ({outcome.marketplace_name})", f"not registered: {redact_text(outcome.error)}")
                    continue
                if outcome.waiting:
                    waiting[label] = outcome.waiting
                report.count("registry_changes", outcome.registry_changes)
                if outcome.change is not None:
                    report.count(outcome.change.kind)
                if outcome.target is not None:
                    report.count("models_registered")
                if outcome.change is not None or outcome.target is not None:
                    version = outcome.target.version if outcome.target is not None else None
                    report.rows.append([
                        f"{day}|{name}",
                        f"[{outcome.marketplace_name}]({model_version_url(marketplace.tracking_uri, outcome.marketplace_name, version or '', _ui_host(marketplace))})"
                        if version else outcome.marketplace_name,
                        version or "—",
                        outcome.change.kind if outcome.change else "unchanged",
                        f"{label} v{production[outcome.model_name]}" if outcome.model_name in production else f"{label} (no production version)",
                    ])

        report.run(register)
        return report.result(
            alias=marketplace.alias,
            waiting=dg.MetadataValue.json(waiting),
            production_moves_withheld=dg.MetadataValue.json(withheld),
            snapshots_taken_at=dg.MetadataValue.json(read_at),
            **_table_metadata(external_storage, summary.PRODUCTION_HISTORY),
        )

    return [production_models, exports, export_summary, imports, import_summary, registered_models]


def export_row(workspace: str, record: ExportRecord) -> dict:
    manifest = record.manifest
    return {
        "workspace": workspace,
        "model_name": manifest.model_name,
        "version": manifest.version,
        "run_id": manifest.run_id,
        "source": manifest.source,
        "export_date": dt.date.fromisoformat(manifest.export_date),
        "exported_at": dt.datetime.fromisoformat(manifest.exported_at),
        "export_path": record.location,
        "checksum": record.checksum,
        "size_bytes": manifest.size_bytes,
        "file_count": len(manifest.files),
    }


def import_row(workspace: str, model: str, version: int, mp_name: str, found, day: dt.date) -> dict:
    tags = found.tags or {}
    return {
        "workspace": workspace,
        "model_name": model,
        "version": version,
        "marketplace_model": mp_name,
        "marketplace_version": int(found.version),
        "import_date": dt.date.fromisoformat(tags.get(TAG_IMPORT_DATE, day.isoformat())),
        "imported_at": dt.datetime.fromtimestamp(found.creation_timestamp / 1000, tz=dt.timezone.utc),
        "checksum": tags.get(TAG_CHECKSUM, ""),
        "run_id": found.run_id,
    }


def _table_metadata(external_storage: ExternalStorageResource, table: str) -> dict:
    return {
        "dagster/row_count": len(external_storage.read_rows(table)),
        "table_uri": dg.MetadataValue.path(external_storage.table_uri(table)),
        "dagster/column_schema": _table_schema(table),
    }


def _import_once(
    client, marketplace: MarketplaceRegistryResource, row: dict, local: Path, mp_name: str, source: SourceKey,
    day: dt.date, source_uri: str,
):
    model_tags = {**registration.provenance_tags(source.workspace, source.model_name, source_uri),
                  registration.TAG_PRODUCTION_SOURCE_VERSION: str(source.version)}
    model_description = registration.description(source.workspace, source.model_name, source.version,
                                                 marketplace.marker, source_uri)
    try:
        returned = import_export(
            client,
            marketplace.tracking_uri,
            export_path=local,
            marketplace_name=mp_name,
            experiment_name=marketplace.experiment_name(mp_name),
            source=source,
            checksum=row["checksum"],
            import_date=day,
            model_tags=model_tags,
            model_description=model_description,
            registry_uri=marketplace.registry_uri,
        )
    except Exception:
        # The version may exist although the call failed (its answer was lost): look again.
        created = settle_duplicates(client, mp_name, source)
        if created is None:
            raise
        return created
    # A retried create may have made two copies of the version: keep the first.
    created = settle_duplicates(client, mp_name, source, returned)
    if created is None:
        raise ImportError_(f"{source.describe()}: imported, but no version of {mp_name!r} carries its source tags")
    return created


def _known_versions(
    client, marketplace: MarketplaceRegistryResource, workspace: str, versions: list[ProductionVersion]
) -> dict[str, dict[SourceKey, ModelVersion]]:
    """The marketplace versions of a partition's models, read in a few searches."""
    with _registry_errors(f"the marketplace (syncing workspace {workspace})", marketplace.tracking_uri):
        return marketplace_versions_of(client, [marketplace.model_name(workspace, v.model_name) for v in versions])


@dataclass(frozen=True)
class Checked:
    """A partition's newest marketplace version, for the load check."""

    name: str
    version: ModelVersion
    export_location: str
    new: bool  # imported by this run

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version.version}"


def _load_check(client, tracking_uri: str, registry_uri: str | None, checked: list[Checked],
                copies: LocalCopies, policy: ScanPolicy) -> dg.AssetCheckResult:
    """Load and predict each version imported now, or whose files changed since it last passed;
    each copy is scanned before it is loaded."""
    results: dict[str, LoadResult] = {}
    with registry_time() as spent:
        _load_each(client, tracking_uri, registry_uri, checked, results, copies, policy)
    unchanged = sum(1 for r in results.values() if r.unchanged)
    failed = {k: r.detail for k, r in results.items() if not r.loaded or r.matches_export is False}
    unpredicted = {k: r.detail for k, r in results.items() if r.loaded and not r.predicted}
    return dg.AssetCheckResult(
        check_name=IMPORT_LOADS_CHECK,
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=("; ".join(failed.values()) if failed else f"{len(results)} model(s) load and predict"),
        metadata={
            "models_checked": len(results),
            "models_loaded": len(results) - unchanged,
            "models_unchanged_since_verified": unchanged,
            "models_failed": len(failed),
            "models_without_input_example": len(unpredicted),
            "details": dg.MetadataValue.json({k: r.detail for k, r in results.items()}),
            **spent.metadata(),
        },
    )


def _load_each(
    client, tracking_uri: str, registry_uri: str | None, checked: list[Checked], results: dict[str, LoadResult],
    copies: LocalCopies, policy: ScanPolicy,
) -> None:
    for item in checked:
        recorded = (item.version.tags or {}).get(TAG_VERIFIED)
        if recorded and not item.new and _fingerprint_or_none(tracking_uri, registry_uri, item.uri) == recorded:
            results[f"{item.name} v{item.version.version}"] = LoadResult(
                True, True, True, f"{item.uri}: files unchanged since it last loaded and predicted", unchanged=True
            )
            continue
        reference, hashes = _reference(item.export_location, copies)
        result = load_and_predict(tracking_uri, item.uri, reference, hashes, registry_uri=registry_uri, policy=policy)
        result = dataclasses.replace(result, detail=redact_text(result.detail))
        results[f"{item.name} v{item.version.version}"] = result
        if result.loaded and result.matches_export is not False:
            fingerprint = _fingerprint_or_none(tracking_uri, registry_uri, item.uri)
            if fingerprint and fingerprint != recorded:
                with contextlib.suppress(*REGISTRY_ERRORS):  # without it, the next run loads it again
                    client.set_model_version_tag(item.name, item.version.version, TAG_VERIFIED, fingerprint)


def _fingerprint_or_none(tracking_uri: str, registry_uri: str | None, model_uri: str) -> str | None:
    try:
        return artifact_fingerprint(tracking_uri, model_uri, registry_uri)
    except Exception:  # noqa: BLE001 - unreadable listing: load it and report what fails
        return None


def _reference(location: str, copies: LocalCopies) -> tuple[Path | None, dict[str, str] | None]:
    """The export's copy of the model's artifacts, and their hashes from its manifest."""
    try:
        export_path = copies(location)
    except (ManifestError, *REGISTRY_ERRORS, StorageError):
        return None, None  # not readable: the model is loaded and predicts without the comparison
    reference = next((p for p in export_path.glob("m-*/artifacts") if (p / "MLmodel").exists()), None)
    if reference is None:
        return None, None
    try:
        manifest, _ = read_manifest(export_path)
    except ManifestError:
        return reference, None
    prefix = reference.relative_to(export_path).as_posix() + "/"
    return reference, {k.removeprefix(prefix): v["sha256"] for k, v in manifest.files.items() if k.startswith(prefix)}
