"""`dagster ... -m marketplace.definitions` keeps working: the code location now lives in the
Dagster package, `marketplace_dagster.definitions`. The only module of `marketplace` that
imports Dagster, and only when named."""

from marketplace_dagster.definitions import build_definitions, defs  # noqa: F401
