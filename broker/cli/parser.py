"""`smsdora`'s arguments: every command and its options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from broker.cli import commands as db_commands
from broker.cli import management, remote
from broker.cli.common import broker_url, nonnegative, positive, timestamp
from broker.settings import Settings
from protocol import lifecycle


def _workers(raw: str) -> int:
    """`serve --workers`: a count; 0 or auto, one per core."""
    count = 0 if raw.strip().lower() == "auto" else nonnegative(raw.strip())
    return count or os.cpu_count() or 1


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
    # Secrets come from the environment first: argv is visible to every
    # user of the machine (ps, /proc/PID/cmdline); the flags are for tests.
    env = os.environ
    url = broker_url(settings, env.get("SMSDORA_URL"))
    url_help = (f"the broker (default {url.replace('%', '%%')}: SMSDORA_URL, else where serve listens with"
                " SMSDORA_HOST, SMSDORA_PORT and SMSDORA_TLS_CERT)")

    def leaf(group: Any, name: str, help_: str, run: Any, db: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, parents=[child], help=help_)
        p.set_defaults(run=run, db=db)
        return p

    def branch(name: str, help_: str) -> Any:
        p = commands.add_parser(name, parents=[child], help=help_)
        return p.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = leaf(commands, "serve", "run the broker", remote.serve, db=False)
    p.add_argument("--host", default=settings.host)
    p.add_argument("--port", type=int, default=settings.port)
    p.add_argument("--tls-cert", type=Path, default=settings.tls_cert, metavar="PEM",
                   help="serve HTTPS with this certificate chain (smsdora tls makes one)")
    p.add_argument("--tls-key", type=Path, default=settings.tls_key, metavar="PEM",
                   help="the certificate's private key")
    p.add_argument("--workers", type=_workers, default=env.get("SMSDORA_WORKERS") or "1",
                   metavar="N", help="broker nodes on this host, all on one port (SO_REUSEPORT),"
                   " named SMSDORA_NODE-1..N (default 1: one process, SMSDORA_WORKERS;"
                   " 0 or auto: one per core; docs/SCALING.md)")
    # Set by the supervisor of --workers on the workers it starts.
    p.add_argument("--worker-of", type=positive, metavar="PID", help=argparse.SUPPRESS)
    p = leaf(commands, "tls", "make a local CA and a server certificate for phones on the LAN",
             remote.tls, db=False)
    p.add_argument("--host", action="append", metavar="NAME_OR_IP",
                   help="a name or address phones reach the broker at (repeatable;"
                        " default: this machine's name and addresses)")
    p.add_argument("--out", type=Path, default=settings.home / "tls", metavar="DIR")
    leaf(commands, "migrate", "apply the missing migrations", db_commands.migrate)

    accounts = branch("accounts", "manage accounts")
    p = leaf(accounts, "create", "create an account", db_commands.accounts_create)
    p.add_argument("email")
    p.add_argument("--plan", default="default")
    p.add_argument("--password-stdin", action="store_true",
                   help="read a password from the first line of standard input")
    leaf(accounts, "list", "list every account", management.accounts_list)
    p = leaf(accounts, "set-plan", "move an account to another plan", management.accounts_set_plan)
    p.add_argument("email")
    p.add_argument("plan")

    plans = branch("plans", "manage plans (monthly messages, devices)")
    p = leaf(plans, "create", "create a plan", management.plans_create)
    p.add_argument("name")
    p.add_argument("--monthly-messages", type=nonnegative, required=True, metavar="N")
    p.add_argument("--max-devices", type=nonnegative, required=True, metavar="N")
    leaf(plans, "list", "list the plans", management.plans_list)

    keys_ = branch("keys", "manage API keys")
    p = leaf(keys_, "create", "create an API key", db_commands.keys_create)
    p.add_argument("--account", required=True, metavar="EMAIL")
    p.add_argument("--name", default="")
    p.add_argument("--scope", action="append", metavar="S",
                   help="repeatable; default messages:send; devices:register for the key an"
                        " SMS Gateway app signs up with")
    p.add_argument("--rate-limit", type=positive, metavar="N", help="requests a minute")
    p.add_argument("--expires-in", type=positive, metavar="SECONDS")
    leaf(keys_, "list", "list an account's keys", db_commands.keys_list).add_argument(
        "--account", required=True, metavar="EMAIL")
    leaf(keys_, "revoke", "revoke a key", db_commands.keys_revoke).add_argument("id", metavar="ID")
    leaf(keys_, "rotate", "issue a new secret for a key", db_commands.keys_rotate).add_argument(
        "id", metavar="ID")

    devices = branch("devices", "manage phones")
    p = leaf(devices, "create", "register a phone", db_commands.devices_create)
    p.add_argument("--account", required=True, metavar="EMAIL")
    p.add_argument("--name", required=True)
    p.add_argument("--send-rate", type=nonnegative, metavar="N",
                   help=f"SMS a minute (default {settings.default_send_rate}; 0 = no limit)")
    leaf(devices, "list", "list an account's phones", db_commands.devices_list).add_argument(
        "--account", required=True, metavar="EMAIL")
    leaf(devices, "deactivate", "refuse a phone's token from now on",
         db_commands.devices_deactivate).add_argument("id", metavar="ID")
    leaf(devices, "code", "a one-time code an SMS Gateway app registers with (10 minutes)",
         db_commands.devices_code).add_argument("--account", required=True, metavar="EMAIL")

    messages = branch("messages", "read messages")
    p = leaf(messages, "list", "an account's messages, newest first", management.messages_list)
    p.add_argument("--account", required=True, metavar="EMAIL")
    p.add_argument("--status", choices=lifecycle.STATUSES)
    p.add_argument("--device", metavar="ID")
    p.add_argument("--recipient", metavar="NUMBER")
    p.add_argument("--since", type=timestamp, metavar="TIME",
                   help="accepted at or after (ISO 8601 with an offset, e.g. 2026-12-01T00:00Z)")
    p.add_argument("--until", type=timestamp, metavar="TIME", help="accepted before")
    p.add_argument("--limit", type=positive, default=20, metavar="N")
    p.add_argument("--cursor", type=positive, metavar="N", help="the previous page's 'More:'")
    leaf(messages, "get", "one message with its history", management.messages_get).add_argument(
        "id", metavar="ID")

    p = leaf(commands, "send", "send an SMS through a running broker", remote.send, db=False)
    p.add_argument("--key", default=env.get("SMSDORA_API_KEY"),
                   help="API key: set SMSDORA_API_KEY instead (argv is visible in ps)")
    p.add_argument("--url", default=url, help=url_help)
    p.add_argument("--ttl", type=positive, metavar="SECONDS")
    p.add_argument("--idempotency-key")
    p.add_argument("recipient")
    p.add_argument("message")

    p = leaf(commands, "device-sim", "a simulated phone: our WebSocket protocol, or the SMS"
             " Gateway for Android app", remote.device_sim, db=False)
    p.add_argument("--app", choices=("ws", "smsgate"), default="ws",
                   help="ws: our WebSocket protocol (default); smsgate: the SMS Gateway for"
                        " Android app's mobile API (HTTP + SSE)")
    p.add_argument("--token", default=env.get("SMSDORA_DEVICE_TOKEN"),
                   help="device token: set SMSDORA_DEVICE_TOKEN instead (argv is visible in"
                        " ps); ws: required; smsgate: with --device-id, a phone registered"
                        " before")
    p.add_argument("--device-id", default=env.get("SMSDORA_DEVICE_ID"), metavar="ID",
                   help="smsgate: the device id its token belongs to (SMSDORA_DEVICE_ID)")
    p.add_argument("--key", default=env.get("SMSDORA_REGISTER_KEY"),
                   help="smsgate: register with this API key (scope devices:register), as the"
                        " app's Sign Up, and again if its token is refused: set"
                        " SMSDORA_REGISTER_KEY instead")
    p.add_argument("--code", default=env.get("SMSDORA_REGISTER_CODE"),
                   help="smsgate: register with a one-time code (smsdora devices code), as the"
                        " app's By code: set SMSDORA_REGISTER_CODE instead")
    p.add_argument("--name", default="smsdora/device-sim",
                   help="smsgate: the device name it registers with")
    p.add_argument("--app-timing", action="store_true",
                   help="smsgate: reconnect the event stream as the app does (5 s x5, 30 s x5,"
                        " then every 60 s) instead of 0.5 s doubling to 10 s")
    p.add_argument("--url", default=url,
                   help=url_help + "; smsgate: /api/mobile/v1 is added to a URL without a path")
    p.add_argument("--ca-file", type=Path, metavar="PEM",
                   help="smsgate over https: trust this CA too, as one installed on the phone"
                        " (the one smsdora tls made)")
    p.add_argument("--outcome", choices=("delivered", "sent", "failed"), default="delivered",
                   help="what the simulated carrier reports (default delivered)")
    p.add_argument("--delay-ms", type=nonnegative, default=500, metavar="N",
                   help="how long sending one SMS takes (default 500)")
    return parser
