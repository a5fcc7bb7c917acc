"""broker/http_api.py, its pure parts: recipients, validation texts, the body
limit and the error shape. No server, no database (tests/e2e has those)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import phonenumbers
import pytest
from starlette.requests import Request

from broker.http import api as http_api
from broker.errors import BadRequest, PayloadTooLarge
from protocol.api import MAX_BODY_BYTES, send_request_decoder

# --- normalize_recipient ----------------------------------------------------


@pytest.mark.parametrize("raw, e164", [
    ("+1 650-253-0000", "+16502530000"),          # the contract's own example
    ("+1 (650) 253-0000", "+16502530000"),
    ("+16502530000", "+16502530000"),
    ("+44 20 7183 8750", "+442071838750"),
    ("+212600000000", "+212600000000"),           # the contract's request example
])
def test_normalize_recipient_valid(raw: str, e164: str) -> None:
    # The expectation is phonenumbers' own verdict, checked here, not assumed.
    assert phonenumbers.is_valid_number(phonenumbers.parse(raw, None))
    assert http_api.normalize_recipient(raw) == e164


@pytest.mark.parametrize("raw", [
    "+1234567890",        # parses, but no such number
    "+1 650 253 000",     # one digit short
    "garbage",
    "",
    "+",
    "6502530000",         # national form: no region to read it in
    "+999 123 456",       # no such country code
    "+1 650-253-0000" + " " * 50,  # valid digits, but over 64 characters
    "+" + "1" * 70,
])
def test_normalize_recipient_invalid(raw: str) -> None:
    with pytest.raises(BadRequest) as exc:
        http_api.normalize_recipient(raw)
    assert exc.value.message == "Invalid phone number"
    assert exc.value.status == 400


def test_normalize_recipient_length_limit_is_64() -> None:
    number = "+1 650-253-0000"
    at_limit = number + " " * (64 - len(number))
    assert len(at_limit) == 64
    assert http_api.normalize_recipient(at_limit) == "+16502530000"
    with pytest.raises(BadRequest):
        http_api.normalize_recipient(at_limit + " ")


# --- _validation_text -------------------------------------------------------


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
    assert http_api._validation_text(decode_error(body)) == text


def test_validation_text_shapes() -> None:
    v = http_api._validation_text
    assert v("Expected `str`, got `int` - at `$.recipient`") == "recipient: expected str, got int"
    assert v("Object missing required field `message`") == "Missing field message"
    assert v("Expected `object`, got `array`") == "Expected object, got array"
    assert "`" not in v("Expected `int` >= 1 - at `$.ttl`")


def test_decode_turns_errors_into_bad_requests() -> None:
    with pytest.raises(BadRequest) as exc:
        http_api._decode(send_request_decoder, b'{"message": "x"}')
    assert exc.value.message == "Missing field recipient"
    with pytest.raises(BadRequest) as exc:
        http_api._decode(send_request_decoder, b"not json")
    assert exc.value.message == "Body must be a JSON object"
    req = http_api._decode(send_request_decoder, b'{"recipient": "+1", "message": "hi"}')
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
    got = await http_api.read_body(request(body))
    assert json.loads(got) == {"recipient": "+16502530000", "message": "hi"}


async def test_read_body_exactly_64_kib_is_accepted() -> None:
    data = b"x" * MAX_BODY_BYTES
    body = Body([data[:1000], data[1000:]])
    assert await http_api.read_body(request(body, MAX_BODY_BYTES)) == data


async def test_read_body_refuses_large_content_length_without_reading() -> None:
    body = Body([b"x" * (MAX_BODY_BYTES + 1)])
    with pytest.raises(PayloadTooLarge) as exc:
        await http_api.read_body(request(body, MAX_BODY_BYTES + 1))
    assert exc.value.status == 413
    assert body.reads == 0


async def test_read_body_refuses_a_stream_past_64_kib_without_reading_it_all() -> None:
    """No Content-Length (chunked) or a lying one: counted as it arrives."""
    chunks = [b"x" * 16384] * 10  # 160 KiB
    for length in (None, 10):
        body = Body(chunks)
        with pytest.raises(PayloadTooLarge):
            await http_api.read_body(request(body, length))
        assert body.reads == 5  # stops at the chunk that crosses 64 KiB


async def test_read_body_ignores_a_malformed_content_length() -> None:
    body = Body([b"{}"])
    assert await http_api.read_body(request(body, "abc")) == b"{}"


# --- error shape ------------------------------------------------------------


@pytest.mark.parametrize("status, phrase", [
    (400, "Bad Request"), (401, "Unauthorized"), (403, "Forbidden"), (404, "Not Found"),
    (409, "Conflict"), (500, "Internal Server Error"),
])
def test_error_response_shape(status: int, phrase: str) -> None:
    resp = http_api.error_response(status, "Some text", {"Retry-After": "7"})
    assert resp.status_code == status
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["retry-after"] == "7"
    assert json.loads(resp.body) == {"statusCode": status, "message": "Some text", "error": phrase}
