"""This node's phones as presence rows (broker/store/cluster.py): told by
Presence when a phone comes or goes, written once per loop turn, so that a
reconnect storm of 10,000 phones is a statement, not 10,000."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid

from broker import store
from broker.store import cluster

log = logging.getLogger("smsdora.cluster")


class OnlineRows:
    def __init__(self, pool: store.Pool, node: str, epoch: uuid.UUID) -> None:
        self.pool = pool
        self.node = node
        self.epoch = epoch
        # Each device's latest change: connected at (online) or None (gone).
        self._pending: dict[uuid.UUID, dt.datetime | None] = {}
        self._writer: asyncio.Task[None] | None = None

    def changed(self, device_id: uuid.UUID, connected_at: float, online: bool) -> None:
        """Presence's hook (a phone connected at `connected_at`, wall time,
        or gone): a dict write, and a writer task once per turn."""
        self._pending[device_id] = (
            dt.datetime.fromtimestamp(connected_at, dt.UTC) if online else None)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def owed(self) -> int:
        """Changes not written yet (the database was away, or our lease)."""
        return len(self._pending)

    async def flush(self) -> None:
        """Write what is owed now (the lease loop retries with it)."""
        if self._pending and self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())
        if self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write(self) -> None:
        try:
            await asyncio.sleep(0)  # the rest of this loop turn joins the batch
            while self._pending:
                batch, self._pending = self._pending, {}
                try:
                    owed = await self._apply(batch)
                except store.DATABASE_DOWN as err:
                    log.warning("presence rows not written", extra={
                        "error": type(err).__name__, "count": len(batch)})
                    owed = batch
                if owed:  # the lease loop's next turn tries again
                    owed.update(self._pending)  # a later change wins
                    self._pending = owed
                    return
        finally:
            self._writer = None

    async def _apply(self, batch: dict[uuid.UUID, dt.datetime | None]
                     ) -> dict[uuid.UUID, dt.datetime | None]:
        """Write a batch: at most two statements. Returns what is still owed."""
        went = [d for d, at in batch.items() if at is None]
        came = {d: at for d, at in batch.items() if at is not None}
        if went:
            await cluster.unregister_online(self.pool, self.node, self.epoch, went)
        if came and not await cluster.register_online(self.pool, self.node, self.epoch,
                                                      list(came), list(came.values())):
            # No live lease (it lapsed while the database was away): these
            # wait for the renewal, or for the phones to go.
            return dict(came)
        return {}

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
