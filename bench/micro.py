"""In-process micro benchmarks: the API-key check and the device pick.

Key check: what `authenticate` does for a key besides its database lookup:
take the secret from the header, parse its prefix, HMAC it with the server
secret and compare in constant time (keys.digest + hmac.compare_digest),
check the scope.

Device pick: a `broker.presence.Presence` holding n connections of one
account (sockets are dummies: a pick writes nothing), timed on
`Presence.pick`, in two states:
- `fresh`: every phone has room (send_rate 0, no window): the common case;
- `stale`: every phone but the least recently seen is at its send rate,
  the worst case for a pick that walks from the freshest phone back.
Timing both at 1k and 10k phones shows how a pick grows with the account.
"""

from __future__ import annotations

import hmac
import time
import timeit
import uuid
from typing import Any

from broker import keys
from broker.presence import Connection, Presence


def _best_us(fn: Any, number: int, repeat: int = 3) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def key_check_us(number: int) -> float:
    secret = b"bench-server-secret-0123456789abcdef"
    full, _ = keys.make_secret(keys.KEY_KIND)
    stored = keys.digest(secret, full)
    headers = {"x-api-key": full, "content-type": "application/json"}

    def check() -> None:
        raw = keys.bearer(headers, api=True)
        assert raw is not None and keys.parse_prefix(keys.KEY_KIND, raw) is not None
        assert hmac.compare_digest(keys.digest(secret, raw), stored)
        assert keys.has_scope(["messages:send"], "messages:send")

    return _best_us(check, number)


class _Socket:
    async def send_frame(self, data: bytes) -> bool:
        return True

    async def close(self, code: int, reason: str = "") -> None:
        return None


def presence_with(n: int, stale: bool) -> tuple[Presence, uuid.UUID]:
    presence = Presence()
    account = uuid.uuid4()
    now_wall, now_mono = time.time(), time.monotonic()
    socket = _Socket()
    for i in range(n):
        device = uuid.uuid4()
        # stale: rate 1 a minute, already used, except for the first (stalest) phone.
        pacer = presence.pacer(device, 1 if stale else 0)
        if stale and i > 0:
            pacer.take(now_mono)
        presence.register(Connection(device, account, f"phone-{i}", socket, pacer, now_wall))
    return presence, account


def pick_us(n: int, stale: bool, number: int) -> float:
    presence, account = presence_with(n, stale)
    now = time.monotonic()

    def pick() -> None:
        picked = presence.pick(account, now)
        assert picked is not None and picked[1]

    return _best_us(pick, number)


def run(phones: int, quick: bool) -> dict[str, Any]:
    n = 2_000 if quick else 50_000
    small = max(1, phones // 10)
    return {
        "key_check_us": key_check_us(n),
        "pick_phones": phones,
        "pick_fresh_us": pick_us(phones, False, n),
        "pick_stale_us": pick_us(phones, True, 10 if quick else 50),
        "pick_small_phones": small,
        "pick_small_fresh_us": pick_us(small, False, n),
        "pick_small_stale_us": pick_us(small, True, 10 if quick else 50),
    }


__all__ = ["run"]
