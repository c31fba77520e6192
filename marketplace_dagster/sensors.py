"""production_version_sensor: a run for each workspace whose production versions (or their absence)
differ from where the marketplace's production marker points.

It evaluates every few seconds. Each tick it reads the webhook events recorded since its cursor
and polls the workspaces they name; every `sensor.minimum_interval_seconds` it polls every
workspace, the safety net for stage-selected workspaces, sources that send no webhooks and
deliveries lost on the way. What to ask for, and under which run key, is decided by
marketplace.sync_requests.
"""

import datetime as dt
import time
from functools import partial

import dagster as dg

from marketplace import summary
from marketplace.config import MarketplaceConfig
from marketplace.export_records import quarantine_of
from marketplace.external import configured_storage
from marketplace.gate import configured_holds
from marketplace.gate import is_active as gate_active
from marketplace.layout import skip_record_key
from marketplace.polling import poll_workspaces
from marketplace.registries import MarketplaceRegistry
from marketplace.registry import configure_http
from marketplace.scanning import ScanPolicy, scan_policy
from marketplace.storage import Storage
from marketplace.sync_requests import FINISHED as RUN_FINISHED
from marketplace.sync_requests import (
    IN_FLIGHT,
    Holds,
    Tick,
    change_version,
    idle_tick,
    live_entries,
    plan_tick,
    poll_due,
    poll_targets,
    read_cursor,
    recorded_by_workspace,
    split_holds,
    write_cursor,
)
from marketplace_dagster.keys import DELIVERY_ID, PRODUCTION_MODELS
from marketplace_dagster.partitions import WORKSPACE_TAG, partition_key

# Dagster gives a sensor evaluation 60 s; leave room for the cursor and run requests.
TICK_BUDGET_SECONDS = 40
# The daemon's sensor loop runs every 5 s and skips a sensor whose last tick started less than its
# minimum interval ago; at 5, a tick that started a moment late skips the next loop (10 s). Below
# the loop period, every loop evaluates it: webhook events wait at most one loop.
EVENT_TICK_SECONDS = 1
PENDING_TAG = "marketplace/pending_versions"
TRIGGER_TAG = "marketplace/trigger"
FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
EVENT_PAGE = 1000


def _new_events(
    instance: dg.DagsterInstance, after: int | None
) -> tuple[dict[str, int], int | None]:
    """Per workspace, how many webhook events were recorded after storage id `after`; and the
    storage id to read after next time. With no cursor yet, only where the log ends now."""
    if after is None:
        latest = instance.fetch_observations(PRODUCTION_MODELS, limit=1).records
        return {}, latest[0].storage_id if latest else 0
    counts: dict[str, int] = {}
    for _ in range(10):  # at most 10,000 events a tick; the rest wait for the next
        records = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=PRODUCTION_MODELS, after_storage_id=after),
            limit=EVENT_PAGE,
            ascending=True,
        ).records
        for record in records:
            after = record.storage_id
            observation = record.asset_observation
            if observation is None or DELIVERY_ID not in observation.metadata:
                continue
            workspace = observation.metadata["workspace"].value
            counts[workspace] = counts.get(workspace, 0) + 1
        if len(records) < EVENT_PAGE:
            break
    return counts, after


def _run_state(instance: dg.DagsterInstance, entry: dict) -> str | None:
    key = entry.get("run_key")
    if not key:
        return None
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": key}), limit=1)
    if not runs:
        return None
    return RUN_FINISHED if runs[0].status in FINISHED else IN_FLIGHT


def _recorded(storage: Storage):
    """Per workspace, each model's production state as the marketplace recorded it."""
    return recorded_by_workspace(
        summary.read_rows(
            storage.location(summary.PRODUCTION_HISTORY),
            storage.delta_options(),
            columns=["workspace", "model_name", "sequence", "source_version"],
        )
    )


def _quarantined(storage: Storage, policy: ScanPolicy, workspace: str, change: str) -> bool:
    """A version the scan blocked is not asked for again until its export (or the policy)
    changes."""
    found = change_version(change)
    return found is not None and (
        quarantine_of(storage, skip_record_key(workspace, *found), policy=policy) is not None
    )


