"""The pieces issue 16's speed rests on, without servers: threads sharing MLflow's process-wide
URIs, the bounded pool, the predicate read of one workspace's summary rows, the log's row count,
which artifact locations the load check reads in place, the calls the import no longer repeats
(against a real SQLite store), the export marker read from the selection, and the signing
library imported only where it is used."""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.exceptions import MlflowException
from mlflow_export_import.common import mlflow_utils

from marketplace.exports import _ReadOnce
from marketplace.import_upload import _ImportClient
from marketplace.imports import check_name_owner
from marketplace.loading import _identical_to_export, load_and_predict
from marketplace.pool import in_pool
from marketplace.registry import (
    EXPORTED_ON_TAG,
    ProductionVersion,
    is_marked,
    local_folder,
    marker_description,
    process_tracking_uri,
)
from marketplace.sandbox import Sandbox, SandboxSettings
from marketplace.summary import EXPORT_SUMMARY, merge_rows, read_rows, row_count
from marketplace_tests.testing.driving import export_row
from marketplace_tests.testing.support import by_value


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
    merge_rows(
        uri,
        EXPORT_SUMMARY,
        [export_row("it's", "m2", 3), export_row("a", "m3", 2, dt.date(2026, 11, 3))],
    )
    rows = read_rows(uri, workspace="a")
    assert sorted((r["model_name"], r["version"]) for r in rows) == [("m1", 1), ("m3", 2)]
    assert isinstance(rows[0]["export_date"], dt.date)
    assert [r["model_name"] for r in read_rows(uri, workspace="it's", columns=["model_name"])] == [
        "m2"
    ]
    assert read_rows(uri, workspace="c") == [] and read_rows(uri, workspace="a' OR '1'='1") == []
    assert row_count(uri) == 4 == len(read_rows(uri))


def test_only_a_folder_on_this_machine_is_read_in_place(tmp_path):
    assert local_folder(str(tmp_path)) == tmp_path
    assert local_folder(tmp_path.as_uri()) == tmp_path
    assert local_folder(str(tmp_path / "missing")) is None
    assert local_folder("relative/path") is None
    for remote in (
        "s3://bucket/models/m-1/artifacts",
        "mlflow-artifacts:/1/models/m-1/artifacts",
        "http://host/artifacts",
        "file://otherhost/models",
    ):
        assert local_folder(remote) is None


def test_a_copy_hashed_at_import_is_compared_by_size_and_any_other_by_hash(tmp_path):
    export, copy = tmp_path / "export", tmp_path / "copy"
    for folder in (export, copy):
        folder.mkdir()
        (folder / "MLmodel").write_text("flavors:\n  python_function: {}\n")
    (export / "weights.bin").write_bytes(b"a" * 100)
    (copy / "weights.bin").write_bytes(b"b" * 100)  # same size, other bytes
    import hashlib

    reference = {
        "MLmodel": {"sha256": "x", "size": 1},
        "weights.bin": {"sha256": hashlib.sha256(b"a" * 100).hexdigest(), "size": 100},
    }
    assert not _identical_to_export(copy, export, reference)
    assert _identical_to_export(copy, export, reference, hashed_at_import=True)
    (copy / "weights.bin").write_bytes(b"a" * 99)
    assert not _identical_to_export(copy, export, reference, hashed_at_import=True)
    (copy / "extra.txt").write_text("not in the export")
    assert not _identical_to_export(Path(copy), export, reference, hashed_at_import=True)


class _Counting:
    """A real client, with each call it receives counted by name."""

    def __init__(self, client):
        self.client, self.calls = client, Counter()

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def sqlite_client(tmp_path):
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_the_import_looks_an_experiment_up_once_per_step(sqlite_client):
    counted = _Counting(sqlite_client)
    experiments: dict = {}
    first = mlflow_utils.set_experiment(_ImportClient(counted, experiments), None, "/marketplace/m")
    again = mlflow_utils.set_experiment(_ImportClient(counted, experiments), None, "/marketplace/m")
    assert (
        first.experiment_id
        == again.experiment_id
        == sqlite_client.get_experiment_by_name("/marketplace/m").experiment_id
    )
    assert counted.calls["create_experiment"] == 1 and counted.calls["get_experiment_by_name"] == 0
    # A step that knows nothing yet takes the library's own path (its create fails with a REST
    # error, and it looks the experiment up): the syncs against servers cover it.


def test_a_deleted_experiment_is_not_remembered(sqlite_client):
    deleted = sqlite_client.create_experiment("/marketplace/gone")
    sqlite_client.delete_experiment(deleted)
    experiments: dict = {}
    _ImportClient(sqlite_client, experiments).get_experiment_by_name("/marketplace/gone")
    assert experiments == {}


