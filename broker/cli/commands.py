"""Commands on the database (contract section 6): parse, call a service or
the store, describe the result. Each opens one asyncpg connection to the
database `serve` uses, the embedded one included, so they work while it runs."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from broker import keys, store
from broker.cli.common import SHOWN_ONCE, CliError, Failed, Output, account_of, email_of, parse_id
from broker.clock import iso
from broker.errors import BrokerError
from broker.ops import embedded_pg
from broker.services import devices as device_service
from broker.services import keys as key_service
from broker.services import pairing
from broker.settings import Settings

Handler = Callable[[asyncpg.Connection, argparse.Namespace, Settings], Awaitable[Output]]


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
    email = email_of(args.email)
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
            "rateLimit": row.rate_limit, "expiresAt": iso(row.expires_at),
            "revoked": row.revoked, "createdAt": iso(row.created_at),
            "lastUsedAt": iso(row.last_used_at)}


async def keys_create(db: asyncpg.Connection, args: argparse.Namespace,
                      settings: Settings) -> Output:
    try:
        # A bad scope is named before an unknown account, as it always was.
        scopes = keys.check_scopes(args.scope or list(keys.DEFAULT_SCOPES))
    except ValueError as err:
        raise CliError(str(err)) from None
    account = await account_of(db, args.account)
    try:
        row, full = await key_service.create(db, settings.server_secret(), account.id, args.name,
                                             scopes, args.rate_limit, args.expires_in)
    except BrokerError as err:
        raise CliError(err.message) from None
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
    account = await account_of(db, args.account)
    rows, _ = await key_service.page(db, account.id, None)
    now = dt.datetime.now(dt.UTC)
    lines = [f"{len(rows)} key(s) for {account.email}"]
    for row in rows:
        state = ("revoked" if row.revoked else
                 "expired" if row.expires_at is not None and row.expires_at <= now else "active")
        lines.append(f"  {row.id}  smsgw_{row.prefix}_…  {state:<7}  {','.join(row.scopes)}"
                     f"  {row.name}".rstrip())
    return Output({"keys": [_key_info(r) for r in rows]}, "\n".join(lines))


async def keys_revoke(db: asyncpg.Connection, args: argparse.Namespace,
                      settings: Settings) -> Output:
    key_id = parse_id(args.id, "key")
    try:
        await key_service.revoke(db, key_id)
    except key_service.KeyNotFound:
        raise CliError(f"no key with id {args.id}") from None
    return Output({"id": str(key_id), "revoked": True},
                  f"Revoked key {key_id}: it stops working at once")


async def keys_rotate(db: asyncpg.Connection, args: argparse.Namespace,
                      settings: Settings) -> Output:
    key_id = parse_id(args.id, "key")
    issued = await key_service.rotate(db, settings.server_secret(), key_id)
    if issued is None:
        raise CliError(f"no key with id {args.id}")
    row, full = issued
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
    account = await account_of(db, args.account)
    rate = settings.default_send_rate if args.send_rate is None else args.send_rate
    try:
        row, token = await device_service.register(db, settings.server_secret(), account.id, name,
                                                   rate)
    except BrokerError as err:
        raise CliError(err.message) from None
    per_min = f"{row.send_rate} SMS a minute" if row.send_rate else "no send limit"
    return Output(
        {"id": str(row.id), "token": token, "deviceName": row.name, "sendRate": row.send_rate},
        f"Registered device {row.name!r} (id {row.id}) for {account.email}, {per_min}\n"
        f"Device token: {token}\n{SHOWN_ONCE}")


async def devices_list(db: asyncpg.Connection, args: argparse.Namespace,
                       settings: Settings) -> Output:
    account = await account_of(db, args.account)
    rows, _ = await device_service.page(db, account.id, None)
    items = [{"id": str(r.id), "deviceName": r.name, "active": r.active,
              "online": r.online_node is not None, "node": r.online_node,
              "lastSeen": iso(r.last_seen_at), "sendRate": r.send_rate,
              "appVersion": r.app_version, "health": r.health,
              "transport": r.transport} for r in rows]
    lines = [f"{len(rows)} device(s) for {account.email}"]
    for item in items:
        state = ("online" if item["online"] else "active") if item["active"] else "deactivated"
        lines.append(f"  {item['id']}  {state:<11}  last seen {item['lastSeen'] or 'never'}"
                     f"  {item['sendRate'] or 'unlimited'}/min  {item['deviceName']}")
    return Output({"devices": items}, "\n".join(lines))


async def devices_code(db: asyncpg.Connection, args: argparse.Namespace,
                       settings: Settings) -> Output:
    """A one-time code an SMS Gateway phone registers with ("By code")."""
    account = await account_of(db, args.account)
    code, expires_at = await pairing.make(db, settings.server_secret(), account.id)
    server_url = pairing.server_url(settings)
    return Output(
        {"code": code, "validUntil": iso(expires_at), "account": account.email,
         "serverUrl": server_url},
        f"Pairing code for {account.email}: {code}\n"
        f"In the SMS Gateway app: server {server_url}; Sign in, By code."
        f" Valid once, until {iso(expires_at)}.")


async def devices_deactivate(db: asyncpg.Connection, args: argparse.Namespace,
                             settings: Settings) -> Output:
    device_id = parse_id(args.id, "device")
    try:
        await device_service.deactivate(db, device_id)
    except device_service.DeviceNotFound:
        raise CliError(f"no device with id {args.id}") from None
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


def run_db(handler: Handler, args: argparse.Namespace, settings: Settings) -> Output:
    dsn = embedded_pg.database_url(settings)

    async def session() -> Output:
        db = await store.connect(dsn)
        try:
            return await handler(db, args, settings)
        except BrokerError as err:
            # A service's refusal (an unknown id, a plan's limit, a bad value).
            raise CliError(err.message) from None
        finally:
            await db.close()

    try:
        return asyncio.run(session())
    except asyncpg.UndefinedTableError:
        raise CliError("the database has no smsdora tables: run `smsdora migrate` first") from None
    except store.DATABASE_DOWN as err:
        raise Failed(f"cannot reach the database: {type(err).__name__}: {err}") from None
