"""Webhook deliveries from source registries: verified and parsed into typed events (the
marketplace's own webhook on each source is kept by marketplace.source_webhooks).

A delivery is only a hint that a workspace changed: the sensor then reads the registry itself,
so an event never decides what production is. What a delivery must prove is who sent it and
that it is fresh: an HMAC with the workspace's secret, a timestamp within five minutes, and a
delivery id not seen before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from marketplace.errors import MarketplaceError

MAX_BODY_BYTES = 64 * 1024
MAX_AGE_SECONDS = 300
WEBHOOK_NAME = "marketplace-sync"
MLFLOW_EVENTS = (
    "model_version_alias.created",
    "model_version_alias.deleted",
    "model_version_tag.set",
    "model_version.created",
)
MLFLOW_SIGNATURE = "X-MLflow-Signature"
MLFLOW_DELIVERY_ID = "X-MLflow-Delivery-Id"
MLFLOW_TIMESTAMP = "X-MLflow-Timestamp"
DATABRICKS_SIGNATURE = "X-Databricks-Signature"
# Databricks' workspace registry signs the body alone and sends no delivery id.
DATABRICKS_EVENTS = (
    "MODEL_VERSION_CREATED",
    "MODEL_VERSION_TRANSITIONED_STAGE",
    "MODEL_VERSION_TAG_SET",
    "REGISTERED_MODEL_CREATED",
)


class Rejected(MarketplaceError):
    """A delivery refused, with the HTTP status the sender gets."""

    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class SourceEvent:
    """One verified change a source registry reported."""

    workspace: str
    sender: str  # "mlflow" or "databricks"
    delivery_id: str
    event: str  # e.g. model_version_alias.created, MODEL_VERSION_TRANSITIONED_STAGE
    model: str
    version: str | None
    alias: str | None
    stage: str | None
    sent_at: float

    def describe(self) -> str:
        target = f"@{self.alias}" if self.alias else f" to {self.stage}" if self.stage else ""
        version = f" v{self.version}" if self.version else ""
        return f"{self.event}: {self.model}{version}{target}"


def _digest(secret: str, content: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), content, hashlib.sha256).digest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Starlette's headers are case-insensitive; a plain dict from a test may not be.
    value = headers.get(name)
    return value if value is not None else headers.get(name.lower())


def _fresh(sent_at: float, now: float) -> None:
    if abs(now - sent_at) > MAX_AGE_SECONDS:
        raise Rejected(
            400,
            f"timestamp {sent_at:.0f} is {now - sent_at:+.0f} s from now (at most "
            f"{MAX_AGE_SECONDS} s either way)",
        )


def _json(body: bytes) -> dict:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected(400, f"the body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Rejected(400, "the body is not a JSON object")
    return payload


def _text(value: object, key: str, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise Rejected(400, f"{key}: expected a non-empty string")
    return value


def verify_mlflow(
    workspace: str, secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> SourceEvent:
    """An MLflow 3 delivery: `v1,base64(HMAC-SHA256(secret, "<delivery
    id>.<timestamp>.<body>"))`."""
    now = time.time() if now is None else now
    signature = _header(headers, MLFLOW_SIGNATURE)
    delivery_id = _header(headers, MLFLOW_DELIVERY_ID)
    timestamp = _header(headers, MLFLOW_TIMESTAMP)
    if not signature or not delivery_id or not timestamp:
        raise Rejected(
            401,
            f"unsigned: {MLFLOW_SIGNATURE}, {MLFLOW_DELIVERY_ID} and {MLFLOW_TIMESTAMP} are "
            "required",
        )
    version, _, given = signature.partition(",")
    expected = base64.b64encode(
        _digest(secret, f"{delivery_id}.{timestamp}.".encode() + body)
    ).decode()
    if version != "v1" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Rejected(401, "the signature does not match this workspace's secret")
    if not (timestamp.isascii() and timestamp.isdigit()):  # "²".isdigit(), but float("²") raises
        raise Rejected(400, f"{MLFLOW_TIMESTAMP}: {timestamp!r} is not a Unix time")
    _fresh(float(timestamp), now)
    if len(delivery_id) > 128:
        raise Rejected(400, f"{MLFLOW_DELIVERY_ID}: longer than 128 characters")
    payload = _json(body)
    data = payload.get("data")
    if not isinstance(data, dict):
        raise Rejected(400, "data: expected an object")
    event = f"{_text(payload.get('entity'), 'entity')}.{_text(payload.get('action'), 'action')}"
    return SourceEvent(
        workspace=workspace,
        sender="mlflow",
        delivery_id=delivery_id,
        event=event,
        model=_text(data.get("name"), "data.name"),
        version=_text(data.get("version"), "data.version", required=False),
        alias=_text(data.get("alias"), "data.alias", required=False),
        stage=None,
        sent_at=float(timestamp),
    )


def verify_databricks(
    workspace: str, secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> SourceEvent:
    """A Databricks workspace-registry delivery: `X-Databricks-Signature` is the hex HMAC-SHA256 of
    the body; the body's `event_timestamp` (ms) dates it, and its digest identifies it."""
    now = time.time() if now is None else now
    signature = _header(headers, DATABRICKS_SIGNATURE)
    if not signature:
        raise Rejected(401, f"unsigned: {DATABRICKS_SIGNATURE} is required")
    if not hmac.compare_digest(signature.lower().encode(), _digest(secret, body).hex().encode()):
        raise Rejected(401, "the signature does not match this workspace's secret")
    payload = _json(body)
    stamp = payload.get("event_timestamp")
    if not isinstance(stamp, int) or isinstance(stamp, bool):
        raise Rejected(400, "event_timestamp: expected milliseconds since the epoch")
    _fresh(stamp / 1000, now)
    return SourceEvent(
        workspace=workspace,
        sender="databricks",
        delivery_id="sha256:" + hashlib.sha256(body).hexdigest(),
        event=_text(payload.get("event"), "event"),
        model=_text(payload.get("model_name"), "model_name"),
        version=_text(payload.get("version"), "version", required=False),
        alias=None,
        stage=_text(payload.get("to_stage"), "to_stage", required=False),
        sent_at=stamp / 1000,
    )


