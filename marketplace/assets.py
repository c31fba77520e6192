"""The six marketplace assets, one lineage chain per (date, workspace) partition.

Each asset reads what it needs from durable state (the registries, external storage and the
summary tables) rather than from the previous step's memory, so any step can be re-run alone
and a crash between two steps loses nothing.
"""


import contextlib
import datetime as dt
import warnings
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import requests
from mlflow.exceptions import MlflowException

from marketplace import summary
from marketplace.exports import ExportError, ExportRecord, existing_export, export_dir, export_version
from marketplace.imports import (
    TAG_CHECKSUM,
    TAG_IMPORT_DATE,
    TAG_SOURCE_MODEL,
    TAG_SOURCE_RUN_ID,
    TAG_SOURCE_WORKSPACE,
    NameCollision,
    SourceKey,
    check_name_owner,
    import_export,
    marketplace_versions,
)
from marketplace.loading import load_and_predict
from marketplace.manifest import ManifestError, verify_export
from marketplace.partitions import split_partition_key
from marketplace.registry import (
    ProductionVersion,
    mark_exported,
    model_version_url,
    redact_uri,
    select_production_versions,
)
from marketplace.resources import (
    ExternalStorageResource,
    MarketplaceRegistryResource,
    WorkspaceRegistriesResource,
)

GROUP = "marketplace_sync"
PRODUCTION_MODELS = dg.AssetKey(["workspaces", "production_models"])
EXPORTS = dg.AssetKey(["external_storage", "exports"])
EXPORT_SUMMARY = dg.AssetKey(["external_storage", "export_summary"])
IMPORTS = dg.AssetKey(["marketplace", "imports"])
IMPORT_SUMMARY = dg.AssetKey(["external_storage", "import_summary"])
REGISTRATION = dg.AssetKey(["marketplace", "registered_models"])

IMPORT_LOADS_CHECK = "newest_import_loads_and_predicts"

REGISTRY_ERRORS = (MlflowException, requests.exceptions.RequestException, OSError)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _end_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)


def _partition(context: dg.AssetExecutionContext) -> tuple[dt.date, str]:
    return split_partition_key(context.partition_key)


def _snapshot_versions(external_storage: ExternalStorageResource, day: dt.date, workspace: str) -> list[ProductionVersion]:
    snapshot = external_storage.read_snapshot(workspace, day)
    return [ProductionVersion.from_dict(v) for v in snapshot["versions"]]


def _fail_if_errors(what: str, workspace: str, uri: str, errors: dict[str, str], metadata: dict) -> None:
    if errors:
        listing = "; ".join(f"{model}: {error}" for model, error in sorted(errors.items()))
        raise dg.Failure(
            description=f"workspace {workspace} ({redact_uri(uri)}): {len(errors)} model(s) failed to {what}: {listing}",
            metadata={**metadata, "failures": dg.MetadataValue.json(errors)},
        )


