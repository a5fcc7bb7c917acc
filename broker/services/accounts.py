"""Accounts and plans (contract section 7): one implementation for `smsdora
accounts`, `smsdora plans` and `GET /account`."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import NamedTuple

from broker import store
from broker.clock import utcnow
from broker.errors import BadRequest, Conflict, NotFound
from broker.services import passwords

MAX_PLAN_NAME = 64
MAX_LIMIT = 2**31 - 1  # the plans table's integers


class AccountNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Account not found")


class Standing(NamedTuple):
    """An account against its plan, now."""

    account: store.Account
    month: dt.date  # the 1st of the month, UTC
    usage: store.Usage


async def standing(db: store.Db, account_id: uuid.UUID,
                   now: dt.datetime | None = None) -> Standing:
    account = await store.account_by_id(db, account_id)
    if account is None:
        raise AccountNotFound()
    month = (now or utcnow()).astimezone(dt.UTC).date().replace(day=1)
    return Standing(account, month, await store.usage_of(db, account_id, month))


async def set_plan(db: store.Db, account_id: uuid.UUID, plan: str) -> store.Account:
    """Move the account to `plan`. Its monthly limit applies from the next
    send (the month's quota is re-cut for it, what was used stays used);
    devices over a smaller device limit stay, and no new one registers."""
    try:
        account = await store.set_plan(db, account_id, plan)
    except LookupError:
        raise BadRequest(f"no plan named {plan!r}") from None
    if account is None:
        raise AccountNotFound()
    return account


async def create_plan(db: store.Db, name: str, monthly_messages: int,
                      max_devices: int) -> store.Plan:
    name = name.strip()
    if not 1 <= len(name) <= MAX_PLAN_NAME or "\x00" in name:
        raise BadRequest(f"a plan's name is 1-{MAX_PLAN_NAME} characters")
    if not (0 <= monthly_messages <= MAX_LIMIT and 0 <= max_devices <= MAX_LIMIT):
        raise BadRequest(f"a plan's limits are 0-{MAX_LIMIT}")
    try:
        return await store.create_plan(db, name, monthly_messages, max_devices)
    except store.DuplicatePlan:
        raise Conflict(f"a plan named {name!r} already exists") from None


MAX_EMAIL = 254
MAX_PASSWORD = 1024  # argon2 takes any length; a megabyte of it is only CPU


class EmailTaken(Conflict):
    def __init__(self) -> None:
        super().__init__("An account with this email already exists")


def normalize_email(raw: str) -> str:
    email = raw.strip().lower()
    local, at, domain = email.partition("@")
    if (not at or not local or "." not in domain or "@" in domain or len(email) > MAX_EMAIL
            or any(c.isspace() for c in email)):
        raise BadRequest("Enter an email address (name@example.com)")
    return email


def check_new_password(password: str) -> str:
    if not passwords.MIN_LENGTH <= len(password) <= MAX_PASSWORD:
        raise BadRequest(f"The password must be at least {passwords.MIN_LENGTH} characters")
    return password


async def sign_up(db: store.Db, email: str, password: str,
                  plan: str = "default") -> store.Account:
    """A new account with a password (argon2id, off the event loop)."""
    email = normalize_email(email)
    hashed = await passwords.hash_password(check_new_password(password))
    try:
        return await store.create_account(db, email, plan, hashed)
    except store.DuplicateEmail:
        raise EmailTaken() from None


async def set_password(db: store.Db, account_id: uuid.UUID, new: str) -> None:
    await store.set_password(db, account_id,
                             await passwords.hash_password(check_new_password(new)))


class Phones(NamedTuple):
    registered: int  # active devices
    online: int  # of those, connected to a node now
    devices: list[store.DeviceRow]  # every device of the account, oldest first


async def phones(db: store.Db, account_id: uuid.UUID, node: str,
                 connected_here: Callable[[uuid.UUID], bool]) -> Phones:
    """The account's phones, in one query: online is connected to this node
    (`node`, its presence: at once) or, by its presence row, to another."""
    rows = await store.list_devices(db, account_id)
    active = [d for d in rows if d.active]
    online = sum(1 for d in active if connected_here(d.id)
                 or (d.online_node is not None and d.online_node != node))
    return Phones(len(active), online, rows)
