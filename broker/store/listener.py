"""A supervised LISTEN connection: PostgreSQL tells every broker process what
another process (the CLI, another node) changed, e.g. a deactivated device.

The connection is re-made after it breaks (a PostgreSQL restart, a network
blip), with backoff, so a broker outlives its database's restarts. Channels
may be added while it runs (`listen`): the cluster bus's (broker/cluster/
pg_bus.py) share this one connection with the store's own notices.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from broker import store

log = logging.getLogger("smsdora.listener")
Handler = Callable[[str], None]


class Listener:
    def __init__(self, database_url: str, channels: dict[str, Handler],
                 on_connect: Callable[[], None] | None = None) -> None:
        self.database_url = database_url
        self.channels = channels
        self.on_connect = on_connect  # what was missed while away is unknown
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The connection while every channel is listened on it, else None.
        self._conn: asyncpg.Connection | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def listen(self, channel: str, handler: Handler) -> None:
        """Add a channel, now if connected and on every connection made after."""
        if channel in self.channels:
            raise ValueError(f"channel {channel!r} already has a handler")
        self.channels[channel] = handler
        if self._conn is not None:
            try:
                await self._conn.add_listener(channel, _call(handler))
            except store.DATABASE_DOWN:
                pass  # the connection is going: the next one listens on it too

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                conn = await store.connect(self.database_url)
            except store.DATABASE_DOWN as err:
                log.warning("listen: cannot connect", extra={"error": type(err).__name__})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            lost = asyncio.Event()
            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                listened: set[str] = set()
                # `listen` may add a channel during these awaits: look again
                # until none is left, then publish the connection at once.
                while todo := [c for c in self.channels if c not in listened]:
                    for channel in todo:
                        await conn.add_listener(channel, _call(self.channels[channel]))
                        listened.add(channel)
                self._conn = conn
                backoff = 0.2
                if self.on_connect is not None:
                    self.on_connect()
                self.connected.set()
                await lost.wait()
                log.warning("listen: connection lost, reconnecting")
            except store.DATABASE_DOWN as err:
                log.warning("listen: failed", extra={"error": type(err).__name__})
            except Exception:
                log.exception("listen: unexpected failure, reconnecting")
                await asyncio.sleep(backoff)
            finally:
                self._conn = None
                self.connected.clear()
                if not conn.is_closed():
                    conn.terminate()


def _call(handler: Handler) -> Callable[[object, int, str, object], None]:
    def on_notify(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        handler(str(payload))
    return on_notify
