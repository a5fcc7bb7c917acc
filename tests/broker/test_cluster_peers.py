"""broker/cluster/peers.py: what a node says over the bus and what it makes
of what it hears (pure: the bus is a list of what was published)."""

from __future__ import annotations

import asyncio
import uuid

from broker.cluster.bus import MAX_PAYLOAD, Handler
from broker.cluster.peers import ALL, Peers, node_topic


class Published:
    """A bus that keeps what is published (the real ones: test_cluster_bus.py)."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.sent: list[tuple[str, bytes]] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload))

    async def subscribe(self, topic: str, handler: Handler) -> None: ...


def peers(node: str, bus: Published) -> Peers:
    p = Peers(None, bus, node)  # type: ignore[arg-type]  # no database for these
    p.others = 1
    return p


def test_a_node_counts_the_key_uses_of_the_others_and_not_its_own_echo() -> None:
    """The bus hands a node its own messages too: counting them again made
    a key's limit bite at half of it (CI saw a 403 at the 5th of 6)."""
    bus = Published()
    a, b = peers("n1", bus), peers("n2", bus)
    heard_a: list[dict[str, tuple[int, int]]] = []
    heard_b: list[dict[str, tuple[int, int]]] = []
    a.on_rates, b.on_rates = heard_a.append, heard_b.append
    key = str(uuid.uuid4())
    a.rates({key: (3, 6)})
    [(topic, payload)] = bus.sent
    assert topic == ALL
    a._heard(payload)
    b._heard(payload)
    assert heard_a == []
    assert heard_b == [{key: (3, 6)}]
    assert a.refused == b.refused == 0


def test_many_keys_go_in_messages_the_bus_can_carry_and_all_arrive() -> None:
    bus = Published()
    a, b = peers("n1", bus), peers("n2", bus)
    heard: dict[str, tuple[int, int]] = {}
    b.on_rates = heard.update
    used = {str(uuid.uuid4()): (i + 1, 100) for i in range(500)}
    a.rates(used)
    assert len(bus.sent) > 1
    assert all(len(payload) <= MAX_PAYLOAD for _, payload in bus.sent)
    for _, payload in bus.sent:
        b._heard(payload)
    assert heard == used


def test_a_message_that_makes_no_sense_is_counted_and_dropped() -> None:
    bus = Published()
    b = peers("n2", bus)
    calls: list[object] = []
    b.on_rates = b.on_queued = b.on_looked = calls.append  # type: ignore[assignment]
    for junk in (b"z what", b"q not-a-uuid", b"r node.n1 k=x/y", b"x a b", b"l"):
        b._heard(junk)
    assert calls == [] and b.refused == 5


def test_node_topics_are_bus_words_whatever_the_hostname() -> None:
    assert node_topic("n1") == "node.n1"
    assert node_topic("web-1.example.com") == "node.web-1_example_com"
    assert node_topic("???") == "node._"
