"""The mobile API of the "SMS Gateway for Android" app, first slice (contract
section 8; shared/SMSGATE.md sections 2-4, 6, 10 and the conformance cases of
section 11): registering a phone (`POST /device` with Bearer key, Basic
email:password or a one-time Code), `PATCH`/`GET /device`, `GET /user/code`,
`GET /settings`, `GET /webhooks` and `PATCH /user/password`, under both
`/api/mobile/v1` and `/mobile/v1`.

The app (ktor, `expectSuccess = true`) only looks at the status; JSON is only
decoded when the answer says `Content-Type: application/json`. So every
answer here is checked for its status and its content type, errors too."""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from broker import keys
from broker.services import pairing
from broker.settings import Settings
from tests.e2e.conftest import SECRET, Account

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def broker_settings(broker_settings: Settings) -> Settings:
    """Without the failed-credential throttle (contract section 12; its own
    tests are in tests/hostile/): these send dozens of bad credentials from
    one address on purpose, each to see its 401."""
    return broker_settings.with_(auth_failures=0, login_failures=0)

AccountFactory = Callable[[str], Awaitable[Account]]  # the `make_account` fixture

API = "/api/mobile/v1"  # the base the app's docs tell users to type
ALT = "/mobile/v1"  # the reference server's own mount, answered too
PASSWORD = "correct horse battery staple"  # >= 14 characters, as the app asks
NEW_PASSWORD = "a much longer new passphrase"
# What the app sends with every call (SMSGATE section 2).
APP_HEADERS = {"User-Agent": "me.capcom.smsgateway/1.68.0", "Accept": "application/json"}
# SMSGATE section 4.1: `name` = MANUFACTURER/PRODUCT; simCards redacted by the app.
SIM_CARDS = [{"slotIndex": 0, "simNumber": 1, "phoneNumber": "********1234",
              "carrierName": "***ne 1", "iccid": "***************5678"}]
CODE_ALPHABET = set("23456789abcdefghjkmnpqrstuvwxyz")
# SMSGATE section 2 / 4.6.3: RFC 3339 with 0 or 3 fractional digits.
DATE_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?(Z|[+-]\d\d:\d\d)$")


# --- helpers -------------------------------------------------------------------------


def basic(email: str, password: str) -> dict[str, str]:
    """`Authorization: Basic base64(email:password)`, as "Sign In" sends it."""
    raw = base64.b64encode(f"{email}:{password}".encode()).decode("ascii")
    return {**APP_HEADERS, "Authorization": f"Basic {raw}"}


def bearer(token: str) -> dict[str, str]:
    """`Authorization: Bearer <token>`: an API key on `POST /device` ("Sign Up"),
    the device token everywhere else."""
    return {**APP_HEADERS, "Authorization": f"Bearer {token}"}


def code(otp: str) -> dict[str, str]:
    """`Authorization: Code <otp>`, as "By code" sends it."""
    return {**APP_HEADERS, "Authorization": f"Code {otp}"}


def is_json(r: httpx.Response) -> bool:
    media_type = str(r.headers.get("content-type", "")).split(";")[0]
    return media_type.strip().lower() == "application/json"


def json_of(r: httpx.Response, status: int) -> Any:
    """The body of an answer with this status, asserting it is declared JSON."""
    assert r.status_code == status, (r.request.method, str(r.request.url), r.status_code, r.text)
    assert is_json(r), (r.request.method, str(r.request.url), r.headers.get("content-type"))
    return r.json()


def assert_error(r: httpx.Response, status: int, message: str | None = None) -> None:
    """An error the app can read: this status, `application/json`, an object
    with a non-empty `message` (ours and the reference's error shapes both
    have one)."""
    body = json_of(r, status)
    assert isinstance(body, dict), body
    assert isinstance(body.get("message"), str) and body["message"], body
    if message is not None:
        assert body["message"] == message, body


def assert_2xx(r: httpx.Response) -> None:
    """Any 2xx the app accepts (`expectSuccess`): 204 with no body, or JSON."""
    assert 200 <= r.status_code < 300, (r.request.method, str(r.request.url), r.status_code,
                                        r.text)
    if r.status_code != 204 and r.content:
        assert is_json(r), r.headers.get("content-type")
        r.json()


