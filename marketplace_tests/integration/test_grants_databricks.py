"""Access grants on the Databricks workspace registry and on Unity Catalog, against
`DatabricksStandIn` only, which holds permissions in memory: no workspace is reachable here."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from harness import local_servers
from marketplace import databricks
from marketplace.grants import TAG_GRANTS, GrantError, Grants
from marketplace.registries import MarketplaceRegistry
from marketplace_tests.testing.databricks import TOKEN_OWNER, DatabricksStandIn
from marketplace_tests.testing.grants import ROLE
from marketplace_tests.testing.grants import grant as _grant
from marketplace_tests.testing.grants import grants_config as _config
from marketplace_tests.testing.grants import model_tags as _tags


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """The plain MLflow server behind the stand-in."""
    server = local_servers.LocalServer(
        "upstream", tmp_path_factory.mktemp("upstream"), local_servers.free_port()
    )
    local_servers.start(server)
    yield server
    local_servers.stop(server)


@pytest.fixture
def standin(upstream, monkeypatch):
    """A stand-in marketplace workspace (a token of its own), with this test's own profile file."""
    monkeypatch.setattr(databricks, "_profiles", databricks._Profiles())
    monkeypatch.setenv(databricks.CONFIG_FILE_ENV, "put back after the test")
    monkeypatch.delenv(databricks.CONFIG_FILE_ENV)
    monkeypatch.setenv("MARKET_TOKEN", "dapi-market-secret")
    with DatabricksStandIn(upstream.uri, auth="pat", token="dapi-market-secret") as workspace:
        yield workspace


def _databricks(standin: DatabricksStandIn, grants: list[dict], *, unity_catalog: bool = False):
    extra = {"name_template": "marketplace.{workspace}.{model}"} if unity_catalog else {}
    config = _config(
        grants,
        tracking_uri=None,
        databricks={
            "host": standin.host,
            "auth": "pat",
            "secret_env": "MARKET_TOKEN",
            "unity_catalog": unity_catalog,
        },
        **extra,
    )
    registry = MarketplaceRegistry(config)  # resolves the databricks block to its URIs
    return Grants(registry.settings, registry.tracking_uri), registry


@pytest.mark.servers
def test_databricks_workspace_registry_grants_and_revokes_only_its_own(standin, upstream, uid):
    name = f"dev01.{uid}_fraud"
    MlflowClient(upstream.uri).create_registered_model(name)
    acl = standin.permissions.acl(name)
    acl[("group_name", "auditors")] = "CAN_READ"  # made by hand
    configured = [
        _grant(ROLE, "group", "READ"),
        _grant("alice@example.com", "user", "EDIT"),
        _grant("app-0001", "service_principal", "MANAGE"),
        _grant("auditors", "group", "MANAGE"),
    ]
    _, registry = _databricks(standin, configured)
    grants, client = registry.grants, registry.client()  # as registration gets them

    assert grants.apply(client, name, _tags(client, name)) == 3
    assert acl == {
        ("user_name", TOKEN_OWNER): "CAN_MANAGE",
        ("group_name", "auditors"): "CAN_READ",
        ("group_name", ROLE): "CAN_READ",
        ("user_name", "alice@example.com"): "CAN_EDIT",
        ("service_principal_name", "app-0001"): "CAN_MANAGE",
    }
    assert json.loads(_tags(client, name)[TAG_GRANTS]) == [
        f"group:{ROLE}:READ",
        "service_principal:app-0001:MANAGE",
        "user:alice@example.com:EDIT",
    ]
    writes = len(standin.permissions.writes)
    assert grants.apply(client, name, _tags(client, name)) == 0
    assert len(standin.permissions.writes) == writes

    grants = _databricks(standin, [_grant(ROLE, "group", "READ")])[1].grants
    assert grants.apply(client, name, _tags(client, name)) == 2
    assert acl == {
        ("user_name", TOKEN_OWNER): "CAN_MANAGE",
        ("group_name", "auditors"): "CAN_READ",
        ("group_name", ROLE): "CAN_READ",
    }
    assert json.loads(_tags(client, name)[TAG_GRANTS]) == [f"group:{ROLE}:READ"]


@pytest.mark.servers
def test_databricks_workspace_registry_principal_that_does_not_exist(standin, upstream, uid):
    name = f"dev01.{uid}_ghost"
    MlflowClient(upstream.uri).create_registered_model(name)
    standin.permissions.unknown.add("ghosts")
    grants, registry = _databricks(
        standin, [_grant("ghosts", "group", "READ"), _grant(ROLE, "group", "READ")]
    )
    client = registry.client()
    with pytest.raises(GrantError) as raised:
        grants.apply(client, name, _tags(client, name))
    assert name in str(raised.value) and "group 'ghosts' does not exist" in str(raised.value), str(
        raised.value
    )
    assert standin.permissions.acl(name)[("group_name", ROLE)] == "CAN_READ"
    assert json.loads(_tags(client, name)[TAG_GRANTS]) == [f"group:{ROLE}:READ"]


@pytest.mark.servers
def test_unity_catalog_grants_execute_and_revokes_only_its_own(standin, upstream, uid):
    name = f"marketplace.dev01.{uid}_fraud"
    # The stand-in does not serve Unity Catalog's registry API: the model and its tags live
    # upstream.
    client = MlflowClient(upstream.uri)
    client.create_registered_model(name)
    held = standin.permissions.uc_grants(name)
    held.update({"auditors": {"EXECUTE"}, ROLE: {"APPLY_TAG"}})  # made by hand
    configured = [
        _grant(ROLE, "group", "EXECUTE"),
        _grant("app-0001", "service_principal", "EXECUTE"),
        _grant("auditors", "group", "EXECUTE"),
    ]
    grants, _ = _databricks(standin, configured, unity_catalog=True)

    assert grants.apply(client, name, _tags(client, name)) == 2
    assert held == {
        "auditors": {"EXECUTE"},
        ROLE: {"APPLY_TAG", "EXECUTE"},
        "app-0001": {"EXECUTE"},
    }
    assert json.loads(_tags(client, name)[TAG_GRANTS]) == [
        f"group:{ROLE}:EXECUTE",
        "service_principal:app-0001:EXECUTE",
    ]
    writes = len(standin.permissions.writes)
    assert grants.apply(client, name, _tags(client, name)) == 0
    assert len(standin.permissions.writes) == writes

    standin.permissions.unknown.add("ghosts")
    grants, _ = _databricks(
        standin,
        [_grant("app-0001", "service_principal", "EXECUTE"), _grant("ghosts", "group", "EXECUTE")],
        unity_catalog=True,
    )
    with pytest.raises(GrantError) as raised:
        grants.apply(
            client, name, _tags(client, name)
        )  # the group's EXECUTE is revoked all the same
    assert "group 'ghosts' does not exist in Unity Catalog" in str(raised.value), str(raised.value)
    assert held == {"auditors": {"EXECUTE"}, ROLE: {"APPLY_TAG"}, "app-0001": {"EXECUTE"}}
    assert json.loads(_tags(client, name)[TAG_GRANTS]) == ["service_principal:app-0001:EXECUTE"]
