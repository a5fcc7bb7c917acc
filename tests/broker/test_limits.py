"""broker/limits.py: the rolling window, as a device's
send rate, a key's request limit and a phone's frame throttle. Pure: times
are passed in."""

from __future__ import annotations

import pytest

from broker.delivery.presence import PACING_WINDOW_S
from broker.limits import NO_LIMIT, Buckets, FrameThrottle, RateWindow, Window
from broker.runtime import account_budget


def pacer(rate: int) -> Window:
    return Window(rate, PACING_WINDOW_S)


# --- Window: a device's send rate (broker/delivery/presence.py) ---------------


def test_pacer_room_and_take() -> None:
    p = pacer(3)
    assert p.room(0.0) == 3
    p.take(0.0)
    p.take(10.0)
    assert p.room(10.0) == 1
    p.take(20.0)
    assert p.room(20.0) == 0
    assert p.room(59.9) == 0
    assert p.room(60.0) == 1  # the take at 0 has left the 60 s window
    assert p.room(70.0) == 2
    assert p.room(80.0) == 3


def test_pacer_next_room_at() -> None:
    p = pacer(2)
    assert p.next_room_at(5.0) == 5.0  # room now
    p.take(5.0)
    assert p.next_room_at(6.0) == 6.0
    p.take(7.0)
    assert p.next_room_at(8.0) == 5.0 + PACING_WINDOW_S
    assert p.next_room_at(65.0) == 65.0  # 5.0 left the window
    p.take(65.0)
    assert p.next_room_at(66.0) == 7.0 + PACING_WINDOW_S


def test_pacer_has_room_at_the_moment_next_room_at_names() -> None:
    # Found by a randomized model test: 2106.8899999999994 - 2046.8899999999996
    # is just under 60, yet 2046.8899999999996 + 60 == 2106.8899999999994.
    sent, now = 2046.8899999999996, 2106.8899999999994
    assert sent + PACING_WINDOW_S == now and now - sent < PACING_WINDOW_S
    p = pacer(1)
    p.take(sent)
    assert p.next_room_at(now - 1) == now
    assert p.room(now) == 1


def test_pacer_rate_zero_is_unlimited() -> None:
    p = pacer(0)
    for i in range(10_000):
        p.take(float(i) / 1000)
    assert p.room(10.0) > 0
    assert p.next_room_at(10.0) == 10.0


def test_a_window_holds_nothing_once_its_events_have_left() -> None:
    """An idle phone's windows hold no timestamps (memory per idle phone)."""
    w = Window(3, 10.0)
    w.take(0.0)
    w.take(1.0)
    assert len(w) == 2
    assert w.room(11.0) == 3
    assert len(w) == 0 and w._at is None
    w.take(12.0)
    w.give_back(12.0)
    assert w._at is None


# --- RateWindow -------------------------------------------------------------


def test_rate_window_allows_up_to_limit_then_retry_after() -> None:
    w = RateWindow()
    t0 = 1000.0
    for i in range(3):
        assert w.hit("k", 3, t0 + i) is None  # hits at 1000, 1001, 1002
    # 4th within the minute: refused; the oldest (t0) leaves at t0 + 60.
    assert w.hit("k", 3, t0 + 10) == 50
    assert w.hit("k", 3, t0 + 30.5) == 30  # 29.5 s left, rounded up
    assert w.hit("k", 3, t0 + 59.5) == 1   # half a second left: at least 1
    # Refused hits are not counted: once t0 falls out, exactly one more fits.
    assert w.hit("k", 3, t0 + 60) is None
    assert w.hit("k", 3, t0 + 60) == 1    # next frees at t0 + 61
    assert w.hit("k", 3, t0 + 61) is None
    assert w.hit("k", 3, t0 + 62) is None
    assert w.hit("k", 3, t0 + 62.2) == 58  # oldest is now t0 + 60


def test_rate_window_retry_after_is_never_below_one() -> None:
    w = RateWindow()
    assert w.hit("k", 1, 0.0) is None
    got = w.hit("k", 1, 59.9999)
    assert got == 1


def test_rate_window_rolls_rather_than_resetting_per_minute() -> None:
    """A fixed per-minute bucket would allow 2x the limit across a boundary."""
    w = RateWindow()
    assert w.hit("k", 2, 50.0) is None
    assert w.hit("k", 2, 59.0) is None
    # 61 s is past a "minute boundary" at 60 but both hits are within 60 s.
    assert w.hit("k", 2, 61.0) == 49
    assert w.hit("k", 2, 110.0) is None  # 50 fell out
    assert w.hit("k", 2, 110.0) == 9     # 59 is still in


def test_rate_window_keys_are_independent() -> None:
    w = RateWindow()
    assert w.hit("a", 1, 0.0) is None
    assert w.hit("a", 1, 1.0) == 59
    assert w.hit("b", 1, 1.0) is None
    assert w.hit("b", 1, 2.0) == 59
    assert w.hit("a", 1, 60.0) is None
    assert w.hit("b", 1, 60.0) == 1


def test_rate_window_memory_bounded_by_limit() -> None:
    w = RateWindow()
    for i in range(1000):
        w.hit("k", 5, float(i) / 100)  # 1000 hits in 10 s, limit 5
    assert w.hit("k", 5, 10.0) is not None
    assert w.held("k") == 5


# --- FrameThrottle: a phone's frames (broker/transports/ws/session.py) ---------


