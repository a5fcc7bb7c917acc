"""The command line (contract section 6), run in-process against the test database.

`cli.main` calls `asyncio.run`, so these are plain (sync) tests; database
checks go through `_sql`, which does the same. The HTTP commands (`send`,
`device-sim`) run against a real broker served from a thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn
from argon2 import PasswordHasher

from broker import cli, device_sim, keys, store
from broker.app import create_app
from broker.cli import common
from broker.ops import server
from broker.services import pairing
from broker.settings import Settings
from broker.store import migrate
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)

# What `send` and `device-sim` read from the environment: none may leak in
# from the shell that runs the tests.
CLIENT_ENV = ("SMSDORA_URL", "SMSDORA_HOST", "SMSDORA_PORT", "SMSDORA_TLS_CERT", "SMSDORA_TLS_KEY",
              "SMSDORA_API_KEY", "SMSDORA_DEVICE_TOKEN", "SMSDORA_DEVICE_ID",
              "SMSDORA_REGISTER_KEY", "SMSDORA_REGISTER_CODE")


def _sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], home: Path) -> None:
        self.capsys = capsys
        self.home = home
        self.err = ""

    def __call__(self, *argv: str, code: int = 0) -> str:
        self.capsys.readouterr()
        got = cli.main(list(argv))
        out, self.err = self.capsys.readouterr()
        assert got == code, f"exit {got}, stdout {out!r}, stderr {self.err!r}"
        return out

    def json(self, *argv: str, code: int = 0) -> Any:
        out = self(*argv, "--json", code=code)
        assert out.count("\n") == 1, out  # exactly one JSON object
        return json.loads(out)

    def secret(self) -> bytes:
        return (self.home / "secret").read_bytes().strip()


@pytest.fixture
def run(db: asyncpg.Connection, database_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    # `db` empties the tables; the CLI then uses the same database.
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SMSDORA_HOME", str(tmp_path))
    for name in (*CLIENT_ENV, "SMSDORA_SECRET", "SMSDORA_SEND_RATE"):
        monkeypatch.delenv(name, raising=False)
    return Cli(capsys, tmp_path)


# --- accounts ---------------------------------------------------------------


def test_migrate_is_idempotent(run: Cli) -> None:
    # The session database is migrated already (tests/conftest.py).
    latest = migrate.discover()[-1].version
    assert run("migrate") == f"Schema at version {latest}: nothing to apply\n"
    assert run.json("migrate") == {"migrated": True, "applied": [], "version": latest}


def test_accounts_create(run: Cli, database_url: str) -> None:
    out = run.json("accounts", "create", "Ops@Example.com")
    assert set(out) == {"id", "email", "plan"}
    assert out["email"] == "ops@example.com" and out["plan"] == "default"
    uuid.UUID(out["id"])
    [row] = _sql(database_url, "SELECT email, password_hash FROM accounts")
    assert row["email"] == "ops@example.com" and row["password_hash"] is None
    assert "Created account other@example.com" in run("accounts", "create", "other@example.com")


def test_json_flag_before_or_after_the_command(run: Cli) -> None:
    for argv in (["--json", "accounts", "create", "a@example.com"],
                 ["accounts", "--json", "create", "b@example.com"],
                 ["accounts", "create", "--json", "c@example.com"]):
        assert json.loads(run(*argv))["email"] == argv[-1]


def test_accounts_create_with_password_is_argon2id(run: Cli, database_url: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    run("accounts", "create", "pw@example.com", "--password-stdin")
    [row] = _sql(database_url, "SELECT password_hash FROM accounts")
    assert row["password_hash"].startswith("$argon2id$")
    assert PasswordHasher().verify(row["password_hash"], "correct horse battery")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    run("accounts", "create", "nopw@example.com", "--password-stdin", code=2)
    assert "no password" in run.err


def test_duplicate_email_and_unknown_plan(run: Cli) -> None:
    run("accounts", "create", "a@example.com")
    run("accounts", "create", "A@example.com", code=2)
    assert "already exists" in run.err
    assert run.json("accounts", "create", "a@example.com", code=2) == {
        "error": "an account with email 'a@example.com' already exists"}
    run("accounts", "create", "b@example.com", "--plan", "platinum", code=2)
    assert "platinum" in run.err
    run("accounts", "create", "not-an-email", code=2)


# --- API keys ---------------------------------------------------------------


def test_keys_create_defaults_and_stored_hash(run: Cli, database_url: str) -> None:
    run("accounts", "create", "a@example.com")
    out = run.json("keys", "create", "--account", "a@example.com")
    assert {"id", "key", "prefix", "scopes", "name", "rateLimit", "expiresAt"} <= set(out)
    assert out["scopes"] == ["messages:send"]
    assert out["rateLimit"] is None and out["expiresAt"] is None
    assert keys.parse_prefix(keys.KEY_KIND, out["key"]) == out["prefix"]
    [row] = _sql(database_url, "SELECT id, prefix, secret_hash FROM api_keys")
    assert str(row["id"]) == out["id"] and row["prefix"] == out["prefix"]
    # Only a keyed hash is stored, never the key.
    assert bytes(row["secret_hash"]) == keys.digest(run.secret(), out["key"])
    assert out["key"].encode() not in bytes(row["secret_hash"])


def test_keys_create_options_and_prose(run: Cli) -> None:
    run("accounts", "create", "a@example.com")
    out = run.json("keys", "create", "--account", "a@example.com", "--name", "ci",
                   "--scope", "messages:read", "--scope", "messages:send",
                   "--rate-limit", "10", "--expires-in", "3600")
    assert out["name"] == "ci" and out["rateLimit"] == 10
    assert out["scopes"] == ["messages:read", "messages:send"]
    assert out["expiresAt"] is not None
    text = run("keys", "create", "--account", "a@example.com")
    lines = text.splitlines()
    assert any(line.startswith("smsgw_") for line in lines)
    assert "shown only once" in text


def test_keys_create_refuses_bad_values(run: Cli, database_url: str) -> None:
    run("accounts", "create", "a@example.com")
    run("keys", "create", "--account", "a@example.com", "--scope", "admin", code=2)
    assert "unknown scope" in run.err and "admin" in run.err
    assert "unknown scope" in run.json("keys", "create", "--account", "a@example.com",
                                       "--scope", "messages:sned", code=2)["error"]
    run("keys", "create", "--account", "nobody@example.com", code=2)
    assert "no account with email" in run.err
    # Both wrong: the scope is named first, as before the layout of issue 9.
    run("keys", "create", "--account", "nobody@example.com", "--scope", "admin", code=2)
    assert "unknown scope" in run.err
    with pytest.raises(SystemExit):  # argparse: usage error
        cli.main(["keys", "create", "--account", "a@example.com", "--rate-limit", "0"])
    assert _sql(database_url, "SELECT count(*) FROM api_keys")[0][0] == 0


def test_keys_list_never_shows_the_secret(run: Cli) -> None:
    run("accounts", "create", "a@example.com")
    created = [run.json("keys", "create", "--account", "a@example.com", "--name", f"k{i}")
               for i in range(2)]
    listed = run.json("keys", "list", "--account", "a@example.com")
    assert [k["id"] for k in listed["keys"]] == [c["id"] for c in created]
    assert all(k["revoked"] is False and k["prefix"] for k in listed["keys"])
    text = run("keys", "list", "--account", "a@example.com")
    for c in created:
        secret_part = c["key"].split("_", 2)[2]
        assert secret_part not in json.dumps(listed) and secret_part not in text
        assert c["prefix"] in text
    assert not {"key", "secretHash", "secret_hash"} & set(listed["keys"][0])
    run("keys", "list", "--account", "nobody@example.com", code=2)


def test_keys_revoke(run: Cli) -> None:
    run("accounts", "create", "a@example.com")
    key_id = run.json("keys", "create", "--account", "a@example.com")["id"]
    assert run.json("keys", "revoke", key_id) == {"id": key_id, "revoked": True}
    [listed] = run.json("keys", "list", "--account", "a@example.com")["keys"]
    assert listed["revoked"] is True
    assert "revoked" in run("keys", "list", "--account", "a@example.com")
    run("keys", "revoke", str(uuid.uuid4()), code=2)
    assert "no key with id" in run.err
    run("keys", "revoke", "not-a-uuid", code=2)


def test_keys_rotate_keeps_id_changes_key(run: Cli, database_url: str) -> None:
    run("accounts", "create", "a@example.com")
    first = run.json("keys", "create", "--account", "a@example.com", "--name", "ci",
                     "--scope", "messages:read", "--rate-limit", "5")
    rotated = run.json("keys", "rotate", first["id"])
    assert rotated["id"] == first["id"] and rotated["key"] != first["key"]
    assert rotated["prefix"] != first["prefix"]
    [row] = _sql(database_url, "SELECT name, scopes, rate_limit, secret_hash FROM api_keys")
    assert (row["name"], row["scopes"], row["rate_limit"]) == ("ci", ["messages:read"], 5)
    assert bytes(row["secret_hash"]) == keys.digest(run.secret(), rotated["key"])
    assert "shown only once" in run("keys", "rotate", first["id"])
    run("keys", "rotate", str(uuid.uuid4()), code=2)


# --- devices ----------------------------------------------------------------


def test_devices_create_list_deactivate(run: Cli, database_url: str) -> None:
    run("accounts", "create", "a@example.com")
    made = run.json("devices", "create", "--account", "a@example.com", "--name", "Pixel 8")
    assert {"id", "token", "deviceName", "sendRate"} <= set(made)
    assert made["deviceName"] == "Pixel 8" and made["sendRate"] == 30
    assert keys.parse_prefix(keys.TOKEN_KIND, made["token"]) is not None
    unlimited = run.json("devices", "create", "--account", "a@example.com", "--name", "Fast",
                         "--send-rate", "0")
    assert unlimited["sendRate"] == 0
    rows = _sql(database_url, "SELECT id, token_hash FROM devices ORDER BY created_at")
    assert bytes(rows[0]["token_hash"]) == keys.digest(run.secret(), made["token"])

    listed = run.json("devices", "list", "--account", "a@example.com")["devices"]
    assert [d["id"] for d in listed] == [made["id"], unlimited["id"]]
    assert {"id", "deviceName", "active", "lastSeen", "sendRate"} <= set(listed[0])
    assert listed[0]["active"] is True and listed[0]["lastSeen"] is None
    assert made["token"] not in run("devices", "list", "--account", "a@example.com")

    assert run.json("devices", "deactivate", made["id"]) == {"id": made["id"], "active": False}
    listed = run.json("devices", "list", "--account", "a@example.com")["devices"]
    assert [d["active"] for d in listed] == [False, True]
    run("devices", "deactivate", str(uuid.uuid4()), code=2)
    assert "no device with id" in run.err


def test_devices_code_makes_a_single_use_pairing_code_of_the_account(
        run: Cli, database_url: str) -> None:
    run("accounts", "create", "a@example.com")
    made = run.json("devices", "code", "--account", "a@example.com")
    assert len(made["code"]) == 6 and set(made["code"]) <= set(pairing.ALPHABET)
    assert made["account"] == "a@example.com"
    assert made["serverUrl"].endswith("/api/mobile/v1")
    left = dt.datetime.fromisoformat(made["validUntil"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=9) < left <= dt.timedelta(minutes=10)
    rows = _sql(database_url, "SELECT code_hash FROM pairing_codes")
    assert [bytes(r["code_hash"]) for r in rows] == [keys.digest(run.secret(), made["code"])]
    prose = run("devices", "code", "--account", "a@example.com")
    assert "By code" in prose and made["code"] not in prose  # a new code each time
    run("devices", "code", "--account", "nobody@example.com", code=2)
    assert "no account with email" in run.err


def test_devices_create_prose_and_errors(run: Cli) -> None:
    run("accounts", "create", "a@example.com")
    text = run("devices", "create", "--account", "a@example.com", "--name", "Phone")
    assert "smsdev_" in text and "shown only once" in text
    run("devices", "create", "--account", "nobody@example.com", "--name", "x", code=2)
    assert "no account" in run.err
    run("devices", "create", "--account", "a@example.com", "--name", "  ", code=2)
    with pytest.raises(SystemExit):
        cli.main(["devices", "create", "--account", "a@example.com", "--name", "x",
                  "--send-rate", "-1"])


def test_device_limit_reached(run: Cli, database_url: str) -> None:
    _sql(database_url, "INSERT INTO plans (name, monthly_messages, max_devices)"
                       " VALUES ('solo', 100, 1)")
    run("accounts", "create", "a@example.com", "--plan", "solo")
    run("devices", "create", "--account", "a@example.com", "--name", "one")
    run("devices", "create", "--account", "a@example.com", "--name", "two", code=2)
    assert "Device limit reached" in run.err
    assert run.json("devices", "create", "--account", "a@example.com", "--name", "two",
                    code=2) == {"error": "Device limit reached"}


# --- plans, accounts, messages (contract section 10) ------------------------


def test_plans_create_list_and_an_account_moved_onto_one(run: Cli, database_url: str) -> None:
    made = run.json("plans", "create", "pro", "--monthly-messages", "5000", "--max-devices", "3")
    assert made == {"name": "pro", "monthlyMessages": 5000, "maxDevices": 3}
    run("plans", "create", "pro", "--monthly-messages", "1", "--max-devices", "1", code=2)
    assert "already exists" in run.err
    with pytest.raises(SystemExit):  # argparse: a negative limit
        cli.main(["plans", "create", "x", "--monthly-messages", "-1", "--max-devices", "1"])
    assert {"name": "pro", "monthlyMessages": 5000, "maxDevices": 3} in run.json(
        "plans", "list")["plans"]
    assert "pro" in run("plans", "list")

    a = run.json("accounts", "create", "a@example.com")
    b = run.json("accounts", "create", "b@example.com")
    assert run.json("accounts", "list")["accounts"] == [a, b]
    assert run.json("accounts", "set-plan", "A@example.com", "pro") == {**a, "plan": "pro"}
    [row] = _sql(database_url, "SELECT plan FROM accounts WHERE email = 'a@example.com'")
    assert row["plan"] == "pro"
    assert "5000 messages a month" in run("accounts", "set-plan", "a@example.com", "pro")
    assert run.json("accounts", "set-plan", "a@example.com", "gold", code=2) == {
        "error": "no plan named 'gold'"}
    run("accounts", "set-plan", "nobody@example.com", "pro", code=2)
    assert "no account with email" in run.err


def test_a_key_for_an_sms_gateway_app_to_register_with(run: Cli) -> None:
    run("accounts", "create", "a@example.com")
    made = run.json("keys", "create", "--account", "a@example.com", "--scope",
                    "devices:register")
    assert made["scopes"] == ["devices:register"]


def _messages(dsn: str, email: str, statuses: list[str]) -> list[str]:
    """Messages of the account's first device, written as the send writes them."""
    async def go() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            account = await store.account_by_email(conn, email)
            assert account is not None
            [device] = await store.list_devices(conn, account.id)
            made = []
            for i, status in enumerate(statuses):
                mid = uuid.uuid4()
                await store.insert_message(conn, mid, account.id, device.id, "+16502530000",
                                           f"text {i}", status, None, dt.datetime.now(dt.UTC))
                made.append(str(mid))
            return made
        finally:
            await conn.close()

    return asyncio.run(go())


