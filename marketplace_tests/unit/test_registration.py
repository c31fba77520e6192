"""Where production points, decided without servers: the decision table, the history's last
state, the sensor's pending list and the reconciliation's wording."""

from __future__ import annotations

import datetime as dt

import pytest

from marketplace.lifecycle import (
    PROMOTED,
    RESTORED,
    RETIRED,
    ROLLED_BACK,
    Change,
    Recorded,
    RegistrationRun,
    Wanted,
    decide,
    divergences,
    history_row,
    recorded_states,
    served_versions,
)
from marketplace.provenance import Marker, description
from marketplace.sync_requests import pending_changes

ACTIVE_2 = Recorded(sequence=2, source_version=2, last_active_version=2)
RETIRED_AFTER_2 = Recorded(sequence=3, source_version=None, last_active_version=2)


@pytest.mark.parametrize(
    ("desired", "recorded", "aliased", "expected"),
    [
        # never in production before
        (1, None, None, Change(PROMOTED, 1, None)),
        (None, None, None, None),
        # synced before the history existed: its first row starts from where the marker points
        (2, None, 2, Change(PROMOTED, 2, None)),
        (3, None, 2, Change(PROMOTED, 3, 2)),
        (1, None, 2, Change(ROLLED_BACK, 1, 2)),
        (None, None, 2, Change(RETIRED, None, 2)),
        # active
        (2, ACTIVE_2, 2, None),
        (3, ACTIVE_2, 2, Change(PROMOTED, 3, 2)),
        (1, ACTIVE_2, 2, Change(ROLLED_BACK, 1, 2)),
        (None, ACTIVE_2, 2, Change(RETIRED, None, 2)),
        # the history decides, not the registry: a marker moved by hand is put back without a row
        (2, ACTIVE_2, 1, None),
        # the registry already moved but the row was not written (a crash in between): record it
        (3, ACTIVE_2, 3, Change(PROMOTED, 3, 2)),
        # retired
        (None, RETIRED_AFTER_2, None, None),
        (2, RETIRED_AFTER_2, None, Change(RESTORED, 2, 2)),
        (1, RETIRED_AFTER_2, None, Change(RESTORED, 1, 2)),
        (5, RETIRED_AFTER_2, None, Change(RESTORED, 5, 2)),
    ],
)
def test_decision_table(desired, recorded, aliased, expected):
    assert decide(desired, recorded, aliased) == expected


def _row(name, sequence, version, model="m", workspace="w"):
    return {
        "marketplace_name": name,
        "model_name": model,
        "workspace": workspace,
        "sequence": sequence,
        "source_version": version,
    }


def test_recorded_state_is_the_last_row_by_sequence_whatever_the_read_order():
    rows = [
        _row("w.m", 3, None),
        _row("w.m", 1, 1),
        _row("w.m", 2, 2),
        _row("w.n", 1, 7, model="n"),
    ]
    states = recorded_states(rows)
    assert states["w.m"] == Recorded(3, None, 2)
    assert states["w.n"] == Recorded(1, 7, 7)
    assert recorded_states(rows, by="model_name")["n"] == Recorded(1, 7, 7)
    assert recorded_states([]) == {}


def test_served_versions_are_every_version_production_pointed_at_never_a_retirement():
    rows = [_row("w.m", 1, 1), _row("w.m", 2, 3), _row("w.m", 3, None), _row("w.n", 1, 7)]
    assert served_versions(rows) == {"w.m": {1, 3}, "w.n": {7}}
    assert served_versions([_row("w.m", 1, None)]) == {}


def test_a_history_row_counts_on_from_the_recorded_sequence():
    run = RegistrationRun(
        "w", "run-1", dt.date(2026, 1, 2), dt.datetime(2026, 1, 2, 3, tzinfo=dt.UTC)
    )
    wanted = Wanted("m", "w.m", 3)
    row = history_row(run, wanted, Change(PROMOTED, 3, 2), ACTIVE_2, marketplace_version=5)
    assert row == {
        "workspace": "w",
        "model_name": "m",
        "marketplace_name": "w.m",
        "sequence": 3,
        "change": PROMOTED,
        "source_version": 3,
        "previous_source_version": 2,
        "marketplace_version": 5,
        "changed_at": run.changed_at,
        "run_id": "run-1",
        "snapshot_date": run.snapshot_date,
    }
    first = history_row(run, wanted, Change(PROMOTED, 3, None), None, marketplace_version=1)
    assert first["sequence"] == 1


def test_pending_changes_name_every_divergence_and_nothing_else():
    recorded = {
        "same": Recorded(1, 4, 4),
        "rolled": Recorded(2, 5, 5),
        "gone": Recorded(1, 2, 2),
        "retired": Recorded(2, None, 3),
    }
    production = {"same": 4, "rolled": 3, "new": 1, "retired": 3}
    assert pending_changes(production, recorded) == [
        "gone@retired",
        "new@1",
        "retired@3",
        "rolled@3",
    ]
    assert (
        pending_changes({"same": 4}, {"same": Recorded(1, 4, 4), "retired": Recorded(2, None, 3)})
        == []
    )


def test_divergences_say_how_each_model_differs():
    marker = Marker("production", has_aliases=True, has_stages=True)
    found = divergences(
        "dev01",
        {"fraud": 1, "new": 3, "ok": 2},
        {"fraud": 2, "new": None, "ok": 2, "old": 4, "gone": None},
        marker,
    )
    assert found == [
        "dev01/fraud: source production v1, marketplace @production is the copy of v2",
        "dev01/new: source production v3, marketplace has no @production",
        "dev01/old: no production version in the source, marketplace @production is the copy of v4",
    ]
    stages = Marker("production", has_aliases=False, has_stages=True)
    assert divergences("w", {"m": 1}, {"m": 2}, stages) == [
        "w/m: source production v1, marketplace Production version is the copy of v2"
    ]


def test_description_says_where_production_points_or_since_when_retired():
    marker = Marker("production", has_aliases=True, has_stages=True)
    active = description("dev01", "fraud", 3, marker, "http://h")
    assert (
        "@production is source version 3" in active and "'fraud'" in active and "'dev01'" in active
    )
    retired = description(
        "dev01", "fraud", None, marker, "http://h", retired_since="2026-12-01T10:00:00+00:00"
    )
    assert "Retired since 2026-12-01T10:00:00+00:00" in retired and "no @production" in retired
    assert "Production version" in description(
        "dev01", "fraud", None, Marker("x", False, True), "h", retired_since="t"
    )
