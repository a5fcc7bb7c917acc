"""Concurrent single-key reads of PostgreSQL, coalesced into one query.

In a reconnect storm thousands of phones each need their device row and
their open jobs within seconds; one query per phone per read is a round
trip each. A `Coalescer` turns the reads that arrive while its query is in
flight into the next query (`= ANY($1)`), so at low load a read waits for
nobody and under a storm a few hundred phones share one round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

MAX_BATCH = 500


class Coalescer(Generic[K, V]):
    def __init__(self, fetch: Callable[[list[K]], Awaitable[dict[K, V]]],
                 max_batch: int = MAX_BATCH) -> None:
        self._fetch = fetch
        self._max_batch = max_batch
        self._pending: dict[K, list[asyncio.Future[V | None]]] = {}
        self._runner: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V | None:
        """What the fetch found for `key` (None: nothing); the fetch's error
        if it failed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        self._pending.setdefault(key, []).append(future)
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._pending:
            keys = list(self._pending)[:self._max_batch]
            waiting = {k: self._pending.pop(k) for k in keys}
            try:
                found = await self._fetch(keys)
            except asyncio.CancelledError:
                for futures in waiting.values():
                    for f in futures:
                        f.cancel()
                raise
            except Exception as err:  # noqa: BLE001 - handed to every reader of the batch
                # Without its traceback: that holds this frame, whose locals
                # hold the futures that hold the error, a reference cycle
                # (broker/ops/collector.py freezes what the collector has not freed).
                err.__traceback__ = None
                for futures in waiting.values():
                    for f in futures:
                        if not f.done():
                            f.set_exception(err)
                continue
            for k, futures in waiting.items():
                value = found.get(k)
                for f in futures:
                    if not f.done():  # a reader cancelled meanwhile
                        f.set_result(value)

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        for futures in self._pending.values():
            for f in futures:
                f.cancel()
        self._pending.clear()
