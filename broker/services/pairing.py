"""One-time pairing codes (contract section 8, "By code"): a phone that
shows one registers into the account that made it. 6 characters of the
app's alphabet, 10 minutes, single use; only a keyed hash is stored."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from typing import NamedTuple

from broker import keys, store
from broker.clock import utcnow
from broker.settings import Settings

# The SMS Gateway app's own alphabet and length (SMSGATE.md 4.4): no 0/1/i/l/o.
ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
LENGTH = 6
TTL = dt.timedelta(minutes=10)


class Code(NamedTuple):
    code: str
    expires_at: dt.datetime


async def make(db: store.Db, server_secret: bytes, account_id: uuid.UUID) -> Code:
    code = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
    expires_at = utcnow() + TTL
    await store.insert_code(db, keys.digest(server_secret, code), account_id, expires_at)
    return Code(code, expires_at)


async def claim(db: store.Db, server_secret: bytes, code: str) -> uuid.UUID | None:
    """The account of a valid code, used up by this call; None otherwise."""
    code = code.strip().lower()
    if len(code) != LENGTH or any(c not in ALPHABET for c in code):
        return None
    return await store.claim_code(db, keys.digest(server_secret, code), utcnow())


def server_url(settings: Settings, seen: str | None = None) -> str:
    """What a phone types as the app's server: SMSDORA_PUBLIC_URL, else
    `seen` (the origin a browser reached us at: the dashboard's), else where
    `serve` listens; and the mobile API's path."""
    base = settings.public_url or seen or f"http://{settings.host}:{settings.port}"
    return base.rstrip("/") + "/api/mobile/v1"
