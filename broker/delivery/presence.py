"""The one owner of `device_id -> connection`, last-seen and per-device pacing.

Presence lives in memory (contract section 1); last-seen reaches PostgreSQL in
batches. A pick is O(log n) in the account's connected devices: see `_Account`.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import time
import uuid
from collections.abc import Callable

import msgspec
from sortedcontainers import SortedDict

from broker.delivery.channel import DeviceChannel
from broker.limits import Window
from protocol.frames import Health

PACING_WINDOW_S = 60.0
_health_encoder = msgspec.json.Encoder()


class Connection:
    """One phone's live connection (any transport) and what the broker knows
    of it. `pacer` is the device's send rate: at most `rate` jobs in any 60 s."""

    __slots__ = ("device_id", "account_id", "name", "channel", "pacer", "last_seen_at",
                 "health", "app_version", "connected_at", "window", "inflight", "fresh",
                 "park_seq")

    def __init__(self, device_id: uuid.UUID, account_id: uuid.UUID, name: str,
                 channel: DeviceChannel, pacer: Window, now_wall: float, window: int = 0) -> None:
        self.device_id = device_id
        self.account_id = account_id
        self.name = name
        self.channel = channel
        self.pacer = pacer
        self.last_seen_at = now_wall
        self.health: Health | None = None
        self.app_version: str | None = None
        self.connected_at = now_wall
        # In-flight window: jobs handed to this phone that it has not
        # answered yet (0 = no limit). A silent phone stops getting new jobs.
        self.window = window
        self.inflight: set[uuid.UUID] = set()
        # Kept by Presence: the freshness stamp (higher is fresher), and 0
        # while among the devices with room, else the stamp of its heap entry.
        self.fresh = 0
        self.park_seq = -1

    def room(self, now: float) -> int:
        room = self.pacer.room(now)
        if self.window > 0:
            room = min(room, self.window - len(self.inflight))
        return room

    def next_room_at(self, now: float) -> float:
        if self.window > 0 and len(self.inflight) >= self.window:
            # Room comes with the phone's next answer, which kicks the queue;
            # look again in a second in case it never does.
            return max(now + 1.0, self.pacer.next_room_at(now))
        return self.pacer.next_room_at(now)


class _Account:
    """One account's connected devices, kept so that a pick never walks them.

    `ready` holds the devices that had room when last looked at, keyed by
    their freshness stamp (a counter that every frame advances), so the
    freshest is its last item. A device found without room is parked in
    `parked`, a heap by the moment its room comes back: its pacer's window,
    or a second for a full in-flight window, whose room usually comes sooner
    with the phone's answer (`Presence.room_freed`). A heap entry whose
    device left, or was unparked meanwhile, is skipped when it surfaces (its
    `park_seq` has moved on). So a pick is O(log n) in the account's devices,
    and a device is parked at most once each time it fills up."""

    __slots__ = ("conns", "ready", "parked")

    def __init__(self) -> None:
        self.conns: dict[uuid.UUID, Connection] = {}
        self.ready: SortedDict[int, Connection] = SortedDict()  # fresh stamp -> Connection
        self.parked: list[tuple[float, int, Connection]] = []


