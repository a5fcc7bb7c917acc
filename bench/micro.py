"""In-process micro benchmarks: the API-key check and the device pick.

Key check: what `authenticate` does for a key besides its database lookup:
take the secret from the header, parse its prefix, HMAC it with the server
secret and compare in constant time (keys.digest + hmac.compare_digest),
check the scope.

Device pick: a `broker.delivery.presence.Presence` holding n connections of one
account (sockets are dummies: a pick writes nothing), timed on
`Presence.pick`, in two states:
- `fresh`: every phone has room (send_rate 0, no window): the common case;
- `filling`: every phone may send once a minute and each pick takes the
  picked phone's send, so every pick meets the phone it filled before (and
  at the end, all of them): the case in which a pick that walks from the
  freshest phone back past the full ones costs O(n). Timed over n picks,
  until every phone is full, from a fresh presence each repeat.
Timing both at 1k and 10k phones shows how a pick grows with the account.
"""

from __future__ import annotations

import hmac
import time
import timeit
import uuid
from typing import Any

from broker import keys
from broker.delivery.presence import Connection, Presence


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


def presence_with(n: int, rate: int) -> tuple[Presence, uuid.UUID]:
    presence = Presence()
    account = uuid.uuid4()
    now_wall = time.time()
    socket = _Socket()
    for i in range(n):
        device = uuid.uuid4()
        presence.register(Connection(device, account, f"phone-{i}", socket,
                                     presence.pacer(device, rate), now_wall))
    return presence, account


def pick_us(n: int, number: int) -> float:
    presence, account = presence_with(n, 0)
    now = time.monotonic()

    def pick() -> None:
        picked = presence.pick(account, now)
        assert picked is not None and picked[1]

    return _best_us(pick, number)


def pick_filling_us(n: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        presence, account = presence_with(n, 1)
        now = time.monotonic()
        started = time.perf_counter()
        for _ in range(n):
            picked = presence.pick(account, now)
            assert picked is not None and picked[1]
            picked[0].pacer.take(now)
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


def run(phones: int, quick: bool) -> dict[str, Any]:
    n = 2_000 if quick else 50_000
    small = max(1, phones // 10)
    return {
        "key_check_us": key_check_us(n),
        "pick_phones": phones,
        "pick_fresh_us": pick_us(phones, n),
        "pick_filling_us": pick_filling_us(phones),
        "pick_small_phones": small,
        "pick_small_fresh_us": pick_us(small, n),
        "pick_small_filling_us": pick_filling_us(small),
    }


__all__ = ["run"]
