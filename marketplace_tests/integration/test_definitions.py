"""The code location as Dagster and the CLI load it."""

from __future__ import annotations

import subprocess

import dagster as dg
from mlflow import MlflowClient

from harness.local_dagster import instance_env
from harness.seeding import register_version
from marketplace.provenance import TAG_SOURCE_VERSION
from marketplace_dagster import keys
from marketplace_tests.testing.deployments import TODAY, materialize_command
from marketplace_tests.testing.support import ROOT


def test_cli_materializes_one_partition(servers, deploy, uid, tmp_path):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    deployment = deploy(
        [
            {
                "name": "cli",
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ],
        marketplace={"name_template": "cli-{workspace}.{model}"},
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = instance_env(deployment.path, home)
    command = materialize_command(f"{TODAY.isoformat()}|cli")
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    version = MlflowClient(servers["marketplace"].uri).get_model_version_by_alias(
        f"cli-cli.{uid}_m", "production"
    )
    assert version.tags[TAG_SOURCE_VERSION] == "1"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.fetch_materializations(keys.REGISTRATION, limit=5).records
        assert [r.partition_key for r in records] == [f"{TODAY.isoformat()}|cli"]
