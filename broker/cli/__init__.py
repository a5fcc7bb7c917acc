"""The command line (contract section 6). Thin: parse, call the library, print.

Every command takes `--json` (before or after its name) and then prints one
JSON object on stdout instead of prose. Exit codes: 0 done; 2 the request
cannot be done as asked (unknown account or id, duplicate email, device
limit, bad scope or value), with the reason on stderr (with `--json`,
`{"error": ...}` on stdout); 1 an operational failure (database
unreachable, the broker answered `send` with an error).

Secrets (API keys, device tokens) are printed once, when made, and never
logged. Database commands open one asyncpg connection to the same database
`serve` uses, the embedded one included, so they work while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from broker import keys, store
from broker.ops import embedded_pg
from broker.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8000"
SHOWN_ONCE = "It is shown only once: store it now."
_encoder = msgspec.json.Encoder()


class CliError(Exception):
    """The request cannot be done as asked (exit 2)."""

    exit_code = 2


class Failed(CliError):
    """Something outside the request failed (exit 1)."""

    exit_code = 1


@dataclass
class Output:
    data: Any  # the --json object (or a response body, as bytes)
    text: str  # the prose
    exit_code: int = 0


Handler = Callable[[asyncpg.Connection, argparse.Namespace, Settings], Awaitable[Output]]


# --- helpers ----------------------------------------------------------------


def _iso(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds") if t else None


def _uuid(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise CliError(f"no {what} with id {raw!r} (not a valid id)") from None


def _email(raw: str) -> str:
    email = raw.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or "@" in domain or any(c.isspace() for c in email):
        raise CliError(f"not an email address: {raw!r}")
    return email


async def _account(db: asyncpg.Connection, email: str) -> store.Account:
    account = await store.account_by_email(db, _email(email))
    if account is None:
        raise CliError(f"no account with email {email!r}")
    return account


def _positive(raw: str) -> int:
    value = _nonnegative(raw)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _nonnegative(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


# --- accounts ---------------------------------------------------------------


async def accounts_create(db: asyncpg.Connection, args: argparse.Namespace,
                          settings: Settings) -> Output:
    password_hash = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CliError("--password-stdin: no password on standard input")
        from argon2 import PasswordHasher  # argon2id by default; only this command needs it

        password_hash = PasswordHasher().hash(password)
    email = _email(args.email)
    try:
        account = await store.create_account(db, email, args.plan, password_hash)
    except store.DuplicateEmail:
        raise CliError(f"an account with email {email!r} already exists") from None
    except LookupError as err:
        raise CliError(str(err)) from None
    return Output({"id": str(account.id), "email": account.email, "plan": account.plan},
                  f"Created account {account.email} (id {account.id}, plan {account.plan})")


# --- API keys ---------------------------------------------------------------


def _key_info(row: store.KeyRow) -> dict[str, Any]:
    return {"id": str(row.id), "name": row.name, "prefix": row.prefix, "scopes": row.scopes,
            "rateLimit": row.rate_limit, "expiresAt": _iso(row.expires_at),
            "revoked": row.revoked, "createdAt": _iso(row.created_at)}


async def keys_create(db: asyncpg.Connection, args: argparse.Namespace,
                      settings: Settings) -> Output:
    try:
        scopes = keys.check_scopes(args.scope or list(keys.DEFAULT_SCOPES))
    except ValueError as err:
        raise CliError(str(err)) from None
    account = await _account(db, args.account)
    expires_at = None
    if args.expires_in is not None:
        expires_at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=args.expires_in)
    full, prefix = keys.make_secret(keys.KEY_KIND)
    row = await store.insert_key(db, account.id, args.name, prefix,
                                 keys.digest(settings.server_secret(), full), scopes,
                                 args.rate_limit, expires_at)
    info = _key_info(row)
    limit = f"{row.rate_limit}/min" if row.rate_limit else "no rate limit"
    expiry = f"expires {info['expiresAt']}" if row.expires_at else "no expiry"
    text = (f"Created key {row.id} for {account.email}"
            f"{f' ({row.name})' if row.name else ''}: scopes {', '.join(row.scopes)};"
            f" {limit}; {expiry}\n{full}\n{SHOWN_ONCE}")
    return Output({"id": info["id"], "key": full, "prefix": row.prefix, "name": row.name,
                   "scopes": row.scopes, "rateLimit": row.rate_limit,
                   "expiresAt": info["expiresAt"]}, text)


async def keys_list(db: asyncpg.Connection, args: argparse.Namespace,
                    settings: Settings) -> Output:
    account = await _account(db, args.account)
    rows = await store.list_keys(db, account.id)
    now = dt.datetime.now(dt.timezone.utc)
    lines = [f"{len(rows)} key(s) for {account.email}"]
    for row in rows:
        state = ("revoked" if row.revoked else
                 "expired" if row.expires_at is not None and row.expires_at <= now else "active")
        lines.append(f"  {row.id}  smsgw_{row.prefix}_…  {state:<7}  {','.join(row.scopes)}"
                     f"  {row.name}".rstrip())
    return Output({"keys": [_key_info(r) for r in rows]}, "\n".join(lines))


async def keys_revoke(db: asyncpg.Connection, args: argparse.Namespace,
                      settings: Settings) -> Output:
    key_id = _uuid(args.id, "key")
    if not await store.revoke_key(db, key_id):
        raise CliError(f"no key with id {args.id}")
    return Output({"id": str(key_id), "revoked": True},
                  f"Revoked key {key_id}: it stops working at once")


async def keys_rotate(db: asyncpg.Connection, args: argparse.Namespace,
                      settings: Settings) -> Output:
    key_id = _uuid(args.id, "key")
    full, prefix = keys.make_secret(keys.KEY_KIND)
    row = await store.rotate_key(db, key_id, prefix, keys.digest(settings.server_secret(), full))
    if row is None:
        raise CliError(f"no key with id {args.id}")
    text = f"Rotated key {row.id}: the old secret stopped working\n{full}\n{SHOWN_ONCE}"
    if row.revoked:
        text += "\nNote: this key is revoked, so the new secret is refused too."
    return Output({"id": str(row.id), "key": full, "prefix": row.prefix,
                   "revoked": row.revoked}, text)


# --- devices ----------------------------------------------------------------


async def devices_create(db: asyncpg.Connection, args: argparse.Namespace,
                         settings: Settings) -> Output:
    name = args.name.strip()
    if not 1 <= len(name) <= 100:
        raise CliError("--name must be 1-100 characters")
    account = await _account(db, args.account)
    rate = settings.default_send_rate if args.send_rate is None else args.send_rate
    token, prefix = keys.make_secret(keys.TOKEN_KIND)
    try:
        row = await store.insert_device(db, account.id, name, prefix,
                                        keys.digest(settings.server_secret(), token), rate)
    except store.DeviceLimitReached:
        raise CliError("Device limit reached") from None
    per_min = f"{row.send_rate} SMS a minute" if row.send_rate else "no send limit"
    return Output(
        {"id": str(row.id), "token": token, "deviceName": row.name, "sendRate": row.send_rate},
        f"Registered device {row.name!r} (id {row.id}) for {account.email}, {per_min}\n"
        f"Device token: {token}\n{SHOWN_ONCE}")


async def devices_list(db: asyncpg.Connection, args: argparse.Namespace,
                       settings: Settings) -> Output:
    account = await _account(db, args.account)
    rows = await store.list_devices(db, account.id)
    items = [{"id": str(r.id), "deviceName": r.name, "active": r.active,
              "online": r.online_node is not None, "node": r.online_node,
              "lastSeen": _iso(r.last_seen_at), "sendRate": r.send_rate,
              "appVersion": r.app_version, "health": r.health} for r in rows]
    lines = [f"{len(rows)} device(s) for {account.email}"]
    for item in items:
        state = ("online" if item["online"] else "active") if item["active"] else "deactivated"
        lines.append(f"  {item['id']}  {state:<11}  last seen {item['lastSeen'] or 'never'}"
                     f"  {item['sendRate'] or 'unlimited'}/min  {item['deviceName']}")
    return Output({"devices": items}, "\n".join(lines))


async def devices_deactivate(db: asyncpg.Connection, args: argparse.Namespace,
                             settings: Settings) -> Output:
    device_id = _uuid(args.id, "device")
    if not await store.deactivate_device(db, device_id):
        raise CliError(f"no device with id {args.id}")
    return Output({"id": str(device_id), "active": False},
                  f"Deactivated device {device_id}: its token is refused from now on")


async def migrate(db: asyncpg.Connection, args: argparse.Namespace, settings: Settings) -> Output:
    # `serve` runs this first, so a database newer than this code stops it
    # here, before it listens (exit 2).
    try:
        applied = await store.migrate.migrate(db)
        version = await store.migrate.check(db)
    except store.SchemaTooNew as err:
        raise CliError(str(err)) from None
    names = {m.version: m.path.stem for m in store.migrate.discover()}
    done = f"applied {', '.join(names[v] for v in applied)}" if applied else "nothing to apply"
    return Output({"migrated": True, "applied": applied, "version": version},
                  f"Schema at version {version}: {done}")


def _run_db(handler: Handler, args: argparse.Namespace, settings: Settings) -> Output:
    dsn = embedded_pg.database_url(settings)

    async def session() -> Output:
        db = await store.connect(dsn)
        try:
            return await handler(db, args, settings)
        finally:
            await db.close()

    try:
        return asyncio.run(session())
    except asyncpg.UndefinedTableError:
        raise CliError("the database has no smsdora tables: run `smsdora migrate` first") from None
    except store.DATABASE_DOWN as err:
        raise Failed(f"cannot reach the database: {type(err).__name__}: {err}") from None


# --- commands that talk to a running broker --------------------------------


def send(args: argparse.Namespace, settings: Settings) -> Output:
    body: dict[str, Any] = {"recipient": args.recipient, "message": args.message}
    if args.ttl is not None:
        body["ttl"] = args.ttl
    headers = {"Content-Type": "application/json", "x-api-key": args.key}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    request = urllib.request.Request(args.url.rstrip("/") + "/messages/send",
                                     data=_encoder.encode(body), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise Failed(f"cannot reach the broker at {args.url}: {reason}") from None
    try:
        parsed = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        parsed = None
    ok = 200 <= status < 300
    if not isinstance(parsed, dict):
        return Output({"error": f"HTTP {status}: {raw[:200].decode(errors='replace')}"},
                      f"HTTP {status}: {raw[:200].decode(errors='replace')}", 0 if ok else 1)
    if not ok:
        return Output(raw, f"Error {status}: {parsed.get('message', '')}", 1)
    data = parsed.get("data") or {}
    device = data.get("device") or {}
    return Output(raw, f"Message {data.get('id')} to {data.get('recipient')}:"
                       f" {data.get('status')} on device {device.get('deviceName')!r}")


def device_sim(args: argparse.Namespace, settings: Settings) -> Output:
    from broker import device_sim as sim  # websockets client: only this command needs it

    def show(event: sim.Event) -> None:
        job = f" {event.id}" if event.id else ""
        print(f"{event.kind}{job}: {event.detail}", flush=True)

    try:
        sim.ws_url(args.url)
    except ValueError as err:
        raise CliError(str(err)) from None
    try:
        asyncio.run(sim.run(args.url, args.token, args.outcome, args.delay_ms, on_event=show))
    except sim.DeviceRejected:
        raise CliError("the broker refused the device token (401): wrong or deactivated") from None
    except KeyboardInterrupt:
        pass
    return Output({}, "device-sim stopped")


def serve(args: argparse.Namespace, settings: Settings) -> Output:
    from broker.ops import logs
    from broker.ops import server
    from broker.app import create_app

    dsn = embedded_pg.database_url(settings)
    _run_db(migrate, args, settings.with_(database_url=dsn))
    logs.setup(settings.log_level)
    server.run(create_app(settings, dsn), settings, args.host, args.port)
    return Output({}, "")


# --- parsing ----------------------------------------------------------------


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    # `--json` before the command sets the default; the same flag after it
    # must not reset that default to False, hence SUPPRESS on the children.
    child = argparse.ArgumentParser(add_help=False)
    child.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print one JSON object instead of prose")
    parser = argparse.ArgumentParser(prog="smsdora", description="smsdora SMS gateway broker")
    parser.add_argument("--json", action="store_true", default=False,
                        help="print one JSON object instead of prose")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    url = os.environ.get("SMSDORA_URL") or DEFAULT_URL

    def leaf(group: Any, name: str, help_: str, run: Any, db: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, parents=[child], help=help_)
        p.set_defaults(run=run, db=db)
        return p

    def branch(name: str, help_: str) -> Any:
        p = commands.add_parser(name, parents=[child], help=help_)
        return p.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = leaf(commands, "serve", "run the broker", serve, db=False)
    p.add_argument("--host", default=settings.host)
    p.add_argument("--port", type=int, default=settings.port)
    leaf(commands, "migrate", "apply the missing migrations", migrate)

    accounts = branch("accounts", "manage accounts")
    p = leaf(accounts, "create", "create an account", accounts_create)
    p.add_argument("email")
    p.add_argument("--plan", default="default")
    p.add_argument("--password-stdin", action="store_true",
                   help="read a password from the first line of standard input")

    keys_ = branch("keys", "manage API keys")
    p = leaf(keys_, "create", "create an API key", keys_create)
    p.add_argument("--account", required=True, metavar="EMAIL")
    p.add_argument("--name", default="")
    p.add_argument("--scope", action="append", metavar="S",
                   help="repeatable; default messages:send")
    p.add_argument("--rate-limit", type=_positive, metavar="N", help="requests a minute")
    p.add_argument("--expires-in", type=_positive, metavar="SECONDS")
    leaf(keys_, "list", "list an account's keys", keys_list).add_argument(
        "--account", required=True, metavar="EMAIL")
    leaf(keys_, "revoke", "revoke a key", keys_revoke).add_argument("id", metavar="ID")
    leaf(keys_, "rotate", "issue a new secret for a key", keys_rotate).add_argument(
        "id", metavar="ID")

    devices = branch("devices", "manage phones")
    p = leaf(devices, "create", "register a phone", devices_create)
    p.add_argument("--account", required=True, metavar="EMAIL")
    p.add_argument("--name", required=True)
    p.add_argument("--send-rate", type=_nonnegative, metavar="N",
                   help=f"SMS a minute (default {settings.default_send_rate}; 0 = no limit)")
    leaf(devices, "list", "list an account's phones", devices_list).add_argument(
        "--account", required=True, metavar="EMAIL")
    leaf(devices, "deactivate", "refuse a phone's token from now on",
         devices_deactivate).add_argument("id", metavar="ID")

    p = leaf(commands, "send", "send an SMS through a running broker", send, db=False)
    p.add_argument("--key", default=os.environ.get("SMSDORA_API_KEY"),
                   required=not os.environ.get("SMSDORA_API_KEY"), help="API key")
    p.add_argument("--url", default=url)
    p.add_argument("--ttl", type=_positive, metavar="SECONDS")
    p.add_argument("--idempotency-key")
    p.add_argument("recipient")
    p.add_argument("message")

    p = leaf(commands, "device-sim", "a simulated phone", device_sim, db=False)
    p.add_argument("--token", default=os.environ.get("SMSDORA_DEVICE_TOKEN"),
                   required=not os.environ.get("SMSDORA_DEVICE_TOKEN"), help="device token")
    p.add_argument("--url", default=url)
    p.add_argument("--outcome", choices=("delivered", "sent", "failed"), default="delivered",
                   help="what the simulated carrier reports (default delivered)")
    p.add_argument("--delay-ms", type=_nonnegative, default=500, metavar="N",
                   help="how long sending one SMS takes (default 500)")
    return parser


def _print(output: Output, as_json: bool) -> None:
    if as_json:
        data = output.data
        sys.stdout.write((data.decode() if isinstance(data, bytes) else
                          _encoder.encode(data).decode()) + "\n")
    elif output.text:
        print(output.text, file=sys.stdout if output.exit_code == 0 else sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.from_env()
    args = build_parser(settings).parse_args(argv)
    try:
        if args.db:
            output = _run_db(args.run, args, settings)
        else:
            output = args.run(args, settings)
    except CliError as err:
        if args.json:
            print(_encoder.encode({"error": str(err)}).decode())
        else:
            where = " ".join(filter(None, (args.command, getattr(args, "action", None))))
            print(f"smsdora {where}: {err}", file=sys.stderr)
        return err.exit_code
    if args.command not in ("serve", "device-sim"):
        _print(output, args.json)
    return output.exit_code


__all__ = ["main", "build_parser", "CliError"]
