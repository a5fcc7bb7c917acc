"""The broker's rate limiters, in one place. Times are passed in (monotonic
seconds), so every rule is testable without a clock.

`Window`: at most `limit` events in any `span_s` seconds, a rolling window
(contract section 3: "rolling 60-second window"). It paces a device's sends
(`limit` a minute) and counts a key's requests (`RateWindow`: one window per
key). A window holds at most `limit` timestamps, and none while nothing
happened within its span (an idle phone's windows cost a few bytes, not a
deque each). `FrameThrottle` is the token bucket of a phone's frames.
`Buckets` are token buckets by name, bounded in number: failed credentials
per client address and per email, and each account's request budget.
"""

from __future__ import annotations

import math
from collections import deque

NO_LIMIT = 1 << 30  # what `room` says of a window with limit 0


class Window:
    """At most `limit` events in any `span_s` seconds (limit 0: no limit)."""

    __slots__ = ("limit", "span_s", "_at")

    def __init__(self, limit: int, span_s: float) -> None:
        self.limit = limit
        self.span_s = span_s
        self._at: deque[float] | None = None  # the events still in the window, oldest first

    def _trim(self, now: float) -> deque[float] | None:
        at = self._at
        if at is None:
            return None
        # The same expression as next_room_at's: with `now - a >= span` a float
        # rounding could leave an event in the window at the very moment
        # next_room_at named, and a caller waiting for that moment spun forever.
        span = self.span_s
        while at and at[0] + span <= now:
            at.popleft()
        if not at:
            self._at = None
            return None
        return at

    def room(self, now: float) -> int:
        """How many more events fit now."""
        if self.limit <= 0:
            return NO_LIMIT
        at = self._trim(now)
        return self.limit - (len(at) if at is not None else 0)

    def take(self, now: float) -> None:
        """Count one event at `now` (the caller has checked `room`)."""
        if self.limit > 0:
            if self._at is None:
                self._at = deque()
            self._at.append(now)

    def give_back(self, at: float) -> None:
        """Undo a `take(at)` whose event never happened."""
        if self._at is None:
            return
        try:
            self._at.remove(at)
        except ValueError:
            pass  # already out of the window
        if not self._at:
            self._at = None

    def next_room_at(self, now: float) -> float:
        """When the next event fits (`now` if one fits now)."""
        if self.room(now) > 0:
            return now
        assert self._at is not None  # full, so not empty
        return self._at[0] + self.span_s

    def hit(self, now: float) -> float | None:
        """Count one event if it fits (None); else the seconds until one does."""
        if self.room(now) > 0:
            self.take(now)
            return None
        assert self._at is not None  # full, so not empty
        return self._at[0] + self.span_s - now

    def __len__(self) -> int:
        return len(self._at) if self._at is not None else 0


class RateWindow:
    """Per-key request limits: one `Window` of 60 s per key (contract: "per-
    minute rate limit").

    With several nodes each counts its own requests and tells the others
    what it let through (`take_told`, sent over the bus a few times a
    second: broker/cluster/peers.py), which count them as theirs
    (`heard`): a key's window holds its requests at every node, give or
    take the requests of the last gossip interval (docs/SCALING.md)."""

    SPAN_S = 60.0

    def __init__(self) -> None:
        self._windows: dict[str, Window] = {}
        self._told: dict[str, list[int]] = {}  # key -> [requests let through, limit]

    def hit(self, key_id: str, limit: int, now: float) -> int | None:
        """Count one request; None if allowed, else whole seconds (at least 1)
        until one is (the `Retry-After`)."""
        window = self._windows.get(key_id)
        if window is None:
            window = self._windows[key_id] = Window(limit, self.SPAN_S)
        window.limit = limit
        wait = window.hit(now)
        if wait is None:
            told = self._told.get(key_id)
            if told is None:
                self._told[key_id] = [1, limit]
            else:
                told[0] += 1
            return None
        return max(1, math.ceil(wait))

    def take_told(self) -> dict[str, tuple[int, int]]:
        """The requests let through here since the last call, per key, with
        the key's limit: what the other nodes are told."""
        told, self._told = self._told, {}
        return {k: (n, limit) for k, (n, limit) in told.items()}

    def heard(self, key_id: str, count: int, limit: int, now: float) -> None:
        """Another node let `count` requests of the key through just now:
        they fill this node's window too (no more than it holds)."""
        if limit <= 0 or count <= 0:
            return
        window = self._windows.get(key_id)
        if window is None:
            window = self._windows[key_id] = Window(limit, self.SPAN_S)
        for _ in range(min(count, window.room(now))):
            window.take(now)

    def held(self, key_id: str) -> int:
        """Requests of the key still in its window (for tests and metrics)."""
        window = self._windows.get(key_id)
        return len(window) if window is not None else 0


