"""Messages as their owner reads and cancels them: one implementation for
`smsdora messages` and `/messages` alike (contract sections 3, 6 and 10).
Sending is the delivery engine's (broker/delivery/)."""

from __future__ import annotations

import datetime as dt
import functools
import time
import uuid
from typing import NamedTuple

import phonenumbers

from broker import store
from broker.cluster.peers import Peers
from broker.delivery.presence import Presence
from broker.errors import BadRequest, Conflict, NotFound
from broker.ops import metrics
from broker.store import inbox as inbox_store
from broker.store import messages as message_store
from protocol import lifecycle


class MessageNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Message not found")


class TooLateToCancel(Conflict):
    def __init__(self) -> None:
        super().__init__("Message can no longer be cancelled")


def normalize_recipient(raw: str) -> str:
    """E.164 of a number `phonenumbers` parses and finds valid."""
    if len(raw) > 64:
        raise BadRequest("Invalid phone number")
    e164 = _e164(raw)
    if e164 is None:
        raise BadRequest("Invalid phone number")
    return e164


# Parsing and validating a number is ~30 µs of the send path's CPU; the
# numbers a customer sends to repeat (one-time codes to the same users, a
# retry a second later), so the answer for each text is kept: a pure
# function of the string (phonenumbers' metadata is fixed at import).
@functools.lru_cache(maxsize=8192)
def _e164(raw: str) -> str | None:
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


async def get(db: store.Db, account_id: uuid.UUID | None,
              message_id: uuid.UUID) -> tuple[store.MessageRow, list[store.HistoryRow]]:
    """The message with its history, oldest first; `account_id` None only
    for the operator's CLI."""
    found = await store.get_message(db, account_id, message_id)
    if found is None:
        raise MessageNotFound()
    return found


class Page(NamedTuple):
    messages: list[store.MessageRow]
    next_seq: int | None  # the keyset position of the next page, if one follows


async def page(db: store.Db, account_id: uuid.UUID, status: str | None,
               where: store.MessageFilter, limit: int, before_seq: int | None = None) -> Page:
    """The account's messages, newest first, in `status` (None: any) and
    narrowed by `where`."""
    if where.since is not None and where.until is not None and where.since >= where.until:
        raise BadRequest("since must be before until")
    rows = await store.list_messages(db, account_id, status, limit + 1, before_seq, where)
    if len(rows) > limit:
        return Page(rows[:limit], rows[limit - 1].seq)
    return Page(rows, None)


async def cancel(db: store.Db, presence: Presence, account_id: uuid.UUID,
                 message_id: uuid.UUID, peers: Peers | None = None) -> None:
    """Fail a message no phone can have sent yet, with error `cancelled`,
    and tell its phone, connected here or (through `peers`) to another
    node, to drop the job.

    "Not yet sent" is decided in one guarded UPDATE (store.cancel_message):
    `queued`, or `dispatching` and not listed by an SMS Gateway phone. A
    WebSocket phone sends only after its ack's receipt, so whichever of
    the ack and the cancel commits first wins: the other is refused (the
    ack is answered `cancel`). An SMS Gateway phone sends what it has listed
    with no go-ahead to wait for, so a listed job is treated as `sending`
    (409): cancelling it would need the phone's confirmation (CONTRACT
    section 8's hand-back), which a request cannot wait for, and never
    cancelling what the phone may have sent is the rule that holds."""
    done = await store.cancel_message(db, account_id, message_id)
    if done.was is None:
        raise MessageNotFound()
    if not done.cancelled:
        raise TooLateToCancel()
    metrics.TRANSITIONS.labels(lifecycle.FAILED).inc()
    if done.was == lifecycle.DISPATCHING and done.device_id is not None:
        conn = presence.get(done.device_id)
        if conn is not None:
            # As for an expired job (broker/delivery/sweeper.py): out of the
            # phone's in-flight window, room for its next, and cancelled there.
            conn.inflight.discard(message_id)
            presence.room_freed(conn, time.monotonic())
            await conn.channel.cancel(str(message_id), store.CANCELLED)
        elif peers is not None:
            await peers.stop_job(done.device_id, message_id, store.CANCELLED)


MAX_MESSAGE_CHARS = 1600


def check_text(text: str) -> str:
    """A message's text as a send takes it (contract section 3)."""
    if not 1 <= len(text) <= MAX_MESSAGE_CHARS:
        raise BadRequest(f"Message must be 1-{MAX_MESSAGE_CHARS} characters")
    if "\x00" in text:  # PostgreSQL text cannot hold it
        raise BadRequest("Message must not contain NUL characters")
    return text


async def changed(db: store.Db, account_id: uuid.UUID, after: dt.datetime, from_seq: int,
                  where: store.MessageFilter, limit: int) -> message_store.Changed:
    """The account's messages at `from_seq` or newer whose row changed
    after `after` (a live page's news), oldest change first."""
    return await message_store.changed_messages(db, account_id, after, from_seq, limit, where)


async def newest_seq(db: store.Db, account_id: uuid.UUID) -> int:
    return await message_store.newest_seq(db, account_id)


class InboxPage(NamedTuple):
    sms: list[store.InboxRow]
    next_seq: int | None  # the keyset position of the next page, if one follows


async def inbox_page(db: store.Db, account_id: uuid.UUID, device_id: uuid.UUID | None,
                     sender: str | None, limit: int, before_seq: int | None) -> InboxPage:
    """The SMS the account's phones received, newest first (GET /inbox)."""
    rows = await store.list_inbox(db, account_id, device_id, sender, limit + 1, before_seq)
    if len(rows) > limit:
        return InboxPage(rows[:limit], rows[limit - 1].seq)
    return InboxPage(rows, None)


async def inbox_after(db: store.Db, account_id: uuid.UUID, device_id: uuid.UUID | None,
                      sender: str | None, after_seq: int,
                      limit: int) -> tuple[list[store.InboxRow], dt.datetime]:
    """The SMS received past `after_seq`, oldest first, and the database's clock."""
    return await inbox_store.inbox_after(db, account_id, device_id, sender, after_seq, limit)
