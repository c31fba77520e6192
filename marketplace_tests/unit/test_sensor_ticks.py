"""One tick of production_version_sensor as plain data (marketplace.sync_requests): which
workspaces it polls, what it asks for after polling them, and the cursor it leaves."""

from __future__ import annotations

import datetime as dt
import json

from marketplace.gate import TAG_APPROVAL, TAG_APPROVED_BY, TAG_GATE, Held
from marketplace.polling import PollResult
from marketplace.registration import Recorded
from marketplace.sync_requests import (
    FINISHED,
    IN_FLIGHT,
    change_version,
    idle_tick,
    is_held,
    live_entries,
    plan_tick,
    poll_targets,
    read_cursor,
    recorded_by_workspace,
    split_holds,
    write_cursor,
)

DAY = dt.date(2026, 12, 7)
NOW = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC).timestamp()
SERVING_V1 = {"m": Recorded(1, 1, 1)}  # the marketplace points at the copy of m v1


def tick(polled, recorded=None, *, cursor=None, entries=None, events=None, states=None, **kw):
    """plan_tick with nothing held, nothing quarantined, a full poll, at NOW."""
    cursor = cursor if cursor is not None else {"epoch": "e1", "workspaces": {}}
    return plan_tick(
        cursor,
        entries if entries is not None else cursor["workspaces"],
        {name: result for name, result in polled.items()},
        recorded or {},
        events=events or {},
        run_states=states or {},
        held=kw.pop("held", set()),
        released=kw.pop("released", set()),
        quarantined=kw.pop("quarantined", lambda workspace, change: False),
        full=kw.pop("full", True),
        day=DAY,
        now=kw.pop("now", NOW),
        backoff_seconds=300,
    )


def reachable(name: str, **production: int) -> PollResult:
    return PollResult(name, production=production)


def test_a_promotion_asks_for_one_run_of_its_workspace_by_poll():
    done = tick({"ws": reachable("ws", m=2)}, {"ws": SERVING_V1})

    [request] = done.requests
    assert (request.workspace, request.pending, request.trigger) == ("ws", ["m@2"], "poll")
    assert request.attempt == 0
    assert done.cursor["workspaces"]["ws"]["run_key"] == request.run_key
    assert done.cursor["polled_at"] == NOW
    assert done.skip_reason is None


def test_a_webhook_event_names_its_trigger_and_a_retirement_is_pending():
    done = tick({"ws": reachable("ws")}, {"ws": SERVING_V1}, events={"ws": 3}, full=False)

    [request] = done.requests
    assert (request.pending, request.trigger) == (["m@retired"], "webhook")
    assert "polled_at" not in done.cursor  # only a full poll moves the poll clock


def test_a_workspace_in_sync_asks_nothing_and_leaves_no_entry():
    done = tick({"ws": reachable("ws", m=1)}, {"ws": SERVING_V1})

    assert done.requests == []
    assert done.cursor["workspaces"] == {}
    assert done.skip_reason == "nothing new: all 1 workspace(s) in sync"


def test_an_unreachable_workspace_keeps_its_entry_and_is_reported_until_reached():
    entry = {"generation": 2, "pending": ["m@2"], "day": DAY.isoformat(), "run_key": "k"}
    down = PollResult("ws", error="http://ws: ConnectionError")
    cursor = {"epoch": "e1", "workspaces": {"ws": entry}}

    first = tick({"ws": down}, cursor=cursor)
    assert first.requests == []
    assert first.cursor["workspaces"]["ws"] == entry  # an outage is not progress
    assert first.cursor["unreachable"] == {"ws": "http://ws: ConnectionError"}
    assert first.skip_reason == "nothing new: ws unreachable (http://ws: ConnectionError)"

    # An event-driven tick that polls another workspace still reports it ...
    other = tick({"b": reachable("b")}, cursor=first.cursor, full=False, events={"b": 1})
    assert other.cursor["unreachable"] == {"ws": "http://ws: ConnectionError"}
    # ... a full poll that reaches it forgets the outage.
    back = tick({"ws": reachable("ws", m=1)}, {"ws": SERVING_V1}, cursor=other.cursor)
    assert back.cursor["unreachable"] == {}


def test_a_quarantined_version_is_not_asked_for():
    done = tick(
        {"ws": reachable("ws", m=2)},
        {"ws": SERVING_V1},
        quarantined=lambda workspace, change: (workspace, change) == ("ws", "m@2"),
    )
    assert done.requests == []
    assert done.skip_reason == "nothing new: all 1 workspace(s) in sync"


def test_a_held_version_is_not_asked_for_and_a_released_one_is_news():
    held = tick({"ws": reachable("ws", m=2)}, {"ws": SERVING_V1}, held={("ws", "m", 2)})
    assert held.requests == []

    released = tick({"ws": reachable("ws", m=2)}, {"ws": SERVING_V1}, released={("ws", "m", 2)})
    [request] = released.requests
    assert request.pending == ["m@2 (approved)"]


def test_a_run_in_flight_is_waited_for_with_a_note():
    first = tick({"ws": reachable("ws", m=2)}, {"ws": SERVING_V1})
    again = tick(
        {"ws": reachable("ws", m=2)},
        {"ws": SERVING_V1},
        cursor=first.cursor,
        states={"ws": IN_FLIGHT},
        now=NOW + 5,
    )
    assert again.requests == []
    assert again.skip_reason.startswith("nothing new: ws: its run (")
    assert "is in flight" in again.skip_reason


