"""The export/import summary Delta tables: MERGE-only writes that never lose or duplicate a row."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pyarrow as pa
from deltalake import DeltaTable

from marketplace.summary import (
    EXPORT_SUMMARY,
    IMPORT_SUMMARY,
    SCHEMAS,
    ensure_table,
    merge_rows,
    read_rows,
)
from marketplace_tests.testing.driving import DAY_1, export_row
from marketplace_tests.testing.summary_rows import import_row, keys, table_rows

DAY_2 = dt.date(2026, 11, 3)


def normalise(rows) -> list[tuple]:
    return sorted(tuple(sorted(row.items())) for row in rows)


def test_first_write_creates_table_and_inserts_all_rows(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    rows = [
        export_row("dev01", "churn", 1),
        export_row("dev01", "churn", 2),
        export_row("dev01", "fraud", 1),
    ]

    assert merge_rows(uri, EXPORT_SUMMARY, rows) == 3

    stored = table_rows(uri)
    assert len(stored) == 3
    assert normalise(stored) == normalise(rows)


def test_first_write_stores_date32_and_utc_microsecond_timestamps(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    merge_rows(uri, EXPORT_SUMMARY, [export_row("dev01", "churn", 1)])

    schema = DeltaTable(uri).to_pyarrow_table().schema
    assert schema.field("export_date").type == pa.date32()
    assert schema.field("exported_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("version").type == pa.int64()
    stored = table_rows(uri)[0]
    assert stored["export_date"] == DAY_1
    assert stored["exported_at"] == dt.datetime(2026, 11, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)


def test_import_summary_stores_date32_and_utc_timestamps(tmp_path):
    uri = str(tmp_path / IMPORT_SUMMARY)
    assert merge_rows(uri, IMPORT_SUMMARY, [import_row("dev02", "churn", 4)]) == 1

    data = DeltaTable(uri).to_pyarrow_table()
    assert data.schema.field("import_date").type == pa.date32()
    assert data.schema.field("imported_at").type == pa.timestamp("us", tz="UTC")
    assert data.to_pylist()[0]["marketplace_model"] == "dev02.churn"


def test_non_utc_timestamp_is_stored_as_the_same_instant_in_utc(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    paris = dt.timezone(dt.timedelta(hours=1))
    merge_rows(
        uri,
        EXPORT_SUMMARY,
        [export_row("dev01", "churn", 1, exported_at=dt.datetime(2026, 11, 2, 4, 0, tzinfo=paris))],
    )

    assert table_rows(uri)[0]["exported_at"] == dt.datetime(2026, 11, 2, 3, 0, tzinfo=dt.UTC)


def test_ensure_table_creates_an_empty_table_with_the_schema(tmp_path):
    uri = str(tmp_path / IMPORT_SUMMARY)
    table = ensure_table(uri, IMPORT_SUMMARY)

    assert table.version() == 0
    data = DeltaTable(uri).to_pyarrow_table()
    assert data.num_rows == 0
    assert data.schema.names == SCHEMAS[IMPORT_SUMMARY].names
    # Opening again does not create a new version.
    assert ensure_table(uri, IMPORT_SUMMARY).version() == 0


def test_merging_no_rows_creates_the_table_and_inserts_nothing(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    assert merge_rows(uri, EXPORT_SUMMARY, []) == 0
    assert table_rows(uri) == []


def test_partitions_written_one_after_another_lose_no_row(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    a_day1 = [export_row("dev01", "churn", 1), export_row("dev01", "fraud", 1)]
    b_day1 = [
        export_row("dev02", "churn", 1),
        export_row("dev02", "churn", 2),
        export_row("dev02", "ltv", 7),
    ]
    a_day2 = [export_row("dev01", "churn", 2, DAY_2)]

    assert merge_rows(uri, EXPORT_SUMMARY, a_day1) == 2
    assert merge_rows(uri, EXPORT_SUMMARY, b_day1) == 3
    assert merge_rows(uri, EXPORT_SUMMARY, a_day2) == 1

    stored = table_rows(uri)
    assert len(stored) == 6
    assert keys(stored) == keys(a_day1 + b_day1 + a_day2)
    assert set(keys(stored).values()) == {1}
    per_workspace = Counter(row["workspace"] for row in stored)
    assert per_workspace == {"dev01": 3, "dev02": 3}
    per_date = Counter((row["workspace"], row["export_date"]) for row in stored)
    assert per_date == {("dev01", DAY_1): 2, ("dev02", DAY_1): 3, ("dev01", DAY_2): 1}


def test_rerun_with_the_same_rows_inserts_nothing_and_leaves_rows_unchanged(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    rows = [export_row("dev01", "churn", 1), export_row("dev01", "churn", 2)]
    merge_rows(uri, EXPORT_SUMMARY, rows)
    before = table_rows(uri)

    assert merge_rows(uri, EXPORT_SUMMARY, rows) == 0

    after = table_rows(uri)
    assert len(after) == 2
    assert normalise(after) == normalise(before)


def test_rerun_never_rewrites_an_existing_row(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    merge_rows(uri, EXPORT_SUMMARY, [export_row("dev01", "churn", 1, checksum="a" * 64)])

    assert (
        merge_rows(uri, EXPORT_SUMMARY, [export_row("dev01", "churn", 1, checksum="b" * 64)]) == 0
    )

    stored = table_rows(uri)
    assert [row["checksum"] for row in stored] == ["a" * 64]


def test_rerun_with_a_subset_of_rows_deletes_nothing(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    rows = [export_row("dev01", "churn", v) for v in range(1, 6)]
    merge_rows(uri, EXPORT_SUMMARY, rows)

    assert merge_rows(uri, EXPORT_SUMMARY, rows[:2]) == 0

    stored = table_rows(uri)
    assert len(stored) == 5
    assert keys(stored) == keys(rows)


def test_rerun_with_old_and_new_rows_inserts_only_the_new(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    merge_rows(uri, EXPORT_SUMMARY, [export_row("dev01", "churn", 1)])

    assert (
        merge_rows(
            uri, EXPORT_SUMMARY, [export_row("dev01", "churn", 1), export_row("dev01", "churn", 2)]
        )
        == 1
    )

    assert keys(table_rows(uri)) == Counter({("dev01", "churn", 1): 1, ("dev01", "churn", 2): 1})


def test_duplicate_keys_in_one_batch_are_inserted_once(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    rows = [
        export_row("dev01", "churn", 1, checksum="a" * 64),
        export_row("dev01", "churn", 1, checksum="b" * 64),
        export_row("dev01", "churn", 2),
        export_row("dev01", "churn", 2),
    ]

    assert merge_rows(uri, EXPORT_SUMMARY, rows) == 2

    stored = table_rows(uri)
    assert len(stored) == 2
    assert set(keys(stored).values()) == {1}
    # The first occurrence wins.
    assert next(r for r in stored if r["version"] == 1)["checksum"] == "a" * 64


def test_same_model_and_version_in_two_workspaces_are_two_rows(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    assert (
        merge_rows(
            uri, EXPORT_SUMMARY, [export_row("dev01", "churn", 1), export_row("dev02", "churn", 1)]
        )
        == 2
    )
    assert len(table_rows(uri)) == 2


def test_read_rows_on_a_missing_table_is_empty(tmp_path):
    assert read_rows(str(tmp_path / "nothing-here")) == []


def test_read_rows_returns_every_row_and_filters_by_workspace(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    merge_rows(
        uri,
        EXPORT_SUMMARY,
        [
            export_row("dev01", "churn", 1),
            export_row("dev01", "churn", 2),
            export_row("dev02", "churn", 1),
        ],
    )

    assert keys(read_rows(uri)) == keys(table_rows(uri))
    assert len(read_rows(uri)) == 3
    dev01 = read_rows(uri, workspace="dev01")
    assert sorted(row["version"] for row in dev01) == [1, 2]
    assert {row["workspace"] for row in dev01} == {"dev01"}
    assert [row["workspace"] for row in read_rows(uri, workspace="dev02")] == ["dev02"]
    assert read_rows(uri, workspace="dev99") == []
