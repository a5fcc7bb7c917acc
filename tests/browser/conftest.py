"""The browser suite's fixtures (issue 13's proof): Debian's chromium driven
by Playwright's async API, in the same event loop as a real broker (uvicorn
in-loop, as tests/e2e/conftest.py starts it) on the real PostgreSQL of
tests/conftest.py.

One broker and one browser for the whole package (their start is most of
the suite's time), a fresh browser context (cookies, storage) per test and
a fresh account per test (a new email), so tests share nothing but the
processes. Both are package-scoped, not session-scoped: the broker's
background tasks (the sweeper, the webhook sender) must be gone before
other packages' tests empty and refill the database under it.

Chromium is the system's (`make chromium` installs it: apt-get, as root or
through sudo -n), never a Playwright download. Missing, it is a failure
with the command that fixes it, never a skip.

`SMSDORA_SCREENSHOTS=1` makes `shot()` write docs/dashboard/NAME.png (the
README's pictures); otherwise it writes nothing, so `make test` leaves the
committed files alone.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
import uvicorn
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright, expect

from broker import store
from broker.app import create_app
from broker.dashboard.web import SESSION_COOKIE
from broker.ops.server import uvicorn_config
from broker.services import passwords
from broker.settings import Settings
from broker.store import sessions
from tests.conftest import _FRESH_PLANS, REPO, TABLES, free_port
from tests.e2e.conftest import SECRET, Server, stop_server

CHROMIUM = os.environ.get("SMSDORA_CHROMIUM", "/usr/bin/chromium")
SHOTS = REPO / "docs" / "dashboard"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
PASSWORD = "correct horse battery staple"
WAIT_MS = 10_000  # the longest any `expect` waits: a live row's change comes in ~0.1 s

expect.set_options(timeout=WAIT_MS)


# Every test module here says `pytestmark = LOOP`: the package's one event
# loop runs the broker, the browser's driver and the tests.
LOOP = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.timeout(60)]


@pytest.fixture(scope="package")
def chromium() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"tests/browser needs Debian's chromium at {CHROMIUM} and it is not there:"
                    " run `make chromium` (apt-get install -y chromium, as root or with sudo),"
                    " or set SMSDORA_CHROMIUM to a chromium binary", pytrace=False)
    return CHROMIUM


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as p:
        yield p


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def browser(playwright: Playwright, chromium: str) -> AsyncIterator[Browser]:
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # chromium's sandbox refuses root
    b = await playwright.chromium.launch(executable_path=chromium, headless=True, args=args)
    try:
        yield b
    finally:
        await b.close()


async def _empty(database_url: str) -> None:
    """As tests/conftest.py's `db` does: every table emptied, plans as migrated."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        await conn.execute("DELETE FROM plans")
        await conn.copy_records_to_table(
            "plans", records=[tuple(r) for r in _FRESH_PLANS], columns=list(_FRESH_PLANS[0].keys()))
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def server(database_url: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[Server]:
    """The broker, in this loop, its public URL its own (the QR code and the
    pairing instructions name it)."""
    await _empty(database_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(home=tmp_path_factory.mktemp("browser") / "home", secret=SECRET,
                        heartbeat_s=20, hello_timeout_s=2, last_seen_flush_s=0.2,
                        pool_min=1, pool_max=10, public_url=url,
                        webhook_allow_private=True)  # the receiver is on loopback
    app = create_app(settings, database_url)
    config = uvicorn_config(app, settings, "127.0.0.1", port)
    config.loop = "none"
    srv = uvicorn.Server(config)
    srv.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.get_running_loop().create_task(srv.serve())
    srv._smsdora_task = task  # type: ignore[attr-defined]
    async with asyncio.timeout(10):
        while not srv.started:
            if task.done():
                task.result()
                raise AssertionError("uvicorn exited before it started")
            await asyncio.sleep(0.01)
    server = Server(url=url, ws_url=f"ws://127.0.0.1:{port}/devices/ws",
                    broker=app.state.broker, uvicorn=srv, database_url=database_url)
    try:
        yield server
    finally:
        await stop_server(server)


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def pg(server: Server) -> AsyncIterator[asyncpg.Connection]:
    """A connection for what a test checks behind the pages' backs."""
    conn = await asyncpg.connect(server.database_url, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


async def new_context(browser: Browser, server: Server, viewport: dict[str, int] | None = None
                      ) -> BrowserContext:
    ctx = await browser.new_context(base_url=server.url, viewport=viewport or DESKTOP,  # type: ignore[arg-type]
                                    color_scheme="light", locale="en-GB",
                                    timezone_id="UTC")
    ctx.set_default_timeout(WAIT_MS)
    return ctx


@pytest_asyncio.fixture(loop_scope="package")
async def context(browser: Browser, server: Server) -> AsyncIterator[BrowserContext]:
    ctx = await new_context(browser, server)
    try:
        yield ctx
    finally:
        await ctx.close()


@pytest_asyncio.fixture(loop_scope="package")
async def page(context: BrowserContext) -> Page:
    return await context.new_page()


@dataclass
class User:
    email: str
    password: str = PASSWORD


def new_email(who: str = "ana") -> str:
    return f"{who}-{uuid.uuid4().hex[:8]}@example.com"


async def sign_up(page: Page, email: str | None = None) -> User:
    """Through the sign-up form, as a person would; lands on the overview."""
    user = User(email or new_email())
    await page.goto("/signup")
    await page.get_by_label("Email").fill(user.email)
    await page.get_by_label("Password").fill(user.password)
    await page.get_by_role("button", name="Create my account").click()
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    return user


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def password_hash() -> str:
    return await passwords.hash_password(PASSWORD)


async def signed_in(context: BrowserContext, server: Server, pg: asyncpg.Connection,
                    password_hash: str, who: str = "ana") -> User:
    """A new account whose session `context` holds: written as sign-up and
    login write them (store.create_account, store/sessions.py), without a
    form's round trip per test (test_accounts.py clicks through those)."""
    user = User(new_email(who))
    account = await store.create_account(pg, user.email, "default", password_hash)
    token = secrets.token_urlsafe(32)
    await sessions.create_session(pg, token, account.id, secrets.token_urlsafe(24), 3600)
    await context.add_cookies([{"name": SESSION_COOKIE, "value": token, "httpOnly": True,
                                "sameSite": "Lax", "url": server.url}])
    return user


@pytest_asyncio.fixture(loop_scope="package")
async def user(context: BrowserContext, page: Page, server: Server, pg: asyncpg.Connection,
               password_hash: str) -> User:
    """A new account, logged in in `page`'s context."""
    return await signed_in(context, server, pg, password_hash)


def screenshots_on() -> bool:
    return os.environ.get("SMSDORA_SCREENSHOTS", "") not in ("", "0")


async def shot(page: Page, name: str, *, full_page: bool = True) -> None:
    """docs/dashboard/NAME.png, only under SMSDORA_SCREENSHOTS=1."""
    if not screenshots_on():
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    # The caret and live.js's state never make a picture differ run to run.
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page,
                          animations="disabled", caret="hide")


def smsdora_bin() -> str:
    """The venv's `smsdora` script (the CLI under test), beside this Python."""
    found = shutil.which("smsdora", path=str(Path(sys.executable).parent))
    assert found, "the smsdora script is not installed in this venv (pip install -e .)"
    return found


@dataclass
class Sim:
    """A `smsdora device-sim` process: the CLI a user runs, as they run it."""

    proc: asyncio.subprocess.Process

    async def say(self, line: str) -> None:
        """A line on its console (stdin): `sms SENDER TEXT` receives an SMS."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()


@pytest_asyncio.fixture(loop_scope="package")
async def device_sim(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Sim]]]:
    """`await device_sim("--app", "smsgate", "--url", URL, env={...})`; each
    process ends (SIGTERM, then SIGKILL) after the test."""
    started: list[Sim] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> Sim:
        log = (tmp_path / f"device-sim-{len(started)}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            smsdora_bin(), "device-sim", "--delay-ms", "50", *args,
            stdin=asyncio.subprocess.PIPE, stdout=log, stderr=log,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("SMSDORA_")},
                 **(env or {})})
        log.close()
        sim = Sim(proc)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        if sim.proc.returncode is None:
            sim.proc.terminate()
            try:
                await asyncio.wait_for(sim.proc.wait(), 5)
            except TimeoutError:
                sim.proc.kill()
                await sim.proc.wait()


async def register_phone(page: Page, name: str = "Desk phone") -> str:
    """A WebSocket phone registered through "Add a phone"; its token, shown once."""
    await page.goto("/dashboard/devices/new")
    await page.get_by_label("Name").fill(name)
    await page.get_by_role("button", name="Register phone").click()
    await expect(page.get_by_role("status")).to_contain_text(f"Registered {name}")
    token = (await page.locator("#device-token").text_content() or "").strip()
    assert token.startswith("smsdev_"), token  # a device token, by its kind
    return token


async def connect_phone(context: BrowserContext, server: Server,
                        device_sim: Callable[..., Awaitable[Sim]], name: str = "Desk phone",
                        delay_ms: int = 50) -> Sim:
    """A phone registered in the page and `smsdora device-sim` running with
    its token (each SMS taking `delay_ms` to send), seen online on the
    devices page."""
    tab = await context.new_page()
    token = await register_phone(tab, name)
    sim = await device_sim("--url", server.url, "--delay-ms", str(delay_ms),
                           env={"SMSDORA_DEVICE_TOKEN": token})
    await tab.goto("/dashboard/devices")
    row = tab.locator("#devices-body tr", has_text=name)
    await expect(row).to_have_attribute("data-online", "true")
    await tab.close()
    return sim


async def create_key(page: Page, name: str, *scopes: str) -> str:
    """Through the keys page's form; returns the key it shows once."""
    await page.goto("/dashboard/keys")
    await page.get_by_label("Name").fill(name)
    for scope in scopes:
        await page.get_by_label(scope, exact=True).check()
    await page.get_by_role("button", name="Create key").click()
    await expect(page.locator("#new-key")).to_contain_text(f"Key created: {name}")
    secret = (await page.locator("#new-key-secret").text_content() or "").strip()
    assert secret.startswith("smsgw_"), secret
    return secret
