"""The webhook receiver: signed deliveries recorded as observations of the workspace's partition,
every other request refused with a log line and nothing recorded; the receiver's configuration;
and real deliveries from an MLflow server to the webhook the marketplace registers there."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Self

import pytest
import uvicorn
from mlflow import MlflowClient

from harness.local_servers import free_port
from harness.seeding import register_version
from marketplace.webhooks import (
    MLFLOW_EVENTS,
    WEBHOOK_NAME,
)
from marketplace_dagster import webhooks as receiver_module
from marketplace_dagster.webhooks import build_app
from marketplace_tests.testing.webhooks import SECRET, SECRET_ENV, refusals, webhook_events


class Receiver:
    """`marketplace-webhooks`' app under uvicorn on a free loopback port, in a background thread."""

    def __init__(self, app, port: int):
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="webhook-receiver")

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the receiver did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def wait_for(found: Callable[[], list], count: int, seconds: float = 15) -> list:
    """`found()` once it holds at least `count` items, or what it holds after `seconds`."""
    deadline = time.monotonic() + seconds
    while len(items := found()) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return items


@pytest.fixture
def source(servers, deploy, uid, monkeypatch):
    """A workspace on ws_b with `webhook:` configured, its receiver listening, and a client of ws_b;
    every webhook made on the shared server during the test is deleted after it."""
    server = servers["ws_b"]
    client = MlflowClient(server.uri)
    before = {hook.webhook_id for hook in client.list_webhooks(max_results=1000)}
    monkeypatch.setenv(SECRET_ENV, SECRET)
    port = free_port(avoid={s.port for s in servers.values()})
    deployment = deploy(
        [
            {
                "name": "hooked",
                "tracking_uri": server.uri,
                "production": {"alias": "champion"},
                "include": [f"{uid}_*"],
                "webhook": {"secret_env": SECRET_ENV},
            }
        ],
        webhooks={"listen": f"127.0.0.1:{port}"},
    )
    try:
        with Receiver(build_app(deployment.config, deployment.instance), port):
            yield deployment, client
    finally:
        for hook in client.list_webhooks(max_results=1000):
            if hook.webhook_id not in before:
                client.delete_webhook(hook.webhook_id)


def ours(client: MlflowClient) -> list:
    return [hook for hook in client.list_webhooks(max_results=1000) if hook.name == WEBHOOK_NAME]


def test_real_alias_changes_reach_the_receiver_signed_and_are_recorded(source, servers, uid):
    deployment, client = source
    assert receiver_module.register(deployment.config) == 0
    model = f"{uid}_model"

    version = register_version(servers["ws_b"].uri, model, alias="champion")
    client.set_registered_model_alias(model, "fallback", version)
    client.delete_registered_model_alias(model, "champion")

    def alias_events() -> list[tuple]:
        return sorted(
            (meta["event"], meta.get("alias"), meta.get("version"))
            for _, meta in webhook_events(deployment.instance)
            if meta["event"].startswith("model_version_alias")
        )

    assert wait_for(alias_events, 3) == [
        ("model_version_alias.created", "champion", version),
        ("model_version_alias.created", "fallback", version),
        ("model_version_alias.deleted", "champion", None),
    ]
    events = webhook_events(deployment.instance)
    assert {partition for partition, _ in events} == {f"{dt.datetime.now(dt.UTC).date()}|hooked"}
    assert {(meta["workspace"], meta["model"], meta["sender"]) for _, meta in events} == {
        ("hooked", model, "mlflow")
    }
    assert len({meta["delivery_id"] for _, meta in events}) == len(
        events
    )  # MLflow's own delivery ids


def test_registering_twice_leaves_one_webhook_pointed_at_the_receiver(source):
    deployment, client = source
    url = f"{deployment.config.webhooks.base_url}/mlflow/hooked"
    # Another marketplace's race left a second one behind.
    client.create_webhook(
        WEBHOOK_NAME, "http://127.0.0.1:9/mlflow/hooked", list(MLFLOW_EVENTS), secret="stale"
    )

    assert receiver_module.register(deployment.config) == 0
    assert receiver_module.register(deployment.config) == 0

    hooks = ours(client)
    assert [(h.url, sorted(str(e) for e in h.events), str(h.status)) for h in hooks] == [
        (url, sorted(MLFLOW_EVENTS), "ACTIVE")
    ]
    # MLflow's own test delivery, signed with the secret the second registration left there.
    assert client.test_webhook(hooks[0].webhook_id).response_status == 200
    assert len(webhook_events(deployment.instance)) == 1


def test_source_signing_with_another_secret_is_refused_and_nothing_is_recorded(source, caplog):
    deployment, client = source
    assert receiver_module.register(deployment.config) == 0
    (hook,) = ours(client)
    client.update_webhook(hook.webhook_id, secret="not-the-workspace-secret")

    answer = client.test_webhook(hook.webhook_id)  # a real delivery, signed by the server

    assert answer.response_status == 401, answer.response_body
    assert refusals(caplog, "hooked", "401", "signature"), caplog.text
    assert webhook_events(deployment.instance) == []
