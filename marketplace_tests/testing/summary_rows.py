"""Summary table tests' shared pieces: an import summary row (export_row is in driving.py), a
table's rows straight from Delta, and the rows' keys."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from deltalake import DeltaTable

from marketplace.summary import KEY_COLUMNS
from marketplace_tests.testing.driving import DAY_1


def import_row(workspace: str, model_name: str, version: int, day: dt.date = DAY_1) -> dict:
    return {
        "workspace": workspace,
        "model_name": model_name,
        "version": version,
        "marketplace_model": f"{workspace}.{model_name}",
        "marketplace_version": version,
        "import_date": day,
        "imported_at": dt.datetime.combine(day, dt.time(6, 0), tzinfo=dt.UTC),
        "checksum": f"{version:064x}",
        "run_id": None,
    }


def table_rows(uri: str) -> list[dict]:
    """The table's rows read straight from Delta, not through read_rows (support.table_rows reads
    through them)."""
    return DeltaTable(uri).to_pyarrow_table().to_pylist()


def keys(rows) -> Counter:
    return Counter(tuple(row[column] for column in KEY_COLUMNS) for row in rows)
