"""The one place for the shapes of an answer (contract section 3): the error
shape, the success envelope, and the request body read and decoded at the
edge, every failure of which becomes one of the contract's errors."""

from __future__ import annotations

import asyncio
import http
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from broker.errors import BadRequest, BrokerError, PayloadTooLarge
from broker.http import deadline as request_deadline
from protocol.api import MAX_BODY_BYTES, Envelope, ErrorBody, encoder

JSON = "application/json"

# The body's deadline when no middleware set one (a unit test).
DEFAULT_BODY_DEADLINE_S = 30.0


class BodyTimeout(BrokerError):
    """The client did not send its body in time (contract section 12): its
    problem, answered 408, and the connection closed (what is left of the
    body would be read as the next request)."""

    status = 408

    def __init__(self) -> None:
        super().__init__("Request body not received in time", headers={"Connection": "close"})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """`{"statusCode": N, "message": "…", "error": "<HTTP reason phrase>"}`."""
    body = ErrorBody(statusCode=status, message=message, error=http.HTTPStatus(status).phrase)
    return Response(encoder.encode(body), status_code=status, media_type=JSON, headers=headers)


def ok(data: Any, status: int = 200, next_cursor: str | None = None) -> Response:
    """`{"statusCode": 200, "data": …}`, with `nextCursor` when more follow."""
    return Response(encoder.encode(Envelope(statusCode=status, data=data, nextCursor=next_cursor)),
                    status_code=status, media_type=JSON)


def bare(body: Any, status: int = 200) -> Response:
    """A body without the envelope (the send's 201, /health, the SMS Gateway
    app's own shapes): a Struct, or plain JSON values."""
    return Response(encoder.encode(body), status_code=status, media_type=JSON)


async def read_body(request: Request) -> bytes:
    """The body, refused with 413 past 64 KiB without reading it all, and
    with 408 when it does not arrive within the body deadline. The time it
    takes is the client's: the request's own deadline (our work, the
    database) is held while it arrives (broker/http/deadline.py), and past
    the body's the middleware answers the request's TimeoutError with 408."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise PayloadTooLarge("Request body exceeds 64 KiB")
    deadline = request_deadline.of(request.scope)
    if deadline is None:
        try:
            async with asyncio.timeout(DEFAULT_BODY_DEADLINE_S):
                return await _read(request)
        except TimeoutError:  # our own, just above
            raise BodyTimeout() from None
    deadline.body_started()
    try:
        return await _read(request)
    finally:
        deadline.body_done()


async def _read(request: Request) -> bytes:
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise PayloadTooLarge("Request body exceeds 64 KiB")
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody to answer; the request line says 400, not an unexpected error.
        raise BadRequest("Client disconnected before its body was complete") from None
    return b"".join(chunks)


def decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """The body as the decoder's Struct; a 400 naming the field otherwise
    ("body not valid JSON (whatever its Content-Type), missing or mistyped
    field"). Any other encoding than UTF-8 is not JSON (RFC 8259 section
    8.1) and is refused like it; so is nesting past msgspec's recursion
    limit, and a NUL in any string, which PostgreSQL text cannot hold."""
    try:
        value = decoder.decode(body)
    except msgspec.ValidationError as err:
        raise BadRequest(validation_text(str(err))) from None
    except msgspec.DecodeError:
        raise BadRequest("Body must be a JSON object") from None
    except RecursionError:
        raise BadRequest(_TOO_DEEP) from None
    if b"\\u0000" in body:  # rare: then look for the string that holds it
        try:
            where = _nul_at(msgspec.to_builtins(value))
        except RecursionError:
            raise BadRequest(_TOO_DEEP) from None
        if where is not None:
            raise BadRequest(f"{where or 'body'} must not contain NUL characters")
    return value


_TOO_DEEP = "Body is nested too deeply"


def _nul_at(value: Any, path: str = "") -> str | None:
    """The path (`name`, `[0].recipients[1].error`) of a string with a NUL."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        if any("\x00" in str(k) for k in value):
            return path
        children = [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    else:
        return None
    for where, child in children:
        if (found := _nul_at(child, where)) is not None:
            return found
    return None


def validation_text(raw: str) -> str:
    # msgspec: "Expected `str`, got `int` - at `$.recipient`" -> "recipient: expected str, got int"
    text, _, where = raw.partition(" - at `$.")
    field = where.rstrip("`")
    text = text.replace("`", "")
    if text.startswith("Object missing required field"):
        return f"Missing field {text.rsplit(' ', 1)[-1]}"
    return f"{field}: {text[0].lower()}{text[1:]}" if field else text