@contextlib.contextmanager
def _registry_errors(who: str, uri: str) -> Iterator[None]:
    """An unreachable or failing registry fails the partition, naming it and its URI."""
    try:
        yield
    except REGISTRY_ERRORS as exc:
        raise dg.Failure(
            description=f"{who}: registry at {redact_uri(uri)} failed: {type(exc).__name__}: {exc}"
        ) from exc


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
    common = {"partitions_def": partitions_def, "group_name": GROUP}

    @dg.asset(key=PRODUCTION_MODELS, kinds={"mlflow"}, **common)
    def production_models(
        context: dg.AssetExecutionContext,
        workspaces: WorkspaceRegistriesResource,
        external_storage: ExternalStorageResource,
    ) -> dg.MaterializeResult:
        """The workspace's production models: each registered model's newest production version."""
        day, name = _partition(context)
        workspace = workspaces.get(name)
        client = workspaces.client(name)
        with _registry_errors(f"workspace {name}", workspace.tracking_uri):
            selection = select_production_versions(
                client,
                stage=workspace.production_stage,
                alias=workspace.production_alias,
                include=workspace.include,
                exclude=workspace.exclude,
                registered_by=_end_of(day) if day < _utc_now().date() else None,
            )
        path = external_storage.write_snapshot(
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
        context.log.info(
            f"{name}: {len(selection.versions)} production version(s) among {selection.models_seen} model(s)"
        )
        return dg.MaterializeResult(
            metadata={
                "workspace": name,
                "tracking_uri": dg.MetadataValue.url(redact_uri(workspace.tracking_uri)),
                "models_seen": selection.models_seen,
                "production_versions": len(selection.versions),
                "models_skipped": len(selection.skipped),
                "snapshot": dg.MetadataValue.path(str(path)),
                "models": _markdown_table(
                    ["model", "version", "selected by", "registered"],
                    [
                        [
                            f"[{v.model_name}]({model_version_url(workspace.tracking_uri, v.model_name, v.version)})",
                            v.version,
                            v.selected_by,
                            f"{v.created_at:%Y-%m-%d %H:%M}",
                        ]
                        for v in selection.versions
                    ],
                ),
                "skipped": dg.MetadataValue.json(selection.skipped),
            }
        )

    @dg.asset(key=EXPORTS, deps=[PRODUCTION_MODELS], kinds={"mlflow"}, **common)
    def exports(
        context: dg.AssetExecutionContext,
        workspaces: WorkspaceRegistriesResource,
        external_storage: ExternalStorageResource,
    ) -> dg.MaterializeResult:
        """Export folders in external storage: each production version, once, with its manifest."""
        day, name = _partition(context)
        workspace = workspaces.get(name)
        client = workspaces.client(name)
        exported: list[ExportRecord] = []
        already = 0
        marked = 0
        errors: dict[str, str] = {}
        for version in _snapshot_versions(external_storage, day, name):
            label = f"{version.model_name} v{version.version}"
            record = existing_export(export_dir(external_storage.root, name, version.model_name, version.version))
            try:
                if record is None:
                    context.log.info(f"{name}: exporting {label}")
                    record = export_version(
                        client,
                        workspace.tracking_uri,
                        storage_root=external_storage.root,
                        workspace=name,
                        version=version,
                        export_date=day,
                    )
                    exported.append(record)
                else:
                    already += 1
                if workspaces.source_marker:
                    ran_on = dt.datetime.fromisoformat(record.manifest.exported_at).date()
                    marked += mark_exported(client, version.model_name, version.version, ran_on)
            except (ExportError, *REGISTRY_ERRORS) as exc:
                context.log.error(f"{name}: {label} failed to export: {exc}")
                errors[label] = f"{type(exc).__name__}: {exc}"
        metadata = {
            "workspace": name,
            "exported": len(exported),
            "already_exported": already,
            "failed": len(errors),
            "markers_written": marked,
            "bytes_exported": sum(r.manifest.size_bytes for r in exported),
            "exports": _markdown_table(
                ["model", "version", "files", "bytes", "path"],
                [
                    [r.manifest.model_name, r.manifest.version, len(r.manifest.files), r.manifest.size_bytes, str(r.path)]
                    for r in exported
                ],
            ),
        }
        _fail_if_errors("export", name, workspace.tracking_uri, errors, metadata)
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(key=EXPORT_SUMMARY, deps=[EXPORTS], kinds={"delta"}, **common)
    def export_summary(
        context: dg.AssetExecutionContext, external_storage: ExternalStorageResource
    ) -> dg.MaterializeResult:
        """The export summary Delta table: one row per exported version."""
        day, name = _partition(context)
        rows = []
        for version in _snapshot_versions(external_storage, day, name):
            record = existing_export(export_dir(external_storage.root, name, version.model_name, version.version))
            if record is None:
                continue
            manifest = record.manifest
            rows.append(
                {
                    "workspace": name,
                    "model_name": manifest.model_name,
                    "version": manifest.version,
                    "run_id": manifest.run_id,
                    "source": manifest.source,
                    "export_date": dt.date.fromisoformat(manifest.export_date),
                    "exported_at": dt.datetime.fromisoformat(manifest.exported_at),
                    "export_path": str(record.path),
                    "checksum": record.checksum,
                    "size_bytes": manifest.size_bytes,
                    "file_count": len(manifest.files),
                }
            )
        inserted = external_storage.merge_rows(summary.EXPORT_SUMMARY, rows)
        total = len(external_storage.read_rows(summary.EXPORT_SUMMARY, workspace=name))
        return dg.MaterializeResult(
            metadata={
                "workspace": name,
                "rows_inserted": inserted,
                "rows_for_partition": len(rows),
                "dagster/row_count": total,
                "table_uri": dg.MetadataValue.path(external_storage.table_uri(summary.EXPORT_SUMMARY)),
                "dagster/column_schema": _table_schema(summary.EXPORT_SUMMARY),
            }
        )

    @dg.asset(
        key=IMPORTS,
        deps=[EXPORT_SUMMARY],
        kinds={"mlflow"},
        check_specs=[dg.AssetCheckSpec(IMPORT_LOADS_CHECK, asset=IMPORTS, blocking=True,
                                       description="Each imported model loads with mlflow.pyfunc and predicts as its export does.")],
        **common,
    )
    def imports(
        context: dg.AssetExecutionContext,
        external_storage: ExternalStorageResource,
        marketplace: MarketplaceRegistryResource,
    ):
        """Marketplace model versions: each verified export imported once, tagged with its source."""
        day, name = _partition(context)
        client = marketplace.client()
        recorded = {(r["model_name"], r["version"]): r for r in external_storage.read_rows(summary.EXPORT_SUMMARY, workspace=name)}
        imported, already, errors = [], 0, {}
        newest: list[tuple[str, int, Path]] = []
        for version in _snapshot_versions(external_storage, day, name):
            label = f"{version.model_name} v{version.version}"
            row = recorded.get((version.model_name, version.version))
            if row is None:
                errors[label] = "not in the export summary (export it first)"
                continue
            mp_name = marketplace.model_name(name, version.model_name)
            source = SourceKey(name, version.model_name, version.version)
            try:
                with _registry_errors(f"the marketplace (syncing workspace {name})", marketplace.tracking_uri):
                    existing = marketplace_versions(client, mp_name)
                if source in existing:
                    already += 1
                    newest.append((mp_name, int(existing[source].version), Path(row["export_path"])))
                    continue
                check_name_owner(client, mp_name, name, version.model_name)
                verify_export(Path(row["export_path"]), expected_checksum=row["checksum"])
                context.log.info(f"{name}: importing {label} as {mp_name}")
                try:
                    created = import_export(
                        client,
                        marketplace.tracking_uri,
                        export_path=Path(row["export_path"]),
                        marketplace_name=mp_name,
                        experiment_name=marketplace.experiment_name(mp_name),
                        source=source,
                        checksum=row["checksum"],
                        import_date=day,
                    )
                except Exception:
                    # The version may exist although the call failed (a retried POST): look again.
                    created = marketplace_versions(client, mp_name).get(source)
                    if created is None:
                        raise
                imported.append((label, mp_name, int(created.version)))
                newest.append((mp_name, int(created.version), Path(row["export_path"])))
            except (ManifestError, NameCollision) as exc:
                errors[label] = str(exc)
            except dg.Failure:
                raise
            except Exception as exc:  # noqa: BLE001 - one model's failure must not hide the others'
                errors[label] = f"{type(exc).__name__}: {exc}"
        for label, error in errors.items():
            context.log.error(f"{name}: {label} not imported: {error}")
        metadata = {
            "workspace": name,
            "imported": len(imported),
            "already_imported": already,
            "failed": len(errors),
            "imports": _markdown_table(
                ["source", "marketplace model", "version"],
                [[label, f"[{mp}]({model_version_url(marketplace.tracking_uri, mp, v)})", v] for label, mp, v in imported],
            ),
        }
        _fail_if_errors("import", name, marketplace.tracking_uri, errors, metadata)
        yield dg.MaterializeResult(metadata=metadata)
        yield _load_check(marketplace.tracking_uri, newest)

    @dg.asset(key=IMPORT_SUMMARY, deps=[IMPORTS], kinds={"delta"}, **common)
    def import_summary(
        context: dg.AssetExecutionContext,
        external_storage: ExternalStorageResource,
        marketplace: MarketplaceRegistryResource,
    ) -> dg.MaterializeResult:
        """The import summary Delta table: one row per imported version."""
        day, name = _partition(context)
        client = marketplace.client()
        rows, missing = [], []
        for version in _snapshot_versions(external_storage, day, name):
            mp_name = marketplace.model_name(name, version.model_name)
            with _registry_errors(f"the marketplace (syncing workspace {name})", marketplace.tracking_uri):
                found = marketplace_versions(client, mp_name).get(SourceKey(name, version.model_name, version.version))
            if found is None:
                missing.append(f"{version.model_name} v{version.version}")
                continue
            tags = found.tags or {}
            rows.append(
                {
                    "workspace": name,
                    "model_name": version.model_name,
                    "version": version.version,
                    "marketplace_model": mp_name,
                    "marketplace_version": int(found.version),
                    "import_date": dt.date.fromisoformat(tags.get(TAG_IMPORT_DATE, day.isoformat())),
                    "imported_at": dt.datetime.fromtimestamp(found.creation_timestamp / 1000, tz=dt.timezone.utc),
                    "checksum": tags.get(TAG_CHECKSUM, ""),
                    "run_id": found.run_id,
                }
            )
        inserted = external_storage.merge_rows(summary.IMPORT_SUMMARY, rows)
        total = len(external_storage.read_rows(summary.IMPORT_SUMMARY, workspace=name))
        if missing:
            context.log.warning(f"{name}: not in the marketplace yet: {', '.join(missing)}")
        return dg.MaterializeResult(
            metadata={
                "workspace": name,
                "rows_inserted": inserted,
                "rows_for_partition": len(rows),
                "not_imported": dg.MetadataValue.json(missing),
                "dagster/row_count": total,
                "table_uri": dg.MetadataValue.path(external_storage.table_uri(summary.IMPORT_SUMMARY)),
                "dagster/column_schema": _table_schema(summary.IMPORT_SUMMARY),
            }
        )

    @dg.asset(key=REGISTRATION, deps=[IMPORT_SUMMARY], kinds={"mlflow"}, **common)
    def registered_models(
        context: dg.AssetExecutionContext,
        external_storage: ExternalStorageResource,
        workspaces: WorkspaceRegistriesResource,
        marketplace: MarketplaceRegistryResource,
    ) -> dg.MaterializeResult:
        """Marketplace registered models: alias, stage, tags and provenance on each model's newest import."""
        day, name = _partition(context)
        source_uri = redact_uri(workspaces.get(name).tracking_uri)
        client = marketplace.client()
        rows, changed = [], 0
        for version in _snapshot_versions(external_storage, day, name):
            mp_name = marketplace.model_name(name, version.model_name)
            with _registry_errors(f"the marketplace (registering {mp_name})", marketplace.tracking_uri):
                imported = marketplace_versions(client, mp_name)
                if not imported:
                    continue
                key, newest = max(imported.items(), key=lambda item: item[0].version)
                changed += _register(client, marketplace, mp_name, key, newest, source_uri)
            rows.append(
                [
                    f"[{mp_name}]({model_version_url(marketplace.tracking_uri, mp_name, newest.version)})",
                    newest.version,
                    f"@{marketplace.alias}",
                    f"{name}/{key.model_name} v{key.version}",
                ]
            )
        return dg.MaterializeResult(
            metadata={
                "workspace": name,
                "models_registered": len(rows),
                "registry_changes": changed,
                "alias": marketplace.alias,
                "models": _markdown_table(["marketplace model", "version", "alias", "source"], rows),
            }
        )

    return [production_models, exports, export_summary, imports, import_summary, registered_models]


def _load_check(tracking_uri: str, newest: list[tuple[str, int, Path]]) -> dg.AssetCheckResult:
    results = {}
    for mp_name, version, export_path in newest:
        reference = next((p for p in export_path.glob("m-*/artifacts") if (p / "MLmodel").exists()), None)
        results[f"{mp_name} v{version}"] = load_and_predict(tracking_uri, f"models:/{mp_name}/{version}", reference)
    failed = {k: r.detail for k, r in results.items() if not r.loaded or r.matches_export is False}
    unpredicted = {k: r.detail for k, r in results.items() if r.loaded and not r.predicted}
    return dg.AssetCheckResult(
        check_name=IMPORT_LOADS_CHECK,
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=("; ".join(failed.values()) if failed else f"{len(results)} model(s) load and predict"),
        metadata={
            "models_checked": len(results),
            "models_failed": len(failed),
            "models_without_input_example": len(unpredicted),
            "details": dg.MetadataValue.json({k: r.detail for k, r in results.items()}),
        },
    )


def _register(client, marketplace: MarketplaceRegistryResource, mp_name: str, key: SourceKey, newest, source_uri: str) -> int:
    """Point the alias (and the Production stage) at `newest`; set provenance. Returns changes made."""
    changes = 0
    current = client.get_registered_model(mp_name)
    aliases = getattr(current, "aliases", {}) or {}
    if str(aliases.get(marketplace.alias)) != str(newest.version):
        client.set_registered_model_alias(mp_name, marketplace.alias, newest.version)
        changes += 1
    if not marketplace.is_unity_catalog and newest.current_stage != "Production":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated, still served
            client.transition_model_version_stage(mp_name, newest.version, "Production", archive_existing_versions=True)
        changes += 1
    model_tags = {
        TAG_SOURCE_WORKSPACE: key.workspace,
        TAG_SOURCE_MODEL: key.model_name,
        "marketplace.source_tracking_uri": source_uri,
        "marketplace.latest_source_version": str(key.version),
    }
    for tag, value in model_tags.items():
        if (current.tags or {}).get(tag) != value:
            client.set_registered_model_tag(mp_name, tag, value)
            changes += 1
    description = (
        f"Marketplace copy of model '{key.model_name}' from workspace '{key.workspace}' ({source_uri}). "
        f"@{marketplace.alias} is source version {key.version}. Imported and kept in sync by the model marketplace."
    )
    if current.description != description:
        client.update_registered_model(mp_name, description=description)
        changes += 1
    version_tags = {**key.tags(), TAG_SOURCE_RUN_ID: (newest.tags or {}).get(TAG_SOURCE_RUN_ID, "")}
    for tag, value in version_tags.items():
        if value and (newest.tags or {}).get(tag) != value:
            client.set_model_version_tag(mp_name, newest.version, tag, value)
            changes += 1
    return changes
