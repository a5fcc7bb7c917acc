"""broker/ops/connections.py: what a listener admits, and the log of what it
refuses (the sockets themselves: tests/hostile/test_edges.py)."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from broker.ops.connections import ConnectionGate, RateLimitedLog, Refusal, address_key


def test_an_ipv6_client_is_counted_by_its_slash_64() -> None:
    assert address_key("203.0.113.9") == "203.0.113.9"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert address_key(None) == "-"


def test_the_gate_caps_per_address_and_in_all_and_takes_back_what_is_released() -> None:
    gate = ConnectionGate(total=4, per_address=2)
    a1, a2 = gate.admit("198.51.100.1"), gate.admit("198.51.100.1")
    assert gate.admit("198.51.100.1") is Refusal.OVER_ADDRESS
    assert isinstance(gate.admit("198.51.100.2"), str)
    assert isinstance(gate.admit("2001:db8::1"), str)
    assert gate.admit("2001:db8::2") is Refusal.OVER_TOTAL
    assert isinstance(a1, str) and isinstance(a2, str)
    gate.release(a1)
    assert isinstance(gate.admit("198.51.100.1"), str)
    assert gate.open == 4


def test_trusted_proxies_count_only_in_the_total_and_zero_is_no_cap() -> None:
    gate = ConnectionGate(total=0, per_address=1,
                          exempt=(ipaddress.ip_network("127.0.0.0/8"),))
    assert all(isinstance(gate.admit("127.0.0.1"), str) for _ in range(100))
    assert isinstance(gate.admit("192.0.2.1"), str)
    assert gate.admit("192.0.2.1") is Refusal.OVER_ADDRESS


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def lines() -> Lines:
    handler = Lines()
    logger = logging.getLogger("test.connections")
    logger.handlers[:] = [handler]
    logger.propagate = False
    return handler


def test_the_log_says_each_address_once_a_window_within_a_budget(lines: Lines) -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.connections"), window_s=60, budget=3,
                         clock=lambda: now[0])
    for _ in range(100):
        log.warning("refused", "198.51.100.1")
    for n in range(2, 10):
        log.warning("refused", f"198.51.100.{n}")
    assert [(r.client, r.suppressed) for r in lines.records] == [  # type: ignore[attr-defined]
        ("198.51.100.1", 0), ("198.51.100.2", 99), ("198.51.100.3", 0)]
    now[0] = 61.0
    log.warning("refused", "198.51.100.1")
    assert (lines.records[-1].client, lines.records[-1].suppressed) == (  # type: ignore[attr-defined]
        "198.51.100.1", 6)
