"""Access grants on marketplace models: which grants a model wants and what to change, as plain
data; then each registry's own permissions.

The OSS path runs against a real `mlflow server --app-name basic-auth` whose users get nothing by
default (NO_PERMISSIONS). The Databricks workspace registry and Unity Catalog paths run only
against `DatabricksStandIn`, which holds permissions in memory: no workspace is reachable here.
"""

from __future__ import annotations

import contextlib
import json
import secrets

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

from harness import local_servers
from marketplace import credentials
from marketplace.config import parse_config
from marketplace.errors import MarketplaceError
from marketplace.grants import (
    TAG_GRANTS,
    Grant,
    Grants,
    plan,
    record_value,
    recorded_grants,
)
from marketplace.registries import MarketplaceRegistry
from marketplace_tests.testing.faults import FaultProxy
from marketplace_tests.testing.support import AuthenticatedServer, start_authenticated

UNUSED_URI = "http://127.0.0.1:9"
WORKSPACES = [{"name": "dev01", "tracking_uri": UNUSED_URI, "production": {"stage": "Production"}}]
ROLE = "fraud-analysts"
MARKET_USER = "marketplace"
PASSWORDS = {
    name: secrets.token_urlsafe(12)
    for name in (MARKET_USER, "alice", "bob", "carol", "dana", "erin")
}


def _config(grants: list[dict], **marketplace):
    raw = {
        "external_storage": {"uri": "x"},
        "workspaces": WORKSPACES,
        "marketplace": {"tracking_uri": UNUSED_URI, "grants": grants, **marketplace},
    }
    return parse_config(raw, "marketplace.yaml")


def _grant(principal: str, kind: str, permission: str, *models: str) -> dict:
    return {
        "principal": principal,
        "kind": kind,
        "permission": permission,
        "models": list(models) or ["*"],
    }


# The fast tier: no servers.


def test_wanted_matches_marketplace_names_with_case_sensitive_globs():
    settings = _config(
        [
            _grant(ROLE, "role", "read", "dev01.*"),
            _grant("alice", "user", "EDIT", "*.churn", "x.y"),
            _grant("bob", "user", "READ", "DEV01.*"),
        ]
    ).marketplace
    grants = Grants(settings, UNUSED_URI)
    assert grants.wanted("dev01.fraud") == [Grant("role", ROLE, "READ")]
    assert grants.wanted("dev01.churn") == [
        Grant("role", ROLE, "READ"),
        Grant("user", "alice", "EDIT"),
    ]
    assert grants.wanted("dev02.churn") == [Grant("user", "alice", "EDIT")]
    assert grants.wanted("DEV01.fraud") == [Grant("user", "bob", "READ")]
    assert grants.wanted("dev010fraud") == []  # '.' is literal, not any character
    assert Grants(_config([]).marketplace, UNUSED_URI).wanted("dev01.fraud") == []


def test_wanted_keeps_one_grant_per_principal_the_strongest():
    settings = _config(
        [
            _grant("alice", "user", "MANAGE", "dev01.*"),
            _grant("alice", "user", "READ"),
            _grant("alice", "role", "EDIT"),
        ]
    ).marketplace
    assert Grants(settings, UNUSED_URI).wanted("dev01.m") == [
        Grant("role", "alice", "EDIT"),
        Grant("user", "alice", "MANAGE"),
    ]
    assert Grants(settings, UNUSED_URI).wanted("dev02.m") == [
        Grant("role", "alice", "EDIT"),
        Grant("user", "alice", "READ"),
    ]


A_READ, A_EDIT, B_READ = (
    Grant("user", "a", "READ"),
    Grant("user", "a", "EDIT"),
    Grant("role", "b", "READ"),
)


@pytest.mark.parametrize(
    "wanted, recorded, existing, grant, revoke, record",
    [
        pytest.param([A_READ], [], {}, [A_READ], [], {A_READ}, id="new"),
        pytest.param(
            [A_READ], [A_READ], {A_READ.holder: {"READ"}}, [], [], {A_READ}, id="already-ours"
        ),
        pytest.param([A_READ], [], {A_READ.holder: {"READ"}}, [], [], set(), id="hand-made-same"),
        pytest.param(
            [A_EDIT], [], {A_READ.holder: {"READ"}}, [], [], set(), id="hand-made-other-not-updated"
        ),
        pytest.param(
            [A_READ], [A_READ], {}, [A_READ], [], {A_READ}, id="ours-removed-by-hand-made-again"
        ),
        pytest.param(
            [],
            [A_READ, B_READ],
            {A_READ.holder: {"READ"}, B_READ.holder: {"READ"}},
            [],
            [B_READ, A_READ],
            set(),
            id="no-longer-configured",
        ),
        pytest.param(
            [],
            [A_READ],
            {A_READ.holder: {"EDIT"}},
            [],
            [],
            set(),
            id="ours-changed-by-hand-is-theirs",
        ),
        pytest.param([], [A_READ], {}, [], [], set(), id="ours-gone-forgotten"),
        pytest.param(
            [A_EDIT],
            [A_READ],
            {A_READ.holder: {"READ"}},
            [A_EDIT],
            [A_READ],
            {A_EDIT},
            id="configured-permission-changed",
        ),
        pytest.param(
            [A_READ, B_READ],
            [B_READ],
            {B_READ.holder: {"READ"}, A_READ.holder: {"MANAGE"}},
            [],
            [],
            {B_READ},
            id="mixed",
        ),
    ],
)
def test_plan_grants_what_is_missing_and_revokes_only_its_own(
    wanted, recorded, existing, grant, revoke, record
):
    steps = plan(wanted, recorded, existing)
    assert (list(steps.grant), list(steps.revoke), set(steps.record)) == (grant, revoke, record)


