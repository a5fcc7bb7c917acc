"""The monthly quota's usage rows (migration 0004): one per account and
month. The send takes a unit in the message's own INSERT statement
(store/messages.py); this module opens a month and reads it."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import NamedTuple

from broker.store.pool import Db


class Quota(NamedTuple):
    """What a send may take: a unit of `month`'s usage while under `limit`."""

    month: dt.date  # the 1st of the month, UTC
    limit: int  # the plan's monthly_messages


def month_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    return start, (start + dt.timedelta(days=32)).replace(day=1)


# $1 account, $2 month, $3/$4 its bounds.
OPEN_MONTH = (
    "INSERT INTO account_usage (account_id, month, used)"
    " SELECT $1, $2, (SELECT count(*) FROM messages"
    "                 WHERE account_id = $1 AND created_at >= $3 AND created_at < $4)"
    " WHERE NOT EXISTS (SELECT 1 FROM account_usage WHERE account_id = $1 AND month = $2)"
    " ON CONFLICT DO NOTHING"
)


async def open_month(db: Db, account_id: uuid.UUID, month: dt.date) -> None:
    """Make the month's usage row unless it is there, counting the messages
    the month already holds (written before the row: the month's first send,
    or a database migrated from before 0004). Idempotent and safe to race: a
    second opener waits for the first's row and leaves it. The count runs
    only when the row is missing (a one-time filter before the subquery)."""
    start, end = month_bounds(month)
    await db.execute(OPEN_MONTH, account_id, month, start, end)


async def used_in(db: Db, account_id: uuid.UUID, month: dt.date) -> int | None:
    """The month's usage (None: no row yet)."""
    used: int | None = await db.fetchval(
        "SELECT used FROM account_usage WHERE account_id = $1 AND month = $2", account_id, month)
    return used
