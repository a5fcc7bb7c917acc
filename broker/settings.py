"""Configuration: one frozen dataclass, read from the environment once."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, cast

BusName = Literal["postgres", "nats"]


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


def _positive(env: dict[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value <= 0:
        raise SystemExit(f"{name} must be more than 0, got {env.get(name)!r}")
    return value


def _networks(env: dict[str, str], name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs (a bare address is a /32 or /128)."""
    out = []
    for item in env.get(name, "").split(","):
        if item.strip():
            try:
                out.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise SystemExit(f"{name} must be addresses or CIDRs, got {item.strip()!r}") from None
    return tuple(out)


def _seconds_list(env: dict[str, str], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """Comma-separated delays in seconds (`5,300,1800`)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        out = tuple(float(x) for x in raw.split(","))
    except ValueError:
        raise SystemExit(f"{name} must be seconds separated by commas, got {raw!r}") from None
    if any(x < 0 for x in out):
        raise SystemExit(f"{name} must not be negative, got {raw!r}")
    return out


def _signup(env: dict[str, str]) -> bool:
    raw = env.get("SMSDORA_SIGNUP", "open").strip().lower() or "open"
    if raw not in ("open", "closed"):
        raise SystemExit(f"SMSDORA_SIGNUP must be open or closed, got {raw!r}")
    return raw == "open"


def _bus(env: dict[str, str]) -> BusName:
    raw = env.get("SMSDORA_BUS", "postgres").strip().lower() or "postgres"
    if raw not in ("postgres", "nats"):
        raise SystemExit(f"SMSDORA_BUS must be postgres or nats, got {raw!r}")
    return cast(BusName, raw)


def _listen_address(env: dict[str, str], name: str, default: str) -> tuple[str, int] | None:
    """`host:port` (`[::1]:9464` for IPv6); empty: None (off)."""
    raw = env.get(name, default).strip()
    if not raw:
        return None
    host, _, port = raw.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"{name} must be host:port or empty, got {raw!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True)
class Settings:
    # Where the broker keeps its own files: the embedded PostgreSQL and the
    # server secret. Relative paths are taken from the working directory.
    home: Path = Path(".smsdora")
    # None: start (or attach to) the embedded PostgreSQL under `home`.
    database_url: str | None = None
    # HMAC key for API keys and device tokens; None: read or create `home/secret`.
    secret: bytes | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8000
    # HTTPS: a certificate chain and its key (PEM; `smsdora tls` makes both).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # The address phones (and, later, webhooks) use, e.g. https://192.168.1.5:8443.
    public_url: str | None = None
    node: str = field(default_factory=socket.gethostname)
    # Several nodes (CONTRACT section 13): the node's lease on its name and
    # its phones, renewed every third of it; a dead node's phones are
    # offline for the others once it lapses.
    lease_s: float = 10.0
    heartbeat_s: int = 20
    hello_timeout_s: int = 10
    default_send_rate: int = 30
    reassign_after_s: int = 60
    no_report_after_s: int = 24 * 3600
    sweep_s: float = 1.0
    request_timeout_s: float = 5.0
    max_queued_per_account: int = 10_000
    inflight_window: int = 100
    frame_rate: float = 50.0
    frame_burst: int = 200
    last_seen_flush_s: float = 2.0
    pool_min: int = 2
    pool_max: int = 20
    gc_freeze_s: float = 0.25
    log_level: str = "INFO"
    # The edges of an exposed broker (contract section 12, docs/OPERATIONS.md
    # "Exposed to a network"). Connection caps: 0 is no cap.
    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    body_timeout_s: float = 30.0
    max_connections: int = 50_000
    max_connections_per_address: int = 2_000
    # Peers whose X-Forwarded-For / X-Real-IP are believed (broker/http/client.py).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # GET /metrics and the detailed /health on a listener of their own; None: off.
    metrics_addr: tuple[str, int] | None = ("127.0.0.1", 9464)
    # With it, GET /metrics and the detailed /health on the main port too.
    metrics_token: str | None = field(default=None, repr=False)
    # Accounts and credentials of an exposed broker (docs/OPERATIONS.md
    # "Failed credentials", "Fairness between accounts"); 0 turns each off.
    auth_failures: int = 30  # failed credentials per client address ...
    auth_failure_window_s: float = 60.0  # ... within this, then 429
    login_failures: int = 10  # failed passwords per email ...
    login_failure_window_s: float = 900.0  # ... within this, then 429
    unknown_key_ttl_s: float = 30.0  # how long a prefix that matched no key is remembered
    account_rate: float = 2000.0  # an account's requests a second, all its keys together ...
    account_burst: int = 5000  # ... and at once
    account_pool_share: float = 0.5  # of SMSDORA_POOL_MAX, the connections one account may hold
    account_pool_wait_s: float = 1.0  # waited for one of them, then 429
    idempotency_purge_batch: int = 1000  # idempotency rows past 24 h deleted per sweep
    # Webhooks (CONTRACT section 9, docs/OPERATIONS.md "Webhooks").
    webhook_allow_private: bool = False  # URLs on loopback, private, link-local addresses
    webhook_timeout_s: float = 15.0  # one attempt: connect, send, the answer's head
    # After the first attempt: the Standard Webhooks schedule (about 28 h).
    webhook_retries_s: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    webhook_concurrency: int = 64  # attempts under way at once, this node
    webhook_per_endpoint: int = 8  # of which to one endpoint
    webhook_poll_s: float = 1.0  # due rows looked for at least this often
    webhook_disable_after_s: float = 5 * 86400.0  # no 2xx this long, events owed: disabled
    webhook_keep_days: int = 30  # delivered and failed events kept this long
    signup_open: bool = True  # /signup makes accounts (SMSDORA_SIGNUP=closed: it does not)
    session_days: float = 14.0  # a dashboard session lasts this long from its login
    # Between nodes (CONTRACT section 13, broker/cluster/bus.py): PostgreSQL's
    # LISTEN/NOTIFY for a handful of nodes, NATS for many.
    bus: BusName = "postgres"
    nats_url: str = "nats://127.0.0.1:4222"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        secret = e.get("SMSDORA_SECRET")
        return cls(
            home=Path(e.get("SMSDORA_HOME", ".smsdora")),
            database_url=e.get("DATABASE_URL") or None,
            secret=secret.encode() if secret else None,
            host=e.get("SMSDORA_HOST", "127.0.0.1"),
            port=_int(e, "SMSDORA_PORT", 8000),
            tls_cert=Path(e["SMSDORA_TLS_CERT"]) if e.get("SMSDORA_TLS_CERT") else None,
            tls_key=Path(e["SMSDORA_TLS_KEY"]) if e.get("SMSDORA_TLS_KEY") else None,
            public_url=e.get("SMSDORA_PUBLIC_URL") or None,
            node=e.get("SMSDORA_NODE") or socket.gethostname(),
            lease_s=_positive(e, "SMSDORA_LEASE_SECONDS", 10.0),
            heartbeat_s=_int(e, "SMSDORA_HEARTBEAT_SECONDS", 20),
            hello_timeout_s=_int(e, "SMSDORA_HELLO_TIMEOUT", 10),
            default_send_rate=_int(e, "SMSDORA_SEND_RATE", 30),
            reassign_after_s=_int(e, "SMSDORA_REASSIGN_AFTER", 60),
            no_report_after_s=_int(e, "SMSDORA_NO_REPORT_AFTER", 24 * 3600),
            sweep_s=_float(e, "SMSDORA_SWEEP_SECONDS", 1.0),
            request_timeout_s=_float(e, "SMSDORA_REQUEST_TIMEOUT", 5.0),
            max_queued_per_account=_int(e, "SMSDORA_MAX_QUEUED", 10_000),
            inflight_window=_int(e, "SMSDORA_INFLIGHT_WINDOW", 100),
            frame_rate=_float(e, "SMSDORA_FRAME_RATE", 50.0),
            frame_burst=_int(e, "SMSDORA_FRAME_BURST", 200),
            last_seen_flush_s=_float(e, "SMSDORA_LAST_SEEN_FLUSH_SECONDS", 2.0),
            pool_min=_int(e, "SMSDORA_POOL_MIN", 2),
            pool_max=_int(e, "SMSDORA_POOL_MAX", 20),
            gc_freeze_s=_float(e, "SMSDORA_GC_FREEZE", 0.25),
            log_level=e.get("SMSDORA_LOG_LEVEL", "INFO"),
            header_timeout_s=_float(e, "SMSDORA_HEADER_TIMEOUT", 10.0),
            max_header_bytes=_int(e, "SMSDORA_MAX_HEADER_BYTES", 16 * 1024),
            body_timeout_s=_float(e, "SMSDORA_BODY_TIMEOUT", 30.0),
            max_connections=_int(e, "SMSDORA_MAX_CONNECTIONS", 50_000),
            max_connections_per_address=_int(e, "SMSDORA_MAX_CONNECTIONS_PER_ADDRESS", 2_000),
            trusted_proxies=_networks(e, "SMSDORA_TRUSTED_PROXIES"),
            metrics_addr=_listen_address(e, "SMSDORA_METRICS_ADDR", "127.0.0.1:9464"),
            metrics_token=e.get("SMSDORA_METRICS_TOKEN") or None,
            auth_failures=_int(e, "SMSDORA_AUTH_FAILURES", 30),
            auth_failure_window_s=_float(e, "SMSDORA_AUTH_FAILURE_WINDOW", 60.0),
            login_failures=_int(e, "SMSDORA_LOGIN_FAILURES", 10),
            login_failure_window_s=_float(e, "SMSDORA_LOGIN_FAILURE_WINDOW", 900.0),
            unknown_key_ttl_s=_float(e, "SMSDORA_UNKNOWN_KEY_TTL", 30.0),
            account_rate=_float(e, "SMSDORA_ACCOUNT_RATE", 2000.0),
            account_burst=_int(e, "SMSDORA_ACCOUNT_BURST", 5000),
            account_pool_share=_float(e, "SMSDORA_ACCOUNT_POOL_SHARE", 0.5),
            account_pool_wait_s=_float(e, "SMSDORA_ACCOUNT_POOL_WAIT", 1.0),
            idempotency_purge_batch=_int(e, "SMSDORA_IDEMPOTENCY_PURGE_BATCH", 1000),
            webhook_allow_private=e.get("SMSDORA_WEBHOOK_ALLOW_PRIVATE", "") in ("1", "true", "yes"),
            webhook_timeout_s=_float(e, "SMSDORA_WEBHOOK_TIMEOUT", 15.0),
            webhook_retries_s=_seconds_list(e, "SMSDORA_WEBHOOK_RETRIES",
                                            (5, 300, 1800, 7200, 18000, 36000, 36000)),
            webhook_concurrency=_int(e, "SMSDORA_WEBHOOK_CONCURRENCY", 64),
            webhook_per_endpoint=_int(e, "SMSDORA_WEBHOOK_PER_ENDPOINT", 8),
            webhook_poll_s=_float(e, "SMSDORA_WEBHOOK_POLL_SECONDS", 1.0),
            webhook_disable_after_s=_float(e, "SMSDORA_WEBHOOK_DISABLE_AFTER", 5 * 86400.0),
            webhook_keep_days=_int(e, "SMSDORA_WEBHOOK_KEEP_DAYS", 30),
            signup_open=_signup(e),
            session_days=_float(e, "SMSDORA_SESSION_DAYS", 14.0),
            bus=_bus(e),
            nats_url=e.get("SMSDORA_NATS_URL") or "nats://127.0.0.1:4222",
        )

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def server_secret(self) -> bytes:
        """The HMAC key: from config, else `home/secret`, created on first use (0600)."""
        if self.secret:
            return self.secret
        path = self.home / "secret"
        try:
            return path.read_bytes().strip()
        except FileNotFoundError:
            pass
        self.home.mkdir(parents=True, exist_ok=True)
        value = secrets.token_hex(32).encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race: use its secret
            return path.read_bytes().strip()
        with os.fdopen(fd, "wb") as f:
            f.write(value)
        return value
