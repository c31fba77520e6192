"""Housekeeping of external storage: debris removal, table compaction and vacuum, the maintenance
job."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from deltalake import DeltaTable

from harness.seeding import register_version
from marketplace import summary
from marketplace.export_records import export_dir
from marketplace.manifest import verify_export
from marketplace_tests.testing.deployments import TODAY, step_failure_message
from marketplace_tests.testing.housekeeping import DAY
from marketplace_tests.testing.housekeeping import age as _age
from marketplace_tests.testing.housekeeping import folder as _folder
from marketplace_tests.testing.housekeeping import parquet_files as _parquet_files
from marketplace_tests.testing.support import table_rows


def test_maintenance_job_removes_debris_and_keeps_exports_and_rows(servers, deploy, uid):
    ws = f"a{uid}"
    register_version(servers["ws_a"].uri, f"{uid}_iris", stage="Production")
    deployment = deploy(
        [
            {
                "name": ws,
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ],
        housekeeping={"debris_retention_hours": 12, "vacuum_retention_hours": 0},
    )
    synced = deployment.sync(ws)
    assert synced.success, step_failure_message(synced)
    root = Path(deployment.config.storage_root)
    export = export_dir(root, ws, f"{uid}_iris", 1)
    _age(export, 5 * DAY)  # an old valid export: never debris
    tables = {t: str(root / t) for t in (summary.EXPORT_SUMMARY, summary.IMPORT_SUMMARY)}
    rows = {t: table_rows(deployment, t) for t in tables}
    assert all(len(r) == 1 for r in rows.values())
    # A second small commit, so that compaction has something to do.
    extra = {**rows[summary.EXPORT_SUMMARY][0], "model_name": f"{uid}_other"}
    assert summary.merge_rows(tables[summary.EXPORT_SUMMARY], summary.EXPORT_SUMMARY, [extra]) == 1
    export_files_before = _parquet_files(tables[summary.EXPORT_SUMMARY])

    old_staging = _folder(export.parent / ".staging-2-0badf00d", {"model.json": "{"})
    old_unfinished = _folder(export.parent / "2", {"half.bin": "x"})
    young_unfinished = _folder(export.parent / "3", {"half.bin": "x"})
    old_tmp = (
        _folder(root / "production_models" / ws, {f"{TODAY}.tmp-999": "{"}) / f"{TODAY}.tmp-999"
    )
    for path in (old_staging, old_unfinished, old_tmp):
        _age(path, 18 * 3600)  # past the configured 12 hours, within the default 24
    _age(young_unfinished, 3600)

    job = deployment.defs.resolve_job_def("marketplace_maintenance_job")
    result = job.execute_in_process(instance=deployment.instance, raise_on_error=False)
    assert result.success, step_failure_message(result)

    assert not old_staging.exists() and not old_unfinished.exists() and not old_tmp.exists()
    assert young_unfinished.exists()  # younger than the configured 12 hours
    verify_export(export, expected_checksum=rows[summary.EXPORT_SUMMARY][0]["checksum"])
    assert (root / "production_models" / ws / f"{TODAY}.json").exists()
    assert table_rows(deployment, summary.IMPORT_SUMMARY) == rows[summary.IMPORT_SUMMARY]
    assert sorted(
        r["model_name"] for r in table_rows(deployment, summary.EXPORT_SUMMARY)
    ) == sorted([f"{uid}_iris", f"{uid}_other"])
    # Compacted and, with the configured retention of 0 hours, vacuumed from disk.
    after = _parquet_files(tables[summary.EXPORT_SUMMARY])
    assert len(DeltaTable(tables[summary.EXPORT_SUMMARY]).file_uris()) == 1
    assert after == {Path(u).name for u in DeltaTable(tables[summary.EXPORT_SUMMARY]).file_uris()}
    assert not export_files_before & after

    observed = {
        event.event_specific_data.asset_observation.asset_key.path[-1]: {
            k: v.value for k, v in event.event_specific_data.asset_observation.metadata.items()
        }
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    }
    assert observed[summary.EXPORT_SUMMARY]["files_compacted"] == len(export_files_before)
    assert observed[summary.EXPORT_SUMMARY]["files_vacuumed"] == len(export_files_before)
