"""The bus on PostgreSQL: LISTEN on the node's dedicated connection
(broker/store/listener.py, shared with the store's own notices), NOTIFY on a
pool connection.

NOTIFY is sent after the caller's commit, in a statement of its own, never
inside a write transaction: a transaction that notifies takes a lock, held
to its commit, that every other notifying transaction of the cluster waits
for, so notifying writes commit one at a time (docs/PERFORMANCE.md, "The
cluster bus"). The messages of one loop turn go in one statement
(`pg_notify` over `unnest`), and while it runs the next ones gather for the
one after: a burst costs a round trip, not one per message.
"""

from __future__ import annotations

import asyncio
import logging

from broker import store
from broker.cluster.bus import PREFIX, Handler, check, check_topic
from broker.store.listener import Listener

log = logging.getLogger("smsdora.cluster")

NOTIFY = "SELECT count(pg_notify(c, p)) FROM unnest($1::text[], $2::text[]) AS m(c, p)"
# One statement carries at most this many messages, and about this many
# bytes of payload; a larger burst takes more statements, one at a time.
BATCH_MESSAGES = 5000
BATCH_BYTES = 1 << 20
ACQUIRE_TIMEOUT_S = 2.0


class PgBus:
    def __init__(self, pool: store.Pool, listener: Listener) -> None:
        self.pool = pool
        self.listener = listener  # started and stopped by its owner (the node)
        self.connected = listener.connected
        self.dropped = 0  # messages lost to a failed NOTIFY
        self.statements = 0  # NOTIFY statements sent
        self._channels: list[str] = []
        self._payloads: list[str] = []
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())

    async def stop(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            self._sender = None
        self.dropped += len(self._channels)
        self._channels, self._payloads = [], []

    def publish(self, topic: str, payload: bytes) -> None:
        text = check(topic, payload)
        self._channels.append(PREFIX + topic)
        self._payloads.append(text)
        self._wake.set()

    async def subscribe(self, topic: str, handler: Handler) -> None:
        check_topic(topic)
        await self.listener.listen(PREFIX + topic, lambda payload: handler(payload.encode()))

    def _take(self) -> tuple[list[str], list[str]]:
        """The next statement's messages: the oldest waiting, up to the bounds."""
        n, size = 0, 0
        for payload in self._payloads:
            if n == BATCH_MESSAGES or (n and size + len(payload) > BATCH_BYTES):
                break
            n, size = n + 1, size + len(payload)
        channels, payloads = self._channels[:n], self._payloads[:n]
        del self._channels[:n], self._payloads[:n]
        return channels, payloads

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._channels:
                await self._send(*self._take())

    async def _send(self, channels: list[str], payloads: list[str]) -> None:
        try:
            async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                self.statements += 1
                await conn.fetchval(NOTIFY, channels, payloads)
        except store.DATABASE_DOWN as err:
            # At most once: PostgreSQL holds the work; the sweep finds it.
            self.dropped += len(channels)
            log.warning("bus: NOTIFY failed, messages dropped",
                        extra={"messages": len(channels), "error": type(err).__name__})
