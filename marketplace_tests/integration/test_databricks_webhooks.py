"""The marketplace's registry webhook on Databricks workspaces, and its deliveries to the receiver.

No Databricks workspace is reachable here: these run against `DatabricksStandIn`, which holds the
registry-webhooks API in memory and delivers, signed, what a forwarded registry change raises.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import dagster as dg
import pytest
import requests
import uvicorn
from mlflow import MlflowClient

from harness.local_servers import free_port
from harness.seeding import register_version
from marketplace.databricks_webhooks import DESCRIPTION
from marketplace.source_webhooks import inspect_webhook, register_webhooks
from marketplace.webhooks import DATABRICKS_EVENTS, WEBHOOK_NAME
from marketplace_dagster.keys import PRODUCTION_MODELS
from marketplace_dagster.webhooks import build_app
from marketplace_tests.testing.databricks import DatabricksStandIn, RegistryWebhooks

TOKEN = "dapi-dev01-secret"
HOOK_SECRET = "hook-secret-one"
HOOKS = RegistryWebhooks.PREFIX


pytestmark = pytest.mark.usefixtures("own_databricks_profiles")


@pytest.fixture
def source(servers, monkeypatch):
    """Workspace dev01's front door (a personal access token), forwarding to the ws_a server."""
    monkeypatch.setenv("DEV01_TOKEN", TOKEN)
    monkeypatch.setenv("DEV01_HOOK_SECRET", HOOK_SECRET)
    with DatabricksStandIn(servers["ws_a"].uri, auth="pat", token=TOKEN) as standin:
        yield standin


def _workspace(standin: DatabricksStandIn, uid: str, **databricks_extra) -> dict:
    selector = (
        {"alias": "champion"} if databricks_extra.get("unity_catalog") else {"stage": "Production"}
    )
    return {
        "name": "dev01",
        "databricks": {
            "host": standin.host,
            "auth": "pat",
            "secret_env": "DEV01_TOKEN",
            **databricks_extra,
        },
        "production": selector,
        "include": [f"{uid}_*"],
        "webhook": {"secret_env": "DEV01_HOOK_SECRET"},
    }


def _ours(standin: DatabricksStandIn) -> list[dict]:
    return [
        hook
        for hook in standin.webhooks.hooks.values()
        if hook.get("description", "").startswith(WEBHOOK_NAME)
    ]


def _call(standin: DatabricksStandIn, method: str, path: str, payload: dict) -> dict:
    """The workspace's REST API, as a workspace admin calls it by hand."""
    answer = requests.request(
        method,
        f"{standin.host}{path}",
        json=payload,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert answer.ok, answer.text
    return answer.json()


@contextlib.contextmanager
def _receiver(app, port: int):
    """The real receiver, served by uvicorn on `port` in a thread, as `marketplace-webhooks` serves
    it."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True, name="receiver")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the receiver did not start"
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _promote(standin: DatabricksStandIn, model: str, version: str) -> None:
    """The source team moves a version to Production through the workspace's REST API."""
    _call(
        standin,
        "POST",
        RegistryWebhooks.TRANSITION,
        {
            "name": model,
            "version": version,
            "stage": "Production",
            "archive_existing_versions": False,
        },
    )


def _observations(instance: dg.DagsterInstance) -> list[dict]:
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=PRODUCTION_MODELS), limit=100
    ).records
    return [{k: v.value for k, v in r.asset_observation.metadata.items()} for r in records]


