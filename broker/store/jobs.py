"""Jobs as the delivery engine moves them: redelivery, the queue, reports,
the lifecycle's clocks (broker/delivery/sweeper.py)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import NamedTuple

import msgspec

from broker.store.pool import Db, rows_of


class Job(msgspec.Struct, frozen=True):
    id: uuid.UUID
    recipient: str
    body: str
    status: str


class OpenJobs(NamedTuple):
    active: bool  # the device is still active (not deactivated meanwhile)
    jobs: list[Job]  # oldest first


async def open_jobs(db: Db, device_ids: list[uuid.UUID],
                    statuses: list[str]) -> dict[uuid.UUID, OpenJobs]:
    """For each device: whether it is active, and its jobs in the given
    statuses, oldest first (redelivery on connect); many devices in one
    query (a reconnect storm). A device that does not exist is left out."""
    rows = await db.fetch(
        "SELECT d.id AS device_id, d.active, m.id, m.recipient, m.body, m.status"
        " FROM devices d LEFT JOIN messages m"
        "   ON m.device_id = d.id AND m.status = ANY($2::text[])"
        "   AND m.handback IS DISTINCT FROM 'released'"  # given back: not this phone's now
        " WHERE d.id = ANY($1::uuid[]) ORDER BY d.id, m.seq",
        device_ids, statuses,
    )
    out: dict[uuid.UUID, OpenJobs] = {}
    for r in rows:
        found = out.get(r["device_id"])
        if found is None:
            found = out[r["device_id"]] = OpenJobs(r["active"], [])
        if r["id"] is not None:
            found.jobs.append(Job(id=r["id"], recipient=r["recipient"], body=r["body"],
                                  status=r["status"]))
    return out


async def claim_queued(db: Db, account_id: uuid.UUID, device_id: uuid.UUID,
                       limit: int) -> list[Job]:
    """Move up to `limit` of the account's oldest queued messages to
    `dispatching` on this device, with their history rows, in one statement."""
    return rows_of(Job, await db.fetch(
        """
        WITH c AS (
            SELECT id FROM messages WHERE account_id = $1 AND status = 'queued'
            ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED
        ), u AS (
            UPDATE messages m SET status = 'dispatching', device_id = $2, updated_at = now()
            FROM c WHERE m.id = c.id
            RETURNING m.id, m.recipient, m.body, m.status, m.seq
        ), h AS (
            INSERT INTO message_history (message_id, status, device_id)
            SELECT id, 'dispatching', $2 FROM u ON CONFLICT DO NOTHING
        )
        SELECT id, recipient, body, status FROM u ORDER BY seq
        """,
        account_id, device_id, limit,
    ))


class Dispatched(msgspec.Struct, frozen=True):
    """A job committed `dispatching` for a phone, to be handed to it by the
    node that holds its connection (CONTRACT section 13)."""
    id: uuid.UUID
    device_id: uuid.UUID
    recipient: str
    body: str


async def dispatched_jobs(db: Db, ids: list[uuid.UUID]) -> dict[uuid.UUID, Dispatched]:
    """Those of these jobs still `dispatching` and not asked back, with their
    device (another node's wake-up names them: a read, no commit)."""
    rows = await db.fetch(
        "SELECT id, device_id, recipient, body FROM messages"
        " WHERE id = ANY($1::uuid[]) AND status = 'dispatching'"
        " AND handback IS NULL", ids)
    return {r["id"]: Dispatched(**dict(r)) for r in rows}


async def stray_jobs(db: Db, node: str, since: dt.datetime, before: dt.datetime,
                     limit: int = 500) -> list[Dispatched]:
    """`dispatching` jobs never listed nor asked back, last moved between
    `since` and `before`, of the phones whose presence row names `node`:
    where a lost wake-up from another node leaves a job (the caller hands
    those its phones do not hold). The newest first, by messages_unacked."""
    return rows_of(Dispatched, await db.fetch(
        "SELECT m.id, m.device_id, m.recipient, m.body FROM messages m"
        " JOIN presence p ON p.device_id = m.device_id AND p.node = $1"
        " WHERE m.status = 'dispatching' AND m.updated_at >= $2 AND m.updated_at < $3"
        " AND m.handback IS NULL AND m.listed_at IS NULL"
        " ORDER BY m.updated_at DESC LIMIT $4", node, since, before, limit))


async def queued_count(db: Db, account_id: uuid.UUID, at_most: int) -> int:
    """The account's queued messages, counted up to `at_most`."""
    return int(await db.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM messages WHERE account_id = $1"
        " AND status = 'queued' LIMIT $2) q", account_id, at_most))


