"""The names the marketplace shows Dagster: asset keys, the group, and check names."""

import dagster as dg

GROUP = "marketplace_sync"
PRODUCTION_MODELS = dg.AssetKey(["workspaces", "production_models"])
EXPORTS = dg.AssetKey(["external_storage", "exports"])
EXPORT_SUMMARY = dg.AssetKey(["external_storage", "export_summary"])
IMPORTS = dg.AssetKey(["marketplace", "imports"])
IMPORT_SUMMARY = dg.AssetKey(["external_storage", "import_summary"])
REGISTRATION = dg.AssetKey(["marketplace", "registered_models"])
CHAIN = [PRODUCTION_MODELS, EXPORTS, EXPORT_SUMMARY, IMPORTS, IMPORT_SUMMARY, REGISTRATION]
# The whole marketplace at once: unpartitioned, refreshed after any sync.
CATALOG_GROUP = "marketplace_catalog"
CATALOG = dg.AssetKey(["marketplace", "catalog"])

IMPORT_LOADS_CHECK = "newest_import_loads_and_predicts"
EXPORT_SUMMARY_UNIQUE = "export_summary_has_unique_keys"
IMPORT_SUMMARY_UNIQUE = "import_summary_has_unique_keys"
EXPORTS_MATCH_MANIFESTS = "exports_match_manifests"
PRODUCTION_VERSIONS_SYNCED = "production_versions_synced"
MARKETPLACE_MATCHES_SOURCES = "marketplace_matches_sources"
PARTITIONS_FRESH = "todays_partitions_synced_by_deadline"
NO_STRAY_EXPORTS = "no_stray_exports"
EXPORTS_SIGNED_AND_CLEAN = "exports_signed_and_clean"
GATE_PASSED = "gate_passed"
APPROVALS_PENDING = "approvals_pending"
SOURCE_WEBHOOKS_REGISTERED = "source_webhooks_registered"
# The metadata key that marks an observation of PRODUCTION_MODELS as a webhook event.
DELIVERY_ID = "delivery_id"
