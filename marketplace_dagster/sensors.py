"""production_version_sensor: a run for each workspace whose production versions (or their absence)
differ from where the marketplace's production marker points.

It evaluates every few seconds. Each tick it reads the webhook events recorded since its cursor
and polls the workspaces they name; every `sensor.minimum_interval_seconds` it polls every
workspace, the safety net for stage-selected workspaces, sources that send no webhooks and
deliveries lost on the way. What to ask for, and under which run key, is decided by
marketplace.sync_requests.
"""

import datetime as dt
import json
import time

import dagster as dg

from marketplace import summary
from marketplace.config import MarketplaceConfig
from marketplace.export_records import quarantine_of
from marketplace.external import configured_storage
from marketplace.gate import configured_holds, releasable
from marketplace.gate import is_active as gate_active
from marketplace.layout import skip_record_key
from marketplace.lifecycle import Recorded, recorded_states
from marketplace.polling import poll_workspaces
from marketplace.registries import MarketplaceRegistry
from marketplace.registry import configure_http
from marketplace.scanning import ScanPolicy
from marketplace.storage import Storage
from marketplace.sync_requests import FINISHED as RUN_FINISHED
from marketplace.sync_requests import (
    IN_FLIGHT,
    decide,
    due_again,
    new_epoch,
    pending_changes,
    poll_due,
    waiting_note,
)
from marketplace_dagster.keys import DELIVERY_ID, PRODUCTION_MODELS
from marketplace_dagster.partitions import partition_key

# Dagster gives a sensor evaluation 60 s; leave room for the cursor and run requests.
TICK_BUDGET_SECONDS = 40
# The daemon's sensor loop runs every 5 s and skips a sensor whose last tick started less than its
# minimum interval ago; at 5, a tick that started a moment late skips the next loop (10 s). Below
# the loop period, every loop evaluates it: webhook events wait at most one loop.
EVENT_TICK_SECONDS = 1
PENDING_TAG = "marketplace/pending_versions"
WORKSPACE_TAG = "marketplace/workspace"
TRIGGER_TAG = "marketplace/trigger"
FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
EVENT_PAGE = 1000


def _recorded(storage: Storage) -> dict[str, dict[str, Recorded]]:
    """Per workspace, each model's production state as the marketplace recorded it (production_history)."""
    rows = summary.read_rows(
        storage.location(summary.PRODUCTION_HISTORY),
        storage.delta_options(),
        columns=["workspace", "model_name", "sequence", "source_version"],
    )
    by_workspace: dict[str, list[dict]] = {}
    for row in rows:
        by_workspace.setdefault(row["workspace"], []).append(row)
    return {
        workspace: recorded_states(found, by="model_name")
        for workspace, found in by_workspace.items()
    }


def _quarantined(storage: Storage, workspace: str, change: str, policy: ScanPolicy) -> bool:
    """A version the scan blocked is not asked for again until its export (or the policy) changes."""
    model, _, version = change.rpartition("@")
    return (
        version.isdigit()
        and quarantine_of(storage, skip_record_key(workspace, model, int(version)), policy=policy)
        is not None
    )


Holds = set[tuple[str, str, int]]


def _gate_holds(config: MarketplaceConfig, log) -> tuple[Holds, Holds]:
    """(workspace, model, source version) of each version the promotion gate holds: those it
    would still hold, and those it would now release (a new approval). One search of the
    marketplace per tick, and only where a gate is configured."""
    if not any(gate_active(config.gate_for(w.name)) for w in config.workspaces):
        return set(), set()  # no client made, no call
    try:
        holds = configured_holds(config, MarketplaceRegistry(config).client())
    except Exception as exc:  # noqa: BLE001 - the marketplace down: nothing is excluded this tick
        log.warning(f"held versions not read from the marketplace: {type(exc).__name__}: {exc}")
        return set(), set()
    held, released = set(), set()
    for h in holds:
        free = releasable(h.tags, config.gate_for(h.workspace).approval)
        (released if free else held).add((h.workspace, h.model_name, h.source_version))
    return held, released


def _held(holds: set[tuple[str, str, int]], workspace: str, change: str) -> bool:
    model, _, version = change.rpartition("@")
    return version.isdigit() and (workspace, model, int(version)) in holds


def _read_cursor(raw: str | None) -> dict:
    """The cursor: `{"epoch", "events_after", "polled_at", "workspaces": {name: entry}}`. A cursor
    of the earlier shape (entries alone) keeps its entries."""
    cursor = json.loads(raw) if raw else {}
    if "workspaces" not in cursor:
        cursor = {
            "workspaces": {name: {"generation": 0, **entry} for name, entry in cursor.items()}
        }
    cursor.setdefault("epoch", new_epoch())
    return cursor


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


