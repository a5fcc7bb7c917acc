"""The one place for the shapes of an answer (contract section 3): the error
shape, the success envelope, and the request body read and decoded at the
edge, every failure of which becomes one of the contract's errors."""

from __future__ import annotations

import http
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from broker.errors import BadRequest, PayloadTooLarge
from protocol.api import MAX_BODY_BYTES, Envelope, ErrorBody, encoder

JSON = "application/json"


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


def decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """The body as the decoder's Struct; a 400 naming the field otherwise
    ("body not valid JSON (whatever its Content-Type), missing or mistyped
    field")."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as err:
        raise BadRequest(validation_text(str(err))) from None
    except msgspec.DecodeError:
        raise BadRequest("Body must be a JSON object") from None


def validation_text(raw: str) -> str:
    # msgspec: "Expected `str`, got `int` - at `$.recipient`" -> "recipient: expected str, got int"
    text, _, where = raw.partition(" - at `$.")
    field = where.rstrip("`")
    text = text.replace("`", "")
    if text.startswith("Object missing required field"):
        return f"Missing field {text.rsplit(' ', 1)[-1]}"
    return f"{field}: {text[0].lower()}{text[1:]}" if field else text