def test_a_run_is_terminated_once_per_status_and_read_again_after_any_other_call(sqlite_client):
    counted = _Counting(sqlite_client)
    client = _ImportClient(counted, {})
    run_id = sqlite_client.create_run(sqlite_client.create_experiment("e")).info.run_id
    client.set_terminated(run_id, "FINISHED")
    client.set_terminated(run_id, "FINISHED")
    assert counted.calls["set_terminated"] == 1
    client.set_terminated(run_id, "FAILED")
    assert (
        counted.calls["set_terminated"] == 2
        and sqlite_client.get_run(run_id).info.status == "FAILED"
    )

    assert client.get_run(run_id) is client.get_run(run_id)  # twice in a row: one read
    assert counted.calls["get_run"] == 1
    client.set_tag(run_id, "k", "v")  # any other call: the next read is fresh
    assert client.get_run(run_id).data.tags["k"] == "v" and counted.calls["get_run"] == 2
    client.get_run(run_id)
    client.list_artifacts(run_id, "sub")  # calls the client answers itself forget the run too
    client.get_run(run_id)
    assert counted.calls["get_run"] == 3


def test_a_version_whose_search_result_carries_marker_and_tag_is_marked():
    marker = marker_description(dt.date(2026, 12, 3), "old")
    version = ModelVersion(
        "m", "1", 0, description=marker, tags=[ModelVersionTag(EXPORTED_ON_TAG, "2026-12-03")]
    )
    assert is_marked(version)
    assert not is_marked(ModelVersion("m", "1", 0, description=marker))  # tags left out: read it
    assert not is_marked(
        ModelVersion("m", "1", 0, description="old", tags=[ModelVersionTag(EXPORTED_ON_TAG, "x")])
    )
    # A snapshot written before the field existed reads as not marked (the marker is checked).
    old = {
        "model_name": "m",
        "version": 1,
        "run_id": "r",
        "source": "s",
        "created_at": "2026-12-03T00:00:00+00:00",
        "selected_by": "stage Production",
    }
    assert ProductionVersion.from_dict(old).marked is False


def test_a_run_process_imports_no_signing_library_until_it_signs_or_verifies():
    code = (
        "import sys, marketplace_dagster.definitions; "
        "print(sorted(m for m in ('model_signing', 'sigstore') if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]", found.stdout


def test_an_export_reads_each_source_object_once_and_passes_everything_else_through(sqlite_client):
    counted = _Counting(sqlite_client)
    source = _ReadOnce(counted)
    run_id = sqlite_client.create_run(sqlite_client.create_experiment("e")).info.run_id
    assert source.get_run(run_id) is source.get_run(run_id)
    assert counted.calls["get_run"] == 1
    assert source.search_experiments()[0].name in {"e", "Default"}  # not a read it keeps
    source.search_experiments()
    assert counted.calls["search_experiments"] == 2
    with pytest.raises(MlflowException):  # a failed read is not kept either
        source.get_run("no-such-run")
    with pytest.raises(MlflowException):
        source.get_run("no-such-run")


def test_the_import_uploads_to_the_run_and_logged_model_it_created_without_reading_them_again(
    sqlite_client, tmp_path
):
    counted = _Counting(sqlite_client)
    client = _ImportClient(counted, {})
    experiment = sqlite_client.create_experiment(
        "e", artifact_location=(tmp_path / "store").as_uri()
    )
    created = client.create_logged_model(experiment_id=experiment, name="model")
    files = tmp_path / "files"
    (files / "sub").mkdir(parents=True)
    (files / "MLmodel").write_text("flavors: {}\n")
    (files / "sub" / "weights.bin").write_bytes(b"w" * 10)
    client.log_model_artifacts(created.model_id, str(files))
    (files / "MLmodel").write_text("flavors: {python_function: {}}\n")
    client.log_model_artifact(
        created.model_id, str(files / "MLmodel")
    )  # as the library's MLmodel fix
    assert counted.calls["get_logged_model"] == counted.calls["log_model_artifacts"] == 0
    stored = local_folder(sqlite_client.get_logged_model(created.model_id).artifact_location)
    assert (stored / "sub" / "weights.bin").read_bytes() == b"w" * 10
    assert (stored / "MLmodel").read_text() == "flavors: {python_function: {}}\n"
    assert client.logged_models == [created]

    # The run it created: uploaded to, listed and its MLmodel rewritten without reading it.
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(files))
    client.log_artifact(run.info.run_id, str(files / "MLmodel"), "sub")
    assert sorted(f.path for f in client.list_artifacts(run.info.run_id)) == ["MLmodel", "sub"]
    assert (
        counted.calls["get_run"]
        == counted.calls["log_artifacts"]
        == counted.calls["list_artifacts"]
        == 0
    )
    assert sorted(f.path for f in sqlite_client.list_artifacts(run.info.run_id, "sub")) == [
        "sub/MLmodel",
        "sub/weights.bin",
    ]
    client.list_artifacts(run.info.run_id, "sub")  # below the root: MLflow's own path
    assert counted.calls["list_artifacts"] == 1

    # A logged model this import did not create: MLflow's own path, which reads it.
    other = sqlite_client.create_logged_model(experiment_id=experiment, name="other")
    client.log_model_artifacts(other.model_id, str(files))
    assert counted.calls["log_model_artifacts"] == 1
    assert (local_folder(other.artifact_location) / "sub" / "weights.bin").exists()


