"""The export as a Databricks job, without a workspace: the job spec each kind of compute gets, and
the Databricks export engine's settings (a complete one loads, a wrong one names its key). The job
itself runs against `DatabricksStandIn` in integration/test_databricks_jobs.py."""

from __future__ import annotations

import pytest

from marketplace.config import ConfigError, ExportEngineConfig, parse_config
from marketplace_dagster.engines import databricks_task
from marketplace_tests.testing.databricks_settings import PAT_CONNECTION as DBX
from marketplace_tests.testing.databricks_settings import S3_STORAGE, VOLUME, WHEEL
from marketplace_tests.testing.databricks_settings import SERVERLESS_EXPORT as GOOD

pytestmark = pytest.mark.usefixtures("own_databricks_profiles")


def test_job_specs_for_each_kind_of_compute():
    existing, _ = databricks_task(
        "dev-01",
        ExportEngineConfig(
            engine="databricks",
            wheel=WHEEL,
            existing_cluster_id="0101-abc",
            libraries=["scikit-learn==1.5.2"],
        ),
    )
    assert (
        existing.task_key == "marketplace_export_dev_01"
        and existing.existing_cluster_id == "0101-abc"
    )
    assert [lib.as_dict() for lib in existing.libraries] == [
        {"whl": WHEEL},
        {"pypi": {"package": "scikit-learn==1.5.2"}},
    ]
    assert existing.python_wheel_task.parameters == ["--transport", "dbfs"]  # no volume: DBFS
    cluster, submit = databricks_task(
        "dev01",
        ExportEngineConfig(
            engine="databricks",
            wheel=WHEEL,
            new_cluster={"spark_version": "15.4.x", "spark_env_vars": {"A": "1"}},
            env={"B": "{{secrets/s/k}}"},
            volume_path=VOLUME,
            timeout_seconds=600,
        ),
    )
    assert cluster.new_cluster.spark_env_vars == {"A": "1", "B": "{{secrets/s/k}}"}
    assert submit["timeout_seconds"] == 600 and cluster.timeout_seconds == 600


BASE = {"marketplace": {"tracking_uri": "http://127.0.0.1:5000"}}


def _config(export: dict, *, storage=S3_STORAGE, connection=DBX):
    workspace = {
        "name": "dev01",
        "production": {"stage": "Production"},
        "export": export,
        **({"databricks": connection} if connection else {"tracking_uri": "http://127.0.0.1:5001"}),
    }
    return parse_config(
        {**BASE, "external_storage": storage, "workspaces": [workspace]}, "deploy.yaml"
    )


def test_a_complete_databricks_engine_configuration_loads():
    engine = _config(GOOD).workspaces[0].export
    assert engine.engine == "databricks" and engine.serverless and engine.volume_path == VOLUME


@pytest.mark.parametrize(
    "change, storage, connection, key, says",
    [
        ({"wheel": None}, S3_STORAGE, DBX, "workspaces[0] (dev01).export", "needs wheel"),
        ({"serverless": False}, S3_STORAGE, DBX, "workspaces[0] (dev01).export", "exactly one of"),
        (
            {"existing_cluster_id": "0101"},
            S3_STORAGE,
            DBX,
            "workspaces[0] (dev01).export",
            "exactly one of",
        ),
        ({"volume_path": None}, S3_STORAGE, DBX, "workspaces[0] (dev01).export", "set volume_path"),
        (
            {"volume_path": "/tmp/pipes"},
            S3_STORAGE,
            DBX,
            "workspaces[0] (dev01).export.volume_path",
            "volume path",
        ),
        (
            {"env": {"K_ID": "AKIA-plain-value", "K_SECRET": "{{secrets/mp/secret}}"}},
            S3_STORAGE,
            DBX,
            "workspaces[0] (dev01).export.env",
            "secret reference",
        ),
        (
            {"env": {"K_ID": "{{secrets/mp/id}}"}},
            S3_STORAGE,
            DBX,
            "workspaces[0] (dev01).export.env",
            "K_SECRET",
        ),
        (
            {},
            {"uri": "external"},
            DBX,
            "workspaces[0] (dev01).export.engine",
            "cannot write to a local folder",
        ),
        ({}, S3_STORAGE, None, "workspaces[0] (dev01)", "give the workspace a databricks block"),
        (
            {"engine": "subprocess"},
            S3_STORAGE,
            DBX,
            "workspaces[0] (dev01).export",
            "only for engine: databricks",
        ),
        (
            {"serverless": False, "new_cluster": {"num_workers": 1}},
            S3_STORAGE,
            DBX,
            "workspaces[0] (dev01).export",
            "spark_version",
        ),
        ({"engine": "spark"}, S3_STORAGE, DBX, "workspaces[0] (dev01).export.engine", "in_process"),
    ],
)
def test_wrong_export_engine_settings_name_the_key(change, storage, connection, key, says):
    with pytest.raises(ConfigError) as raised:
        _config({**GOOD, **change}, storage=storage, connection=connection)
    assert raised.value.key == key and says in str(raised.value), str(raised.value)
