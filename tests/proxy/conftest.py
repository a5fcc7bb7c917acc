"""A real nginx in front of a real broker (docs/OPERATIONS.md, "Behind
nginx"): Debian's nginx (`make nginx` installs it), started by the test on
loopback in a prefix of its own (`daemon off;`), with the site file the docs
ship, docs/nginx/smsdora.conf, its ports, names and paths substituted; the
broker is tests/e2e/conftest.py's uvicorn, trusting nginx's address
(SMSDORA_TRUSTED_PROXIES).

A missing nginx is a failure, never a skip: a proxy set-up the tests
quietly skip is a set-up nobody has run."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.ops import tls
from broker.settings import Settings
from tests.conftest import REPO, free_port
from tests.e2e import conftest as e2e
from tests.e2e.conftest import SECRET, Server

# The e2e fixtures (a real uvicorn on loopback, accounts), by name.
server, account, make_account = e2e.server, e2e.account, e2e.make_account

SITE = REPO / "docs" / "nginx" / "smsdora.conf"
START_S = 10.0

# What the test changes in the site file, each found exactly this often: a
# change to the file that the test does not follow fails here, by name.
SUBSTITUTED = {
    "server 127.0.0.1:8000;": 1,
    "listen 80;": 1,
    "listen [::]:80;": 1,
    "listen 443 ssl http2;": 1,
    "listen [::]:443 ssl http2;": 1,
    "/etc/letsencrypt/live/sms.example.com/fullchain.pem": 1,
    "/etc/letsencrypt/live/sms.example.com/privkey.pem": 1,
}


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=20, hello_timeout_s=2,
                    last_seen_flush_s=0.2, pool_min=1, pool_max=10,
                    trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail("nginx is not installed: `make nginx` installs Debian's package"
                    " (`make test` does it first); tests/proxy never skips", pytrace=False)
    return found


def site_config(broker_port: int, http_port: int, https_port: int, cert: Path, key: Path) -> str:
    """docs/nginx/smsdora.conf, to run on loopback in front of the test's broker."""
    text = SITE.read_text()
    for old, count in SUBSTITUTED.items():
        assert text.count(old) == count, f"{SITE} no longer has {old!r} {count} time(s)"
    return (text.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{broker_port};")
            .replace("listen 80;", f"listen 127.0.0.1:{http_port};")
            .replace("listen [::]:80;", "")
            .replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
            .replace("listen [::]:443 ssl http2;", "")
            .replace("/etc/letsencrypt/live/sms.example.com/fullchain.pem", str(cert))
            .replace("/etc/letsencrypt/live/sms.example.com/privkey.pem", str(key)))


def main_config(prefix: Path) -> str:
    """nginx.conf around the site file, as Debian's includes sites-enabled/,
    with every path in the prefix."""
    temp = "\n".join(f"    {name}_temp_path {prefix / name};"
                     for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers keep the files' owner
    return (f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
            f"error_log {prefix / 'error.log'} info;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"    access_log {prefix / 'access.log'};\n{temp}\n"
            f"    include {prefix / 'smsdora.conf'};\n"
            "}\n")


@dataclass
class Nginx:
    url: str  # https://127.0.0.1:PORT
    ws_url: str  # wss://127.0.0.1:PORT/devices/ws
    http_url: str  # http://127.0.0.1:PORT (the redirect to https)
    ssl: ssl.SSLContext  # trusts the test's CA
    prefix: Path

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


async def _wait_listening(port: int, proc: subprocess.Popen[bytes], prefix: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_S
    while True:
        if proc.poll() is not None:
            log = (prefix / "error.log")
            raise AssertionError(f"nginx exited ({proc.returncode}):\n"
                                 + (log.read_text(errors="replace") if log.exists() else ""))
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        if loop.time() > deadline:
            raise AssertionError(f"nginx did not listen on {port} within {START_S} s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def nginx(server: Server, tmp_path: Path) -> AsyncIterator[Nginx]:
    binary = nginx_binary()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    files = tls.make(prefix / "tls", ["127.0.0.1", "localhost"])
    http_port, https_port = free_port(), free_port()
    broker_port = int(server.url.rsplit(":", 1)[1])
    (prefix / "smsdora.conf").write_text(
        site_config(broker_port, http_port, https_port, files.cert, files.key))
    (prefix / "nginx.conf").write_text(main_config(prefix))
    proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                             "-e", str(prefix / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await _wait_listening(https_port, proc, prefix)
        context = ssl.create_default_context(cafile=str(files.ca_cert))
        yield Nginx(url=f"https://127.0.0.1:{https_port}",
                    ws_url=f"wss://127.0.0.1:{https_port}/devices/ws",
                    http_url=f"http://127.0.0.1:{http_port}", ssl=context, prefix=prefix)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast: open streams are not waited for
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)
