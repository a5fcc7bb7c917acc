"""API keys and device tokens: make, hash, check, scopes, the key cache.

Keys are high-entropy, so the stored hash is HMAC-SHA256 with a server
secret and a check costs microseconds (contract section 3); argon2id is only
for human passwords. Lookups go by the public prefix; the comparison is
constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Final, Generic, TypeVar

from protocol.api import SCOPES

KEY_KIND: Final = "smsgw"
TOKEN_KIND: Final = "smsdev"
ALL_SCOPES: Final = frozenset(SCOPES)
DEFAULT_SCOPES: Final = ("messages:send",)
T = TypeVar("T")


def make_secret(kind: str) -> tuple[str, str]:
    """A new `<kind>_<8 hex>_<secret>`; returns (full, prefix). The secret part
    is 43 url-safe characters (256 random bits)."""
    prefix = secrets.token_hex(4)
    return f"{kind}_{prefix}_{secrets.token_urlsafe(32)}", prefix


def parse_prefix(kind: str, full: str) -> str | None:
    """The lookup prefix of a well-formed secret of this kind, else None."""
    parts = full.split("_", 2)
    if len(parts) != 3 or parts[0] != kind:
        return None
    prefix, rest = parts[1], parts[2]
    if len(prefix) != 8 or len(rest) < 32 or any(c not in "0123456789abcdef" for c in prefix):
        return None
    return prefix


def digest(server_secret: bytes, full: str) -> bytes:
    return hmac.new(server_secret, full.encode(), hashlib.sha256).digest()


def signing_key(server_secret: bytes, device_id: str) -> str:
    """The key an SMS Gateway phone signs its webhooks to the broker with
    (`webhooks.signing_key` in its settings): derived, so nothing secret is
    stored, and the same on every node."""
    mac = hmac.new(server_secret, b"smsgate-signing-key:" + device_id.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def matches(server_secret: bytes, full: str, stored: bytes) -> bool:
    return hmac.compare_digest(digest(server_secret, full), stored)


def has_scope(scopes: list[str] | tuple[str, ...], needed: str) -> bool:
    # "keys:write implies the others for its own account"
    return needed in scopes or "keys:write" in scopes


def check_scopes(scopes: list[str]) -> list[str]:
    bad = [s for s in scopes if s not in ALL_SCOPES]
    if bad:
        raise ValueError(f"unknown scope(s): {', '.join(bad)}; known: {', '.join(SCOPES)}")
    return sorted(set(scopes))


def bearer(headers: Mapping[str, str], *, api: bool) -> str | None:
    """The secret from `x-api-key` (API only) or `Authorization: Bearer`."""
    get = headers.get
    if api:
        value = get("x-api-key")
        if value:
            return str(value).strip()
    auth = get("authorization")
    if auth:
        scheme, _, value = str(auth).partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


class KeyCache(Generic[T]):
    """API keys by prefix, so that a key check is an HMAC and a dict lookup,
    not a database round trip. Trusted only while the LISTEN connection is up
    (a trigger announces every change to a key; the cache is cleared when
    that connection is re-made); entries also age out after `ttl_s` so that
    plan changes reach the quota check.

    `generation` moves with every drop: a row read from the database before
    a change was announced is not cached after it (`put(..., generation)`)."""

    def __init__(self, ttl_s: float = 60.0) -> None:
        self.ttl_s = ttl_s
        self.generation = 0
        self._by_prefix: dict[str, tuple[float, T]] = {}
        self._prefix_of: dict[str, str] = {}  # key id -> prefix

    def get(self, prefix: str, now: float) -> T | None:
        hit = self._by_prefix.get(prefix)
        if hit is None or now - hit[0] > self.ttl_s:
            return None
        return hit[1]

    def put(self, prefix: str, key_id: str, row: T, now: float, generation: int) -> None:
        if generation != self.generation:
            return  # a change was announced while the row was being read
        self._by_prefix[prefix] = (now, row)
        self._prefix_of[key_id] = prefix

    def drop(self, key_id: str) -> None:
        self.generation += 1
        prefix = self._prefix_of.pop(key_id, None)
        if prefix is not None:
            self._by_prefix.pop(prefix, None)

    def clear(self) -> None:
        self.generation += 1
        self._by_prefix.clear()
        self._prefix_of.clear()
