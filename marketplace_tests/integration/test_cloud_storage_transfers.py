"""Reading and writing objects on S3 and on ADLS, against their emulators on loopback: the
storage options reach both delta-rs and the file store, and large files download in ranges
pinned to the listed object."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from marketplace import summary
from marketplace.external import configured_storage
from marketplace_tests.testing.deployments import TODAY
from marketplace_tests.testing.emulators import object_storage as _object_storage


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
