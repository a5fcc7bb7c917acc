"""broker/store/listener.py: PostgreSQL's notices reach their handlers, and
the connection is re-made after it breaks. Real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from broker.store.listener import Listener

pytestmark = pytest.mark.timeout(30)
CHANNEL = "smsdora_test_listener"


async def until(predicate: object, what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_a_notice_reaches_its_handler_and_a_broken_connection_is_made_again(
        database_url: str, db: asyncpg.Connection) -> None:
    heard: list[str] = []
    connects: list[None] = []
    listener = Listener(database_url, {CHANNEL: heard.append},
                        on_connect=lambda: connects.append(None))
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        assert len(connects) == 1
        await db.execute("SELECT pg_notify($1, 'first')", CHANNEL)
        await until(lambda: heard == ["first"], "the first notice")
        # The server ends the LISTEN session (as a restart would): it comes back.
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND query LIKE 'LISTEN%' AND datname = current_database()")
        await until(lambda: len(connects) == 2 and listener.connected.is_set(), "the reconnect")
        await db.execute("SELECT pg_notify($1, 'second')", CHANNEL)
        await until(lambda: heard == ["first", "second"], "a notice after the reconnect")
    finally:
        await listener.stop()
    assert not listener.connected.is_set()
