"""Which versions a partition's snapshot sees (marketplace.snapshots)."""

import datetime as dt

from marketplace.snapshots import registered_by

NOW = dt.datetime(2026, 12, 7, 9, 30, tzinfo=dt.UTC)


def test_a_past_day_sees_the_versions_registered_by_its_end_and_today_sees_all():
    assert registered_by(dt.date(2026, 12, 5), NOW) == dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    assert registered_by(dt.date(2026, 12, 7), NOW) is None
    assert registered_by(dt.date(2026, 12, 8), NOW) is None
