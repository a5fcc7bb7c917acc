"""Commands that talk to a running broker, or run one."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import urllib.error
import urllib.request
from typing import Any

import asyncpg
import msgspec

from broker import store
from broker.cli.commands import migrate, run_db
from broker.cli.common import CliError, Failed, Output
from broker.ops import embedded_pg
from broker.settings import Settings

_encoder = msgspec.json.Encoder()
log = logging.getLogger("smsdora.serve")




def send(args: argparse.Namespace, settings: Settings) -> Output:
    if not args.key:
        raise CliError("SMSDORA_API_KEY (or --key) is required")
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
    from broker import device_sim as sim  # websockets and httpx clients: only this command

    app: sim.AppSim | None = None

    def show(event: sim.Event) -> None:
        job = f" {event.id}" if event.id else ""
        print(f"{event.kind}{job}: {event.detail}", flush=True)
        if event.kind == "registered" and app is not None:
            # The token in the environment, not in a command line (ps shows those).
            print(f"  (the token is shown once; to run this phone again:\n"
                  f"   export SMSDORA_DEVICE_TOKEN={app.phone.token}\n"
                  f"   smsdora device-sim --app smsgate --url {args.url}"
                  f" --device-id {app.device_id})", flush=True)

    if args.app == "smsgate":
        if (args.token is None) != (args.device_id is None):
            raise CliError("--token and --device-id (SMSDORA_DEVICE_TOKEN and SMSDORA_DEVICE_ID)"
                           " go together: a phone registered before")
        if args.token is None and args.key is None and args.code is None:
            raise CliError("--key or --code to register (SMSDORA_REGISTER_KEY,"
                           " SMSDORA_REGISTER_CODE), or --token and --device-id")
        try:
            app = sim.AppSim(args.url, token=args.token, device_id=args.device_id, key=args.key,
                             code=args.code, name=args.name, outcome=args.outcome,
                             delay_ms=args.delay_ms, on_event=show,
                             reconnect=sim.app_reconnect_s if args.app_timing
                             else sim.fast_reconnect_s,
                             ca_file=str(args.ca_file) if args.ca_file else None)
        except (ValueError, OSError) as err:  # a bad URL, an unreadable CA file
            raise CliError(str(err)) from None
        print(f"device-sim: the SMS Gateway app on {app.url}", flush=True)
    else:
        if not args.token:
            raise CliError("SMSDORA_DEVICE_TOKEN (or --token) is required")
        try:
            sim.ws_url(args.url)
        except ValueError as err:
            raise CliError(str(err)) from None

    async def main() -> None:
        if app is not None:
            await app.run()
        else:
            await sim.run(args.url, args.token, args.outcome, args.delay_ms, on_event=show)

    try:
        asyncio.run(main())
    except sim.DeviceRejected as err:
        raise CliError(f"{err}: wrong, used up or deactivated" if args.app == "smsgate" else
                       "the broker refused the device token (401): wrong or deactivated") from None
    except KeyboardInterrupt:
        pass
    return Output({}, "device-sim stopped")


def serve(args: argparse.Namespace, settings: Settings) -> Output:
    from broker.app import create_app
    from broker.ops import logs, server

    if (args.tls_cert is None) != (args.tls_key is None):
        raise CliError("--tls-cert and --tls-key go together")
    settings = settings.with_(tls_cert=args.tls_cert, tls_key=args.tls_key)
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            raise CliError(f"no such file: {path}")
    if args.worker_of is not None:
        return _serve_worker(args, settings)
    if args.workers > 1:
        if not sys.platform.startswith("linux"):
            raise CliError("--workers needs Linux (SO_REUSEPORT spreading connections)")
        if args.port == 0:
            raise CliError("--workers needs a port: with 0 each worker would get one of its own")
        _check_free(args.host, args.port)  # before the embedded PostgreSQL starts
    dsn = embedded_pg.database_url(settings)
    run_db(migrate, args, settings.with_(database_url=dsn))
    logs.setup(settings.log_level)
    if args.workers == 1:
        server.run(create_app(settings, dsn), settings, args.host, args.port)
        return Output({}, "")
    return Output({}, "", _supervise(args, settings, dsn))


def _supervise(args: argparse.Namespace, settings: Settings, dsn: str) -> int:
    """`serve --workers N` (broker/ops/workers.py): this process keeps the
    embedded PostgreSQL, if that is the database, for as long as it runs."""
    from broker.ops import workers

    settings.server_secret()  # made once here, not raced for by N workers
    tls = [] if args.tls_cert is None else ["--tls-cert", str(args.tls_cert),
                                            "--tls-key", str(args.tls_key)]
    argv = [sys.executable, "-m", "broker", "serve", "--host", args.host, "--port",
            str(args.port), "--worker-of", str(os.getpid()), *tls]
    return workers.Supervisor(workers.specs(settings, args.workers), lambda _spec: argv,
                              lambda spec: workers.worker_env(os.environ, spec, dsn)).run()


def _check_free(host: str, port: int) -> None:
    from broker.ops import workers

    try:
        workers.check_free(host, port)
    except OSError as err:
        raise Failed(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


async def _same_schema(db: asyncpg.Connection, args: argparse.Namespace,
                       settings: Settings) -> Output:
    """A worker runs the code on disk at its start, which an upgrade may
    have replaced since its supervisor migrated (a worker started again
    after a crash): it serves only the schema its code knows; the
    supervisor, restarted, migrates."""
    version = await store.migrate.check(db)  # SchemaTooNew: exit 2, as serve
    known = store.migrate.discover()[-1].version
    if version != known:
        raise CliError(f"the database is at schema version {version}, this code at {known}:"
                       " restart serve to migrate")
    return Output({}, "")


def _serve_worker(args: argparse.Namespace, settings: Settings) -> Output:
    """One node of `serve --workers`: its supervisor migrated and holds the
    database; this one listens in the port's SO_REUSEPORT group."""
    from broker.app import create_app
    from broker.ops import logs, server, workers

    workers.follow_parent(args.worker_of)
    if settings.database_url is None:
        raise CliError("--worker-of is set by serve --workers, with DATABASE_URL")
    run_db(_same_schema, args, settings)
    logs.setup(settings.log_level)
    workers.tag_logs(settings.node)
    try:
        sock = workers.bind(args.host, args.port)
    except OSError as err:
        raise Failed(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    log.info("worker bound; it listens once started", extra={"address": f"{args.host}:{args.port}"})
    server.run(create_app(settings, settings.database_url), settings, args.host, args.port,
               sockets=[sock])
    return Output({}, "")


def _local_hosts() -> list[str]:
    """This machine's name and the addresses it resolves to (no traffic)."""
    name = socket.gethostname()
    hosts = [name]
    try:
        for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM):
            address = str(info[4][0])
            if address not in hosts:
                hosts.append(address)
    except OSError:
        pass  # the name alone, then
    return hosts


