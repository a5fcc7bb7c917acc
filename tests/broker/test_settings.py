"""broker/settings.py: pure, plus files under tmp_path for the server secret."""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
from pathlib import Path

import pytest

from broker.settings import Settings

EVERY = {
    "SMSDORA_HOME": "/var/lib/smsdora",
    "DATABASE_URL": "postgresql://u:p@db.example:5433/sms",
    "SMSDORA_SECRET": "s3cr3t",
    "SMSDORA_HOST": "0.0.0.0",
    "SMSDORA_PORT": "8123",
    "SMSDORA_NODE": "node-7",
    "SMSDORA_HEARTBEAT_SECONDS": "15",
    "SMSDORA_HELLO_TIMEOUT": "4",
    "SMSDORA_SEND_RATE": "12",
    "SMSDORA_REASSIGN_AFTER": "90",
    "SMSDORA_POOL_MIN": "3",
    "SMSDORA_POOL_MAX": "33",
    "SMSDORA_LOG_LEVEL": "DEBUG",
}

INTEGERS = ["SMSDORA_PORT", "SMSDORA_HEARTBEAT_SECONDS", "SMSDORA_HELLO_TIMEOUT",
            "SMSDORA_SEND_RATE", "SMSDORA_REASSIGN_AFTER", "SMSDORA_POOL_MIN", "SMSDORA_POOL_MAX"]


def test_from_env_reads_every_variable() -> None:
    s = Settings.from_env(EVERY)
    assert s.home == Path("/var/lib/smsdora")
    assert s.database_url == "postgresql://u:p@db.example:5433/sms"
    assert s.secret == b"s3cr3t"
    assert s.host == "0.0.0.0"
    assert s.port == 8123
    assert s.node == "node-7"
    assert s.heartbeat_s == 15
    assert s.hello_timeout_s == 4
    assert s.default_send_rate == 12
    assert s.reassign_after_s == 90
    assert s.pool_min == 3
    assert s.pool_max == 33
    assert s.log_level == "DEBUG"


def test_from_env_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings(node=socket.gethostname())
    assert s.home == Path(".smsdora")
    assert s.database_url is None and s.secret is None
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.heartbeat_s == 20          # contract section 4
    assert s.default_send_rate == 30    # contract section 3
    assert s.reassign_after_s == 60     # contract section 5
    assert s.hello_timeout_s == 10      # contract section 4
    assert s.log_level == "INFO"


def test_from_env_empty_values_are_unset() -> None:
    s = Settings.from_env({"DATABASE_URL": "", "SMSDORA_SECRET": "", "SMSDORA_PORT": "",
                           "SMSDORA_NODE": ""})
    assert s.database_url is None
    assert s.secret is None
    assert s.port == 8000
    assert s.node == socket.gethostname()


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSDORA_PORT", "9001")
    monkeypatch.setenv("SMSDORA_SEND_RATE", "5")
    s = Settings.from_env()
    assert (s.port, s.default_send_rate) == (9001, 5)


def test_the_bus_between_nodes_is_postgres_unless_nats_is_named() -> None:
    s = Settings.from_env({})
    assert (s.bus, s.nats_url) == ("postgres", "nats://127.0.0.1:4222")
    s = Settings.from_env({"SMSDORA_BUS": "NATS", "SMSDORA_NATS_URL": "nats://10.0.0.5:4222"})
    assert (s.bus, s.nats_url) == ("nats", "nats://10.0.0.5:4222")
    with pytest.raises(SystemExit, match="SMSDORA_BUS must be postgres or nats, got 'redis'"):
        Settings.from_env({"SMSDORA_BUS": "redis"})


@pytest.mark.parametrize("name", INTEGERS)
@pytest.mark.parametrize("bad", ["abc", "1.5", "12x"])
def test_from_env_bad_integer_exits_naming_the_variable(name: str, bad: str) -> None:
    with pytest.raises(SystemExit) as exc:
        Settings.from_env({name: bad})
    text = str(exc.value.code)
    assert name in text
    assert repr(bad) in text
    assert "integer" in text


def test_settings_is_frozen_and_with_makes_a_copy() -> None:
    s = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    t = s.with_(port=1)
    assert (s.port, t.port) == (8000, 1)


def test_secret_is_not_in_repr() -> None:
    s = Settings.from_env({"SMSDORA_SECRET": "do-not-print-me"})
    assert "do-not-print-me" not in repr(s)


# --- server_secret ----------------------------------------------------------


def test_server_secret_from_config(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "home", secret=b"configured")
    assert s.server_secret() == b"configured"
    assert not (tmp_path / "home").exists()  # no file made when configured


def test_server_secret_created_once_0600_and_reused(tmp_path: Path) -> None:
    home = tmp_path / "nested" / "home"
    s = Settings(home=home)
    first = s.server_secret()
    path = home / "secret"
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == first
    assert len(first) >= 32

    assert s.server_secret() == first
    # A new process (a new Settings on the same home) reads the same secret.
    assert Settings(home=home).server_secret() == first
    # Another home gets its own.
    assert Settings(home=tmp_path / "other").server_secret() != first


def test_server_secret_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Settings(home=tmp_path).server_secret()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600


def test_server_secret_reads_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"from-an-operator\n")
    assert Settings(home=tmp_path).server_secret() == b"from-an-operator"
