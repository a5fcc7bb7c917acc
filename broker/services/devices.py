"""Registering a phone: one implementation for `smsdora devices create` and
`POST /devices` (contract sections 4 and 6)."""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

from broker import keys, store
from broker.errors import BadRequest, Forbidden


class Registered(NamedTuple):
    device: store.DeviceRow
    token: str  # shown once, to whoever registered the phone


class DeviceLimit(Forbidden):
    def __init__(self) -> None:
        super().__init__("Device limit reached")


async def register(db: store.Conn, server_secret: bytes, account_id: uuid.UUID, name: str,
                   send_rate: int, transport: str = store.WEBSOCKET, push_token: str | None = None,
                   sim_cards: list[Any] | None = None) -> Registered:
    """A new device of the account, within its plan's device limit, and its
    token (stored only as an HMAC)."""
    if "\x00" in name:  # PostgreSQL text cannot hold it
        raise BadRequest("name must not contain NUL characters")
    token, prefix = keys.make_secret(keys.TOKEN_KIND)
    try:
        row = await store.insert_device(db, account_id, name, prefix,
                                        keys.digest(server_secret, token), send_rate, transport,
                                        push_token, sim_cards)
    except store.DeviceLimitReached:
        raise DeviceLimit() from None
    return Registered(row, token)