def test_messages_list_and_get(run: Cli, database_url: str) -> None:
    run("accounts", "create", "a@example.com")
    device = run.json("devices", "create", "--account", "a@example.com", "--name", "Pixel")
    ids = _messages(database_url, "a@example.com", ["queued", "dispatching", "queued"])

    listed = run.json("messages", "list", "--account", "a@example.com")
    assert [m["id"] for m in listed["messages"]] == ids[::-1] and "nextCursor" not in listed
    first = listed["messages"][-1]
    assert first == {"id": ids[0], "recipient": "+16502530000", "message": "text 0",
                     "status": "queued", "device": {"id": device["id"], "deviceName": "Pixel"},
                     "error": None, "createdAt": first["createdAt"]}
    page = run.json("messages", "list", "--account", "a@example.com", "--limit", "2")
    assert [m["id"] for m in page["messages"]] == [ids[2], ids[1]]
    rest = run.json("messages", "list", "--account", "a@example.com", "--limit", "2",
                    "--cursor", page["nextCursor"])
    assert [m["id"] for m in rest["messages"]] == [ids[0]]
    assert [m["id"] for m in run.json("messages", "list", "--account", "a@example.com",
                                      "--status", "dispatching",
                                      "--recipient", "+1 650-253-0000")["messages"]] == [ids[1]]
    assert run.json("messages", "list", "--account", "a@example.com",
                    "--since", "2100-01-01T00:00Z")["messages"] == []
    assert "More: --cursor" in run("messages", "list", "--account", "a@example.com",
                                   "--limit", "1")
    run("messages", "list", "--account", "a@example.com", "--recipient", "12", code=2)
    assert "Invalid phone number" in run.err

    got = run.json("messages", "get", ids[1])
    assert got == {**listed["messages"][1], "history": got["history"]}
    assert [h["status"] for h in got["history"]] == ["queued", "dispatching"]
    assert "dispatching" in run("messages", "get", ids[1])
    run("messages", "get", str(uuid.uuid4()), code=2)
    assert "Message not found" in run.err


