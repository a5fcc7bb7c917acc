"""Webhook endpoints, their outbox and its attempts (migration 0006).

The outbox is filled by the database in the writing transaction (a trigger
on message_history; smsdora_emit for the rest); this module claims due
rows for the sender, records what each attempt got, and answers the API's
reads. Every read and change of an endpoint is scoped to its account."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec

from broker.store.pool import Conn, Db, rows_of


class WebhookRow(msgspec.Struct, frozen=True):
    id: uuid.UUID
    account_id: uuid.UUID
    url: str
    events: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    previous_until: dt.datetime | None


_WEBHOOK = ("id, account_id, url, events, description, enabled, disabled_reason, created_at,"
            " updated_at, CASE WHEN previous_until > now() THEN previous_until END AS previous_until")


async def create_webhook(db: Db, account_id: uuid.UUID, url: str, events: list[str],
                         description: str, secret: str) -> WebhookRow:
    r = await db.fetchrow(
        f"INSERT INTO webhooks (id, account_id, url, events, description, secret)"
        f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_WEBHOOK}",
        uuid.uuid4(), account_id, url, events, description, secret)
    assert r is not None
    return WebhookRow(**dict(r))


async def get_webhook(db: Db, account_id: uuid.UUID, webhook_id: uuid.UUID) -> WebhookRow | None:
    r = await db.fetchrow(f"SELECT {_WEBHOOK} FROM webhooks WHERE id = $1 AND account_id = $2",
                          webhook_id, account_id)
    return WebhookRow(**dict(r)) if r is not None else None


async def list_webhooks(db: Db, account_id: uuid.UUID, limit: int,
                        after: tuple[dt.datetime, uuid.UUID] | None = None) -> list[WebhookRow]:
    """Oldest first (the order they were made in), `limit` past `after` (a
    keyset position: creation time, id)."""
    at, webhook_id = after if after is not None else (None, None)
    rows = await db.fetch(
        f"SELECT {_WEBHOOK} FROM webhooks WHERE account_id = $1"
        "   AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid))"
        " ORDER BY created_at, id LIMIT $2", account_id, limit, at, webhook_id)
    return rows_of(WebhookRow, rows)


async def update_webhook(db: Conn, account_id: uuid.UUID, webhook_id: uuid.UUID,
                         url: str | None, events: list[str] | None, description: str | None,
                         enabled: bool | None) -> WebhookRow | None:
    """Change what is given. Enabling again clears why it was disabled and
    its failing clock; disabling fails the events it is owed (`recover`
    sends them again)."""
    async with db.transaction():
        r = await db.fetchrow(
            "UPDATE webhooks SET url = COALESCE($3, url), events = COALESCE($4, events),"
            " description = COALESCE($5, description), enabled = COALESCE($6, enabled),"
            " disabled_reason = CASE WHEN $6 THEN NULL WHEN $6 = false THEN 'disabled by the"
            " account' ELSE disabled_reason END,"
            " failing_since = CASE WHEN $6 THEN NULL ELSE failing_since END, updated_at = now()"
            f" WHERE id = $1 AND account_id = $2 RETURNING {_WEBHOOK}",
            webhook_id, account_id, url, events, description, enabled)
        if r is not None and enabled is False:
            await _fail_owed(db, [webhook_id], "endpoint disabled")
    return WebhookRow(**dict(r)) if r is not None else None


async def _fail_owed(db: Db, webhook_ids: Sequence[uuid.UUID], why: str) -> None:
    await db.execute(
        "WITH f AS (UPDATE webhook_events SET state = 'failed', done_at = now(),"
        "   tried = tried + 1 WHERE webhook_id = ANY($1::uuid[]) AND state = 'pending'"
        "   RETURNING seq, webhook_id, tried)"
        " INSERT INTO webhook_attempts (event_seq, attempt, webhook_id, error, at)"
        " SELECT seq, tried, webhook_id, $2, now() FROM f", list(webhook_ids), why)


async def delete_webhook(db: Db, account_id: uuid.UUID, webhook_id: uuid.UUID) -> bool:
    """The endpoint, its outbox and its attempts."""
    return bool(await db.fetchval(
        "WITH d AS (DELETE FROM webhooks WHERE id = $1 AND account_id = $2 RETURNING 1)"
        " SELECT count(*) FROM d", webhook_id, account_id))


async def rotate_secret(db: Db, account_id: uuid.UUID, webhook_id: uuid.UUID, secret: str,
                        overlap_s: float) -> WebhookRow | None:
    """`secret` signs from now on; the one it replaces signs beside it for
    `overlap_s` more (a rotation within that time drops the oldest)."""
    r = await db.fetchrow(
        "UPDATE webhooks SET previous_secret = secret,"
        " previous_until = now() + $4 * interval '1 second', secret = $3, updated_at = now()"
        f" WHERE id = $1 AND account_id = $2 RETURNING {_WEBHOOK}",
        webhook_id, account_id, secret, overlap_s)
    return WebhookRow(**dict(r)) if r is not None else None


async def enabled_accounts(db: Db) -> frozenset[uuid.UUID]:
    """Accounts with at least one enabled endpoint (Wake pokes only for them)."""
    return frozenset(r[0] for r in await db.fetch(
        "SELECT DISTINCT account_id FROM webhooks WHERE enabled"))


# --- the sender's side ------------------------------------------------------


class Claimed(msgspec.Struct, frozen=True):
    seq: int
    id: uuid.UUID
    webhook_id: uuid.UUID
    account_id: uuid.UUID
    type: str
    data: Any
    occurred_at: dt.datetime
    attempts: int  # including the one now claimed
    url: str
    secret: str
    previous_secret: str | None


# Per endpoint (a LATERAL probe of its own due rows, at most its room on
# this node), so that one endpoint's backlog never fills the batch: each
# enabled endpoint with due events gets its share of every claim. A row is
# due when its time has come and no earlier event of the same message is
# still owed to the endpoint (per-message order, CONTRACT section 9).
# Claiming moves next_at past the attempt's lease: a sender that dies
# mid-attempt leaves the row to be claimed again then.
_CLAIM = """
WITH busy AS (
    SELECT * FROM unnest($1::uuid[], $2::int[]) AS b(webhook_id, used)
), due AS (
    SELECT e.seq, w.url, w.secret,
           CASE WHEN w.previous_until > now() THEN w.previous_secret END AS previous_secret
      FROM webhooks w
      LEFT JOIN busy b ON b.webhook_id = w.id
     CROSS JOIN LATERAL (
        SELECT e.seq FROM webhook_events e
         WHERE e.webhook_id = w.id AND e.state = 'pending' AND e.next_at <= now()
           AND (e.message_id IS NULL OR NOT EXISTS (
                SELECT 1 FROM webhook_events p
                 WHERE p.webhook_id = e.webhook_id AND p.message_id = e.message_id
                   AND p.state = 'pending' AND p.message_id IS NOT NULL AND p.seq < e.seq))
         ORDER BY e.next_at, e.seq
         LIMIT GREATEST(0, $3 - COALESCE(b.used, 0))
         FOR UPDATE OF e SKIP LOCKED) e
     WHERE w.enabled AND ($6::uuid[] IS NULL OR w.id = ANY($6) OR w.account_id = ANY($7))
     LIMIT $4
)
UPDATE webhook_events e
   SET next_at = now() + $5 * interval '1 second', attempts = e.attempts + 1, claimed_by = $8
  FROM due
 WHERE e.seq = due.seq
