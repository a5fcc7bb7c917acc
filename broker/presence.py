"""The one owner of `device_id -> connection`, last-seen and per-device pacing.

Presence lives in memory (contract section 1); last-seen reaches PostgreSQL in
batches. Each account's connected devices are kept in an insertion-ordered
dict that a frame moves to the end, so the freshest device is the last one and
a pick walks back from it only past devices that are at their rate.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import OrderedDict, deque
from typing import Protocol

import msgspec

from protocol.frames import Health

PACING_WINDOW_S = 60.0
_health_encoder = msgspec.json.Encoder()


class Socket(Protocol):
    async def send_frame(self, data: bytes) -> bool: ...
    async def close(self, code: int, reason: str = "") -> None: ...


class Pacer:
    """A device's send rate: at most `rate` jobs in any 60 s (0 = no limit)."""

    __slots__ = ("rate", "_sent")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._sent: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self._sent and now - self._sent[0] >= PACING_WINDOW_S:
            self._sent.popleft()

    def room(self, now: float) -> int:
        if self.rate <= 0:
            return 1 << 30
        self._trim(now)
        return self.rate - len(self._sent)

    def take(self, now: float) -> None:
        if self.rate > 0:
            self._sent.append(now)

    def give_back(self, at: float) -> None:
        """Undo a `take(at)` whose job never went out."""
        try:
            self._sent.remove(at)
        except ValueError:
            pass  # already out of the window

    def next_room_at(self, now: float) -> float:
        if self.room(now) > 0:
            return now
        return self._sent[0] + PACING_WINDOW_S


class Connection:
    """One phone's live socket and what the broker knows of it."""

    __slots__ = ("device_id", "account_id", "name", "socket", "pacer", "last_seen_at",
                 "health", "app_version", "connected_at", "window", "inflight")

    def __init__(self, device_id: uuid.UUID, account_id: uuid.UUID, name: str, socket: Socket,
                 pacer: Pacer, now_wall: float, window: int = 0) -> None:
        self.device_id = device_id
        self.account_id = account_id
        self.name = name
        self.socket = socket
        self.pacer = pacer
        self.last_seen_at = now_wall
        self.health: Health | None = None
        self.app_version: str | None = None
        self.connected_at = now_wall
        # In-flight window: jobs handed to this socket that the phone has not
        # answered yet (0 = no limit). A silent phone stops getting new jobs.
        self.window = window
        self.inflight: set[uuid.UUID] = set()

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


class Presence:
    def __init__(self) -> None:
        self._by_device: dict[uuid.UUID, Connection] = {}
        self._by_account: dict[uuid.UUID, OrderedDict[uuid.UUID, Connection]] = {}
        self._pacers: dict[uuid.UUID, Pacer] = {}  # outlive a reconnect
        self._dirty: dict[uuid.UUID, Connection] = {}
        self._gone_at: dict[uuid.UUID, float] = {}  # wall time of the last disconnect

    # --- membership ---------------------------------------------------------

    def pacer(self, device_id: uuid.UUID, rate: int) -> Pacer:
        p = self._pacers.get(device_id)
        if p is None:
            p = self._pacers[device_id] = Pacer(rate)
        p.rate = rate
        return p

    def register(self, conn: Connection) -> Connection | None:
        """Make `conn` the device's connection; returns the one it replaces."""
        old = self._by_device.get(conn.device_id)
        self._by_device[conn.device_id] = conn
        self._gone_at.pop(conn.device_id, None)
        devices = self._by_account.setdefault(conn.account_id, OrderedDict())
        devices[conn.device_id] = conn
        devices.move_to_end(conn.device_id)
        self._dirty[conn.device_id] = conn
        return old

    def unregister(self, conn: Connection) -> bool:
        """Forget `conn` if it is still the device's current connection."""
        if self._by_device.get(conn.device_id) is not conn:
            return False
        del self._by_device[conn.device_id]
        self._gone_at[conn.device_id] = time.time()
        devices = self._by_account.get(conn.account_id)
        if devices is not None:
            devices.pop(conn.device_id, None)
            if not devices:
                del self._by_account[conn.account_id]
        self._dirty[conn.device_id] = conn
        return True

    def get(self, device_id: uuid.UUID) -> Connection | None:
        return self._by_device.get(device_id)

    def gone_at(self, device_id: uuid.UUID) -> float | None:
        """When this process last saw the device's socket end (None: never)."""
        return self._gone_at.get(device_id)

    def unflushed(self, device_id: uuid.UUID) -> Connection | None:
        """A connection whose last-seen has not reached PostgreSQL yet."""
        return self._dirty.get(device_id)

    def is_current(self, conn: Connection) -> bool:
        return self._by_device.get(conn.device_id) is conn

    def online_count(self) -> int:
        return len(self._by_device)

    def account_connections(self, account_id: uuid.UUID) -> list[Connection]:
        return list(self._by_account.get(account_id, {}).values())

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
        devices = self._by_account.get(conn.account_id)
        if devices is not None and conn.device_id in devices:
            devices.move_to_end(conn.device_id)
        self._dirty[conn.device_id] = conn

    def pick(self, account_id: uuid.UUID, now: float) -> tuple[Connection, bool] | None:
        """The freshest connected device with room (True), else the one whose
        room comes first (False: the job waits as `queued`), else None."""
        devices = self._by_account.get(account_id)
        if not devices:
            return None
        soonest: Connection | None = None
        soonest_at = 0.0
        for conn in reversed(devices.values()):
            if conn.room(now) > 0:
                return conn, True
            at = conn.next_room_at(now)
            if soonest is None or at < soonest_at:
                soonest, soonest_at = conn, at
        assert soonest is not None
        return soonest, False

    def next_room_at(self, account_id: uuid.UUID, now: float) -> float | None:
        devices = self._by_account.get(account_id)
        if not devices:
            return None
        return min(c.next_room_at(now) for c in devices.values())

    # --- last-seen batches --------------------------------------------------

    def take_dirty(self) -> tuple[list[uuid.UUID], list[dt.datetime], list[str | None],
                                  list[str | None]]:
        """What changed since the last flush, as columns for one UPDATE."""
        dirty, self._dirty = self._dirty, {}
        ids, seen, health, versions = [], [], [], []
        for device_id, conn in dirty.items():
            ids.append(device_id)
            seen.append(dt.datetime.fromtimestamp(conn.last_seen_at, dt.timezone.utc))
            health.append(_health_encoder.encode(conn.health).decode() if conn.health else None)
            versions.append(conn.app_version)
        return ids, seen, health, versions
