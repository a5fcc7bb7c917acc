"""`Broker`: everything one broker process holds, and its start and stop.

Handlers reach it as `request.app.state.broker`; app.py composes it with the
routes. Nothing here knows a transport's wire: phones are `DeviceChannel`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from broker import store
from broker.clock import utcnow
from broker.cluster import make_bus
from broker.cluster.bus import Bus
from broker.cluster.leases import NodeLease
from broker.cluster.peers import Peers
from broker.delivery.channel import CloseReason
from broker.delivery.dispatch import Dispatcher
from broker.delivery.presence import Connection, Presence
from broker.delivery.sweeper import Sweeper
from broker.delivery.wake import Wake
from broker.keys import KeyCache, UnknownPrefixes
from broker.limits import Buckets, RateWindow
from broker.lookups import Coalescer
from broker.settings import Settings
from broker.store import cluster as cluster_store
from broker.store import keys as key_store
from broker.store import webhooks as outbox
from broker.store.listener import Listener
from broker.webhooks.devices import DeviceEvents
from broker.webhooks.sender import Sender

log = logging.getLogger("smsdora.runtime")
# How often the nodes tell each other their keys' requests: a key can go
# over its limit by what the other nodes let through in this long.
RATE_GOSSIP_S = 0.2


class Broker:
    """Everything one broker process holds; reached from handlers as
    `request.app.state.broker`."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.database_url = database_url
        self.secret = settings.server_secret()
        self.presence = Presence()
        self.rate_window = RateWindow()
        self.key_cache: KeyCache[store.KeyRow] = KeyCache()
        self.keys_used = KeysUsed()
        self.unknown_keys = UnknownPrefixes(ttl_s=settings.unknown_key_ttl_s)
        # Failed credentials per client address (every kind) and per email
        # (passwords); each account's requests; its share of the pool.
        self.auth_failures = _per_window(settings.auth_failures, settings.auth_failure_window_s)
        self.login_failures = _per_window(settings.login_failures,
                                          settings.login_failure_window_s)
        self.account_budget = account_budget(settings.account_rate, settings.account_burst)
        share = (max(1, round(settings.pool_max * settings.account_pool_share))
                 if settings.account_pool_share > 0 else 0)
        self.pool_shares = store.PoolShares(share, settings.account_pool_wait_s)
        # Reads, which build pages, have half of it: the event loop's time
        # too is shared, and sends want many at once for the commits they share.
        self.read_shares = store.PoolShares(max(1, share // 2) if share else 0,
                                            settings.account_pool_wait_s)
        # Committed events: tell the webhook sender (broker/webhooks/).
        self.wake = Wake()
        self.started_mono = time.monotonic()
        self.draining = False  # set on SIGTERM: no new sends
        self.pool: store.Pool = None  # type: ignore[assignment]  # set by start()
        self.dispatcher: Dispatcher = None  # type: ignore[assignment]
        # Device sockets' token checks: one query for the phones of a storm.
        self.devices_by_token: Coalescer[str, store.DeviceRow] = Coalescer(self._devices_by_token)
        self.webhooks: Sender | None = None  # set by start()
        self.device_events: DeviceEvents | None = None
        self.lease: NodeLease | None = None  # set by start(): this node's name and phones
        self.bus: Bus | None = None  # set by start(): ids to and from the other nodes
        self.peers: Peers = None  # type: ignore[assignment]  # set by start()
        self._webhook_task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._gossip: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        self.pool = await store.create_pool(self.database_url, min_size=self.settings.pool_min,
                                            max_size=self.settings.pool_max)
        # First: a second process under this node's name must not touch its rows.
        self._listener = Listener(
            self.database_url,
            {store.DEVICE_DEACTIVATED: self._on_deactivated, store.KEY_CHANGED: self.key_cache.drop,
             store.KEY_ADDED: self.unknown_keys.drop},
            on_connect=self._forget_keys)
        self.bus = make_bus(self.settings, self._listener)
        self.peers = Peers(self.pool, self.bus, self.settings.node)
        lease = NodeLease(self.pool, self.settings.node, self.settings.lease_s,
                          on_lost=self._lease_lost, on_reaped=self._reaped, on_live=self._live)
        try:
            await lease.claim()
        except BaseException:
            await self.pool.close()
            raise
        self.lease = lease
        self.dispatcher = Dispatcher(self.pool, self.presence,
                                     max_queued=self.settings.max_queued_per_account,
                                     wake=self.wake, peers=self.peers)
        self.peers.on_queued = self._queued_here
        self.peers.on_dispatched = self.dispatcher.remote.arrived
        self.peers.on_reserve = self.dispatcher.remote.reserve
        self.peers.on_stop = self._stop_here
        self.peers.on_rates = self._rates_heard
        self.peers.on_looked = self._looked_elsewhere
        await store.forget_node(self.pool, self.settings.node)
        loop = asyncio.get_running_loop()
        self._flusher = loop.create_task(self._flush_loop())
        self._gossip = loop.create_task(self._gossip_loop())
        self._sweeper = loop.create_task(
            Sweeper(self.pool, self.presence, self.settings, self.peers,
                    self.dispatcher.remote).run())
        await outbox.release_node(self.pool, self.settings.node)
        self.webhooks = Sender(self.pool, self.settings, self.wake)
        self.device_events = DeviceEvents(self.pool, self.wake)
        self.presence.changed = self._presence_changed
        lease.start()
        await self.webhooks.refresh_accounts()
        self._webhook_task = loop.create_task(self.webhooks.run())
        await self.peers.start()  # subscribed before the LISTEN connection is made
        self._listener.start()
        await self.bus.start()
        await asyncio.wait_for(self._listener.connected.wait(), 10)
        # The bus may lag (NATS away at start): it connects in the background,
        # and PostgreSQL, the truth, covers what it misses. Our hello waits
        # for it: published before, it was dropped, and the other nodes sent
        # nothing our way until their lease loop counted us (a third of a lease).
        self._spawn(self._hello())

    def _presence_changed(self, conn: Connection, online: bool) -> None:
        """Presence's hook: the shared presence rows, then the webhook events."""
        assert self.lease is not None and self.device_events is not None
        self.lease.rows.changed(conn.device_id, conn.connected_at, online)
        self.device_events.changed(conn, online)

    def _lease_lost(self) -> None:
        """Other nodes reaped our lease: we hold nobody, so every phone goes
        (and reconnects, to be registered anew)."""
        for conn in self.presence.all_connections():
            self._spawn(conn.channel.close(CloseReason.RESTARTING))

    def _reaped(self, reaped: list[cluster_store.Reaped]) -> None:
        """Dead nodes' phones: their device.offline is due now."""
        for account_id in {r.account_id for r in reaped}:
            self.wake.notify(account_id)
            self.wake.poke_now(account_id)

    def _live(self, nodes: list[str]) -> None:
        """The lease loop counted the live nodes."""
        self.peers.others = sum(1 for n in nodes if n != self.settings.node)

    def _queued_here(self, account_id: uuid.UUID) -> None:
        """Another node queued jobs of the account for our phones: drain."""
        self.dispatcher.queue.filled(account_id)
        self.dispatcher.kick(account_id)

    def _looked_elsewhere(self, device_id: uuid.UUID) -> None:
        """A phone whose event stream is here listed its jobs at another
        node: its channel (the SMS Gateway transport's) hears of it."""
        conn = self.presence.get(device_id)
        hook = getattr(conn.channel, "looked_elsewhere", None) if conn is not None else None
        if hook is not None:
            self._spawn(hook())

    def _rates_heard(self, used: dict[str, tuple[int, int]]) -> None:
        now = time.monotonic()
        for key_id, (count, limit) in used.items():
            self.rate_window.heard(key_id, count, limit, now)

    async def _gossip_loop(self) -> None:
        """The keys' requests let through here, to the other nodes, every
        RATE_GOSSIP_S (nothing when alone: take_told just empties)."""
        while True:
            await asyncio.sleep(RATE_GOSSIP_S)
            used = self.rate_window.take_told()
            try:
                self.peers.rates(used)
            except Exception:
                log.exception("rate gossip failed")

    def _stop_here(self, device_id: uuid.UUID, message_id: uuid.UUID, reason: str) -> None:
        """Another node failed a job our phone may hold: out of its window,
        and cancelled on it (as the sweeper does for its own)."""
        conn = self.presence.get(device_id)
        if conn is not None:
            conn.inflight.discard(message_id)
            self.presence.room_freed(conn, time.monotonic())
            self._spawn(conn.channel.cancel(str(message_id), reason))

    async def _hello(self) -> None:
        assert self.bus is not None
        await self.bus.connected.wait()
        self.peers.hello()

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _devices_by_token(self, prefixes: list[str]) -> dict[str, store.DeviceRow]:
        return await store.devices_by_token_prefix(self.pool, prefixes)

    def _forget_keys(self) -> None:
        """Notices may have been missed while the LISTEN connection was away."""
        self.key_cache.clear()
        self.unknown_keys.clear()

    def keys_cached(self) -> bool:
        """The key cache is trusted only while change notices can reach us."""
        return self._listener is not None and self._listener.connected.is_set()

    def _on_deactivated(self, payload: str) -> None:
        """A device was deactivated (maybe by the CLI): drop its connection now."""
        try:
            conn = self.presence.get(uuid.UUID(payload))
        except ValueError:
            return
        if conn is not None:
            self._spawn(conn.channel.close(CloseReason.DEACTIVATED))

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
        if self.bus is not None:
            await self.bus.stop()
        await self.dispatcher.close()
        await self.devices_by_token.close()
        await self.close_phones()
        for task in (self._flusher, self._gossip, self._sweeper, self._webhook_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.device_events is not None:
            await self.device_events.close()
        if self.webhooks is not None:
            await self.webhooks.close()
        await self.flush_last_seen()
        await self.flush_keys_used()
        if self.lease is not None:
            await self.lease.stop()
        await self.pool.close()

    async def close_phones(self) -> None:
        """Tell every connected phone the broker is restarting. At shutdown,
        before the server waits for open requests: an event stream is one,
        and would hold the shutdown for its whole grace period."""
        self.wake.close()  # and the dashboard's live streams
        for conn in self.presence.all_connections():
            await conn.channel.close(CloseReason.RESTARTING)

    async def flush_last_seen(self) -> None:
        ids, seen, health, versions = self.presence.take_dirty()
        if ids:
            online = [self.presence.get(i) is not None for i in ids]
            await store.flush_last_seen(self.pool, ids, seen, health, versions, online,
                                        self.settings.node)
            if self.lease is not None:
                here = [(i, at) for i, at, on in zip(ids, seen, online, strict=True) if on]
                if here:
                    await cluster_store.touch_online(self.pool, self.settings.node,
                                                     self.lease.epoch, [i for i, _ in here],
                                                     [at for _, at in here])

    async def flush_keys_used(self) -> None:
        used = self.keys_used.take()
        try:
            await key_store.mark_keys_used(self.pool, used)
        except store.DATABASE_DOWN:
            self.keys_used.restore(used)  # the next round writes them
            raise

    async def _flush_loop(self) -> None:
        """Last-seen and keys' last use reach PostgreSQL in batches, not once
        per frame or request."""
        while True:
            await asyncio.sleep(self.settings.last_seen_flush_s)
            for what, flush in (("last-seen", self.flush_last_seen),
                                ("key last-used", self.flush_keys_used)):
                try:
                    await flush()
                except store.DATABASE_DOWN as err:
                    log.warning(f"{what} flush failed", extra={"error": type(err).__name__})
                except Exception:
                    log.exception(f"{what} flush failed: batch dropped")


class KeysUsed:
    """When each API key was last used on this node: noted by `authenticate`
    in memory, at most once per EVERY_S per key, and written by the flush
    loop in one UPDATE, never on a request's path."""

    EVERY_S = 60.0

    def __init__(self) -> None:
        self._noted_mono: dict[uuid.UUID, float] = {}  # when each was last noted
        self._unwritten: dict[uuid.UUID, dt.datetime] = {}

    def note(self, key_id: uuid.UUID, now_mono: float) -> None:
        last = self._noted_mono.get(key_id)
        if last is not None and now_mono - last < self.EVERY_S:
            return
        self._noted_mono[key_id] = now_mono
        self._unwritten[key_id] = utcnow()

    def take(self) -> dict[uuid.UUID, dt.datetime]:
        """What to write now; notes older than EVERY_S are forgotten (a key
        used again is noted again), so this holds only the recent keys."""
        used, self._unwritten = self._unwritten, {}
        horizon = time.monotonic() - self.EVERY_S
        self._noted_mono = {k: t for k, t in self._noted_mono.items() if t > horizon}
        return used

    def restore(self, used: dict[uuid.UUID, dt.datetime]) -> None:
        for key_id, at in used.items():
            self._unwritten.setdefault(key_id, at)


def account_budget(rate: float, burst: int) -> Buckets:
    """An account's requests: `burst` at once, then `rate` a second (0 of
    either: no budget; a rate of 0 is not "the burst, then never again")."""
    if rate <= 0 or burst <= 0:
        return Buckets(0.0, 0)
    return Buckets(rate, burst)


def _per_window(failures: int, window_s: float) -> Buckets:
    """At most `failures` within `window_s`: that many at once, then one
    every `window_s / failures` (0 of either: no limit)."""
    if failures <= 0 or window_s <= 0:
        return Buckets(0.0, 0)
    return Buckets(failures / window_s, failures)