RETURNING e.seq, e.id, e.webhook_id, e.account_id, e.type, e.data, e.occurred_at, e.attempts,
          due.url, due.secret, due.previous_secret
"""


async def claim_due(db: Db, node: str, busy: dict[uuid.UUID, int], per_endpoint: int,
                    limit: int, lease_s: float, endpoints: Sequence[uuid.UUID] | None = None,
                    accounts: Sequence[uuid.UUID] = ()) -> list[Claimed]:
    """Due rows of every enabled endpoint (a probe per endpoint: about 1 µs
    each), or, with `endpoints`, only of those and of the `accounts`' ones."""
    rows = await db.fetch(_CLAIM, list(busy), list(busy.values()), per_endpoint, limit, lease_s,
                          None if endpoints is None else list(endpoints), list(accounts), node)
    out = rows_of(Claimed, rows)
    out.sort(key=lambda c: c.seq)
    return out


class Outcome(msgspec.Struct, frozen=True):
    """What one attempt got. `next_at` None and not `ok`: finally failed."""

    seq: int
    webhook_id: uuid.UUID
    ok: bool
    status_code: int | None
    error: str | None
    at: dt.datetime
    next_at: dt.datetime | None
    claimed: int  # the event's `attempts` when claimed: which round this attempt was of
    gone: bool = False  # answered 410: disable the endpoint


