"""Access grants applied by the OSS path, against a real `mlflow server --app-name basic-auth`
whose users get nothing by default (NO_PERMISSIONS): user and role grants, revoking only what
the sync created, credentials kept to their origin, and a whole sync into it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

from harness import local_servers
from harness.seeding import register_version
from marketplace import credentials
from marketplace.external import ExternalStorage
from marketplace.grants import TAG_GRANTS, GrantError, Grants
from marketplace.registries import MarketplaceRegistry
from marketplace_tests.testing.deployments import deployments, step_failure_message
from marketplace_tests.testing.faults import FaultProxy, LoopbackServer, RelayHandler
from marketplace_tests.testing.grants import ROLE
from marketplace_tests.testing.grants import grant as _grant
from marketplace_tests.testing.grants import grants_config as _config
from marketplace_tests.testing.grants import model_tags as _tags
from marketplace_tests.testing.support import AuthenticatedServer, start_authenticated

MARKET_USER = "marketplace"
PASSWORDS = {
    name: secrets.token_urlsafe(12)
    for name in (MARKET_USER, "alice", "bob", "carol", "dana", "erin")
}


@contextlib.contextmanager
def as_user(username: str, password: str):
    """This process's MLflow calls as `username` (MLflow reads the variables on every request);
    without the marketplace's own request auth, which would put its credentials back."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", username)
        env.setenv("MLFLOW_TRACKING_PASSWORD", password)
        env.delenv(credentials.AUTH_ENV, raising=False)
        yield


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def auth_server(request, tmp_path_factory):
    """The users above (`marketplace` an admin, `dana` in role fraud-analysts); nobody else's
    grants. Every test runs twice: on SQLite, and with the registry and its auth database on
    PostgreSQL, as an enterprise runs it."""
    root = tmp_path_factory.mktemp("auth-server")
    databases = {}
    if request.param == "postgresql":
        postgres = request.getfixturevalue("postgres")
        databases = {
            "backend_store_uri": postgres.create_database("mlflow_auth_registry"),
            "auth_database_uri": postgres.create_database("mlflow_auth_users"),
        }
    server = AuthenticatedServer(
        "auth",
        root,
        local_servers.free_port(),
        admin_password=secrets.token_urlsafe(16),
        **databases,
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


@contextlib.contextmanager
def as_admin(server: AuthenticatedServer):
    with as_user("admin", server.admin_password):
        yield get_app_client("basic-auth", tracking_uri=server.uri)


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


LOAD = """
import json, os, sys
import mlflow
from sklearn import datasets

outcome = {}
for user, password in json.loads(sys.argv[2]).items():
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
    try:
        model = mlflow.pyfunc.load_model(f"models:/{sys.argv[1]}/1")
        outcome[user] = len(model.predict(datasets.load_iris(as_frame=True).data.head(3)))
    except Exception as exc:
        outcome[user] = str(exc)[:300]
print(json.dumps(outcome))
"""


def load_as(server: AuthenticatedServer, name: str, users: list[str]) -> dict:
    """Each user's attempt to load version 1 of `name`, in a process of its own: the number of
    predictions, or the error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    done = subprocess.run(
        [sys.executable, "-c", LOAD, name, json.dumps({u: PASSWORDS[u] for u in users})],
        env={**env, "MLFLOW_TRACKING_URI": server.uri},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _create(server: AuthenticatedServer, name: str) -> None:
    with as_user("admin", server.admin_password):
        MlflowClient(server.uri).create_registered_model(name)


@pytest.mark.servers
def test_a_user_grant_lets_that_user_read_and_load_the_model_and_nobody_else(
    auth_server, marketplace, uid
):
    name = f"dev01.{uid}_fraud"
    with as_user("admin", auth_server.admin_password):
        register_version(auth_server.uri, name)
    grants, client, _ = marketplace([_grant("alice", "user", "READ", "dev01.*")])
    assert reads(auth_server, "alice", name) == 403

    assert grants.apply(client, name, _tags(client, name)) == 1
    assert json.loads(_tags(client, name)[TAG_GRANTS]) == ["user:alice:READ"]
    assert (reads(auth_server, "alice", name), reads(auth_server, "bob", name)) == (200, 403)
    loaded = load_as(auth_server, name, ["alice", "bob"])
    assert loaded["alice"] == 3
    assert "PERMISSION_DENIED" in loaded["bob"] or "403" in loaded["bob"], loaded["bob"]


@pytest.mark.servers
def test_a_role_grant_reaches_the_users_assigned_to_the_role(auth_server, marketplace, uid):
    name = f"dev01.{uid}_churn"
    _create(auth_server, name)
    grants, client, _ = marketplace(
        [_grant(ROLE, "role", "READ", "dev01.*"), _grant("alice", "user", "READ", "dev02.*")]
    )
    assert reads(auth_server, "dana", name) == 403

    assert grants.apply(client, name, _tags(client, name)) == 1
    assert json.loads(_tags(client, name)[TAG_GRANTS]) == [f"role:{ROLE}:READ"]
    assert [reads(auth_server, user, name) for user in ("dana", "erin", "alice")] == [200, 403, 403]


@pytest.mark.servers
def test_a_second_apply_with_nothing_changed_makes_no_change_and_writes_nothing(
    auth_server, marketplace, uid
):
    name = f"dev01.{uid}_again"
    _create(auth_server, name)
    grants, client, proxy = marketplace(
        [_grant(ROLE, "role", "EDIT"), _grant("alice", "user", "READ")]
    )
    assert grants.apply(client, name, _tags(client, name)) == 2
    tags = _tags(client, name)
    before = len(proxy.requests)

    assert grants.apply(client, name, tags) == 0
    calls = proxy.requests[before:]
    assert calls and {method for method, _ in calls} == {"GET"}, calls
    assert _tags(client, name) == tags


@pytest.mark.servers
def test_a_principal_that_does_not_exist_fails_naming_it_and_the_others_are_granted(
    auth_server, marketplace, uid
):
    name = f"dev01.{uid}_ghost"
    _create(auth_server, name)
    grants, client, _ = marketplace(
        [
            _grant("ghost", "user", "READ"),
            _grant("no-such-role", "role", "EDIT"),
            _grant("alice", "user", "READ"),
        ]
    )
    with pytest.raises(GrantError) as raised:
        grants.apply(client, name, _tags(client, name))
    message = str(raised.value)
    assert (
        name in message
        and "user 'ghost' does not exist" in message
        and "role 'no-such-role'" in message
    ), message
    assert reads(auth_server, "alice", name) == 200
    assert json.loads(_tags(client, name)[TAG_GRANTS]) == ["user:alice:READ"]


@pytest.mark.servers
def test_a_grant_removed_from_the_configuration_revokes_only_what_the_sync_created(
    auth_server, marketplace, uid
):
    name = f"dev01.{uid}_revoke"
    _create(auth_server, name)
    with as_admin(auth_server) as admin:  # made by hand, before the sync
        admin.grant_user_permission("carol", "registered_model", name, "READ")
        admin.grant_user_permission("bob", "registered_model", name, "EDIT")
    everyone = [
        _grant("alice", "user", "READ"),
        _grant(ROLE, "role", "READ"),
        _grant("carol", "user", "READ"),
        _grant("bob", "user", "READ"),
    ]
    grants, client, _ = marketplace(everyone)
    assert grants.apply(client, name, _tags(client, name)) == 2  # carol and bob already hold theirs
    assert json.loads(_tags(client, name)[TAG_GRANTS]) == [f"role:{ROLE}:READ", "user:alice:READ"]

    grants, client, _ = marketplace([_grant(ROLE, "role", "EDIT")])
    assert (
        grants.apply(client, name, _tags(client, name)) == 3
    )  # alice revoked; the role's READ becomes EDIT
    assert json.loads(_tags(client, name)[TAG_GRANTS]) == [f"role:{ROLE}:EDIT"]
    assert [reads(auth_server, user, name) for user in ("alice", "carol", "dana")] == [
        403,
        200,
        200,
    ]
    with as_admin(auth_server) as admin:
        assert (
            admin.get_user_permission("bob", "registered_model", name).permission == "EDIT"
        )  # not made READ

    grants, client, _ = marketplace([])
    assert grants.apply(client, name, _tags(client, name)) == 1
    assert TAG_GRANTS not in _tags(client, name)
    assert [reads(auth_server, user, name) for user in ("dana", "carol", "bob")] == [403, 200, 200]


class _HeaderRecorder(LoopbackServer):
    """Any other server: answers every request with an empty JSON object, noting its
    Authorization."""

    def __init__(self):
        self.authorizations: list[str | None] = []
        recorder = self

        class Handler(RelayHandler):
            def serve(self) -> None:
                self.body()
                recorder.authorizations.append(self.headers.get("Authorization"))
                self.answer(200, {})

        super().__init__(Handler)


@pytest.mark.servers
def test_the_marketplace_credentials_go_to_its_origin_only(auth_server, marketplace, uid):
    grants, client, _ = marketplace([_grant("alice", "user", "READ")])
    name = f"dev01.{uid}_origin"
    client.create_registered_model(
        name
    )  # as the marketplace: its registry requests are authenticated
    assert (
        grants.apply(client, name, {}) == 1
    )  # and so are its permission calls (the basic-auth app client)
    with as_admin(auth_server) as admin:
        assert (
            admin.get_user_permission(MARKET_USER, "registered_model", name).permission == "MANAGE"
        )  # its creator
    with _HeaderRecorder() as other:
        MlflowClient(other.uri).search_registered_models()
    assert other.authorizations and set(other.authorizations) == {None}
    # Without them, the server refuses.
    assert (
        requests.get(
            f"{auth_server.uri}/api/2.0/mlflow/registered-models/search", timeout=10
        ).status_code
        == 401
    )


@pytest.mark.servers
def test_a_sync_into_an_authenticated_marketplace_grants_each_model_and_a_missing_principal_fails_only_its_model(  # noqa: E501 - the test's name alone is longer than a line
    auth_server, servers, tmp_path, uid, monkeypatch
):
    """The whole chain into an authenticated marketplace: the sync logs in with the configured
    variables, registers every model, and grants as configured; a grant to nobody fails the
    registration step naming the principal, and the other model is registered and granted."""
    monkeypatch.setattr(credentials, "_headers", {})
    monkeypatch.delenv(credentials.AUTH_ENV, raising=False)
    monkeypatch.setenv("MARKETPLACE_MLFLOW_USER", MARKET_USER)
    monkeypatch.setenv("MARKETPLACE_MLFLOW_PASSWORD", PASSWORDS[MARKET_USER])
    register_version(servers["ws_a"].uri, f"{uid}_fraud", stage="Production")
    register_version(servers["ws_a"].uri, f"{uid}_churn", stage="Production")
    ws = f"a{uid}"
    factory = deployments(tmp_path, auth_server.uri)
    deploy = next(factory)
    deployment = deploy(
        [
            {
                "name": ws,
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
            }
        ],
        marketplace={
            "username_env": "MARKETPLACE_MLFLOW_USER",
            "password_env": "MARKETPLACE_MLFLOW_PASSWORD",
            "grants": [
                _grant("alice", "user", "READ", f"{ws}.*"),
                _grant("nobody-here", "user", "READ", f"{ws}.{uid}_churn"),
            ],
        },
    )
    result = deployment.sync(ws)
    assert not result.success
    message = step_failure_message(result)
    assert "nobody-here" in message and f"{uid}_churn" in message and f"{uid}_fraud" not in message
    fraud, churn = f"{ws}.{uid}_fraud", f"{ws}.{uid}_churn"
    with as_user("admin", auth_server.admin_password):
        admin = MlflowClient(auth_server.uri)
        assert admin.get_registered_model(fraud).aliases["production"] == "1"
        assert (
            admin.get_registered_model(churn).aliases["production"] == "1"
        )  # registered; its grant failed
        assert json.loads(admin.get_registered_model(fraud).tags[TAG_GRANTS]) == ["user:alice:READ"]
    assert (reads(auth_server, "alice", fraud), reads(auth_server, "bob", fraud)) == (200, 403)
    assert load_as(auth_server, fraud, ["alice"])["alice"] == 3
    history = [
        r
        for r in ExternalStorage.of(deployment.config).read_rows("production_history")
        if r["workspace"] == ws
    ]
    assert len(history) == 2  # both promotions recorded, the grant failure notwithstanding
    with contextlib.suppress(StopIteration):
        next(factory)
