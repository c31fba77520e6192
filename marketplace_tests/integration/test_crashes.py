"""Crashes caused for real at deterministic points: the run process killed mid-export and
mid-import, a workspace server down and dying mid-run, a lost answer to a version create, the
same partition launched by two CLI processes, and external storage running out of space.

Each kill waits for a request held at a proxy (the test knows the run is exactly there), never
for a sleep.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import filelock
import mlflow
import pytest
from mlflow import MlflowClient

from harness import local_servers
from harness.local_dagster import instance_env
from harness.seeding import register_version
from marketplace.export_records import export_dir
from marketplace.layout import STAGING_PREFIX
from marketplace.manifest import MANIFEST_NAME
from marketplace.provenance import (
    TAG_CHECKSUM,
    TAG_SOURCE_MODEL,
    TAG_SOURCE_VERSION,
    TAG_SOURCE_WORKSPACE,
)
from marketplace.registry import EXPORTED_ON_TAG, process_tracking_uri
from marketplace_dagster import keys
from marketplace_dagster.resources import build_resources
from marketplace_tests.testing.deployments import TODAY, materializations, step_failure_message
from marketplace_tests.testing.driving import sync_job_command
from marketplace_tests.testing.faults import FaultProxy, Hold
from marketplace_tests.testing.support import ROOT, table_rows

CREATE_VERSION = "/model-versions/create"
GET_LOGGED_MODEL = "/logged-models/"


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    # Dagster creates its SQLite storage on first use, and racing first uses collide: create it
    # once.
    dg.DagsterInstance.from_config(str(home)).dispose()
    return home


def _launch(config: Path, home: Path, workspace: str, log: Path) -> subprocess.Popen:
    """marketplace_sync_job for (today, workspace) in a CLI process of its own, as a run worker
    runs it; its output goes to `log` (a pipe nobody reads could fill and stall it)."""
    with open(log, "wb") as output:
        process = subprocess.Popen(
            sync_job_command(TODAY, workspace),
            cwd=ROOT,
            env=instance_env(config, home),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process.log = log
    return process


def _tail(process: subprocess.Popen) -> str:
    return process.log.read_text(errors="replace")[-3000:]


def _kill_when_held(process: subprocess.Popen, hold: Hold, timeout: float = 300) -> None:
    """SIGKILL the run's whole process group once it is waiting on `hold`."""
    waited = 0.0
    while not hold.reached.wait(1.0):
        waited += 1.0
        if process.poll() is not None or waited > timeout:
            process.kill()
            process.wait()
            raise AssertionError(f"the run never reached the hold point:\n{_tail(process)}")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    hold.abandoned = True  # the killed client's request never reaches the server
    hold.release.set()


def _keys(root: Path, table: str) -> list[tuple]:
    """The (workspace, model, version) keys of a summary table's rows, sorted."""
    return sorted((r["workspace"], r["model_name"], r["version"]) for r in table_rows(root, table))


def _market_versions(market: MlflowClient, name: str) -> list:
    if not market.search_registered_models(filter_string=f"name='{name}'"):
        return []
    return market.search_model_versions(f"name='{name}'")


def _assert_tagged(versions: list, workspace: str, model: str) -> None:
    for version in versions:
        tags = version.tags or {}
        assert (
            tags.get(TAG_SOURCE_WORKSPACE),
            tags.get(TAG_SOURCE_MODEL),
            tags.get(TAG_SOURCE_VERSION),
        ) == (workspace, model, "1"), f"version {version.version} lacks its source tags: {tags}"
        assert tags.get(TAG_CHECKSUM)


