"""The marketplace code location: everything Dagster loads, assembled from the configuration
file."""

from __future__ import annotations

import gc

import dagster as dg

from marketplace.config import MarketplaceConfig, load_config
from marketplace_dagster.assets.catalog import catalog
from marketplace_dagster.assets.housekeeping import build_maintenance_job
from marketplace_dagster.assets.sync import build_sync_assets
from marketplace_dagster.checks import build_checks
from marketplace_dagster.jobs import build_checks_job, build_marketplace_sync_job
from marketplace_dagster.keys import (
    CATALOG_GROUP,
    EXPORTS_MATCH_MANIFESTS,
    EXPORTS_SIGNED_AND_CLEAN,
    GROUP,
    MARKETPLACE_MATCHES_SOURCES,
    NO_STRAY_EXPORTS,
    PARTITIONS_FRESH,
    SOURCE_WEBHOOKS_REGISTERED,
)
from marketplace_dagster.partitions import build_marketplace_partitions_def
from marketplace_dagster.resources import build_resources
from marketplace_dagster.schedules import build_cron_schedule, build_daily_marketplace_schedule
from marketplace_dagster.sensors import build_production_version_sensor


def build_definitions(config: MarketplaceConfig) -> dg.Definitions:
    partitions_def = build_marketplace_partitions_def(config)
    checks = build_checks(config)
    # Hashing or listing every export, reading every workspace, and the per-workspace freshness
    # audit run on their own schedules, not in each partition's sync.
    sync_job = build_marketplace_sync_job(
        [
            checks[name]
            for name in (
                EXPORTS_MATCH_MANIFESTS,
                NO_STRAY_EXPORTS,
                PARTITIONS_FRESH,
                MARKETPLACE_MATCHES_SOURCES,
                EXPORTS_SIGNED_AND_CLEAN,
                SOURCE_WEBHOOKS_REGISTERED,
            )
        ]
    )
    audit_job = build_checks_job(
        "marketplace_checks_job",
        [c for name, c in checks.items() if name != PARTITIONS_FRESH],
        "Every table-wide check: unique rows, manifests, reconciliation, the marketplace against "
        "its sources.",
    )
    freshness_job = build_checks_job(
        "marketplace_freshness_job",
        [checks[PARTITIONS_FRESH]],
        "Is each workspace's partition synced by its deadline?",
    )
    housekeeping = config.housekeeping
    maintenance_job = build_maintenance_job(housekeeping)
    return dg.Definitions(
        assets=[*build_sync_assets(partitions_def), catalog],
        asset_checks=list(checks.values()),
        jobs=[sync_job, audit_job, freshness_job, maintenance_job],
        sensors=[
            build_production_version_sensor(config, sync_job),
            dg.AutomationConditionSensorDefinition(
                "marketplace_automation_sensor",
                target=dg.AssetSelection.groups(GROUP, CATALOG_GROUP),
                default_status=dg.DefaultSensorStatus(config.automation.default_status.upper()),
                description=(
                    "Carries a materialization of an upstream asset down the chain, for any date, "
                    "and refreshes the catalog after any sync."
                ),
            ),
        ],
        schedules=[
            build_daily_marketplace_schedule(config, sync_job),
            build_cron_schedule(
                "marketplace_freshness_schedule",
                freshness_job,
                config.freshness.check_cron,
                config.freshness.default_status,
                "Checks that each workspace's partition is synced by its deadline.",
            ),
            build_cron_schedule(
                "marketplace_checks_schedule",
                audit_job,
                config.checks.cron,
                config.checks.default_status,
                "Runs every table-wide check, including a full hash of every export.",
            ),
            build_cron_schedule(
                "marketplace_maintenance_schedule",
                maintenance_job,
                housekeeping.cron,
                housekeeping.default_status,
                "Compacts and vacuums the summary tables and removes old export debris.",
            ),
        ],
        resources=build_resources(config),
        # Steps of one partition run one after another; separate step processes would only
        # add seconds of start-up each. Runs stay separate processes, one per partition.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Read the configuration ($MARKETPLACE_CONFIG or marketplace.yaml) when Dagster loads the
    code."""
    definitions = build_definitions(load_config())
    # What loading made (MLflow, Dagster, pandas: millions of objects) lives as long as the
    # process: the collector need not walk it in every full collection, nor at exit (half a
    # second of each run process's exit, measured in docs/benchmarks.md).
    gc.freeze()
    return definitions