async def record(db: Conn, outcomes: Sequence[Outcome], disable_after_s: float) -> list[uuid.UUID]:
    """Many attempts' outcomes in one transaction: each event's state, its
    attempt row, and each endpoint's failing clock; disables endpoints that
    answered 410 or have had no 2xx for `disable_after_s` (their owed events
    fail). Returns the endpoints it disabled."""
    if not outcomes:
        return []
    async with db.transaction():
        # The endpoints first, in id order, as a delete or a disable takes
        # them (the endpoint's row, then its events): never a lock cycle.
        await db.execute(
            "SELECT 1 FROM webhooks WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE",
            sorted({o.webhook_id for o in outcomes}))
        # The event's state moves only if it is still in the round the
        # attempt was claimed in: a redeliver meanwhile started a new one.
        await db.execute(
            "WITH o AS (SELECT * FROM unnest($1::bigint[], $2::bool[], $3::int[], $4::text[],"
            "   $5::timestamptz[], $6::timestamptz[], $7::int[])"
            "   AS o(seq, ok, code, error, at, next_at, claimed)),"
            " e AS (UPDATE webhook_events e SET tried = e.tried + 1, claimed_by = NULL,"
            "   state = CASE WHEN e.state <> 'pending' OR e.attempts <> o.claimed THEN e.state"
            "           WHEN o.ok THEN 'delivered' WHEN o.next_at IS NULL THEN 'failed'"
            "           ELSE 'pending' END,"
            "   next_at = CASE WHEN e.state <> 'pending' OR e.attempts <> o.claimed THEN e.next_at"
            "             ELSE COALESCE(o.next_at, e.next_at) END,"
            "   done_at = CASE WHEN e.state <> 'pending' OR e.attempts <> o.claimed THEN e.done_at"
            "             WHEN o.ok OR o.next_at IS NULL THEN o.at END"
            "   FROM o WHERE e.seq = o.seq"
            "   RETURNING e.seq, e.webhook_id, e.tried, o.code, o.error, o.at, o.ok, o.next_at)"
            " INSERT INTO webhook_attempts (event_seq, attempt, webhook_id, status_code, error,"
            "   at, next_retry_at)"
            " SELECT seq, tried, webhook_id, code, error, at, CASE WHEN NOT ok THEN next_at END"
            "   FROM e ON CONFLICT DO NOTHING",
            [o.seq for o in outcomes], [o.ok for o in outcomes],
            [o.status_code for o in outcomes], [o.error for o in outcomes],
            [o.at for o in outcomes], [o.next_at for o in outcomes],
            [o.claimed for o in outcomes])
        # Each endpoint by its latest outcome of the batch: a 2xx stops its
        # failing clock, a failure starts it (if not running).
        latest: dict[uuid.UUID, Outcome] = {}
        gone: set[uuid.UUID] = set()
        for o in sorted(outcomes, key=lambda o: o.at):
            latest[o.webhook_id] = o
            if o.gone:
                gone.add(o.webhook_id)
        ids = list(latest)
        disabled = [r[0] for r in await db.fetch(
            "WITH v AS (SELECT * FROM unnest($1::uuid[], $2::bool[], $3::timestamptz[],"
            "   $4::bool[]) AS v(id, ok, at, gone)),"
            " u AS (UPDATE webhooks w SET"
            "   failing_since = CASE WHEN v.ok THEN NULL ELSE COALESCE(w.failing_since, v.at) END,"
            "   enabled = w.enabled AND NOT (v.gone OR (NOT v.ok AND"
            "     COALESCE(w.failing_since, v.at) < v.at - $5 * interval '1 second')),"
            "   disabled_reason = CASE WHEN NOT w.enabled THEN w.disabled_reason"
            "     WHEN v.gone THEN 'the endpoint answered 410 Gone'"
            "     WHEN NOT v.ok AND COALESCE(w.failing_since, v.at) < v.at - $5 * interval '1 second'"
            "     THEN 'no 2xx answer for ' || round(($5 / 86400.0)::numeric, 1) || ' days'"
            "     ELSE w.disabled_reason END,"
            "   updated_at = CASE WHEN w.enabled AND (v.gone OR (NOT v.ok AND"
            "     COALESCE(w.failing_since, v.at) < v.at - $5 * interval '1 second'))"
            "     THEN now() ELSE w.updated_at END"
            "   FROM v WHERE w.id = v.id"
            "   RETURNING w.id, w.enabled, (SELECT NOT enabled FROM webhooks o WHERE o.id = w.id)"
            "     AS was_disabled)"
            " SELECT id FROM u WHERE NOT enabled AND NOT was_disabled",
            ids, [latest[i].ok for i in ids], [latest[i].at for i in ids],
            [i in gone for i in ids], disable_after_s)]
        if disabled:
            await _fail_owed(db, disabled, "endpoint disabled")
    return disabled


