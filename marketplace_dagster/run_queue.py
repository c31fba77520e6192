"""The run queue of the production instance (deploy/dagster.yaml): Dagster's queued run
coordinator, with every run of one workspace tagged `marketplace/workspace` before it is queued.

The sensor and the schedule set that tag themselves. A backfill's runs carry only Dagster's
partition-range tags (the assets backfill a range per run), so neither the one-run-per-workspace
limit nor a filter by workspace would see them without it.
"""

from __future__ import annotations

from dagster import DagsterRun
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from marketplace_dagster.partitions import (
    PARTITION_WORKSPACE_TAG,
    WORKSPACE_TAG,
    split_partition_key,
)


def run_workspace(tags: dict[str, str]) -> str | None:
    """The one workspace a run syncs: its partition's, or its partition range's where the range
    stays within one workspace; None for another run (the catalog's) or one over several."""
    if tags.get(PARTITION_WORKSPACE_TAG):
        return tags[PARTITION_WORKSPACE_TAG]
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if not start or not end:
        return None
    try:
        workspaces = {split_partition_key(start)[1], split_partition_key(end)[1]}
    except (ValueError, KeyError):  # not our date|workspace keys
        return None
    return workspaces.pop() if len(workspaces) == 1 else None


def workspace_tags(tags: dict[str, str]) -> dict[str, str]:
    """The tag to add to a run with these tags: its workspace, where it lacks (or misstates) it."""
    workspace = run_workspace(tags)
    if not workspace or tags.get(WORKSPACE_TAG) == workspace:
        return {}
    return {WORKSPACE_TAG: workspace}


class WorkspaceRunCoordinator(QueuedRunCoordinator):
    """`QueuedRunCoordinator` whose runs all carry `marketplace/workspace` (its config is the
    same)."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        added = workspace_tags(dict(run.tags))
        if added:
            self._instance.add_run_tags(run.run_id, added)
            run = self._instance.get_run_by_id(run.run_id) or run
            context = SubmitRunContext(run, context.workspace)
        return super().submit_run(context)
