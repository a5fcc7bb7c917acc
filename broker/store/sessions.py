"""Dashboard sessions (migration 0008): the cookie's token is looked up by
its SHA-256; every session carries the CSRF token of its forms."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

import msgspec

from broker.store.pool import Db


class SessionRow(msgspec.Struct, frozen=True):
    account_id: uuid.UUID
    email: str
    plan: str
    csrf: str
    seen_at: dt.datetime


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_session(db: Db, token: str, account_id: uuid.UUID, csrf: str,
                         lifetime_s: float) -> None:
    await db.execute(
        "INSERT INTO sessions (token_hash, account_id, csrf, expires_at)"
        " VALUES ($1, $2, $3, now() + $4 * interval '1 second')",
        token_hash(token), account_id, csrf, lifetime_s)


async def session_of(db: Db, token: str) -> SessionRow | None:
    """The live session of a cookie's token, with its account; None for an
    unknown or expired one."""
    r = await db.fetchrow(
        "SELECT s.account_id, a.email, a.plan, s.csrf, s.seen_at FROM sessions s"
        " JOIN accounts a ON a.id = s.account_id"
        " WHERE s.token_hash = $1 AND s.expires_at > now()", token_hash(token))
    return SessionRow(**dict(r)) if r is not None else None


async def touch_session(db: Db, token: str) -> None:
    await db.execute("UPDATE sessions SET seen_at = now() WHERE token_hash = $1",
                     token_hash(token))


async def delete_session(db: Db, token: str) -> None:
    await db.execute("DELETE FROM sessions WHERE token_hash = $1", token_hash(token))


async def delete_sessions_of(db: Db, account_id: uuid.UUID, keep: str | None = None) -> None:
    """Every session of the account (but `keep`'s): after a password change."""
    await db.execute(
        "DELETE FROM sessions WHERE account_id = $1 AND ($2::bytea IS NULL OR token_hash <> $2)",
        account_id, token_hash(keep) if keep is not None else None)


async def purge_sessions(db: Db, limit: int = 1000) -> int:
    return int(await db.fetchval(
        "WITH d AS (DELETE FROM sessions WHERE token_hash IN ("
        "  SELECT token_hash FROM sessions WHERE expires_at < now() LIMIT $1) RETURNING 1)"
        " SELECT count(*) FROM d", limit))
