"""The export as a Databricks job through PipesDatabricksClient, by configuration alone.

No workspace is reachable here: `DatabricksStandIn` takes the job (Jobs API `runs/submit`, with
the workspace's own credentials), runs the wheel's entry point as a local process with the
cluster's environment (secret references resolved, the workspace identity a job has), and serves
the Unity Catalog volume that carries the Pipes context and messages. The export itself is real:
a real MLflow server behind the stand-in, real S3 (moto) storage, real Delta tables.
"""

from __future__ import annotations

import json
import os

import pytest
from mlflow import MlflowClient

from harness.seeding import register_version
from marketplace.external import configured_storage
from marketplace.layout import export_key
from marketplace.signatures import generate_key_pair, verify_export_signature
from marketplace_dagster import keys
from marketplace_tests.testing.databricks import DatabricksStandIn
from marketplace_tests.testing.databricks_settings import PAT_CONNECTION as DBX
from marketplace_tests.testing.databricks_settings import S3_STORAGE, VOLUME, WHEEL
from marketplace_tests.testing.databricks_settings import SERVERLESS_EXPORT as GOOD
from marketplace_tests.testing.deployments import materializations, step_failure_message
from marketplace_tests.testing.emulators import CLOUD_KEYS, S3_KEY_ID, S3_SECRET
from marketplace_tests.testing.support import table_rows

SECRET_ENV = {
    CLOUD_KEYS["id"]: "{{secrets/marketplace/s3-key-id}}",
    CLOUD_KEYS["secret"]: "{{secrets/marketplace/s3-secret}}",
}
COMPUTE = {
    "new_cluster": {
        "new_cluster": {
            "spark_version": "15.4.x-scala2.12",
            "node_type_id": "i3.xlarge",
            "num_workers": 0,
        }
    },
    "serverless": {"serverless": True},
}


pytestmark = pytest.mark.usefixtures("own_databricks_profiles")


@pytest.fixture
def s3_storage(emulators, uid, monkeypatch) -> dict:
    """A bucket of the test's own, its credentials and the workspace token in the Dagster
    process."""
    s3 = emulators["s3"]
    s3.make_space(f"{uid}-dbx")
    for name, value in s3.credentials(CLOUD_KEYS).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("DEV01_TOKEN", "dapi-dev01-secret")
    return s3.storage_config(f"{uid}-dbx", "marketplace", CLOUD_KEYS)


def _standin(servers, tmp_path, secrets_store: dict[str, str]) -> DatabricksStandIn:
    """A workspace in front of ws_a taking the token dapi-dev01-secret, its secret scope holding
    `secrets_store`, its volumes under the test's workspace/ folder."""
    return DatabricksStandIn(
        servers["ws_a"].uri,
        auth="pat",
        token="dapi-dev01-secret",
        volumes_root=tmp_path / "workspace",
        secrets_store=secrets_store,
        cluster_env={"AWS_EC2_METADATA_DISABLED": "true"},
    )


def _workspace(workspace: DatabricksStandIn, uid: str, export: dict, **extra) -> dict:
    """Workspace dev01 on the stand-in, its token in DEV01_TOKEN, exporting the test's models
    with `export`."""
    return {
        "name": "dev01",
        "databricks": {**DBX, "host": workspace.host},
        "production": {"stage": "Production"},
        "include": [f"{uid}_*"],
        "export": export,
        **extra,
    }


def _failure_and_job_logs(result, workspace: DatabricksStandIn) -> str:
    """The run's step failure and the end of each job's log."""
    return (
        step_failure_message(result)
        + "\n"
        + "\n".join(
            run["log"].read_text(errors="replace")[-3000:] for run in workspace.jobs.runs.values()
        )
    )


