"""broker/clock.py: the monthly quota's month (cached until it turns) and timestamps. Pure."""

from __future__ import annotations

import datetime as dt

from broker.clock import Month, iso

UTC = dt.UTC


def test_month_start_is_cached_until_the_month_turns() -> None:
    month = Month()
    assert month.of(dt.datetime(2026, 11, 25, 13, 0, tzinfo=UTC)) == dt.datetime(
        2026, 11, 1, tzinfo=UTC)
    assert month.of(dt.datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC)) == dt.datetime(
        2026, 11, 1, tzinfo=UTC)
    assert month.of(dt.datetime(2026, 12, 1, tzinfo=UTC)) == dt.datetime(2026, 12, 1, tzinfo=UTC)
    assert month.of(dt.datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)) == dt.datetime(
        2027, 1, 1, tzinfo=UTC)
    assert month.of(dt.datetime(2028, 2, 29, 12, tzinfo=UTC)) == dt.datetime(
        2028, 2, 1, tzinfo=UTC)
    assert month.of(dt.datetime(2028, 3, 1, tzinfo=UTC)) == dt.datetime(2028, 3, 1, tzinfo=UTC)
    # A clock that steps back into the previous month is answered right too.
    assert month.of(dt.datetime(2028, 2, 29, 23, tzinfo=UTC)) == dt.datetime(
        2028, 2, 1, tzinfo=UTC)


def test_iso_is_utc_with_milliseconds() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    assert iso(dt.datetime(2026, 12, 1, 20, 35, 25, 123456, tzinfo=paris)) == \
        "2026-12-01T19:35:25.123+00:00"
    assert iso(None) is None
