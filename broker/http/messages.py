"""`/messages`: send one, read one, list them (contract section 3)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import phonenumbers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from broker import store
from broker.clock import iso
from broker.errors import BadRequest, BrokerError, KeyChanged, MethodNotAllowed, NotFound, Unavailable
from broker.http.auth import authenticate
from broker.http.params import Choice, Cursor, Header, Integer, PathId
from broker.http.responses import JSON, decode, error_response, ok, read_body
from protocol import lifecycle
from protocol.api import DeviceRef, HistoryEntry, MessageData, MessageDetail, send_request_decoder

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

# The send hot path reads these as globals, not through the declaration.
_IDEMPOTENCY_HEADER = IDEMPOTENCY_KEY.name.lower()
_IDEMPOTENCY_MIN, _IDEMPOTENCY_MAX = IDEMPOTENCY_KEY.min_length, IDEMPOTENCY_KEY.max_length


def normalize_recipient(raw: str) -> str:
    """E.164 of a number `phonenumbers` parses and finds valid."""
    if len(raw) > 64:
        raise BadRequest("Invalid phone number")
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        raise BadRequest("Invalid phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise BadRequest("Invalid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


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
    async with _read_share(broker, key.account_id):
        found = await store.get_message(broker.pool, key.account_id, message_id)
        if found is None:
            raise NotFound("Message not found")
        row, history = found
        return ok(MessageDetail(
            id=str(row.id), recipient=row.recipient, message=row.body, status=row.status,
            device=_device_ref(row), error=row.error, createdAt=iso(row.created_at) or "",
            history=[HistoryEntry(status=h.status, at=iso(h.at) or "") for h in history],
        ))


@contextlib.asynccontextmanager
async def _read_share(broker: Broker, account: uuid.UUID) -> AsyncIterator[None]:
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
    status = STATUS.read(q)
    limit = LIMIT.read(q)
    before = CURSOR.read(q)
    async with _read_share(broker, key.account_id):
        rows = await store.list_messages(broker.pool, key.account_id, status, limit + 1, before)
        more = len(rows) > limit
        rows = rows[:limit]
        data = [MessageData(id=str(r.id), recipient=r.recipient, message=r.body,
                            status=r.status, device=_device_ref(r)) for r in rows]
        return ok(data, next_cursor=str(rows[-1].seq) if more else None)