class Presence:
    def __init__(self) -> None:
        self._by_device: dict[uuid.UUID, Connection] = {}
        self._by_account: dict[uuid.UUID, _Account] = {}
        self._pacers: dict[uuid.UUID, Window] = {}  # outlive a reconnect
        self._dirty: dict[uuid.UUID, Connection] = {}
        # The last batch taken: still `unflushed` until the next one is taken,
        # for a reader whose PostgreSQL read overlaps that batch's UPDATE.
        self._taken: dict[uuid.UUID, Connection] = {}
        self._gone_at: dict[uuid.UUID, float] = {}  # wall time of the last disconnect
        self._seen_away: dict[uuid.UUID, float] = {}  # last-seen of phones with no connection
        self._stamps = itertools.count(1)  # freshness and park stamps, never reused
        # Told when a device comes online (True) or goes offline (False):
        # the runtime writes device.online / device.offline events.
        self.changed: Callable[[Connection, bool], None] | None = None

    # --- membership ---------------------------------------------------------

    def pacer(self, device_id: uuid.UUID, rate: int) -> Window:
        """The device's send rate (0: no limit); it outlives a reconnect."""
        p = self._pacers.get(device_id)
        if p is None:
            p = self._pacers[device_id] = Window(rate, PACING_WINDOW_S)
        p.limit = rate
        return p

    def register(self, conn: Connection) -> Connection | None:
        """Make `conn` the device's connection (the freshest of its account);
        returns the one it replaces."""
        old = self._by_device.get(conn.device_id)
        if old is not None:
            self._leave(old)
        self._by_device[conn.device_id] = conn
        self._gone_at.pop(conn.device_id, None)
        account = self._by_account.get(conn.account_id)
        if account is None:
            account = self._by_account[conn.account_id] = _Account()
        account.conns[conn.device_id] = conn
        conn.fresh = next(self._stamps)
        conn.park_seq = 0
        account.ready[conn.fresh] = conn
        self._dirty[conn.device_id] = conn
        if old is None and self.changed is not None:
            self.changed(conn, True)
        return old

    def unregister(self, conn: Connection) -> bool:
        """Forget `conn` if it is still the device's current connection."""
        if self._by_device.get(conn.device_id) is not conn:
            return False
        del self._by_device[conn.device_id]
        self._gone_at[conn.device_id] = time.time()
        self._leave(conn)
        self._dirty[conn.device_id] = conn
        if self.changed is not None:
            self.changed(conn, False)
        return True

    def _leave(self, conn: Connection) -> None:
        account = self._by_account.get(conn.account_id)
        if account is None or account.conns.get(conn.device_id) is not conn:
            return
        del account.conns[conn.device_id]
        if conn.park_seq == 0:
            account.ready.pop(conn.fresh, None)
        conn.park_seq = -1  # any heap entry of it is stale now
        if not account.conns:
            del self._by_account[conn.account_id]

    def get(self, device_id: uuid.UUID) -> Connection | None:
        return self._by_device.get(device_id)

    def gone_at(self, device_id: uuid.UUID) -> float | None:
        """When this process last saw the device's socket end (None: never)."""
        return self._gone_at.get(device_id)

    def unflushed(self, device_id: uuid.UUID) -> Connection | None:
        """A connection whose last-seen may not have reached PostgreSQL yet,
        as a reader sees it: changed since the last batch was taken, or in
        that batch (its UPDATE under way, or committed after the reader
        read PostgreSQL: a flush period later, the next batch replaces it)."""
        return self._dirty.get(device_id) or self._taken.get(device_id)

    def is_current(self, conn: Connection) -> bool:
        return self._by_device.get(conn.device_id) is conn

    def online_count(self) -> int:
        return len(self._by_device)

    def account_connections(self, account_id: uuid.UUID) -> list[Connection]:
        account = self._by_account.get(account_id)
        return list(account.conns.values()) if account is not None else []

    def online_accounts(self) -> list[uuid.UUID]:
        return list(self._by_account)

    def all_connections(self) -> list[Connection]:
        return list(self._by_device.values())

    # --- freshness ----------------------------------------------------------

    def touch(self, conn: Connection, health: Health | None = None) -> None:
        """A frame arrived: the device is the freshest of its account now."""
        conn.last_seen_at = time.time()
        if health is not None:
            conn.health = health
        if conn.park_seq == 0 and self._by_device.get(conn.device_id) is conn:
            ready = self._by_account[conn.account_id].ready
            del ready[conn.fresh]
            conn.fresh = next(self._stamps)
            ready[conn.fresh] = conn
        else:
            conn.fresh = next(self._stamps)  # takes its place when unparked
        self._dirty[conn.device_id] = conn

    def room_freed(self, conn: Connection, now: float) -> None:
        """A parked device may have room before its heap entry says (the
        phone answered a job, or a take was given back): look now."""
        if conn.park_seq > 0 and conn.room(now) > 0:
            account = self._by_account.get(conn.account_id)
            if account is not None and account.conns.get(conn.device_id) is conn:
                self._unpark(account, conn)

    def _unpark(self, account: _Account, conn: Connection) -> None:
        conn.park_seq = 0
        account.ready[conn.fresh] = conn

    def _park(self, account: _Account, conn: Connection, now: float) -> None:
        """Into the heap, by when its room comes back (a new entry: any
        older one of it is stale from now)."""
        conn.park_seq = next(self._stamps)
        heapq.heappush(account.parked, (conn.next_room_at(now), conn.park_seq, conn))

    def pick(self, account_id: uuid.UUID, now: float) -> tuple[Connection, bool] | None:
        """The freshest connected device with room (True), else the one whose
        room comes first (False: the job waits as `queued`), else None."""
        account = self._by_account.get(account_id)
        if account is None:
            return None
        parked = account.parked
        while parked and parked[0][0] <= now:  # room came back with time
            _, seq, conn = heapq.heappop(parked)
            if conn.park_seq != seq:
                continue  # left, or unparked already
            if conn.room(now) > 0:
                self._unpark(account, conn)
            else:
                self._park(account, conn, now)
        ready = account.ready
        while ready:
            conn = ready.peekitem(-1)[1]
            if conn.room(now) > 0:
                return conn, True
            del ready[conn.fresh]
            self._park(account, conn, now)
        while parked[0][2].park_seq != parked[0][1]:
            heapq.heappop(parked)  # stale entries on top: the soonest is below
        return parked[0][2], False

    def pick_other(self, account_id: uuid.UUID, now: float,
                   exclude: uuid.UUID) -> tuple[Connection, bool] | None:
        """`pick`, never `exclude` (the phone a job is moving away from)."""
        picked = self.pick(account_id, now)
        if picked is None or picked[0].device_id != exclude:
            return picked
        conn, has_room = picked
        account = self._by_account[account_id]
        if not has_room or len(account.conns) == 1:
            return None  # the soonest is the excluded one: nobody else has room
        # Out of the ready set for one more pick: every other device is
        # ready or parked, so that pick finds one.
        del account.ready[conn.fresh]
        try:
            return self.pick(account_id, now)
        finally:
            if conn.park_seq == 0:
                account.ready[conn.fresh] = conn

    def next_room_at(self, account_id: uuid.UUID, now: float) -> float | None:
        """When the account's first device has room (`now` if one has)."""
        picked = self.pick(account_id, now)
        if picked is None:
            return None
        conn, has_room = picked
        return now if has_room else conn.next_room_at(now)

    def seen_away(self, device_id: uuid.UUID) -> None:
        """A request from a phone with no connection here (an SMS Gateway app
        polling with no stream open): its last-seen moves, and it has been
        away only since now."""
        now = time.time()
        self._gone_at[device_id] = now
        self._seen_away[device_id] = now

    # --- last-seen batches --------------------------------------------------

    def take_dirty(self) -> tuple[list[uuid.UUID], list[dt.datetime], list[str | None],
                                  list[str | None]]:
        """What changed since the last flush, as columns for one UPDATE."""
        dirty, self._dirty = self._dirty, {}
        self._taken = dirty
        away, self._seen_away = self._seen_away, {}
        ids, seen, health, versions = [], [], [], []
        for device_id, conn in dirty.items():
            ids.append(device_id)
            seen.append(dt.datetime.fromtimestamp(max(conn.last_seen_at,
                                                      away.pop(device_id, 0.0)), dt.UTC))
            health.append(_health_encoder.encode(conn.health).decode() if conn.health else None)
            versions.append(conn.app_version)
        for device_id, at in away.items():
            ids.append(device_id)
            seen.append(dt.datetime.fromtimestamp(at, dt.UTC))
            health.append(None)
            versions.append(None)
        return ids, seen, health, versions
