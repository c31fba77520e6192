"""The export job's entry point (`marketplace-export`) run for real through PipesSubprocessClient.

`export.engine: subprocess` runs the same export code in a process of its own and reads each
version's outcome back over Dagster Pipes; these tests hold it to the in-process export's results.
"""

from __future__ import annotations

from mlflow import MlflowClient

from harness.local_servers import free_port
from harness.seeding import register_version
from marketplace.external import configured_storage
from marketplace.layout import export_key
from marketplace.manifest import read_manifest
from marketplace.registry import MARKER_PREFIX
from marketplace_dagster import keys
from marketplace_tests.testing.deployments import TODAY, materializations, step_failure_message
from marketplace_tests.testing.support import table_rows

SAME_COLUMNS = (
    "workspace",
    "model_name",
    "version",
    "run_id",
    "source",
    "export_date",
    "file_count",
    "size_bytes",
)
EXPORT_COUNTS = (
    "exported",
    "already_exported",
    "skipped",
    "failed",
    "exports_replaced",
    "bytes_exported",
)


def _workspace(servers, uid: str, engine: str) -> dict:
    return {
        "name": "piped",
        "tracking_uri": servers["ws_a"].uri,
        "production": {"stage": "Production"},
        "include": [f"{uid}_*"],
        "export": {"engine": engine},
    }


def test_the_pipes_export_gives_the_same_summary_rows_as_the_in_process_one(servers, deploy, uid):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    register_version(servers["ws_a"].uri, f"{uid}_n", stage="Production", kind="diabetes")
    # No marker: the first export's marker would change what the second one exports.
    runs = {}
    for engine in ("in_process", "subprocess"):
        deployment = deploy(
            [_workspace(servers, uid, engine)],
            source_marker=False,
            external_storage={"uri": f"external-{engine}"},
            marketplace={"name_template": f"{uid}-{engine}" + ".{workspace}.{model}"},
        )
        result = deployment.sync("piped")
        assert result.success, step_failure_message(result)
        runs[engine] = (deployment, result)

    exported = {e: materializations(r, keys.EXPORTS) for e, (_, r) in runs.items()}
    assert exported["subprocess"]["engines"] == ["subprocess"] and exported["in_process"][
        "engines"
    ] == ["in_process"]
    assert {k: exported["subprocess"][k] for k in EXPORT_COUNTS} == {
        k: exported["in_process"][k] for k in EXPORT_COUNTS
    }
    assert exported["subprocess"]["exported"] == 2
    rows = {}
    for engine, (deployment, _) in runs.items():
        storage = configured_storage(deployment.config)
        rows[engine] = sorted(
            table_rows(deployment, "export_summary"), key=lambda r: r["model_name"]
        )
        for row in rows[engine]:
            assert row["export_path"] == storage.location(
                export_key("piped", row["model_name"], row["version"])
            )
    assert [{c: r[c] for c in SAME_COLUMNS} for r in rows["subprocess"]] == [
        {c: r[c] for c in SAME_COLUMNS} for r in rows["in_process"]
    ]
    # The same files, and the same bytes of the model itself.
    for piped, local in zip(rows["subprocess"], rows["in_process"]):
        ours, _ = read_manifest(_tree(runs["subprocess"][0], piped))
        theirs, _ = read_manifest(_tree(runs["in_process"][0], local))
        assert ours.files.keys() == theirs.files.keys()
        assert {k: v["sha256"] for k, v in ours.files.items() if "/artifacts/" in k} == {
            k: v["sha256"] for k, v in theirs.files.items() if "/artifacts/" in k
        }
    # And the rest of the chain took them as its own.
    imported = materializations(runs["subprocess"][1], keys.IMPORTS)
    assert imported["imported"] == 2 and imported["failed"] == 0


def _tree(deployment, row):
    from marketplace.manifest import Tree

    storage = configured_storage(deployment.config)
    return Tree(storage, storage.key_of(row["export_path"]))


def test_the_pipes_export_marks_the_source_and_reports_skips_and_failures(
    servers, deploy, uid, cloud
):
    """On cloud storage, with the marker; a version whose run was deleted is skipped with its
    reason."""
    _, storage_config = cloud
    register_version(servers["ws_a"].uri, f"{uid}_good", stage="Production", description="fine")
    register_version(servers["ws_a"].uri, f"{uid}_orphan", stage="Production")
    source = MlflowClient(servers["ws_a"].uri)
    source.delete_run(source.get_model_version(f"{uid}_orphan", "1").run_id)
    deployment = deploy([_workspace(servers, uid, "subprocess")], external_storage=storage_config)

    result = deployment.sync("piped")

    assert result.success, step_failure_message(result)
    exported = materializations(result, keys.EXPORTS)
    assert (exported["exported"], exported["skipped"], exported["markers_written"]) == (1, 1, 1)
    assert "was deleted" in exported["skipped_versions"][f"piped/{uid}_orphan v1"]
    marked = source.get_model_version(f"{uid}_good", "1")
    assert marked.description == f"{MARKER_PREFIX}{TODAY.isoformat()}, old description: fine"
    assert materializations(result, keys.IMPORTS)["imported"] == 1

    # The workspace gone: the job reports each version failed; the partition fails naming them.
    dead = f"http://127.0.0.1:{free_port()}"
    down = deploy(
        [{**_workspace(servers, uid, "subprocess"), "tracking_uri": dead}],
        external_storage=storage_config,
    )
    register_version(servers["ws_a"].uri, f"{uid}_good", stage="Production")  # v2: not exported yet
    assert deployment.sync("piped", selection=[keys.PRODUCTION_MODELS]).success
    failed = down.sync("piped", selection=[keys.EXPORTS])
    assert not failed.success
    message = step_failure_message(failed)
    assert f"workspace piped ({dead}) {uid}_good v2: export failed" in message
