"""Human passwords (contract section 7): argon2id, hashed and verified in a
worker thread, never on the event loop (about 90 ms of CPU each)."""

from __future__ import annotations

import asyncio
import functools
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 14  # what the SMS Gateway app asks of a new password
_hasher = PasswordHasher()


@functools.cache
def dummy_hash() -> str:
    """Verified against when there is no account or no password, so that such
    a refusal takes as long as a wrong password's. Made on first use (in the
    worker thread), not at start-up."""
    return _hasher.hash("no password: " + secrets.token_hex(16))


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify(hashed: str | None, password: str) -> bool:
    """Whether `password` is the one `hashed` was made from. None (no
    account, or one without a password) is checked against `dummy_hash()`
    and refused: the same work, so the time does not tell the two apart."""
    matched = await asyncio.to_thread(_matches, hashed, password)
    return matched and hashed is not None


def _matches(hashed: str | None, password: str) -> bool:
    try:
        return _hasher.verify(hashed or dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return False
