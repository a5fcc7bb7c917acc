"""The dashboard phase: how long a page of the dashboard (CONTRACT section
11) takes to render for an account with 10,000 messages, in a broker of its
own (bench/serve_with_gc.py, as shipped).

One account (the bench plan, no limits) with `devices` phones and
`messages` messages written straight into PostgreSQL, as the send path
leaves them over a month: most delivered, some failed, some still queued or
sent, each with its history rows (queued, dispatching, sending, sent,
delivered or failed), created one every few minutes back from now. The
account has no webhook endpoint, so the history rows write no outbox
events. A session row is written for it as a login would (store/sessions.py),
and its cookie sent with every request: the bench measures the pages, not
argon2.

Then, one request after another on one keep-alive connection (a person
clicking, not a load test): `warmup` requests unmeasured, then `requests`
of each page, and per page p50 / p99 / max of request -> whole body read:
- the list page, `/dashboard/messages` (the first page, newest first);
- a filtered list, `/dashboard/messages?status=failed` (the index on
  (account, status, seq) walked for the rarer status);
- the oldest page, `/dashboard/messages?cursor=SEQ` starting at the 100th
  oldest message (the keyset cursor "Older messages" follows, at the far
  end of the month);
- the detail page, `/dashboard/messages/{id}` with its history timeline, for
  ids drawn at random from the whole month (cold and warm rows alike).
Every answer must be a 200 naming what it should (the list: the newest
message's recipient; the detail: its own id), or the phase fails.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import secrets
import time
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import httpx

from bench import database
from bench.procs import free_port, wait_port
from bench.sse import percentiles
from broker import keys, store
from broker.store import sessions

if TYPE_CHECKING:
    from bench.run import Bench

EMAIL = "bench-dashboard@example.com"
COOKIE = "smsdora_session"  # broker/dashboard/web.py SESSION_COOKIE


@dataclass(frozen=True)
class DashboardSizes:
    messages: int
    devices: int
    warmup: int  # unmeasured requests of each page first
    requests: int  # measured, per page


def sizes(quick: bool) -> DashboardSizes:
    if quick:
        return DashboardSizes(messages=10_000, devices=3, warmup=5, requests=30)
    return DashboardSizes(messages=10_000, devices=3, warmup=20, requests=200)


@dataclass(frozen=True)
class Seeded:
    account: uuid.UUID
    cookie: str
    ids: list[str]  # every message's id, oldest first
    newest_recipient: str
    newest_failed_recipient: str
    recipient_of_seq_100: str  # the 100th oldest message's
    oldest_cursor: int  # a cursor whose page starts at it


# Where a month of messages ends: delivered most, failed some, a few on the way.
_FINAL = (("delivered", 0.90), ("failed", 0.05), ("sent", 0.03), ("queued", 0.02))
_PATH = {"queued": ["queued"], "sent": ["queued", "dispatching", "sending", "sent"],
         "delivered": ["queued", "dispatching", "sending", "sent", "delivered"],
         "failed": ["queued", "dispatching", "sending", "failed"]}


def _status(rng: random.Random) -> str:
    x = rng.random()
    for status, share in _FINAL:
        if x < share:
            return status
        x -= share
    return "delivered"


async def seed(dsn: str, secret: bytes, sz: DashboardSizes) -> Seeded:
    db = await store.connect(dsn)
    rng = random.Random(13)
    try:
        account = uuid.uuid4()
        await db.execute("INSERT INTO accounts (id, email, plan, created_at)"
                         " VALUES ($1, $2, $3, now() - interval '31 days')",
                         account, EMAIL, database.PLAN)
        devices = []
        for i in range(sz.devices):
            full, prefix = keys.make_secret(keys.TOKEN_KIND)
            row = await store.insert_device(db, account, f"Pixel {i + 1}", prefix,
                                            keys.digest(secret, full), 30)
            devices.append(row.id)
        now = dt.datetime.now(dt.UTC)
        step = dt.timedelta(days=30) / sz.messages
        messages, history = [], []
        for n in range(sz.messages):
            mid = uuid.uuid4()
            status = _status(rng)
            device = None if status == "queued" else devices[n % len(devices)]
            created = now - (sz.messages - n) * step
            error = "RESULT_ERROR_GENERIC_FAILURE" if status == "failed" else None
            recipient = f"+1650253{n % 10_000:04d}"
            path = _PATH[status]
            last = created + dt.timedelta(seconds=len(path))
            messages.append((mid, account, device, recipient,
                             f"Your code is {rng.randrange(10_000):04d}", status, error, created,
                             last))
            for k, step_status in enumerate(path):
                history.append((mid, step_status, created + dt.timedelta(seconds=k),
                                None if step_status == "queued" else device,
                                error if step_status == "failed" else None))
        await db.copy_records_to_table(
            "messages", columns=["id", "account_id", "device_id", "recipient", "body",
                                 "status", "error", "created_at", "updated_at"],
            records=messages)
        # COPY fires no statement trigger per row batch the way INSERT does;
        # the account has no endpoint, so the trigger would write nothing anyway.
        await db.copy_records_to_table(
            "message_history", columns=["message_id", "status", "at", "device_id", "error"],
            records=history)
        await db.execute("ANALYZE messages; ANALYZE message_history")
        cookie = secrets.token_urlsafe(32)
        await sessions.create_session(db, cookie, account, secrets.token_urlsafe(24), 3600)
        failed = [m for m in messages if m[5] == "failed"]
        # seq is the table's own sequence (other phases wrote messages first),
        # taken by COPY in row order: the 100th oldest message's, for the cursor.
        old = await db.fetchrow("SELECT seq, recipient FROM messages WHERE account_id = $1"
                                " ORDER BY seq LIMIT 1 OFFSET 99", account)
        return Seeded(account, cookie, [str(m[0]) for m in messages], messages[-1][3],
                      failed[-1][3], old["recipient"], int(old["seq"]) + 1)
    finally:
        await db.close()


def measure(http: httpx.Client, paths: list[str], must: list[str], warmup: int
            ) -> dict[str, Any]:
    """GET each path in turn, the first `warmup` unmeasured; ms per request
    (request sent -> whole body read)."""
    took: list[float] = []
    size = 0
    for i, (path, text) in enumerate(zip(paths, must)):
        t0 = time.perf_counter_ns()
        r = http.get(path)
        body = r.content
        t1 = time.perf_counter_ns()
        if r.status_code != 200 or text.encode() not in body:
            raise RuntimeError(f"dashboard bench: GET {path} answered {r.status_code}"
                               f" without {text!r}: {body[:300]!r}")
        if i >= warmup:
            took.append((t1 - t0) / 1e6)
            size = max(size, len(body))
    return {**percentiles(took), "bytes": size}


def phase(bench: Bench, quick: bool) -> dict[str, Any]:
    sz = sizes(quick)
    started = time.monotonic()
    seeded = asyncio.run(seed(bench.dsn, bench.secret.encode(), sz))
    seeded_s = time.monotonic() - started
    port = free_port()
    proc, _ = bench.start_broker(port)
    out: dict[str, Any] = {"sizes": asdict(sz), "seed_s": seeded_s}
    rng = random.Random(11)
    try:
        wait_port(port, proc, 60)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30,
                          cookies={COOKIE: seeded.cookie}) as http:
            n = sz.warmup + sz.requests
            out["list"] = measure(http, ["/dashboard/messages"] * n,
                                  [seeded.newest_recipient] * n, sz.warmup)
            out["list_failed"] = measure(http, ["/dashboard/messages?status=failed"] * n,
                                         [seeded.newest_failed_recipient] * n, sz.warmup)
            oldest = f"/dashboard/messages?cursor={seeded.oldest_cursor}"
            out["list_oldest"] = measure(http, [oldest] * n,
                                         [seeded.recipient_of_seq_100] * n, sz.warmup)
            ids = [rng.choice(seeded.ids) for _ in range(n)]
            out["detail"] = measure(http, [f"/dashboard/messages/{i}" for i in ids], ids,
                                    sz.warmup)
    finally:
        proc.stop()
    out["elapsed_s"] = time.monotonic() - started
    return out

