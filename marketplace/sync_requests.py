"""When to ask for a workspace's sync, and how to name the request: plain decisions over the
sensor's cursor, with no Dagster and no server in them.

A request's run key names a *change*, not a state: Dagster never runs a key twice, so a key
derived from the production state alone drops a rollback to a state that already ran that day.
Each workspace's entry therefore carries a generation that moves on with every change seen (a
different set of pending versions, or a webhook event after the last run finished), and the
cursor an epoch of its own, so that a reset cursor never reuses an older key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from marketplace.gate import Held, releasable
from marketplace.polling import PollResult
from marketplace.registration import Recorded, recorded_states

# A requested run that never showed up (its launch refused, say) is asked for again after this.
LOST_REQUEST_SECONDS = 900
MAX_BACKOFF_SECONDS = 6 * 3600
IN_FLIGHT = "in_flight"
FINISHED = "finished"  # success, failure or canceled: the run can do no more


@dataclass(frozen=True)
class Ask:
    run_key: str
    attempt: int
    why: str  # "change", "event", "retry"


@dataclass(frozen=True)
class Decision:
    entry: dict
    ask: Ask | None = None
    note: str | None = None


def pending_changes(production: Mapping[str, int], recorded: Mapping[str, Recorded]) -> list[str]:
    """What the marketplace must still do for a workspace: `model@version` for each production
    version it does not point at, `model@retired` for each model it serves that has none now."""
    pending = [
        f"{model}@{version}"
        for model, version in production.items()
        if (state := recorded.get(model)) is None or state.source_version != version
    ]
    pending += [
        f"{model}@retired"
        for model, state in recorded.items()
        if state.source_version is not None and model not in production
    ]
    return sorted(pending)


def run_key(
    workspace: str, day: dt.date, pending: list[str], epoch: str, generation: int, attempt: int
) -> str:
    digest = hashlib.sha256("\n".join(pending).encode()).hexdigest()[:12]
    return f"{workspace}:{day.isoformat()}:{digest}:{epoch}.{generation}:{attempt}"


def new_epoch() -> str:
    return uuid.uuid4().hex[:8]


def decide(
    workspace: str,
    entry: Mapping | None,
    pending: list[str],
    *,
    day: dt.date,
    now: float,
    epoch: str,
    evented: bool,
    run_state: str | None,
    backoff_seconds: int,
) -> Decision:
    """The workspace's next cursor entry, and whether to ask for a run.

    `evented`: a webhook event for the workspace arrived since the last tick. `run_state`: where
    the entry's last requested run is (IN_FLIGHT, FINISHED, or None where no such run exists)."""
    entry = dict(entry or {})
    generation = int(entry.get("generation", 0))
    if run_state == IN_FLIGHT and entry.get("day") == day.isoformat():
        # A change seen meanwhile (an event, or other pending versions) may have come after the
        # run read the registry: ask again once it ends, never two runs of a partition at once.
        entry["dirty"] = entry.get("dirty", False) or evented or entry.get("pending") != pending
        return Decision(entry, note=waiting_note(workspace, entry, run_state))
    if not pending:
        return Decision({"generation": generation})
    same = entry.get("pending") == pending and entry.get("day") == day.isoformat()
    if not same:
        return _ask(workspace, pending, day, now, epoch, generation + 1, 0, "change")
    if run_state is None and now - float(entry.get("requested_at", 0)) < LOST_REQUEST_SECONDS:
        # Asked for, and not seen yet: its run may still be about to start.
        entry["dirty"] = entry.get("dirty", False) or evented
        return Decision(entry, note=waiting_note(workspace, entry, run_state))
    if evented or entry.get("dirty"):
        return _ask(workspace, pending, day, now, epoch, generation + 1, 0, "event")
    # Finished (or lost) without syncing everything: try again, with backoff.
    attempt = int(entry.get("attempt", 0))
    retry_at = entry.get("retry_at")
    if retry_at is None:
        retry_at = _retry_at(attempt, now, backoff_seconds)
    if now < retry_at:
        entry["retry_at"] = retry_at
        return Decision(entry, note=waiting_note(workspace, entry, run_state))
    return _ask(workspace, pending, day, now, epoch, generation, attempt + 1, "retry")


