"""How much of the pool one account may use at once (contract section 12:
"per-account fairness: one account's load cannot take the pool from
others").

`PoolShares`: at most `limit` requests of one account do their database
work at a time; the account's other requests wait their turn, in order, for
at most `wait_s`, then `AccountBusy` (429). A holder makes one query at a
time, so one account never holds more than `limit` of the pool's
connections, and the rest of the pool stays for every other account. The
waiting costs nothing: no connection, no query.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque

from broker.errors import BrokerError


class AccountBusy(BrokerError):
    """The account already has its share of the pool in use, and none came
    free in time."""

    status = 429

    def __init__(self) -> None:
        super().__init__("Too many concurrent requests for this account",
                         headers={"Retry-After": "1"})


class _Share:
    __slots__ = ("held", "waiting")

    def __init__(self) -> None:
        self.held = 0
        self.waiting: deque[asyncio.Future[None]] = deque()


class PoolShares:
    """Per-account slots: `acquire(account)` before the database work,
    `release(account)` after, in a `finally`. `limit` 0: no bound."""

    def __init__(self, limit: int, wait_s: float) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self._shares: dict[uuid.UUID, _Share] = {}

    async def acquire(self, account: uuid.UUID) -> None:
        if self.limit <= 0:
            return
        share = self._shares.get(account)
        if share is None:
            share = self._shares[account] = _Share()
        if share.held < self.limit:
            share.held += 1
            return
        # Full: a slot is handed over by `release`, in arrival order.
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        share.waiting.append(waiter)
        try:
            async with asyncio.timeout(self.wait_s):
                await waiter
        except BaseException as err:
            if waiter.done() and not waiter.cancelled():
                # Handed a slot at the very moment we stopped waiting: pass it on.
                self.release(account)
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):  # `release` may have dropped it
                    share.waiting.remove(waiter)
            if isinstance(err, TimeoutError):
                raise AccountBusy() from None
            raise

    def release(self, account: uuid.UUID) -> None:
        if self.limit <= 0:
            return
        share = self._shares[account]
        while share.waiting:
            waiter = share.waiting.popleft()
            # A waiter whose wait just ended (its timeout, a cancel) is
            # cancelled before its task has run to leave the line: skip it.
            if not waiter.done():
                waiter.set_result(None)  # the slot goes on, still held
                return
        share.held -= 1
        if share.held == 0:
            del self._shares[account]

    def held(self, account: uuid.UUID) -> int:
        share = self._shares.get(account)
        return share.held if share is not None else 0
