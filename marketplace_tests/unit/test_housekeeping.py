"""Housekeeping of external storage: debris removal, table compaction and vacuum, the maintenance
job."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from deltalake import DeltaTable

from marketplace import summary
from marketplace.housekeeping import maintain_table, remove_debris
from marketplace.manifest import MANIFEST_NAME
from marketplace_tests.testing.housekeeping import DAY
from marketplace_tests.testing.housekeeping import age as _age
from marketplace_tests.testing.housekeeping import folder as _folder
from marketplace_tests.testing.housekeeping import parquet_files as _parquet_files


def _export_row(version: int) -> dict:
    return {
        "workspace": "ws",
        "model_name": "m",
        "version": version,
        "run_id": f"run{version}",
        "source": f"models:/m-{version}",
        "export_date": dt.date(2026, 11, 20),
        "exported_at": dt.datetime(2026, 11, 20, 2, version, tzinfo=dt.UTC),
        "export_path": f"/exports/ws/m/{version}",
        "checksum": f"{version:064x}",
        "size_bytes": 100 * version,
        "file_count": version,
    }


def test_remove_debris_removes_old_debris_and_nothing_else(tmp_path):
    root = tmp_path / "storage"
    model = root / "exports" / "ws1" / "model_a"
    valid = _folder(
        model / "1", {MANIFEST_NAME: "{}", "model.json": "{}", "m-1/artifacts/MLmodel": "x"}
    )
    old_staging = _folder(model / ".staging-2-abcd1234", {"model.json": "{}", "run/run.json": "{"})
    # A dangling link: stat raises FileNotFoundError on it, as on a file that vanishes mid-scan.
    (old_staging / "run" / "artifacts").symlink_to(tmp_path / "gone")
    old_unfinished = _folder(model / "3", {"m-3/artifacts/model.skops": "half"})
    young_unfinished = _folder(model / "4", {"model.json": "{}"})
    young_staging = _folder(
        root / "exports" / "ws2" / "model_b" / ".staging-1-ffff0000", {"model.json": "{}"}
    )
    # The folder itself is old but a file in it was written a minute ago: an export in progress.
    touched = _folder(model / "5", {"old.json": "{}", "fresh/just-written": "x"})
    not_a_version = _folder(model / "notes", {"readme.txt": "kept by a person"})
    snapshots = root / "production_models" / "ws1"
    old_tmp = _folder(snapshots, {"2026-11-20.tmp-4242": "{"}) / "2026-11-20.tmp-4242"
    young_tmp = _folder(snapshots, {"2026-11-21.tmp-4243": "{"}) / "2026-11-21.tmp-4243"
    snapshot = _folder(snapshots, {"2026-11-20.json": "{}"}) / "2026-11-20.json"

    for path in (valid, old_staging, old_unfinished, touched, not_a_version, old_tmp, snapshot):
        _age(path, 3 * DAY)
    _age(touched / "fresh", 60)

    report = remove_debris(root, retention_hours=24)

    assert sorted(report.removed) == sorted(
        [
            "exports/ws1/model_a/.staging-2-abcd1234",
            "exports/ws1/model_a/3",
            "production_models/ws1/2026-11-20.tmp-4242",
        ]
    )
    assert not old_staging.exists() and not old_unfinished.exists() and not old_tmp.exists()
    assert report.kept_young == 3  # 4, the young staging folder, and 5 (a file inside is young)
    assert (
        young_unfinished.exists()
        and young_staging.exists()
        and (touched / "fresh" / "just-written").exists()
    )
    assert young_tmp.exists() and snapshot.exists()
    assert (valid / MANIFEST_NAME).exists() and (
        valid / "m-1" / "artifacts" / "MLmodel"
    ).read_text() == "x"
    assert (not_a_version / "readme.txt").exists()

    # A retention of zero hours takes the young debris too, and still never a valid export.
    again = remove_debris(root, retention_hours=0)
    assert sorted(again.removed) == sorted(
        [
            "exports/ws1/model_a/4",
            "exports/ws1/model_a/5",
            "exports/ws2/model_b/.staging-1-ffff0000",
            "production_models/ws1/2026-11-21.tmp-4243",
        ]
    )
    assert again.kept_young == 0
    assert (valid / MANIFEST_NAME).exists() and snapshot.exists() and not_a_version.exists()


def test_remove_debris_on_empty_storage_does_nothing(tmp_path):
    report = remove_debris(tmp_path / "nothing-here", retention_hours=24)
    assert report.removed == [] and report.kept_young == 0


def test_maintain_table_compacts_then_vacuums_replaced_files(tmp_path):
    uri = str(tmp_path / summary.EXPORT_SUMMARY)
    for version in range(1, 6):  # five commits, one small file each
        assert summary.merge_rows(uri, summary.EXPORT_SUMMARY, [_export_row(version)]) == 1
    rows_before = sorted(summary.read_rows(uri), key=lambda r: r["version"])
    active_before = DeltaTable(uri).file_uris()
    on_disk_before = _parquet_files(uri)
    assert len(active_before) >= 5 and len(on_disk_before) == len(active_before)

    # Within Delta's 7-day retention: compacted, but the replaced files stay for time travel.
    kept = maintain_table(uri, summary.EXPORT_SUMMARY, retention_hours=168)
    assert kept.exists and kept.table == summary.EXPORT_SUMMARY
    assert kept.files_compacted == len(active_before)
    assert kept.files_vacuumed == 0
    active_after = DeltaTable(uri).file_uris()
    assert len(active_after) < len(active_before)
    assert sorted(summary.read_rows(uri), key=lambda r: r["version"]) == rows_before
    assert on_disk_before < _parquet_files(uri)  # old files still on disk, the compacted one added

    # Retention 0: nothing left to compact, every replaced file is deleted from disk.
    vacuumed = maintain_table(uri, summary.EXPORT_SUMMARY, retention_hours=0)
    assert vacuumed.files_compacted == 0
    assert vacuumed.files_vacuumed == len(on_disk_before)
    assert _parquet_files(uri) == {Path(u).name for u in active_after}
    assert not on_disk_before & _parquet_files(uri)
    assert sorted(summary.read_rows(uri), key=lambda r: r["version"]) == rows_before
    # The table still takes MERGEs afterwards.
    assert summary.merge_rows(uri, summary.EXPORT_SUMMARY, [_export_row(5), _export_row(6)]) == 1
    assert len(summary.read_rows(uri)) == 6


def test_maintain_table_reports_a_missing_table(tmp_path):
    done = maintain_table(
        str(tmp_path / "import_summary"), summary.IMPORT_SUMMARY, retention_hours=0
    )
    assert done.exists is False and done.files_compacted == 0 and done.files_vacuumed == 0
    assert not (tmp_path / "import_summary").exists()
