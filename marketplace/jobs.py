"""Jobs: the sync chain, the audits, and the housekeeping of external storage."""


import dagster as dg

from marketplace import summary
from marketplace.assets import GROUP
from marketplace.housekeeping import maintain_table, remove_debris
from marketplace.resources import ExternalStorageResource


def build_marketplace_sync_job(excluded_checks: list[dg.AssetChecksDefinition]):
    return dg.define_asset_job(
        "marketplace_sync_job",
        selection=dg.AssetSelection.groups(GROUP) - dg.AssetSelection.checks(*excluded_checks),
        description="Export, record, import and register one workspace's production models for one day "
        "(a backfill: all workspaces of a date in one run).",
    )


def build_checks_job(name: str, checks: list[dg.AssetChecksDefinition], description: str):
    return dg.define_asset_job(name, selection=dg.AssetSelection.checks(*checks), description=description)


class HousekeepingConfig(dg.Config):
    debris_retention_hours: float = 24
    vacuum_retention_hours: int = 168


@dg.op(description="Compact and vacuum the Delta tables; remove export debris past its retention.")
def housekeep_external_storage(
    context: dg.OpExecutionContext, config: HousekeepingConfig, external_storage: ExternalStorageResource
) -> dg.Nothing:
    for table in summary.TABLES:
        done = maintain_table(
            external_storage.table_uri(table), table, config.vacuum_retention_hours, external_storage.delta_options()
        )
        context.log.info(
            f"{table}: {'compacted ' + str(done.files_compacted) + ' file(s), vacuumed ' + str(done.files_vacuumed) if done.exists else 'no table yet'}"
        )
        context.log_event(
            dg.AssetObservation(
                asset_key=dg.AssetKey(["external_storage", table]),
                metadata={"files_compacted": done.files_compacted, "files_vacuumed": done.files_vacuumed},
            )
        )
    debris = remove_debris(external_storage.storage, config.debris_retention_hours)
    context.log.info(f"removed {len(debris.removed)} debris folder(s); kept {debris.kept_young} younger than the retention")
    for path in debris.removed:
        context.log.info(f"removed {path}")


def build_maintenance_job(debris_retention_hours: float, vacuum_retention_hours: int) -> dg.JobDefinition:
    @dg.job(
        name="marketplace_maintenance_job",
        description="Housekeeping: compact and vacuum the summary tables, remove old export debris.",
        config={
            "ops": {
                "housekeep_external_storage": {
                    "config": {
                        "debris_retention_hours": debris_retention_hours,
                        "vacuum_retention_hours": vacuum_retention_hours,
                    }
                }
            }
        },
    )
    def marketplace_maintenance_job():
        housekeep_external_storage()

    return marketplace_maintenance_job
