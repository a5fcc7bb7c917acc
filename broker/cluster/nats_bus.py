"""The bus on NATS core (nats-py to a `nats-server`), for many nodes: no
PostgreSQL connection per node for it, and no lock in PostgreSQL's commits.

NATS core is at most once already (no JetStream here: PostgreSQL is the
store). nats-py reconnects by itself and subscribes again; while it is
away, a publish is dropped rather than buffered for later, as on the
PostgreSQL bus. Messages of one loop turn are handed to nats-py together,
which writes them to the socket in one go.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from broker.cluster.bus import PREFIX, Handler, check, check_topic

log = logging.getLogger("smsdora.cluster")
RECONNECT_WAIT_S = 0.5


class NatsBus:
    def __init__(self, url: str, name: str = "smsdora") -> None:
        self.url = url
        self.name = name  # the client's name in the server's monitoring
        self.connected = asyncio.Event()
        self.dropped = 0  # messages published while away
        self._client = Client()
        self._handlers: dict[str, Handler] = {}
        self._subscriptions: list[Subscription] = []
        self._outbox: list[tuple[str, bytes]] = []
        self._wake = asyncio.Event()
        self._connector: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._connector = loop.create_task(self._connect())
        self._sender = loop.create_task(self._send_loop())

    async def _connect(self) -> None:
        # max_reconnect_attempts=-1: the first connection too is tried forever.
        await self._client.connect(
            [u.strip() for u in self.url.split(",")], name=self.name, max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT_S,  # type: ignore[arg-type]  # seconds, a float is fine
            connect_timeout=2, error_cb=self._on_error,
            disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected)
        for topic, handler in self._handlers.items():
            await self._subscribe(topic, handler)
        self.connected.set()

    async def stop(self) -> None:
        for task in (self._connector, self._sender):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._connector = self._sender = None
        self.connected.clear()
        self.dropped += len(self._outbox)
        self._outbox = []
        # Ends nats-py's own tasks (reader, flusher, pings, subscriptions).
        await self._client.close()

    def publish(self, topic: str, payload: bytes) -> None:
        check(topic, payload)
        self._outbox.append((PREFIX + topic, payload))
        self._wake.set()

    async def subscribe(self, topic: str, handler: Handler) -> None:
        check_topic(topic)
        if topic in self._handlers:
            raise ValueError(f"bus topic {topic!r} already has a handler")
        self._handlers[topic] = handler
        if self.connected.is_set():
            await self._subscribe(topic, handler)

    async def _subscribe(self, topic: str, handler: Handler) -> None:
        async def on_message(msg: Msg) -> None:
            handler(msg.data)
        self._subscriptions.append(await self._client.subscribe(PREFIX + topic, cb=on_message))
        try:
            # nats-py (2.16) writes flush()'s PING straight to the socket, ahead
            # of a SUB still waiting in its buffer: the PONG would come back
            # before the server has the subscription, and a message published
            # meanwhile by another node would be lost (seen under load). So the
            # buffer is written out first, then the round trip confirms it.
            await self._client._flush_pending(force_flush=True)
            await self._client.flush()  # the server has the subscription when this returns
        except nats.errors.Error as err:
            # Lost meanwhile: nats-py keeps the subscription and makes it again
            # on the next connection.
            log.warning("bus: NATS subscription not confirmed", extra={"error": type(err).__name__})

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            outbox, self._outbox = self._outbox, []
            if not self._client.is_connected:
                self.dropped += len(outbox)
                continue
            try:
                for subject, payload in outbox:
                    await self._client.publish(subject, payload)
            except (nats.errors.OutboundBufferLimitError, nats.errors.ConnectionClosedError,
                    nats.errors.ConnectionReconnectingError) as err:
                self.dropped += len(outbox)  # at most once: some went, the rest are gone
                log.warning("bus: publish failed, messages dropped",
                            extra={"messages": len(outbox), "error": type(err).__name__})

    async def _on_disconnected(self) -> None:
        if self.connected.is_set():
            log.warning("bus: NATS connection lost, reconnecting")
        self.connected.clear()

    async def _on_reconnected(self) -> None:
        self.connected.set()

    async def _on_error(self, err: Exception) -> None:
        log.warning("bus: NATS", extra={"error": f"{type(err).__name__}: {err}"})

