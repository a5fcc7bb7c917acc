"""HTTP handlers of the client API (contract section 3): parse, call, answer.

Every answer is the contract's envelope or its error shape; the error shape
itself is rendered by `error_response`, used by app.py for every failure.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
import phonenumbers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from broker import keys, store
from broker.ops import metrics
from broker.errors import (BadRequest, BrokerError, Forbidden, KeyChanged, MethodNotAllowed,
                           NotFound,
                           PayloadTooLarge, RateLimited, Unauthorized, Unavailable)
from protocol import lifecycle
from protocol.api import (MAX_BODY_BYTES, CreatedDevice, DeviceHealth, DeviceInfo, DeviceRef,
                          Envelope, ErrorBody, HistoryEntry, MessageData, MessageDetail,
                          create_device_decoder, encoder, send_request_decoder)

if TYPE_CHECKING:
    from broker.app import Broker

log = logging.getLogger("smsdora.http")
JSON = "application/json"
MAX_MESSAGE_CHARS = 1600
MAX_IDEMPOTENCY_KEY = 255
_health_decoder = msgspec.json.Decoder(DeviceHealth)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = ErrorBody(statusCode=status, message=message, error=http.HTTPStatus(status).phrase)
    return Response(encoder.encode(body), status_code=status, media_type=JSON, headers=headers)


def ok(data: Any, status: int = 200, next_cursor: str | None = None) -> Response:
    return Response(encoder.encode(Envelope(statusCode=status, data=data, nextCursor=next_cursor)),
                    status_code=status, media_type=JSON)


def _iso(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds") if t else None


async def read_body(request: Request) -> bytes:
    """The body, refused with 413 past 64 KiB without reading it all."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise PayloadTooLarge("Request body exceeds 64 KiB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge("Request body exceeds 64 KiB")
        chunks.append(chunk)
    return b"".join(chunks)


async def authenticate(request: Request, scope: str, *, cached: bool = False) -> store.KeyRow:
    """The caller's key. `cached`: from the key cache when it can be trusted
    (the send path, whose INSERT checks the key again in the same statement);
    every other endpoint reads PostgreSQL."""
    broker: Broker = request.app.state.broker
    raw = keys.bearer(request.headers, api=True)
    prefix = keys.parse_prefix(keys.KEY_KIND, raw) if raw else None
    if raw is None or prefix is None:
        raise Unauthorized("Invalid API key")
    now = time.monotonic()
    cached = cached and broker.keys_cached()
    key = broker.key_cache.get(prefix, now) if cached else None
    if key is None:
        generation = broker.key_cache.generation
        key = await store.key_by_prefix(broker.pool, prefix)
        if key is not None and cached:
            broker.key_cache.put(prefix, str(key.id), key, now, generation)
    if key is None or not keys.matches(broker.secret, raw, key.secret_hash):
        raise Unauthorized("Invalid API key")
    if key.revoked:
        raise Unauthorized("API key revoked")
    if key.expires_at is not None and key.expires_at <= dt.datetime.now(dt.timezone.utc):
        raise Unauthorized("API key expired")
    if not keys.has_scope(key.scopes, scope):
        raise Forbidden(f"Missing {scope} scope")
    if key.rate_limit is not None:
        retry = broker.rate_window.hit(str(key.id), key.rate_limit, now)
        if retry is not None:
            raise RateLimited(retry)
    return key


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


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as err:
        raise BadRequest(_validation_text(str(err))) from None
    except msgspec.DecodeError:
        raise BadRequest("Body must be a JSON object") from None


def _validation_text(raw: str) -> str:
    # msgspec: "Expected `str`, got `int` - at `$.recipient`" -> "recipient: expected str, got int"
    text, _, where = raw.partition(" - at `$.")
    field = where.rstrip("`")
    text = text.replace("`", "")
    if text.startswith("Object missing required field"):
        return f"Missing field {text.rsplit(' ', 1)[-1]}"
    return f"{field}: {text[0].lower()}{text[1:]}" if field else text


async def send_message(request: Request) -> Response:
    return Response(await send_message_body(request), status_code=201, media_type=JSON)


async def send_message_body(request: Request) -> bytes:
    """The 201 body of an accepted send; a BrokerError for any other answer."""
    broker: Broker = request.app.state.broker
    if broker.draining:
        raise Unavailable("Broker is shutting down", headers={"Retry-After": "5"})
    body = await read_body(request)
    key = await authenticate(request, "messages:send", cached=True)
    req = _decode(send_request_decoder, body)
    if not 1 <= len(req.message) <= MAX_MESSAGE_CHARS:
        raise BadRequest("Message must be 1-1600 characters")
    if "\x00" in req.message:  # PostgreSQL text cannot hold it
        raise BadRequest("Message must not contain NUL characters")
    recipient = normalize_recipient(req.recipient)
    idem = request.headers.get("idempotency-key")
    if idem is not None and not 1 <= len(idem) <= MAX_IDEMPOTENCY_KEY:
        raise BadRequest("Idempotency-Key must be 1-255 characters")
    try:
        result = await broker.dispatcher.send(key.account_id, key.monthly_messages, recipient,
                                              req.message, req.ttl, idem, body, key.id,
                                              key.prefix)
    except KeyChanged:
        # The cache had not heard yet: the database's answer is the one given.
        broker.key_cache.drop(str(key.id))
        key = await authenticate(request, "messages:send")
        result = await broker.dispatcher.send(key.account_id, key.monthly_messages, recipient,
                                              req.message, req.ttl, idem, body, key.id,
                                              key.prefix)
    return result