async def register(http: httpx.AsyncClient, headers: dict[str, str], *,
                   name: str = "samsung/beyond1ltexx", prefix: str = API,
                   **body: Any) -> dict[str, Any]:
    """`POST {prefix}/device` as the app registers; asserts the 201 and the
    `{id, token, login}` shape (no `password`: we never create users) and
    returns the JSON."""
    r = await http.post(f"{prefix}/device", json={"name": name, **body}, headers=headers)
    out = json_of(r, 201)
    assert isinstance(out, dict), out
    assert set(out) == {"id", "token", "login"}, out
    for k in ("id", "token", "login"):
        assert isinstance(out[k], str) and out[k], out
    assert len(out["id"]) <= 36, out  # the app's PATCH /message validation: id <= 36
    assert out["token"] != out["id"]
    return out


async def set_password(account: Account, password: str = PASSWORD) -> None:
    """Give the account a password (argon2id, like `smsdora accounts create`)."""
    await account.db.execute("UPDATE accounts SET password_hash = $1 WHERE id = $2",
                             PasswordHasher().hash(password), account.id)


async def one_device_plan(account: Account) -> None:
    """Put the account on a plan that allows a single device."""
    await account.db.execute("INSERT INTO plans (name, monthly_messages, max_devices)"
                             " VALUES ('one', 1000, 1) ON CONFLICT (name) DO NOTHING")
    await account.db.execute("UPDATE accounts SET plan = 'one' WHERE id = $1", account.id)


async def login_code(http: httpx.AsyncClient, email: str, password: str,
                     prefix: str = API) -> dict[str, Any]:
    """`GET {prefix}/user/code` with Basic; asserts the 200 and returns the JSON."""
    out = json_of(await http.get(f"{prefix}/user/code", headers=basic(email, password)), 200)
    assert isinstance(out, dict), out
    return out


async def listed_devices(http: httpx.AsyncClient, account: Account) -> dict[str, dict[str, Any]]:
    """The client API's `GET /devices`, by id."""
    r = await http.get("/devices", headers=account.headers)
    assert r.status_code == 200, r.text
    return {d["id"]: d for d in r.json()["data"]}


async def device_count(account: Account) -> int:
    return int(await account.db.fetchval(
        "SELECT count(*) FROM devices WHERE account_id = $1", account.id))


def unknown_key() -> str:
    """A well-formed API key that was never stored."""
    return keys.make_secret(keys.KEY_KIND)[0]


def unknown_device_token() -> str:
    """A well-formed device token that was never stored."""
    return keys.make_secret(keys.TOKEN_KIND)[0]


# --- POST /device (REG) --------------------------------------------------------------


async def test_reg_1_bearer_key_with_devices_register_registers_a_device(
        http: httpx.AsyncClient, account: Account) -> None:
    key = await account.make_key(["devices:register"])
    out = await register(http, bearer(key), name="Private Device Name", pushToken="token")
    assert out["login"] == account.email  # the account's email; "password" is left out
    listed = await listed_devices(http, account)
    assert out["id"] in listed, listed
    assert listed[out["id"]]["deviceName"] == "Private Device Name"
    assert listed[out["id"]]["transport"] == "smsgate"


async def test_reg_1_keys_write_implies_devices_register(
        http: httpx.AsyncClient, account: Account) -> None:
    out = await register(http, bearer(account.key), name="Private Device Name",
                         pushToken="token")
    assert out["login"] == account.email
    assert out["id"] in await listed_devices(http, account)


async def test_reg_1_two_registrations_are_two_devices(
        http: httpx.AsyncClient, account: Account) -> None:
    key = await account.make_key(["devices:register"])
    a = await register(http, bearer(key))
    b = await register(http, bearer(key))
    assert a["id"] != b["id"] and a["token"] != b["token"]
    assert {a["id"], b["id"]} <= set(await listed_devices(http, account))


async def test_reg_1_devices_list_says_which_transport(
        http: httpx.AsyncClient, account: Account) -> None:
    ws = await account.make_device("WebSocket phone")
    out = await register(http, bearer(account.key), name="Android app phone")
    listed = await listed_devices(http, account)
    assert listed[ws.id]["transport"] == "websocket"
    assert listed[out["id"]]["transport"] == "smsgate"


async def test_reg_2_no_authorization_is_401(http: httpx.AsyncClient, account: Account) -> None:
    r = await http.post(f"{API}/device", json={"name": "Private Device Name",
                                               "pushToken": "token"}, headers=APP_HEADERS)
    assert_error(r, 401)
    assert await device_count(account) == 0