def tls(args: argparse.Namespace, settings: Settings) -> Output:
    from broker.ops import tls as tls_files  # cryptography: only this command needs it

    hosts = args.host or _local_hosts()
    try:
        made = tls_files.make(args.out, hosts)
    except ValueError as err:
        raise CliError(str(err)) from None
    port = settings.port
    text = "\n".join([
        f"{'Made' if made.made_ca else 'Kept'} the CA: {made.ca_cert} (its key: {made.ca_key},"
        " keep it private)",
        f"Server certificate for {', '.join(hosts)}: {made.cert} (key: {made.key})",
        "",
        "Serve HTTPS with it:",
        f"  smsdora serve --host 0.0.0.0 --port {port} --tls-cert {made.cert}"
        f" --tls-key {made.key}",
        "",
        "On the Android phone, once: copy ca.pem to it, then Settings > Security and privacy >"
        " More security settings > Encryption and credentials > Install a certificate >"
        " CA certificate (the menu's words vary by maker), and pick ca.pem.",
        f"In the SMS Gateway app, the server URL is https://{hosts[0]}:{port}/api/mobile/v1",
    ])
    return Output({"caCert": str(made.ca_cert), "cert": str(made.cert), "key": str(made.key),
                   "hosts": hosts, "madeCa": made.made_ca}, text)
