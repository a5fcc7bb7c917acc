"""The monthly quota's usage (migrations 0004, 0005): per account and month,
STRIPES rows, each with its own cap, the caps adding up to the plan's limit.

A send takes one unit of a stripe with room, picked at random, in the
message's own INSERT statement (store/messages.py): concurrent sends of one
account mostly lock different rows, so they do not wait for each other's
commits, and since no stripe passes its cap, the month never passes the
limit, in one process or many. This module opens a month, re-cuts its caps
when the plan changed (`sized_for` is the limit they were cut for), and
reads it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import NamedTuple

from broker.store.pool import Db

# Rows per account and month. 64: one account's concurrent sends seldom wait
# for each other's commits, unless dozens of them are in flight at once.
STRIPES = 64


class Quota(NamedTuple):
    """What a send may take: a unit of `month`'s usage while under `limit`."""

    month: dt.date  # the 1st of the month, UTC
    limit: int  # the plan's monthly_messages


def month_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    return start, (start + dt.timedelta(days=32)).replace(day=1)


# $1 account, $2 month, $3/$4 its bounds, $5 the limit. What the month holds
# already goes to stripe 0, what is left of the limit is shared out evenly.
OPEN_MONTH = f"""
INSERT INTO account_usage (account_id, month, stripe, used, cap, sized_for)
SELECT $1, $2, s, CASE WHEN s = 0 THEN c.n ELSE 0 END,
       CASE WHEN s = 0 THEN c.n ELSE 0 END
         + GREATEST(0, $5 - c.n) / {STRIPES} + (s < GREATEST(0, $5 - c.n) % {STRIPES})::int,
       $5
  FROM (SELECT count(*)::int AS n FROM messages
         WHERE account_id = $1 AND created_at >= $3 AND created_at < $4) c,
       generate_series(0, {STRIPES - 1}) s
 WHERE NOT EXISTS (SELECT 1 FROM account_usage WHERE account_id = $1 AND month = $2)
ON CONFLICT DO NOTHING
"""

# $1 account, $2 month, $3 the limit: every stripe locked (in order: two
# re-cuts never deadlock, and a send holds at most one stripe), then each
# capped at what it used plus an even share of what is left of the limit.
_RESIZE_MONTH = """
WITH locked AS (
    SELECT stripe, used FROM account_usage WHERE account_id = $1 AND month = $2
     ORDER BY stripe FOR UPDATE
), t AS (
    SELECT GREATEST(0, $3 - sum(used))::int AS room, count(*)::int AS n FROM locked
)
UPDATE account_usage u
   SET cap = l.used + t.room / t.n + (l.stripe < t.room % t.n)::int, sized_for = $3
  FROM locked l, t
 WHERE u.account_id = $1 AND u.month = $2 AND u.stripe = l.stripe
"""


async def open_month(db: Db, account_id: uuid.UUID, month: dt.date, limit: int) -> None:
    """Make the month's rows unless they are there, counting the messages
    the month already holds (written before them: the month's first send, or
    a database migrated from before 0004). Idempotent and safe to race: all
    rows come in one statement, and a second opener waits for the first's
    and leaves them. The count runs only when the rows are missing (a
    one-time filter before the subquery)."""
    start, end = month_bounds(month)
    await db.execute(OPEN_MONTH, account_id, month, start, end, limit)


async def resize_month(db: Db, account_id: uuid.UUID, month: dt.date, limit: int) -> None:
    """Cut the month's caps again for a new limit: what each stripe used
    stays, what is left of the new limit (nothing, if it is used up) is
    shared out. Exact whatever the sends meanwhile: they wait for the locks."""
    await db.execute(_RESIZE_MONTH, account_id, month, limit)


async def used_in(db: Db, account_id: uuid.UUID, month: dt.date) -> int | None:
    """The month's usage (None: not opened yet)."""
    used: int | None = await db.fetchval(
        "SELECT sum(used) FROM account_usage WHERE account_id = $1 AND month = $2",
        account_id, month)
    return used
