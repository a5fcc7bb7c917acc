"""broker/cluster/: the bus between nodes, one suite run against each
implementation (as tests/e2e runs the delivery contract per transport):
PostgreSQL LISTEN/NOTIFY on the real test database, and NATS on a real
`nats-server` (Debian's, `make nats`) that the suite starts on a free port.
Two bus instances in one process stand for two nodes."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from broker.cluster import make_bus
from broker.cluster.bus import MAX_PAYLOAD, MAX_TOPIC, BadMessage, Bus
from broker.cluster.nats_bus import NatsBus
from broker.cluster.pg_bus import PgBus
from broker.settings import Settings
from broker.store.listener import Listener
from tests.conftest import NatsServer, free_port

pytestmark = pytest.mark.timeout(30)


async def until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    assert shutil.which("nats-server") or shutil.which("/usr/sbin/nats-server"), \
        "nats-server is missing: `make nats` installs Debian's"
    server = NatsServer()
    server.start()
    yield server
    server.kill()


class Cluster:
    """Nodes on one bus implementation, and a way to break what links them."""

    def __init__(self, kind: str, database_url: str, nats: NatsServer | None) -> None:
        self.kind = kind
        self.database_url = database_url
        self.nats = nats
        self.buses: list[Bus] = []
        self.statements: list[str] = []  # PostgreSQL: every statement a bus's NOTIFY connection ran
        self._listeners: list[Listener] = []
        self._listens = 0  # PostgreSQL: LISTEN connections made
        self._links_before = 0

    def _connected(self) -> None:
        self._listens += 1

    def _links_made(self) -> int:
        if self.kind == "postgres":  # a node's LISTEN connection and its bus's NOTIFY one
            return self._listens + sum(b.connects for b in self.buses)  # type: ignore[attr-defined]
        return sum(b._client.stats["reconnects"] for b in self.buses  # type: ignore[attr-defined]
                   ) + len(self.buses)

    async def node(self, name: str) -> Bus:
        bus: Bus
        if self.kind == "postgres":
            listener = Listener(self.database_url, {}, on_connect=self._connected)
            listener.start()
            self._listeners.append(listener)
            bus = make_bus(Settings(node=name), listener)
            assert isinstance(bus, PgBus)
        else:
            assert self.nats is not None
            bus = make_bus(Settings(node=name, bus="nats", nats_url=self.nats.url), None)  # type: ignore[arg-type]
            assert isinstance(bus, NatsBus)
        await bus.start()
        self.buses.append(bus)
        await asyncio.wait_for(bus.connected.wait(), 10)
        if isinstance(bus, PgBus):
            # Its NOTIFY connection is made at start: every statement on it is seen.
            pg = bus
            await until(lambda: pg._conn is not None, "the NOTIFY connection")
            assert pg._conn is not None
            pg._conn.add_query_logger(lambda q: self.statements.append(q.query))
        return bus

    async def break_links(self, db: asyncpg.Connection) -> None:
        """What a restart of the server between the nodes does to them:
        PostgreSQL ends every session of the database but the test's own
        (the pools' too); nats-server is SIGKILLed."""
        self._links_before = self._links_made()
        if self.kind == "postgres":
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND datname = current_database()")
        else:
            assert self.nats is not None
            self.nats.kill()
            await until(lambda: not any(b.connected.is_set() for b in self.buses), "the links down")

    def mend_links(self) -> None:
        if self.nats is not None and self.nats.proc is None:
            self.nats.start()

    async def relinked(self) -> None:
        """Every node made its link again since `break_links`."""
        per_node = 2 if self.kind == "postgres" else 1
        await until(lambda: self._links_made() == self._links_before + per_node * len(self.buses)
                    and all(b.connected.is_set() for b in self.buses), "every node reconnected")

    async def close(self) -> None:
        for bus in self.buses:
            await bus.stop()
        for listener in self._listeners:
            await listener.stop()


@pytest.fixture(params=["postgres", "nats"])
async def cluster(request: pytest.FixtureRequest, database_url: str,
                  db: asyncpg.Connection) -> AsyncIterator[Cluster]:
    nats = request.getfixturevalue("nats_server") if request.param == "nats" else None
    c = Cluster(request.param, database_url, nats)
    try:
        yield c
    finally:
        await c.close()
        c.mend_links()


async def test_ids_published_on_one_node_reach_the_other(cluster: Cluster) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    at_b: list[bytes] = []
    at_a: list[bytes] = []
    await b.subscribe("node.b", at_b.append)
    await a.subscribe("node.a", at_a.append)
    a.publish("node.b", b"device D job M")
    a.publish("node.b", b'{"device":"7d1c","job":"9f2e"}')
    await until(lambda: len(at_b) == 2, "both wake-ups at b")
    assert at_b == [b"device D job M", b'{"device":"7d1c","job":"9f2e"}']
    b.publish("node.a", "ünïcode".encode())
    await until(lambda: at_a == ["ünïcode".encode()], "the answer at a")
    assert at_b == [b"device D job M", b'{"device":"7d1c","job":"9f2e"}']  # topics stay apart


async def test_a_burst_of_one_loop_turn_arrives_whole(cluster: Cluster) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    got: list[bytes] = []
    await b.subscribe("wake", got.append)
    cluster.statements.clear()
    sent = [f"device-{i} job-{i}".encode() for i in range(1000)]
    for payload in sent:  # one loop turn: no await between them
        a.publish("wake", payload)
    await until(lambda: len(got) == 1000, "1,000 wake-ups")
    assert sorted(got) == sorted(sent)
    if cluster.kind == "postgres":
        # Seen by asyncpg's query logger on the bus's NOTIFY connection.
        await until(lambda: cluster.statements, "the statement logged")
        assert len(cluster.statements) == 1, cluster.statements
        assert "pg_notify" in cluster.statements[0]
        assert isinstance(a, PgBus) and a.statements == 1


async def test_after_the_link_breaks_the_bus_reconnects_and_carries_again(
        cluster: Cluster, db: asyncpg.Connection) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    got: list[bytes] = []
    await b.subscribe("node.b", got.append)
    a.publish("node.b", b"before")
    await until(lambda: got == [b"before"], "the first message")
    await cluster.break_links(db)
    a.publish("node.b", b"while away")  # at most once: may be lost, never raises
    cluster.mend_links()
    await cluster.relinked()
    # A message published after the reconnect arrives (PostgreSQL: the
    # publisher's NOTIFY needs no LISTEN connection, so "while away" may too).
    a.publish("node.b", b"after")
    await until(lambda: got[-1:] == [b"after"], "a message after the reconnect")
    assert set(got) <= {b"before", b"while away", b"after"}


async def test_the_notify_connection_is_the_bus_own_and_comes_back_after_it_drops(
        database_url: str, db: asyncpg.Connection) -> None:
    """PostgreSQL: a node NOTIFYs on a connection of its bus's own (never
    waiting for a pool slot), which commits without waiting for its WAL
    flush; when that connection drops, the bus makes another at once and
    carries on, the node's LISTEN connection untouched."""
    cluster = Cluster("postgres", database_url, None)
    name = f"bus-{uuid.uuid4().hex[:8]}"  # the test database may be shared with others' runs
    try:
        a, b = await cluster.node(f"{name}-a"), await cluster.node(f"{name}-b")
        assert isinstance(a, PgBus)
        got: list[bytes] = []
        await b.subscribe("node.b", got.append)
        a.publish("node.b", b"before")
        await until(lambda: got == [b"before"], "the first message")
        backends = await db.fetch(
            "SELECT pid, application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE $1", f"smsdora {name}-%")
        assert sorted(r["application_name"] for r in backends) == [
            f"smsdora {name}-a", f"smsdora {name}-b"]  # one each, made at start
        assert a._conn is not None and await a._conn.fetchval("SHOW synchronous_commit") == "off"
        listens = cluster._listens
        await db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE application_name = $1", f"smsdora {name}-a")
        await until(lambda: a.connects == 2, "a's NOTIFY connection made again")
        a.publish("node.b", b"after")
        await until(lambda: got == [b"before", b"after"], "a message on the new connection")
        assert a.dropped == 0
        assert cluster._listens == listens  # the LISTEN connections stayed up
    finally:
        await cluster.close()


async def test_a_topic_subscribed_later_is_heard_and_kept_across_reconnects(
        cluster: Cluster, db: asyncpg.Connection) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    got: list[bytes] = []
    await b.subscribe("late", got.append)
    with pytest.raises(ValueError, match="already has a handler"):
        await b.subscribe("late", got.append)
    await cluster.break_links(db)
    cluster.mend_links()
    await cluster.relinked()
    a.publish("late", b"x")
    await until(lambda: got == [b"x"], "the message on the late topic")


@pytest.mark.parametrize(("topic", "payload", "error"), [
    ("t", b"x" * (MAX_PAYLOAD + 1), "at most 7999"),
    ("t", b"a\0b", "NUL"),
    ("t", b"\xff\xfe", "not UTF-8"),
    ("x" * (MAX_TOPIC + 1), b"", f"at most {MAX_TOPIC}"),
    ("", b"", "dot-separated words"),
    ("a..b", b"", "dot-separated words"),
    ("node.*", b"", "dot-separated words"),
    ("node b", b"", "dot-separated words"),
])
async def test_what_the_bus_cannot_carry_is_refused_at_once(
        cluster: Cluster, topic: str, payload: bytes, error: str) -> None:
    a = await cluster.node("a")
    with pytest.raises(BadMessage, match=error):
        a.publish(topic, payload)
    if topic != "t":
        with pytest.raises(BadMessage, match=error):
            await a.subscribe(topic, lambda _p: None)


async def test_the_largest_payload_and_topic_are_carried(cluster: Cluster) -> None:
    a, b = await cluster.node("a"), await cluster.node("b")
    got: list[bytes] = []
    topic = "n." + "x" * (MAX_TOPIC - 2)
    await b.subscribe(topic, got.append)
    payload = "é".encode() + b"y" * (MAX_PAYLOAD - 2)
    assert len(payload) == MAX_PAYLOAD
    a.publish(topic, payload)
    await until(lambda: got == [payload], "the largest message")


async def test_stop_leaves_no_task_behind(cluster: Cluster) -> None:
    before = asyncio.all_tasks()
    a, b = await cluster.node("a"), await cluster.node("b")
    await b.subscribe("node.b", lambda _p: None)
    a.publish("node.b", b"x")
    await asyncio.sleep(0.05)
    await cluster.close()
    cluster.buses.clear()
    cluster._listeners.clear()
    await asyncio.sleep(0)
    left: set[asyncio.Task[Any]] = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert left == set()


async def test_a_bus_whose_server_is_away_keeps_trying_and_stops_cleanly() -> None:
    """NATS: start() returns at once and connects in the background; stop()
    before it ever connected ends it all the same."""
    before = asyncio.all_tasks()
    bus = NatsBus(f"nats://127.0.0.1:{free_port()}")
    await bus.start()
    await asyncio.sleep(0.2)
    assert not bus.connected.is_set()
    bus.publish("node.b", b"nobody hears this")
    await until(lambda: bus.dropped == 1, "the message dropped")
    await bus.stop()
    await asyncio.sleep(0)
    assert {t for t in asyncio.all_tasks() - before if not t.done()} == set()