def _gate_holds(config: MarketplaceConfig, log) -> tuple[Holds, Holds]:
    """What the promotion gate holds, and what it would now release: one search of the
    marketplace per tick, and only where a gate is configured."""
    if not any(gate_active(config.gate_for(w.name)) for w in config.workspaces):
        return set(), set()  # no client made, no call
    try:
        holds = configured_holds(config, MarketplaceRegistry(config).client())
    except Exception as exc:  # noqa: BLE001 - the marketplace down: nothing is excluded this tick
        log.warning(f"held versions not read from the marketplace: {type(exc).__name__}: {exc}")
        return set(), set()
    return split_holds(holds, lambda workspace: config.gate_for(workspace).approval)


def _result(tick: Tick, today: dt.date) -> dg.SensorResult:
    cursor = write_cursor(tick.cursor)
    if not tick.requests:
        return dg.SensorResult(skip_reason=dg.SkipReason(tick.skip_reason), cursor=cursor)
    requests = [
        dg.RunRequest(
            run_key=request.run_key,
            partition_key=partition_key(today, request.workspace),
            tags={
                PENDING_TAG: ", ".join(request.pending)[:1000],
                "marketplace/attempt": str(request.attempt),
                WORKSPACE_TAG: request.workspace,
                TRIGGER_TAG: request.trigger,
            },
        )
        for request in tick.requests
    ]
    return dg.SensorResult(run_requests=requests, cursor=cursor)


def build_production_version_sensor(config: MarketplaceConfig, job) -> dg.SensorDefinition:
    settings = config.sensor
    by_name = {w.name: w for w in config.workspaces}

    @dg.sensor(
        name="production_version_sensor",
        job=job,
        minimum_interval_seconds=EVENT_TICK_SECONDS,
        default_status=dg.DefaultSensorStatus(settings.default_status.upper()),
        description=(
            "Requests marketplace_sync_job for (today, workspace) when a workspace's production "
            "versions differ from the marketplace's: a promotion, a rollback, a retirement or a "
            "restoration. Webhook events within one tick; every workspace polled every "
            f"{settings.minimum_interval_seconds} s."
        ),
    )
    def production_version_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        started = time.monotonic()
        now = time.time()
        today = dt.datetime.now(dt.UTC).date()
        cursor = read_cursor(context.cursor)
        entries = live_entries(cursor, by_name)
        events, cursor["events_after"] = _new_events(context.instance, cursor.get("events_after"))
        full = poll_due(cursor.get("polled_at"), now, settings.minimum_interval_seconds)
        states = {
            name: _run_state(context.instance, entry)
            for name, entry in entries.items()
            if entry.get("pending")
        }
        targets = poll_targets(by_name, entries, events, states, full=full, now=now)
        if not targets:
            tick = idle_tick(cursor, entries, states, settings.minimum_interval_seconds)
            return _result(tick, today)
        configure_http(settings.request_timeout_seconds, 0)
        polled = poll_workspaces(
            [by_name[n] for n in sorted(targets)],
            max_workers=settings.max_workers,
            deadline_seconds=TICK_BUDGET_SECONDS,
        )
        storage = configured_storage(config)
        recorded = _recorded(storage)
        held, released = _gate_holds(config, context.log)
        tick = plan_tick(
            cursor,
            entries,
            polled,
            recorded,
            events=events,
            run_states=states,
            held=held,
            released=released,
            quarantined=partial(_quarantined, storage, scan_policy(config.security)),
            full=full,
            day=today,
            now=now,
            backoff_seconds=settings.retry_backoff_seconds,
        )
        unreachable = {name: r.error for name, r in sorted(polled.items()) if r.error}
        for name, error in unreachable.items():
            context.log.warning(f"workspace {name} unreachable: {error}")
        context.log.info(
            f"{'polled every' if full else 'polled'} {len(polled)} workspace(s) in "
            f"{time.monotonic() - started:.1f} s ({sum(events.values())} webhook event(s)); "
            f"{len(tick.requests)} run(s) requested; {len(unreachable)} unreachable"
        )
        return _result(tick, today)

    return production_version_sensor