def test_default_send_rate_from_settings(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSDORA_SEND_RATE", "7")
    run("accounts", "create", "a@example.com")
    assert run.json("devices", "create", "--account", "a@example.com",
                    "--name", "x")["sendRate"] == 7


# --- send and device-sim, against a real broker --------------------------------


class ThreadedBroker:
    """A real uvicorn broker on a free port, in its own thread and loop (the
    CLI under test runs `asyncio.run` on the main thread)."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        config = server.uvicorn_config(create_app(settings, database_url), settings, "127.0.0.1", 0)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()))

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "broker did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class ThreadedSim:
    def __init__(self, url: str, token: str) -> None:
        self.sim: device_sim.DeviceSim | None = None
        self.url, self.token = url, token
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()))

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sim = device_sim.DeviceSim(self.url, self.token)
        self.task = asyncio.current_task()
        self.ready.set()
        try:
            await self.sim.run()
        except asyncio.CancelledError:
            pass

    def __enter__(self) -> device_sim.DeviceSim:
        self.thread.start()
        assert self.ready.wait(10)
        assert self.sim is not None
        deadline = time.monotonic() + 10
        while self.sim.connections == 0:
            assert time.monotonic() < deadline, "device-sim did not connect"
            time.sleep(0.01)
        return self.sim

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self.task is not None
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout=10)


@pytest.fixture
def broker_url(run: Cli, database_url: str, tmp_path: Path) -> Iterator[str]:
    settings = Settings(home=tmp_path, database_url=database_url, heartbeat_s=5, pool_min=1,
                        pool_max=4)
    with ThreadedBroker(settings, database_url) as url:
        yield url


def test_send_without_a_device_exits_1_with_the_error_body(run: Cli, broker_url: str) -> None:
    run("accounts", "create", "a@example.com")
    key = run.json("keys", "create", "--account", "a@example.com")["key"]
    body = run.json("send", "--key", key, "--url", broker_url, "+16502530000", "hi", code=1)
    assert body == {"statusCode": 400, "message": "No eligible device available",
                    "error": "Bad Request"}
    run("send", "--key", key, "--url", broker_url, "+16502530000", "hi", code=1)
    assert "No eligible device available" in run.err
    run("send", "--key", "smsgw_00000000_" + "x" * 43, "--url", broker_url, "+16502530000", "hi",
        code=1)
    assert "Invalid API key" in run.err


def test_send_through_a_simulated_phone(run: Cli, broker_url: str, database_url: str) -> None:
    run("accounts", "create", "a@example.com")
    key = run.json("keys", "create", "--account", "a@example.com")["key"]
    token = run.json("devices", "create", "--account", "a@example.com", "--name", "sim")["token"]
    with ThreadedSim(broker_url, token) as sim:
        body = run.json("send", "--key", key, "--url", broker_url, "+1 650-253-0000", "code 1")
        assert body["statusCode"] == 201 and body["message"] == "SMS queued for delivery"
        data = body["data"]
        assert data["recipient"] == "+16502530000" and data["device"]["deviceName"] == "sim"
        text = run("send", "--key", key, "--url", broker_url, "+16502530000", "code 2")
        assert text.startswith("Message ") and "'sim'" in text
        deadline = time.monotonic() + 10
        while _sql(database_url, "SELECT count(*) FROM messages WHERE status <> 'delivered'")[0][0]:
            assert time.monotonic() < deadline, "messages not delivered"
            time.sleep(0.05)
        assert sim.sent_count[data["id"]] == 1


def test_send_to_a_closed_port_exits_1(run: Cli) -> None:
    port = free_port()
    run("send", "--key", "k", "--url", f"http://127.0.0.1:{port}", "+16502530000", "x", code=1)
    assert "cannot reach the broker" in run.err
    assert "cannot reach" in run.json("send", "--key", "k", "--url", f"http://127.0.0.1:{port}",
                                      "+16502530000", "x", code=1)["error"]


def test_device_sim_with_a_refused_token_exits_2(run: Cli, broker_url: str) -> None:
    run("device-sim", "--token", "smsdev_00000000_" + "y" * 43, "--url", broker_url, code=2)
    assert "401" in run.err
    run("device-sim", "--token", "t", "--url", "ftp://example.com", code=2)
    run("device-sim", "--url", broker_url, code=2)  # no token
    assert "--token" in run.err


def test_device_sim_flags_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)
    parser = cli.build_parser(Settings(home=Path("/nonexistent")))
    ws = parser.parse_args(["device-sim", "--token", "t"])
    assert (ws.app, ws.token, ws.outcome, ws.delay_ms) == ("ws", "t", "delivered", 500)
    app = parser.parse_args(["device-sim", "--app", "smsgate", "--key", "k", "--outcome",
                             "failed", "--delay-ms", "0", "--url", "https://gw.example.com",
                             "--name", "pixel/7", "--app-timing"])
    assert (app.app, app.key, app.code, app.token, app.device_id) == ("smsgate", "k", None,
                                                                      None, None)
    assert (app.outcome, app.delay_ms, app.name, app.app_timing) == ("failed", 0, "pixel/7", True)
    again = parser.parse_args(["device-sim", "--app", "smsgate", "--token", "t",
                               "--device-id", "d", "--code", "abc234"])
    assert (again.token, again.device_id, again.code, again.app_timing) == ("t", "d", "abc234",
                                                                            False)
    with pytest.raises(SystemExit):
        parser.parse_args(["device-sim", "--app", "android"])


# --- the environment first: secrets out of argv, the URL serve listens at ----------


@pytest.mark.parametrize(("env", "url"), [
    ({}, "http://127.0.0.1:8000"),
    ({"SMSDORA_PORT": "8001"}, "http://127.0.0.1:8001"),
    ({"SMSDORA_PORT": "8443", "SMSDORA_TLS_CERT": "/t/server.pem",
      "SMSDORA_TLS_KEY": "/t/server.key"}, "https://127.0.0.1:8443"),
    ({"SMSDORA_HOST": "0.0.0.0", "SMSDORA_PORT": "9000"}, "http://127.0.0.1:9000"),
    ({"SMSDORA_HOST": "::"}, "http://[::1]:8000"),
    ({"SMSDORA_HOST": "192.168.1.5"}, "http://192.168.1.5:8000"),
    ({"SMSDORA_HOST": "fd00::5"}, "http://[fd00::5]:8000"),
    ({"SMSDORA_HOST": "gw.lan", "SMSDORA_TLS_CERT": "/t/c", "SMSDORA_TLS_KEY": "/t/k"},
     "https://gw.lan:8000"),
    ({"SMSDORA_URL": "https://gw.example.com", "SMSDORA_PORT": "8001"},
     "https://gw.example.com"),
], ids=["default", "port", "tls", "wildcard", "wildcard-v6", "address", "address-v6", "name",
        "url-wins"])
def test_send_and_device_sim_find_the_broker_where_serve_listens(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str) -> None:
    """Issue 11 item 11: with the settings `serve` reads (SMSDORA_HOST,
    SMSDORA_PORT, SMSDORA_TLS_CERT) the clients reach it, unless
    SMSDORA_URL says otherwise; a wildcard address is reached over loopback."""
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert common.broker_url(Settings.from_env(env), env.get("SMSDORA_URL")) == url
    parser = cli.build_parser(Settings.from_env())
    assert parser.parse_args(["send", "+16502530000", "hi"]).url == url
    assert parser.parse_args(["device-sim"]).url == url
    assert parser.parse_args(["device-sim", "--app", "smsgate"]).url == url
    assert parser.parse_args(["send", "--url", "http://h:1", "+1", "x"]).url == "http://h:1"


def test_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every secret a client command takes has its environment variable, so
    no example needs it in argv; a flag still overrides it."""
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)
    env = {"SMSDORA_API_KEY": "smsgw_k", "SMSDORA_DEVICE_TOKEN": "smsdev_t",
           "SMSDORA_DEVICE_ID": "d-1", "SMSDORA_REGISTER_KEY": "smsgw_r",
           "SMSDORA_REGISTER_CODE": "abc234"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = cli.build_parser(Settings(home=Path("/nonexistent")))
    assert parser.parse_args(["send", "+16502530000", "hi"]).key == "smsgw_k"
    sim = parser.parse_args(["device-sim", "--app", "smsgate"])
    assert (sim.token, sim.device_id, sim.key, sim.code) == ("smsdev_t", "d-1", "smsgw_r",
                                                              "abc234")
    assert parser.parse_args(["send", "--key", "other", "+1", "x"]).key == "other"
    assert parser.parse_args(["device-sim", "--key", "other"]).key == "other"


def test_help_names_the_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser(Settings(home=Path("/nonexistent")))
    for argv, names in ((["send", "--help"], ["SMSDORA_API_KEY", "SMSDORA_URL", "SMSDORA_PORT"]),
                        (["device-sim", "--help"], ["SMSDORA_DEVICE_TOKEN",
                                                    "SMSDORA_REGISTER_KEY",
                                                    "SMSDORA_REGISTER_CODE", "SMSDORA_PORT"])):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for name in names:
            assert name in out, (argv, name)


def test_send_without_a_key_names_the_environment_variable(run: Cli) -> None:
    run("send", "+16502530000", "hi", code=2)
    assert "SMSDORA_API_KEY" in run.err


def test_send_with_only_smsdora_port_reaches_that_port(
        run: Cli, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: SMSDORA_PORT alone (as `serve` was started with),
    the key in SMSDORA_API_KEY, no flag at all."""
    run("accounts", "create", "a@example.com")
    monkeypatch.setenv("SMSDORA_API_KEY", run.json("keys", "create", "--account",
                                                   "a@example.com")["key"])
    monkeypatch.setenv("SMSDORA_PORT", broker_url.rsplit(":", 1)[1])
    body = run.json("send", "+16502530000", "hi", code=1)  # reached it: no phone, a 400
    assert body["message"] == "No eligible device available"


def test_device_sim_smsgate_needs_credentials_and_an_http_url(run: Cli) -> None:
    run("device-sim", "--app", "smsgate", code=2)
    assert "--key or --code" in run.err
    run("device-sim", "--app", "smsgate", "--token", "t", code=2)
    assert "--device-id" in run.err
    run("device-sim", "--app", "smsgate", "--key", "k", "--url", "ftp://example.com", code=2)
    assert "not an http(s) URL" in run.err


def test_device_sim_smsgate_with_a_refused_key_exits_2(run: Cli, broker_url: str) -> None:
    run("device-sim", "--app", "smsgate", "--key", "smsgw_00000000_" + "x" * 43,
        "--url", broker_url, code=2)
    assert "POST /device refused: 401" in run.err


def test_device_sim_smsgate_registers_sends_and_stops_on_sigint(
        run: Cli, broker_url: str, database_url: str, tmp_path: Path) -> None:
    run("accounts", "create", "a@example.com")
    key = run.json("keys", "create", "--account", "a@example.com", "--scope", "messages:send",
                   "--scope", "devices:register")["key"]
    env = {**os.environ, "SMSDORA_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "device-sim", "--app", "smsgate", "--key", key,
         "--url", broker_url, "--delay-ms", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("connected"):
                break
        out = "".join(lines)
        assert f"on {broker_url}/api/mobile/v1" in out and "registered: device " in out
        # The token to run it again goes in the environment, not in argv.
        assert "--device-id " in out and "export SMSDORA_DEVICE_TOKEN=smsdev_" in out
        assert "--token" not in out
        text = run("send", "--key", key, "--url", broker_url, "+16502530000", "via the app")
        message_id = text.split()[1]
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(f"patched {message_id}: Delivered"):
                break
        assert _sql(database_url, "SELECT status FROM messages")[0][0] == "delivered"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_runs_the_broker_until_stopped(run: Cli, database_url: str, tmp_path: Path,
                                             stop: signal.Signals) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "SMSDORA_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "broker", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not answer /health"
                time.sleep(0.05)
        assert health["status"] == "ok" and health["database"] == "ok"
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert b"Traceback" not in err
        # Structured logs: every line on stderr is a JSON object.
        lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
        assert lines and all("level" in line for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