def waiting_note(workspace: str, entry: Mapping, run_state: str | None) -> str:
    """Why a workspace with work outstanding gets no request now."""
    if run_state == IN_FLIGHT:
        return f"{workspace}: its run ({entry['run_key']}) is in flight"
    if run_state is None and "retry_at" not in entry:
        return f"{workspace}: run {entry['run_key']} already requested"
    if "retry_at" in entry:
        when = dt.datetime.fromtimestamp(entry["retry_at"], dt.UTC)
        return f"{workspace}: last run did not sync; retrying after {when:%H:%M:%S} UTC"
    return f"{workspace}: last run did not sync"


def _retry_at(attempt: int, now: float, backoff_seconds: int) -> float:
    return now + min(backoff_seconds * 2**attempt, MAX_BACKOFF_SECONDS)


def due_again(entry: dict, run_state: str | None, now: float) -> bool:
    """Between full polls: should a workspace with work outstanding be polled now? Yes as soon as
    its run has ended (to see what it left: decide() then clears the entry or sets its retry), when
    a change came in meanwhile, and when its retry is due."""
    if not entry.get("pending") or run_state == IN_FLIGHT:
        return False
    if run_state is None and now - float(entry.get("requested_at", 0)) < LOST_REQUEST_SECONDS:
        return False
    if entry.get("dirty") or "retry_at" not in entry:
        return True
    return now >= entry["retry_at"]


def _ask(
    workspace: str,
    pending: list[str],
    day: dt.date,
    now: float,
    epoch: str,
    generation: int,
    attempt: int,
    why: str,
) -> Decision:
    key = run_key(workspace, day, pending, epoch, generation, attempt)
    entry = {
        "generation": generation,
        "pending": pending,
        "day": day.isoformat(),
        "attempt": attempt,
        "run_key": key,
        "requested_at": now,
    }
    return Decision(entry, Ask(key, attempt, why))


def poll_due(polled_at: float | None, now: float, interval_seconds: int) -> bool:
    """Is the full poll of every workspace due? (Events trigger polls of their workspaces only.)"""
    return polled_at is None or now - polled_at >= interval_seconds


# One tick of the sensor, as plain data: the cursor it leaves, the runs it asks for, or why none.
#
# The cursor: `{"epoch", "events_after", "polled_at", "unreachable": {name: error},
# "workspaces": {name: entry}}`, each entry as decide() leaves it.

Holds = set[tuple[str, str, int]]  # (workspace, model, source version)


@dataclass(frozen=True)
class Request:
    """A run to ask for: one workspace's partition of `day`, under the run key that names its
    change."""

    workspace: str
    run_key: str
    attempt: int
    pending: list[str]
    trigger: str  # "webhook" (an event named the workspace) or "poll"


@dataclass(frozen=True)
class Tick:
    cursor: dict
    requests: list[Request] = field(default_factory=list)
    skip_reason: str | None = None  # set when nothing is asked for


def read_cursor(raw: str | None) -> dict:
    """The cursor a tick starts from. A cursor of the earlier shape (entries alone) keeps its
    entries; a new cursor gets an epoch of its own."""
    cursor = json.loads(raw) if raw else {}
    if "workspaces" not in cursor:
        cursor = {
            "workspaces": {name: {"generation": 0, **entry} for name, entry in cursor.items()}
        }
    cursor.setdefault("epoch", new_epoch())
    return cursor


def write_cursor(cursor: Mapping) -> str:
    return json.dumps(cursor, sort_keys=True)


def live_entries(cursor: Mapping, configured: Collection[str]) -> dict[str, dict]:
    """The cursor's entries of workspaces still configured (a removed workspace's entry is
    dropped)."""
    return {k: v for k, v in cursor.get("workspaces", {}).items() if k in configured}


def poll_targets(
    configured: Collection[str],
    entries: Mapping[str, dict],
    events: Mapping[str, int],
    run_states: Mapping[str, str | None],
    *,
    full: bool,
    now: float,
) -> set[str]:
    """The workspaces to poll this tick: every one on a full poll; otherwise those a webhook event
    named, and those with work outstanding that are due again (see due_again)."""
    if full:
        return set(configured)
    return {name for name in events if name in configured} | {
        name for name, entry in entries.items() if due_again(entry, run_states.get(name), now)
    }


