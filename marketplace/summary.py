"""The marketplace's Delta tables: export and import summaries and production history, written
as insert-only MERGEs on each table's key so that no row is ever lost or written twice; and the
catalog, one row per marketplace model, updated in place only where a row's content changed."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, Field
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

EXPORT_SUMMARY = "export_summary"
IMPORT_SUMMARY = "import_summary"
PRODUCTION_HISTORY = "production_history"
TABLES = (EXPORT_SUMMARY, IMPORT_SUMMARY, PRODUCTION_HISTORY)
CATALOG = "catalog"
KEY_COLUMNS = ("workspace", "model_name", "version")
# A history row is the n-th change of one marketplace model: two runs that record the same
# change from the same state write the same key, so one row is kept.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    EXPORT_SUMMARY: KEY_COLUMNS,
    IMPORT_SUMMARY: KEY_COLUMNS,
    PRODUCTION_HISTORY: ("marketplace_name", "sequence"),
    CATALOG: ("marketplace_name",),
}

_TYPES = {
    "string": pa.string(),
    "bigint": pa.int64(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def _schema(ddl: str) -> pa.Schema:
    """A schema from Spark-style DDL (`name type [not null], ...`), as Databricks SQL shows it."""
    fields = []
    for column in ddl.split(","):
        name, kind, *rest = column.split()
        fields.append(
            pa.field(name, _TYPES[kind], nullable=[w.lower() for w in rest] != ["not", "null"])
        )
    return pa.schema(fields)


# The key of both summaries: one row per source version.
_VERSION_KEY = "workspace string not null, model_name string not null, version bigint not null"

SCHEMAS: dict[str, pa.Schema] = {
    EXPORT_SUMMARY: _schema(
        f"{_VERSION_KEY}, run_id string, source string, export_date date not null, exported_at "
        "timestamp not null, export_path string not null, checksum string not null, size_bytes "
        "bigint not null, file_count bigint"
    ),
    IMPORT_SUMMARY: _schema(
        f"{_VERSION_KEY}, marketplace_model string not null, marketplace_version bigint not null, "
        "import_date date not null, imported_at timestamp not null, checksum string not null, "
        "run_id string"
    ),
    PRODUCTION_HISTORY: _schema(
        "workspace string not null, model_name string not null, marketplace_name string not null, "
        "sequence bigint not null, change string not null, source_version bigint, "
        "previous_source_version bigint, marketplace_version bigint, changed_at timestamp not "
        "null, run_id string, snapshot_date date"
    ),
    # signature, metrics and source_tags hold JSON.
    CATALOG: _schema(
        "marketplace_name string not null, workspace string not null, model_name string not null, "
        "status string not null, source_version bigint, marketplace_version bigint, alias string, "
        "description string, flavors string, signature string, metrics string, requirements "
        "string, size_bytes bigint, checksum string, owner string, source_tags string, "
        "first_synced_at timestamp not null, updated_at timestamp not null, load_uri string, held "
        "string"
    ),
}

MAX_COMMIT_ATTEMPTS = 12


def _retrying(action, *, what: str):
    """Run a Delta commit, retrying conflicts with concurrent writers (bounded, jittered)."""
    for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
        try:
            return action()
        except (CommitFailedError, DeltaError) as exc:
            transient = (
                isinstance(exc, CommitFailedError)
                or "conflict" in str(exc).lower()
                or "already exists" in str(exc).lower()
            )
            if not transient or attempt == MAX_COMMIT_ATTEMPTS:
                raise RuntimeError(
                    f"{what}: commit failed after {attempt} attempt(s): {exc}"
                ) from exc
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def ensure_table(
    uri: str, name: str, storage_options: Mapping[str, str] | None = None
) -> DeltaTable:
    """Open the table, creating it with its schema if it does not exist yet (safe under races)."""
    options = dict(storage_options or {})

    def open_or_create() -> DeltaTable:
        try:
            table = DeltaTable(uri, storage_options=options)
        except TableNotFoundError:
            return DeltaTable.create(
                uri, SCHEMAS[name], mode="ignore", name=name, storage_options=options
            )
        # A table written by an older release gains the columns added since (nullable, empty).
        present = {f.name for f in table.schema().fields}
        missing = [f for f in SCHEMAS[name] if f.name not in present]
        if missing:
            table.alter.add_columns([Field.from_arrow(f) for f in missing])
            table = DeltaTable(uri, storage_options=options)
        return table

    return _retrying(open_or_create, what=f"creating {uri}")


def _dedupe(rows: Sequence[Mapping], key: Sequence[str]) -> list[Mapping]:
    unique: dict[tuple, Mapping] = {}
    for row in rows:
        unique.setdefault(tuple(row[column] for column in key), row)
    return list(unique.values())


def merge_rows(
    uri: str, name: str, rows: Sequence[Mapping], storage_options: Mapping[str, str] | None = None
) -> int:
    """Insert the rows whose key (TABLE_KEYS) is not in the table yet.

    Existing rows are never rewritten or deleted, so a re-run with nothing new changes nothing
    and one partition's write never touches another's rows. Returns the number inserted.
    """
    key = TABLE_KEYS[name]
    rows = _dedupe(rows, key)
    if not rows:
        ensure_table(uri, name, storage_options)
        return 0
    source = pa.Table.from_pylist(list(rows), schema=SCHEMAS[name])
    predicate = " AND ".join(f"t.{column} = s.{column}" for column in key)

    def merge() -> int:
        table = ensure_table(uri, name, storage_options)
        metrics = (
            table.merge(source, predicate=predicate, source_alias="s", target_alias="t")
            .when_not_matched_insert_all()
            .execute()
        )
        return int(metrics.get("num_target_rows_inserted", 0))

    return _retrying(merge, what=f"merging into {uri}")


def upsert_rows(
    uri: str,
    name: str,
    rows: Sequence[Mapping],
    storage_options: Mapping[str, str] | None = None,
    *,
    times: Sequence[str] = ("first_synced_at", "updated_at"),
) -> dict[str, int]:
    """Insert new keys; update a row only where a column other than `times` differs, keeping its
    first `times` column (when it was first written). Returns the rows inserted and updated."""
    key = TABLE_KEYS[name]
    rows = _dedupe(rows, key)
    if not rows:
        ensure_table(uri, name, storage_options)
        return {"inserted": 0, "updated": 0}
    source = pa.Table.from_pylist(list(rows), schema=SCHEMAS[name])
    content = [f.name for f in SCHEMAS[name] if f.name not in times and f.name not in key]
    changed = " OR ".join(f"NOT (t.{c} <=> s.{c})" for c in content)
    updates = {c: f"s.{c}" for c in [*content, *times[1:]]}

    def merge() -> dict[str, int]:
        target = ensure_table(uri, name, storage_options)
        metrics = (
            target.merge(
                source,
                predicate=" AND ".join(f"t.{c} = s.{c}" for c in key),
                source_alias="s",
                target_alias="t",
            )
            .when_matched_update(updates=updates, predicate=changed)
            .when_not_matched_insert_all()
            .execute()
        )
        return {
            "inserted": int(metrics.get("num_target_rows_inserted", 0)),
            "updated": int(metrics.get("num_target_rows_updated", 0)),
        }

    return _retrying(merge, what=f"merging into {uri}")


def read_rows(
    uri: str,
    storage_options: Mapping[str, str] | None = None,
    *,
    workspace: str | None = None,
    columns: Sequence[str] | None = None,
) -> list[dict]:
    """Every row of the table (optionally of one workspace, only some columns); [] if no table.

    One workspace's rows are read with the predicate in the scan (delta-rs's DataFusion skips
    files whose statistics rule the workspace out), not the whole table filtered afterwards."""
    try:
        table = DeltaTable(uri, storage_options=dict(storage_options or {}))
    except TableNotFoundError:
        return []
    if workspace is None:
        return table.to_pyarrow_table(columns=list(columns) if columns else None).to_pylist()
    # Files whose statistics rule the workspace out are not read. The rows are compared as
    # strings: MERGE writes string columns as Parquet string_view, which pyarrow's scan filter
    # cannot compare with the table's string type as they are.
    files = table.to_pyarrow_dataset(file_pruning_predicate=[("workspace", "=", workspace)])
    return files.to_table(
        columns=list(columns) if columns else None,
        filter=pc.field("workspace").cast(pa.string()) == workspace,
    ).to_pylist()


def row_count(uri: str, storage_options: Mapping[str, str] | None = None) -> int:
    """The table's rows, from its log's file statistics (no data read); 0 if no table."""
    try:
        table = DeltaTable(uri, storage_options=dict(storage_options or {}))
    except TableNotFoundError:
        return 0
    counts = pa.table(table.get_add_actions(flatten=True)).column("num_records")
    if counts.null_count:  # a file written without statistics: count its rows
        return table.to_pyarrow_table(columns=[table.schema().fields[0].name]).num_rows
    return int(pc.sum(counts).as_py() or 0)
