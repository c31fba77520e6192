"""The run queue of the production instance (deploy/dagster.yaml): Dagster's queued run
coordinator, with every run of one workspace tagged `marketplace/workspace` before it is queued.

The sensor and the schedule set that tag themselves; a backfill's runs carry only Dagster's
per-partition tags, so the queue's one-run-per-workspace limit would not see them.
"""

from __future__ import annotations

from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext

from marketplace_dagster.partitions import PARTITION_WORKSPACE_TAG, WORKSPACE_TAG


def workspace_tags(tags: dict[str, str]) -> dict[str, str]:
    """The tag to add to a run with these tags: its partition's workspace, where it lacks one."""
    workspace = tags.get(PARTITION_WORKSPACE_TAG)
    if not workspace or tags.get(WORKSPACE_TAG) == workspace:
        return {}
    return {WORKSPACE_TAG: workspace}


class WorkspaceRunCoordinator(QueuedRunCoordinator):
    """`QueuedRunCoordinator` whose runs all carry `marketplace/workspace` (its config is the
    same)."""

    def submit_run(self, context: SubmitRunContext) -> object:
        run = context.dagster_run
        added = workspace_tags(dict(run.tags))
        if added:
            self._instance.add_run_tags(run.run_id, added)
            run = self._instance.get_run_by_id(run.run_id) or run
            context = SubmitRunContext(run, context.workspace)
        return super().submit_run(context)
