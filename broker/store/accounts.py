"""Accounts and their plans."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import msgspec

from broker.store.pool import Db, rows_of
from broker.store.usage import month_bounds


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


async def list_accounts(db: Db) -> list[Account]:
    """Every account, oldest first (the operator's CLI)."""
    return rows_of(Account, await db.fetch(_ACCOUNT + " ORDER BY a.created_at, a.id"))


async def set_plan(db: Db, account_id: uuid.UUID, plan: str) -> Account | None:
    """Move the account to another plan; its month's quota is re-cut for the
    new limit by the next send (store/usage.py, `sized_for`). LookupError:
    no such plan."""
    try:
        status = await db.execute("UPDATE accounts SET plan = $2 WHERE id = $1", account_id, plan)
    except asyncpg.ForeignKeyViolationError:
        raise LookupError(f"no plan named {plan!r}") from None
    return await account_by_id(db, account_id) if status != "UPDATE 0" else None


class Plan(msgspec.Struct, frozen=True):
    name: str
    monthly_messages: int
    max_devices: int


class DuplicatePlan(Exception):
    pass


async def create_plan(db: Db, name: str, monthly_messages: int, max_devices: int) -> Plan:
    try:
        r = await db.fetchrow(
            "INSERT INTO plans (name, monthly_messages, max_devices) VALUES ($1, $2, $3)"
            " RETURNING name, monthly_messages, max_devices", name, monthly_messages, max_devices)
    except asyncpg.UniqueViolationError:
        raise DuplicatePlan(name) from None
    assert r is not None  # INSERT ... RETURNING
    return Plan(**dict(r))


async def list_plans(db: Db) -> list[Plan]:
    return rows_of(Plan, await db.fetch(
        "SELECT name, monthly_messages, max_devices FROM plans ORDER BY name"))


class Usage(msgspec.Struct, frozen=True):
    """What the account's plan limits, as they stand now."""

    messages: int  # this month's, as the quota counts them
    active_devices: int


async def usage_of(db: Db, account_id: uuid.UUID, month: dt.date) -> Usage:
    """The month's usage as the quota holds it (store/usage.py), or, before
    the month's first send opened it, what opening it would count."""
    start, end = month_bounds(month)
    r = await db.fetchrow(
        "SELECT COALESCE((SELECT sum(used) FROM account_usage"
        "                  WHERE account_id = $1 AND month = $2),"
        "                (SELECT count(*) FROM messages"
        "                  WHERE account_id = $1 AND created_at >= $3 AND created_at < $4))"
        "         AS messages,"
        " (SELECT count(*) FROM devices WHERE account_id = $1 AND active) AS active_devices",
        account_id, month, start, end)
    assert r is not None  # a SELECT of two subqueries answers one row
    return Usage(messages=int(r["messages"]), active_devices=int(r["active_devices"]))
