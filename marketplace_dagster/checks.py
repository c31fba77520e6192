"""Asset checks over the whole marketplace: tables, manifests, reconciliation with the sources,
freshness.

Each asks the domain for a verdict (marketplace.audits, marketplace.reconciliation) and shows it.
They run without a partition, so they can be executed alone from the UI; the load check, which
needs the partition's imports, is the imports asset's (assets/sync.py). The checks whose
settings come from the configuration file are built when the definitions load.
"""

import datetime as dt

import dagster as dg

from marketplace import summary
from marketplace.audits import (
    Verdict,
    approvals_verdict,
    audit_manifests,
    audit_signed_and_clean,
    audit_stray_exports,
    audit_webhooks,
    due_day,
    freshness_verdict,
    gate_verdict,
    unique_keys,
)
from marketplace.config import MarketplaceConfig
from marketplace.gate import configured_holds
from marketplace.reconciliation import audit_sources, audit_summaries
from marketplace.registries import SourceRegistries
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


def check_result(verdict: Verdict) -> dg.AssetCheckResult:
    """A domain verdict as Dagster shows it: lists and dicts as JSON."""
    return dg.AssetCheckResult(
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.WARN if verdict.warn else dg.AssetCheckSeverity.ERROR,
        description=verdict.description,
        metadata={
            name: dg.MetadataValue.json(value) if isinstance(value, list | dict) else value
            for name, value in verdict.metadata.items()
        },
    )


def _unique_keys(external_storage: ExternalStorageResource, table: str) -> dg.AssetCheckResult:
    """Both summary tables' key check: only the key columns are read."""
    rows = external_storage.read_rows(table, columns=list(summary.KEY_COLUMNS))
    return check_result(unique_keys(rows, table))


@dg.asset_check(
    asset=EXPORT_SUMMARY,
    name=EXPORT_SUMMARY_UNIQUE,
    description=f"{summary.EXPORT_SUMMARY} has one row per (workspace, model_name, version).",
)
def export_summary_has_unique_keys(external_storage: ExternalStorageResource):
    return _unique_keys(external_storage, summary.EXPORT_SUMMARY)


@dg.asset_check(
    asset=IMPORT_SUMMARY,
    name=IMPORT_SUMMARY_UNIQUE,
    description=f"{summary.IMPORT_SUMMARY} has one row per (workspace, model_name, version).",
)
def import_summary_has_unique_keys(external_storage: ExternalStorageResource):
    return _unique_keys(external_storage, summary.IMPORT_SUMMARY)


@dg.asset_check(
    asset=EXPORTS,
    name=EXPORTS_MATCH_MANIFESTS,
    description="Every exported version's files match its SHA-256 manifest and recorded checksum.",
)
def exports_match_manifests(external_storage: ExternalStorageResource) -> dg.AssetCheckResult:
    return check_result(audit_manifests(external_storage))


@dg.asset_check(
    asset=IMPORT_SUMMARY,
    name=PRODUCTION_VERSIONS_SYNCED,
    description=(
        "Every production version seen in the last 30 days' partitions is exported (or superseded "
        "by a newer export), and every exported version is imported or superseded by a newer "
        "import."
    ),
)
def production_versions_synced(external_storage: ExternalStorageResource) -> dg.AssetCheckResult:
    return check_result(audit_summaries(external_storage, dt.datetime.now(dt.UTC).date()))


def build_reconciliation_check(config: MarketplaceConfig) -> dg.AssetChecksDefinition:
    """The marketplace against every workspace's production versions now, read from the
    registries."""

    @dg.asset_check(
        asset=REGISTRATION,
        name=MARKETPLACE_MATCHES_SOURCES,
        blocking=False,
        description=(
            "For every workspace's curated models, the marketplace's production marker points at "
            "the copy of the source's production version now (or the promotion gate holds that "
            "version), and models with none (retired) carry no marker."
        ),
    )
    def marketplace_matches_sources(
        external_storage: ExternalStorageResource, marketplace: MarketplaceRegistryResource
    ) -> dg.AssetCheckResult:
        return check_result(audit_sources(config, external_storage, marketplace))

    return marketplace_matches_sources


def build_freshness_check(config: MarketplaceConfig) -> dg.AssetChecksDefinition:
    """Per workspace, unlike Dagster's FreshnessPolicy, which one fresh partition satisfies."""
    deadline = config.freshness.deadline
    workspaces = [w.name for w in config.workspaces]

    @dg.asset_check(
        asset=REGISTRATION,
        name=PARTITIONS_FRESH,
        description=(
            f"Each workspace's partition for a day is registered by {deadline:%H:%M} UTC that day "
            "(before the deadline, the previous day's must be)."
        ),
    )
    def todays_partitions_synced_by_deadline(
        context: dg.AssetCheckExecutionContext,
    ) -> dg.AssetCheckResult:
        day = due_day(dt.datetime.now(dt.UTC), deadline, config.start_date)
        stale = [] if day is None else [w for w in workspaces if not _registered(context, day, w)]
        return check_result(freshness_verdict(day, workspaces, stale, deadline, config.start_date))

    return todays_partitions_synced_by_deadline


