"""Who calls the mobile API (contract section 8): a registered phone by its
device token, or, to register one, an account by an API key with
`devices:register`, its email and password, or a one-time code.

The app reacts to 401 only (a 401 on `PATCH /device` makes it register
again), so every failed credential is a 401 here. One refusal is not: an
address whose credentials keep failing (and an email whose passwords do) is
answered 429 with `Retry-After` before anything is checked (contract
section 12). A 401 there would tell a phone with a good token, behind the
same address as an attacker, that its registration is gone; a 429 is an
error the app retries later, registration kept."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import TYPE_CHECKING

from starlette.requests import Request

from broker import keys, store
from broker.errors import BrokerError, Unauthorized
from broker.http import auth
from broker.http.auth import authenticate
from broker.services import pairing

if TYPE_CHECKING:
    from broker.runtime import Broker

REGISTER_SCOPE = "devices:register"
_MAX_CREDENTIAL = 1024  # header values past this are no credential of ours


def _authorization(request: Request) -> tuple[str, str]:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    value = value.strip()
    if not value or len(value) > _MAX_CREDENTIAL:
        raise Unauthorized("Missing or invalid credentials")
    return scheme.lower(), value


async def device_of(request: Request) -> store.DeviceRow:
    """The active SMS Gateway phone whose token is the Bearer. Every request
    of it moves its last-seen (and so the freshest-device pick), not the
    keepalives the broker writes (CONTRACT section 8)."""
    broker: Broker = request.app.state.broker
    scheme, token = _authorization(request)
    address, now = auth.address_of(request), time.monotonic()
    taken = auth.check_throttle(broker, address, now)
    prefix = keys.parse_prefix(keys.TOKEN_KIND, token) if scheme == "bearer" else None
    device = await broker.devices_by_token.get(prefix) if prefix is not None else None
    if (device is None or not keys.matches(broker.secret, token, device.token_hash)
            or not device.active or device.transport != store.SMSGATE):
        auth.failed(broker, address, taken)
        raise Unauthorized("Invalid device token")
    auth.passed(broker, address, taken)
    conn = broker.presence.get(device.id)
    if conn is not None:
        broker.presence.touch(conn)
    else:
        broker.presence.seen_away(device.id)
    return device


async def account_by_password(request: Request) -> store.Account:
    """`Basic base64(email:password)`: the account, its password checked
    off the event loop."""
    broker: Broker = request.app.state.broker
    scheme, value = _authorization(request)
    address, now = auth.address_of(request), time.monotonic()
    taken = auth.check_throttle(broker, address, now)
    try:
        if scheme != "basic":
            raise Unauthorized("Invalid email or password")
        try:
            email, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("Invalid email or password") from None
    except Unauthorized:
        auth.failed(broker, address, taken)
        raise
    auth.passed(broker, address, taken)  # the password itself is tried by login
    return await auth.login(broker, address, email, password)


async def account_to_register_into(request: Request) -> store.Account:
    """The account a registering phone joins: `Bearer` an API key with
    `devices:register` (the app's "Private Token"), `Basic email:password`
    ("Sign In"), or `Code <one-time code>` ("By code")."""
    broker: Broker = request.app.state.broker
    scheme, value = _authorization(request)
    if scheme == "basic":
        return await account_by_password(request)
    account_id: uuid.UUID | None
    if scheme == "bearer":
        try:  # authenticate counts its own failures
            account_id = (await authenticate(request, REGISTER_SCOPE)).account_id
        except auth.Throttled:
            raise
        except BrokerError as err:  # a missing scope or a rate limit: the app knows 401 only
            raise Unauthorized(err.message) from None
    else:
        address, now = auth.address_of(request), time.monotonic()
        taken = auth.check_throttle(broker, address, now)
        account_id = (await pairing.claim(broker.pool, broker.secret, value)
                      if scheme == "code" else None)
        if account_id is None:
            auth.failed(broker, address, taken)
        else:
            auth.passed(broker, address, taken)
    account = await store.account_by_id(broker.pool, account_id) if account_id else None
    if account is None:
        raise Unauthorized("Invalid credentials")
    return account
