"""production_version_sensor: a run for each workspace whose production versions (or their absence)
differ from where the marketplace's production marker points."""


import datetime as dt
import hashlib
import json
import time
from collections.abc import Mapping

import dagster as dg

from marketplace import summary
from marketplace.config import MarketplaceConfig
from marketplace.exports import quarantine_of
from marketplace.gate import configured_holds, releasable
from marketplace.gate import is_active as gate_active
from marketplace.registries import MarketplaceRegistry
from marketplace.layout import skip_record_key
from marketplace_dagster.partitions import partition_key
from marketplace.polling import poll_workspaces
from marketplace.registration import Recorded, recorded_states
from marketplace.registry import configure_http
from marketplace.external import configured_storage
from marketplace.scanning import ScanPolicy
from marketplace.storage import Storage

# Dagster gives a sensor evaluation 60 s; leave room for the cursor and run requests.
TICK_BUDGET_SECONDS = 40
PENDING_TAG = "marketplace/pending_versions"
FINISHED_BAD = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
# A requested run that never showed up (e.g. its launch was refused) is asked for again after this.
LOST_REQUEST_SECONDS = 900


def _recorded(storage: Storage) -> dict[str, dict[str, Recorded]]:
    """Per workspace, each model's production state as the marketplace recorded it (production_history)."""
    rows = summary.read_rows(storage.location(summary.PRODUCTION_HISTORY), storage.delta_options(),
                             columns=["workspace", "model_name", "sequence", "source_version"])
    by_workspace: dict[str, list[dict]] = {}
    for row in rows:
        by_workspace.setdefault(row["workspace"], []).append(row)
    return {workspace: recorded_states(found, by="model_name") for workspace, found in by_workspace.items()}


def pending_changes(production: Mapping[str, int], recorded: Mapping[str, Recorded]) -> list[str]:
    """What the marketplace must still do for a workspace: `model@version` for each production
    version it does not point at, `model@retired` for each model it serves that has none now."""
    pending = [f"{model}@{version}" for model, version in production.items()
               if (state := recorded.get(model)) is None or state.source_version != version]
    pending += [f"{model}@retired" for model, state in recorded.items()
                if state.source_version is not None and model not in production]
    return sorted(pending)


def _quarantined(storage: Storage, workspace: str, change: str, policy: ScanPolicy) -> bool:
    """A version the scan blocked is not asked for again until its export (or the policy) changes."""
    model, _, version = change.rpartition("@")
    return version.isdigit() and quarantine_of(
        storage, skip_record_key(workspace, model, int(version)), policy=policy) is not None


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


def _run_key(workspace: str, day: dt.date, pending: list[str], attempt: int) -> str:
    digest = hashlib.sha256("\n".join(pending).encode()).hexdigest()[:12]
    return f"{workspace}:{day.isoformat()}:{digest}:{attempt}"


def _latest_run(instance: dg.DagsterInstance, run_key: str) -> dg.DagsterRun | None:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
    return runs[0] if runs else None


def build_production_version_sensor(config: MarketplaceConfig, job) -> dg.SensorDefinition:
    settings = config.sensor

    @dg.sensor(
        name="production_version_sensor",
        job=job,
        minimum_interval_seconds=settings.minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus(settings.default_status.upper()),
        description="Requests marketplace_sync_job for (today, workspace) when a workspace's production "
        "versions differ from the marketplace's: a promotion, a rollback, a retirement or a restoration.",
    )
    def production_version_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        started = time.monotonic()
        configure_http(settings.request_timeout_seconds, 0)
        today = dt.datetime.now(dt.timezone.utc).date()
        cursor: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
        polled = poll_workspaces(
            config.workspaces, max_workers=settings.max_workers, deadline_seconds=TICK_BUDGET_SECONDS
        )
        storage = configured_storage(config)
        recorded = _recorded(storage)
        policy = config.security.policy()
        holds, released = _gate_holds(config, context.log)
        now = time.time()
        requests, notes, unreachable = [], [], {}
        for workspace in config.workspaces:
            result = polled[workspace.name]
            if result.error:
                unreachable[workspace.name] = result.error
                context.log.warning(f"workspace {workspace.name} unreachable: {result.error}")
                continue  # keep its cursor entry: an outage is not progress
            pending = [
                change for change in pending_changes(result.production, recorded.get(workspace.name, {}))
                if not _quarantined(storage, workspace.name, change, policy) and not _held(holds, workspace.name, change)
            ]
            # An approval is news even where the same change was asked for before (a new run key).
            pending = [f"{c} (approved)" if _held(released, workspace.name, c) else c for c in pending]
            if not pending:
                cursor.pop(workspace.name, None)
                continue
            entry = cursor.get(workspace.name)
            if entry and entry["pending"] == pending and entry["day"] == today.isoformat():
                run = _latest_run(context.instance, entry["run_key"])
                if run is None and now - entry["requested_at"] < LOST_REQUEST_SECONDS:
                    notes.append(f"{workspace.name}: run {entry['run_key']} already requested")
                    continue
                if run is not None and run.status not in FINISHED_BAD and run.status != dg.DagsterRunStatus.SUCCESS:
                    notes.append(f"{workspace.name}: run {run.run_id[:8]} is {run.status.value.lower()}")
                    continue
                # Failed, canceled, lost, or succeeded without syncing everything: try again, with backoff.
                retry_at = entry.get("retry_at")
                if retry_at is None:
                    backoff = min(settings.retry_backoff_seconds * 2 ** entry["attempt"], 6 * 3600)
                    entry["retry_at"] = retry_at = now + backoff
                if now < retry_at:
                    notes.append(f"{workspace.name}: last run did not sync; retrying after {dt.datetime.fromtimestamp(retry_at, dt.timezone.utc):%H:%M:%S} UTC")
                    continue
                attempt = entry["attempt"] + 1
            else:
                attempt = 0
            run_key = _run_key(workspace.name, today, pending, attempt)
            cursor[workspace.name] = {
                "pending": pending, "day": today.isoformat(), "attempt": attempt, "run_key": run_key, "requested_at": now,
            }
            requests.append(
                dg.RunRequest(
                    run_key=run_key,
                    partition_key=partition_key(today, workspace.name),
                    tags={PENDING_TAG: ", ".join(pending)[:1000], "marketplace/attempt": str(attempt)},
                )
            )
        elapsed = time.monotonic() - started
        context.log.info(
            f"polled {len(polled)} workspace(s) in {elapsed:.1f} s; {len(requests)} run(s) requested; "
            f"{len(unreachable)} unreachable"
        )
        new_cursor = json.dumps(cursor, sort_keys=True)
        if requests:
            return dg.SensorResult(run_requests=requests, cursor=new_cursor)
        reasons = notes + [f"{name} unreachable ({error})" for name, error in unreachable.items()]
        why = "; ".join(reasons) if reasons else f"all {len(polled)} workspace(s) in sync"
        return dg.SensorResult(skip_reason=dg.SkipReason(f"nothing new: {why}"), cursor=new_cursor)

    return production_version_sensor