def test_run_killed_mid_export_counts_nothing_and_the_rerun_completes(
    servers, deploy, uid, tmp_path
):
    ws = servers["ws_a"]
    register_version(ws.uri, f"{uid}_m", stage="Production")
    hold = Hold("GET", GET_LOGGED_MODEL)  # inside mlflow-export-import: the run's files are written
    with FaultProxy(ws.uri, holds=[hold]) as proxy:
        deployment = deploy(
            [
                {
                    "name": "killed",
                    "tracking_uri": proxy.uri,
                    "production": {"stage": "Production"},
                    "include": [f"{uid}_*"],
                }
            ]
        )
        root = Path(deployment.config.storage_root)
        model_dir = export_dir(root, "killed", f"{uid}_m", 1).parent
        process = _launch(deployment.path, _home(tmp_path), "killed", tmp_path / "killed.log")
        _kill_when_held(process, hold)

        staged = list(model_dir.glob(f"{STAGING_PREFIX}*"))
        assert staged and any(p.is_file() for p in staged[0].rglob("*")), (
            "killed before the export wrote anything"
        )
        assert not export_dir(root, "killed", f"{uid}_m", 1).exists()
        assert EXPORTED_ON_TAG not in MlflowClient(ws.uri).get_model_version(f"{uid}_m", "1").tags
        assert _keys(root, "export_summary") == []

        result = deployment.sync("killed")
    assert result.success, step_failure_message(result)
    assert materializations(result, keys.EXPORTS)["exported"] == 1
    assert (export_dir(root, "killed", f"{uid}_m", 1) / MANIFEST_NAME).exists()
    assert list(model_dir.glob(f"{STAGING_PREFIX}*")) == []  # the dead run's staging folder is gone
    assert EXPORTED_ON_TAG in MlflowClient(ws.uri).get_model_version(f"{uid}_m", "1").tags
    assert (
        _keys(root, "export_summary")
        == _keys(root, "import_summary")
        == [("killed", f"{uid}_m", 1)]
    )
    versions = _market_versions(MlflowClient(servers["marketplace"].uri), f"killed.{uid}_m")
    assert [v.version for v in versions] == ["1"]


@pytest.mark.parametrize(
    "version_created", [False, True], ids=["before-version-create", "after-version-create"]
)
def test_run_killed_mid_import_leaves_no_untagged_or_duplicate_version(
    servers, deploy, uid, tmp_path, version_created
):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    market = servers["marketplace"]
    # Before: the run and its files are in the marketplace, the version is not. After: the
    # registry created the version, but the killed run never heard so.
    hold = Hold("POST", CREATE_VERSION, after_upstream=version_created)
    with FaultProxy(market.uri, holds=[hold]) as proxy:
        deployment = deploy(
            [
                {
                    "name": "killed",
                    "tracking_uri": servers["ws_a"].uri,
                    "production": {"stage": "Production"},
                    "include": [f"{uid}_*"],
                }
            ],
            marketplace={"tracking_uri": proxy.uri},
        )
        root = Path(deployment.config.storage_root)
        process = _launch(deployment.path, _home(tmp_path), "killed", tmp_path / "killed.log")
        _kill_when_held(process, hold)

        client = MlflowClient(market.uri)
        left = _market_versions(client, f"killed.{uid}_m")
        assert len(left) == (1 if version_created else 0)
        _assert_tagged(left, "killed", f"{uid}_m")  # a version exists only with its tags
        assert _keys(root, "export_summary") == [("killed", f"{uid}_m", 1)]
        assert _keys(root, "import_summary") == []

        result = deployment.sync("killed")
    assert result.success, step_failure_message(result)
    imports = materializations(result, keys.IMPORTS)
    assert (imports["imported"], imports["already_imported"]) == (
        (0, 1) if version_created else (1, 0)
    )
    versions = _market_versions(client, f"killed.{uid}_m")
    assert [v.version for v in versions] == ["1"]
    _assert_tagged(versions, "killed", f"{uid}_m")
    assert client.get_model_version_by_alias(f"killed.{uid}_m", "production").version == "1"
    assert _keys(root, "import_summary") == [("killed", f"{uid}_m", 1)]


def test_a_lost_answer_to_a_version_create_does_not_duplicate_it(servers, deploy, uid):
    """A version create whose answer was lost: the registry client may retry it (a second copy)
    or give up; the marketplace keeps exactly one version either way."""
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    hold = Hold("POST", CREATE_VERSION, after_upstream=True, lose_answer=True)
    hold.release.set()
    with FaultProxy(servers["marketplace"].uri, holds=[hold]) as proxy:
        deployment = deploy(
            [
                {
                    "name": "lost",
                    "tracking_uri": servers["ws_a"].uri,
                    "production": {"stage": "Production"},
                    "include": [f"{uid}_*"],
                }
            ],
            marketplace={"tracking_uri": proxy.uri},
            client={"timeout_seconds": 10, "max_retries": 2},
        )
        result = deployment.sync("lost")
    assert result.success, step_failure_message(result)
    creates = [
        path for method, path in proxy.requests if method == "POST" and CREATE_VERSION in path
    ]
    assert hold.taken, "the fault did not happen: no version create went through the proxy"
    # urllib3 retries the POST whose answer was lost (a second create), or MLflow raises and the
    # import finds the version it made; either way one version must remain.
    assert len(creates) in (1, 2), creates
    client = MlflowClient(servers["marketplace"].uri)
    versions = _market_versions(client, f"lost.{uid}_m")
    assert [v.version for v in versions] == ["1"]  # the retry's copy (version 2) was removed
    _assert_tagged(versions, "lost", f"{uid}_m")
    assert client.get_model_version_by_alias(f"lost.{uid}_m", "production").version == "1"


