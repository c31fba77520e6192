"""When the sensor asks for a workspace's sync, and under which run key: every change its own
request, a retry after its backoff, and never two runs of a partition at once."""

from __future__ import annotations

import datetime as dt

from marketplace.sync_requests import (
    FINISHED,
    IN_FLIGHT,
    LOST_REQUEST_SECONDS,
    Decision,
    decide,
    due_again,
)

DAY = dt.date(2026, 12, 7)
BACKOFF = 300
START = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC).timestamp()


def tick(
    entry: dict | None,
    pending: list[str],
    *,
    at: float,
    run_state: str | None = None,
    evented: bool = False,
    epoch: str = "e1",
) -> Decision:
    """One evaluation of the sensor for workspace `ws`, `at` seconds after START."""
    return decide(
        "ws",
        entry,
        pending,
        day=DAY,
        now=START + at,
        epoch=epoch,
        evented=evented,
        run_state=run_state,
        backoff_seconds=BACKOFF,
    )


def test_promote_rollback_promote_rollback_in_one_day_asks_four_distinct_runs():
    entry, keys, at = None, [], 0
    # The marketplace serves v1; the source goes to v2, back to v1, to v2, back to v1.
    for change in ["m@2", "m@1", "m@2", "m@1"]:
        decision = tick(entry, [change], at=at, evented=True)
        assert decision.ask is not None, decision.note
        keys.append(decision.ask.run_key)
        waiting = tick(decision.entry, [change], at=at + 5, run_state=IN_FLIGHT)
        assert waiting.ask is None
        synced = tick(waiting.entry, [], at=at + 10, run_state=FINISHED)
        assert synced.ask is None
        entry, at = synced.entry, at + 15

    assert len(set(keys)) == 4, keys


def test_failed_run_is_retried_under_a_new_key_after_its_backoff_which_doubles():
    asked = tick(None, ["m@2"], at=0)
    failed_at = 60

    before = tick(asked.entry, ["m@2"], at=failed_at, run_state=FINISHED)
    assert before.ask is None
    assert "retrying after" in before.note
    assert tick(before.entry, ["m@2"], at=failed_at + BACKOFF - 1, run_state=FINISHED).ask is None
    retry = tick(before.entry, ["m@2"], at=failed_at + BACKOFF, run_state=FINISHED)
    assert retry.ask is not None
    assert (retry.ask.why, retry.ask.attempt) == ("retry", 1)
    assert retry.ask.run_key != asked.ask.run_key

    failed_again_at = failed_at + BACKOFF + 60
    waiting = tick(retry.entry, ["m@2"], at=failed_again_at, run_state=FINISHED)
    assert (
        tick(waiting.entry, ["m@2"], at=failed_again_at + 2 * BACKOFF - 1, run_state=FINISHED).ask
        is None
    )
    second = tick(waiting.entry, ["m@2"], at=failed_again_at + 2 * BACKOFF, run_state=FINISHED).ask
    assert second is not None and second.attempt == 2
    assert len({asked.ask.run_key, retry.ask.run_key, second.run_key}) == 3


def _during_a_run(seen: list[list[str]], *, evented: bool) -> tuple[dict, list]:
    """Ask for m@2, then evaluate once per `seen` pending set while its run is in flight: the
    entry after, and the asks made meanwhile."""
    entry = tick(None, ["m@2"], at=0).entry
    asks = []
    for index, pending in enumerate(seen, start=1):
        decision = tick(entry, pending, at=index, run_state=IN_FLIGHT, evented=evented)
        entry = decision.entry
        asks.append(decision.ask)
    return entry, [ask for ask in asks if ask]


def test_an_event_during_a_run_asks_once_when_the_run_ends():
    entry, asks = _during_a_run([["m@2"]], evented=True)
    assert asks == []  # never two runs of a partition at once

    assert due_again(entry, FINISHED, START + 20)  # polled at the next tick, not the next full poll
    after = tick(entry, ["m@2"], at=20, run_state=FINISHED)
    assert after.ask is not None and after.ask.why == "event"
    assert tick(after.entry, ["m@2"], at=25, run_state=IN_FLIGHT).ask is None


def test_other_versions_seen_during_a_run_ask_once_when_the_run_ends():
    # A second model promoted mid-run; then the first model's version registered mid-run.
    entry, asks = _during_a_run([["m@2", "n@5"], ["n@5"], []], evented=False)
    assert asks == []

    assert due_again(entry, FINISHED, START + 20)
    after = tick(entry, ["n@5"], at=20, run_state=FINISHED)
    assert after.ask is not None and after.ask.why == "change"


def test_burst_of_50_events_during_a_run_gives_at_most_one_more_request():
    flapping = [["m@3"] if i % 2 else ["m@2"] for i in range(50)]
    entry, asks = _during_a_run(flapping, evented=True)
    assert asks == []

    ended = tick(entry, ["m@3"], at=60, run_state=FINISHED)
    assert ended.ask is not None
    # That run reads the registry after the burst: nothing more is asked for while it runs.
    assert tick(ended.entry, ["m@3"], at=65, run_state=IN_FLIGHT).ask is None


def test_run_that_never_shows_up_is_waited_for_then_asked_again():
    asked = tick(None, ["m@2"], at=0)

    waiting = tick(asked.entry, ["m@2"], at=60, evented=True)  # no run with that key yet
    assert waiting.ask is None
    assert "already requested" in waiting.note
    again = tick(waiting.entry, ["m@2"], at=LOST_REQUEST_SECONDS + 1)
    assert again.ask is not None
    assert again.ask.run_key != asked.ask.run_key


def test_a_new_cursor_epoch_names_the_same_change_differently():
    before = tick(None, ["m@2"], at=0, epoch="e1").ask
    after = tick(None, ["m@2"], at=0, epoch="e2").ask
    assert before.run_key != after.run_key


def test_a_workspace_is_polled_once_its_run_ends_and_then_only_when_its_retry_is_due():
    asked = tick(None, ["m@2"], at=0).entry
    assert not due_again(asked, IN_FLIGHT, START + 10)
    assert due_again(
        asked, FINISHED, START + 20
    )  # see what the run left, not wait for the full poll
    unsynced = tick(
        asked, ["m@2"], at=20, run_state=FINISHED
    ).entry  # it did not sync: a retry is set
    assert not due_again(unsynced, FINISHED, START + 21)
    assert due_again(unsynced, FINISHED, START + 20 + BACKOFF)
    assert tick(asked, [], at=20, run_state=FINISHED).entry == {
        "generation": 1
    }  # it synced: nothing waits
