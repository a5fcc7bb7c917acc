"""End-to-end fixtures: a real uvicorn serving the broker on a free loopback
port (inside the test's event loop), real `websockets` clients as phones, an
httpx client for the API, and the real PostgreSQL from tests/conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from broker import keys, store
from broker.app import Broker, create_app
from broker.ops.server import uvicorn_config
from broker.settings import Settings
from tests.conftest import Stored, free_port, stored  # noqa: F401 - the e2e modules' too
from tests.e2e.webhook_receiver import Receiver, running

pytestmark = pytest.mark.timeout(30)
SECRET = b"e2e-server-secret-0123456789abcdef"
WAIT_S = 5.0




async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = WAIT_S,
                   what: str = "condition") -> None:
    """Poll an async predicate until true; fail with `what` after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class PromptServer(uvicorn.Server):
    """uvicorn's Server, ending when it is told rather than at its next tick
    (its main loop looks at `should_exit` every 0.1 s: a tenth of a second
    for every server a test stops, hundreds of times a run)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.told = asyncio.Event()

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.told.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        """uvicorn's shutdown (uvicorn/server.py), its fixed waits (0.1 s
        after asking connections to close, then 0.1 s polls) made polls of
        5 ms: the same steps in the same order, ended as soon as they are done."""
        for listener in self.servers:
            listener.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.timeout_graceful_shutdown or 30)
        while (self.server_state.connections or self.server_state.tasks) and not self.force_exit:
            if loop.time() > deadline:
                for task in self.server_state.tasks:
                    task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
                break
            await asyncio.sleep(0.005)
        for listener in self.servers:
            await listener.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()


@dataclass
class Server:
    url: str
    ws_url: str
    broker: Broker
    uvicorn: uvicorn.Server
    database_url: str


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    """Override in a test module (or with `@pytest.mark.parametrize`-style
    indirect fixtures) to change heartbeats, timeouts or rates."""
    return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=20, hello_timeout_s=2,
                    last_seen_flush_s=0.2, pool_min=1, pool_max=10)


async def start_server(settings: Settings, database_url: str) -> Server:
    app = create_app(settings, database_url)
    port = free_port()
    config = uvicorn_config(app, settings, "127.0.0.1", port)
    config.loop = "none"  # share the test's event loop
    server = PromptServer(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.get_running_loop().create_task(server.serve())
    server._smsdora_task = task  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not server.started:
        if task.done():
            task.result()
            raise AssertionError("uvicorn exited before it started")
        if loop.time() > deadline:
            raise AssertionError("uvicorn did not start within 10 s")
        await asyncio.sleep(0.01)
    return Server(url=f"http://127.0.0.1:{port}", ws_url=f"ws://127.0.0.1:{port}/devices/ws",
                  broker=app.state.broker, uvicorn=server, database_url=database_url)


async def stop_server(server: Server) -> None:
    # As `serve` does at its shutdown (broker/ops/server.py): open event
    # streams would hold uvicorn for its whole grace period.
    await server.broker.close_phones()
    server.uvicorn.should_exit = True
    if isinstance(server.uvicorn, PromptServer):
        server.uvicorn.told.set()
    await asyncio.wait_for(server.uvicorn._smsdora_task, 15)  # type: ignore[attr-defined]


@pytest.fixture
async def server(db: asyncpg.Connection, database_url: str,
                 broker_settings: Settings) -> AsyncIterator[Server]:
    srv = await start_server(broker_settings, database_url)
    try:
        yield srv
    finally:
        await stop_server(srv)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A customer's webhook receiver on loopback (tests/e2e/webhook_receiver.py)."""
    async with running() as r:
        yield r


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


@dataclass
class Account:
    id: uuid.UUID
    email: str
    key: str  # keys:write, which implies every other scope of this account
    db: asyncpg.Connection
    secret: bytes = SECRET

    @property
    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.key}

    async def make_key(self, scopes: list[str], *, rate_limit: int | None = None,
                       expires_at: Any = None, name: str = "k") -> str:
        key, prefix = keys.make_secret(keys.KEY_KIND)
        await store.insert_key(self.db, self.id, name, prefix, keys.digest(self.secret, key),
                               scopes, rate_limit, expires_at)
        return key

    async def make_device(self, name: str = "Phone", send_rate: int = 30) -> Device:
        token, prefix = keys.make_secret(keys.TOKEN_KIND)
        row = await store.insert_device(self.db, self.id, name, prefix,
                                        keys.digest(self.secret, token), send_rate)
        return Device(id=str(row.id), name=name, token=token)


@dataclass
class Device:
    id: str
    name: str
    token: str


@pytest.fixture
def make_account(db: asyncpg.Connection) -> Callable[[str], Awaitable[Account]]:
    async def make(email: str = "owner@example.com") -> Account:
        acc = await store.create_account(db, email, "default", None)
        account = Account(id=acc.id, email=email, key="", db=db)
        account.key = await account.make_key(["keys:write"])
        return account
    return make


@pytest.fixture
async def account(make_account: Callable[[str], Awaitable[Account]]) -> Account:
    return await make_account("owner@example.com")


