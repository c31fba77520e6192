"""Databricks workspaces and a Databricks marketplace, by configuration alone.

No Databricks workspace is reachable here: these run against `DatabricksStandIn`, which checks
each workspace's credentials as Databricks' front door does and forwards to a real MLflow server.
"""

from __future__ import annotations

import os
import warnings

import dagster as dg
import pytest
from mlflow import MlflowClient

from harness.seeding import register_version
from marketplace import databricks
from marketplace.provenance import TAG_SOURCE_MODEL
from marketplace_dagster import keys
from marketplace_tests.testing.databricks import DatabricksStandIn
from marketplace_tests.testing.databricks_settings import connection_settings as _settings
from marketplace_tests.testing.deployments import materializations, step_failure_message

pytestmark = pytest.mark.usefixtures("own_databricks_profiles")


def test_sync_between_databricks_workspaces_each_with_its_own_service_principal(
    servers, deploy, uid, monkeypatch
):
    register_version(servers["ws_a"].uri, f"{uid}_m", stage="Production")
    monkeypatch.setenv("DEV01_TOKEN", "dapi-dev01-secret")
    monkeypatch.setenv("MARKET_SP_SECRET", "sp-market-secret")
    monkeypatch.setenv("DATABRICKS_TOKEN", "a-global-token-that-would-win")  # cleared by the run
    with (
        DatabricksStandIn(servers["ws_a"].uri, auth="pat", token="dapi-dev01-secret") as source,
        DatabricksStandIn(
            servers["marketplace"].uri,
            auth="oauth-m2m",
            client_id="market-sp",
            client_secret="sp-market-secret",
        ) as market,
    ):
        deployment = deploy(
            [
                {
                    "name": "dev01",
                    "databricks": {"host": source.host, "auth": "pat", "secret_env": "DEV01_TOKEN"},
                    "production": {"stage": "Production"},
                    "include": [f"{uid}_*"],
                }
            ],
            marketplace={
                "tracking_uri": None,
                "databricks": {
                    "host": market.host,
                    "auth": "oauth-m2m",
                    "client_id": "market-sp",
                    "secret_env": "MARKET_SP_SECRET",
                },
            },
        )
        result = deployment.sync("dev01")
        promoted = MlflowClient(servers["marketplace"].uri).search_model_versions(
            f"name='dev01.{uid}_m'"
        )
        # Retired in the source: on a stages-only registry the copy leaves Production for Archived.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            MlflowClient(servers["ws_a"].uri).transition_model_version_stage(
                f"{uid}_m", "1", "Archived"
            )
        retired = deployment.sync("dev01")
    assert result.success, step_failure_message(result)
    assert retired.success, step_failure_message(retired)
    assert materializations(retired, keys.REGISTRATION)["retired"] == 1
    (archived,) = MlflowClient(servers["marketplace"].uri).search_model_versions(
        f"name='dev01.{uid}_m'"
    )
    assert archived.current_stage == "Archived"
    assert (
        MlflowClient(servers["marketplace"].uri)
        .get_registered_model(f"dev01.{uid}_m")
        .tags["marketplace.status"]
        == "retired"
    )
    assert source.api_calls > 0 and market.api_calls > 0
    # mlflow-export-import probes once per process whether it talks to Databricks, with a client of
    # its own that knows only tokens from ~/.databrickscfg; that probe is refused
    # (docs/databricks.md).
    assert set(source.refused + market.refused) <= {"/api/2.0/clusters/list-node-types"}
    # The Databricks workspace registry has stages only (MLflow refuses aliases there).
    version = materializations(result, keys.REGISTRATION)
    assert version["promoted"] == 1 and version["models_registered"] == 1
    (version,) = promoted
    assert version.current_stage == "Production" and version.tags[TAG_SOURCE_MODEL] == f"{uid}_m"
    assert version.aliases == []
    assert "DATABRICKS_TOKEN" not in os.environ
    # Neither secret shows in any event, log line or metadata value of the run.
    events = "\n".join(dg.serialize_value(event) for event in result.all_events)
    assert "dapi-dev01-secret" not in events and "sp-market-secret" not in events


def test_missing_secret_variable_names_the_workspace_and_variable_not_a_secret(
    monkeypatch, tmp_path, deploy
):
    monkeypatch.delenv("DEV01_SECRET", raising=False)
    with pytest.raises(databricks.DatabricksCredentialError) as raised:
        databricks.ensure_profile(
            "workspace dev01", "databricks://marketplace-ws-dev01", _settings(monkeypatch, tmp_path)
        )
    assert str(raised.value).startswith("workspace dev01: the environment variable DEV01_SECRET")

    deployment = deploy(
        [
            {
                "name": "dev01",
                "databricks": {
                    "host": "https://adb-1.net",
                    "auth": "pat",
                    "secret_env": "DEV01_SECRET",
                },
                "production": {"stage": "Production"},
            }
        ]
    )
    result = deployment.sync("dev01")
    assert not result.success
    assert "workspace dev01: the environment variable DEV01_SECRET" in step_failure_message(result)
