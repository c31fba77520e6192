"""The export/import summary Delta tables: MERGE-only writes that never lose or duplicate a row."""

from __future__ import annotations

import multiprocessing
import traceback
from collections import Counter
from collections.abc import Callable

from deltalake import DeltaTable

from marketplace.summary import (
    EXPORT_SUMMARY,
    IMPORT_SUMMARY,
    SCHEMAS,
    ensure_table,
    merge_rows,
)
from marketplace_tests.testing.driving import export_row
from marketplace_tests.testing.summary_rows import import_row, keys, table_rows

PROCESSES = 8
ROWS_PER_PROCESS = 3
# Generous: eight processes importing deltalake at once on a loaded 2-core machine (make test runs
# two workers) can take a minute to reach the barrier; the race itself is what is tested.
START_TIMEOUT = 180
RESULT_TIMEOUT = 300


def _merge_worker(uri: str, index: int, barrier, results) -> None:
    """One writer process: wait for all the others, then merge its own rows into the shared
    table."""
    workspace = f"ws{index:02d}"
    rows = [export_row(workspace, "model", version) for version in range(1, ROWS_PER_PROCESS + 1)]
    try:
        barrier.wait(timeout=START_TIMEOUT)
        inserted = merge_rows(uri, EXPORT_SUMMARY, rows)
        results.put((index, "ok", inserted))
    # Report everything to the parent, which asserts: even a Rust panic in deltalake (pyo3's
    # PanicException is a BaseException), which would otherwise leave the parent waiting.
    except BaseException:  # noqa: BLE001
        results.put((index, "error", traceback.format_exc()))


def _race(worker: Callable, uri: str) -> list[tuple]:
    """Run `worker(uri, index, barrier, results)` in PROCESSES spawned processes at once; their
    (index, status, detail) outcomes."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [
        context.Process(target=worker, args=(uri, index, barrier, results), daemon=True)
        for index in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=RESULT_TIMEOUT) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    return outcomes


def _expected_keys() -> Counter:
    return Counter(
        {
            (f"ws{index:02d}", "model", version): 1
            for index in range(PROCESSES)
            for version in range(1, ROWS_PER_PROCESS + 1)
        }
    )


def _assert_every_writer_landed_exactly_once(uri: str, outcomes: list[tuple]) -> None:
    errors = [detail for _, status, detail in outcomes if status != "ok"]
    assert not errors, "\n\n".join(errors)
    assert sorted(inserted for _, _, inserted in outcomes) == [ROWS_PER_PROCESS] * PROCESSES
    stored = table_rows(uri)
    assert len(stored) == PROCESSES * ROWS_PER_PROCESS
    assert keys(stored) == _expected_keys()


def test_concurrent_writers_racing_to_create_a_new_table_lose_no_row(tmp_path):
    uri = str(tmp_path / "brand-new" / EXPORT_SUMMARY)

    outcomes = _race(_merge_worker, uri)

    _assert_every_writer_landed_exactly_once(uri, outcomes)


def test_concurrent_writers_into_an_existing_table_lose_no_row(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    merge_rows(uri, EXPORT_SUMMARY, [export_row("seed", "model", 1)])

    outcomes = _race(_merge_worker, uri)

    errors = [detail for _, status, detail in outcomes if status != "ok"]
    assert not errors, "\n\n".join(errors)
    stored = table_rows(uri)
    assert len(stored) == PROCESSES * ROWS_PER_PROCESS + 1
    assert keys(stored) == _expected_keys() + Counter({("seed", "model", 1): 1})


def _ensure_worker(uri: str, index: int, barrier, results) -> None:
    """One process racing the others to create the same table."""
    try:
        barrier.wait(timeout=START_TIMEOUT)
        table = ensure_table(uri, IMPORT_SUMMARY)
        results.put((index, "ok", table.version()))
    except BaseException:  # noqa: BLE001 - as in _merge_worker: the parent hears of any failure
        results.put((index, "error", traceback.format_exc()))


def test_concurrent_ensure_table_on_a_new_path_all_succeed(tmp_path):
    uri = str(tmp_path / "racing" / IMPORT_SUMMARY)

    outcomes = _race(_ensure_worker, uri)

    errors = [detail for _, status, detail in outcomes if status != "ok"]
    assert not errors, "\n\n".join(errors)
    data = DeltaTable(uri).to_pyarrow_table()
    assert data.num_rows == 0
    assert data.schema.names == SCHEMAS[IMPORT_SUMMARY].names
    # The table is usable afterwards.
    assert merge_rows(uri, IMPORT_SUMMARY, [import_row("dev01", "churn", 1)]) == 1