async def test_reg_3_wrong_bearer_is_401(http: httpx.AsyncClient, account: Account) -> None:
    for token in ["987654321", unknown_key(), unknown_device_token(), account.key + "x"]:
        r = await http.post(f"{API}/device", json={"name": "Private Device Name",
                                                   "pushToken": "token"},
                            headers=bearer(token))
        assert_error(r, 401)
    for headers in [{**APP_HEADERS, "Authorization": "Bearer"},
                    {**APP_HEADERS, "Authorization": f"Token {account.key}"},
                    {**APP_HEADERS, "Authorization": "Code"}]:
        r = await http.post(f"{API}/device", json={"name": "x"}, headers=headers)
        assert_error(r, 401)
    assert await device_count(account) == 0


async def test_reg_3_key_without_devices_register_scope_is_401(
        http: httpx.AsyncClient, account: Account) -> None:
    """The app only understands 401 here, so a key of the wrong scope is a 401
    (not our usual 403)."""
    for scopes in (["messages:send"], ["messages:read", "devices:read", "devices:write"]):
        key = await account.make_key(scopes)
        r = await http.post(f"{API}/device", json={"name": "Phone"}, headers=bearer(key))
        assert_error(r, 401)
    assert await device_count(account) == 0


async def test_reg_3_expired_key_is_401(http: httpx.AsyncClient, account: Account) -> None:
    key = await account.make_key(["devices:register"],
                                 expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    r = await http.post(f"{API}/device", json={"name": "Phone"}, headers=bearer(key))
    assert_error(r, 401)
    assert await device_count(account) == 0


async def test_reg_4_sim_cards_without_push_token(http: httpx.AsyncClient,
                                                  account: Account) -> None:
    out = await register(http, bearer(account.key), simCards=SIM_CARDS)
    assert out["login"] == account.email
    out = await register(http, bearer(account.key), simCards=[])
    assert out["id"] in await listed_devices(http, account)


async def test_reg_4_bad_body_is_400(http: httpx.AsyncClient, account: Account) -> None:
    headers = bearer(account.key)
    for content in [b"{", b"not json", b"[]", b'"name"', b"null"]:
        r = await http.post(f"{API}/device", content=content,
                            headers={**headers, "Content-Type": "application/json"})
        assert_error(r, 400)
    for payload in [{}, {"pushToken": "token"}, {"name": 5}, {"name": None},
                    {"name": "x" * 129}, {"name": "Phone", "pushToken": "p" * 257}]:
        r = await http.post(f"{API}/device", json=payload, headers=headers)
        assert_error(r, 400)
    assert await device_count(account) == 0
    # The limits themselves are allowed (SMSGATE 4.1: name <= 128, pushToken <= 256).
    await register(http, headers, name="n" * 128, pushToken="p" * 256)


async def test_reg_4_device_limit_reached_is_403(http: httpx.AsyncClient,
                                                 account: Account) -> None:
    await one_device_plan(account)
    await set_password(account)
    first = await register(http, bearer(account.key))
    for headers in [bearer(account.key), basic(account.email, PASSWORD)]:
        r = await http.post(f"{API}/device", json={"name": "Second phone"}, headers=headers)
        assert_error(r, 403, "Device limit reached")
    assert set(await listed_devices(http, account)) == {first["id"]}


async def test_reg_4_websocket_devices_count_towards_the_limit(
        http: httpx.AsyncClient, account: Account) -> None:
    await one_device_plan(account)
    await account.make_device("WebSocket phone")
    r = await http.post(f"{API}/device", json={"name": "Android app phone"},
                        headers=bearer(account.key))
    assert_error(r, 403, "Device limit reached")
    assert await device_count(account) == 1


async def test_reg_5_basic_email_password_registers_in_that_account(
        http: httpx.AsyncClient, account: Account, make_account: AccountFactory) -> None:
    await set_password(account)
    other = await make_account("other@example.com")
    await set_password(other, "other account's password")
    first = await register(http, bearer(account.key), name="Private Device Name")
    second = await register(http, basic(account.email, PASSWORD), name="Second phone",
                            simCards=SIM_CARDS)
    assert second["login"] == first["login"] == account.email  # no password in the reply
    assert second["id"] != first["id"]
    listed = await listed_devices(http, account)
    assert {first["id"], second["id"]} <= set(listed)
    assert listed[second["id"]]["transport"] == "smsgate"
    assert await device_count(other) == 0


async def test_reg_6_bad_basic_is_401(http: httpx.AsyncClient, account: Account,
                                      make_account: AccountFactory) -> None:
    await set_password(account)
    nopw = await make_account("nopassword@example.com")  # password_hash stays NULL
    for headers in [basic("a", "1"), basic(account.email, "wrong password!!"),
                    basic(account.email, ""), basic("nobody@example.com", PASSWORD),
                    basic(nopw.email, ""), basic(nopw.email, PASSWORD),
                    {**APP_HEADERS, "Authorization": "Basic !!!not-base64!!!"},
                    {**APP_HEADERS, "Authorization": "Basic " + base64.b64encode(
                        b"no-colon").decode()}]:
        r = await http.post(f"{API}/device", json={"name": "Phone"}, headers=headers)
        assert_error(r, 401)
    assert await device_count(account) == 0
    assert await device_count(nopw) == 0


async def test_reg_7_login_code_registers_once(http: httpx.AsyncClient,
                                               account: Account) -> None:
    await set_password(account)
    before = dt.datetime.now(dt.UTC)
    out = await login_code(http, account.email, PASSWORD)
    assert set(out) == {"code", "validUntil"}, out
    assert isinstance(out["code"], str) and len(out["code"]) == 6, out
    assert set(out["code"]) <= CODE_ALPHABET, out
    assert isinstance(out["validUntil"], str) and DATE_RE.match(out["validUntil"]), out
    valid_until = dt.datetime.fromisoformat(out["validUntil"])
    assert valid_until.tzinfo is not None
    ahead = valid_until - before
    assert dt.timedelta(minutes=9) <= ahead <= dt.timedelta(minutes=11), ahead  # 10 minutes

    dev = await register(http, code(out["code"]), name="Phone B", simCards=SIM_CARDS)
    assert dev["login"] == account.email
    listed = await listed_devices(http, account)
    assert listed[dev["id"]]["transport"] == "smsgate"

    r = await http.post(f"{API}/device", json={"name": "Phone C"}, headers=code(out["code"]))
    assert_error(r, 401)  # single use
    assert await device_count(account) == 1


async def test_reg_7_a_code_from_the_operator_registers_into_its_account(
        http: httpx.AsyncClient, account: Account) -> None:
    """`smsdora devices code --account EMAIL` (services.pairing, as the CLI
    calls it): no phone of the account needed to make one."""
    made = await pairing.make(account.db, SECRET, account.id)
    dev = await register(http, code(made.code.upper()), name="Phone B")  # case does not matter
    assert dev["login"] == account.email
    r = await http.post(f"{API}/device", json={"name": "Phone C"}, headers=code(made.code))
    assert_error(r, 401)  # single use


async def test_reg_7_a_refused_body_does_not_use_up_the_code(
        http: httpx.AsyncClient, account: Account) -> None:
    made = await pairing.make(account.db, SECRET, account.id)
    r = await http.post(f"{API}/device", json={"pushToken": "no name"}, headers=code(made.code))
    assert_error(r, 400)
    dev = await register(http, code(made.code), name="Phone B")  # still good, once
    assert dev["login"] == account.email


async def test_reg_7_unknown_codes_are_401(http: httpx.AsyncClient,
                                           account: Account) -> None:
    await set_password(account)
    otp = (await login_code(http, account.email, PASSWORD))["code"]
    for bad in ["222222", "zzzzzz", otp + "x", otp[:5]]:
        if bad == otp:
            continue
        r = await http.post(f"{API}/device", json={"name": "Phone"}, headers=code(bad))
        assert_error(r, 401)
    assert await device_count(account) == 0
    await register(http, code(otp))  # wrong guesses did not burn the real code
    assert await device_count(account) == 1


async def test_reg_8_login_code_needs_valid_basic(http: httpx.AsyncClient,
                                                  account: Account) -> None:
    await set_password(account)
    dev = await register(http, bearer(account.key))
    for headers in [APP_HEADERS, basic(account.email, "wrong password!!"), basic("a", "1"),
                    bearer(dev["token"]), bearer(account.key)]:
        r = await http.get(f"{API}/user/code", headers=headers)
        assert_error(r, 401)


# --- PATCH /device, GET /device (DEV) ------------------------------------------------


async def test_dev_1_patch_device_with_its_token(http: httpx.AsyncClient,
                                                 account: Account) -> None:
    dev = await register(http, bearer(account.key), pushToken="old")
    r = await http.patch(f"{API}/device", json={"id": dev["id"], "simCards": []},
                         headers=bearer(dev["token"]))
    assert_2xx(r)
    r = await http.patch(f"{API}/device", json={"id": dev["id"], "simCards": SIM_CARDS,
                                                "pushToken": "rotated"},
                         headers=bearer(dev["token"]))
    assert_2xx(r)
    assert dev["id"] in await listed_devices(http, account)


async def test_dev_2_patch_device_with_unknown_token_is_401(
        http: httpx.AsyncClient, account: Account) -> None:
    """The app's only trigger to register again (SMSGATE 6.2, 6.6)."""
    dev = await register(http, bearer(account.key))
    for token in ["bogus", unknown_device_token(), dev["token"] + "x", account.key]:
        r = await http.patch(f"{API}/device", json={"id": dev["id"], "simCards": []},
                             headers=bearer(token))
        assert_error(r, 401)
    r = await http.patch(f"{API}/device", json={"id": dev["id"], "simCards": []},
                         headers=APP_HEADERS)
    assert_error(r, 401)


async def test_dev_3_patch_another_devices_id_is_403(http: httpx.AsyncClient,
                                                     account: Account) -> None:
    mine = await register(http, bearer(account.key), name="Mine")
    other = await register(http, bearer(account.key), name="Other")
    r = await http.patch(f"{API}/device", json={"id": other["id"], "simCards": []},
                         headers=bearer(mine["token"]))
    assert_error(r, 403)
    r = await http.patch(f"{API}/device", json={"id": str(uuid.uuid4()), "simCards": []},
                         headers=bearer(mine["token"]))
    assert_error(r, 403)


async def test_dev_get_device_answers_external_ip(http: httpx.AsyncClient,
                                                  account: Account) -> None:
    dev = await register(http, bearer(account.key))
    out = json_of(await http.get(f"{API}/device", headers=bearer(dev["token"])), 200)
    assert isinstance(out, dict), out
    assert out["externalIp"] == "127.0.0.1"


# --- GET /settings (SET), GET /webhooks (WH) ---------------------------------------------


async def test_set_1_settings_are_objects_for_sse_only(http: httpx.AsyncClient,
                                                       account: Account) -> None:
    a = await register(http, bearer(account.key), name="A")
    b = await register(http, bearer(account.key), name="B")
    got = json_of(await http.get(f"{API}/settings", headers=bearer(a["token"])), 200)
    assert isinstance(got, dict), got
    for section, value in got.items():
        assert isinstance(value, dict), (section, value)  # a null section aborts the import
    assert got["gateway"]["notification_channel"] == "SSE_ONLY"
    assert "cloud_url" not in got["gateway"]  # a null there resets the app to the public server
    assert got["messages"]["limit_period"] == "PerMinute"
    assert got["messages"]["limit_value"] == 30  # the device's send rate (the default)
    key_a = got["webhooks"]["signing_key"]
    assert isinstance(key_a, str) and key_a
    # Stable for a device (the broker checks what it handed out), different per device.
    again = json_of(await http.get(f"{API}/settings", headers=bearer(a["token"])), 200)
    assert again["webhooks"]["signing_key"] == key_a
    other = json_of(await http.get(f"{API}/settings", headers=bearer(b["token"])), 200)
    assert isinstance(other["webhooks"]["signing_key"], str)
    assert other["webhooks"]["signing_key"] and other["webhooks"]["signing_key"] != key_a


async def test_set_1_limit_value_is_the_devices_send_rate(http: httpx.AsyncClient,
                                                          account: Account) -> None:
    dev = await register(http, bearer(account.key))
    await account.db.execute("UPDATE devices SET send_rate = 12 WHERE id = $1",
                             uuid.UUID(dev["id"]))
    got = json_of(await http.get(f"{API}/settings", headers=bearer(dev["token"])), 200)
    assert got["messages"]["limit_period"] == "PerMinute"
    assert got["messages"]["limit_value"] == 12


async def test_wh_1_webhooks_list_the_brokers_inbound_url(http: httpx.AsyncClient,
                                                          account: Account) -> None:
    # Only the broker's own sms:received URL (issue 12; tests/e2e/test_inbox.py).
    dev = await register(http, bearer(account.key))
    r = await http.get(f"{API}/webhooks", headers=bearer(dev["token"]))
    assert [(w["event"], w["url"]) for w in json_of(r, 200)] == [
        ("sms:received", str(http.base_url).rstrip("/") + f"{API}/inbound/{dev['id']}")]


# --- PATCH /user/password (PW) ---------------------------------------------------------


async def password_change(http: httpx.AsyncClient, token: str, current: str,
                          new: str) -> httpx.Response:
    return await http.patch(f"{API}/user/password",
                            json={"currentPassword": current, "newPassword": new},
                            headers=bearer(token))


async def test_pw_1_wrong_bearer_is_401(http: httpx.AsyncClient, account: Account) -> None:
    await set_password(account)
    dev = await register(http, bearer(account.key))
    for token in ["bogus", unknown_device_token(), dev["token"] + "x", account.key]:
        assert_error(await password_change(http, token, PASSWORD, NEW_PASSWORD), 401)
    await login_code(http, account.email, PASSWORD)  # unchanged


async def test_pw_2_wrong_current_password_is_401(http: httpx.AsyncClient,
                                                  account: Account) -> None:
    await set_password(account)
    dev = await register(http, bearer(account.key))
    assert_error(await password_change(http, dev["token"], "not the password!",
                                       NEW_PASSWORD), 401)
    await login_code(http, account.email, PASSWORD)  # unchanged
    r = await http.get(f"{API}/user/code", headers=basic(account.email, NEW_PASSWORD))
    assert_error(r, 401)


async def test_pw_3_new_password_under_14_characters_is_400(
        http: httpx.AsyncClient, account: Account) -> None:
    await set_password(account)
    dev = await register(http, bearer(account.key))
    assert_error(await password_change(http, dev["token"], PASSWORD, "x" * 13), 400)
    assert_error(await password_change(http, dev["token"], PASSWORD, ""), 400)
    for body in [{"currentPassword": PASSWORD}, {"newPassword": NEW_PASSWORD}, {}]:
        r = await http.patch(f"{API}/user/password", json=body, headers=bearer(dev["token"]))
        assert 400 <= r.status_code < 500 and is_json(r), (body, r.status_code, r.text)
    await login_code(http, account.email, PASSWORD)  # unchanged


async def test_pw_4_correct_change_switches_basic_to_the_new_password(
        http: httpx.AsyncClient, account: Account) -> None:
    await set_password(account)
    dev = await register(http, bearer(account.key))
    assert_2xx(await password_change(http, dev["token"], PASSWORD, NEW_PASSWORD))
    await login_code(http, account.email, NEW_PASSWORD)
    r = await http.get(f"{API}/user/code", headers=basic(account.email, PASSWORD))
    assert_error(r, 401)
    r = await http.post(f"{API}/device", json={"name": "Phone"},
                        headers=basic(account.email, PASSWORD))
    assert_error(r, 401)
    await register(http, basic(account.email, NEW_PASSWORD))
    # The device's own token keeps working.
    json_of(await http.get(f"{API}/settings", headers=bearer(dev["token"])), 200)


async def test_pw_5_revert_to_the_old_password(http: httpx.AsyncClient,
                                               account: Account) -> None:
    await set_password(account)
    dev = await register(http, bearer(account.key))
    assert_2xx(await password_change(http, dev["token"], PASSWORD, NEW_PASSWORD))
    assert_2xx(await password_change(http, dev["token"], NEW_PASSWORD, PASSWORD))
    await login_code(http, account.email, PASSWORD)
    r = await http.get(f"{API}/user/code", headers=basic(account.email, NEW_PASSWORD))
    assert_error(r, 401)


# --- SMSGATE section 10 --------------------------------------------------------------------


async def test_must_1_every_bearer_endpoint_answers_401_json_for_an_unknown_token(
        http: httpx.AsyncClient, account: Account) -> None:
    dev = await register(http, bearer(account.key))
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("PATCH", "/device", {"id": dev["id"], "simCards": []}),
        ("GET", "/device", None),
        ("GET", "/settings", None),
        ("GET", "/webhooks", None),
        ("PATCH", "/user/password", {"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD}),
    ]
    # Unknown, well-formed but never issued, tampered with, and an API key (no device's).
    for token in ["bogus", unknown_device_token(), dev["token"] + "x", account.key]:
        for prefix in (API, ALT):
            for method, path, body in calls:
                r = await http.request(method, prefix + path, json=body, headers=bearer(token))
                assert_error(r, 401)
    # The registered device's own token still works after all that.
    json_of(await http.get(f"{API}/settings", headers=bearer(dev["token"])), 200)


async def test_must_2_json_answers_say_application_json(http: httpx.AsyncClient,
                                                        account: Account) -> None:
    await set_password(account)
    dev = await register(http, bearer(account.key))  # asserts its content type
    for path in ("/device", "/settings", "/webhooks"):
        json_of(await http.get(f"{API}{path}", headers=bearer(dev["token"])), 200)
    await login_code(http, account.email, PASSWORD)
    # Errors are JSON too: 400, 401, 403.
    assert_error(await http.post(f"{API}/device", content=b"{",
                                 headers={**bearer(account.key),
                                          "Content-Type": "application/json"}), 400)
    assert_error(await http.get(f"{API}/settings", headers=APP_HEADERS), 401)
    other = await register(http, bearer(account.key))
    assert_error(await http.patch(f"{API}/device", json={"id": other["id"], "simCards": []},
                                  headers=bearer(dev["token"])), 403)


# --- both prefixes ---------------------------------------------------------------------


async def test_alias_mobile_v1_answers_like_api_mobile_v1(http: httpx.AsyncClient,
                                                          account: Account) -> None:
    await set_password(account)
    dev = await register(http, bearer(account.key), prefix=ALT, name="Alias phone")
    assert dev["login"] == account.email
    assert (await listed_devices(http, account))[dev["id"]]["transport"] == "smsgate"
    assert_error(await http.post(f"{ALT}/device", json={"name": "x"}, headers=APP_HEADERS), 401)
    # A device registered under one prefix is the same device under the other.
    for prefix in (ALT, API):
        assert_2xx(await http.patch(f"{prefix}/device", json={"id": dev["id"], "simCards": []},
                                    headers=bearer(dev["token"])))
        out = json_of(await http.get(f"{prefix}/device", headers=bearer(dev["token"])), 200)
        assert out["externalIp"] == "127.0.0.1"
        got = json_of(await http.get(f"{prefix}/settings", headers=bearer(dev["token"])), 200)
        assert got["gateway"]["notification_channel"] == "SSE_ONLY"
        hooks = json_of(await http.get(f"{prefix}/webhooks", headers=bearer(dev["token"])), 200)
        assert [w["url"].split("127.0.0.1", 1)[1].split("/", 1)[1] for w in hooks] == [
            f"{prefix.lstrip('/')}/inbound/{dev['id']}"]
    otp = await login_code(http, account.email, PASSWORD, prefix=ALT)
    assert len(otp["code"]) == 6 and DATE_RE.match(otp["validUntil"])
    via_code = await register(http, code(otp["code"]), prefix=API)
    assert via_code["login"] == account.email
    via_basic = await register(http, basic(account.email, PASSWORD), prefix=ALT)
    assert via_basic["login"] == account.email
    r = await http.patch(f"{ALT}/user/password",
                         json={"currentPassword": PASSWORD, "newPassword": "x" * 13},
                         headers=bearer(dev["token"]))
    assert_error(r, 400)


async def test_should_13_a_base_url_typed_with_a_trailing_slash_works(
        http: httpx.AsyncClient, account: Account) -> None:
    """The app calls "$base/device": a base ending in "/" gives "//device"
    (SMSGATE sections 1.2 and 10, SHOULD 13)."""
    base = API + "/"
    r = await http.post(f"{base}/device", json={"name": "Slash phone"},
                        headers=bearer(account.key))
    dev = json_of(r, 201)
    assert (await listed_devices(http, account))[dev["id"]]["deviceName"] == "Slash phone"
    assert_2xx(await http.patch(f"{base}/device", json={"id": dev["id"]},
                                headers=bearer(dev["token"])))
    assert json_of(await http.get(f"{base}/message", headers=bearer(dev["token"])), 200) == []
    got = json_of(await http.get(f"{base}/settings", headers=bearer(dev["token"])), 200)
    assert got["gateway"]["notification_channel"] == "SSE_ONLY"
    # Still refused without credentials, and unknown paths are still 404s.
    assert_error(await http.patch(f"{base}/device", json={"id": dev["id"]},
                                  headers=APP_HEADERS), 401)
    assert_error(await http.get(f"{base}/nothing", headers=bearer(dev["token"])), 404)
