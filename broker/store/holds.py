"""Jobs held by SMS Gateway phones (CONTRACT section 8): the app sends a job
as soon as it has listed it, so listing is holding, and a listed job leaves
its phone only after the phone confirmed a cancel (`handback`)."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from broker.store.pool import Db

MAX_LISTED = 100  # a page of `GET /message` (the reference server's batch)


class Listed(msgspec.Struct, frozen=True):
    id: uuid.UUID
    recipient: str
    body: str
    expires_at: dt.datetime | None
    created_at: dt.datetime
    handback: str | None  # 'requested': listed as Cancelling


def _listing(order: str) -> str:
    # The page is the oldest (fifo) or newest (lifo) of the phone's open jobs;
    # the 101st row only says there are more. Locked, so that a sweeper
    # moving a job that was never listed and this listing cannot both win;
    # locked in id order, as the reports' group commit locks (no deadlock).
    return f"""
        WITH cand AS (
            SELECT id FROM messages
            WHERE device_id = $1 AND status = 'dispatching'
              AND handback IS DISTINCT FROM 'released'
            ORDER BY seq {order} LIMIT $2 + 1
        ), c AS (
            SELECT id, seq FROM messages
            WHERE id IN (SELECT id FROM cand) AND device_id = $1 AND status = 'dispatching'
              AND handback IS DISTINCT FROM 'released'
            ORDER BY id FOR UPDATE
        ), page AS (
            SELECT id, seq FROM c ORDER BY seq {order} LIMIT $2
        ), u AS (
            UPDATE messages m SET listed_at = COALESCE(m.listed_at, now())
            FROM page WHERE m.id = page.id
            RETURNING m.id, m.recipient, m.body, m.expires_at, m.created_at, m.handback, m.seq
        )
        SELECT id, recipient, body, expires_at, created_at, handback,
               (SELECT count(*) FROM c) > $2 AS more
        FROM u ORDER BY seq {order}
    """


_LIST = {"fifo": _listing("ASC"), "lifo": _listing("DESC")}


async def list_held(db: Db, device_id: uuid.UUID, order: str,
                    limit: int = MAX_LISTED) -> tuple[list[Listed], bool]:
    """The phone's jobs it has not reported on yet (`GET /message`), marked
    as listed; and whether more wait beyond this page."""
    rows = await db.fetch(_LIST[order], device_id, limit)
    more = bool(rows[0]["more"]) if rows else False
    return [Listed(r["id"], r["recipient"], r["body"], r["expires_at"], r["created_at"],
                   r["handback"]) for r in rows], more


class Released(msgspec.Struct, frozen=True):
    id: uuid.UUID
    account_id: uuid.UUID
    recipient: str
    body: str


async def release(db: Db, device_id: uuid.UUID, message_id: uuid.UUID) -> Released | None:
    """The phone confirmed it cancelled a job it had not sent (`PATCH
    Cancelled`): free for another phone, never for this one again."""
    # No longer listed: its expiry and the no-report clock are those of a job
    # no phone holds.
    r = await db.fetchrow(
        "UPDATE messages SET handback = 'released', listed_at = NULL, updated_at = now()"
        " WHERE id = $2 AND device_id = $1 AND status = 'dispatching'"
        " RETURNING id, account_id, recipient, body", device_id, message_id)
    return Released(**dict(r)) if r is not None else None


async def request_handback(db: Db, message_id: uuid.UUID, device_id: uuid.UUID) -> bool:
    """Ask the phone that listed a job to give it back (it has been away past
    the reassign delay and another phone could send it). Conditional: a
    report stored meanwhile wins, and the job stays."""
    status = await db.execute(
        "UPDATE messages SET handback = 'requested' WHERE id = $1 AND device_id = $2"
        " AND status = 'dispatching' AND listed_at IS NOT NULL AND handback IS NULL",
        message_id, device_id)
    return bool(status == "UPDATE 1")


async def handbacks_requested(db: Db, device_id: uuid.UUID) -> list[uuid.UUID]:
    """The phone's jobs the broker asked back: `MessageCancelled` again when
    its first stream opens."""
    return [r["id"] for r in await db.fetch(
        "SELECT id FROM messages WHERE device_id = $1 AND status = 'dispatching'"
        " AND handback = 'requested'", device_id)]
