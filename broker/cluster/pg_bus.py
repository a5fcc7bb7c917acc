"""The bus on PostgreSQL: LISTEN on the node's dedicated connection
(broker/store/listener.py, shared with the store's own notices), NOTIFY on
a connection of the bus's own.

NOTIFY is sent after the caller's commit, in a statement of its own, never
inside a write transaction: a transaction that notifies takes a lock, held
to its commit, that every other notifying transaction of the cluster waits
for, so notifying writes commit one at a time (docs/PERFORMANCE.md, "The
cluster bus"). The messages of one loop turn go in one statement
(`pg_notify` over `unnest`), and while it runs the next ones gather for the
one after: a burst costs a round trip, not one per message.

The NOTIFY connection is the bus's own, not the pool's: a wake-up never
waits for a pool slot behind the node's send batches and report writer.
And it commits with `synchronous_commit` off: a NOTIFY's statement is a
transaction that writes a commit record, which would otherwise wait for
its WAL flush (an fsync, as long as any commit's when the disk is busy,
and with the lock above held: every node's NOTIFY behind it). The listeners
hear it as soon as it commits; a crash before the flush loses only
wake-ups, which the bus never promised (the data they point at was
committed, synchronously, before the publish). The connection is made at
start and again as soon as it breaks (trying again after a growing pause
while PostgreSQL is away); a statement that fails drops its messages, and
so does a connect that fails (the bus is away: at most once).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from broker import store
from broker.cluster.bus import PREFIX, Handler, check, check_topic
from broker.store.listener import Listener

log = logging.getLogger("smsdora.cluster")

# What a failed NOTIFY looks like: the database away, or an error of the
# statement's own (its queue full): either way its messages are dropped.
NOTIFY_FAILED: tuple[type[BaseException], ...] = (*store.DATABASE_DOWN, asyncpg.PostgresError)
NOTIFY = "SELECT count(pg_notify(c, p)) FROM unnest($1::text[], $2::text[]) AS m(c, p)"
# One statement carries at most this many messages, and about this many
# bytes of payload; a larger burst takes more statements, one at a time.
BATCH_MESSAGES = 5000
BATCH_BYTES = 1 << 20
CONNECT_TIMEOUT_S = 2.0
STATEMENT_TIMEOUT_S = 4.0  # as the pool's (broker/store/pool.py)
BACKOFF_S = (0.2, 5.0)  # between failed connects: first, longest


class PgBus:
    def __init__(self, listener: Listener, name: str = "smsdora") -> None:
        self.listener = listener  # started and stopped by its owner (the node)
        self.name = name  # the NOTIFY connection's application_name (pg_stat_activity)
        self.connected = listener.connected
        self.dropped = 0  # messages lost to a failed NOTIFY
        self.statements = 0  # NOTIFY statements sent
        self.connects = 0  # NOTIFY connections made
        self._channels: list[str] = []
        self._payloads: list[str] = []
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._backoff = BACKOFF_S[0]

    async def start(self) -> None:
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())

    async def stop(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            self._sender = None
        self.dropped += len(self._channels)
        self._channels, self._payloads = [], []
        self._close()

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
            conn = await self._connection()
            if not self._channels:
                await self._wake.wait()  # a message, or the connection broke
            self._wake.clear()
            while self._channels and not conn.is_closed():
                await self._send(conn, *self._take())

    async def _connection(self) -> asyncpg.Connection:
        """The NOTIFY connection, made now if there is none (the start, or
        it broke), trying again after a growing pause."""
        while self._conn is None or self._conn.is_closed():
            try:
                conn = await asyncpg.connect(
                    self.listener.database_url, timeout=CONNECT_TIMEOUT_S,
                    server_settings={"synchronous_commit": "off", "application_name": self.name})
            except store.DATABASE_DOWN as err:
                log.warning("bus: cannot connect for NOTIFY, messages dropped", extra={
                    "messages": len(self._channels), "error": type(err).__name__,
                    "retry_s": self._backoff})
                self.dropped += len(self._channels)
                self._channels, self._payloads = [], []
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, BACKOFF_S[1])
                continue
            conn.add_termination_listener(lambda _conn: self._wake.set())
            self._conn, self._backoff = conn, BACKOFF_S[0]
            self.connects += 1
        return self._conn

    async def _send(self, conn: asyncpg.Connection, channels: list[str],
                    payloads: list[str]) -> None:
        try:
            self.statements += 1
            await conn.fetchval(NOTIFY, channels, payloads, timeout=STATEMENT_TIMEOUT_S)
        except NOTIFY_FAILED as err:
            # At most once: PostgreSQL holds the work; the sweep finds it.
            self.dropped += len(channels)
            log.warning("bus: NOTIFY failed, messages dropped",
                        extra={"messages": len(channels), "error": type(err).__name__})
            self._close()  # in whatever state it was left: the loop makes another

    def _close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            self._conn.terminate()
        self._conn = None
