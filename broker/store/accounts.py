"""Accounts and their plans."""

from __future__ import annotations

import uuid

import asyncpg
import msgspec

from broker.store.pool import Db


class Account(msgspec.Struct, frozen=True):
    id: uuid.UUID
    email: str
    plan: str
    monthly_messages: int
    max_devices: int


class DuplicateEmail(Exception):
    pass


_ACCOUNT_COLS = "a.id, a.email, a.plan, p.monthly_messages, p.max_devices"
_FROM = " FROM accounts a JOIN plans p ON p.name = a.plan"
_ACCOUNT = "SELECT " + _ACCOUNT_COLS + _FROM


async def create_account(db: Db, email: str, plan: str, password_hash: str | None) -> Account:
    try:
        await db.execute(
            "INSERT INTO accounts (id, email, plan, password_hash) VALUES ($1, $2, $3, $4)",
            uuid.uuid4(), email, plan, password_hash,
        )
    except asyncpg.UniqueViolationError:
        raise DuplicateEmail(email) from None
    except asyncpg.ForeignKeyViolationError:
        raise LookupError(f"no plan named {plan!r}") from None
    acc = await account_by_email(db, email)
    assert acc is not None
    return acc


async def account_by_email(db: Db, email: str) -> Account | None:
    r = await db.fetchrow(_ACCOUNT + " WHERE a.email = $1", email)
    return Account(**dict(r)) if r else None


async def account_by_id(db: Db, account_id: uuid.UUID) -> Account | None:
    r = await db.fetchrow(_ACCOUNT + " WHERE a.id = $1", account_id)
    return Account(**dict(r)) if r else None


async def password_of(db: Db, email: str) -> tuple[Account, str | None] | None:
    """The account and its argon2id hash (None: no password set)."""
    r = await db.fetchrow(f"SELECT {_ACCOUNT_COLS}, a.password_hash{_FROM} WHERE a.email = $1",
                          email)
    if r is None:
        return None
    fields = dict(r)
    hashed = fields.pop("password_hash")
    return Account(**fields), hashed


async def password_hash(db: Db, account_id: uuid.UUID) -> str | None:
    hashed: str | None = await db.fetchval(
        "SELECT password_hash FROM accounts WHERE id = $1", account_id)
    return hashed


async def set_password(db: Db, account_id: uuid.UUID, hashed: str) -> None:
    await db.execute("UPDATE accounts SET password_hash = $2 WHERE id = $1", account_id, hashed)
