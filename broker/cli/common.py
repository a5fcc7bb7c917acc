"""What every command shares: its output, its errors, argument checks."""

from __future__ import annotations

import argparse
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from broker import store

DEFAULT_URL = "http://127.0.0.1:8000"
SHOWN_ONCE = "It is shown only once: store it now."


class CliError(Exception):
    """The request cannot be done as asked (exit 2)."""

    exit_code = 2


class Failed(CliError):
    """Something outside the request failed (exit 1)."""

    exit_code = 1


@dataclass
class Output:
    data: Any  # the --json object (or a response body, as bytes)
    text: str  # the prose
    exit_code: int = 0


def parse_id(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise CliError(f"no {what} with id {raw!r} (not a valid id)") from None


def email_of(raw: str) -> str:
    email = raw.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or "@" in domain or any(c.isspace() for c in email):
        raise CliError(f"not an email address: {raw!r}")
    return email


async def account_of(db: asyncpg.Connection, email: str) -> store.Account:
    account = await store.account_by_email(db, email_of(email))
    if account is None:
        raise CliError(f"no account with email {email!r}")
    return account


def positive(raw: str) -> int:
    value = nonnegative(raw)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def nonnegative(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value