def test_a_failed_run_is_retried_after_its_backoff_under_a_new_key():
    first = tick({"ws": reachable("ws", m=2)}, {"ws": SERVING_V1})
    ended = {"states": {"ws": FINISHED}}
    waiting = tick(
        {"ws": reachable("ws", m=2)}, {"ws": SERVING_V1}, cursor=first.cursor, now=NOW + 10, **ended
    )
    assert waiting.requests == []
    assert "retrying after 09:05:10 UTC" in waiting.skip_reason
    retry = tick(
        {"ws": reachable("ws", m=2)},
        {"ws": SERVING_V1},
        cursor=waiting.cursor,
        now=NOW + 310,
        **ended,
    )
    [request] = retry.requests
    assert request.attempt == 1
    assert request.run_key != first.requests[0].run_key


def test_idle_tick_keeps_the_entries_and_says_what_waits_and_what_is_down():
    entry = {"generation": 1, "pending": ["m@2"], "run_key": "ws:k", "requested_at": NOW}
    cursor = {"epoch": "e1", "workspaces": {}, "unreachable": {"b": "timeout"}}

    done = idle_tick(cursor, {"ws": entry}, {"ws": IN_FLIGHT}, 60)

    assert done.requests == []
    assert done.cursor["workspaces"] == {"ws": entry}
    assert done.skip_reason == (
        "nothing new: no webhook event; every workspace polled again within 60 s; "
        "ws: its run (ws:k) is in flight; b unreachable (timeout)"
    )


def test_poll_targets_every_workspace_on_a_full_poll_else_the_evented_and_the_due():
    configured = {"a", "b", "c"}
    due = {"generation": 1, "pending": ["m@2"], "run_key": "k", "requested_at": NOW - 3600}
    entries = {"c": due}
    assert poll_targets(configured, entries, {}, {}, full=True, now=NOW) == configured
    # An event for a workspace no longer configured is ignored; c's run has ended: poll it.
    assert poll_targets(
        configured, entries, {"a": 1, "gone": 2}, {"c": FINISHED}, full=False, now=NOW
    ) == {"a", "c"}
    assert poll_targets(configured, entries, {}, {"c": IN_FLIGHT}, full=False, now=NOW) == set()


def test_a_cursor_of_the_earlier_shape_keeps_its_entries_and_a_new_one_gets_an_epoch():
    old = read_cursor(json.dumps({"ws": {"pending": ["m@2"], "run_key": "k"}}))
    assert old["workspaces"] == {"ws": {"generation": 0, "pending": ["m@2"], "run_key": "k"}}
    assert len(old["epoch"]) == 8

    kept = read_cursor(write_cursor({"epoch": "e9", "workspaces": {}, "polled_at": 5.0}))
    assert kept == {"epoch": "e9", "workspaces": {}, "polled_at": 5.0}
    assert read_cursor(None)["epoch"] != read_cursor(None)["epoch"]
    assert live_entries({"workspaces": {"a": {}, "gone": {}}}, {"a", "b"}) == {"a": {}}


def test_changes_name_their_version_and_holds_match_them():
    assert change_version("m@2") == ("m", 2)
    assert change_version("team@m@12") == ("team@m", 12)
    assert change_version("m@retired") is None
    assert is_held({("ws", "m", 2)}, "ws", "m@2")
    assert not is_held({("ws", "m", 2)}, "other", "m@2")
    assert not is_held({("ws", "m", 2)}, "ws", "m@retired")


def _held(model: str, version: int, **tags: str) -> Held:
    return Held(f"ws.{model}", "3", "ws", model, version, "pending", "", None, tags)


def test_split_holds_releases_what_the_gate_would_now_let_through():
    holds = [
        _held("failed", 1, **{TAG_GATE: "failed"}),
        _held("auto", 2, **{TAG_GATE: "passed"}),
        _held("waiting", 3, **{TAG_GATE: "passed"}),
        _held(
            "approved", 4, **{TAG_GATE: "passed", TAG_APPROVAL: "approved", TAG_APPROVED_BY: "ana"}
        ),
    ]
    approval = {"ws": "manual"}
    # "auto" is held under a manual gate until approved; under an automatic one it goes.
    held, released = split_holds(holds, approval.__getitem__)
    assert held == {("ws", "failed", 1), ("ws", "auto", 2), ("ws", "waiting", 3)}
    assert released == {("ws", "approved", 4)}

    held, released = split_holds(holds, lambda workspace: "automatic")
    assert held == {("ws", "failed", 1)}
    assert released == {("ws", "auto", 2), ("ws", "waiting", 3), ("ws", "approved", 4)}


def test_recorded_states_are_grouped_by_workspace_from_the_history():
    rows = [
        {"workspace": "a", "model_name": "m", "sequence": 1, "source_version": 1},
        {"workspace": "a", "model_name": "m", "sequence": 2, "source_version": None},
        {"workspace": "b", "model_name": "m", "sequence": 1, "source_version": 4},
    ]
    assert recorded_by_workspace(rows) == {
        "a": {"m": Recorded(2, None, 1)},
        "b": {"m": Recorded(1, 4, 4)},
    }
