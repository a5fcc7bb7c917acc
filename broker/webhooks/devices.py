"""device.online / device.offline (CONTRACT section 9): written to the
outbox when a phone's connection is registered or ends, for the accounts
with an enabled endpoint; the changes of one loop turn share a statement.
A node that dies writes no device.offline."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid

import msgspec

from broker import store
from broker.delivery.presence import Connection
from broker.delivery.wake import Wake
from broker.store import webhooks as outbox

log = logging.getLogger("smsdora.webhooks")
_health = msgspec.json.Encoder()


class DeviceEvents:
    def __init__(self, pool: store.Pool, wake: Wake) -> None:
        self.pool = pool
        self.wake = wake
        self._pending: list[tuple[uuid.UUID, bool, dt.datetime, str | None, str | None]] = []
        self._accounts: set[uuid.UUID] = set()
        self._writer: asyncio.Task[None] | None = None

    def changed(self, conn: Connection, online: bool) -> None:
        """Presence's hook: cheap for an account without endpoints (a set lookup)."""
        self.wake.notify(conn.account_id)  # its dashboard tabs, if any
        if conn.account_id not in self.wake.accounts:
            return
        self._accounts.add(conn.account_id)
        self._pending.append((conn.device_id, online,
                              dt.datetime.fromtimestamp(conn.last_seen_at, dt.UTC),
                              _health.encode(conn.health).decode() if conn.health else None,
                              conn.app_version))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        try:
            await asyncio.sleep(0)
            while self._pending:
                batch, self._pending = self._pending, []
                accounts, self._accounts = self._accounts, set()
                try:
                    await outbox.emit_device_events(
                        self.pool, [b[0] for b in batch], [b[1] for b in batch],
                        [b[2] for b in batch], [b[3] for b in batch], [b[4] for b in batch])
                except store.DATABASE_DOWN as err:
                    log.warning("device events not written", extra={
                        "error": type(err).__name__, "count": len(batch)})
                    continue
                for account_id in accounts:
                    self.wake.poke_now(account_id)
        finally:
            self._writer = None

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
