"""The webhook receiver: signed deliveries recorded as observations of the workspace's partition,
every other request refused with a log line and nothing recorded; the receiver's configuration;
and real deliveries from an MLflow server to the webhook the marketplace registers there."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
from starlette.testclient import TestClient

from marketplace.config import ConfigError, MarketplaceConfig, parse_config
from marketplace.webhooks import (
    MAX_BODY_BYTES,
    MLFLOW_TIMESTAMP,
    Rejected,
    sign_databricks,
    sign_mlflow,
    verify_mlflow,
)
from marketplace_dagster.webhooks import build_app
from marketplace_tests.testing.deployments import UNUSED_URI
from marketplace_tests.testing.webhooks import LOGGER, SECRET, SECRET_ENV, refusals, webhook_events

HOOKED = "alias_ws"  # a workspace with `webhook:` configured
POLLED = "polled_ws"  # one without: it is polled only
NOW = time.time()  # the fast tier's clock: the day cannot change under a test
TODAY = dt.datetime.fromtimestamp(NOW, dt.UTC).date()


def document(**sections) -> dict:
    """A configuration with one workspace that takes webhooks and one that does not."""
    return {
        "external_storage": {"uri": "external"},
        "marketplace": {"tracking_uri": UNUSED_URI},
        "workspaces": [
            {
                "name": HOOKED,
                "tracking_uri": UNUSED_URI,
                "production": {"alias": "champion"},
                "webhook": {"secret_env": SECRET_ENV},
            },
            {"name": POLLED, "tracking_uri": UNUSED_URI, "production": {"stage": "Production"}},
        ],
        **sections,
    }


def alias_created(model: str = "m", alias: str = "champion", version: str = "3") -> bytes:
    """The body MLflow sends when an alias is set."""
    return json.dumps(
        {
            "entity": "model_version_alias",
            "action": "created",
            "timestamp": "2026-12-07T09:00:00+00:00",
            "data": {"name": model, "alias": alias, "version": version},
        }
    ).encode()


def mlflow_delivery(
    delivery_id: str, *, body: bytes | None = None, secret: str = SECRET, age: int = 0
) -> tuple[dict[str, str], bytes]:
    """(headers, body) of an MLflow delivery signed `age` seconds ago."""
    body = alias_created() if body is None else body
    return sign_mlflow(secret, delivery_id, int(NOW) - age, body), body


def stage_transition(model: str = "m", age: int = 0) -> bytes:
    """The body Databricks' workspace registry sends when a version moves stage."""
    return json.dumps(
        {
            "event": "MODEL_VERSION_TRANSITIONED_STAGE",
            "webhook_id": "8a1b2c",
            "event_timestamp": int((NOW - age) * 1000),
            "model_name": model,
            "version": "3",
            "to_stage": "Production",
            "from_stage": "Staging",
            "text": "Production is now version 3",
        }
    ).encode()


def databricks_delivery(
    *, body: bytes | None = None, secret: str = SECRET
) -> tuple[dict[str, str], bytes]:
    body = stage_transition() if body is None else body
    return sign_databricks(secret, body), body


def recorded(instance: dg.DagsterInstance, *delivery_ids: str) -> list[tuple[str, dict]]:
    """The events of `delivery_ids` (the fast tier's tests share one instance)."""
    return [
        (partition, meta)
        for partition, meta in webhook_events(instance)
        if meta["delivery_id"] in delivery_ids
    ]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> MarketplaceConfig:
    return parse_config(document(), tmp_path_factory.mktemp("webhooks") / "marketplace.yaml")


@pytest.fixture(scope="module")
def instance():
    """One ephemeral instance for the fast tier (each costs about 0.4 s): tests tell their
    deliveries apart by id, and count what a refusal did not add."""
    instance = dg.DagsterInstance.ephemeral()
    yield instance
    instance.dispose()