def test_registering_creates_one_marketplace_webhook_and_a_second_run_updates_it_in_place(
    source, deploy, uid, monkeypatch
):
    someone_elses = _call(
        source,
        "POST",
        HOOKS + "create",
        {
            "events": ["MODEL_VERSION_CREATED"],
            "description": "Slack notifications",
            "http_url_spec": {"url": "https://hooks.slack.example/abc", "secret": "theirs"},
        },
    )["webhook"]
    deployment = deploy([_workspace(source, uid)], webhooks={"url": "https://hooks.example.com"})
    config = deployment.config

    (first,) = register_webhooks(config.workspaces, config.webhooks.base_url, os.environ)

    assert (first.action, first.registered) == ("created", True), first.detail
    (hook,) = _ours(source)
    assert hook["id"] == first.webhook_id and hook["description"] == DESCRIPTION
    assert hook["http_url_spec"] == {
        "url": "https://hooks.example.com/databricks/dev01",
        "secret": HOOK_SECRET,
    }
    assert set(hook["events"]) == set(DATABRICKS_EVENTS) and hook["status"] == "ACTIVE"
    assert "model_name" not in hook  # registry-wide: every model, and every new one

    # A second marketplace raced this one and made its own; then the secret is rotated.
    duplicate = _call(
        source,
        "POST",
        HOOKS + "create",
        {**{k: hook[k] for k in ("events", "description", "http_url_spec")}, "status": "DISABLED"},
    )["webhook"]
    monkeypatch.setenv("DEV01_HOOK_SECRET", "hook-secret-two")
    (second,) = register_webhooks(config.workspaces, config.webhooks.base_url, os.environ)

    assert (second.action, second.webhook_id) == ("updated", first.webhook_id), second.detail
    (hook,) = _ours(source)
    assert hook["id"] == first.webhook_id and duplicate["id"] not in source.webhooks.hooks
    assert hook["http_url_spec"]["secret"] == "hook-secret-two" and hook["status"] == "ACTIVE"
    assert (
        source.webhooks.hooks[someone_elses["id"]]["http_url_spec"]["secret"] == "theirs"
    )  # left alone
    assert len(source.webhooks.hooks) == 2
    assert source.refused == []


def test_inspect_reports_missing_registered_and_wrong(source, deploy, uid):
    deployment = deploy([_workspace(source, uid)], webhooks={"url": "https://hooks.example.com"})
    workspace, base_url = deployment.config.workspaces[0], deployment.config.webhooks.base_url

    missing = inspect_webhook(workspace, base_url)
    assert (missing.action, missing.registered) == ("missing", False)

    (created,) = register_webhooks([workspace], base_url, os.environ)
    registered = inspect_webhook(workspace, base_url)
    assert (registered.action, registered.webhook_id, registered.detail) == (
        "registered",
        created.webhook_id,
        "",
    )

    # Someone disables it by hand and drops an event; the receiver moves elsewhere.
    _call(
        source,
        "PATCH",
        HOOKS + "update",
        {
            "id": created.webhook_id,
            "status": "DISABLED",
            "events": ["MODEL_VERSION_CREATED", "MODEL_VERSION_TAG_SET"],
        },
    )
    wrong = inspect_webhook(workspace, "https://hooks.elsewhere.example.com")
    assert (wrong.action, wrong.webhook_id) == ("wrong", created.webhook_id)
    assert (
        "it calls https://hooks.example.com/databricks/dev01, not https://hooks.elsewhere.example.com/"
        in wrong.detail
    )
    assert "it misses MODEL_VERSION_TRANSITIONED_STAGE, REGISTERED_MODEL_CREATED" in wrong.detail
    assert "it is DISABLED" in wrong.detail


def _registered(source, deploy, uid):
    """A model with one version in the workspace, and the marketplace's webhook registered there."""
    model = f"{uid}_m"
    register_version(source.upstream, model)
    port = free_port()
    deployment = deploy([_workspace(source, uid)], webhooks={"listen": f"127.0.0.1:{port}"})
    config = deployment.config
    (state,) = register_webhooks(config.workspaces, config.webhooks.base_url, os.environ)
    assert state.registered, state.detail
    return model, port, deployment