def _registered(context: dg.AssetCheckExecutionContext, day: dt.date, workspace: str) -> bool:
    return bool(
        context.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=REGISTRATION, asset_partitions=[str(partition_key(day, workspace))]
            ),
            limit=1,
        ).records
    )


def build_webhooks_check(config: MarketplaceConfig) -> dg.AssetChecksDefinition:
    """Is each source that should push changes set up to? A source that cannot (a file store, an
    older
    MLflow, Unity Catalog) or whose webhook is missing still syncs, by polling: a warning, not an
    error."""

    @dg.asset_check(
        asset=PRODUCTION_MODELS,
        name=SOURCE_WEBHOOKS_REGISTERED,
        blocking=False,
        description=(
            "Every workspace with a `webhook` holds an active marketplace-sync webhook to the "
            f"receiver ({config.webhooks.base_url}); the others are polled every "
            f"{config.sensor.minimum_interval_seconds} s."
        ),
    )
    def source_webhooks_registered() -> dg.AssetCheckResult:
        return check_result(audit_webhooks(config))

    return source_webhooks_registered


def build_gate_checks(
    config: MarketplaceConfig,
) -> tuple[dg.AssetChecksDefinition, dg.AssetChecksDefinition]:
    """What the promotion gate holds: failed or rejected versions, and those awaiting approval
    (one search of the marketplace each; none where no gate is configured)."""

    @dg.asset_check(
        asset=REGISTRATION,
        name=GATE_PASSED,
        blocking=False,
        description="No source's production version is held by the promotion gate (failed its "
        "required metadata or its evaluation, or was rejected): held versions are listed with why.",
    )
    def gate_passed(marketplace: MarketplaceRegistryResource) -> dg.AssetCheckResult:
        with registry_time() as spent:
            holds = configured_holds(config, marketplace.client())
        return check_result(gate_verdict(holds, spent))

    @dg.asset_check(
        asset=REGISTRATION,
        name=APPROVALS_PENDING,
        blocking=False,
        description="No version waits for a reviewer's approval (tag marketplace.approval on the "
        "marketplace version: approved, with marketplace.approved_by, or rejected).",
    )
    def approvals_pending(marketplace: MarketplaceRegistryResource) -> dg.AssetCheckResult:
        with registry_time() as spent:
            holds = configured_holds(config, marketplace.client())
        return check_result(approvals_verdict(holds, dt.datetime.now(dt.UTC), spent))

    return gate_passed, approvals_pending


def build_signed_and_clean_check(config: MarketplaceConfig) -> dg.AssetChecksDefinition:
    """Every recorded export, as an auditor would see it: its OpenSSF signature under its
    workspace's key, and a scan under the configured severity (whatever the scan mode)."""
    sources = SourceRegistries(config)
    public_keys = {w.name: sources.public_key(w.name) for w in config.workspaces}

    @dg.asset_check(
        asset=EXPORTS,
        name=EXPORTS_SIGNED_AND_CLEAN,
        blocking=False,
        description=(
            "Every exported version is signed with its workspace's key (where keys are "
            "configured) and its files hold nothing the scan blocks."
        ),
    )
    def exports_signed_and_clean(external_storage: ExternalStorageResource) -> dg.AssetCheckResult:
        return check_result(
            audit_signed_and_clean(
                external_storage, public_keys, config.require_signatures, config.security
            )
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
        return check_result(audit_stray_exports(external_storage, configured))

    return no_stray_exports


def build_checks(config: MarketplaceConfig) -> dict[str, dg.AssetChecksDefinition]:
    gate_passed, approvals_pending = build_gate_checks(config)
    return {
        EXPORT_SUMMARY_UNIQUE: export_summary_has_unique_keys,
        IMPORT_SUMMARY_UNIQUE: import_summary_has_unique_keys,
        EXPORTS_MATCH_MANIFESTS: exports_match_manifests,
        PRODUCTION_VERSIONS_SYNCED: production_versions_synced,
        MARKETPLACE_MATCHES_SOURCES: build_reconciliation_check(config),
        PARTITIONS_FRESH: build_freshness_check(config),
        NO_STRAY_EXPORTS: build_stray_exports_check(config),
        EXPORTS_SIGNED_AND_CLEAN: build_signed_and_clean_check(config),
        GATE_PASSED: gate_passed,
        APPROVALS_PENDING: approvals_pending,
        SOURCE_WEBHOOKS_REGISTERED: build_webhooks_check(config),
    }
