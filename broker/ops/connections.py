"""What a listener admits (contract section 12): at most N connections in
all and M per client address, and a log of what it refuses that an
attacker cannot turn into a flood of its own. Used by the HTTP protocol in
broker/ops/server.py, which counts WebSocket connections too (a phone's
socket starts as an HTTP request)."""

from __future__ import annotations

import enum
import ipaddress
import logging
import resource
import time
from collections.abc import Callable, Sequence
from typing import Any

from broker.ops import metrics

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Descriptors kept for what is not a client connection: the pool, the
# listeners, the LISTEN connection, log files, the embedded PostgreSQL's.
RESERVED_DESCRIPTORS = 100


class Refusal(enum.Enum):
    OVER_TOTAL = "over_total"
    OVER_ADDRESS = "over_address"


def address_key(peer: str | None) -> str:
    """What the per-address cap counts: an IPv4 address, or the /64 of an
    IPv6 one (a single host is usually given a whole /64, so counting its
    addresses one by one would cap nothing)."""
    if peer is None:
        return "-"
    if ":" not in peer:
        return peer
    try:
        address = ipaddress.IPv6Address(peer.partition("%")[0])
    except ValueError:
        return peer
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


def descriptor_cap(wanted: int, reserved: int) -> int:
    """`wanted` connections (0: no cap), lowered to what the process's
    descriptor limit can hold: past it accept() fails and nothing, a phone
    or an operator, gets in."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = max(1, soft - reserved)
    return room if wanted == 0 or wanted > room else wanted


class ConnectionGate:
    """The connections one listener holds, in all and per client address
    (`address_key`). Peers in `exempt` (the trusted proxies: everyone
    behind them shares their address) count only against the total."""

    def __init__(self, total: int, per_address: int, exempt: Sequence[Network] = ()) -> None:
        self.total = total  # 0: no cap
        self.per_address = per_address  # 0: no cap
        self.exempt = tuple(exempt)
        self.open = 0
        self._held: dict[str, int] = {}

    def admit(self, peer: str | None) -> str | Refusal:
        """The key to give back to `release`, or why the connection is refused."""
        if self.total and self.open >= self.total:
            return Refusal.OVER_TOTAL
        key = address_key(peer)
        held = self._held.get(key, 0)
        if self.per_address and held >= self.per_address and not self._exempt(peer):
            return Refusal.OVER_ADDRESS
        self.open += 1
        self._held[key] = held + 1
        metrics.CONNECTIONS_OPEN.inc()
        return key

    def release(self, key: str) -> None:
        self.open -= 1
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]
        metrics.CONNECTIONS_OPEN.dec()

    def _exempt(self, peer: str | None) -> bool:
        if peer is None or not self.exempt:
            return False
        try:
            address = ipaddress.ip_address(peer.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.exempt)


class RateLimitedLog:
    """Warnings about clients, at most one per client address and `budget`
    in all per `window_s`: 3,000 refused sockets are one line, and 3,000
    addresses are `budget` lines. The first line after lines were left out
    says how many (`suppressed`)."""

    def __init__(self, logger: logging.Logger, window_s: float = 60.0, budget: int = 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.window_s = window_s
        self.budget = budget
        self.clock = clock
        self._window_at = clock()
        self._seen: set[tuple[str, str]] = set()  # at most `budget` entries
        self._suppressed = 0

    def warning(self, message: str, client: str, **extra: Any) -> None:
        now = self.clock()
        if now - self._window_at >= self.window_s:
            self._window_at = now
            self._seen.clear()
        if (message, client) in self._seen or len(self._seen) >= self.budget:
            self._suppressed += 1
            return
        self._seen.add((message, client))
        self.logger.warning(message, extra={"client": client, **extra,
                                            "suppressed": self._suppressed})
        self._suppressed = 0
