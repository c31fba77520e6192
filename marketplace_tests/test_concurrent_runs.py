"""Several partitions synced at once, as separate CLI processes, lose no summary row."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import dagster as dg
from deltalake import DeltaTable
from mlflow import MlflowClient

from .conftest import TODAY, register_version
from .test_definitions import DAGSTER, ROOT

WORKSPACES = ("c1", "c2", "c3", "c4")  # the issue asks for at least 4 concurrent runs


def test_concurrent_partition_runs_keep_every_row(servers, deploy, uid, tmp_path):
    for workspace in WORKSPACES:
        register_version(servers["ws_a"].uri, f"{uid}_{workspace}_m", stage="Production")
    deployment = deploy(
        [
            {"name": w, "tracking_uri": servers["ws_a"].uri, "production": {"stage": "Production"},
             "include": [f"{uid}_{w}_*"]}
            for w in WORKSPACES
        ],
        marketplace={"name_template": uid + "-{workspace}.{model}"},
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    # Dagster creates its SQLite storage on first use, and racing first uses collide: create it once.
    dg.DagsterInstance.from_config(str(home)).dispose()
    env = {**os.environ, "MARKETPLACE_CONFIG": str(deployment.path), "DAGSTER_HOME": str(home)}
    logs = [tmp_path / f"{w}.log" for w in WORKSPACES]
    processes = []
    for w, log in zip(WORKSPACES, logs):
        with open(log, "wb") as output:  # a pipe read only at the end could fill and stall a run
            processes.append(subprocess.Popen(
                [str(DAGSTER), "asset", "materialize", "-m", "marketplace.definitions", "--select", "*",
                 "--partition", f"{TODAY.isoformat()}|{w}"],
                cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
            ))
    for process, log in zip(processes, logs):
        process.wait(timeout=600)
        assert process.returncode == 0, log.read_text(errors="replace")[-3000:]

    root = Path(deployment.config.storage_root)
    for table in ("export_summary", "import_summary"):
        rows = DeltaTable(str(root / table)).to_pyarrow_table().to_pylist()
        assert sorted((r["workspace"], r["model_name"]) for r in rows) == [
            (w, f"{uid}_{w}_m") for w in WORKSPACES
        ], table
    market = MlflowClient(servers["marketplace"].uri)
    for w in WORKSPACES:
        assert market.get_model_version_by_alias(f"{uid}-{w}.{uid}_{w}_m", "production").version == "1"
