"""The marketplace registry on PostgreSQL: `mlflow server --workers 4` over psycopg2, as
registry operators run it, written by six workspaces' runs at once."""

from __future__ import annotations

from mlflow import MlflowClient

from marketplace_tests.testing.deployments import materialize_in_processes, one_model_each
from marketplace_tests.testing.support import table_rows

WORKSPACES = ("pg1", "pg2", "pg3", "pg4", "pg5", "pg6")


def test_six_workspaces_syncing_at_once_write_each_version_once(
    servers, pg_marketplace, deploy, uid, tmp_path
):
    deployment = one_model_each(
        servers,
        deploy,
        uid,
        WORKSPACES,
        marketplace={"tracking_uri": pg_marketplace.uri},
        # Six runs and four server workers share this machine's cores: production's bounds.
        client={"timeout_seconds": 60, "max_retries": 2},
    )
    materialize_in_processes(deployment, WORKSPACES, tmp_path)

    market = MlflowClient(pg_marketplace.uri)
    for w in WORKSPACES:
        name = f"{uid}-{w}.{uid}_{w}_m"
        assert [v.version for v in market.search_model_versions(f"name='{name}'")] == ["1"], name
        assert market.get_model_version_by_alias(name, "production").version == "1"
    rows = table_rows(deployment, "import_summary")
    assert sorted((r["workspace"], r["model_name"]) for r in rows) == [
        (w, f"{uid}_{w}_m") for w in WORKSPACES
    ]
