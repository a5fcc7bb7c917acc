"""Three broker nodes as separate processes (`python -m broker serve`) on one
PostgreSQL, for each bus (CONTRACT section 13): a send through any node
reaches a phone on any node, over both phone transports; a cancel or a ttl
wait crosses nodes too; a node SIGKILLed holds nobody once its lease lapses,
and its phone, reconnected to another node, is given what was sent meanwhile.

The nodes live for the module (a start is ~1 s of imports each); every test
makes accounts of its own, so nothing here empties the database under them
(the `db` fixture would truncate the nodes' leases)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from broker import store
from tests.conftest import TABLES, NatsServer, free_port
from tests.e2e.conftest import (
    SECRET,
    Account,
    Device,
    PhoneFactory,
    open_phone_at,
    send_sms,
    wait_for,
)
from tests.e2e.drivers import PhoneDriver, SmsGateDriver, WsDriver, device_offline
from tests.e2e.smsgate_app import App, register
from tests.fault.services import BrokerProcess

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]
LEASE_S = 3.0
NODES = ("n1", "n2", "n3")


class Node(BrokerProcess):
    """A node of the cluster: the soak's broker process (tests/fault), with
    this module's settings."""

    @property
    def name(self) -> str:
        return self.node

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/devices/ws"

    @property
    def down(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def up(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class Cluster:
    bus: str
    nodes: dict[str, Node]
    database_url: str
    http: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    settled_once: bool = False

    def log_tail(self) -> str:
        return "\n".join(f"--- {n.name}\n" + n.log_path.read_text()[-3000:]
                         for n in self.nodes.values() if n.log_path.exists())

    async def live_nodes(self) -> set[str]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return {r["name"] for r in await conn.fetch(
                "SELECT name FROM nodes WHERE lease_until > now()")}
        finally:
            await conn.close()

    def start(self, *names: str) -> None:
        for name in names:
            self.nodes[name].start()
        deadline = time.monotonic() + 30
        for name in names:
            node = self.nodes[name]
            while not node.up():
                if node.down or time.monotonic() > deadline:
                    raise AssertionError(f"node {name} did not start:\n{self.log_tail()}")
                time.sleep(0.05)

    async def settled(self) -> None:
        """Every node up and counted by the others (a hello, or a lease turn)."""
        await wait_for(lambda: self._all_live(), timeout=15, what="every node's lease")
        await asyncio.sleep(LEASE_S / 3 + 0.2)  # one lease turn: each counted the others

    async def _all_live(self) -> bool:
        return await self.live_nodes() == set(self.nodes)


@pytest.fixture(scope="module", params=["postgres", "nats"])
def cluster_nodes(request: pytest.FixtureRequest, database_url: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    bus = str(request.param)
    work = tmp_path_factory.mktemp(f"cluster-{bus}")
    asyncio.run(_empty(database_url))
    nats: NatsServer | None = None
    env = {"SMSDORA_SECRET": SECRET.decode(), "SMSDORA_SWEEP_SECONDS": "0.5",
           "SMSDORA_LAST_SEEN_FLUSH_SECONDS": "0.2", "SMSDORA_HEARTBEAT_SECONDS": "20",
           "SMSDORA_BUS": bus}
    if bus == "nats":
        nats = NatsServer()
        nats.start()
        env["SMSDORA_NATS_URL"] = nats.url
    nodes = {name: Node(work, database_url, free_port(), node=name, log_name=f"{name}.log",
                        lease_s=LEASE_S,
                        extra_env={**env, "SMSDORA_HOME": str(work / name)}) for name in NODES}
    cluster = Cluster(bus, nodes, database_url)
    try:
        cluster.start(*NODES)
        yield cluster
    finally:
        for node in nodes.values():
            node.shutdown()
        if nats is not None:
            nats.kill()


async def _empty(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def cluster(cluster_nodes: Cluster) -> AsyncIterator[Cluster]:
    """The module's nodes, each up (a test may have killed one), with an
    HTTP client for each."""
    down = [n.name for n in cluster_nodes.nodes.values() if n.down]
    if down:
        cluster_nodes.start(*down)
    if down or not cluster_nodes.settled_once:
        await cluster_nodes.settled()
        cluster_nodes.settled_once = True
    async with contextlib.AsyncExitStack() as stack:
        for name, node in cluster_nodes.nodes.items():
            cluster_nodes.http[name] = await stack.enter_async_context(
                httpx.AsyncClient(base_url=node.url, timeout=10))
        try:
            yield cluster_nodes
        except BaseException:
            print(cluster_nodes.log_tail())
            raise
        finally:
            cluster_nodes.http.clear()


@pytest.fixture
async def dbc(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the nodes' database, which it leaves as it is."""
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def new_account(dbc: asyncpg.Connection) -> Account:
    acc = await store.create_account(dbc, f"{uuid.uuid4().hex[:12]}@example.com", "default", None)
    account = Account(id=acc.id, email=acc.email, key="", db=dbc)
    account.key = await account.make_key(["keys:write"])
    return account


class Phones:
    """Phones of either transport, each connected to the node it is told."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.made: list[PhoneDriver] = []

    def opener(self, node: str) -> PhoneFactory:
        return functools.partial(open_phone_at, self.cluster.nodes[node].ws_url)

    async def make(self, transport: str, account: Account, node: str,
                   name: str = "Phone", send_rate: int = 0) -> PhoneDriver:
        http = self.cluster.http[node]
        d: PhoneDriver
        if transport == "ws":
            d = WsDriver(await account.make_device(name, send_rate), account, http,
                         self.opener(node))
        else:
            d = await SmsGateDriver.register(account, http, name, send_rate)
        self.made.append(d)
        await d.connect()
        await wait_for(lambda: self.held_by(d.device.id, node), what=f"{name} held by {node}")
        return d

    async def held_by(self, device_id: str, node: str) -> bool:
        conn = await asyncpg.connect(self.cluster.database_url)
        try:
            return await conn.fetchval(
                "SELECT p.node FROM presence p JOIN nodes n ON n.name = p.node"
                " AND n.epoch = p.epoch AND n.lease_until > now() WHERE p.device_id = $1",
                uuid.UUID(device_id)) == node
        finally:
            await conn.close()

    async def close(self) -> None:
        for d in self.made:
            with contextlib.suppress(Exception):
                await d.close()


@pytest.fixture
async def phones(cluster: Cluster) -> AsyncIterator[Phones]:
    made = Phones(cluster)
    yield made
    await made.close()


async def online_at(http: httpx.AsyncClient, account: Account, device: Device) -> bool:
    return not await device_offline(http, account, device)


async def shown_online(http: httpx.AsyncClient, account: Account, phone: PhoneDriver) -> bool:
    return not await device_offline(http, account, phone.device)


async def status_of(dbc: asyncpg.Connection, mid: str) -> str:
    return str(await dbc.fetchval("SELECT status FROM messages WHERE id = $1", uuid.UUID(mid)))


async def deliver(phone: PhoneDriver, mid: str) -> None:
    job = await phone.next_job()
    assert job.id == mid
    await phone.ack(job.id)
    await phone.report(job.id, "delivered")


@pytest.mark.parametrize("transport", ["ws", "smsgate"])
async def test_a_send_through_any_node_reaches_a_phone_on_any_node(
        cluster: Cluster, phones: Phones, dbc: asyncpg.Connection, transport: str) -> None:
    """Nine routes: an account with its one phone on each node, a send to
    it through each node; every one delivered once, by that phone."""
    for at in NODES:
        account = await new_account(dbc)
        phone = await phones.make(transport, account, at, f"phone-at-{at}")
        for via in NODES:  # GET /devices through any node sees it online
            await wait_for(lambda h=cluster.http[via], a=account, p=phone: shown_online(h, a, p),
                           what=f"the phone at {at} online through {via}")
        for via in NODES:
            r = await send_sms(cluster.http[via], account.key, message=f"{via} to {at}")
            assert r.status_code == 201, (via, at, r.text)
            data = r.json()["data"]
            assert data["device"]["id"] == phone.device.id
            # Through any node it is committed `dispatching` for the phone,
            # whose node is told and writes the frame or SSE event.
            assert data["status"] == "dispatching", (via, at)
            await deliver(phone, data["id"])
            assert await status_of(dbc, data["id"]) == "delivered"
        await phone.expect_nothing(0.2)


@pytest.mark.parametrize("transport", ["ws", "smsgate"])
async def test_a_node_gives_another_nodes_phones_no_more_than_their_rate(
        cluster: Cluster, phones: Phones, dbc: asyncpg.Connection, transport: str) -> None:
    """Two phones at n1 of 1 SMS a minute each; three sends through n2: n1
    names a phone with room for each of the first two (and keeps that room),
    each committed `dispatching` for it; the third finds no room and waits
    `queued` for n1 to drain when one has room."""
    account = await new_account(dbc)
    made = [await phones.make(transport, account, "n1", f"slow-{i}", send_rate=1)
            for i in range(2)]
    await wait_for(lambda: shown_online(cluster.http["n2"], account, made[1]),
                   what="both phones online through n2")
    sent = []
    for i in range(3):
        r = await send_sms(cluster.http["n2"], account.key, message=f"slow {i}")
        assert r.status_code == 201, r.text
        sent.append(r.json()["data"])
    assert [d["status"] for d in sent] == ["dispatching", "dispatching", "queued"]
    by_phone = {p.device.id: p for p in made}
    assert {d["device"]["id"] for d in sent[:2]} == set(by_phone), sent
    for d in sent[:2]:
        await deliver(by_phone[d["device"]["id"]], d["id"])
    assert await status_of(dbc, sent[2]["id"]) == "queued"  # no room for a minute
    for p in made:
        await p.expect_nothing(0.2)


async def test_a_job_cancelled_at_one_node_is_taken_back_from_the_phone_on_another(
        cluster: Cluster, phones: Phones, dbc: asyncpg.Connection) -> None:
    account = await new_account(dbc)
    phone = await phones.make("ws", account, "n1")
    r = await send_sms(cluster.http["n2"], account.key)
    mid = r.json()["data"]["id"]
    assert (await phone.next_job()).id == mid  # offered, not acked yet
    r = await cluster.http["n3"].post(f"/messages/{mid}/cancel", headers=account.headers)
    assert r.status_code == 200, r.text
    assert await phone.expect_cancel(mid) == "cancelled"
    await phone.ack_refused(mid)
    assert await status_of(dbc, mid) == "failed"


async def test_a_ttl_send_with_no_phone_goes_to_the_first_phone_at_any_node(
        cluster: Cluster, phones: Phones, dbc: asyncpg.Connection) -> None:
    account = await new_account(dbc)
    r = await send_sms(cluster.http["n1"], account.key, ttl=600)
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert (data["status"], data["device"]) == ("queued", None)
    phone = await phones.make("ws", account, "n3")
    await deliver(phone, data["id"])


async def test_a_killed_node_holds_nobody_and_its_phone_gets_its_jobs_elsewhere(
        cluster: Cluster, phones: Phones, dbc: asyncpg.Connection) -> None:
    """SIGKILL n1 under its phone: a send meanwhile (through n3) is
    accepted for it; once the lease lapsed n1's row is gone; the phone,
    reconnected to n2, gets that job and the next, each exactly once."""
    account = await new_account(dbc)
    phone = await phones.make("ws", account, "n1")
    assert isinstance(phone, WsDriver)
    cluster.nodes["n1"].kill()
    await phone.close()
    during = await send_sms(cluster.http["n3"], account.key, message="while n1 was dying")
    assert during.status_code in (201, 400), during.text  # 400: n1's row reaped already
    await wait_for(lambda: phones_row_gone(dbc, phone.device.id), timeout=3 * LEASE_S,
                   what="n1's presence row reaped")
    phone._open_phone = phones.opener("n2")
    await phone.connect()
    await wait_for(lambda: phones.held_by(phone.device.id, "n2"), what="the phone held by n2")
    if during.status_code == 201:
        await deliver(phone, during.json()["data"]["id"])
    after = await send_sms(cluster.http["n3"], account.key, message="after")
    assert after.status_code == 201, after.text
    await deliver(phone, after.json()["data"]["id"])
    await phone.expect_nothing(0.3)
    sent = await dbc.fetchval(
        "SELECT count(*) FROM message_history h JOIN messages m ON m.id = h.message_id"
        " WHERE m.account_id = $1 AND h.status = 'delivered'", account.id)
    assert sent == (2 if during.status_code == 201 else 1)


async def phones_row_gone(dbc: asyncpg.Connection, device_id: str) -> bool:
    return await dbc.fetchval("SELECT count(*) FROM presence WHERE device_id = $1",
                              uuid.UUID(device_id)) == 0


async def test_a_keys_rate_limit_holds_across_nodes(
        cluster: Cluster, dbc: asyncpg.Connection) -> None:
    """6 a minute: 3 requests through n1 and 3 through n2 use it up, and n3,
    told of them, refuses the seventh (contract section 3: 403 "Rate limit
    exceeded", with a Retry-After)."""
    account = await new_account(dbc)
    key = await account.make_key(["messages:read"], rate_limit=6)
    for via in ("n1", "n2"):
        for _ in range(3):
            r = await cluster.http[via].get("/messages", headers={"x-api-key": key})
            assert r.status_code == 200, r.text
        await asyncio.sleep(0.5)  # the nodes' gossip runs every 0.2 s
    r = await cluster.http["n3"].get("/messages", headers={"x-api-key": key})
    assert (r.status_code, r.json()["message"]) == (403, "Rate limit exceeded"), r.text
    assert int(r.headers["retry-after"]) >= 1


async def test_an_sms_gateway_phone_listing_at_another_node_is_still_told_of_each_job(
        cluster: Cluster, phones: Phones, dbc: asyncpg.Connection) -> None:
    """Behind a balancer the app's event stream is at one node (n1) and its
    `GET /message` at another (n2). n1 holds back an announcement while it
    waits for the phone's look; n2 tells it of the look, so the next job is
    announced too, not left for the phone's next reconnect."""
    account = await new_account(dbc)
    streaming = await register(cluster.http["n1"], account.key, "split phone")
    listing = App(http=cluster.http["n2"], id=streaming.id, token=streaming.token)
    stream = await streaming.open_events()
    try:
        assert [(await stream.next()).name for _ in range(2)] == [
            "WebhooksUpdated", "SettingsUpdated"]
        await wait_for(lambda: phones.held_by(streaming.id, "n1"), what="the stream at n1")
        device = Device(streaming.id, "split phone", streaming.token)
        await wait_for(lambda: online_at(cluster.http["n2"], account, device),
                       what="n2 to see it online at n1")
        for text in ("first", "second"):
            r = await send_sms(cluster.http["n3"], account.key, message=text)
            assert r.status_code == 201, r.text
            assert (await stream.next(timeout=3)).name == "MessageEnqueued", text
            listed = [item["message"] for item in await listing.list()]
            assert text in listed, (text, listed)
    finally:
        await streaming.close_events()
