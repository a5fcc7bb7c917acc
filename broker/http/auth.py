"""The caller's API key (contract section 3, Authentication): found, checked,
in scope and within its rate and its account's budget, or a named error.

An exposed broker meets strangers (contract section 12): a client address
whose credentials keep failing is refused with 429 before any lookup
(`Throttled`, per address, for every kind of credential: API keys here,
device tokens and passwords in the transports); a key prefix that matched no
key is remembered a while, so the same unknown key again costs no query;
and one request carries one credential (`keys.AmbiguousCredentials`, 400).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from typing import TYPE_CHECKING

from prometheus_client import Counter
from starlette.requests import HTTPConnection, Request

from broker import keys, store
from broker.errors import BrokerError, Forbidden, RateLimited, Unauthorized
from broker.http.client import client_address
from broker.limits import Buckets
from broker.services import passwords

if TYPE_CHECKING:
    from broker.runtime import Broker

# Beside broker/ops/metrics.py's: what failed credentials cost the database.
KEY_LOOKUPS = Counter("smsdora_key_lookups_total",
                      "API-key checks that were not answered from the key cache", ["result"])
_FOUND = KEY_LOOKUPS.labels("found")  # read from PostgreSQL
_NONE = KEY_LOOKUPS.labels("none")  # read from PostgreSQL: no such prefix
_REMEMBERED = KEY_LOOKUPS.labels("remembered")  # no such prefix, known without a query
THROTTLED = Counter("smsdora_credentials_throttled_total",
                    "Requests refused with 429 after repeated failed credentials", ["per"])


class Throttled(BrokerError):
    """Too many failed credentials from this client address (or for this
    email): refused before the credential is even looked at."""

    status = 429

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("Too many failed attempts",
                         headers={"Retry-After": str(retry_after_s)})


class AccountOverBudget(BrokerError):
    """The account's request budget, all its keys together (beside a key's
    own per-minute limit, contract section 3)."""

    status = 429

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("Too many requests for this account",
                         headers={"Retry-After": str(retry_after_s)})


def address_of(conn: HTTPConnection) -> str:
    """The client address the failure throttle counts by: the peer, or
    behind a trusted proxy the address it reports (broker/http/client.py).
    IPv6 by its /64, which one host is usually given whole."""
    broker: Broker = conn.app.state.broker
    address = client_address(conn.scope, broker.settings.trusted_proxies)
    return _per_host(address) if ":" in address else address


def _per_host(address: str) -> str:
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


def check_throttle(broker: Broker, address: str, now: float) -> bool:
    """429 for an address over its budget of failed credentials. An address
    that failed before has a unit of its budget taken now, before the
    lookup, so that a hundred of its guesses at once cannot all slip in
    while the budget shows one left; `failed` keeps it, `passed` gives it
    back. Returns whether a unit was taken (an address that never failed
    costs nothing)."""
    return _take(broker.auth_failures, address, now, "address")


def refuse_if_throttled(broker: Broker, address: str, now: float) -> None:
    """The same 429, taking nothing (for a request with no credential)."""
    retry = broker.auth_failures.retry_after(address, now)
    if retry is not None:
        THROTTLED.labels("address").inc()
        raise Throttled(retry)


def failed(broker: Broker, address: str, taken: bool) -> None:
    """A failed credential from `address` (its unit already taken, or now)."""
    if not taken:
        broker.auth_failures.charge(address, time.monotonic())


def passed(broker: Broker, address: str, taken: bool) -> None:
    """A credential from `address` was right: the unit taken for it is back."""
    if taken:
        broker.auth_failures.refund(address)


def _take(buckets: Buckets, name: str, now: float, per: str) -> bool:
    if name not in buckets:
        return False
    retry = buckets.hit(name, now)
    if retry is not None:
        THROTTLED.labels(per).inc()
        raise Throttled(retry)
    return True


def check_login(broker: Broker, email: str, now: float) -> bool:
    """`check_throttle` for the passwords tried at one email."""
    return _take(broker.login_failures, email, now, "email")


async def authenticate(request: Request, scope: str, *, cached: bool = False) -> store.KeyRow:
    """The caller's key. `cached`: from the key cache when it can be trusted
    (the send path, whose INSERT checks the key again in the same statement);
    every other endpoint reads PostgreSQL."""
    broker: Broker = request.app.state.broker
    now = time.monotonic()
    address = address_of(request)
    raw = keys.bearer(request.headers, api=True)
    if raw is None:
        refuse_if_throttled(broker, address, now)
        raise Unauthorized("Invalid API key")  # no credential, no guess: not counted
    taken = check_throttle(broker, address, now)
    try:
        key = await _known_key(broker, raw, cached, now)
    except Unauthorized:
        failed(broker, address, taken)
        raise
    passed(broker, address, taken)
    if not keys.has_scope(key.scopes, scope):
        raise Forbidden(f"Missing {scope} scope")
    if key.rate_limit is not None:
        retry = broker.rate_window.hit(str(key.id), key.rate_limit, now)
        if retry is not None:
            raise RateLimited(retry)
    retry = broker.account_budget.hit(key.account_id, now)
    if retry is not None:
        raise AccountOverBudget(retry)
    broker.keys_used.note(key.id, now)  # written by the flush loop, not here
    return key


async def _known_key(broker: Broker, raw: str, cached: bool, now: float) -> store.KeyRow:
    """The key row of a valid, current key `raw`, or Unauthorized."""
    prefix = keys.parse_prefix(keys.KEY_KIND, raw)
    if prefix is None:
        raise Unauthorized("Invalid API key")
    trusted = broker.keys_cached()
    key = broker.key_cache.get(prefix, now) if cached and trusted else None
    if key is None:
        if trusted and broker.unknown_keys.has(prefix, now):
            _REMEMBERED.inc()
            raise Unauthorized("Invalid API key")
        generation = broker.key_cache.generation
        unknown_generation = broker.unknown_keys.generation
        key = await store.key_by_prefix(broker.pool, prefix)
        if key is None:
            _NONE.inc()
            if trusted:
                broker.unknown_keys.add(prefix, now, unknown_generation)
            raise Unauthorized("Invalid API key")
        _FOUND.inc()
        if cached and trusted:
            broker.key_cache.put(prefix, str(key.id), key, now, generation)
    if not keys.matches(broker.secret, raw, key.secret_hash):
        raise Unauthorized("Invalid API key")
    if key.revoked:
        raise Unauthorized("API key revoked")
    if key.expires_at is not None and key.expires_at <= dt.datetime.now(dt.UTC):
        raise Unauthorized("API key expired")
    return key


async def login(broker: Broker, address: str, email: str, password: str) -> store.Account:
    """The account whose email and password these are, or 401 `Invalid email
    or password`; 429 past the failed-credential budget of the address or of
    the email (every address together: each guess costs an argon2 verify,
    about 90 ms of CPU, in a worker thread). One implementation for every
    door that takes a password (the SMS Gateway app's Basic sign-in, the
    dashboard's login). An unknown email costs the same verify as a wrong
    password (services/passwords.py)."""
    now = time.monotonic()
    taken = check_throttle(broker, address, now)
    email = email.strip().lower()
    try:
        email_taken = check_login(broker, email, now)
    except Throttled:
        passed(broker, address, taken)  # nothing was tried
        raise
    found = await store.password_of(broker.pool, email)
    if not await passwords.verify(found[1] if found is not None else None, password):
        failed(broker, address, taken)
        if not email_taken:
            broker.login_failures.charge(email, time.monotonic())
        raise Unauthorized("Invalid email or password")
    passed(broker, address, taken)
    if email_taken:
        broker.login_failures.refund(email)
    assert found is not None  # verified, so found
    return found[0]

