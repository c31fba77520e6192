"""Schedules: the seed's daily sync (the safety net), the audits and the housekeeping."""

import dagster as dg

from marketplace.config import MarketplaceConfig
from marketplace_dagster.partitions import WORKSPACE_TAG, partition_key


def _status(value: str) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus(value.upper())


def build_daily_marketplace_schedule(config: MarketplaceConfig, job) -> dg.ScheduleDefinition:
    workspaces = [w.name for w in config.workspaces]

    @dg.schedule(
        name="daily_marketplace_schedule",
        job=job,
        cron_schedule=config.schedule.cron,
        execution_timezone="UTC",
        default_status=_status(config.schedule.default_status),
        description="Today's partition of every workspace: export, record, import, register.",
    )
    def daily_marketplace_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        day = context.scheduled_execution_time.date()
        return [
            dg.RunRequest(
                run_key=f"daily:{day.isoformat()}:{workspace}",
                partition_key=partition_key(day, workspace),
                tags={
                    "marketplace/trigger": "daily_marketplace_schedule",
                    WORKSPACE_TAG: workspace,
                },
            )
            for workspace in workspaces
        ]

    return daily_marketplace_schedule


def build_cron_schedule(
    name: str, job, cron: str, status: str, description: str
) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=_status(status),
        description=description,
    )