def sign_mlflow(secret: str, delivery_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers MLflow sends with `body` (for the receiver's own tests and the stand-in)."""
    signature = base64.b64encode(
        _digest(secret, f"{delivery_id}.{timestamp}.".encode() + body)
    ).decode()
    return {
        MLFLOW_SIGNATURE: f"v1,{signature}",
        MLFLOW_DELIVERY_ID: delivery_id,
        MLFLOW_TIMESTAMP: str(timestamp),
    }


def sign_databricks(secret: str, body: bytes) -> dict[str, str]:
    return {DATABRICKS_SIGNATURE: _digest(secret, body).hex()}


class ReplayGuard:
    """Delivery ids seen within the freshness window: a second delivery of one is refused.

    Ids older than the window need not be kept: their timestamps are refused anyway."""

    def __init__(self, seen: Iterable[tuple[str, float]] = (), window: float = 2 * MAX_AGE_SECONDS):
        self._window = window
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        for delivery_id, at in sorted(seen, key=lambda item: item[1]):
            self._seen[delivery_id] = at

    def claim(self, delivery_id: str, now: float | None = None) -> bool:
        """True the first time `delivery_id` is claimed within the window."""
        now = time.time() if now is None else now
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now - self._window:
                self._seen.popitem(last=False)
            if delivery_id in self._seen:
                return False
            self._seen[delivery_id] = now
            return True

    def release(self, delivery_id: str) -> None:
        """Forget a claim whose event could not be recorded, so that the sender's retry is taken."""
        with self._lock:
            self._seen.pop(delivery_id, None)


@dataclass(frozen=True)
class WebhookState:
    """What `ensure_mlflow_webhook` found and did on one source."""

    workspace: str
    action: str  # created, updated, registered; missing, wrong, unsupported, failed
    webhook_id: str | None = None
    detail: str = ""

    @property
    def registered(self) -> bool:
        return self.action in ("created", "updated", "registered")


def webhook_url(base_url: str, workspace: str, sender: str = "mlflow") -> str:
    return f"{base_url.rstrip('/')}/{sender}/{workspace}"