class Held(msgspec.Struct, frozen=True):
    id: uuid.UUID
    device_id: uuid.UUID | None
    status: str
    error: str | None


async def held_jobs(db: Db, account_id: uuid.UUID, ids: list[uuid.UUID]) -> list[Held]:
    """Owner and status of the jobs a phone says it holds, in one query."""
    return rows_of(Held, await db.fetch(
        "SELECT id, device_id, status, error FROM messages"
        " WHERE account_id = $1 AND id = ANY($2::uuid[])", account_id, ids,
    ))


async def lock_for_reports(db: Db, ids: list[uuid.UUID],
                           device_ids: list[uuid.UUID]) -> list[Held]:
    """Lock the messages a batch of reports names (`ids[i]` by the phone
    `device_ids[i]`), each only if it is that phone's, in id order (two
    batches can never wait on each other in a cycle). A report naming
    another phone's job neither reads nor locks it: it is not yours."""
    return rows_of(Held, await db.fetch(
        "SELECT m.id, m.device_id, m.status, m.error FROM messages m"
        " JOIN unnest($1::uuid[], $2::uuid[]) AS k(id, device_id)"
        "  ON m.id = k.id AND m.device_id = k.device_id"
        " ORDER BY m.id FOR UPDATE OF m", ids, device_ids,
    ))


async def write_reports(db: Db, moved: list[Held],
                        history: list[tuple[uuid.UUID, str, uuid.UUID, str | None]]) -> None:
    """The messages that moved (status, error) and the history rows of a
    batch of reports, in one statement: one round trip."""
    await db.execute(
        "WITH moved AS ("
        " UPDATE messages m SET status = v.status, error = v.error, updated_at = now()"
        " FROM unnest($1::uuid[], $2::text[], $3::text[]) AS v(id, status, error)"
        " WHERE m.id = v.id)"
        " INSERT INTO message_history (message_id, status, device_id, error)"
        " SELECT * FROM unnest($4::uuid[], $5::text[], $6::uuid[], $7::text[])"
        " ON CONFLICT DO NOTHING",
        [h.id for h in moved], [h.status for h in moved], [h.error for h in moved],
        [r[0] for r in history], [r[1] for r in history], [r[2] for r in history],
        [r[3] for r in history],
    )


class Moved(NamedTuple):
    id: uuid.UUID
    error: str | None  # as stored after the move


async def move_reported(db: Db, moves: list[tuple[uuid.UUID, uuid.UUID, str, str, str | None]],
                        history: list[tuple[uuid.UUID, str, uuid.UUID, str | None]]) -> list[Moved]:
    """The common case of a batch of reports, in one statement and its
    commit, no round trip for a lock: each message of `moves` (id, the reporting
    device, the statuses it may move from joined by commas, the new status,
    the error of a failure or None) moves if the device still holds it and
    its status is one of those; the history rows of the messages that moved
    go in with them, the others' are left out. The messages that moved; the
    rest are as they were, for the locking path (`lock_for_reports`).

    The rows are locked first (each only if it is the reporting phone's),
    in id order, as `lock_for_reports` and a phone's listing
    (store/holds.py) lock them: an update in the batch's order waited for a
    listing that waited for it, and PostgreSQL ended one of the two after a
    second (a 503)."""
    return rows_of(Moved, await db.fetch(
        "WITH locked AS MATERIALIZED ("
        " SELECT m.id FROM messages m JOIN unnest($1::uuid[], $2::uuid[]) AS k(id, device_id)"
        "  ON m.id = k.id AND m.device_id = k.device_id ORDER BY m.id FOR UPDATE OF m),"
        " moved AS ("
        " UPDATE messages m SET status = v.status, error = coalesce(v.error, m.error),"
        "  updated_at = now()"
        " FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[])"
        "  AS v(id, device_id, froms, status, error)"
        " WHERE m.id = v.id AND m.device_id = v.device_id"
        "  AND m.status = ANY(string_to_array(v.froms, ','))"
        "  AND v.id IN (SELECT id FROM locked)"
        " RETURNING m.id, m.error),"
        " logged AS ("
        " INSERT INTO message_history (message_id, status, device_id, error)"
        " SELECT h.* FROM unnest($6::uuid[], $7::text[], $8::uuid[], $9::text[])"
        "  AS h(message_id, status, device_id, error)"
        " WHERE h.message_id IN (SELECT id FROM moved)"
        " ON CONFLICT DO NOTHING)"
        " SELECT id, error FROM moved",
        [m[0] for m in moves], [m[1] for m in moves], [m[2] for m in moves],
        [m[3] for m in moves], [m[4] for m in moves],
        [h[0] for h in history], [h[1] for h in history], [h[2] for h in history],
        [h[3] for h in history],
    ))


