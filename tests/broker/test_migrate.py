"""Numbered migrations (broker/store/migrate.py) on scratch databases of the
test server, and schema.sql as their dump (broker/store/dump_schema.py).

Scratch databases are named `smsdora_test_<pid>_<hex>`, dropped after each
test, and by tests/conftest.py if this process dies first.
"""

from __future__ import annotations

import asyncio
import difflib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from broker import cli, store
from broker.store import dump_schema, migrate
from broker.store.pool import SCHEMA_PATH
from tests.conftest import with_database

# The schema.sql of the releases before numbered migrations (05b9d87), as
# they created databases: 0001 must adopt such a database without loss.
SCHEMA_V0 = (Path(__file__).parent / "data" / "schema_v0.sql").read_text()

Scratch = Callable[[], Awaitable[str]]


@pytest.fixture
async def scratch(database_url: str) -> AsyncIterator[Scratch]:
    """A factory of empty databases on the test server, each dropped after."""
    made: list[str] = []
    admin = await asyncpg.connect(database_url, timeout=10)

    async def make() -> str:
        name = f"smsdora_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return with_database(database_url, name)

    try:
        yield make
    finally:
        for name in made:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _recorded(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    return [tuple(r) for r in await conn.fetch(
        "SELECT version, name FROM schema_migrations ORDER BY version")]


# --- schema.sql -------------------------------------------------------------


async def test_schema_sql_is_the_dump_of_a_freshly_migrated_database(database_url: str) -> None:
    scratch = f"smsdora_test_{os.getpid()}_dump"
    fresh = await dump_schema.fresh_schema(database_url, scratch)
    stored = SCHEMA_PATH.read_text()
    if fresh != stored:
        diff = "".join(list(difflib.unified_diff(
            stored.splitlines(keepends=True), fresh.splitlines(keepends=True),
            "schema.sql", "freshly migrated"))[:60])
        pytest.fail(f"schema.sql is stale: run `make schema`\n{diff}", pytrace=False)


def test_dump_normalisation_drops_what_differs_run_to_run() -> None:
    raw = ("--\n-- PostgreSQL database dump\n--\n\n\\restrict AbC123\n\n"
           "-- Dumped from database version 18.6\n-- Dumped by pg_dump version 18.6\n\n"
           "SET statement_timeout = 0;\n"
           "SELECT pg_catalog.set_config('search_path', '', false);\n\n"
           "--\n-- Name: t; Type: TABLE; Schema: public; Owner: -\n--\n\n"
           "CREATE TABLE public.t (\n    id integer\n);\n\n\n"
           "--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict AbC123\n\n")
    assert dump_schema.normalise(raw) == (
        dump_schema.HEADER + "\n--\n-- Name: t; Type: TABLE; Schema: public; Owner: -\n--\n\n"
        "CREATE TABLE public.t (\n    id integer\n);\n")


# --- applying ---------------------------------------------------------------


async def test_migrate_applies_all_then_nothing(scratch: Scratch) -> None:
    versions = [m.version for m in migrate.discover()]
    conn = await asyncpg.connect(await scratch())
    try:
        assert await migrate.check(conn) == 0
        assert await migrate.migrate(conn) == versions
        assert await migrate.migrate(conn) == []
        assert await migrate.check(conn) == versions[-1]
        assert [v for v, _ in await _recorded(conn)] == versions
        assert await conn.fetchval("SELECT count(*) FROM plans WHERE name = 'default'") == 1
    finally:
        await conn.close()


async def test_two_concurrent_migrations_both_succeed_one_applies(scratch: Scratch) -> None:
    dsn = await scratch()
    pair = [await asyncpg.connect(dsn) for _ in range(2)]
    try:
        results = await asyncio.gather(*(migrate.migrate(c) for c in pair))
        versions = [m.version for m in migrate.discover()]
        # Each step is applied by exactly one of them, in order.
        assert sorted(results[0] + results[1]) == versions
        assert [v for v, _ in await _recorded(pair[0])] == versions
    finally:
        for c in pair:
            await c.close()


async def _rows(conn: asyncpg.Connection) -> dict[str, list[Any]]:
    tables = ["plans", "accounts", "api_keys", "devices", "messages", "message_history",
              "idempotency_keys"]
    return {t: [dict(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY 1, 2")]
            for t in tables}


async def test_a_database_made_by_the_old_schema_sql_is_adopted_as_version_1(
        scratch: Scratch) -> None:
    dsn = await scratch()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA_V0)
        acc, key, dev, msg = (uuid.uuid4() for _ in range(4))
        await conn.execute("INSERT INTO plans VALUES ('tiny', 10, 1)")
        await conn.execute("INSERT INTO accounts (id, email, password_hash, plan)"
                           " VALUES ($1, 'old@example.com', 'argon2id$x', 'tiny')", acc)
        await conn.execute(
            "INSERT INTO api_keys (id, account_id, name, prefix, secret_hash, scopes, rate_limit)"
            " VALUES ($1, $2, 'ci', '0123abcd', '\\x01'::bytea, '{messages:send}', 60)", key, acc)
        await conn.execute(
            "INSERT INTO devices (id, account_id, name, token_prefix, token_hash, health,"
            " online_node, last_seen_at) VALUES ($1, $2, 'pixel', 'feedbeef', '\\x02'::bytea,"
            " '{\"battery\": 80}', 'node-a', now())", dev, acc)
        await conn.execute(
            "INSERT INTO messages (id, account_id, device_id, recipient, body, status)"
            " VALUES ($1, $2, $3, '+15550100', 'hello', 'delivered')", msg, acc, dev)
        await conn.execute(
            "INSERT INTO message_history (message_id, status, device_id) VALUES"
            " ($1, 'queued', NULL), ($1, 'sent', $2), ($1, 'delivered', $2)", msg, dev)
        await conn.execute(
            "INSERT INTO idempotency_keys (account_id, key, request_hash, message_id, response)"
            " VALUES ($1, 'k1', '\\x03'::bytea, $2, '\\x04'::bytea)", acc, msg)
        before = await _rows(conn)
        assert await migrate.check(conn) == 0

        assert await migrate.migrate(conn) == [m.version for m in migrate.discover()]

        assert (await _recorded(conn))[0] == (1, "initial")
        after = await _rows(conn)
        # Every row and value that was there is still there; later migrations
        # only add columns (with their defaults) and tables.
        assert {t: [{k: r[k] for k in before[t][0]} for r in rows] if before[t] else rows
                for t, rows in after.items()} == before
        assert [r["transport"] for r in after["devices"]] == ["websocket"]  # 0002's default
        assert len(before["message_history"]) == 3 and len(before["plans"]) == 2
        # 0004/0005: this month's usage from its messages (one), the rest of
        # the plan (10) shared out over the stripes.
        assert tuple(await conn.fetchrow(
            "SELECT count(*), sum(used), sum(cap), min(sized_for) FROM account_usage"
            " WHERE account_id = $1", acc)) == (store.STRIPES, 1, 10, 10)
    finally:
        await conn.close()
    # And it ends with the very schema a fresh database gets.
    fresh = await scratch()
    conn = await asyncpg.connect(fresh)
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()
    adopted, made = [await asyncio.to_thread(dump_schema.dump, d) for d in (dsn, fresh)]
    assert adopted == made


# --- a database newer than the code -----------------------------------------


@pytest.fixture
async def too_new(scratch: Scratch) -> str:
    dsn = await scratch()
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.migrate(conn)
        await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
    finally:
        await conn.close()
    return dsn


def _newer_message() -> str:
    known = migrate.discover()[-1].version
    return (f"the database is at schema version 999 but this smsdora knows only up to"
            f" {known}: upgrade smsdora (or point it at another database)")


async def test_check_and_migrate_refuse_a_database_newer_than_the_code(too_new: str) -> None:
    conn = await asyncpg.connect(too_new)
    try:
        for attempt in (migrate.check, migrate.migrate):
            with pytest.raises(migrate.SchemaTooNew) as caught:
                await attempt(conn)
            assert str(caught.value) == _newer_message()
        assert [v for v, _ in await _recorded(conn)][-1] == 999  # nothing touched
    finally:
        await conn.close()


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["migrate"]])
def test_serve_and_migrate_commands_refuse_a_newer_database(
        command: list[str], too_new: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", too_new)
    monkeypatch.setenv("SMSDORA_HOME", str(tmp_path))
    assert cli.main(command) == 2  # before serve listens
    assert capsys.readouterr().err == f"smsdora {command[0]}: {_newer_message()}\n"


# --- the migrations directory -----------------------------------------------


def test_the_migrations_are_numbered_from_1_without_gaps_or_duplicates() -> None:
    found = migrate.discover()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].name == "initial"


@pytest.mark.parametrize(("files", "complaint"), [
    (["0001_a.sql", "0003_c.sql"], "[2] missing"),
    (["0001_a.sql", "0002_b.sql", "0002_again.sql"], "[2] more than once"),
    (["0002_b.sql"], "[1] missing"),
    (["0001_a.sql", "2_b.sql"], "NNNN_name.sql"),
    ([], "found none"),
])
def test_a_broken_migrations_directory_is_refused(tmp_path: Path, files: list[str],
                                                  complaint: str) -> None:
    for name in files:
        (tmp_path / name).write_text("SELECT 1;\n")
    with pytest.raises(migrate.MigrationsBroken, match=complaint.replace("[", r"\[")):
        migrate.discover(tmp_path)
