"""broker/http/responses.py: validation texts, decoding, the body limit, the
error shape and the envelope. No server, no database (tests/e2e has those)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from starlette.requests import Request

from broker.errors import BadRequest, PayloadTooLarge
from broker.http import responses
from protocol.api import MAX_BODY_BYTES, HealthBody, send_request_decoder

# --- validation_text -------------------------------------------------------


def decode_error(body: bytes) -> str:
    with pytest.raises(msgspec.ValidationError) as exc:
        send_request_decoder.decode(body)
    return str(exc.value)


@pytest.mark.parametrize("body, text", [
    (b'{"recipient": 1, "message": "x"}', "recipient: expected str, got int"),
    (b'{"recipient": "x", "message": null}', "message: expected str, got null"),
    (b'{"message": "x"}', "Missing field recipient"),
    (b'{"recipient": "x"}', "Missing field message"),
    (b'{"recipient": "x", "message": "x", "ttl": 0}', "ttl: expected int >= 1"),
    (b'{"recipient": "x", "message": "x", "ttl": 99999999}', "ttl: expected int <= 604800"),
    (b'{"recipient": "x", "message": "x", "ttl": "soon"}', "ttl: expected int | null, got str"),
    (b'[1, 2]', "Expected object, got array"),
    (b'"text"', "Expected object, got str"),
])
def test_validation_text_from_msgspec(body: bytes, text: str) -> None:
    assert responses.validation_text(decode_error(body)) == text


def test_validation_text_shapes() -> None:
    v = responses.validation_text
    assert v("Expected `str`, got `int` - at `$.recipient`") == "recipient: expected str, got int"
    assert v("Object missing required field `message`") == "Missing field message"
    assert v("Expected `object`, got `array`") == "Expected object, got array"
    assert "`" not in v("Expected `int` >= 1 - at `$.ttl`")


def test_decode_turns_errors_into_bad_requests() -> None:
    with pytest.raises(BadRequest) as exc:
        responses.decode(send_request_decoder, b'{"message": "x"}')
    assert exc.value.message == "Missing field recipient"
    with pytest.raises(BadRequest) as exc:
        responses.decode(send_request_decoder, b"not json")
    assert exc.value.message == "Body must be a JSON object"
    req = responses.decode(send_request_decoder, b'{"recipient": "+1", "message": "hi"}')
    assert (req.recipient, req.message, req.ttl) == ("+1", "hi", None)


# --- read_body --------------------------------------------------------------


class Body:
    """An ASGI `receive` that hands out chunks and counts what was read."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.reads = 0

    async def __call__(self) -> dict[str, Any]:
        i = self.reads
        self.reads += 1
        if i >= len(self.chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": self.chunks[i],
                "more_body": i < len(self.chunks) - 1}


def request(body: Body, content_length: int | str | None = None) -> Request:
    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/messages/send", "headers": headers,
             "query_string": b""}
    return Request(scope, body)  # type: ignore[arg-type]


async def test_read_body_joins_chunks() -> None:
    body = Body([b'{"recipient": ', b'"+16502530000", ', b'"message": "hi"}'])
    got = await responses.read_body(request(body))
    assert json.loads(got) == {"recipient": "+16502530000", "message": "hi"}


async def test_read_body_exactly_64_kib_is_accepted() -> None:
    data = b"x" * MAX_BODY_BYTES
    body = Body([data[:1000], data[1000:]])
    assert await responses.read_body(request(body, MAX_BODY_BYTES)) == data


async def test_read_body_refuses_large_content_length_without_reading() -> None:
    body = Body([b"x" * (MAX_BODY_BYTES + 1)])
    with pytest.raises(PayloadTooLarge) as exc:
        await responses.read_body(request(body, MAX_BODY_BYTES + 1))
    assert exc.value.status == 413
    assert body.reads == 0


async def test_read_body_refuses_a_stream_past_64_kib_without_reading_it_all() -> None:
    """No Content-Length (chunked) or a lying one: counted as it arrives."""
    chunks = [b"x" * 16384] * 10  # 160 KiB
    for length in (None, 10):
        body = Body(chunks)
        with pytest.raises(PayloadTooLarge):
            await responses.read_body(request(body, length))
        assert body.reads == 5  # stops at the chunk that crosses 64 KiB


async def test_read_body_ignores_a_malformed_content_length() -> None:
    body = Body([b"{}"])
    assert await responses.read_body(request(body, "abc")) == b"{}"


# --- error shape ------------------------------------------------------------


@pytest.mark.parametrize("status, phrase", [
    (400, "Bad Request"), (401, "Unauthorized"), (403, "Forbidden"), (404, "Not Found"),
    (409, "Conflict"), (500, "Internal Server Error"),
])
def test_error_response_shape(status: int, phrase: str) -> None:
    resp = responses.error_response(status, "Some text", {"Retry-After": "7"})
    assert resp.status_code == status
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["retry-after"] == "7"
    assert json.loads(bytes(resp.body)) == {"statusCode": status, "message": "Some text", "error": phrase}


def test_ok_is_the_envelope_and_next_cursor_only_when_given() -> None:
    resp = responses.ok([1, 2])
    assert (resp.status_code, json.loads(bytes(resp.body))) == (200, {"statusCode": 200, "data": [1, 2]})
    resp = responses.ok({"id": "x"}, status=201, next_cursor="42")
    assert resp.status_code == 201
    assert json.loads(bytes(resp.body)) == {"statusCode": 201, "data": {"id": "x"}, "nextCursor": "42"}
    assert resp.headers["content-type"].startswith("application/json")


def test_bare_is_the_struct_alone() -> None:
    body = HealthBody(status="degraded", database="unreachable", node="n1", devicesOnline=0,
                      uptimeSeconds=3)
    resp = responses.bare(body, 503)
    assert resp.status_code == 503
    assert json.loads(bytes(resp.body)) == {"status": "degraded", "database": "unreachable",
                                     "node": "n1", "devicesOnline": 0, "uptimeSeconds": 3}