class FrameThrottle:
    """A phone's frames: a token bucket, `rate` a second and `burst` at once.
    Past it the reader waits (the phone is throttled by TCP itself); a phone
    that stays over it for `burst` frames in a row is flooding and is closed.

    Not a `Window` on purpose: "over the rate for `burst` frames in a row"
    needs the bucket's debt, which carries from one throttled frame to the
    next; a rolling window frees its oldest events in bursts, and a flooding
    phone would look calm every time one left."""

    __slots__ = ("rate", "burst", "tokens", "at", "strikes")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at, self.strikes = float(burst), now, 0

    def take(self, now: float) -> float | None:
        """Seconds to wait before this frame may be handled (0: now), or
        None: a flood, close the socket."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1.0
        if self.tokens >= 0:
            self.strikes = 0
            return 0.0
        self.strikes += 1
        if self.strikes > self.burst:
            return None
        return -self.tokens / self.rate


class Bucket:
    """A token bucket: `burst` units at once, refilled at `rate` a second."""

    __slots__ = ("tokens", "at")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens, self.at = burst, now

    def refill(self, rate: float, burst: float, now: float) -> float:
        if now > self.at:  # a caller's `now` may be older than the last one's
            self.tokens = min(burst, self.tokens + (now - self.at) * rate)
            self.at = now
        return self.tokens


class Buckets:
    """A token bucket per name (a client address, an email, an account): at
    most `burst` units at once, then `rate` a second. At most `max_names`
    buckets are kept, the least recently charged forgotten first, so memory
    is bounded whatever the number of names (a forgotten name starts again
    with a full bucket). `burst` 0: no limit.

    For "N failures within W seconds": `Buckets(N / W, N)`: N at once, then
    one more every W/N seconds."""

    def __init__(self, rate: float, burst: int, max_names: int = 50_000) -> None:
        self.rate, self.burst, self.max_names = rate, float(burst), max_names
        self._buckets: dict[object, Bucket] = {}

    def retry_after(self, name: object, now: float) -> int | None:
        """None while `name` has a unit left; else the whole seconds (at
        least 1) until it has one. Charges nothing."""
        bucket = self._buckets.get(name)
        if bucket is None or self.burst <= 0 or bucket.refill(self.rate, self.burst, now) >= 1:
            return None
        return self._wait(bucket)

    def charge(self, name: object, now: float) -> None:
        """Take one unit (none left: the bucket stays empty)."""
        self.hit(name, now)

    def hit(self, name: object, now: float) -> int | None:
        """Take one unit if there is one (None); else the `Retry-After`."""
        if self.burst <= 0:
            return None
        bucket = self._buckets.pop(name, None)  # put back last: the most recent
        if bucket is None:
            bucket = Bucket(self.burst, now)
            if len(self._buckets) >= self.max_names:
                del self._buckets[next(iter(self._buckets))]
        self._buckets[name] = bucket
        if bucket.refill(self.rate, self.burst, now) >= 1:
            bucket.tokens -= 1
            return None
        return self._wait(bucket)

    def refund(self, name: object) -> None:
        """Give back a unit `hit` took for something that turned out not to
        count (a credential taken in advance, and right)."""
        bucket = self._buckets.get(name)
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + 1)

    def __contains__(self, name: object) -> bool:
        return name in self._buckets

    def _wait(self, bucket: Bucket) -> int:
        if self.rate <= 0:
            return NO_LIMIT  # never refilled (a test's setting)
        return max(1, math.ceil((1 - bucket.tokens) / self.rate))

    def __len__(self) -> int:
        return len(self._buckets)
