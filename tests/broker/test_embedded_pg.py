"""broker.embedded_pg: a configured URL wins; otherwise a real embedded server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from broker.ops import embedded_pg
from broker.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_configured_url_is_returned_unchanged(tmp_path: Path) -> None:
    url = "postgresql://someone:secret@db.example:6543/elsewhere?sslmode=require"
    settings = Settings(home=tmp_path / "home", database_url=url)
    assert embedded_pg.database_url(settings) == url
    assert not (tmp_path / "home").exists()  # nothing started, nothing created


async def _select_one(dsn: str) -> tuple[int, str]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval("SELECT 1"), await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()


def test_embedded_server_starts_and_attaches(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    dsn = embedded_pg.database_url(settings)
    assert asyncio.run(_select_one(dsn)) == (1, "smsdora")
    pgdata = tmp_path / "home" / "pg"
    pid = embedded_pg.server_pid(pgdata)

    started = time.monotonic()
    assert embedded_pg.database_url(settings) == dsn
    assert time.monotonic() - started < 1.0
    assert embedded_pg.server_pid(pgdata) == pid

    # Another process (as `smsdora keys create` while `serve` runs) attaches to
    # the same server and, on exit, leaves it running for us.
    code = (
        "from pathlib import Path; from broker.ops import embedded_pg;"
        "from broker.settings import Settings;"
        f"print(embedded_pg.database_url(Settings(home=Path({str(settings.home)!r}))))"
    )
    child = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=30, check=True,
    )
    assert child.stdout.strip() == dsn
    assert embedded_pg.server_pid(pgdata) == pid
    assert asyncio.run(_select_one(dsn)) == (1, "smsdora")


def test_deep_data_dir_gets_its_socket_in_the_runtime_dir(tmp_path: Path) -> None:
    # `<pgdata>/.s.PGSQL.5432` past the 107-byte sun_path limit: the library
    # puts the socket under the runtime dir, which must therefore be short.
    home = tmp_path / ("d" * 100) / "home"
    dsn = embedded_pg.database_url(Settings(home=home))
    assert f"host={embedded_pg.runtime_dir()}/" in dsn
    assert asyncio.run(_select_one(dsn)) == (1, "smsdora")


async def test_session_database_has_schema_and_db_empties_it(db: asyncpg.Connection) -> None:
    # The shared fixtures every store/e2e test stands on (tests/conftest.py).
    from tests.conftest import TEST_DATABASE

    assert await db.fetchval("SELECT current_database()") == TEST_DATABASE
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0
    await db.execute("UPDATE plans SET max_devices = 1 WHERE name = 'default'")
    await db.execute("INSERT INTO plans VALUES ('tiny', 10, 1)")
    await db.execute(
        "INSERT INTO accounts (id, email) VALUES ('00000000-0000-0000-0000-000000000001', 'a@x')"
    )


async def test_db_fixture_reset_what_the_last_test_left(db: asyncpg.Connection) -> None:
    # Runs after the test above (file order): its rows and plan edits are gone.
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0
    plans = await db.fetch("SELECT name, monthly_messages, max_devices FROM plans")
    assert [tuple(p) for p in plans] == [("default", 1000000, 1000)]
