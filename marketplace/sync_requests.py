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
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from marketplace.lifecycle import Recorded

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
