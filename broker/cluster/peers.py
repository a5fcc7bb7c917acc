"""`Peers`: what one node says to the others over the bus, and hears from
them (CONTRACT section 13). Ids only; PostgreSQL holds the work.

- **"a phone of yours for a job?"** (`v ACCOUNT REPLY-TOPIC N`), answered
  **"this one"** (`w N DEVICE NAME`, or `w N -`): a node took a send for an
  account with no phone of its own. It asks the node holding the freshest
  of the account's phones for one with room; that node picks its freshest
  with room, as for a send of its own, and keeps the room for the job a
  few seconds (broker/delivery/remote.py). Only the node holding a phone
  knows its room: its pacer counts every node's jobs.
- **"a job for your phone"** (`d DEVICE MESSAGE`): the asking node then
  committed the job `dispatching` for that phone; its node reads the job
  (no commit) and writes its frame or SSE event: one commit on the path,
  as for a phone of its own.
- **"queued for your phones"** (`q ACCOUNT`): no answer in time, or no
  room: the message is committed `queued` (naming the freshest phone) and
  the nodes holding the account's phones drain the account's queue to their
  freshest phone with room (broker/delivery/queue.py). A send with a ttl
  and no phone anywhere wakes every node (`all` topic), so that the first
  phone to connect anywhere is given it at once.
- **"I am up"** (`h NODE`): a node that starts says so to every node, which
  look at its phones from then on (they count the live leases again every
  third of a lease anyway).
- **"these keys were used"** (`r NODE KEY=COUNT/LIMIT ...`): each node tells
  the others, a few times a second, how many requests of each API key it
  let through, and counts theirs in its own windows, so a key's rate limit
  holds across nodes (broker/limits.py, RateWindow).
- **"it looked"** (`l DEVICE`): an SMS Gateway phone listed its jobs
  (`GET /message`) at a node that does not hold its event stream; the node
  that does stops waiting for that look and announces again what it held
  back meanwhile.
- **"stop this job"** (`x DEVICE MESSAGE REASON`): a job was cancelled or
  expired at one node while its phone is connected to another: that node
  takes it out of the phone's window and tells the phone.

A lost message costs at most a sweep: the queue is drained again when a
phone connects or answers, a node looks every sweep for jobs committed for
its phones that it never handed (broker/delivery/remote.py), and the
sweeper's clocks run on every node.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import uuid
from collections.abc import Callable

from broker import store
from broker.cluster.bus import MAX_PAYLOAD, BadMessage, Bus
from broker.store import cluster

log = logging.getLogger("smsdora.cluster")

ALL = "all"  # the topic every node hears
_WORD = re.compile(r"[A-Za-z0-9_-]+")
_REASON = re.compile(r"[a-z ]{1,40}")
# How long a send waits for another node to name a phone with room, before
# it queues the job for that node instead: an answer takes a bus round trip
# (0.2-0.5 ms here, "The cluster bus" in docs/PERFORMANCE.md); only a lost
# message or a node that stopped answering (its lease not lapsed yet) costs
# a send this wait.
RESERVE_TIMEOUT_S = 0.25


def node_topic(node: str) -> str:
    """The topic a node hears its own messages on: its name, each run of
    other characters (a hostname's dots are fine) made `_`."""
    words = [w for w in re.split(r"[^A-Za-z0-9_-]+", node) if w]
    return "node." + "_".join(words)[:40] if words else "node._"


class Peers:
    def __init__(self, pool: store.Pool, bus: Bus | None, node: str) -> None:
        self.pool = pool
        self.bus = bus  # None: this node is alone by configuration (tests, tools)
        self.node = node
        # Other live nodes, as the lease loop last counted them: 0 means a
        # send never looks past this node's own phones (one node: no cost).
        self.others = 0
        # Set by the runtime: drain the account's queue here; stop a job of
        # a phone connected here.
        self.on_queued: Callable[[uuid.UUID], None] = lambda _account: None
        self.on_dispatched: Callable[[uuid.UUID, uuid.UUID], None] = lambda _d, _m: None
        # A phone here with room for a job of the account, kept for it: its
        # id and name (None: none has room).
        self.on_reserve: Callable[[uuid.UUID], tuple[uuid.UUID, str] | None] = \
            lambda _account: None
        self._asked: dict[int, asyncio.Future[tuple[uuid.UUID, str] | None]] = {}
        self._asks = itertools.count(1)
        self.on_stop: Callable[[uuid.UUID, uuid.UUID, str], None] = lambda _d, _m, _r: None
        self.on_rates: Callable[[dict[str, tuple[int, int]]], None] = lambda _used: None
        self.on_looked: Callable[[uuid.UUID], None] = lambda _device: None
        self.received = 0  # messages heard (tests and metrics)
        self.refused = 0  # messages that made no sense (another version?)

    async def start(self) -> None:
        if self.bus is None:
            return
        await self.bus.subscribe(node_topic(self.node), self._heard)
        await self.bus.subscribe(ALL, self._heard)

    # --- what a send asks ------------------------------------------------

    async def holder(self, db: store.Db, account_id: uuid.UUID) -> cluster.Online | None:
        """The account's freshest phone held by another live node, if any."""
        if not self.others or self.bus is None:
            return None
        held = await cluster.holders_of(db, account_id, exclude_node=self.node, limit=1)
        return held[0] if held else None

    async def reserve(self, node: str, account_id: uuid.UUID) -> tuple[uuid.UUID, str] | None:
        """Ask `node` for a phone of the account with room, kept there for
        a job we are about to commit for it: (device id, name), or None (no
        room there, or no answer within RESERVE_TIMEOUT_S)."""
        if self.bus is None:
            return None
        ask = next(self._asks)
        answer = self._asked[ask] = asyncio.get_running_loop().create_future()
        try:
            self.bus.publish(node_topic(node),
                             f"v {account_id} {node_topic(self.node)} {ask}".encode())
            return await asyncio.wait_for(answer, RESERVE_TIMEOUT_S)
        except TimeoutError:
            return None
        finally:
            del self._asked[ask]

    async def nodes_holding(self, db: store.Db, account_id: uuid.UUID) -> list[str]:
        """The other live nodes that hold a phone of the account."""
        if not self.others or self.bus is None:
            return []
        return await cluster.nodes_holding(db, account_id, exclude_node=self.node)

    # --- what a node says (after the commit) ------------------------------

    def dispatched(self, node: str, device_id: uuid.UUID, message_id: uuid.UUID) -> None:
        """A job is committed `dispatching` for a phone `node` holds."""
        if self.bus is not None:
            self.bus.publish(node_topic(node), f"d {device_id} {message_id}".encode())

    def queued(self, account_id: uuid.UUID, nodes: list[str] | None) -> None:
        """Jobs of the account wait `queued`: the named nodes (None: every
        node) drain the account's queue to their phones."""
        if self.bus is None:
            return
        payload = f"q {account_id}".encode()
        if nodes is None:
            if self.others:
                self.bus.publish(ALL, payload)
            return
        for node in nodes:
            self.bus.publish(node_topic(node), payload)

    async def stop_job(self, device_id: uuid.UUID, message_id: uuid.UUID, reason: str) -> None:
        """A job failed here while its phone may hold it at another node:
        that node tells the phone to drop it (else the phone learns at its
        next report on it)."""
        if not self.others or self.bus is None or not _REASON.fullmatch(reason):
            return
        held = await cluster.online_elsewhere(self.pool, self.node, [device_id])
        node = held.get(device_id)
        if node is not None:
            self.bus.publish(node_topic(node), f"x {device_id} {message_id} {reason}".encode())

    def rates(self, used: dict[str, tuple[int, int]]) -> None:
        """Tell every node the requests of each key let through here."""
        if self.bus is None or not self.others or not used:
            return
        # Every node hears it, this one too (the bus delivers a node's own
        # messages): the sender's name lets it skip its own.
        head = f"r {node_topic(self.node)}"
        parts: list[str] = []
        size = len(head)
        for key_id, (count, limit) in used.items():
            part = f"{key_id}={count}/{limit}"
            if parts and size + len(part) + 1 > MAX_PAYLOAD:
                self.bus.publish(ALL, " ".join([head, *parts]).encode())
                parts, size = [], len(head)
            parts.append(part)
            size += len(part) + 1
        self.bus.publish(ALL, " ".join([head, *parts]).encode())

    def looked(self, device_id: uuid.UUID, node: str) -> None:
        """An SMS Gateway phone listed its jobs here; `node` holds its
        event stream and waits for that look (broker/transports/smsgate)."""
        if self.bus is not None:
            self.bus.publish(node_topic(node), f"l {device_id}".encode())

    def hello(self) -> None:
        """Tell every node we are up: they look at our phones from now, not
        from their lease loop's next count (up to a third of a lease)."""
        if self.bus is not None:
            self.bus.publish(ALL, f"h {node_topic(self.node)}".encode())

    # --- what a node hears --------------------------------------------------

    def _heard(self, payload: bytes) -> None:
        self.received += 1
        try:
            kind, _, rest = payload.decode().partition(" ")
            if kind == "v":
                account, reply_to, ask = rest.split(" ", 2)
                reserved = self.on_reserve(uuid.UUID(account))
                answer = f"w {int(ask)} " + (f"{reserved[0]} {reserved[1]}" if reserved else "-")
                if self.bus is not None:
                    try:
                        self.bus.publish(reply_to, answer.encode())
                    except BadMessage:  # a reply topic no node has: the asker times out
                        self.refused += 1
            elif kind == "w":
                ask, _, named = rest.partition(" ")
                device, _, name = named.partition(" ")
                waiting = self._asked.get(int(ask))
                if waiting is not None and not waiting.done():
                    waiting.set_result(None if device == "-" else (uuid.UUID(device), name))
            elif kind == "d":
                device, message = rest.split(" ", 1)
                self.on_dispatched(uuid.UUID(device), uuid.UUID(message))
            elif kind == "q":
                self.on_queued(uuid.UUID(rest))
            elif kind == "h":
                if rest != node_topic(self.node):
                    self.others = max(self.others, 1)
            elif kind == "l":
                self.on_looked(uuid.UUID(rest))
            elif kind == "r":
                sender, _, counts_of = rest.partition(" ")
                if sender == node_topic(self.node):
                    return  # our own, counted as they happened
                used: dict[str, tuple[int, int]] = {}
                for part in counts_of.split(" "):
                    key_id, _, counts = part.partition("=")
                    count, _, limit = counts.partition("/")
                    used[str(uuid.UUID(key_id))] = (int(count), int(limit))
                self.on_rates(used)
            elif kind == "x":
                device, message, reason = rest.split(" ", 2)
                if not _REASON.fullmatch(reason):
                    raise ValueError(reason)
                self.on_stop(uuid.UUID(device), uuid.UUID(message), reason)
            else:
                raise ValueError(kind)
        except ValueError:
            self.refused += 1
            log.warning("bus: message not understood", extra={"payload": payload[:80].decode(
                errors="replace")})