_CREATED_HEADERS = [(b"content-type", JSON.encode())]


async def send_message_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """`POST /messages/send` as a bare ASGI app: the same handler and the
    same answers (app.py calls it without Starlette's router)."""
    request = Request(scope, receive)
    try:
        body = await send_message_body(request)
    except BrokerError as err:
        await error_response(err.status, err.message, err.headers)(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": 201,
                "headers": [*_CREATED_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _message_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["message_id"])
    except ValueError:
        raise NotFound("Message not found") from None


async def get_message(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    if request.path_params["message_id"] == "send":
        # `/messages/send` is a route of its own that only takes POST.
        raise MethodNotAllowed("Method Not Allowed", headers={"Allow": "POST"})
    key = await authenticate(request, "messages:read")
    found = await store.get_message(broker.pool, key.account_id, _message_id(request))
    if found is None:
        raise NotFound("Message not found")
    row, history = found
    return ok(MessageDetail(
        id=str(row.id), recipient=row.recipient, message=row.body, status=row.status,
        device=_device_ref(row), error=row.error, createdAt=_iso(row.created_at) or "",
        history=[HistoryEntry(status=h.status, at=_iso(h.at) or "") for h in history],
    ))


def _device_ref(row: store.MessageRow) -> DeviceRef | None:
    if row.device_id is None:
        return None
    return DeviceRef(id=str(row.device_id), deviceName=row.device_name or "")


async def list_messages(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, "messages:read")
    q = request.query_params
    status = q.get("status") or None
    if status is not None and status not in lifecycle.STATUSES:
        raise BadRequest(f"status must be one of {', '.join(lifecycle.STATUSES)}")
    limit = _int_param(q.get("limit"), "limit", default=20, low=1, high=100)
    cursor = q.get("cursor") or None
    before = _int_param(cursor, "cursor", default=None, low=1, high=2**62) if cursor else None
    rows = await store.list_messages(broker.pool, key.account_id, status, limit + 1, before)
    more = len(rows) > limit
    rows = rows[:limit]
    data = [MessageData(id=str(r.id), recipient=r.recipient, message=r.body, status=r.status,
                        device=_device_ref(r)) for r in rows]
    return ok(data, next_cursor=str(rows[-1].seq) if more else None)


def _int_param(raw: str | None, name: str, *, default: int | None, low: int, high: int) -> Any:
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(raw)


async def list_devices(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, "devices:read")
    out = []
    for d in await store.list_devices(broker.pool, key.account_id):
        # Online, or gone so recently that last-seen is not flushed yet.
        conn = broker.presence.get(d.id) or broker.presence.unflushed(d.id)
        last_seen = (dt.datetime.fromtimestamp(conn.last_seen_at, dt.timezone.utc)
                     if conn is not None else d.last_seen_at)
        if conn is not None and conn.health is not None:
            health: DeviceHealth | None = DeviceHealth(
                battery=conn.health.battery, charging=conn.health.charging,
                signal=conn.health.signal)
        else:
            health = msgspec.convert(d.health, DeviceHealth) if d.health else None
        out.append(DeviceInfo(
            id=str(d.id), deviceName=d.name, online=broker.presence.get(d.id) is not None, lastSeen=_iso(last_seen),
            active=d.active, sendRate=d.send_rate, health=health,
            appVersion=(conn.app_version if conn is not None else d.app_version),
        ))
    return ok(out)


async def create_device(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    body = await read_body(request)
    key = await authenticate(request, "devices:write")
    req = _decode(create_device_decoder, body)
    if "\x00" in req.name:
        raise BadRequest("name must not contain NUL characters")
    token, prefix = keys.make_secret(keys.TOKEN_KIND)
    try:
        async with broker.pool.acquire() as db:
            row = await store.insert_device(db, key.account_id, req.name, prefix,
                                            keys.digest(broker.secret, token),
                                            broker.settings.default_send_rate
                                            if req.sendRate is None else req.sendRate)
    except store.DeviceLimitReached:
        raise Forbidden("Device limit reached") from None
    return ok(CreatedDevice(id=str(row.id), deviceName=row.name, token=token,
                            sendRate=row.send_rate), status=201)


async def devices(request: Request) -> Response:
    """`/devices`: one route for both methods, so a 405 lists both in Allow."""
    if request.method == "POST":
        return await create_device(request)
    return await list_devices(request)


async def health(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    try:
        await asyncio.wait_for(store.ping(broker.pool), timeout=2.0)
        database = "ok"
    except store.DATABASE_DOWN as err:
        log.warning("health: database unreachable", extra={"error": type(err).__name__})
        database = "unreachable"
    status = "ok" if database == "ok" else "degraded"
    body = {"status": status, "database": database, "node": broker.settings.node,
            "devicesOnline": broker.presence.online_count(),
            "uptimeSeconds": int(time.monotonic() - broker.started_mono)}
    return Response(encoder.encode(body), status_code=200 if status == "ok" else 503,
                    media_type=JSON)


async def metrics_endpoint(request: Request) -> Response:
    data, content_type = metrics.render()
    return Response(data, media_type=content_type)


__all__ = ["BrokerError", "error_response"]