def test_the_version_the_import_just_created_is_not_read_again(sqlite_client):
    counted = _Counting(sqlite_client)
    client = _ImportClient(counted, {})
    sqlite_client.create_registered_model("m")
    created = client.create_model_version("m", "file:///nowhere", tags={"k": "v"})
    assert client.get_model_version("m", created.version) is created
    assert counted.calls["get_model_version"] == 0
    client.set_model_version_tag("m", created.version, "k", "w")  # any other call: read it again
    assert client.get_model_version("m", created.version).tags["k"] == "w"
    assert counted.calls["get_model_version"] == 1


def test_the_name_check_says_whether_the_marketplace_model_exists(sqlite_client):
    assert (
        check_name_owner(sqlite_client, "ws.m", "ws", "m") is False
    )  # then no version to search for
    sqlite_client.create_registered_model("ws.m")
    assert check_name_owner(sqlite_client, "ws.m", "ws", "m") is True


def test_the_databricks_probes_of_each_request_fail_at_once_where_databricks_is_absent():
    code = (
        "import sys; from marketplace.registry import make_client; "
        "make_client('http://127.0.0.1:1'); "
        "from mlflow.utils import databricks_utils as d; "
        "print(sys.modules['dbruntime'], d.is_in_databricks_notebook(), d.is_in_databricks_job(), "
        "'json' in sys.modules and sys.modules['json'] is not None)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["None", "False", "False", "True"], found.stdout + found.stderr


def test_an_export_lists_the_runs_top_folder_without_reading_the_run_again(sqlite_client, tmp_path):
    counted = _Counting(sqlite_client)
    source = _ReadOnce(counted)
    experiment = sqlite_client.create_experiment(
        "e", artifact_location=(tmp_path / "store").as_uri()
    )
    run_id = sqlite_client.create_run(experiment).info.run_id
    files = tmp_path / "files"
    (files / "model").mkdir(parents=True)
    (files / "model" / "MLmodel").write_text("flavors: {}\n")
    (files / "notes.txt").write_text("n")
    sqlite_client.log_artifacts(run_id, str(files))
    source.get_run(run_id)  # as our check does first
    listed = source.list_artifacts(run_id)
    assert [(f.path, f.is_dir) for f in listed] == [
        (f.path, f.is_dir) for f in sqlite_client.list_artifacts(run_id)
    ]
    assert counted.calls["get_run"] == 1 and counted.calls["list_artifacts"] == 0
    assert [f.path for f in source.list_artifacts(run_id, "model")] == [
        "model/MLmodel"
    ]  # below it: MLflow's path
    assert counted.calls["list_artifacts"] == 1


class _Doubles(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input * 2


def test_mlflows_environment_warnings_are_logged_only_for_a_model_that_fails_here(
    sqlite_client, tmp_path
):
    import pandas as pd

    folder = tmp_path / "model"
    with by_value(_Doubles):
        mlflow.pyfunc.save_model(
            folder,
            python_model=_Doubles(),
            input_example=pd.DataFrame({"x": [1.0]}),
            pip_requirements=["surely-absent-distribution==9.9"],
        )
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logger = logging.getLogger("mlflow.utils.requirements_utils")
    logger.addHandler(handler)
    try:
        uri = sqlite_client.tracking_uri
        with Sandbox(SandboxSettings(mode="process")) as sandbox:
            passed = load_and_predict(
                uri, "models:/m/1", None, location=str(folder), sandbox=sandbox
            )
            assert (passed.loaded, passed.predicted) == (True, True) and logged == [], passed.detail
            (folder / "python_model.pkl").write_bytes(b"not a pickle")
            failed = load_and_predict(
                uri, "models:/m/1", None, location=str(folder), sandbox=sandbox
            )
    finally:
        logger.removeHandler(handler)
    assert not failed.loaded and "does not load" in failed.detail
    assert any("surely-absent-distribution" in message for message in logged), logged
