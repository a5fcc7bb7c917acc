"""The inbox: SMS the account's phones received (CONTRACT section 9), from
either transport, stored once per (device, the phone's own id)."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from broker.store.pool import Db, rows_of


class Received(msgspec.Struct, frozen=True):
    """What storing an inbound SMS did: `inserted` False when the phone had
    reported it before (a reconnect, a retry): nothing new, no event."""

    account_id: uuid.UUID
    inserted: bool


class InboxRow(msgspec.Struct, frozen=True):
    seq: int
    id: uuid.UUID
    sender: str
    body: str
    received_at: dt.datetime
    created_at: dt.datetime
    device_id: uuid.UUID
    device_name: str | None  # None once the device row is gone


# One statement, so one transaction: the device re-checked (active, of the
# transport that reports it) as the row is written, the row itself, and only
# when it is new the `message.received` event for every subscribed endpoint
# (migration 0006's smsdora_emit), whose `data` is the GET /inbox item. A
# duplicate (the same device and phone id) inserts nothing and emits
# nothing; two at once are serialised by the unique index, the second
# waiting for the first's commit and then doing nothing.
_INSERT_INBOUND = """
WITH d AS (
    SELECT id, account_id, name FROM devices WHERE id = $1 AND active AND transport = $8
), ins AS (
    INSERT INTO inbox (id, account_id, device_id, phone_id, sender, body, sim, received_at)
    SELECT $2, d.account_id, d.id, $3, $4, $5, $6, $7 FROM d
    ON CONFLICT (device_id, phone_id) DO NOTHING
    RETURNING id, account_id, sender, body, received_at, created_at
), ev AS (
    SELECT smsdora_emit(ins.account_id, 'message.received', NULL, jsonb_build_object(
               'id', ins.id, 'sender', ins.sender, 'message', ins.body,
               'receivedAt', smsdora_iso(ins.received_at),
               'createdAt', smsdora_iso(ins.created_at),
               'device', jsonb_build_object('id', d.id, 'deviceName', d.name)),
           ins.created_at) AS n
      FROM ins, d
)
SELECT d.account_id, EXISTS (SELECT 1 FROM ins) AS inserted,
       (SELECT sum(n) FROM ev) AS events
  FROM d
"""


async def insert_inbound(db: Db, device_id: uuid.UUID, transport: str, phone_id: str,
                         sender: str, body: str, sim: int | None,
                         received_at: dt.datetime) -> Received | None:
    """Store an SMS `device_id` received; None if that device is not an
    active phone of `transport` (deactivated meanwhile). After the commit the
    caller pokes the webhook sender (`broker.wake.poke`)."""
    r = await db.fetchrow(_INSERT_INBOUND, device_id, uuid.uuid4(), phone_id, sender, body, sim,
                          received_at, transport)
    if r is None:
        return None
    return Received(account_id=r["account_id"], inserted=r["inserted"])


async def list_inbox(db: Db, account_id: uuid.UUID, device_id: uuid.UUID | None,
                     sender: str | None, limit: int, before_seq: int | None) -> list[InboxRow]:
    """The account's inbound SMS, newest first, keyset-paginated by seq."""
    return rows_of(InboxRow, await db.fetch(
        "SELECT i.seq, i.id, i.sender, i.body, i.received_at, i.created_at, i.device_id,"
        " d.name AS device_name"
        " FROM inbox i LEFT JOIN devices d ON d.id = i.device_id"
        " WHERE i.account_id = $1 AND ($2::uuid IS NULL OR i.device_id = $2)"
        " AND ($3::text IS NULL OR i.sender = $3) AND ($4::bigint IS NULL OR i.seq < $4)"
        " ORDER BY i.seq DESC LIMIT $5",
        account_id, device_id, sender, before_seq, limit,
    ))


async def inbox_after(db: Db, account_id: uuid.UUID, device_id: uuid.UUID | None,
                      sender: str | None, after_seq: int,
                      limit: int) -> tuple[list[InboxRow], dt.datetime]:
    """The account's inbound SMS past keyset position `after_seq`, oldest
    first (what a live inbox has not shown yet), and the database's clock."""
    records = await db.fetch(
        "SELECT now() AS now, c.* FROM (SELECT 1) one LEFT JOIN LATERAL ("
        " SELECT i.seq, i.id, i.sender, i.body, i.received_at, i.created_at, i.device_id,"
        " d.name AS device_name"
        " FROM inbox i LEFT JOIN devices d ON d.id = i.device_id"
        " WHERE i.account_id = $1 AND ($2::uuid IS NULL OR i.device_id = $2)"
        " AND ($3::text IS NULL OR i.sender = $3) AND i.seq > $4"
        " ORDER BY i.seq LIMIT $5) c ON true",
        account_id, device_id, sender, after_seq, limit,
    )
    now: dt.datetime = records[0]["now"]
    return [InboxRow(**{k: r[k] for k in InboxRow.__struct_fields__})
            for r in records if r["id"] is not None], now
