"""Human passwords (contract section 7): argon2id, hashed and verified in a
worker thread, never on the event loop (about 90 ms of CPU each)."""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 14  # what the SMS Gateway app asks of a new password
_hasher = PasswordHasher()
# Verified against when there is no account or no password, so that such a
# refusal takes as long as a wrong password's.
DUMMY_HASH = _hasher.hash("no password: " + secrets.token_hex(16))


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify(hashed: str | None, password: str) -> bool:
    """Whether `password` is the one `hashed` was made from (False when the
    account has none)."""
    if hashed is None:
        await asyncio.to_thread(_verify_dummy, password)
        return False
    try:
        return await asyncio.to_thread(_hasher.verify, hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def _verify_dummy(password: str) -> None:
    try:
        _hasher.verify(DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        pass  # the answer is no in any case: only the time spent matters