def test_a_stage_transition_is_delivered_signed_verified_and_recorded(source, deploy, uid):
    model, port, deployment = _registered(source, deploy, uid)
    config = deployment.config

    with _receiver(build_app(config, deployment.instance, environ=os.environ), port):
        _promote(source, model, "1")
        (delivery,) = source.webhooks.wait_for_deliveries(1)

    assert delivery["status"] == 200, delivery
    assert delivery["url"] == f"http://127.0.0.1:{port}/databricks/dev01"
    assert delivery["payload"]["from_stage"] == "None"
    (recorded,) = _observations(deployment.instance)
    assert (
        recorded["event"] == "MODEL_VERSION_TRANSITIONED_STAGE"
        and recorded["sender"] == "databricks"
    )
    assert (recorded["model"], recorded["version"], recorded["stage"]) == (model, "1", "Production")
    assert recorded["workspace"] == "dev01"


def test_a_delivery_signed_with_another_secret_is_refused_and_nothing_is_recorded(
    source, deploy, uid
):
    model, port, deployment = _registered(source, deploy, uid)
    config = deployment.config

    # The receiver holds a secret the workspace's webhook was not given.
    with _receiver(
        build_app(config, deployment.instance, environ={"DEV01_HOOK_SECRET": "not-the-one"}), port
    ):
        _promote(source, model, "1")
        (delivery,) = source.webhooks.wait_for_deliveries(1)

    assert delivery["status"] == 401, delivery
    assert _observations(deployment.instance) == []


def test_a_new_version_created_through_the_workspace_is_delivered(source, deploy, uid):
    model = f"{uid}_m"
    register_version(source.upstream, model)
    first = MlflowClient(source.upstream).get_model_version(model, "1")
    port = free_port()
    deployment = deploy([_workspace(source, uid)], webhooks={"listen": f"127.0.0.1:{port}"})
    config = deployment.config
    register_webhooks(config.workspaces, config.webhooks.base_url, os.environ)

    with _receiver(build_app(config, deployment.instance, environ=os.environ), port):
        # A second version of the same logged model (MLflow 3 names it in the source:
        # models:/<model id>).
        _call(
            source,
            "POST",
            RegistryWebhooks.VERSION_CREATED,
            {
                "name": model,
                "source": first.source,
                "run_id": first.run_id,
                "model_id": first.source.removeprefix("models:/"),
            },
        )
        (delivery,) = source.webhooks.wait_for_deliveries(1)

    assert delivery["status"] == 200, delivery
    (recorded,) = _observations(deployment.instance)
    assert (recorded["event"], recorded["model"], recorded["version"]) == (
        "MODEL_VERSION_CREATED",
        model,
        "2",
    )


def test_a_unity_catalog_workspace_is_reported_unsupported_without_a_call(source, deploy, uid):
    deployment = deploy(
        [_workspace(source, uid, unity_catalog=True)], webhooks={"url": "https://hooks.example.com"}
    )
    workspace, base_url = deployment.config.workspaces[0], deployment.config.webhooks.base_url

    states = [
        *register_webhooks([workspace], base_url, os.environ),
        inspect_webhook(workspace, base_url),
    ]

    assert [s.action for s in states] == ["unsupported", "unsupported"]
    assert all("Unity Catalog has no registry webhooks" in s.detail for s in states)
    assert source.api_calls == 0 and source.webhooks.hooks == {}


def test_a_workspace_that_refuses_the_credentials_is_reported_failed_not_raised(
    source, deploy, uid, monkeypatch
):
    monkeypatch.setenv("DEV01_TOKEN", "dapi-a-revoked-token")
    deployment = deploy([_workspace(source, uid)], webhooks={"url": "https://hooks.example.com"})
    workspace, base_url = deployment.config.workspaces[0], deployment.config.webhooks.base_url

    states = [
        *register_webhooks([workspace], base_url, os.environ),
        inspect_webhook(workspace, base_url),
    ]

    assert [s.action for s in states] == ["failed", "failed"]
    assert all("invalid credentials" in s.detail for s in states), [s.detail for s in states]
    assert not any("dapi-a-revoked-token" in s.detail or HOOK_SECRET in s.detail for s in states)
    assert source.webhooks.hooks == {}