# --- what the API shows and replays -----------------------------------------


class AttemptRow(msgspec.Struct, frozen=True):
    event_id: uuid.UUID
    type: str
    attempt: int
    status_code: int | None
    error: str | None
    at: dt.datetime
    next_retry_at: dt.datetime | None
    event_seq: int


async def list_attempts(db: Db, account_id: uuid.UUID, webhook_id: uuid.UUID, limit: int,
                        before: tuple[int, int] | None) -> list[AttemptRow]:
    """Newest first; `before` is the (event seq, attempt) of the last one seen."""
    rows = await db.fetch(
        "SELECT e.id AS event_id, e.type, a.attempt, a.status_code, a.error, a.at,"
        "       a.next_retry_at, a.event_seq"
        "  FROM webhook_attempts a JOIN webhook_events e ON e.seq = a.event_seq"
        " WHERE a.webhook_id = $1 AND e.account_id = $2"
        "   AND ($4::bigint IS NULL OR (a.at, a.event_seq, a.attempt) < ("
        "        SELECT at, event_seq, attempt FROM webhook_attempts"
        "         WHERE event_seq = $4 AND attempt = $5 AND webhook_id = $1))"
        " ORDER BY a.at DESC, a.event_seq DESC, a.attempt DESC LIMIT $3",
        webhook_id, account_id, limit, before[0] if before else None,
        before[1] if before else None)
    return rows_of(AttemptRow, rows)


async def enqueue_test(db: Db, account_id: uuid.UUID, webhook_id: uuid.UUID) -> uuid.UUID | None:
    """A `webhook.test` event to this endpoint, whatever it subscribes to."""
    return await db.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO webhook_events (webhook_id, account_id, type, data, occurred_at)"
        " SELECT id, account_id, 'webhook.test', jsonb_build_object('webhookId', id), now()"
        "   FROM webhooks WHERE id = $1 AND account_id = $2 RETURNING id",
        webhook_id, account_id)


class Replayed(msgspec.Struct, frozen=True):
    event_id: uuid.UUID
    webhook_id: uuid.UUID
    enabled: bool


async def redeliver(db: Db, account_id: uuid.UUID, event_id: uuid.UUID) -> Replayed | None:
    """The event owed again, due now, with a fresh round of retries; only
    to an enabled endpoint (`enabled` False: nothing changed)."""
    r = await db.fetchrow(
        "WITH t AS (SELECT e.seq, e.id, e.webhook_id, w.enabled FROM webhook_events e"
        "   JOIN webhooks w ON w.id = e.webhook_id WHERE e.id = $1 AND e.account_id = $2),"
        " u AS (UPDATE webhook_events e SET state = 'pending', attempts = 0, next_at = now(),"
        "   done_at = NULL FROM t WHERE e.seq = t.seq AND t.enabled RETURNING 1)"
        " SELECT t.id AS event_id, t.webhook_id, t.enabled FROM t", event_id, account_id)
    return Replayed(**dict(r)) if r is not None else None


