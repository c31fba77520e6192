"""The pieces issue 16's speed rests on, without servers: threads sharing MLflow's process-wide
URIs, the bounded pool, the predicate read of one workspace's summary rows, the log's row count,
and which artifact locations the load check reads in place."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import mlflow
import pytest

from marketplace.loading import _identical_to_export, local_folder
from marketplace.pool import in_pool
from marketplace.registry import process_tracking_uri
from marketplace.summary import EXPORT_SUMMARY, merge_rows, read_rows, row_count
from marketplace_tests.test_summary import export_row


def test_threads_wanting_the_same_uris_run_together_and_others_wait():
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}
    wrong: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        with process_tracking_uri(f"http://{name}.example"):
            with lock:
                inside[name] += 1
                most[name] = max(most[name], inside[name])
                if inside["a"] and inside["b"]:
                    wrong.append("both pairs of URIs in use at once")
            time.sleep(0.05)
            if mlflow.get_tracking_uri() != f"http://{name}.example":
                wrong.append(f"{name} saw {mlflow.get_tracking_uri()}")
            with lock:
                inside[name] -= 1

    before = mlflow.get_tracking_uri()
    threads = [threading.Thread(target=work, args=("ab"[k % 2],)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert most["a"] > 1 and most["b"] > 1  # shared, not one at a time
    assert mlflow.get_tracking_uri() == before


def test_a_thread_alone_may_nest_other_uris_and_gets_its_own_back():
    before = mlflow.get_tracking_uri()
    with process_tracking_uri("http://outer.example"):
        with process_tracking_uri("http://inner.example", "http://registry.example"):
            assert mlflow.get_tracking_uri() == "http://inner.example"
            assert mlflow.get_registry_uri() == "http://registry.example"
        assert mlflow.get_tracking_uri() == "http://outer.example"
        assert mlflow.get_registry_uri() == "http://outer.example"
    assert mlflow.get_tracking_uri() == before


def test_the_pool_keeps_the_order_bounds_the_threads_and_raises_after_all_are_done():
    running, most, lock = [0], [0], threading.Lock()

    def work(item: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return item * 2

    assert in_pool(work, list(range(12)), 3, "t") == [i * 2 for i in range(12)]
    assert 1 < most[0] <= 3
    done: list[int] = []

    def failing(item: int) -> int:
        if item == 1:
            raise ValueError("version 1 failed")
        time.sleep(0.02)
        done.append(item)
        return item

    with pytest.raises(ValueError, match="version 1 failed"):
        in_pool(failing, [0, 1, 2, 3], 2, "t")
    assert sorted(done) == [0, 2, 3]  # the others still ran


def test_one_workspaces_rows_are_read_with_a_predicate_and_counted_from_the_log(tmp_path):
    uri = str(tmp_path / EXPORT_SUMMARY)
    assert read_rows(uri, workspace="a") == [] and row_count(uri) == 0
    merge_rows(uri, EXPORT_SUMMARY, [export_row("a", "m1", 1), export_row("b", "m1", 1)])
    merge_rows(uri, EXPORT_SUMMARY, [export_row("it's", "m2", 3), export_row("a", "m3", 2, dt.date(2026, 11, 3))])
    rows = read_rows(uri, workspace="a")
    assert sorted((r["model_name"], r["version"]) for r in rows) == [("m1", 1), ("m3", 2)]
    assert isinstance(rows[0]["export_date"], dt.date)
    assert [r["model_name"] for r in read_rows(uri, workspace="it's", columns=["model_name"])] == ["m2"]
    assert read_rows(uri, workspace="c") == [] and read_rows(uri, workspace="a' OR '1'='1") == []
    assert row_count(uri) == 4 == len(read_rows(uri))


def test_only_a_folder_on_this_machine_is_read_in_place(tmp_path):
    assert local_folder(str(tmp_path)) == tmp_path
    assert local_folder(tmp_path.as_uri()) == tmp_path
    assert local_folder(str(tmp_path / "missing")) is None
    assert local_folder("relative/path") is None
    for remote in ("s3://bucket/models/m-1/artifacts", "mlflow-artifacts:/1/models/m-1/artifacts",
                   "http://host/artifacts", "file://otherhost/models"):
        assert local_folder(remote) is None


def test_a_copy_hashed_at_import_is_compared_by_size_and_any_other_by_hash(tmp_path):
    export, copy = tmp_path / "export", tmp_path / "copy"
    for folder in (export, copy):
        folder.mkdir()
        (folder / "MLmodel").write_text("flavors:\n  python_function: {}\n")
    (export / "weights.bin").write_bytes(b"a" * 100)
    (copy / "weights.bin").write_bytes(b"b" * 100)  # same size, other bytes
    import hashlib

    reference = {"MLmodel": {"sha256": "x", "size": 1},
                 "weights.bin": {"sha256": hashlib.sha256(b"a" * 100).hexdigest(), "size": 100}}
    assert not _identical_to_export(copy, export, reference)
    assert _identical_to_export(copy, export, reference, hashed_at_import=True)
    (copy / "weights.bin").write_bytes(b"a" * 99)
    assert not _identical_to_export(copy, export, reference, hashed_at_import=True)
    (copy / "extra.txt").write_text("not in the export")
    assert not _identical_to_export(Path(copy), export, reference, hashed_at_import=True)
