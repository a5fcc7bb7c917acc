"""broker/http/params.py: what a handler reads through a parameter
declaration, and that the document says the same of it. Pure."""

from __future__ import annotations

import re
import uuid

import pytest

from broker.errors import BadRequest, NotFound
from broker.http.params import Choice, Cursor, Header, Integer, PathId

STATUS = Choice("status", "Only these.", ("queued", "sent"))
LIMIT = Integer("limit", "At most.", low=1, high=100, default=20)
CURSOR = Cursor("cursor", "Where.", high=2**62)


def test_choice_reads_a_listed_word_and_empty_is_none() -> None:
    assert STATUS.read({"status": "sent"}) == "sent"
    assert STATUS.read({}) is None
    assert STATUS.read({"status": ""}) is None  # `?status=`: no value (contract section 3)
    with pytest.raises(BadRequest) as exc:
        STATUS.read({"status": "lost"})
    assert exc.value.message == "status must be one of queued, sent"


def test_integer_reads_the_range_and_defaults() -> None:
    assert LIMIT.read({}) == 20
    assert LIMIT.read({"limit": ""}) == 20
    assert LIMIT.read({"limit": "1"}) == 1
    assert LIMIT.read({"limit": "100"}) == 100
    for raw in ("0", "101", "-1", "1.5", "ten", " 5", "٣"):  # the last: Arabic-Indic three
        with pytest.raises(BadRequest) as exc:
            LIMIT.read({"limit": raw})
        assert exc.value.message == "limit must be an integer from 1 to 100", raw


def test_integer_document_has_its_range_and_default() -> None:
    assert LIMIT.openapi() == {
        "name": "limit", "in": "query", "required": False, "allowEmptyValue": True,
        "description": "At most.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}}


def test_cursor_is_an_integer_to_us_and_absent_is_none() -> None:
    assert CURSOR.read({}) is None
    assert CURSOR.read({"cursor": ""}) is None
    assert CURSOR.read({"cursor": "17"}) == 17
    assert CURSOR.read({"cursor": str(2**62)}) == 2**62
    for raw in ("0", str(2**62 + 1), "x"):
        with pytest.raises(BadRequest) as exc:
            CURSOR.read({"cursor": raw})
        assert exc.value.message == f"cursor must be an integer from 1 to {2**62}"


def test_every_cursor_the_document_allows_is_read() -> None:
    """The documented pattern is narrower than the range, never wider: a
    client that follows the document is never refused."""
    schema = CURSOR.openapi()["schema"]
    assert schema["type"] == "string"
    pattern = re.compile(schema["pattern"])
    widest = "9" * (len(str(2**62)) - 1)
    for raw in ("1", "10", widest):
        assert pattern.match(raw) and CURSOR.read({"cursor": raw}) == int(raw)
    for raw in ("0", "01", widest + "9", ""):
        assert not pattern.match(raw), raw


def test_path_id_reads_a_uuid_and_anything_else_is_not_found() -> None:
    param = PathId("message_id", "The id.", not_found="Message not found")
    mid = uuid.uuid4()
    assert param.read({"message_id": str(mid)}) == mid
    with pytest.raises(NotFound) as exc:
        param.read({"message_id": "abc"})
    assert exc.value.message == "Message not found"
    assert param.openapi()["in"] == "path" and param.openapi()["required"] is True
    assert param.openapi()["schema"] == {"type": "string", "format": "uuid"}


def test_header_documents_its_lengths_and_refuses_in_the_same_words() -> None:
    header = Header("Idempotency-Key", "Replays.", min_length=1, max_length=255)
    assert header.openapi() == {
        "name": "Idempotency-Key", "in": "header", "required": False, "description": "Replays.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
    refusal = header.refusal()
    assert (refusal.status, refusal.message) == (400, "Idempotency-Key must be 1-255 characters")


@pytest.mark.parametrize("param", [STATUS, LIMIT, CURSOR])
def test_a_parameter_given_twice_is_refused(param: Choice | Integer | Cursor) -> None:
    from starlette.datastructures import QueryParams

    with pytest.raises(BadRequest) as exc:
        param.read(QueryParams(f"{param.name}=1&{param.name}=2"))
    assert exc.value.message == f"{param.name} must be given at most once"
    # Once is fine (and another parameter's repetition is not this one's business).
    param.read(QueryParams(f"{param.name}=&other=1&other=2"))
