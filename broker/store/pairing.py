"""One-time pairing codes: a phone registers into the account that made one."""

from __future__ import annotations

import datetime as dt
import uuid

from broker.store.pool import Db


async def insert_code(db: Db, code_hash: bytes, account_id: uuid.UUID,
                      expires_at: dt.datetime) -> None:
    await db.execute(
        "INSERT INTO pairing_codes (code_hash, account_id, expires_at) VALUES ($1, $2, $3)",
        code_hash, account_id, expires_at)


async def claim_code(db: Db, code_hash: bytes, now: dt.datetime) -> uuid.UUID | None:
    """The account of an unexpired code, which is used up by this (single
    use: of two phones with one code, one wins). Expired codes of the
    account are cleared on the way."""
    account_id: uuid.UUID | None = await db.fetchval(
        "DELETE FROM pairing_codes WHERE code_hash = $1 AND expires_at > $2 RETURNING account_id",
        code_hash, now)
    await db.execute("DELETE FROM pairing_codes WHERE expires_at <= $1", now)
    return account_id