@dataclass
class Phone:
    """A raw protocol client: what a phone app would write, frame by frame."""

    ws: ClientConnection
    device: Device
    welcome: dict[str, Any] = field(default_factory=dict)

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def recv(self, timeout: float = WAIT_S) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        out = json.loads(raw)
        assert isinstance(out, dict)
        return out

    async def expect(self, kind: str, timeout: float = WAIT_S) -> dict[str, Any]:
        frame = await self.recv(timeout)
        assert frame["type"] == kind, f"expected {kind}, got {frame}"
        return frame

    async def ask(self, frame: dict[str, Any]) -> dict[str, Any]:
        await self.send(frame)
        return await self.recv()

    async def nothing(self, within: float = 0.3) -> None:
        """Assert no frame arrives within `within` seconds."""
        try:
            frame = await asyncio.wait_for(self.ws.recv(), within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame!r}")

    async def close(self) -> None:
        await self.ws.close()


PhoneFactory = Callable[..., Awaitable[Phone]]


@pytest.fixture
async def phone(server: Server) -> AsyncIterator[PhoneFactory]:
    """`await phone(device, pending=[...], hello=True)`: a connected phone,
    past `welcome` unless hello=False."""
    opened: list[Phone] = []

    async def open_phone(device: Device, *, hello: bool = True,
                         pending: list[str] | None = None,
                         health: dict[str, Any] | None = None) -> Phone:
        p = await open_phone_at(server.ws_url, device, hello=hello, pending=pending,
                                health=health, opened=opened)
        return p

    yield open_phone
    for p in opened:
        await p.ws.close()


async def open_phone_at(ws_url: str, device: Device, *, hello: bool = True,
                        pending: list[str] | None = None, health: dict[str, Any] | None = None,
                        opened: list[Phone] | None = None) -> Phone:
    """A phone connected to the broker at `ws_url`, past `welcome` unless
    hello=False (`opened`: where it is kept, to be closed)."""
    ws = await connect(ws_url, additional_headers={
        "Authorization": f"Bearer {device.token}"}, compression=None, open_timeout=5)
    p = Phone(ws=ws, device=device)
    if opened is not None:
        opened.append(p)
    if hello:
        frame: dict[str, Any] = {"type": "hello", "protocol": 1, "appVersion": "test/1"}
        if pending is not None:
            frame["pending"] = pending
        if health is not None:
            frame["health"] = health
        await p.send(frame)
        p.welcome = await p.expect("welcome")
    return p


async def send_sms(http: httpx.AsyncClient, key: str, recipient: str = "+16502530000",
                   message: str = "Your code is 4829", **extra: Any) -> httpx.Response:
    headers = {"x-api-key": key, **extra.pop("headers", {})}
    return await http.post("/messages/send", json={"recipient": recipient, "message": message,
                                                   **extra}, headers=headers)


@contextlib.contextmanager
def logging_to(handler: logging.Handler, logger: logging.Logger) -> Iterator[None]:
    """`handler` gets `logger`'s records from DEBUG up while inside; the
    logger's level and handlers are as they were afterwards."""
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# --- the delivery contract, once per phone transport -------------------------------------
# tests/e2e/test_contract.py drives phones through tests/e2e/drivers.py only;
# imported here, at the end, because the drivers are built on the helpers above.

from tests.e2e.drivers import PhoneDriver, SmsGateDriver, WsDriver  # noqa: E402

TRANSPORTS = ["ws", "smsgate"]
HISTORY_ORDER = ["queued", "dispatching", "sending", "sent", "delivered", "failed"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """The phone transport a test runs over: every test that takes `driver`
    runs once per transport (uvicorn's `ws_protocol_cls`)."""
    return str(request.param)


DriverFactory = Callable[..., Awaitable[PhoneDriver]]


@pytest.fixture
async def driver(transport: str, http: httpx.AsyncClient,
                 phone: PhoneFactory) -> AsyncIterator[DriverFactory]:
    """`await driver(account, "Name", send_rate=30)`: a phone of `account`,
    registered as its transport registers one and connected."""
    made: list[PhoneDriver] = []

    async def make(account: Account, name: str = "Phone", *, send_rate: int = 30) -> PhoneDriver:
        d: PhoneDriver
        if transport == "ws":
            d = WsDriver(await account.make_device(name, send_rate), account, http, phone)
        elif transport == "smsgate":
            d = await SmsGateDriver.register(account, http, name, send_rate)
        else:
            raise AssertionError(f"no phone driver for transport {transport!r}")
        made.append(d)
        await d.connect()
        return d

    yield make
    for d in made:
        await d.close()


async def stored_history(db: asyncpg.Connection, mid: str) -> list[str]:
    """The message's history rows, oldest first (ties in lifecycle order)."""
    rows = await db.fetch(
        "SELECT status FROM message_history WHERE message_id = $1"
        " ORDER BY at, array_position($2::text[], status)", uuid.UUID(mid), HISTORY_ORDER)
    return [r["status"] for r in rows]


async def get_message(http: httpx.AsyncClient, account: Account, mid: str) -> dict[str, Any]:
    """`GET /messages/{id}`'s `data`, asserting the 200."""
    r = await http.get(f"/messages/{mid}", headers=account.headers)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data
