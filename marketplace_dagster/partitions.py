"""The partitioning every marketplace asset shares: one workspace on one day."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from marketplace.config import MarketplaceConfig

DATE_DIMENSION = "date"
WORKSPACE_DIMENSION = "workspace"
# Every run of one workspace carries it (the sensor, the schedule; a backfill's through the
# production run queue, run_queue.py); the queue runs one per workspace at a time.
WORKSPACE_TAG = "marketplace/workspace"
PARTITION_WORKSPACE_TAG = f"dagster/partition/{WORKSPACE_DIMENSION}"


def build_marketplace_partitions_def(config: MarketplaceConfig) -> dg.MultiPartitionsDefinition:
    """Keys read `2026-11-25|dev01`; the daily dimension includes today (UTC)."""
    return dg.MultiPartitionsDefinition(
        {
            DATE_DIMENSION: dg.DailyPartitionsDefinition(
                start_date=config.start_date.isoformat(), end_offset=1, timezone="UTC"
            ),
            WORKSPACE_DIMENSION: dg.StaticPartitionsDefinition([w.name for w in config.workspaces]),
        }
    )


def partition_key(day: dt.date, workspace: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({DATE_DIMENSION: day.isoformat(), WORKSPACE_DIMENSION: workspace})


def split_partition_key(key: str | dg.MultiPartitionKey) -> tuple[dt.date, str]:
    """(day, workspace) of a multi-partition key, given as an object or as `date|workspace`."""
    if isinstance(key, dg.MultiPartitionKey):
        dims = key.keys_by_dimension
    else:
        day, workspace = key.split("|", 1)
        dims = {DATE_DIMENSION: day, WORKSPACE_DIMENSION: workspace}
    return dt.date.fromisoformat(dims[DATE_DIMENSION]), dims[WORKSPACE_DIMENSION]


def partition_tags(day: dt.date, workspace: str) -> dict[str, str]:
    """The tags a run of one (date, workspace) carries when the sensor or schedule requests it
    (for `dagster job execute --tags`, which takes tags, not a partition key)."""
    key = partition_key(day, workspace)
    return {
        "dagster/partition": str(key),
        f"dagster/partition/{DATE_DIMENSION}": day.isoformat(),
        PARTITION_WORKSPACE_TAG: workspace,
        WORKSPACE_TAG: workspace,
    }