@pytest.mark.parametrize("compute", sorted(COMPUTE))
def test_the_export_runs_as_a_databricks_job_and_reports_back(
    compute, servers, deploy, uid, s3_storage, tmp_path
):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production", description="before")
    secrets_store = {"marketplace/s3-key-id": S3_KEY_ID, "marketplace/s3-secret": S3_SECRET}
    with _standin(servers, tmp_path, secrets_store) as workspace:
        export = {
            "engine": "databricks",
            "wheel": WHEEL,
            "volume_path": VOLUME,
            "env": SECRET_ENV,
            "poll_interval_seconds": 0.2,
            **COMPUTE[compute],
        }
        deployment = deploy(
            [_workspace(workspace, uid, export)],
            external_storage=s3_storage,
            marketplace={"name_template": uid + ".{workspace}.{model}"},
        )
        result = deployment.sync("dev01")
        assert result.success, _failure_and_job_logs(result, workspace)

    exported = materializations(result, keys.EXPORTS)
    assert exported["engines"] == ["databricks"]
    assert (exported["exported"], exported["failed"], exported["markers_written"]) == (1, 0, 1)
    # The job: this package's wheel by its entry point, the Pipes context through the volume,
    # credentials only as secret references.
    (spec,) = workspace.jobs.submitted
    (task,) = spec["tasks"]
    assert task["python_wheel_task"]["package_name"] == "marketplace"
    assert task["python_wheel_task"]["entry_point"] == "marketplace-export"
    assert task["python_wheel_task"]["parameters"][:2] == ["--transport", "volumes"]
    assert spec["idempotency_token"] and spec["timeout_seconds"] == task["timeout_seconds"]
    if compute == "serverless":
        assert task["environment_key"] == spec["environments"][0]["environment_key"]
        assert spec["environments"][0]["spec"]["dependencies"] == [WHEEL]
        assert "--dagster-pipes-context" in task["python_wheel_task"]["parameters"]
        # No environment on serverless: the job read its secrets itself, with its own identity.
        assert sorted(workspace.jobs.secrets_read) == sorted(secrets_store)
    else:
        assert task["libraries"] == [{"whl": WHEEL}]
        env = task["new_cluster"]["spark_env_vars"]
        assert {k: env[k] for k in SECRET_ENV} == SECRET_ENV and "DAGSTER_PIPES_CONTEXT" in env
        assert workspace.jobs.secrets_read == []  # the cluster resolved the references
    text = json.dumps(spec)
    for secret in (S3_SECRET, S3_KEY_ID, "dapi-dev01-secret"):
        assert secret not in text
    # Every call came with the workspace's credentials; the volume's Pipes folders were cleaned up.
    assert set(workspace.refused) <= {"/api/2.0/clusters/list-node-types"}
    assert not any((tmp_path / "workspace" / VOLUME.lstrip("/") / "tmp").glob("*"))
    # What the job exported is what the in-process export would have recorded.
    storage = configured_storage(deployment.config)
    (row,) = table_rows(deployment, "export_summary")
    version = MlflowClient(servers["ws_a"].uri).get_model_version(f"{uid}_m", "1")
    assert (row["workspace"], row["model_name"], row["version"], row["run_id"]) == (
        "dev01",
        f"{uid}_m",
        1,
        version.run_id,
    )
    assert (
        row["export_path"] == storage.location(export_key("dev01", f"{uid}_m", 1))
        and row["file_count"] > 3
    )
    assert version.description.startswith("Exported Already On ")  # the job wrote the marker
    assert materializations(result, keys.IMPORTS)["imported"] == 1


