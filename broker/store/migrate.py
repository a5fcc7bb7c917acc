"""Numbered schema migrations: `migrations/NNNN_name.sql`, applied in order.

`migrate` applies the ones a database lacks, each in its own transaction,
and records each in `schema_migrations` in that same transaction, so a
migration is either wholly applied and recorded or not at all. A database
recorded past the newest file here was migrated by a newer smsdora: this
one refuses it (`SchemaTooNew`) rather than run against a schema it does
not know.

A database made by the single schema.sql of earlier releases has the tables
but no `schema_migrations`. It is adopted as version 1: 0001 is that schema
written idempotently (IF NOT EXISTS, ON CONFLICT DO NOTHING, OR REPLACE), so
applying it there changes nothing and loses nothing, and version 1 is
recorded as for an empty database. Later migrations run once each and need
not be idempotent. A migration runs inside a transaction, so it cannot use
statements that refuse one (`CREATE INDEX CONCURRENTLY`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from broker.errors import BrokerError
from broker.store.pool import Conn

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_NAME = re.compile(r"([0-9]{4})_([a-z0-9_]+)\.sql")
# The id the schema.sql of earlier releases was applied under, so that an
# older process starting during a rolling upgrade waits for this one too.
_LOCK = 0x5D5D0001

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def sql(self) -> str:
        return self.path.read_text()


class MigrationsBroken(Exception):
    """The migrations directory is wrong (a gap, a duplicate number, a
    misnamed file): a bug in this release, caught by tests/broker/test_migrate.py."""


class SchemaTooNew(BrokerError):
    """The database was migrated by a newer smsdora than this one."""

    def __init__(self, version: int, known: int) -> None:
        super().__init__(
            f"the database is at schema version {version} but this smsdora knows only up"
            f" to {known}: upgrade smsdora (or point it at another database)")
        self.version = version
        self.known = known


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in `directory`, in order: numbered 1, 2, 3, ... with no
    gap and no number twice, else `MigrationsBroken`."""
    found: list[Migration] = []
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationsBroken(f"{path}: a migration is named NNNN_name.sql"
                                   " (four digits, then lower case, digits and _)")
        found.append(Migration(int(match[1]), match[2], path))
    found.sort(key=lambda m: m.version)
    numbers = [m.version for m in found]
    twice = sorted(n for n, count in Counter(numbers).items() if count > 1)
    missing = sorted(set(range(1, max(numbers, default=0) + 1)) - set(numbers))
    if not found or twice or missing:
        raise MigrationsBroken(
            f"the migrations in {directory} must be numbered 1, 2, 3, ... once each:"
            f" found {numbers or 'none'}"
            + (f", {twice} more than once" if twice else "")
            + (f", {missing} missing" if missing else ""))
    return found


async def _recorded(conn: Conn) -> set[int]:
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return set()  # an empty database, or one made by the old schema.sql
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


def _refuse_newer(recorded: set[int], known: list[Migration]) -> int:
    version = max(recorded, default=0)
    if version > known[-1].version:
        raise SchemaTooNew(version, known[-1].version)
    return version


async def check(conn: Conn) -> int:
    """The database's schema version (0 before any migration, which includes a
    database made by the old schema.sql); `SchemaTooNew` past what this code
    knows. Reads only."""
    return _refuse_newer(await _recorded(conn), discover())


async def migrate(conn: Conn) -> list[int]:
    """Apply the missing migrations in order; return the versions applied.

    Every step is one transaction that takes the advisory lock first and only
    then reads what is recorded, so two processes migrating at once queue on
    the lock: one applies a step, the other then finds it recorded and goes
    on to the next or stops. A transaction-level lock leaves nothing behind
    on the connection, even when the call is cancelled halfway.
    """
    known = discover()
    applied: list[int] = []
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            await conn.execute(_CREATE_TABLE)
            recorded = await _recorded(conn)
            _refuse_newer(recorded, known)
            missing = [m for m in known if m.version not in recorded]
            if not missing:
                return applied
            step = missing[0]
            await conn.execute(step.sql())
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                               step.version, step.name)
        applied.append(step.version)