def test_the_record_reads_back_and_what_it_cannot_read_is_not_ours():
    grants = {Grant("role", "team:a", "READ"), Grant("user", "alice", "EDIT")}
    value = record_value(grants)
    assert json.loads(value) == ["role:team:a:READ", "user:alice:EDIT"]  # sorted
    assert recorded_grants({TAG_GRANTS: value}) == grants
    assert recorded_grants({}) == set()
    assert recorded_grants({TAG_GRANTS: "not json"}) == set()
    assert recorded_grants({TAG_GRANTS: json.dumps(["garbage", 3, "user:bob:READ"])}) == {
        Grant("user", "bob", "READ")
    }


def test_nothing_configured_and_nothing_recorded_calls_no_registry():
    assert Grants(_config([]).marketplace, UNUSED_URI).apply(None, "dev01.m", {"other": "tag"}) == 0


def test_an_unset_credentials_variable_names_the_key_and_the_variable(monkeypatch):
    monkeypatch.delenv("MARKETPLACE_MLFLOW_USER", raising=False)
    monkeypatch.setenv("MARKETPLACE_MLFLOW_PASSWORD", "set")
    config = _config(
        [_grant("alice", "user", "READ")],
        username_env="MARKETPLACE_MLFLOW_USER",
        password_env="MARKETPLACE_MLFLOW_PASSWORD",
    )
    for attempt in (
        lambda: Grants(config.marketplace, UNUSED_URI).apply(None, "dev01.m", {}),
        lambda: MarketplaceRegistry(config).client(),
    ):
        with pytest.raises(MarketplaceError) as raised:
            attempt()
        assert str(raised.value).startswith(
            "marketplace.username_env: the environment variable MARKETPLACE_MLFLOW_USER is not set"
        ), str(raised.value)


# An OSS MLflow server with authentication.


@contextlib.contextmanager
def as_user(username: str, password: str):
    """This process's MLflow calls as `username` (MLflow reads the variables on every request);
    without the marketplace's own request auth, which would put its credentials back."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", username)
        env.setenv("MLFLOW_TRACKING_PASSWORD", password)
        env.delenv(credentials.AUTH_ENV, raising=False)
        yield


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """The users above (`marketplace` an admin, `dana` in role fraud-analysts); nobody else's
    grants."""
    root = tmp_path_factory.mktemp("auth-server")
    server = AuthenticatedServer(
        "auth", root, local_servers.free_port(), admin_password=secrets.token_urlsafe(16)
    )
    start_authenticated(server)
    try:
        with as_user("admin", server.admin_password):
            auth = get_app_client("basic-auth", tracking_uri=server.uri)
            for name, password in PASSWORDS.items():
                auth.create_user(name, password)
            auth.update_user_admin(MARKET_USER, True)
            auth.assign_role("dana", auth.create_role("default", ROLE).id)
        yield server
    finally:
        local_servers.stop(server)


@pytest.fixture
def marketplace(auth_server, monkeypatch):
    """make(grants) -> (Grants, MlflowClient, proxy): the marketplace as configured, reaching its
    server through a proxy that lists every request; its credentials in their variables."""
    monkeypatch.setattr(credentials, "_headers", {})
    monkeypatch.delenv(credentials.AUTH_ENV, raising=False)  # put back (unset) after the test
    monkeypatch.setenv("MARKETPLACE_MLFLOW_USER", MARKET_USER)
    monkeypatch.setenv("MARKETPLACE_MLFLOW_PASSWORD", PASSWORDS[MARKET_USER])
    with FaultProxy(auth_server.uri) as proxy:

        def make(grants: list[dict]):
            config = _config(
                grants,
                tracking_uri=proxy.uri,
                username_env="MARKETPLACE_MLFLOW_USER",
                password_env="MARKETPLACE_MLFLOW_PASSWORD",
            )
            registry = MarketplaceRegistry(config)
            return Grants(config.marketplace, registry.tracking_uri), registry.client(), proxy

        yield make


def reads(server: AuthenticatedServer, user: str, name: str) -> int:
    """The HTTP status `user` gets reading registered model `name`."""
    with as_user(user, PASSWORDS[user]):
        try:
            MlflowClient(server.uri).get_registered_model(name)
        except MlflowException as exc:  # the server answers 403 in plain text
            return exc.get_http_status_code()
    return 200


# The Databricks workspace registry and Unity Catalog, against the stand-in only.
