"""The marketplace code location: everything Dagster loads, assembled from the configuration file."""

from __future__ import annotations

import dagster as dg

from marketplace.assets import build_sync_assets
from marketplace.config import MarketplaceConfig, load_config
from marketplace.jobs import build_marketplace_sync_job
from marketplace.partitions import build_marketplace_partitions_def
from marketplace.resources import build_resources


def build_definitions(config: MarketplaceConfig) -> dg.Definitions:
    partitions_def = build_marketplace_partitions_def(config)
    return dg.Definitions(
        assets=build_sync_assets(partitions_def),
        jobs=[build_marketplace_sync_job()],
        resources=build_resources(config),
        # Steps of one partition run one after another; separate step processes would only
        # add seconds of start-up each. Runs stay separate processes, one per partition.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Read the configuration ($MARKETPLACE_CONFIG or marketplace.yaml) when Dagster loads the code."""
    return build_definitions(load_config())