def test_workspace_server_down_then_dying_mid_run_then_back(servers, deploy, uid, tmp_path):
    server = local_servers.LocalServer("dying", tmp_path / "dying", local_servers.free_port())
    (server.root).mkdir()
    local_servers.start(server)
    try:
        register_version(server.uri, f"{uid}_m", stage="Production")
        hold = Hold("GET", GET_LOGGED_MODEL)
        with FaultProxy(server.uri, holds=[hold]) as proxy:
            deployment = deploy(
                [
                    {
                        "name": "dying",
                        "tracking_uri": proxy.uri,
                        "production": {"stage": "Production"},
                        "include": [f"{uid}_*"],
                    }
                ],
                client={"timeout_seconds": 5, "max_retries": 1},
            )
            root = Path(deployment.config.storage_root)
            local_servers.stop(server)
            down = deployment.sync("dying")
            assert not down.success
            message = step_failure_message(down)
            assert "workspace dying" in message and proxy.uri in message

            local_servers.start(server)

            def die_when_held() -> None:
                if hold.reached.wait(300):
                    local_servers.stop(server)
                hold.release.set()

            killer = threading.Thread(target=die_when_held)
            killer.start()
            died = deployment.sync("dying")
            killer.join()
            assert hold.reached.is_set() and not died.success
            message = step_failure_message(died)
            assert f"workspace dying ({proxy.uri}) {uid}_m v1: export failed" in message
            assert not export_dir(root, "dying", f"{uid}_m", 1).exists()
            assert (
                list(export_dir(root, "dying", f"{uid}_m", 1).parent.glob(f"{STAGING_PREFIX}*"))
                == []
            )

            local_servers.start(server)
            back = deployment.sync("dying")
            again = deployment.sync("dying")
    finally:
        local_servers.stop(server)
    assert back.success, step_failure_message(back)
    assert materializations(back, keys.IMPORTS)["imported"] == 1
    assert again.success and materializations(again, keys.IMPORTS)["already_imported"] == 1
    versions = _market_versions(MlflowClient(servers["marketplace"].uri), f"dying.{uid}_m")
    assert [v.version for v in versions] == ["1"]
    assert _keys(root, "import_summary") == [("dying", f"{uid}_m", 1)]


def _step_started(instance: dg.DagsterInstance, run_id: str, step_key: str) -> bool:
    return any(
        e.step_key == step_key
        for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    )


