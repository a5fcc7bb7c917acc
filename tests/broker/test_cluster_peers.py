"""broker/cluster/peers.py: what a node says over the bus and what it makes
of what it hears (pure: the bus is a list of what was published)."""

from __future__ import annotations

import asyncio
import uuid

from broker.cluster.bus import MAX_PAYLOAD, Handler, check
from broker.cluster.peers import ALL, Peers, node_topic


class Published:
    """A bus that keeps what is published, refusing what the real ones
    refuse (test_cluster_bus.py)."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.sent: list[tuple[str, bytes]] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> None:
        check(topic, payload)
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


async def test_a_node_asks_another_for_a_phone_with_room_and_hears_which() -> None:
    """`v` asks the node holding the account's phones; its answer `w` names
    the phone it kept room on (or none), and only the asker's wait ends."""
    bus = Published()
    a, b = peers("n1", bus), peers("n2", bus)
    account, device = uuid.uuid4(), uuid.uuid4()
    asked: list[uuid.UUID] = []

    def reserve(acc: uuid.UUID) -> tuple[uuid.UUID, str] | None:
        asked.append(acc)
        return (device, "My phone 2") if len(asked) == 1 else None

    b.on_reserve = reserve
    for expected in ((device, "My phone 2"), None):
        wait = asyncio.ensure_future(a.reserve("n2", account))
        await asyncio.sleep(0)
        topic, question = bus.sent[-1]
        assert topic == node_topic("n2") and question.startswith(b"v ")
        b._heard(question)
        reply_topic, answer = bus.sent[-1]
        assert reply_topic == node_topic("n1")
        a._heard(answer)
        assert await wait == expected
    assert asked == [account, account] and a._asked == {}
    assert a.refused == b.refused == 0


async def test_no_answer_in_time_is_no_phone() -> None:
    bus = Published()
    a = peers("n1", bus)
    assert await a.reserve("n2", uuid.uuid4()) is None  # nobody answers: after the timeout
    assert a._asked == {}
    a._heard(b"w 1 " + str(uuid.uuid4()).encode() + b" late")  # the late answer: dropped
    assert a.refused == 0


def test_a_question_with_a_reply_topic_no_bus_can_carry_is_refused() -> None:
    bus = Published()
    b = peers("n2", bus)
    b.on_reserve = lambda _account: (uuid.uuid4(), "phone")
    b._heard(f"v {uuid.uuid4()} not/a/topic 7".encode())
    assert bus.sent == [] and b.refused == 1
