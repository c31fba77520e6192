"""Jobs: the whole sync chain for one (date, workspace) partition per run."""

from __future__ import annotations

import dagster as dg

from marketplace.assets import GROUP


def build_marketplace_sync_job() -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        "marketplace_sync_job",
        selection=dg.AssetSelection.groups(GROUP),
        description="Export, record, import and register one workspace's production models for one day.",
    )