def test_same_partition_from_two_cli_processes_syncs_once(servers, deploy, uid, tmp_path):
    ws = servers["ws_a"]
    register_version(ws.uri, f"{uid}_m", stage="Production")
    hold = Hold(
        "GET", GET_LOGGED_MODEL
    )  # the first process waits mid-export, holding the version's lock
    with FaultProxy(ws.uri, holds=[hold]) as proxy:
        # The held request must outlast the second process's start, whatever the machine's load.
        deployment = deploy(
            [
                {
                    "name": "twice",
                    "tracking_uri": proxy.uri,
                    "production": {"stage": "Production"},
                    "include": [f"{uid}_*"],
                }
            ],
            client={"timeout_seconds": 120, "max_retries": 0},
        )
        storage = build_resources(deployment.config)["external_storage"]
        home = _home(tmp_path)
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            first = _launch(deployment.path, home, "twice", tmp_path / "first.log")
            assert hold.reached.wait(300), _tail(first)
            (first_run,) = [r.run_id for r in instance.get_runs()]
            second = _launch(deployment.path, home, "twice", tmp_path / "second.log")
            # Go on once the second run is in its exports step: it is then waiting on the lock.
            deadline = time.monotonic() + 300
            second_run = None
            while second_run is None or not _step_started(
                instance, second_run, "external_storage__exports"
            ):
                assert second.poll() is None and time.monotonic() < deadline, _tail(second)
                second_run = next(
                    (r.run_id for r in instance.get_runs() if r.run_id != first_run), None
                )
                time.sleep(0.2)
            with pytest.raises(filelock.Timeout):  # the first holds the version's export lock
                storage.lock("export", "twice", f"{uid}_m", "1", timeout_seconds=0).acquire()
            hold.release.set()
            for process in (first, second):
                process.wait(timeout=600)
                assert process.returncode == 0, _tail(process)
            exports = {
                r.run_id: r.asset_materialization.metadata
                for r in instance.fetch_materializations(keys.EXPORTS, limit=10).records
            }
            imports = {
                r.run_id: r.asset_materialization.metadata
                for r in instance.fetch_materializations(keys.IMPORTS, limit=10).records
            }
        finally:
            instance.dispose()
    counts = lambda meta, *names: tuple(
        meta[run][n].value for run in (first_run, second_run) for n in names
    )
    # The second waited for the first's export, then found it done. Both then race to the import
    # (nothing holds either back there): one imports, the other finds it imported.
    assert counts(exports, "exported", "already_exported") == (1, 0, 0, 1)
    assert sorted(counts(imports, "imported", "already_imported")[i : i + 2] for i in (0, 2)) == [
        (0, 1),
        (1, 0),
    ]
    root = Path(deployment.config.storage_root)
    model_dir = export_dir(root, "twice", f"{uid}_m", 1).parent
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]
    assert (
        _keys(root, "export_summary") == _keys(root, "import_summary") == [("twice", f"{uid}_m", 1)]
    )
    versions = _market_versions(MlflowClient(servers["marketplace"].uri), f"twice.{uid}_m")
    assert [v.version for v in versions] == ["1"]


def _mount_small_filesystem(path: Path, size: str) -> bool:
    """A tmpfs of `size` at `path`, where this machine allows mounting (root, or CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0


def test_external_storage_out_of_space_mid_export(servers, deploy, uid, record_property):
    ws = servers["ws_a"]
    client = MlflowClient(ws.uri)
    version = register_version(ws.uri, f"{uid}_big", stage="Production")
    # 3 MB of run artifacts, more than the exports' filesystem holds
    with (
        process_tracking_uri(ws.uri),
        mlflow.start_run(run_id=client.get_model_version(f"{uid}_big", version).run_id),
    ):
        mlflow.log_text("x" * 3_000_000, "data/big.txt")
    deployment = deploy(
        [
            {
                "name": "full",
                "tracking_uri": ws.uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ]
    )
    root = Path(deployment.config.storage_root)
    exports = root / "exports"
    mounted = _mount_small_filesystem(exports, "1m")
    record_property(
        "out_of_space_by", "a 1 MB tmpfs" if mounted else "ENOSPC raised at the file copy"
    )
    with pytest.MonkeyPatch.context() as patch:
        if not mounted:  # no mounting here: fail the writes the way a full disk does
            real_copy = shutil.copy2

            def full_disk(src, dst, *args, **kwargs):
                if str(exports) in str(dst) and os.path.getsize(src) > 1_000_000:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
                return real_copy(src, dst, *args, **kwargs)

            patch.setattr(shutil, "copy2", full_disk)
        try:
            result = deployment.sync("full")
        finally:
            if mounted:  # more room for the re-run
                subprocess.run(["mount", "-o", "remount,size=64m", str(exports)], check=True)
    try:
        assert not result.success
        message = step_failure_message(result)
        assert f"{uid}_big v1: export failed" in message and "No space left on device" in message
        model_dir = export_dir(root, "full", f"{uid}_big", 1).parent
        assert (
            not model_dir.exists() or list(model_dir.iterdir()) == []
        )  # nothing half-written left
        assert EXPORTED_ON_TAG not in client.get_model_version(f"{uid}_big", "1").tags
        assert _keys(root, "export_summary") == []

        again = deployment.sync("full")
        assert again.success, step_failure_message(again)
        assert materializations(again, keys.EXPORTS)["exported"] == 1
        assert _keys(root, "import_summary") == [("full", f"{uid}_big", 1)]
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(exports)], check=False)
