"""broker/services/passwords.py: argon2id in a worker thread."""

from __future__ import annotations

import asyncio
import threading

import pytest
from argon2 import PasswordHasher

from broker.services import passwords


async def test_a_hash_verifies_its_password_and_nothing_else() -> None:
    hashed = await passwords.hash_password("correct horse battery staple")
    assert hashed.startswith("$argon2id$")
    assert await passwords.verify(hashed, "correct horse battery staple")
    assert not await passwords.verify(hashed, "correct horse battery stapl")
    assert not await passwords.verify("not a hash", "anything")


async def test_no_password_verifies_nothing_but_still_spends_a_verify() -> None:
    """An account without a password (or no account: the dummy hash) is
    refused after the same work as a wrong password."""
    assert not await passwords.verify(None, "")
    assert not await passwords.verify(passwords.dummy_hash(), "")


class ThreadSpy:
    """The real hasher, noting the thread each call runs on."""

    def __init__(self, real: PasswordHasher) -> None:
        self.real = real
        self.threads: list[int] = []

    def hash(self, password: str) -> str:
        self.threads.append(threading.get_ident())
        return self.real.hash(password)

    def verify(self, hashed: str, password: str) -> bool:
        self.threads.append(threading.get_ident())
        return self.real.verify(hashed, password)


async def test_the_work_is_done_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = ThreadSpy(passwords._hasher)
    monkeypatch.setattr(passwords, "_hasher", spy)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.get_running_loop().create_task(tick())
    try:
        hashed = await passwords.hash_password("x" * 14)
        assert await passwords.verify(hashed, "x" * 14)
    finally:
        ticker.cancel()
    assert len(spy.threads) == 2
    assert threading.get_ident() not in spy.threads
    assert ticks > 2  # the loop ran while the hashes were made and checked
