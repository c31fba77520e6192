"""The webhook receiver: `marketplace-webhooks` (or `python -m marketplace_dagster.webhooks`).

Each verified delivery is recorded in the Dagster instance as an observation of
workspaces/production_models for the workspace's partition of today before the sender hears
200, so it shows in the UI and outlives a restart of the daemon; production_version_sensor
reads new observations on every tick and syncs the workspaces they name.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping

import dagster as dg
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from marketplace.config import MarketplaceConfig, WorkspaceConfig, load_config
from marketplace.registry import configure_http
from marketplace.source_webhooks import register_webhooks
from marketplace.webhooks import (
    MAX_AGE_SECONDS,
    MAX_BODY_BYTES,
    Rejected,
    ReplayGuard,
    SourceEvent,
    verify_databricks,
    verify_mlflow,
)
from marketplace_dagster.keys import DELIVERY_ID, PRODUCTION_MODELS
from marketplace_dagster.partitions import partition_key

log = logging.getLogger("marketplace.webhooks")
VERIFIERS = {"mlflow": verify_mlflow, "databricks": verify_databricks}
REREGISTER_SECONDS = 15 * 60


def record_event(instance: dg.DagsterInstance, event: SourceEvent, day: dt.date) -> None:
    """The durable record of one delivery (what the sensor reads)."""
    metadata = {
        "workspace": event.workspace,
        "event": event.event,
        "model": event.model,
        DELIVERY_ID: event.delivery_id,
        "sender": event.sender,
        "sent_at": dg.MetadataValue.timestamp(event.sent_at),
    }
    for key in ("version", "alias", "stage"):
        if (value := getattr(event, key)) is not None:
            metadata[key] = value
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=PRODUCTION_MODELS,
            partition=str(partition_key(day, event.workspace)),
            metadata=metadata,
            description=f"webhook from {event.sender}: {event.describe()}",
        )
    )


def recent_deliveries(instance: dg.DagsterInstance, now: float) -> list[tuple[str, float]]:
    """Delivery ids recorded within the freshness window: a restarted receiver still refuses
    them."""
    found = []
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(
            asset_key=PRODUCTION_MODELS, after_timestamp=now - 2 * MAX_AGE_SECONDS
        ),
        limit=10_000,
    )
    for record in records.records:
        observation = record.asset_observation
        entry = observation.metadata.get(DELIVERY_ID) if observation else None
        if entry is not None:
            found.append((str(entry.value), record.timestamp))
    return found


def _reply(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse(
        {"status": "recorded" if status == 200 else "rejected", "message": message, **extra},
        status_code=status,
    )


async def _body(request: Request) -> bytes:
    """The body, refused past MAX_BODY_BYTES whether or not Content-Length says so."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise Rejected(413, f"the body is over {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Rejected(413, f"the body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(
    config: MarketplaceConfig,
    instance: dg.DagsterInstance,
    *,
    environ: Mapping[str, str] = os.environ,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """`POST /mlflow/<workspace>` and `POST /databricks/<workspace>`; `GET /health`."""
    hooked: dict[str, WorkspaceConfig] = {
        w.name: w for w in config.workspaces if w.webhook is not None
    }
    guard = ReplayGuard(recent_deliveries(instance, clock()))

    async def receive(request: Request, sender: str) -> JSONResponse:
        name = request.path_params["workspace"]
        peer = request.client.host if request.client else "?"
        try:
            workspace = hooked.get(name)
            if workspace is None:
                raise Rejected(404, f"unknown workspace {name!r} (or it has no webhook configured)")
            body = await _body(request)
            secret = environ.get(workspace.webhook.secret_env)
            if not secret:
                log.error(
                    "workspace %s: webhook.secret_env %s is not set; delivery from %s not verified",
                    name,
                    workspace.webhook.secret_env,
                    peer,
                )
                return _reply(503, f"the receiver has no secret for workspace {name}")
            now = clock()
            event = VERIFIERS[sender](name, secret, request.headers, body, now)
            if not guard.claim(event.delivery_id, now):
                raise Rejected(409, f"delivery {event.delivery_id} was already received")
        except Rejected as rejected:
            log.warning(
                "rejected %s delivery for %r from %s: %s %s",
                sender,
                name,
                peer,
                rejected.status,
                rejected.reason,
            )
            return _reply(rejected.status, rejected.reason)
        try:
            day = dt.datetime.fromtimestamp(now, dt.UTC).date()
            await run_in_threadpool(record_event, instance, event, day)
        except Exception as exc:
            guard.release(event.delivery_id)
            log.exception("workspace %s: delivery %s not recorded", name, event.delivery_id)
            return _reply(503, f"not recorded: {type(exc).__name__}")
        log.info(
            "workspace %s: %s (delivery %s) recorded", name, event.describe(), event.delivery_id
        )
        return _reply(200, "recorded", delivery_id=event.delivery_id)

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "workspaces": sorted(hooked)})

    def route(sender: str) -> Route:
        async def endpoint(request: Request) -> JSONResponse:
            return await receive(request, sender)

        return Route(f"/{sender}/{{workspace}}", endpoint, methods=["POST"])

    return Starlette(
        routes=[*(route(sender) for sender in VERIFIERS), Route("/health", health, methods=["GET"])]
    )


def register(config: MarketplaceConfig, environ: Mapping[str, str] = os.environ) -> int:
    """Ensure every managed workspace's webhook; 0 when each is registered."""
    configure_http(
        config.sensor.request_timeout_seconds, 0
    )  # a source down costs seconds, not minutes
    states = register_webhooks(config.workspaces, config.webhooks.base_url, environ)
    for state in states:
        line = f"{state.workspace}: {state.action}" + (f" ({state.detail})" if state.detail else "")
        (log.info if state.registered else log.warning)("webhook %s", line)
    return 0 if all(s.registered for s in states) else 1


def _keep_registered(config: MarketplaceConfig, stop: threading.Event) -> None:
    """Register at start, then again every REREGISTER_SECONDS (a source restored from a backup, or
    whose webhook someone deleted, comes back without anyone noticing)."""
    while not stop.is_set():
        try:
            register(config)
        except Exception:
            log.exception("webhook registration failed")
        stop.wait(REREGISTER_SECONDS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="marketplace-webhooks",
        description=(
            "Receive signed webhook deliveries from the source registries ($MARKETPLACE_CONFIG) "
            "and record each in the Dagster instance ($DAGSTER_HOME) for "
            "production_version_sensor."
        ),
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "register"],
        help="serve (default): register the webhooks, then listen on webhooks.listen; "
        "register: create or update each workspace's webhook and exit",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = load_config()
    if args.command == "register":
        return register(config)
    import uvicorn

    instance = dg.DagsterInstance.get()
    stop = threading.Event()
    threading.Thread(
        target=_keep_registered, args=(config, stop), daemon=True, name="webhook-registration"
    ).start()
    log.info(
        "listening on %s for %s; sources call %s",
        config.webhooks.listen,
        ", ".join(w.name for w in config.workspaces if w.webhook) or "no workspace",
        config.webhooks.base_url,
    )
    try:
        uvicorn.run(
            build_app(config, instance),
            host=config.webhooks.host.strip("[]"),
            port=config.webhooks.port,
            log_level="warning",
            access_log=False,
        )
    finally:
        stop.set()
        instance.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
