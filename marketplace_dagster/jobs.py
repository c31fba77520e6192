"""Jobs: the sync chain and the audits (the housekeeping job is assets/housekeeping.py)."""

import dagster as dg

from marketplace_dagster.keys import GROUP


def build_marketplace_sync_job(excluded_checks: list[dg.AssetChecksDefinition]):
    return dg.define_asset_job(
        "marketplace_sync_job",
        selection=dg.AssetSelection.groups(GROUP) - dg.AssetSelection.checks(*excluded_checks),
        description=(
            "Export, record, import and register one workspace's production models for one day (a "
            "backfill runs one partition per run)."
        ),
    )


def build_checks_job(name: str, checks: list[dg.AssetChecksDefinition], description: str):
    return dg.define_asset_job(
        name, selection=dg.AssetSelection.checks(*checks), description=description
    )