def test_the_job_signs_the_export_with_a_key_read_from_a_secret(
    servers, deploy, uid, s3_storage, tmp_path, monkeypatch
):
    private, public = generate_key_pair()
    (tmp_path / "dev01.pub.pem").write_text(public)
    monkeypatch.delenv(
        "DEV01_SIGNING_KEY", raising=False
    )  # only the workspace's secret scope holds it
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    secrets_store = {
        "marketplace/s3-key-id": S3_KEY_ID,
        "marketplace/s3-secret": S3_SECRET,
        "marketplace/dev01-signing-key": private,
    }
    with _standin(servers, tmp_path, secrets_store) as workspace:
        export = {
            "engine": "databricks",
            "wheel": WHEEL,
            "volume_path": VOLUME,
            "poll_interval_seconds": 0.2,
            "serverless": True,
            "env": {**SECRET_ENV, "DEV01_SIGNING_KEY": "{{secrets/marketplace/dev01-signing-key}}"},
        }
        deployment = deploy(
            [
                _workspace(
                    workspace,
                    uid,
                    export,
                    signing={
                        "private_key_env": "DEV01_SIGNING_KEY",
                        "public_key": "dev01.pub.pem",
                    },
                )
            ],
            external_storage=s3_storage,
            marketplace={"name_template": uid + ".{workspace}.{model}"},
        )
        result = deployment.sync("dev01")
        assert result.success, _failure_and_job_logs(result, workspace)

    # Serverless: the job read the key through the secrets API itself; the spec holds only its
    # reference.
    assert "marketplace/dev01-signing-key" in workspace.jobs.secrets_read
    assert private not in json.dumps(workspace.jobs.submitted)
    storage = configured_storage(deployment.config)
    with storage.local_tree(export_key("dev01", f"{uid}_m", 1)) as local:
        verify_export_signature(local, public)
    assert materializations(result, keys.IMPORTS)["imported"] == 1
    assert MlflowClient(servers["marketplace"].uri).get_model_version_by_alias(
        f"{uid}.dev01.{uid}_m", "production"
    )


def test_a_job_that_fails_fails_the_partition_with_its_state(
    servers, deploy, uid, s3_storage, tmp_path
):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    # The workspace's secret scope lacks the storage secret: the serverless job cannot read it.
    with _standin(servers, tmp_path, {"marketplace/s3-key-id": S3_KEY_ID}) as workspace:
        deployment = deploy(
            [
                _workspace(
                    workspace,
                    uid,
                    {
                        "engine": "databricks",
                        "wheel": WHEEL,
                        "volume_path": VOLUME,
                        "env": SECRET_ENV,
                        "poll_interval_seconds": 0.2,
                        "serverless": True,
                    },
                )
            ],
            external_storage=s3_storage,
        )
        result = deployment.sync("dev01")
        (run,) = workspace.jobs.runs.values()
        job_log = run["log"].read_text(errors="replace")
    assert not result.success
    message = step_failure_message(result)
    assert (
        f"workspace dev01 (databricks://marketplace-ws-dev01) {uid}_m v1: the export job failed"
        in message
    )
    assert "the task exited with 1" in message
    assert "no such secret" in job_log or "RESOURCE_DOES_NOT_EXIST" in job_log
    assert table_rows(deployment, "export_summary") == []


def test_a_missing_job_variable_in_the_dagster_process_fails_before_submitting(
    deploy, servers, uid, monkeypatch, tmp_path
):
    """The run reads the storage credentials itself first: a missing one fails naming it, no job
    starts."""
    monkeypatch.setenv("DEV01_TOKEN", "dapi")
    monkeypatch.delenv("K_SECRET", raising=False)
    monkeypatch.setenv("K_ID", "x")
    with DatabricksStandIn(
        servers["ws_a"].uri, auth="pat", token="dapi", volumes_root=tmp_path
    ) as ws:
        deployment = deploy(
            [
                {
                    "name": "dev01",
                    "databricks": {**DBX, "host": ws.host},
                    "production": {"stage": "Production"},
                    "include": [f"{uid}_*"],
                    "export": GOOD,
                }
            ],
            external_storage=S3_STORAGE,
        )
        result = deployment.sync("dev01", selection=[keys.EXPORTS])
    assert not result.success
    assert "K_SECRET" in step_failure_message(result)
    assert ws.jobs.submitted == []
    assert os.environ.get("K_SECRET") is None