@pytest.fixture
def start(config, instance) -> Callable[..., TestClient]:
    """Start a receiver on the shared instance (again, for a restart), with the workspace's secret
    set."""

    def start(environ: dict[str, str] | None = None) -> TestClient:
        environ = {SECRET_ENV: SECRET} if environ is None else environ
        return TestClient(build_app(config, instance, environ=environ, clock=lambda: NOW))

    return start


def test_signed_mlflow_delivery_is_recorded_on_todays_partition_of_its_workspace(
    start, instance, uid
):
    headers, body = mlflow_delivery(uid)

    response = start().post(f"/mlflow/{HOOKED}", content=body, headers=headers)

    assert response.status_code == 200, response.text
    assert response.json()["delivery_id"] == uid
    assert recorded(instance, uid) == [
        (
            f"{TODAY.isoformat()}|{HOOKED}",
            {
                "workspace": HOOKED,
                "event": "model_version_alias.created",
                "model": "m",
                "delivery_id": uid,
                "sender": "mlflow",
                "sent_at": float(int(NOW)),
                "version": "3",
                "alias": "champion",
            },
        )
    ]


def test_signed_databricks_delivery_is_recorded_with_its_stage(start, instance, uid):
    headers, body = databricks_delivery(body=stage_transition(model=uid))
    delivery_id = (
        "sha256:" + hashlib.sha256(body).hexdigest()
    )  # Databricks sends no id: the body names it

    response = start().post(f"/databricks/{HOOKED}", content=body, headers=headers)

    assert response.status_code == 200, response.text
    assert recorded(instance, delivery_id) == [
        (
            f"{TODAY.isoformat()}|{HOOKED}",
            {
                "workspace": HOOKED,
                "event": "MODEL_VERSION_TRANSITIONED_STAGE",
                "model": uid,
                "delivery_id": delivery_id,
                "sender": "databricks",
                "sent_at": json.loads(body)["event_timestamp"] / 1000,
                "version": "3",
                "stage": "Production",
            },
        )
    ]