# --- the lifecycle's clocks (broker/delivery/sweeper.py) --------------------


class Stopped(msgspec.Struct, frozen=True):
    id: uuid.UUID
    device_id: uuid.UUID | None
    was: str


async def fail_due(db: Db, statuses: list[str], column: str, before: dt.datetime, error: str,
                   limit: int = 1000, listed_before: dt.datetime | None = None) -> list[Stopped]:
    """Fail (with `error`) up to `limit` messages in `statuses` whose `column`
    (expires_at, updated_at or listed_at) is before `before`, with their
    history rows; a job an SMS Gateway phone has listed only once `column`
    is before `listed_before` too (its expiry waits for the phone's report).
    SKIP LOCKED: a row a phone's report holds is left to that report; if the
    report moved it on, it no longer matches next time."""
    assert column in ("expires_at", "updated_at", "listed_at")
    return rows_of(Stopped, await db.fetch(
        f"""
        WITH due AS (
            SELECT id, status AS was FROM messages
            WHERE status = ANY($1::text[]) AND {column} < $2
              AND (listed_at IS NULL OR {column} < $5)
            ORDER BY {column} LIMIT $4 FOR UPDATE SKIP LOCKED
        ), u AS (
            UPDATE messages m SET status = 'failed', error = $3, updated_at = now()
            FROM due WHERE m.id = due.id
            RETURNING m.id, m.device_id, due.was
        ), h AS (
            INSERT INTO message_history (message_id, status, device_id, error)
            SELECT id, 'failed', device_id, $3 FROM u ON CONFLICT DO NOTHING
        )
        SELECT id, device_id, was FROM u
        """,
        statuses, before, error, limit, listed_before or before,
    ))


class Unacked(msgspec.Struct, frozen=True):
    id: uuid.UUID
    account_id: uuid.UUID
    device_id: uuid.UUID
    recipient: str
    body: str
    status: str
    last_seen_at: dt.datetime | None
    active: bool
    listed: bool  # an SMS Gateway phone listed it: it holds the job
    released: bool  # ...and gave it back (`PATCH Cancelled`): free to move now


_UNACKED_COLS = ("m.id, m.account_id, m.device_id, m.recipient, m.body, m.status,"
                 " d.last_seen_at, d.active, m.listed_at IS NOT NULL AS listed,"
                 " m.handback IS NOT DISTINCT FROM 'released' AS released, m.seq")


async def unacked_jobs(db: Db, before: dt.datetime, accounts: list[uuid.UUID],
                       limit: int = 500) -> list[Unacked]:
    """Candidates for another device: `dispatching` jobs handed out before
    `before` whose device has not been seen since then (or is deactivated),
    not already asked back; and jobs their phone gave back. Two index scans
    (messages_unacked, messages_released), not one scan with an OR."""
    rows = await db.fetch(
        f"(SELECT {_UNACKED_COLS} FROM messages m JOIN devices d ON d.id = m.device_id"
        " WHERE m.status = 'dispatching' AND m.updated_at < $1 AND m.handback IS NULL"
        " AND (d.last_seen_at IS NULL OR d.last_seen_at < $1 OR NOT d.active)"
        " AND m.account_id = ANY($3::uuid[]) ORDER BY m.seq LIMIT $2)"
        f" UNION ALL (SELECT {_UNACKED_COLS} FROM messages m JOIN devices d ON d.id = m.device_id"
        " WHERE m.status = 'dispatching' AND m.handback = 'released'"
        " AND m.account_id = ANY($3::uuid[]) ORDER BY m.account_id, m.seq LIMIT $2)"
        " ORDER BY seq",
        before, limit, accounts,
    )
    fields = Unacked.__struct_fields__
    return [Unacked(*(r[f] for f in fields)) for r in rows]


async def reassign(db: Db, message_id: uuid.UUID, old_device: uuid.UUID,
                   new_device: uuid.UUID) -> bool:
    """Move a job that was never acked to another device: one no phone has
    listed, or one its phone gave back. Conditional on the old owner and
    status: an ack or a listing stored meanwhile wins, and the job stays."""
    status = await db.execute(
        "UPDATE messages SET device_id = $3, listed_at = NULL, handback = NULL,"
        " updated_at = now()"
        " WHERE id = $1 AND device_id = $2 AND status = 'dispatching'"
        " AND (listed_at IS NULL OR handback = 'released')",
        message_id, old_device, new_device,
    )
    return bool(status == "UPDATE 1")
