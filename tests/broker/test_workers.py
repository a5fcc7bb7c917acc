"""broker/ops/workers.py: `smsdora serve --workers N`, N broker nodes on one
port (SO_REUSEPORT) under one supervisor; a real `python -m broker serve
--workers 2` on the suite's PostgreSQL, and the supervisor's restart rule
with real processes that die."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from broker import store
from broker.cli import CliError, main, remote
from broker.cli.parser import build_parser
from broker.ops.workers import Deaths, Supervisor, WorkerSpec, specs
from broker.settings import Settings
from tests.conftest import free_port
from tests.e2e.conftest import SECRET, Account, Phone, wait_for

pytestmark = pytest.mark.timeout(60)
TOKEN = "workers-metrics-token"
WAIT_S = 20.0


# --- the rules, without processes -------------------------------------------


def test_a_worker_dying_waits_longer_each_time_and_the_fifth_within_30_s_gives_up() -> None:
    deaths = Deaths()
    assert [deaths.died(t) for t in (0.0, 1.0, 2.0, 3.0)] == [0.5, 1.0, 2.0, 4.0]
    assert deaths.died(29.0) is None
    # Deaths older than the window are forgotten: a worker that ran a while
    # starts again after the first delay.
    calm = Deaths()
    assert [calm.died(t) for t in (0.0, 31.0, 62.0, 93.0, 124.0, 155.0)] == [0.5] * 6
    capped = Deaths(limit=20, max_s=3.0)
    assert [capped.died(float(t)) for t in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_workers_are_named_after_the_node_with_a_metrics_port_each() -> None:
    settings = Settings(node="gw", metrics_addr=("127.0.0.1", 9464))
    assert specs(settings, 3) == [WorkerSpec(1, "gw-1", "127.0.0.1:9464"),
                                  WorkerSpec(2, "gw-2", "127.0.0.1:9465"),
                                  WorkerSpec(3, "gw-3", "127.0.0.1:9466")]
    assert specs(settings.with_(metrics_addr=("::1", 9000)), 2)[1].metrics_addr == "[::1]:9001"
    assert [s.metrics_addr for s in specs(settings.with_(metrics_addr=None), 2)] == ["", ""]


def test_workers_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def workers(*argv: str) -> int:
        return int(build_parser(Settings()).parse_args(["serve", *argv]).workers)

    assert workers() == 1  # one process, as before --workers
    assert workers("--workers", "3") == 3
    assert workers("--workers", "0") == workers("--workers", "auto") == (os.cpu_count() or 1)
    monkeypatch.setenv("SMSDORA_WORKERS", "4")
    assert workers() == 4 and workers("--workers", "2") == 2
    with pytest.raises(SystemExit):
        workers("--workers", "many")


def test_serve_workers_on_a_port_in_use_exits_1_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A listener in an SO_REUSEPORT group, as the workers of another
    # `serve --workers` are: new workers would silently join it.
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        monkeypatch.setenv("SMSDORA_HOME", str(tmp_path))
        monkeypatch.delenv("DATABASE_URL", raising=False)
        assert main(["serve", "--port", str(port), "--workers", "2"]) == 1
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert not (tmp_path / "pg").exists()  # the embedded PostgreSQL was not started


def test_a_worker_that_keeps_dying_stops_the_supervisor_with_status_1(
        caplog: pytest.LogCaptureFixture) -> None:
    crashing = [WorkerSpec(1, "x-1", ""), WorkerSpec(2, "x-2", "")]
    supervisor = Supervisor(crashing, lambda _spec: [sys.executable, "-c", "raise SystemExit(3)"],
                            lambda _spec: dict(os.environ),
                            deaths=lambda: Deaths(first_s=0.01, max_s=0.01))
    with caplog.at_level(logging.INFO, logger="smsdora.workers"):
        assert supervisor.run() == 1
    records = [r for r in caplog.records if r.name == "smsdora.workers"]
    gave_up = [r.getMessage() for r in records if r.levelno == logging.ERROR]
    assert any("died 5 times within 30 s, last with status 3: stopping every worker" in m
               for m in gave_up), gave_up
    restarts = [r for r in records if r.getMessage() == "worker died: starting it again"]
    assert len(restarts) >= 4 and {r.__dict__["exit"] for r in restarts} == {"status 3"}


class _Rollback(Exception):
    pass


async def test_a_worker_serves_only_the_schema_its_code_knows(db: asyncpg.Connection) -> None:
    """A worker the supervisor starts again runs the code on disk then: an
    upgrade installed meanwhile, not yet migrated, must not serve."""
    known = store.migrate.discover()[-1].version
    args = build_parser(Settings()).parse_args(["serve"])
    assert (await remote._same_schema(db, args, Settings())).exit_code == 0
    newer = (f"INSERT INTO schema_migrations (version, name) VALUES ({known + 1},"
             " 'from_a_newer_release')")
    older = f"DELETE FROM schema_migrations WHERE version = {known}"
    # SchemaTooNew is exit 2 through run_db, as for serve; the older schema
    # is the worker's own refusal.
    for change, error, said in ((newer, store.SchemaTooNew, "knows only up to"),
                                (older, CliError, "restart serve to migrate")):
        with pytest.raises(_Rollback):
            async with db.transaction():
                await db.execute(change)
                with pytest.raises(error, match=said):
                    await remote._same_schema(db, args, Settings())
                raise _Rollback


# --- a real `serve --workers 2` ---------------------------------------------


def _metrics_ports() -> int:
    """A base port whose next one is free too (the second worker's)."""
    while True:
        base = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base


class Logs:
    """The supervisor's stderr, which its workers share: JSON lines."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            text = line.decode(errors="replace")
            self.raw.append(text)
            try:
                self.lines.append(json.loads(text))
            except ValueError:
                pass

    def started(self, worker: str) -> list[int]:
        return [line["pid"] for line in list(self.lines)
                if line.get("msg") == "worker started" and line.get("worker") == worker]


@pytest.fixture
def served(db: asyncpg.Connection, database_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str,
                                                                  int, int, Logs]]:
    # After `db`, which empties `nodes`: the workers' leases are not wiped.
    node, port, metrics = f"w{os.getpid()}", free_port(), _metrics_ports()
    env = {**os.environ, "DATABASE_URL": database_url, "SMSDORA_HOME": str(tmp_path),
           "SMSDORA_SECRET": SECRET.decode(), "SMSDORA_NODE": node, "SMSDORA_LEASE_SECONDS": "3",
           "SMSDORA_METRICS_ADDR": f"127.0.0.1:{metrics}", "SMSDORA_METRICS_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "broker", "serve", "--port", str(port),
                             "--workers", "2"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    logs = Logs(proc.stderr)
    try:
        yield proc, node, port, metrics, logs
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _leases(db: asyncpg.Connection, names: list[str]) -> dict[str, Any]:
    rows = await db.fetch("SELECT name, epoch FROM nodes WHERE name = ANY($1)", names)
    return {r["name"]: r["epoch"] for r in rows}


async def _node_of_a_new_connection(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        r = await http.get("/health", headers={"Authorization": f"Bearer {TOKEN}"})
        return str(r.json()["node"])


async def _answering(url: str, wanted: set[str]) -> set[str]:
    """The nodes that answered new connections, until `wanted` all did (or 200 tried)."""
    seen: set[str] = set()
    for _ in range(200):
        seen.add(await _node_of_a_new_connection(url))
        if wanted <= seen:
            break
    return seen


async def test_two_workers_one_port_restarted_when_killed_stopped_by_sigterm(
        db: asyncpg.Connection,
        served: tuple[subprocess.Popen[bytes], str, int, int, Logs]) -> None:
    proc, node, port, metrics, logs = served
    url = f"http://127.0.0.1:{port}"
    names = [f"{node}-1", f"{node}-2"]

    async def leased() -> bool:
        assert proc.poll() is None, "".join(logs.raw[-30:])
        return set(await _leases(db, names)) == set(names)

    await wait_for(leased, WAIT_S, "both workers' leases")
    # Both answer on the one port, and each has a metrics listener of its own.
    await wait_for(lambda: _reachable(url), WAIT_S, "the port")
    assert await _answering(url, set(names)) == set(names)
    assert [await _node_of_a_new_connection(f"http://127.0.0.1:{p}")
            for p in (metrics, metrics + 1)] == names

    # A phone on one worker is given sends made on the other (the cross-node path).
    acc = await store.create_account(db, "owner@example.com", "default", None)
    account = Account(id=acc.id, email=acc.email, key="", db=db)
    key = await account.make_key(["messages:send"])
    device = await account.make_device(send_rate=0)
    ws = await connect(f"ws://127.0.0.1:{port}/devices/ws", compression=None, open_timeout=5,
                       additional_headers={"Authorization": f"Bearer {device.token}"})
    phone = Phone(ws=ws, device=device)
    await phone.send({"type": "hello", "protocol": 1, "appVersion": "test/1"})
    await phone.expect("welcome")

    async def held() -> bool:
        return await db.fetchval("SELECT node FROM presence WHERE device_id = $1",
                                 uuid.UUID(device.id)) is not None

    await wait_for(held, WAIT_S, "the phone's presence row")
    holder = await db.fetchval("SELECT node FROM presence WHERE device_id = $1",
                               uuid.UUID(device.id))
    assert holder in names
    took: list[str] = []
    for _ in range(50):
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:  # a new connection
            at = (await http.get("/health", headers={"Authorization": f"Bearer {TOKEN}"})
                  ).json()["node"]
            r = await http.post("/messages/send", headers={"x-api-key": key},
                                json={"recipient": "+16502530000", "message": "hi"})
        assert r.status_code == 201, r.text
        assert (await phone.expect("send", timeout=10))["id"] == r.json()["data"]["id"]
        took.append(at)
        if at != holder:
            break
    assert took[-1] != holder, f"50 sends, every one on the phone's worker: {took}"

    # SIGKILL of the worker the phone is not on: started again, under its name.
    other = next(n for n in names if n != holder)
    killed = logs.started(other)[-1]
    epoch = (await _leases(db, names))[other]
    os.kill(killed, signal.SIGKILL)

    async def restarted() -> bool:
        assert proc.poll() is None, "".join(logs.raw[-30:])
        pids = logs.started(other)
        return pids[-1] != killed and (await _leases(db, names)).get(other) not in (None, epoch)

    await wait_for(restarted, WAIT_S, f"{other} started again with a lease of its own")
    assert any(line.get("msg") == "worker died: starting it again" and line["pid"] == killed
               and line["exit"] == "signal SIGKILL" for line in logs.lines)
    assert other in await _answering(url, {other})
    workers = [logs.started(n)[-1] for n in names]

    # SIGTERM to the supervisor: every worker drains (the phone is told 1012), all exit, 0.
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, WAIT_S) == 0, "".join(logs.raw[-30:])
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1012
    assert await _leases(db, names) == {}  # released, not left to lapse
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not any("Traceback" in line for line in logs.raw)


async def _reachable(url: str) -> bool:
    try:
        await _node_of_a_new_connection(url)
    except httpx.TransportError:
        return False
    return True
