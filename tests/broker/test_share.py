"""broker/store/share.py: at most `limit` requests of one account hold the
pool at once; the others wait in turn, then 429. Real asyncio, no database
(the share is taken around the database work, not inside it)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from broker.store import AccountBusy, PoolShares

pytestmark = pytest.mark.timeout(10)
A, B = uuid.uuid4(), uuid.uuid4()


async def test_an_account_holds_at_most_its_limit_and_others_are_not_held_back() -> None:
    shares = PoolShares(limit=2, wait_s=5.0)
    await shares.acquire(A)
    await shares.acquire(A)
    third = asyncio.ensure_future(shares.acquire(A))
    await asyncio.sleep(0.01)
    assert not third.done() and shares.held(A) == 2
    await asyncio.wait_for(shares.acquire(B), 0.1)  # another account: at once
    shares.release(A)  # the slot goes to the waiter, still held
    await asyncio.wait_for(third, 1)
    assert shares.held(A) == 2
    for _ in range(2):
        shares.release(A)
    shares.release(B)
    assert shares.held(A) == shares.held(B) == 0 and not shares._shares


async def test_waiters_get_slots_in_arrival_order() -> None:
    shares = PoolShares(limit=1, wait_s=5.0)
    await shares.acquire(A)
    order: list[int] = []

    async def waiter(i: int) -> None:
        await shares.acquire(A)
        order.append(i)

    tasks = [asyncio.ensure_future(waiter(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    for _ in range(3):
        shares.release(A)
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


async def test_a_waiter_past_its_wait_gets_account_busy_and_leaves_no_trace() -> None:
    shares = PoolShares(limit=1, wait_s=0.05)
    await shares.acquire(A)
    with pytest.raises(AccountBusy) as busy:
        await shares.acquire(A)
    assert (busy.value.status, busy.value.headers) == (429, {"Retry-After": "1"})
    shares.release(A)
    assert shares.held(A) == 0  # nobody waiting was handed the slot


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    shares = PoolShares(limit=1, wait_s=5.0)
    await shares.acquire(A)
    gone = asyncio.ensure_future(shares.acquire(A))
    await asyncio.sleep(0.01)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    shares.release(A)
    assert shares.held(A) == 0


async def test_no_limit_holds_nothing() -> None:
    shares = PoolShares(limit=0, wait_s=0.0)
    for _ in range(100):
        await shares.acquire(A)
    shares.release(A)
    assert shares.held(A) == 0


async def test_a_release_as_a_waiter_gives_up_skips_it() -> None:
    """The race the issue's flood found: a waiter's timeout (or cancel)
    cancels its future at once, but its task leaves the line only when it
    runs next; a release in between must pass the slot over it, not hand it
    to a future nobody waits for (InvalidStateError), and the waiter then
    leaves a line it is no longer in (no ValueError)."""
    shares = PoolShares(limit=1, wait_s=5.0)
    await shares.acquire(A)
    gone = asyncio.ensure_future(shares.acquire(A))
    then = asyncio.ensure_future(shares.acquire(A))
    await asyncio.sleep(0.01)
    gone.cancel()  # its future is cancelled now; its task has not run yet
    shares.release(A)  # skips it: the slot goes to the next one in line
    with pytest.raises(asyncio.CancelledError):
        await gone
    await asyncio.wait_for(then, 1)
    assert shares.held(A) == 1
    gone_too = asyncio.ensure_future(shares.acquire(A))
    await asyncio.sleep(0.01)
    gone_too.cancel()
    shares.release(A)  # nobody left in line: the share is free
    with pytest.raises(asyncio.CancelledError):
        await gone_too
    assert shares.held(A) == 0
