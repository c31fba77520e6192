"""The pipeline with external storage on S3 and on ADLS, each against its emulator on loopback.

Every test runs twice, once per backend (`cloud` fixture): exports, snapshots, skip records,
locks and both Delta tables live in a bucket or container of the test's own.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time

import pytest
from mlflow import MlflowClient

from marketplace import summary
from marketplace.external import configured_storage
from marketplace.layout import export_key, lock_name
from marketplace.manifest import MANIFEST_NAME
from marketplace.provenance import TAG_CHECKSUM, TAG_SOURCE_VERSION
from marketplace.object_storage import ObjectStorage
from marketplace.storage import LockLost, LockTimeout
from marketplace_dagster import keys
from marketplace_dagster.keys import EXPORTS_MATCH_MANIFESTS, NO_STRAY_EXPORTS

from .conftest import (
    CLOUD_KEYS,
    TODAY,
    assert_nothing_new,
    assert_predicts_like_source,
    materializations,
    materialize_in_processes,
    register_version,
    step_failure_message,
)
from .support import table_rows


@pytest.fixture
def synced_pair(servers, deploy, uid, cloud):
    """ws_a by stage, ws_b by alias, on cloud storage; neither synced yet."""
    _, storage_config = cloud
    register_version(servers["ws_a"].uri, f"{uid}_iris", stage="Archived")
    register_version(servers["ws_a"].uri, f"{uid}_iris", stage="Production")
    register_version(servers["ws_b"].uri, f"{uid}_diabetes", alias="champion", kind="diabetes")
    deployment = deploy(
        [
            {
                "name": "cloud-a",
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            },
            {
                "name": "cloud-b",
                "tracking_uri": servers["ws_b"].uri,
                "production": {"alias": "champion"},
                "include": [f"{uid}_*"],
            },
        ],
        external_storage=storage_config,
        marketplace={"name_template": uid + ".{workspace}.{model}"},
    )
    return deployment


def test_full_pipeline_on_cloud_storage(synced_pair, servers, uid):
    deployment = synced_pair
    storage = configured_storage(deployment.config)
    for workspace in ("cloud-a", "cloud-b"):
        result = deployment.sync(workspace)
        assert result.success, step_failure_message(result)
        assert materializations(result, keys.EXPORTS)["exported"] == 1
        assert materializations(result, keys.IMPORTS)["imported"] == 1
        assert [
            c.passed
            for c in result.get_asset_check_evaluations()
            if c.check_name == keys.IMPORT_LOADS_CHECK
        ] == [True]

    exports = {r["workspace"]: r for r in table_rows(deployment, "export_summary")}
    assert sorted(exports) == ["cloud-a", "cloud-b"] and exports["cloud-a"]["version"] == 2
    key = export_key("cloud-a", f"{uid}_iris", 2)
    assert exports["cloud-a"]["export_path"] == storage.location(key)
    assert exports["cloud-a"]["export_path"].startswith(("s3://", "abfss://"))
    stored = storage.list(key)
    assert MANIFEST_NAME in stored and any(name.endswith("artifacts/MLmodel") for name in stored)
    assert (
        sum(e.size for n, e in stored.items() if n != MANIFEST_NAME)
        == exports["cloud-a"]["size_bytes"]
    )
    assert storage.list("production_models")  # the snapshots are there too
    assert storage.list(".locks") == {}  # every lock was released

    market = MlflowClient(servers["marketplace"].uri)
    production = market.get_model_version_by_alias(f"{uid}.cloud-a.{uid}_iris", "production")
    assert (
        production.tags[TAG_SOURCE_VERSION] == "2"
        and production.tags[TAG_CHECKSUM] == exports["cloud-a"]["checksum"]
    )
    imports = table_rows(deployment, "import_summary")
    assert sorted((r["workspace"], r["marketplace_version"]) for r in imports) == [
        ("cloud-a", 1),
        ("cloud-b", 1),
    ]

    assert_predicts_like_source(
        servers["ws_b"].uri,
        f"models:/{uid}_diabetes@champion",
        servers["marketplace"].uri,
        f"models:/{uid}.cloud-b.{uid}_diabetes@production",
    )

    manifest_before = storage.list(key)[MANIFEST_NAME]
    assert_nothing_new(deployment.sync("cloud-a"), already_exported=1)
    assert storage.list(key)[MANIFEST_NAME] == manifest_before
    assert len(market.search_model_versions(f"name='{uid}.cloud-a.{uid}_iris'")) == 1

    # The catalog's table and page on the same storage; a second refresh changes no row.
    first = deployment.refresh_catalog()
    assert materializations(first, keys.CATALOG)["rows_inserted"] == 2
    assert sorted(r["marketplace_name"] for r in table_rows(deployment, "catalog")) == [
        f"{uid}.cloud-a.{uid}_iris",
        f"{uid}.cloud-b.{uid}_diabetes",
    ]
    assert f"{uid}.cloud-b.{uid}_diabetes".encode() in storage.read("catalog.html")
    again = deployment.refresh_catalog()
    assert (
        materializations(again, keys.CATALOG)["rows_inserted"],
        materializations(again, keys.CATALOG)["rows_updated"],
    ) == (0, 0)


def test_parallel_partitions_write_the_summary_tables_without_losing_a_row(
    servers, deploy, uid, cloud, tmp_path
):
    _, storage_config = cloud
    workspaces = ("p1", "p2", "p3", "p4")
    for workspace in workspaces:
        register_version(servers["ws_a"].uri, f"{uid}_{workspace}_m", stage="Production")
    deployment = deploy(
        [
            {
                "name": w,
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_{w}_*"],
            }
            for w in workspaces
        ],
        external_storage=storage_config,
        marketplace={"name_template": uid + "-{workspace}.{model}"},
    )
    materialize_in_processes(deployment, workspaces, tmp_path)

    for table in ("export_summary", "import_summary"):
        rows = table_rows(deployment, table)
        assert sorted((r["workspace"], r["model_name"]) for r in rows) == [
            (w, f"{uid}_{w}_m") for w in workspaces
        ], table


def test_an_upload_cut_short_is_not_counted_and_is_replaced(synced_pair, uid):
    deployment = synced_pair
    storage = configured_storage(deployment.config)
    key = export_key("cloud-a", f"{uid}_iris", 2)
    storage.write(f"{key}/run-folder/run.json", b"{truncated")  # files, but the manifest never came

    result = deployment.sync("cloud-a", selection=keys.CHAIN[:3])

    assert result.success, step_failure_message(result)
    assert materializations(result, keys.EXPORTS)["exported"] == 1
    stored = storage.list(key)
    assert MANIFEST_NAME in stored and "run-folder/run.json" not in stored
    assert [r["version"] for r in table_rows(deployment, "export_summary")] == [2]


def test_a_changed_object_is_refused_at_import_and_by_the_manifest_check(synced_pair, servers, uid):
    deployment = synced_pair
    storage = configured_storage(deployment.config)
    assert deployment.sync("cloud-a", selection=keys.CHAIN[:3]).success
    key = export_key("cloud-a", f"{uid}_iris", 2)
    pickled = next(
        n for n in storage.list(key) if "/artifacts/model." in n and not n.endswith(".json")
    )
    storage.write(
        f"{key}/{pickled}", storage.read(f"{key}/{pickled}")[::-1]
    )  # same size, other bytes

    result = deployment.sync("cloud-a", selection=[keys.IMPORTS])

    assert not result.success
    message = step_failure_message(result)
    assert f"(changed: {pickled})" in message and storage.location(key) in message
    assert (
        MlflowClient(servers["marketplace"].uri).search_registered_models(
            filter_string=f"name='{uid}.cloud-a.{uid}_iris'"
        )
        == []
    )
    checks = deployment.defs.resolve_job_def("marketplace_checks_job").execute_in_process(
        instance=deployment.instance, raise_on_error=False
    )
    evaluations = {c.check_name: c for c in checks.get_asset_check_evaluations()}
    assert evaluations[EXPORTS_MATCH_MANIFESTS].passed is False
    assert pickled in evaluations[EXPORTS_MATCH_MANIFESTS].description
    assert evaluations[NO_STRAY_EXPORTS].passed is True
    assert evaluations[NO_STRAY_EXPORTS].metadata["export_folders"].value == 1


def test_housekeeping_on_cloud_storage(synced_pair, uid):
    deployment = synced_pair
    storage = configured_storage(deployment.config)
    assert deployment.sync("cloud-a").success
    debris = export_key("cloud-a", f"{uid}_iris", 7)
    storage.write(f"{debris}/half.bin", b"x" * 10)

    job = deployment.defs.resolve_job_def("marketplace_maintenance_job")
    result = job.execute_in_process(
        instance=deployment.instance,
        run_config={
            "ops": {
                "housekeep_external_storage": {
                    "config": {"debris_retention_hours": 0, "vacuum_retention_hours": 0}
                }
            }
        },
    )

    assert result.success
    assert storage.list(debris) == {}
    assert MANIFEST_NAME in storage.list(export_key("cloud-a", f"{uid}_iris", 2))
    assert (
        len(table_rows(deployment, "export_summary")) == 1
        and len(table_rows(deployment, "import_summary")) == 1
    )


def test_a_missing_storage_credential_fails_naming_its_variable(synced_pair, monkeypatch):
    deployment = synced_pair
    secret = os.environ[CLOUD_KEYS["secret"]]
    monkeypatch.delenv(CLOUD_KEYS["secret"])

    result = deployment.sync("cloud-a")

    assert not result.success
    message = step_failure_message(result)
    assert CLOUD_KEYS["secret"] in message and deployment.config.storage_root in message
    assert secret not in message


def _object_storage(cloud, lease_seconds: float) -> ObjectStorage:
    emulator, storage_config = cloud
    from marketplace.config import ExternalStorageConfig
    from marketplace.external import resolve_options
    from marketplace.storage_options import object_store_options

    settings = ExternalStorageConfig.model_validate(storage_config)
    return ObjectStorage(
        settings.uri,
        resolve_options(settings.uri, *object_store_options(settings)),
        lease_seconds=lease_seconds,
    )


def test_lease_lock_excludes_takes_over_a_dead_holder_and_renews_a_live_one(cloud):
    storage = _object_storage(cloud, lease_seconds=2)
    name = lock_name("export", "w", "m", "1")

    with storage.lock(name, timeout_seconds=5):
        with pytest.raises(LockTimeout), storage.lock(name, timeout_seconds=1):
            pass
        time.sleep(3)  # longer than a lease: the heartbeat keeps it held
        with pytest.raises(LockTimeout), storage.lock(name, timeout_seconds=1):
            pass
    assert storage.list(".locks") == {}

    # A holder that died (its lock object stays, never renewed) is taken over after a lease.
    storage.write(f".locks/{name}.lock", b'{"owner": "a dead process"}')
    started = time.monotonic()
    with storage.lock(name, timeout_seconds=30):
        waited = time.monotonic() - started
    assert 2 <= waited < 10

    # Many waiters for one dead holder: never two holders at once.
    storage.write(f".locks/{name}.lock", b'{"owner": "a dead process"}')
    holding, most, errors = [0], [0], []
    guard = threading.Lock()

    def contend() -> None:
        try:
            with storage.lock(name, timeout_seconds=60):
                with guard:
                    holding[0] += 1
                    most[0] = max(most[0], holding[0])
                time.sleep(0.3)
                with guard:
                    holding[0] -= 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert errors == [] and most[0] == 1


def test_a_holder_whose_lease_was_taken_over_stops_writing_naming_the_lock(cloud, monkeypatch):
    storage = _object_storage(cloud, lease_seconds=2)
    name = lock_name("export", "w", "m", "1")
    where = storage.location(f".locks/{name}.lock")
    renewals_fail = threading.Event()
    put = ObjectStorage.put

    def flaky_put(self, key, data, mode):
        # The holder's heartbeat cannot reach the store (a network partition): its lease runs out.
        if (
            renewals_fail.is_set()
            and isinstance(mode, dict)
            and threading.current_thread().name.startswith("lease")
        ):
            raise ConnectionError("unreachable")
        return put(self, key, data, mode)

    monkeypatch.setattr(ObjectStorage, "put", flaky_put)
    with storage.lock(name, timeout_seconds=5) as held:
        held.check()  # held: nothing to stop
        renewals_fail.set()
        time.sleep(2.5)  # a whole lease without a renewal
        with pytest.raises(LockLost, match=f"lost the lock {where}: not renewed for"):
            held.check()
        # Meanwhile another process takes it over; once the holder reaches the store again, its
        # next heartbeat finds the lock changed.
        other = _object_storage(cloud, lease_seconds=2)
        with other.lock(name, timeout_seconds=30):
            renewals_fail.clear()
            deadline = time.monotonic() + 10
            while not held.lost and time.monotonic() < deadline:
                time.sleep(0.1)
            assert held.lost
            with pytest.raises(
                LockLost, match=f"lost the lock {where}: another process took it over"
            ):
                held.check()
            # ...and releasing it leaves the new holder's lock in place.
    assert storage.list(".locks") == {}


def test_an_export_whose_lock_was_lost_publishes_nothing(cloud, servers, uid, monkeypatch):
    """The export of one version, its lock lost just before publishing: the version fails naming
    the lock, and no export is in storage."""
    import logging

    from marketplace.exports import export_versions
    from marketplace.registry import make_client, select_production_versions
    from marketplace.leases import LeaseLock

    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    storage = _object_storage(cloud, lease_seconds=30)
    client = make_client(servers["ws_a"].uri)
    (version,) = select_production_versions(
        client, stage="Production", alias=None, include=[f"{uid}_m"]
    ).versions

    real_check = LeaseLock.check

    def taken_over(self):
        self.lost = True  # as the heartbeat finds it once another process took the lease over
        real_check(self)

    monkeypatch.setattr(LeaseLock, "check", taken_over)
    (outcome,) = export_versions(
        client,
        tracking_uri=servers["ws_a"].uri,
        registry_uri=None,
        storage=storage,
        workspace="w",
        versions=[version],
        day=dt.date.today(),
        signing_key=None,
        source_marker=False,
        log=logging.getLogger("test"),
    )
    assert outcome.status == "failed"
    assert (
        "LockLost: lost the lock" in outcome.detail
        and "another process took it over" in outcome.detail
    )
    assert not storage.exists(f"{export_key('w', f'{uid}_m', 1)}/{MANIFEST_NAME}")


def test_storage_options_reach_delta_rs_and_the_file_store(emulators, uid, monkeypatch):
    """Settings dagster-deltalake's AzureConfig would drop (the emulator flag, its endpoint) arrive
    in both: with use_emulator, only AZURITE_BLOB_STORAGE_URL says where Azurite is."""
    from marketplace.config import parse_config

    azurite = emulators["azure"]
    azurite.make_space(f"{uid}-flags")
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", azurite.endpoint.rsplit("/", 1)[0])
    config = parse_config(
        {
            "external_storage": {
                "uri": f"az://{uid}-flags/mp",
                "azure": {"use_emulator": True},
                "storage_options": {"azure_storage_account_name": "devstoreaccount1"},
            },
            "marketplace": {"tracking_uri": "http://127.0.0.1:1"},
            "workspaces": [
                {
                    "name": "w",
                    "tracking_uri": "http://127.0.0.1:2",
                    "production": {"stage": "Production"},
                }
            ],
        },
        "flags.yaml",
    )
    storage = configured_storage(config)
    assert storage.delta_options()["azure_storage_use_emulator"] == "true"

    storage.write("probe.json", b"{}")
    assert (
        summary.merge_rows(
            storage.location("export_summary"),
            "export_summary",
            [
                {
                    "workspace": "w",
                    "model_name": "m",
                    "version": 1,
                    "run_id": "r",
                    "source": "s",
                    "export_date": TODAY,
                    "exported_at": dt.datetime.now(dt.UTC),
                    "export_path": storage.location("exports/w/m/1"),
                    "checksum": "c",
                    "size_bytes": 1,
                    "file_count": 1,
                }
            ],
            storage.delta_options(),
        )
        == 1
    )
    assert {"probe.json"} <= set(storage.list("")) and any(
        k.startswith("export_summary/") for k in storage.list("")
    )


def test_large_files_download_in_ranges_and_an_object_replaced_meanwhile_is_refused(
    cloud, tmp_path, monkeypatch
):
    import obstore

    from marketplace import object_storage
    from marketplace.storage import StorageError

    storage = _object_storage(cloud, lease_seconds=60)
    monkeypatch.setattr(object_storage, "RANGE_BYTES", 1024 * 1024)
    staging = tmp_path / "staging"
    (staging / "shards").mkdir(parents=True)
    files = {
        "shards/weights.bin": os.urandom(3 * 1024 * 1024 + 12345),  # 4 ranges, the last one short
        "exactly-one-range.bin": os.urandom(1024 * 1024),
        "MLmodel": b"flavors: {}\n",
        "empty": b"",
    }
    for name, data in files.items():
        (staging / name).write_bytes(data)
    (staging / "COMMIT").write_text("done")
    storage.publish(staging, "exports/m/1", "COMMIT")

    requested, get = [], obstore.get
    monkeypatch.setattr(
        obstore,
        "get",
        lambda store, key, options=None: (
            requested.append((key, options)) or get(store, key, options=options)
        ),
    )
    storage.download("exports/m/1", tmp_path / "copy")
    assert {n: (tmp_path / "copy" / n).read_bytes() for n in files} == files
    ranges = sorted(o["range"] for k, o in requested if k.endswith("weights.bin"))
    assert ranges == [
        (0, 1 << 20),
        (1 << 20, 2 << 20),
        (2 << 20, 3 << 20),
        (3 << 20, (3 << 20) + 12345),
    ]
    assert all(
        o.get("if_match") for _, o in requested if o
    )  # each request pinned to the listed object
    assert not any("range" in (o or {}) for k, o in requested if not k.endswith("weights.bin"))

    # The object replaced between the listing and its ranges: nothing of the new bytes is taken.
    def replaced_meanwhile(store, key, options=None):
        if key.endswith("weights.bin"):
            obstore.put(store, key, b"other bytes of another model")
        return get(store, key, options=options)

    monkeypatch.setattr(obstore, "get", replaced_meanwhile)
    with pytest.raises(StorageError, match=r"downloading .*shards/weights\.bin \(bytes"):
        storage.download("exports/m/1", tmp_path / "again")
