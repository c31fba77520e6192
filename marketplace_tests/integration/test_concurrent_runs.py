"""Several partitions synced at once, as separate CLI processes, lose no summary row."""

from __future__ import annotations

from mlflow import MlflowClient

from marketplace_tests.testing.deployments import materialize_in_processes, one_model_each
from marketplace_tests.testing.support import table_rows

WORKSPACES = ("c1", "c2", "c3", "c4")  # the issue asks for at least 4 concurrent runs


def test_concurrent_partition_runs_keep_every_row(servers, deploy, uid, tmp_path):
    deployment = one_model_each(servers, deploy, uid, WORKSPACES)
    materialize_in_processes(deployment, WORKSPACES, tmp_path)

    for table in ("export_summary", "import_summary"):
        rows = table_rows(deployment, table)
        assert sorted((r["workspace"], r["model_name"]) for r in rows) == [
            (w, f"{uid}_{w}_m") for w in WORKSPACES
        ], table
    market = MlflowClient(servers["marketplace"].uri)
    for w in WORKSPACES:
        assert (
            market.get_model_version_by_alias(f"{uid}-{w}.{uid}_{w}_m", "production").version == "1"
        )
