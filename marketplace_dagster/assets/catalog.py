"""marketplace/catalog: the whole marketplace at once, unpartitioned, refreshed after any sync."""

import dagster as dg

from marketplace import summary
from marketplace.catalog import build_catalog
from marketplace.telemetry import registry_time
from marketplace_dagster.keys import CATALOG, CATALOG_GROUP, REGISTRATION
from marketplace_dagster.reporting import catalog_table, table_metadata
from marketplace_dagster.resources import (
    ExternalStorageResource,
    MarketplaceRegistryResource,
    WorkspaceRegistriesResource,
    explained,
)

# After a sync: any registration partition updated, once no sync step is running any more.
CATALOG_REFRESH = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after any sync")


@dg.asset(
    key=CATALOG,
    deps=[REGISTRATION],
    group_name=CATALOG_GROUP,
    kinds={"delta", "mlflow", "html"},
    automation_condition=CATALOG_REFRESH,
)
def catalog(
    context: dg.AssetExecutionContext,
    external_storage: ExternalStorageResource,
    workspaces: WorkspaceRegistriesResource,
    marketplace: MarketplaceRegistryResource,
) -> dg.MaterializeResult:
    """The marketplace catalog: one row per marketplace model in the `catalog` Delta table (its
    status, versions, description, signature, metrics, owner, load URI) and `catalog.html`, a
    searchable page of every model card that opens from disk."""
    with explained(), registry_time() as spent:
        with external_storage.lock("catalog"):
            built = build_catalog(
                marketplace.client(),
                marketplace=marketplace,
                storage=external_storage,
                sources=workspaces,
            )
        context.log.info(
            f"catalog: {len(built.rows)} model(s), {built.inserted} new, {built.updated} changed; "
            f"page at {built.page_location}"
        )
        return dg.MaterializeResult(
            metadata={
                "models": len(built.rows),
                "rows_inserted": built.inserted,
                "rows_updated": built.updated,
                "page": dg.MetadataValue.path(built.page_location),
                "page_bytes": built.page_bytes,
                "marketplace": catalog_table(built, marketplace),
                **spent.metadata(),
                **table_metadata(external_storage, summary.CATALOG),
            }
        )
