"""The operator's commands beside the management API (contract section 10):
plans, accounts, messages. Each calls the service the API calls; a message
reads as `GET /messages/{id}` shows it."""

from __future__ import annotations

import argparse

import asyncpg
import msgspec

from broker import store
from broker.cli.common import Output, account_of, email_of, parse_id
from broker.http.messages import message_detail, message_item
from broker.services import accounts as account_service
from broker.services import messages as message_service
from broker.settings import Settings

# --- plans ------------------------------------------------------------------


def _plan_info(plan: store.Plan) -> dict[str, object]:
    return {"name": plan.name, "monthlyMessages": plan.monthly_messages,
            "maxDevices": plan.max_devices}


async def plans_create(db: asyncpg.Connection, args: argparse.Namespace,
                       settings: Settings) -> Output:
    plan = await account_service.create_plan(db, args.name, args.monthly_messages,
                                             args.max_devices)
    return Output(_plan_info(plan), f"Created plan {plan.name}: {plan.monthly_messages}"
                                    f" messages a month, {plan.max_devices} device(s)")


async def plans_list(db: asyncpg.Connection, args: argparse.Namespace,
                     settings: Settings) -> Output:
    plans = await store.list_plans(db)
    lines = [f"{len(plans)} plan(s)"] + [
        f"  {p.name:<20} {p.monthly_messages:>12} messages/month {p.max_devices:>6} device(s)"
        for p in plans]
    return Output({"plans": [_plan_info(p) for p in plans]}, "\n".join(lines))


# --- accounts ---------------------------------------------------------------


def _account_info(account: store.Account) -> dict[str, object]:
    return {"id": str(account.id), "email": account.email, "plan": account.plan}


async def accounts_list(db: asyncpg.Connection, args: argparse.Namespace,
                        settings: Settings) -> Output:
    accounts = await store.list_accounts(db)
    lines = [f"{len(accounts)} account(s)"] + [
        f"  {a.id}  {a.plan:<20} {a.email}" for a in accounts]
    return Output({"accounts": [_account_info(a) for a in accounts]}, "\n".join(lines))


async def accounts_set_plan(db: asyncpg.Connection, args: argparse.Namespace,
                            settings: Settings) -> Output:
    account = await account_of(db, email_of(args.email))
    moved = await account_service.set_plan(db, account.id, args.plan)
    return Output(_account_info(moved), f"Account {moved.email} is on plan {moved.plan}:"
                                        f" {moved.monthly_messages} messages a month,"
                                        f" {moved.max_devices} device(s)")


# --- messages ---------------------------------------------------------------


async def messages_list(db: asyncpg.Connection, args: argparse.Namespace,
                        settings: Settings) -> Output:
    account = await account_of(db, args.account)
    where = store.MessageFilter(
        device_id=parse_id(args.device, "device") if args.device else None,
        recipient=(message_service.normalize_recipient(args.recipient)
                   if args.recipient else None),
        since=args.since, until=args.until)
    rows, next_seq = await message_service.page(db, account.id, args.status, where,
                                                 args.limit, args.cursor)
    items = [message_item(r) for r in rows]
    lines = [f"{len(items)} message(s) of {account.email}, newest first"] + [
        f"  {m.id}  {m.createdAt}  {m.status:<11} {m.recipient:<16}"
        f" {m.device.deviceName if m.device else '-'}"
        f"{f'  ({m.error})' if m.error else ''}" for m in items]
    if next_seq is not None:
        lines.append(f"More: --cursor {next_seq}")
    data: dict[str, object] = {"messages": msgspec.to_builtins(items)}
    if next_seq is not None:
        data["nextCursor"] = str(next_seq)
    return Output(data, "\n".join(lines))


async def messages_get(db: asyncpg.Connection, args: argparse.Namespace,
                       settings: Settings) -> Output:
    message_id = parse_id(args.id, "message")
    detail = message_detail(*await message_service.get(db, None, message_id))
    lines = [f"Message {detail.id} to {detail.recipient}: {detail.status}"
             f"{f' ({detail.error})' if detail.error else ''}",
             f"  device: {detail.device.deviceName + ' ' + detail.device.id if detail.device else '-'}",
             f"  text: {detail.message}"]
    lines += [f"  {h.at}  {h.status}" for h in detail.history]
    return Output(msgspec.to_builtins(detail), "\n".join(lines))
