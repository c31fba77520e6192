"""Databricks workspaces and a Databricks marketplace, by configuration alone.

No Databricks workspace is reachable here: these run against `DatabricksStandIn`, which checks
each workspace's credentials as Databricks' front door does and forwards to a real MLflow server.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from marketplace import databricks
from marketplace.config import ConfigError, parse_config
from marketplace.naming import UC_NAME_LIMIT, render_name
from marketplace.registries import SourceRegistries
from marketplace.registry import searched
from marketplace_tests.testing.databricks_settings import connection_settings as _settings

pytestmark = pytest.mark.usefixtures("own_databricks_profiles")


BASE = {
    "external_storage": {"uri": "x"},
    "workspaces": [
        {
            "name": "dev01",
            "tracking_uri": "http://127.0.0.1:5001",
            "production": {"stage": "Production"},
        }
    ],
}


def _config(marketplace: dict, workspaces: list | None = None):
    return parse_config(
        {**BASE, "marketplace": marketplace, **({"workspaces": workspaces} if workspaces else {})},
        "marketplace.yaml",
    )


def _dbx(**extra) -> dict:
    return {
        "host": "https://adb-1.2.azuredatabricks.net",
        "auth": "pat",
        "secret_env": "TOKEN_VAR",
        **extra,
    }


def test_databricks_blocks_become_profile_uris():
    config = _config(
        {
            "databricks": _dbx(auth="oauth-m2m", client_id="sp", unity_catalog=True),
            "name_template": "marketplace.{workspace}.{model}",
        },
        [
            {
                "name": "dev01",
                "databricks": _dbx(unity_catalog=True),
                "production": {"alias": "champion"},
            },
            {
                "name": "dev02",
                "databricks": _dbx(
                    auth="azure-client-secret", azure_client_id="a", azure_tenant_id="t"
                ),
                "production": {"stage": "Production"},
            },
        ],
    )
    assert databricks.registry_uris(config.marketplace) == (
        "databricks://marketplace-registry",
        "databricks-uc://marketplace-registry",
    )
    assert (
        databricks.registry_uris(config.workspaces[0])[1] == "databricks-uc://marketplace-ws-dev01"
    )
    assert (
        databricks.registry_uris(config.workspaces[1]) == ("databricks://marketplace-ws-dev02",) * 2
    )
    # The configuration keeps what the file says; the registry access reaches the profile's URIs.
    assert config.workspaces[1].tracking_uri is None
    assert SourceRegistries(config).get("dev02").tracking_uri == "databricks://marketplace-ws-dev02"


@pytest.mark.parametrize(
    "marketplace, workspaces, key, says",
    [
        (
            {"databricks": _dbx(unity_catalog=True)},
            None,
            "marketplace.name_template",
            "three levels",
        ),
        (
            {"databricks": _dbx(unity_catalog=True), "name_template": "cat.{model}.{workspace}"},
            None,
            "marketplace.name_template",
            "last (model) level",
        ),
        (
            {"databricks": _dbx(unity_catalog=True), "name_template": "my cat.{workspace}.{model}"},
            None,
            "marketplace.name_template",
            "three levels",
        ),
        ({"databricks": _dbx(auth="oauth-m2m")}, None, "marketplace", "needs client_id"),
        (
            {"databricks": _dbx(auth="azure-client-secret", azure_client_id="a")},
            None,
            "marketplace",
            "needs azure_tenant_id",
        ),
        ({"databricks": _dbx(client_id="x")}, None, "marketplace", "not used with auth 'pat'"),
        (
            {"databricks": _dbx(secret_env="not a name")},
            None,
            "marketplace.databricks.secret_env",
            "pattern",
        ),
        (
            {"databricks": _dbx(host="adb-1.azuredatabricks.net")},
            None,
            "marketplace.databricks.host",
            "workspace URL",
        ),
        (
            {"databricks": _dbx(host="https://user:pw@adb-1.azuredatabricks.net")},
            None,
            "marketplace.databricks.host",
            "must not carry credentials",
        ),
        (
            {"databricks": _dbx(host="http://adb-1.azuredatabricks.net")},
            None,
            "marketplace.databricks.host",
            "clear text",
        ),
        (
            {"databricks": _dbx(secret_env="DATABRICKS_TOKEN")},
            None,
            "marketplace.databricks.secret_env",
            "a variable of its own",
        ),
        ({"tracking_uri": "http://x:1", "databricks": _dbx()}, None, "marketplace", "not both"),
        (
            {"name_template": "{workspace}.{model}"},
            None,
            "marketplace.tracking_uri",
            "or give a databricks block",
        ),
        (
            {"tracking_uri": "http://x:1"},
            [
                {
                    "name": "dev01",
                    "databricks": _dbx(unity_catalog=True),
                    "production": {"stage": "Production"},
                }
            ],
            "workspaces[0] (dev01)",
            "no stages",
        ),
        (
            {"tracking_uri": "http://x:1"},
            [{"name": "dev01", "databricks": _dbx(), "production": {"alias": "champion"}}],
            "workspaces[0] (dev01)",
            "refuses aliases",
        ),
    ],
)
def test_wrong_databricks_settings_name_the_key(marketplace, workspaces, key, says):
    with pytest.raises(ConfigError) as raised:
        _config(marketplace, workspaces)
    assert raised.value.key.startswith(key) and says in str(raised.value), str(raised.value)


def test_profile_file_is_private_and_holds_each_workspace_credentials(monkeypatch, tmp_path):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    settings = _settings(monkeypatch, tmp_path)
    monkeypatch.setenv("DEV01_SECRET", "s3cr3t-dev01")
    monkeypatch.setenv("DATABRICKS_HOST", "https://somewhere-else")
    monkeypatch.setenv("DEV02_TOKEN", "dapi-dev02")
    databricks.ensure_profile("workspace dev01", "databricks://marketplace-ws-dev01", settings)
    databricks.ensure_profile(
        "workspace dev02",
        "databricks://marketplace-ws-dev02",
        settings.model_copy(update={"auth": "pat", "client_id": None, "secret_env": "DEV02_TOKEN"}),
    )
    path = Path(os.environ[databricks.CONFIG_FILE_ENV])
    assert path.is_relative_to(tmp_path)
    assert (
        stat.S_IMODE(path.stat().st_mode) == 0o600
        and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    )
    text = path.read_text()
    assert "[marketplace-ws-dev01]" in text and "auth_type = oauth-m2m" in text
    assert "client_secret = s3cr3t-dev01" in text and "client_id = sp" in text
    assert "[marketplace-ws-dev02]" in text and "token = dapi-dev02" in text
    assert "DATABRICKS_HOST" not in os.environ  # it would override every profile's host


def test_unity_catalog_names_are_valid_distinct_and_traceable():
    template = "marketplace.{workspace}.{model}"
    assert (
        render_name(template, "dev01", "churn_model", unity_catalog=True)
        == "marketplace.dev01.churn_model"
    )
    odd = [
        render_name(template, "dev01", name, unity_catalog=True)
        for name in ("Churn Model", "churn model", "churn.model", "Ünïcode", "L" * 300)
    ]
    for name in odd:
        _catalog, _schema, model = name.split(".")
        assert len(model) <= UC_NAME_LIMIT and model == model.lower()
        assert all(c.isalnum() and c.isascii() or c in "_-" for c in model), name
    assert len(set(odd)) == len(odd)  # cleaned names never meet: each keeps a hash of its original
    assert render_name(template, "dev01", "churn model", unity_catalog=True).startswith(
        "marketplace.dev01.churn_model_"
    )


class _UnityCatalogSearchResult:
    """What MLflow's Unity Catalog store returns from searches: reading tags or aliases raises."""

    name, version = "m", "1"

    @property
    def tags(self):
        raise Exception(  # noqa: TRY002 - mirrors MLflow, which raises a bare Exception here
            "UC Model Versions gathered through search_model_versions do not have tags"
        )

    aliases = tags


def test_unity_catalog_search_results_without_tags_or_aliases_are_read_again():
    assert searched(_UnityCatalogSearchResult(), "tags") == {}
    assert searched(_UnityCatalogSearchResult(), "aliases") == {}
    assert searched(ModelVersion("m", "1", 0, tags=[ModelVersionTag("k", "v")]), "tags") == {
        "k": "v"
    }
