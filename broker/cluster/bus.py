"""`Bus`: how one broker node tells another that something changed in
PostgreSQL (CONTRACT section 13), e.g. "node B: device D has job M".

The bus carries ids, never the data: PostgreSQL stays the truth and a
message is only a wake-up. Its semantics, the same for every implementation
(PostgreSQL LISTEN/NOTIFY in pg_bus.py, NATS in nats_bus.py):

- **At most once.** A message published while the bus is away, or lost with
  a connection, is gone: nothing is retried or stored. A receiver that
  misses one finds the work anyway at its next sweep (every
  `SMSDORA_SWEEP_SECONDS`), so a lost wake-up costs at most that.
- **After the commit.** `publish` is called once the caller's transaction
  has committed, and returns at once; the message leaves on the next turn of
  the event loop, together with every other message of that turn. A
  receiver woken before the commit would find nothing.
- **No order across topics**, and none promised within one; a message to a
  node reaches it at most once, its own messages included (a node hears
  what it publishes on a topic it subscribed to). Identical messages on one
  topic published in one turn may arrive once (PostgreSQL folds them).
- **Small.** A topic is dot-separated words of letters, digits, `_` and
  `-`, at most `MAX_TOPIC` bytes; a payload is UTF-8 without NUL, at most
  `MAX_PAYLOAD` bytes (what fits in one NOTIFY, whichever bus is configured).
  Anything else is refused at once with `BadMessage`.
- **Handlers run on the event loop** and return promptly (set an event,
  start a task); one handler per topic.

`connected` is set while messages can flow both ways; `start` returns at
once and the bus connects (and reconnects, forever) in the background.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Protocol

from broker.errors import BrokerError

Handler = Callable[[bytes], None]

# Every implementation puts this before the topic (a NOTIFY channel or a NATS
# subject), so that a PostgreSQL or a NATS server can be shared.
PREFIX = "smsdora."
# A NOTIFY channel is an identifier: at most 63 bytes, prefix included.
MAX_TOPIC = 63 - len(PREFIX)
# A NOTIFY payload must be "shorter than 8000 bytes" (PostgreSQL's NOTIFY).
MAX_PAYLOAD = 7999
_TOPIC = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


class BadMessage(BrokerError):
    """A topic or payload the bus cannot carry (the caller's mistake)."""


def check(topic: str, payload: bytes) -> str:
    """The payload as text, or BadMessage saying what is wrong."""
    check_topic(topic)
    if len(payload) > MAX_PAYLOAD:
        raise BadMessage(f"bus payload of {len(payload)} bytes: at most {MAX_PAYLOAD}")
    if b"\0" in payload:
        raise BadMessage("bus payload with a NUL byte")
    try:
        return payload.decode()
    except UnicodeDecodeError:
        raise BadMessage("bus payload is not UTF-8") from None


def check_topic(topic: str) -> None:
    if len(topic.encode()) > MAX_TOPIC:
        raise BadMessage(f"bus topic of {len(topic.encode())} bytes: at most {MAX_TOPIC}")
    if not _TOPIC.fullmatch(topic):
        raise BadMessage(f"bus topic {topic!r}: dot-separated words of letters, digits, _ and -")


class Bus(Protocol):
    """Ids between broker nodes; the semantics are in this module's docstring."""

    connected: asyncio.Event

    async def start(self) -> None:
        """Begin connecting (in the background: see `connected`)."""
        ...

    async def stop(self) -> None:
        """Disconnect; no task of the bus is left running. Messages not yet
        sent are dropped."""
        ...

    def publish(self, topic: str, payload: bytes) -> None:
        """Send after the caller's commit, fire-and-forget (BadMessage if
        the bus cannot carry it)."""
        ...

    async def subscribe(self, topic: str, handler: Handler) -> None:
        """Call `handler(payload)` for each message on `topic`, from when
        this returns (if connected) and across reconnects."""
        ...
