"""The asyncpg pool, connections, and what the rest of store/ shares."""

from __future__ import annotations

from pathlib import Path
from typing import TypeAlias, TypeVar

import asyncpg
import asyncpg.pool
import msgspec

# The full current schema for readers, dumped from a freshly migrated
# database (`make schema`, broker/store/dump_schema.py); the database itself
# is built by broker/store/migrate.py.
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schema.sql"

T = TypeVar("T")
_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()

# What every query function takes: the pool (one statement, its own
# transaction) or a connection (inside the caller's transaction); `Conn`
# where the function opens a transaction of its own.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Db: TypeAlias = "Pool | Conn"


# Two transactions that waited for each other, one of them ended by
# PostgreSQL: nothing of it was written, and the same statement again (alone,
# outside a transaction) goes through. The edge answers 503 with Retry-After.
DATABASE_BUSY: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# What "the database cannot be reached" looks like from asyncpg: the edge
# answers these with 503 in the error shape, never a bare 500.
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError, ConnectionError, OSError, TimeoutError,
    # A session ended by the server mid-query (fast shutdown) can leave the
    # protocol in an impossible state ("cannot switch to state ..."); the
    # pool discards such a connection when it is released.
    asyncpg.InternalClientError,
    asyncpg.TooManyConnectionsError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", format="text",
        encoder=lambda v: _json_encoder.encode(v).decode(), decoder=_json_decoder.decode,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool connections keep no session state (no SET, LISTEN, session locks
    or cursors: LISTEN has its own connection), so the default reset query
    (`RESET ALL; UNLISTEN *; ...`, a second round trip on every release,
    about 7 % of a send's CPU in `make bench`) is skipped. asyncpg still rolls
    back a transaction left open."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_keep_session,
        # Fail fast when the database is away: callers answer 503 in seconds
        # rather than hang (connect timeout; per-statement timeout).
        timeout=3, command_timeout=4, max_inactive_connection_lifetime=300,
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, timeout=5)
    await _init_connection(conn)
    return conn


def rows_of(cls: type[T], records: list[asyncpg.Record]) -> list[T]:
    return [cls(**dict(r)) for r in records]


async def ping(db: Db) -> None:
    await db.fetchval("SELECT 1")
