"""The dashboard's doors over real HTTP (CONTRACT section 11): sign-up,
login, logout, sessions in PostgreSQL, CSRF, and no page without a session.
The browser suite (tests/browser/) clicks through the same in chromium."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import httpx
import pytest

from broker.settings import Settings
from tests.e2e.conftest import SECRET, Server

pytestmark = pytest.mark.timeout(30)
PASSWORD = "correct horse battery staple"


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, pool_min=1, pool_max=10)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


async def sign_up(http: httpx.AsyncClient, email: str = "ana@example.com") -> httpx.Response:
    page = await http.get("/signup")
    assert page.status_code == 200
    return await http.post("/signup", data={"csrf": csrf_of(page.text), "email": email,
                                            "password": PASSWORD})


async def test_sign_up_starts_a_session_that_opens_the_dashboard(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    r = await sign_up(http)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    assert "smsdora_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over HTTPS it is Secure
    page = await http.get("/dashboard")
    assert page.status_code == 200 and "ana@example.com" in page.text
    token = http.cookies["smsdora_session"]
    stored = await db.fetchval("SELECT token_hash FROM sessions")
    assert token.encode() not in stored and len(stored) == 32  # only its SHA-256
    hashed = await db.fetchval("SELECT password_hash FROM accounts")
    assert hashed.startswith("$argon2id$")


async def test_no_page_without_a_session(server: Server, http: httpx.AsyncClient) -> None:
    for path in ("/dashboard", "/dashboard/password", "/dashboard/live?view=x"):
        r = await http.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), path
    r = await http.get("/dashboard/password?tab=1")
    assert r.headers["location"] == "/login?next=/dashboard/password%3Ftab%3D1"


async def test_a_form_without_its_csrf_token_is_refused(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    r = await http.post("/signup", data={"email": "eve@example.com", "password": PASSWORD})
    assert r.status_code == 403 and "did not come from this site" in r.text
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0
    await sign_up(http)
    r = await http.post("/dashboard/password", data={"current": PASSWORD, "new": "x" * 20})
    assert r.status_code == 403
    r = await http.post("/logout", data={"csrf": "forged"})
    assert r.status_code == 403
    assert (await http.get("/dashboard")).status_code == 200  # still logged in


async def test_login_and_logout(server: Server, http: httpx.AsyncClient) -> None:
    await sign_up(http)
    page = await http.get("/dashboard")
    r = await http.post("/logout", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert (await http.get("/dashboard")).status_code == 303
    login = await http.get("/login?next=/dashboard/password")
    bad = await http.post("/login", data={"csrf": csrf_of(login.text), "email": "ana@example.com",
                                          "password": "wrong password!!", "next": "/dashboard"})
    assert bad.status_code == 401 and "Invalid email or password" in bad.text
    good = await http.post("/login", data={"csrf": csrf_of(bad.text), "email": "ANA@example.com",
                                           "password": PASSWORD, "next": "/dashboard/password"})
    assert good.status_code == 303 and good.headers["location"] == "/dashboard/password"
    assert (await http.get("/dashboard")).status_code == 200


async def test_next_never_leaves_the_site(server: Server, http: httpx.AsyncClient) -> None:
    await sign_up(http)
    page = await http.get("/dashboard")
    await http.post("/logout", data={"csrf": csrf_of(page.text)})
    login = await http.get("/login")
    r = await http.post("/login", data={"csrf": csrf_of(login.text), "email": "ana@example.com",
                                        "password": PASSWORD, "next": "//evil.example.com/x"})
    assert r.headers["location"] == "/dashboard"


async def test_a_session_survives_a_broker_restart(
        server: Server, http: httpx.AsyncClient, broker_settings: Settings,
        database_url: str) -> None:
    from tests.e2e.conftest import start_server, stop_server

    await sign_up(http)
    other = await start_server(broker_settings.with_(node="other"), database_url)  # same database
    try:
        async with httpx.AsyncClient(base_url=other.url, cookies=http.cookies) as again:
            assert (await again.get("/dashboard")).status_code == 200
    finally:
        await stop_server(other)


async def test_wrong_passwords_are_throttled(server: Server, http: httpx.AsyncClient) -> None:
    await sign_up(http)
    http.cookies.clear()
    statuses = []
    for _ in range(12):
        login = await http.get("/login")
        r = await http.post("/login", data={"csrf": csrf_of(login.text),
                                            "email": "ana@example.com", "password": "nope" * 4})
        statuses.append(r.status_code)
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
    assert "Too many failed attempts" in r.text


async def test_changing_the_password_ends_the_other_sessions(
        server: Server, http: httpx.AsyncClient, broker_settings: Settings) -> None:
    await sign_up(http)
    async with httpx.AsyncClient(base_url=server.url) as laptop:
        login = await laptop.get("/login")
        await laptop.post("/login", data={"csrf": csrf_of(login.text),
                                          "email": "ana@example.com", "password": PASSWORD})
        assert (await laptop.get("/dashboard")).status_code == 200
        page = await http.get("/dashboard/password")
        r = await http.post("/dashboard/password", data={
            "csrf": csrf_of(page.text), "current": PASSWORD, "new": "a brand new passphrase"})
        assert r.status_code == 200 and "Password changed" in r.text
        assert (await laptop.get("/dashboard")).status_code == 303
        assert (await http.get("/dashboard")).status_code == 200


async def test_sign_up_closed(server: Server, http: httpx.AsyncClient,
                              broker_settings: Settings, database_url: str) -> None:
    from tests.e2e.conftest import start_server, stop_server

    closed = await start_server(broker_settings.with_(signup_open=False, node="closed"),
                                database_url)
    try:
        async with httpx.AsyncClient(base_url=closed.url) as client:
            r = await client.get("/signup")
            assert r.status_code == 404 and "Sign-up is closed" in r.text
            assert "/signup" not in (await client.get("/login")).text
    finally:
        await stop_server(closed)