def _oversized_stream():
    """A body over the limit with no Content-Length (sent chunked)."""
    for _ in range(MAX_BODY_BYTES // 1024 + 1):
        yield b" " * 1024


Request = Callable[[str], tuple[dict, object]]
REJECTIONS = [
    pytest.param(f"/mlflow/{POLLED}", mlflow_delivery, 404, id="workspace-without-webhook"),
    pytest.param("/mlflow/nowhere", mlflow_delivery, 404, id="unknown-workspace"),
    pytest.param(
        "/databricks/nowhere",
        lambda _: databricks_delivery(),
        404,
        id="unknown-workspace-databricks",
    ),
    pytest.param(f"/mlflow/{HOOKED}", lambda _: ({}, alias_created()), 401, id="unsigned"),
    pytest.param(
        f"/mlflow/{HOOKED}",
        lambda uid: mlflow_delivery(uid, secret="another-secret"),
        401,
        id="wrong-secret",
    ),
    pytest.param(
        f"/mlflow/{HOOKED}",
        lambda uid: (mlflow_delivery(uid)[0], alias_created(version="4")),
        401,
        id="body-changed-after-signing",
    ),
    pytest.param(
        f"/databricks/{HOOKED}", lambda _: ({}, stage_transition()), 401, id="unsigned-databricks"
    ),
    pytest.param(
        f"/databricks/{HOOKED}",
        lambda _: databricks_delivery(secret="another-secret"),
        401,
        id="wrong-secret-databricks",
    ),
    pytest.param(f"/mlflow/{HOOKED}", lambda uid: mlflow_delivery(uid, age=301), 400, id="stale"),
    pytest.param(
        f"/mlflow/{HOOKED}", lambda uid: mlflow_delivery(uid, age=-301), 400, id="from-the-future"
    ),
    pytest.param(
        f"/databricks/{HOOKED}",
        lambda _: databricks_delivery(body=stage_transition(age=301)),
        400,
        id="stale-databricks",
    ),
    pytest.param(
        f"/mlflow/{HOOKED}", lambda uid: mlflow_delivery(uid, body=b"{not json"), 400, id="not-json"
    ),
    pytest.param(
        f"/mlflow/{HOOKED}",
        lambda uid: mlflow_delivery(uid, body=b'{"entity": "model_version_alias"}'),
        400,
        id="no-data",
    ),
    pytest.param(
        f"/databricks/{HOOKED}",
        lambda _: databricks_delivery(body=b'{"event": "X", "model_name": "m"}'),
        400,
        id="databricks-without-timestamp",
    ),
    pytest.param(
        f"/mlflow/{HOOKED}",
        lambda uid: mlflow_delivery(uid, body=b" " * (MAX_BODY_BYTES + 1)),
        413,
        id="too-large",
    ),
    pytest.param(
        f"/mlflow/{HOOKED}",
        lambda uid: (mlflow_delivery(uid)[0], _oversized_stream()),
        413,
        id="too-large-without-content-length",
    ),
]


@pytest.mark.parametrize(("path", "request_", "status"), REJECTIONS)
def test_refused_delivery_is_logged_and_records_nothing(
    start, instance, caplog, uid, path: str, request_: Request, status: int
):
    headers, body = request_(uid)
    before = len(webhook_events(instance))

    with caplog.at_level(logging.INFO, logger=LOGGER):
        response = start().post(path, content=body, headers=headers)

    assert response.status_code == status, response.text
    assert response.json()["status"] == "rejected"
    assert refusals(caplog, path.rsplit("/", 1)[1], str(status)), caplog.text
    assert len(webhook_events(instance)) == before


@pytest.mark.parametrize("timestamp", ["\u00b2", "17e8", "-1"])
def test_signed_timestamp_that_is_not_unix_time_is_refused_as_a_bad_request(timestamp: str):
    # "\u00b2" (a superscript two) passes str.isdigit() but not int(); an HTTP header may carry it.
    headers = {**sign_mlflow(SECRET, "d", timestamp, b"{}"), MLFLOW_TIMESTAMP: timestamp}  # type: ignore[arg-type]

    with pytest.raises(Rejected) as refused:
        verify_mlflow(HOOKED, SECRET, headers, b"{}", now=NOW)

    assert refused.value.status == 400


def test_workspace_whose_secret_is_not_set_answers_503_and_records_nothing(
    start, instance, caplog, uid
):
    headers, body = mlflow_delivery(uid)
    before = len(webhook_events(instance))

    with caplog.at_level(logging.INFO, logger=LOGGER):
        response = start(environ={}).post(f"/mlflow/{HOOKED}", content=body, headers=headers)

    assert response.status_code == 503
    assert refusals(caplog, HOOKED, SECRET_ENV), caplog.text
    assert len(webhook_events(instance)) == before


def test_replayed_delivery_is_refused_also_after_a_restart(start, instance, caplog, uid):
    first, second = f"{uid}-1", f"{uid}-2"
    headers, body = mlflow_delivery(first)
    assert start().post(f"/mlflow/{HOOKED}", content=body, headers=headers).status_code == 200

    with caplog.at_level(logging.INFO, logger=LOGGER):
        restarted = (
            start()
        )  # a new receiver on the same instance: what it remembers is the instance's
        replay = restarted.post(f"/mlflow/{HOOKED}", content=body, headers=headers)

    assert replay.status_code == 409, replay.text
    assert refusals(caplog, HOOKED, "409", first), caplog.text
    assert len(recorded(instance, first)) == 1
    headers, body = mlflow_delivery(second)
    assert restarted.post(f"/mlflow/{HOOKED}", content=body, headers=headers).status_code == 200
    assert [meta["delivery_id"] for _, meta in recorded(instance, first, second)] == [first, second]


def test_replayed_databricks_delivery_is_refused(start, instance, uid):
    client = start()
    headers, body = databricks_delivery(body=stage_transition(model=uid))

    statuses = [
        client.post(f"/databricks/{HOOKED}", content=body, headers=headers).status_code
        for _ in range(2)
    ]

    assert statuses == [200, 409]
    assert len([meta for _, meta in webhook_events(instance) if meta["model"] == uid]) == 1


def test_delivery_not_recorded_answers_503_and_its_retry_is_taken(
    start, instance, monkeypatch, uid
):
    client = start()
    headers, body = mlflow_delivery(uid)

    def database_locked(*_):
        raise OSError("database is locked")

    with monkeypatch.context() as broken:
        broken.setattr(instance, "report_runless_asset_event", database_locked)
        failed = client.post(f"/mlflow/{HOOKED}", content=body, headers=headers)
    retried = client.post(f"/mlflow/{HOOKED}", content=body, headers=headers)

    assert failed.status_code == 503  # MLflow retries a 5xx, not a 4xx
    assert retried.status_code == 200, retried.text
    assert len(recorded(instance, uid)) == 1


def test_health_names_the_workspaces_that_take_webhooks(start):
    assert start().get("/health").json() == {"status": "ok", "workspaces": [HOOKED]}


def load(tmp_path: Path, **sections) -> MarketplaceConfig:
    return parse_config(document(**sections), tmp_path / "marketplace.yaml")


def test_receiver_defaults_to_loopback_and_derives_the_url_sources_call(tmp_path):
    config = load(tmp_path)

    assert (config.webhooks.listen, config.webhooks.base_url) == (
        "127.0.0.1:8765",
        "http://127.0.0.1:8765",
    )
    assert config.workspace(HOOKED).webhook.manage is True
    assert config.workspace(POLLED).webhook is None
    public = load(
        tmp_path, webhooks={"listen": "0.0.0.0:9000", "url": "https://hooks.example.com/"}
    )
    assert (public.webhooks.host, public.webhooks.port) == ("0.0.0.0", 9000)
    assert public.webhooks.base_url == "https://hooks.example.com"


@pytest.mark.parametrize(
    ("webhooks", "key"),
    [
        pytest.param({"listen": "localhost"}, "webhooks.listen", id="listen-without-port"),
        pytest.param(
            {"listen": "127.0.0.1:70000"}, "webhooks.listen", id="listen-port-out-of-range"
        ),
        pytest.param({"listen": "http://127.0.0.1:8765"}, "webhooks.listen", id="listen-is-a-url"),
        pytest.param(
            {"url": "https://hooks.example.com/?token=abc"}, "webhooks.url", id="url-with-query"
        ),
        pytest.param({"url": "ftp://hooks.example.com"}, "webhooks.url", id="url-not-http"),
        pytest.param(
            {"url": "https://user:hunter2@hooks.example.com"},
            "webhooks.url",
            id="url-with-credentials",
        ),
        pytest.param(
            {"listen": "0.0.0.0:8765"}, "webhooks.url", id="every-ipv4-address-without-url"
        ),
        pytest.param({"listen": "[::]:8765"}, "webhooks.url", id="every-ipv6-address-without-url"),
    ],
)
def test_invalid_receiver_settings_fail_at_load_naming_the_key(tmp_path, webhooks: dict, key: str):
    with pytest.raises(ConfigError) as error:
        load(tmp_path, webhooks=webhooks)

    assert error.value.key == key
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(
    ("webhook", "field"),
    [
        pytest.param({"secret_env": SECRET_ENV, "secret": SECRET}, "secret", id="secret-in-yaml"),
        pytest.param({"secret_env": "not a variable"}, "secret_env", id="secret-env-not-a-name"),
        pytest.param({"manage": True}, "secret_env", id="secret-env-missing"),
    ],
)
def test_invalid_workspace_webhook_fails_at_load_naming_the_key(
    tmp_path, webhook: dict, field: str
):
    raw = document()
    raw["workspaces"][0]["webhook"] = webhook

    with pytest.raises(ConfigError) as error:
        parse_config(raw, tmp_path / "marketplace.yaml")

    assert error.value.key == f"workspaces[0] ({HOOKED}).webhook.{field}"
    assert SECRET not in str(error.value)