def build_production_version_sensor(config: MarketplaceConfig, job) -> dg.SensorDefinition:
    settings = config.sensor
    by_name = {w.name: w for w in config.workspaces}

    @dg.sensor(
        name="production_version_sensor",
        job=job,
        minimum_interval_seconds=EVENT_TICK_SECONDS,
        default_status=dg.DefaultSensorStatus(settings.default_status.upper()),
        description="Requests marketplace_sync_job for (today, workspace) when a workspace's production "
        "versions differ from the marketplace's: a promotion, a rollback, a retirement or a restoration. "
        f"Webhook events within one tick; every workspace polled every {settings.minimum_interval_seconds} s.",
    )
    def production_version_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        started = time.monotonic()
        now = time.time()
        today = dt.datetime.now(dt.UTC).date()
        cursor = _read_cursor(context.cursor)
        entries: dict[str, dict] = {k: v for k, v in cursor["workspaces"].items() if k in by_name}
        events, cursor["events_after"] = _new_events(context.instance, cursor.get("events_after"))
        full = poll_due(cursor.get("polled_at"), now, settings.minimum_interval_seconds)
        states = {
            name: _run_state(context.instance, entry)
            for name, entry in entries.items()
            if entry.get("pending")
        }
        targets = (
            set(by_name)
            if full
            else {name for name in events if name in by_name}
            | {name for name, entry in entries.items() if due_again(entry, states.get(name), now)}
        )
        if not targets:
            cursor["workspaces"] = entries
            waiting = "; ".join(
                waiting_note(name, entry, states.get(name))
                for name, entry in sorted(entries.items())
                if entry.get("pending")
            )
            down = "; ".join(
                f"{name} unreachable ({error})"
                for name, error in sorted(cursor.get("unreachable", {}).items())
            )
            return dg.SensorResult(
                skip_reason=dg.SkipReason(
                    f"nothing new: no webhook event; every workspace polled again within "
                    f"{settings.minimum_interval_seconds} s"
                    + "".join(f"; {part}" for part in (waiting, down) if part)
                ),
                cursor=json.dumps(cursor, sort_keys=True),
            )
        configure_http(settings.request_timeout_seconds, 0)
        polled = poll_workspaces(
            [by_name[n] for n in sorted(targets)],
            max_workers=settings.max_workers,
            deadline_seconds=TICK_BUDGET_SECONDS,
        )
        if full:
            cursor["polled_at"] = now
        storage = configured_storage(config)
        recorded = _recorded(storage)
        policy = config.security.policy()
        holds, released = _gate_holds(config, context.log)
        requests, notes, unreachable = [], [], {}
        for name in sorted(targets):
            result = polled[name]
            if result.error:
                unreachable[name] = result.error
                context.log.warning(f"workspace {name} unreachable: {result.error}")
                continue  # keep its cursor entry: an outage is not progress
            pending = [
                change
                for change in pending_changes(result.production, recorded.get(name, {}))
                if not _quarantined(storage, name, change, policy)
                and not _held(holds, name, change)
            ]
            # An approval is news even where the same change was asked for before (a new run key).
            pending = [f"{c} (approved)" if _held(released, name, c) else c for c in pending]
            decision = decide(
                name,
                entries.get(name),
                pending,
                day=today,
                now=now,
                epoch=cursor["epoch"],
                evented=name in events,
                run_state=states.get(name),
                backoff_seconds=settings.retry_backoff_seconds,
            )
            if decision.entry.get("pending") or decision.entry.get("generation"):
                entries[name] = decision.entry
            else:
                entries.pop(name, None)
            if decision.note:
                notes.append(decision.note)
            if decision.ask is None:
                continue
            trigger = "webhook" if name in events else "poll"
            requests.append(
                dg.RunRequest(
                    run_key=decision.ask.run_key,
                    partition_key=partition_key(today, name),
                    tags={
                        PENDING_TAG: ", ".join(pending)[:1000],
                        "marketplace/attempt": str(decision.ask.attempt),
                        WORKSPACE_TAG: name,
                        TRIGGER_TAG: trigger,
                    },
                )
            )
        cursor["workspaces"] = entries
        down = (
            {}
            if full
            else {k: v for k, v in cursor.get("unreachable", {}).items() if k not in targets}
        )
        cursor["unreachable"] = {**down, **unreachable}
        elapsed = time.monotonic() - started
        context.log.info(
            f"{'polled every' if full else 'polled'} {len(polled)} workspace(s) in {elapsed:.1f} s "
            f"({sum(events.values())} webhook event(s)); {len(requests)} run(s) requested; "
            f"{len(unreachable)} unreachable"
        )
        new_cursor = json.dumps(cursor, sort_keys=True)
        if requests:
            return dg.SensorResult(run_requests=requests, cursor=new_cursor)
        reasons = notes + [f"{name} unreachable ({error})" for name, error in unreachable.items()]
        why = "; ".join(reasons) if reasons else f"all {len(polled)} workspace(s) in sync"
        return dg.SensorResult(skip_reason=dg.SkipReason(f"nothing new: {why}"), cursor=new_cursor)

    return production_version_sensor
