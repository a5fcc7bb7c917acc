"""The send's write, one row a statement against sends committed in groups
(broker/delivery/batch.py), on its own: `python -m bench.sends [--quick]`.
Not part of `make bench`: its figures are in docs/PERFORMANCE.md, "Sends
committed in groups".

An embedded PostgreSQL in a temp dir, the schema, one account with a
device, an API key and an opened month (the rows a send checks and takes
its quota unit from). `--writers` tasks in this process write `--rows`
messages as fast as they can, each awaiting its own row as a request does:
- **one by one**: `store.insert_message` on the pool, a statement and a
  commit per message (the send path before the batch);
- **batched**: `SendBatch.insert`, the rows of a loop turn in one statement
  and one commit (the send path now).
Per run: rows/s, the rows a statement carried, and CPU per row of
PostgreSQL (every process of the server, from /proc) and of this process
(the broker's side of the write: asyncpg, the batching).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.database import Postgres
from bench.procs import cpu_s
from broker import keys, store
from broker.delivery.batch import SendBatch


def server_pids(pgdata: Path) -> list[int]:
    """The postmaster and every backend of it (they come and go with the pool)."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(entry.name))
    return pids


def server_cpu(pgdata: Path) -> float:
    total = 0.0
    for pid in server_pids(pgdata):
        try:
            total += cpu_s(pid)
        except OSError:
            pass
    return total


async def seed(db: store.Conn) -> tuple[store.NewMessage, store.Quota]:
    acc = await store.create_account(db, f"{uuid.uuid4().hex[:10]}@bench", "default", None)
    full, prefix = keys.make_secret(keys.TOKEN_KIND)
    dev = await store.insert_device(db, acc.id, "phone", prefix, keys.digest(b"b", full), 0)
    kfull, kprefix = keys.make_secret(keys.KEY_KIND)
    key = await store.insert_key(db, acc.id, "k", kprefix, keys.digest(b"b", kfull),
                                 ["messages:send"], None, None)
    month = dt.date.today().replace(day=1)
    quota = store.Quota(month, 10_000_000)
    await store.open_month(db, acc.id, month, quota.limit)
    now = dt.datetime.now(dt.UTC)
    return store.NewMessage(uuid.uuid4(), acc.id, dev.id, "+16502530000", "Your code is 4829",
                            "dispatching", None, now, key.id, key.prefix, quota), quota


async def run_one(pool: store.Pool, pgdata: Path, template: store.NewMessage, rows: int,
                  writers: int, batched: bool) -> dict[str, Any]:
    batch = SendBatch(pool)
    left = rows

    async def writer() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            r = template._replace(id=uuid.uuid4(), created_at=dt.datetime.now(dt.UTC))
            if batched:
                got = await batch.insert(r)
            else:
                got = await store.insert_row(pool, r)
            assert got in (store.Inserted.WRITTEN, store.Inserted.CONTENDED, None), got

    pg0, me0, t0 = server_cpu(pgdata), cpu_s(os.getpid()), time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    wall = time.perf_counter() - t0
    pg1, me1 = server_cpu(pgdata), cpu_s(os.getpid())
    return {"rows_per_s": round(rows / wall), "pg_us_per_row": round((pg1 - pg0) / rows * 1e6),
            "client_us_per_row": round((me1 - me0) / rows * 1e6),
            "rows_per_statement": (round(rows / batch.statements, 1) if batched and batch.statements
                                   else 1.0)}


async def measure(dsn: str, pgdata: Path, rows: int, writers: int,
                  rounds: int) -> dict[str, Any]:
    db = await store.connect(dsn)
    try:
        template, _ = await seed(db)
    finally:
        await db.close()
    pool = await store.create_pool(dsn, min_size=writers, max_size=writers)
    out: dict[str, list[dict[str, Any]]] = {"one_by_one": [], "batched": []}
    try:
        await run_one(pool, pgdata, template, rows // 10, writers, True)  # warm-up
        for _ in range(rounds):  # alternating, so that drift hits both
            out["one_by_one"].append(await run_one(pool, pgdata, template, rows, writers, False))
            out["batched"].append(await run_one(pool, pgdata, template, rows, writers, True))
    finally:
        await pool.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sends")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=0)
    parser.add_argument("--writers", type=int, default=64, help="sends in flight at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = args.rows or (2_000 if args.quick else 20_000)
    with tempfile.TemporaryDirectory(prefix="smsdora-bench-sends-") as tmp:
        pg = Postgres(Path(tmp) / "pgdata")
        try:
            dsn = urlunsplit(urlsplit(pg.start())._replace(path="/postgres"))
            asyncio.run(_migrate(dsn))
            result = asyncio.run(measure(dsn, pg.pgdata, rows, args.writers, args.rounds))
        finally:
            pg.stop()
    print(f"the send's write: {rows:,} rows a run, {args.writers} at once, {args.rounds} rounds")
    print(f"{'write':<12}{'rows/s':>9}{'PG µs/row':>11}{'client µs/row':>15}{'rows/stmt':>11}")
    for name, runs in result.items():
        for r in runs:
            print(f"{name:<12}{r['rows_per_s']:>9,}{r['pg_us_per_row']:>11}"
                  f"{r['client_us_per_row']:>15}{r['rows_per_statement']:>11}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


async def _migrate(dsn: str) -> None:
    db = await store.connect(dsn)
    try:
        await store.migrate.migrate(db)
    finally:
        await db.close()


if __name__ == "__main__":
    main()
