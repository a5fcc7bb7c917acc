"""Time as the broker writes it: UTC now, the contract's timestamps, months."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime | None) -> str | None:
    """UTC with milliseconds (`2026-12-01T19:35:25.123+00:00`), None for None."""
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds") if t else None


def month_start(now: dt.datetime) -> dt.datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class Month:
    """The current month's start, recomputed only when the month turns (the
    send path asks on every send)."""

    __slots__ = ("start", "next")

    def __init__(self) -> None:
        self.start = self.next = dt.datetime.min.replace(tzinfo=dt.UTC)

    def of(self, now: dt.datetime) -> dt.datetime:
        if not self.start <= now < self.next:
            self.start = month_start(now)
            self.next = (self.start + dt.timedelta(days=32)).replace(day=1)
        return self.start
