"""Housekeeping of what the assets write: the Delta tables compacted and vacuumed (each observed on
its asset), and old export debris removed. An op job on its own schedule, not an asset: it
changes no asset's contents."""

import dagster as dg

from marketplace import summary
from marketplace.config import HousekeepingConfig
from marketplace.housekeeping import maintain_table, remove_debris
from marketplace_dagster.keys import CATALOG
from marketplace_dagster.resources import ExternalStorageResource, explained


def build_maintenance_job(housekeeping: HousekeepingConfig) -> dg.JobDefinition:
    """The housekeeping job; its retentions come from the configuration's `housekeeping` section
    (and can be changed for one run in the launchpad)."""

    @dg.op(
        description="Compact and vacuum the Delta tables; remove export debris past its retention.",
        config_schema={
            "debris_retention_hours": dg.Field(
                float, default_value=float(housekeeping.debris_retention_hours)
            ),
            "vacuum_retention_hours": dg.Field(
                int, default_value=housekeeping.vacuum_retention_hours
            ),
        },
    )
    def housekeep_external_storage(
        context: dg.OpExecutionContext, external_storage: ExternalStorageResource
    ):
        settings = context.op_config
        with explained():
            for table in (*summary.TABLES, summary.CATALOG):
                done = maintain_table(
                    external_storage.table_uri(table),
                    table,
                    settings["vacuum_retention_hours"],
                    external_storage.delta_options(),
                )
                context.log.info(
                    f"{table}: "
                    + (
                        f"compacted {done.files_compacted} file(s), vacuumed {done.files_vacuumed}"
                        if done.exists
                        else "no table yet"
                    )
                )
                context.log_event(
                    dg.AssetObservation(
                        asset_key=CATALOG
                        if table == summary.CATALOG
                        else dg.AssetKey(["external_storage", table]),
                        metadata={
                            "files_compacted": done.files_compacted,
                            "files_vacuumed": done.files_vacuumed,
                        },
                    )
                )
            debris = remove_debris(external_storage.storage, settings["debris_retention_hours"])
        context.log.info(
            f"removed {len(debris.removed)} debris folder(s); kept {debris.kept_young} younger "
            "than the retention"
        )
        for path in debris.removed:
            context.log.info(f"removed {path}")

    @dg.job(
        name="marketplace_maintenance_job",
        description="Housekeeping: compact and vacuum the Delta tables, remove old export debris.",
    )
    def marketplace_maintenance_job():
        housekeep_external_storage()

    return marketplace_maintenance_job