async def recover(db: Db, account_id: uuid.UUID, webhook_id: uuid.UUID,
                  since: dt.datetime) -> int | None:
    """Every event of the endpoint that finally failed at or after `since`,
    owed again; how many (None: no such endpoint; -1: it is disabled, and
    nothing changed)."""
    r = await db.fetchrow(
        "WITH w AS (SELECT id, enabled FROM webhooks WHERE id = $1 AND account_id = $2),"
        " u AS (UPDATE webhook_events e SET state = 'pending', attempts = 0, next_at = now(),"
        "   done_at = NULL FROM w WHERE w.enabled AND e.webhook_id = w.id AND e.state = 'failed'"
        "   AND e.done_at >= $3 RETURNING 1)"
        " SELECT (SELECT enabled FROM w) AS enabled, (SELECT count(*) FROM u) AS n",
        webhook_id, account_id, since)
    assert r is not None
    if r["enabled"] is None:
        return None
    return int(r["n"]) if r["enabled"] else -1


async def purge_done(db: Db, keep_days: int, batch: int) -> int:
    """Delivered and failed events older than `keep_days`, `batch` at a time."""
    return int(await db.fetchval(
        "WITH d AS (DELETE FROM webhook_events WHERE seq IN ("
        "   SELECT seq FROM webhook_events WHERE state <> 'pending'"
        "      AND done_at < now() - $1 * interval '1 day' LIMIT $2) RETURNING 1)"
        " SELECT count(*) FROM d", keep_days, batch))


async def release(db: Db, seqs: Sequence[int]) -> None:
    """Claimed rows whose attempts were cut short (shutdown): due again now,
    their place in the schedule given back."""
    await db.execute(
        "UPDATE webhook_events SET next_at = now(), attempts = GREATEST(0, attempts - 1),"
        " claimed_by = NULL WHERE seq = ANY($1::bigint[]) AND state = 'pending'", list(seqs))


async def emit_device_events(db: Db, ids: Sequence[uuid.UUID], online: Sequence[bool],
                             at: Sequence[dt.datetime], health: Sequence[str | None],
                             versions: Sequence[str | None]) -> None:
    """device.online / device.offline, `data` the device as GET /devices
    shows it at that moment (what the connection knew, over the row): the
    shape is smsdora_device_event's (migration 0010), which the reaper of a
    dead node's phones shares (broker/store/cluster.py)."""
    await db.execute(
        "SELECT smsdora_device_event(d, v.online, v.at, v.health::jsonb, v.ver)"
        " FROM unnest($1::uuid[], $2::bool[], $3::timestamptz[], $4::text[], $5::text[])"
        "   WITH ORDINALITY AS v(id, online, at, health, ver, n)"
        " JOIN devices d ON d.id = v.id ORDER BY v.n",
        list(ids), list(online), list(at), list(health), list(versions))


async def release_node(db: Db, node: str) -> int:
    """At start-up: the attempts this node had under way died with it; their
    events are due again now rather than at the end of their lease."""
    return int(await db.fetchval(
        "WITH r AS (UPDATE webhook_events SET next_at = now(), claimed_by = NULL,"
        "   attempts = GREATEST(0, attempts - 1)"
        " WHERE claimed_by = $1 AND state = 'pending' AND next_at > now() RETURNING 1)"
        " SELECT count(*) FROM r", node))


class Failing(msgspec.Struct, frozen=True):
    id: uuid.UUID
    url: str
    enabled: bool
    disabled_reason: str | None
    failing_since: dt.datetime | None


async def failing_webhooks(db: Db, account_id: uuid.UUID) -> list[Failing]:
    """The account's endpoints that are disabled or whose latest attempt
    failed (`failing_since` runs from a failure until the next 2xx)."""
    return rows_of(Failing, await db.fetch(
        "SELECT id, url, enabled, disabled_reason, failing_since FROM webhooks"
        " WHERE account_id = $1 AND (NOT enabled OR failing_since IS NOT NULL)"
        " ORDER BY created_at, id", account_id))
