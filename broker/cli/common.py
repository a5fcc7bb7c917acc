"""What every command shares: its output, its errors, argument checks."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from broker import store
from broker.settings import Settings

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


def broker_url(settings: Settings, url: str | None) -> str:
    """Where `send` and `device-sim` find the broker: `url` (SMSDORA_URL)
    if given, else where `serve` listens with the same settings:
    SMSDORA_HOST (a wildcard address reached over loopback), SMSDORA_PORT,
    and https when SMSDORA_TLS_CERT is set."""
    if url:
        return url
    scheme = "https" if settings.tls_cert is not None else "http"
    host = settings.host.strip("[]") or "0.0.0.0"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{scheme}://{host}:{settings.port}"  # a name
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"{scheme}://{shown}:{settings.port}"


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


def timestamp(raw: str) -> dt.datetime:
    """An ISO 8601 date and time with its offset (`Z` for UTC)."""
    try:
        at = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date and time: {raw!r}") from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{raw!r} has no offset: add Z for UTC")
    return at
