"""`/messages`: send one, read one, list them (contract section 3), cancel
one (section 10)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from broker import store
from broker.clock import iso
from broker.errors import BadRequest, BrokerError, KeyChanged, MethodNotAllowed, Unavailable
from broker.http.auth import authenticate
from broker.http.params import Choice, Cursor, Header, Integer, PathId, QueryId, Text, Timestamp
from broker.http.responses import JSON, decode, error_response, ok, read_body
from broker.services import messages as message_service
from broker.services.messages import normalize_recipient
from protocol import lifecycle
from protocol.api import (
    DeviceRef,
    HistoryEntry,
    MessageDetail,
    MessageItem,
    send_request_decoder,
)

if TYPE_CHECKING:
    from broker.runtime import Broker

MAX_MESSAGE_CHARS = 1600

IDEMPOTENCY_KEY = Header(
    "Idempotency-Key", "The same key with the same body within 24 hours answers the first "
                       "response again and sends nothing; with another body, 409.",
    min_length=1, max_length=255)
MESSAGE_ID = PathId("message_id", "The id the send answered with.", not_found="Message not found")
STATUS = Choice("status", "Only messages in this status.", lifecycle.STATUSES)
LIMIT = Integer("limit", "At most this many messages (default 20).", low=1, high=100, default=20)
CURSOR = Cursor("cursor", "The `nextCursor` of the previous page.", high=2**62)
DEVICE = QueryId("device", "Only messages of this device.")
RECIPIENT = Text("recipient", "Only messages to this number (any form the send takes; "
                              "compared in E.164).", max_length=64)
SINCE = Timestamp("since", "Only messages accepted at or after this time (RFC 3339, e.g. "
                           "`2026-12-01T00:00:00Z`).")
UNTIL = Timestamp("until", "Only messages accepted before this time (RFC 3339).")

# The send hot path reads these as globals, not through the declaration.
_IDEMPOTENCY_HEADER = IDEMPOTENCY_KEY.name.lower()
_IDEMPOTENCY_MIN, _IDEMPOTENCY_MAX = IDEMPOTENCY_KEY.min_length, IDEMPOTENCY_KEY.max_length


async def send_message(request: Request) -> Response:
    return Response(await send_message_body(request), status_code=201, media_type=JSON)


async def send_message_body(request: Request) -> bytes:
    """The 201 body of an accepted send; a BrokerError for any other answer."""
    broker: Broker = request.app.state.broker
    if broker.draining:
        raise Unavailable("Broker is shutting down", headers={"Retry-After": "5"})
    body = await read_body(request)
    key = await authenticate(request, "messages:send", cached=True)
    req = decode(send_request_decoder, body)
    if not 1 <= len(req.message) <= MAX_MESSAGE_CHARS:
        raise BadRequest("Message must be 1-1600 characters")
    if "\x00" in req.message:  # PostgreSQL text cannot hold it
        raise BadRequest("Message must not contain NUL characters")
    recipient = normalize_recipient(req.recipient)
    idem = request.headers.get(_IDEMPOTENCY_HEADER)
    if idem is not None and not _IDEMPOTENCY_MIN <= len(idem) <= _IDEMPOTENCY_MAX:
        raise IDEMPOTENCY_KEY.refusal()
    account = key.account_id
    # Only a send with an Idempotency-Key holds a connection of its own (its
    # transaction) and takes a slot of the account's share of the pool; the
    # others ride the shared batches (broker/delivery/batch.py), which hold
    # a few connections whatever the number of sends waiting in them.
    shared = idem is not None
    if shared:
        await broker.pool_shares.acquire(account)
    try:
        try:
            return await broker.dispatcher.send(account, key.monthly_messages, recipient,
                                                req.message, req.ttl, idem, body, key.id,
                                                key.prefix)
        except KeyChanged:
            # The cache had not heard yet: the database's answer is the one given.
            broker.key_cache.drop(str(key.id))
            key = await authenticate(request, "messages:send")
            return await broker.dispatcher.send(key.account_id, key.monthly_messages,
                                                recipient, req.message, req.ttl, idem, body,
                                                key.id, key.prefix)
    finally:
        if shared:
            broker.pool_shares.release(account)


_CREATED_HEADERS = [(b"content-type", JSON.encode())]


async def send_message_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """`POST /messages/send` as a bare ASGI app: the same handler and the
    same answers, called by the middleware without Starlette's router."""
    scope["endpoint"] = send_message  # what the latency metric and the log line name
    request = Request(scope, receive)
    try:
        body = await send_message_body(request)
    except BrokerError as err:
        await error_response(err.status, err.message, err.headers)(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": 201,
                "headers": [*_CREATED_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def get_message(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    if request.path_params["message_id"] == "send":
        # `/messages/send` is a route of its own that only takes POST.
        raise MethodNotAllowed("Method Not Allowed", headers={"Allow": "POST"})
    key = await authenticate(request, "messages:read")
    message_id = MESSAGE_ID.read(request.path_params)
    async with read_share(broker, key.account_id):
        return ok(message_detail(*await message_service.get(broker.pool, key.account_id,
                                                            message_id)))


def message_detail(row: store.MessageRow, history: list[store.HistoryRow]) -> MessageDetail:
    return MessageDetail(
        id=str(row.id), recipient=row.recipient, message=row.body, status=row.status,
        device=_device_ref(row), error=row.error, createdAt=iso(row.created_at) or "",
        history=[HistoryEntry(status=h.status, at=iso(h.at) or "") for h in history],
    )


async def cancel_message(request: Request) -> Response:
    """`POST /messages/{id}/cancel`: failed with error `cancelled` while no
    phone can have sent it (services/messages.py says when that is)."""
    broker: Broker = request.app.state.broker
    key = await authenticate(request, "messages:send")
    message_id = MESSAGE_ID.read(request.path_params)
    await message_service.cancel(broker.pool, broker.presence, key.account_id, message_id,
                                 broker.peers)
    return ok(message_detail(*await message_service.get(broker.pool, key.account_id,
                                                        message_id)))


@contextlib.asynccontextmanager
async def read_share(broker: Broker, account: uuid.UUID) -> AsyncIterator[None]:
    """A read's turn: one of the account's read slots, then one of its pool
    slots (a send takes only the latter). The page is built while both are
    held: an account's requests take their turn for the event loop's time as
    for the pool's connections (docs/OPERATIONS.md, "Fairness between
    accounts")."""
    await broker.read_shares.acquire(account)
    try:
        await broker.pool_shares.acquire(account)
        try:
            yield
        finally:
            broker.pool_shares.release(account)
    finally:
        broker.read_shares.release(account)


def _device_ref(row: store.MessageRow) -> DeviceRef | None:
    if row.device_id is None:
        return None
    return DeviceRef(id=str(row.device_id), deviceName=row.device_name or "")


async def list_messages(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, "messages:read")
    q = request.query_params
    recipient = RECIPIENT.read(q)
    status = STATUS.read(q)
    where = store.MessageFilter(
        device_id=DEVICE.read(q),
        recipient=normalize_recipient(recipient) if recipient is not None else None,
        since=SINCE.read(q), until=UNTIL.read(q))
    limit = LIMIT.read(q)
    before = CURSOR.read(q)
    async with read_share(broker, key.account_id):
        rows, next_seq = await message_service.page(broker.pool, key.account_id, status, where,
                                                    limit, before)
        return ok([message_item(r) for r in rows],
                  next_cursor=str(next_seq) if next_seq is not None else None)


def message_item(row: store.MessageRow) -> MessageItem:
    return MessageItem(id=str(row.id), recipient=row.recipient, message=row.body,
                       status=row.status, device=_device_ref(row), error=row.error,
                       createdAt=iso(row.created_at) or "")
