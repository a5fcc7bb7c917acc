"""API keys and device tokens: make, hash, check, scopes, the key cache.

Keys are high-entropy, so the stored hash is HMAC-SHA256 with a server
secret and a check costs microseconds (contract section 3); argon2id is only
for human passwords. Lookups go by the public prefix; the comparison is
constant-time. Prefixes that matched nothing are remembered a while
(`UnknownPrefixes`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Final, Generic, TypeVar

from broker.errors import BadRequest
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


class AmbiguousCredentials(BadRequest):
    """Two different credentials in one request (RFC 6750 section 2: "Clients
    MUST NOT use more than one method to transmit the token in each request",
    and section 3.1: such a request is `invalid_request`, a 400)."""

    def __init__(self) -> None:
        super().__init__("Ambiguous credentials: send one key, in one header")


def bearer(headers: Mapping[str, str], *, api: bool) -> str | None:
    """The one secret from `x-api-key` (API only) or `Authorization: Bearer`;
    None without one. Every such header counts, repeated ones too: two
    different secrets are `AmbiguousCredentials`, so no proxy in front can
    judge the request by one and the broker by the other; the same secret
    twice is one credential. Empty values and other schemes (`Basic` for a
    proxy in front) are no credential of ours."""
    found = [v.strip() for v in _every(headers, "x-api-key") if v.strip()] if api else []
    for auth in _every(headers, "authorization"):
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            found.append(value.strip())
    if not found:
        return None
    first = found[0]
    if any(other != first for other in found[1:]):
        raise AmbiguousCredentials()
    return first


def _every(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of header `name` (Starlette's Headers keep repeated ones)."""
    getlist = getattr(headers, "getlist", None)
    if getlist is not None:
        return list(getlist(name))
    value = headers.get(name)
    return [str(value)] if value is not None else []


class UnknownPrefixes:
    """API-key prefixes that matched no key, remembered for `ttl_s`, so that a
    key that does not exist, sent again and again (a client of a deleted
    key, a scanner repeating itself), costs a set lookup and not a query. At
    most `max_size` (the oldest forgotten first). Trusted, like the key
    cache, only while the LISTEN connection is up: a key created, or rotated
    onto a prefix, is announced (`smsdora_key_added`) and dropped here at
    once; `generation` keeps a miss read before an announcement from being
    remembered after it. Fresh random prefixes are never here: those are
    for the failure throttle (broker/http/auth.py)."""

    def __init__(self, ttl_s: float = 30.0, max_size: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_size = max_size
        self.generation = 0
        self._since: dict[str, float] = {}

    def has(self, prefix: str, now: float) -> bool:
        since = self._since.get(prefix)
        if since is None:
            return False
        if now - since > self.ttl_s:
            del self._since[prefix]
            return False
        return True

    def add(self, prefix: str, now: float, generation: int) -> None:
        if generation != self.generation or self.ttl_s <= 0:
            return  # a key was announced while the miss was being read
        if prefix not in self._since and len(self._since) >= self.max_size:
            del self._since[next(iter(self._since))]
        self._since[prefix] = now

    def drop(self, prefix: str) -> None:
        self.generation += 1
        self._since.pop(prefix, None)

    def clear(self) -> None:
        self.generation += 1
        self._since.clear()

    def __len__(self) -> int:
        return len(self._since)


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
