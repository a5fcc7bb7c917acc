"""Phones: register, read, list, change, deactivate, new token; one
implementation for `smsdora devices` and `/devices` alike (contract
sections 4, 6 and 10)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, NamedTuple

import msgspec

from broker import keys, store
from broker.clock import iso
from broker.delivery.presence import Presence
from broker.errors import BadRequest, Conflict, Forbidden, NotFound
from protocol.api import DeviceHealth, DeviceInfo


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


class DeviceNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Device not found")


async def get(db: store.Db, device_id: uuid.UUID,
              account_id: uuid.UUID | None) -> store.DeviceRow:
    row = await store.get_device(db, device_id, account_id)
    if row is None:
        raise DeviceNotFound()
    return row


class Page(NamedTuple):
    devices: list[store.DeviceRow]
    more: bool  # another page follows the last of these


async def page(db: store.Db, account_id: uuid.UUID, limit: int | None,
               after: tuple[dt.datetime, uuid.UUID] | None = None) -> Page:
    """The account's devices, oldest first, `limit` of them (None: all)
    past the keyset position `after`."""
    rows = await store.list_devices(db, account_id, None if limit is None else limit + 1, after)
    if limit is not None and len(rows) > limit:
        return Page(rows[:limit], True)
    return Page(rows, False)


async def update(db: store.Conn, device_id: uuid.UUID, account_id: uuid.UUID, *,
                 name: str | None = None, send_rate: int | None = None,
                 active: bool | None = None) -> store.DeviceRow:
    """Rename, re-pace, deactivate or reactivate (within the plan's device
    limit). Deactivating refuses the token from now on and makes every
    broker drop the phone's connection; the jobs an SMS Gateway phone listed
    fail (`device deactivated`), the others go to another phone
    (`store.deactivate_device`, as `smsdora devices deactivate`)."""
    if name is not None and "\x00" in name:
        raise BadRequest("name must not contain NUL characters")
    try:
        row = await store.update_device(db, device_id, account_id, name, send_rate, active)
    except store.DeviceLimitReached:
        raise DeviceLimit() from None
    if row is None:
        raise DeviceNotFound()
    return row


async def deactivate(db: store.Db, device_id: uuid.UUID,
                     account_id: uuid.UUID | None = None) -> None:
    """`update(active=False)` for the operator's CLI, which names a device
    by its id alone."""
    if not await store.deactivate_device(db, device_id, account_id):
        raise DeviceNotFound()


class NotRotatable(Conflict):
    def __init__(self) -> None:
        # The app gets its token only from its registration's reply: a new
        # one could never reach it, and the old one refused makes it register
        # again as another device.
        super().__init__("Only a WebSocket phone's token can be rotated: an SMS Gateway phone"
                         " registers again instead")


async def rotate_token(db: store.Db, server_secret: bytes, device_id: uuid.UUID,
                       account_id: uuid.UUID) -> Registered:
    """A new token for a WebSocket phone, shown once; the old one is refused
    from now on and the connection made with it is dropped."""
    token, prefix = keys.make_secret(keys.TOKEN_KIND)
    row = await store.set_token(db, device_id, account_id, prefix,
                                keys.digest(server_secret, token))
    if row is None:
        await get(db, device_id, account_id)  # DeviceNotFound, or:
        raise NotRotatable()
    return Registered(row, token)


class DeviceInUse(Conflict):
    def __init__(self) -> None:
        super().__init__("A device that has messages or received SMS cannot be deleted:"
                         " deactivate it instead")


async def delete(db: store.Conn, device_id: uuid.UUID, account_id: uuid.UUID) -> store.DeviceRow:
    """Delete a phone that never handled a message nor received one (one
    registered by mistake, say); its token is refused at once and its
    connection dropped. One that did stays, so that its messages keep
    naming it: deactivating it (`update(active=False)`) is what retires it.
    Returns the device as it was."""
    row = await get(db, device_id, account_id)
    outcome = await store.delete_device(db, device_id, account_id)
    if outcome is store.Deleted.NOT_FOUND:
        raise DeviceNotFound()
    if outcome is store.Deleted.IN_USE:
        raise DeviceInUse()
    return row


def info(presence: Presence, d: store.DeviceRow, node: str | None = None) -> DeviceInfo:
    """A device as `/devices` and the dashboard show it: online when this
    broker holds its connection, or when another node (not `node`, this one)
    does by the row it last flushed (cleared when that node's lease is
    reaped, CONTRACT section 13); last seen, health and app version the
    connection's (or, gone so recently that they are not flushed yet, the
    last connection's), else what PostgreSQL has."""
    conn = presence.get(d.id) or presence.unflushed(d.id)
    last_seen = (dt.datetime.fromtimestamp(conn.last_seen_at, dt.UTC)
                 if conn is not None else d.last_seen_at)
    if conn is not None and conn.health is not None:
        health: DeviceHealth | None = DeviceHealth(
            battery=conn.health.battery, charging=conn.health.charging, signal=conn.health.signal)
    else:
        health = msgspec.convert(d.health, DeviceHealth) if d.health else None
    return DeviceInfo(
        id=str(d.id), deviceName=d.name,
        online=presence.get(d.id) is not None or (
            node is not None and d.online_node is not None and d.online_node != node),
        lastSeen=iso(last_seen), active=d.active, sendRate=d.send_rate, health=health,
        appVersion=(conn.app_version if conn is not None else d.app_version),
        transport=d.transport,
    )


def follow(presence: Presence, row: store.DeviceRow) -> None:
    """After `update`: what this broker holds of a connected phone follows
    at once, the name the send answers with and the pace of its next jobs.
    (Its connection, when deactivated, is dropped by the notice every
    broker hears, store.DEVICE_DEACTIVATED.)"""
    conn = presence.get(row.id)
    if conn is not None:
        conn.name = row.name
        presence.pacer(row.id, row.send_rate)