def test_frame_throttle_throttles_then_calls_a_flood() -> None:
    throttle = FrameThrottle(rate=10.0, burst=3, now=0.0)
    assert [throttle.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.take(0.0) == pytest.approx(0.1)  # wait for the next token
    assert throttle.take(0.1) == pytest.approx(0.1)
    assert throttle.take(0.2) == pytest.approx(0.1)
    assert throttle.take(0.3) is None  # over the rate for `burst` frames in a row: a flood


def test_frame_throttle_never_holds_back_a_phone_at_the_rate() -> None:
    calm = FrameThrottle(rate=10.0, burst=3, now=0.0)
    assert all(calm.take(t / 10) == 0.0 for t in range(100))


def test_frame_throttle_forgives_a_burst_once_the_phone_slows_down() -> None:
    throttle = FrameThrottle(rate=10.0, burst=3, now=0.0)
    for _ in range(3):
        assert throttle.take(0.0) == 0.0
    assert throttle.take(0.0) == pytest.approx(0.1)  # one strike
    assert throttle.take(1.0) == 0.0  # tokens again: the strikes are forgotten
    assert throttle.strikes == 0


# --- Buckets: failed credentials, an account's request budget ---------------------------


def test_buckets_give_the_burst_then_the_rate() -> None:
    b = Buckets(rate=0.5, burst=3)  # "3 within 6 s": 3 at once, then one every 2 s
    assert [b.hit("a", 0.0) for _ in range(3)] == [None, None, None]
    assert b.hit("a", 0.0) == 2  # Retry-After: whole seconds until one is back
    assert b.retry_after("a", 1.5) == 1
    assert b.hit("a", 2.0) is None
    assert b.hit("a", 2.0) == 2
    assert b.retry_after("b", 0.0) is None  # every name has its own
    assert b.retry_after("a", 100.0) is None  # refilled, never past the burst
    assert [b.hit("a", 100.0) for _ in range(4)] == [None, None, None, 2]


def test_buckets_charge_without_asking_and_never_go_below_empty() -> None:
    b = Buckets(rate=1.0, burst=2)
    for _ in range(10):
        b.charge("a", 0.0)
    assert b.retry_after("a", 0.0) == 1
    assert b.retry_after("a", 1.0) is None  # one back after 1 s, not 9 s


def test_buckets_ignore_a_now_older_than_the_last() -> None:
    """Concurrent requests charge with the times they started: one that
    started earlier and failed later must not move the clock back."""
    b = Buckets(rate=1.0, burst=1)
    b.charge("a", 10.0)
    b.charge("a", 5.0)
    assert b.retry_after("a", 10.5) == 1
    assert b.retry_after("a", 11.0) is None


def test_buckets_are_bounded_by_forgetting_the_least_recently_charged() -> None:
    b = Buckets(rate=0.0, burst=1, max_names=3)
    for name in ("a", "b", "c"):
        b.charge(name, 0.0)
    b.charge("a", 1.0)  # a is the most recent now
    b.charge("d", 2.0)
    assert len(b) == 3
    assert b.retry_after("b", 3.0) is None  # forgotten: a fresh bucket
    assert b.retry_after("a", 3.0) is not None and b.retry_after("d", 3.0) is not None


def test_buckets_with_no_burst_limit_nothing() -> None:
    b = Buckets(rate=0.0, burst=0)
    assert all(b.hit("a", 0.0) is None for _ in range(100))
    assert len(b) == 0


def test_an_account_budget_of_rate_0_is_no_budget_not_a_burst_then_nothing() -> None:
    # OPERATIONS.md: SMSDORA_ACCOUNT_RATE=0 is "no budget". As a bare bucket
    # it was 5,000 requests (the burst), then 429 for ever.
    for rate, burst in ((0.0, 5000), (2000.0, 0)):
        b = account_budget(rate, burst)
        assert all(b.hit("a", 0.0) is None for _ in range(20_000))
    b = account_budget(2000.0, 3)
    assert [b.hit("a", 0.0) is None for _ in range(4)] == [True, True, True, False]


def test_buckets_refund_a_unit_taken_for_what_did_not_count() -> None:
    b = Buckets(rate=0.0, burst=2)
    assert "a" not in b
    assert b.hit("a", 0.0) is None and "a" in b
    b.refund("a")  # taken before a check that passed
    assert [b.hit("a", 0.0), b.hit("a", 0.0), b.hit("a", 0.0)] == [None, None, NO_LIMIT]
    b.refund("a")
    b.refund("a")
    b.refund("a")  # never past the burst
    assert [b.hit("a", 0.0) for _ in range(3)] == [None, None, NO_LIMIT]
    b.refund("nobody")  # nothing to give back to
    assert "nobody" not in b


def test_rate_window_tells_what_it_let_through_and_counts_what_it_hears() -> None:
    """Several nodes (CONTRACT section 13): node A's allowed requests, told
    to node B, fill B's window for the key; refused ones are not told."""
    a, b = RateWindow(), RateWindow()
    for _ in range(3):
        assert a.hit("k", 4, 0.0) is None
    assert a.hit("k", 4, 0.0) is None
    assert a.hit("k", 4, 0.0) == 60  # refused: not told
    told = a.take_told()
    assert told == {"k": (4, 4)}
    assert a.take_told() == {}  # told once
    for key, (count, limit) in told.items():
        b.heard(key, count, limit, 1.0)
    assert b.hit("k", 4, 2.0) == 59  # B's window is full of A's requests
    assert b.take_told() == {}
    assert b.hit("k", 4, 61.0) is None  # and they leave it as A's do


def test_rate_window_hears_no_more_than_its_window_holds() -> None:
    w = RateWindow()
    w.heard("k", 10_000, 5, 0.0)
    assert w.held("k") == 5
    w.heard("k", 3, 0, 0.0)  # no limit: nothing to count
    w.heard("other", 3, 0, 0.0)
    assert w.held("other") == 0