def idle_tick(
    cursor: Mapping,
    entries: dict[str, dict],
    run_states: Mapping[str, str | None],
    interval_seconds: int,
) -> Tick:
    """A tick with nothing to poll: the cursor keeps its entries, and says why, with what waits."""
    waiting = "; ".join(
        waiting_note(name, entry, run_states.get(name))
        for name, entry in sorted(entries.items())
        if entry.get("pending")
    )
    down = "; ".join(
        f"{name} unreachable ({error})"
        for name, error in sorted(cursor.get("unreachable", {}).items())
    )
    return Tick(
        {**cursor, "workspaces": entries},
        skip_reason=f"nothing new: no webhook event; every workspace polled again within "
        f"{interval_seconds} s" + "".join(f"; {part}" for part in (waiting, down) if part),
    )


def plan_tick(
    cursor: Mapping,
    entries: Mapping[str, dict],
    polled: Mapping[str, PollResult],
    recorded: Mapping[str, Mapping[str, Recorded]],
    *,
    events: Mapping[str, int],
    run_states: Mapping[str, str | None],
    held: Holds,
    released: Holds,
    quarantined: Callable[[str, str], bool],
    full: bool,
    day: dt.date,
    now: float,
    backoff_seconds: int,
) -> Tick:
    """The runs to ask for after polling the workspaces in `polled` (this tick's targets).

    A pending change the scan quarantined (`quarantined(workspace, change)`) or the gate holds is
    not asked for; one the gate would now release is marked `(approved)`, news under a new key. An
    unreachable workspace keeps its entry (an outage is not progress) and is reported until a poll
    reaches it; a full poll forgets the others' old outages."""
    entries = dict(entries)
    requests, notes, unreachable = [], [], {}
    for name in sorted(polled):
        result = polled[name]
        if result.error:
            unreachable[name] = result.error
            continue
        pending = [
            change
            for change in pending_changes(result.production, recorded.get(name, {}))
            if not quarantined(name, change) and not is_held(held, name, change)
        ]
        # An approval is news even where the same change was asked for before (a new run key).
        pending = [f"{c} (approved)" if is_held(released, name, c) else c for c in pending]
        decision = decide(
            name,
            entries.get(name),
            pending,
            day=day,
            now=now,
            epoch=cursor["epoch"],
            evented=name in events,
            run_state=run_states.get(name),
            backoff_seconds=backoff_seconds,
        )
        if decision.entry.get("pending") or decision.entry.get("generation"):
            entries[name] = decision.entry
        else:
            entries.pop(name, None)
        if decision.note:
            notes.append(decision.note)
        if decision.ask is not None:
            trigger = "webhook" if name in events else "poll"
            requests.append(
                Request(name, decision.ask.run_key, decision.ask.attempt, pending, trigger)
            )
    earlier = cursor.get("unreachable", {})
    down = {} if full else {k: v for k, v in earlier.items() if k not in polled}
    new_cursor = {
        **cursor,
        **({"polled_at": now} if full else {}),
        "workspaces": entries,
        "unreachable": {**down, **unreachable},
    }
    if requests:
        return Tick(new_cursor, requests)
    reasons = notes + [f"{name} unreachable ({error})" for name, error in unreachable.items()]
    why = "; ".join(reasons) if reasons else f"all {len(polled)} workspace(s) in sync"
    return Tick(new_cursor, skip_reason=f"nothing new: {why}")


def change_version(change: str) -> tuple[str, int] | None:
    """(model, source version) of a pending `model@version`; None for `model@retired`."""
    model, _, version = change.rpartition("@")
    return (model, int(version)) if version.isdigit() else None


def is_held(holds: Holds, workspace: str, change: str) -> bool:
    found = change_version(change)
    return found is not None and (workspace, *found) in holds


def split_holds(holds: Iterable[Held], approval_of: Callable[[str], str]) -> tuple[Holds, Holds]:
    """The versions the promotion gate holds, as (workspace, model, source version): those it would
    still hold, and those it would now release (a new approval). `approval_of(workspace)` is its
    gate's approval setting."""
    held: Holds = set()
    released: Holds = set()
    for h in holds:
        free = releasable(h.tags, approval_of(h.workspace))
        (released if free else held).add((h.workspace, h.model_name, h.source_version))
    return held, released


def recorded_by_workspace(rows: Iterable[Mapping]) -> dict[str, dict[str, Recorded]]:
    """Per workspace, each model's production state as production_history recorded it."""
    by_workspace: dict[str, list[Mapping]] = {}
    for row in rows:
        by_workspace.setdefault(row["workspace"], []).append(row)
    return {
        workspace: recorded_states(found, by="model_name")
        for workspace, found in by_workspace.items()
    }
