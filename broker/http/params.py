"""Parameters of an endpoint, declared once: the handler reads its value
through the declaration and /openapi.json documents the same declaration,
so a range or a choice is never written twice.

Query values follow `?status=&limit=&cursor=` (contract section 3): an empty
value is no value.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.errors import BadRequest, NotFound


def _one(query: Mapping[str, str], name: str) -> str | None:
    """The parameter's value; given more than once, a 400 (which one would
    be meant is a guess: `?status=sent&status=failed` is not a filter on
    both)."""
    getlist = getattr(query, "getlist", None)
    if getlist is not None and len(getlist(name)) > 1:
        raise BadRequest(f"{name} must be given at most once")
    return query.get(name)


def _integer(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    raw = _one(query, name)
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "allowEmptyValue": True,
            "description": description, "schema": schema}


@dataclass(frozen=True, slots=True)
class Choice:
    """`?name=` one of a fixed set of words, or nothing."""

    name: str
    description: str
    choices: tuple[str, ...]

    def read(self, query: Mapping[str, str]) -> str | None:
        raw = _one(query, self.name) or None
        if raw is not None and raw not in self.choices:
            raise BadRequest(f"{self.name} must be one of {', '.join(self.choices)}")
        return raw

    def openapi(self) -> dict[str, Any]:
        return _query(self.name, self.description, {"type": "string", "enum": list(self.choices)})


@dataclass(frozen=True, slots=True)
class Integer:
    """`?name=` a decimal integer from `low` to `high`, or `default`."""

    name: str
    description: str
    low: int
    high: int
    default: int

    def read(self, query: Mapping[str, str]) -> int:
        value = _integer(query, self.name, self.low, self.high)
        return self.default if value is None else value

    def openapi(self) -> dict[str, Any]:
        return _query(self.name, self.description, {"type": "integer", "minimum": self.low,
                                                    "maximum": self.high,
                                                    "default": self.default})


@dataclass(frozen=True, slots=True)
class Cursor:
    """`?name=` a keyset position: an integer from 1 to `high` to us, an
    opaque string to the client (documented as digits it need not parse)."""

    name: str
    description: str
    high: int

    def read(self, query: Mapping[str, str]) -> int | None:
        return _integer(query, self.name, 1, self.high)

    def openapi(self) -> dict[str, Any]:
        # Fewer digits than `high` has: every string the pattern allows is in range.
        digits = len(str(self.high)) - 1
        return _query(self.name, self.description,
                      {"type": "string", "pattern": f"^[1-9][0-9]{{0,{digits - 1}}}$"})


@dataclass(frozen=True, slots=True)
class PathId:
    """`{name}` in the path: a UUID; anything else names nothing (404)."""

    name: str
    description: str
    not_found: str

    def read(self, path_params: Mapping[str, Any]) -> uuid.UUID:
        try:
            return uuid.UUID(path_params[self.name])
        except ValueError:
            raise NotFound(self.not_found) from None

    def openapi(self) -> dict[str, Any]:
        return {"name": self.name, "in": "path", "required": True,
                "description": self.description, "schema": {"type": "string", "format": "uuid"}}


@dataclass(frozen=True, slots=True)
class Header:
    """An optional request header of `min_length`-`max_length` characters.

    No `read`: its one user is the send hot path, which checks it inline
    with these numbers (a call per send is what the hot path avoids)."""

    name: str
    description: str
    min_length: int
    max_length: int

    def refusal(self) -> BadRequest:
        return BadRequest(f"{self.name} must be {self.min_length}-{self.max_length} characters")

    def openapi(self) -> dict[str, Any]:
        return {"name": self.name, "in": "header", "required": False,
                "description": self.description,
                "schema": {"type": "string", "minLength": self.min_length,
                           "maxLength": self.max_length}}


_UUID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# RFC 3339 (section 5.6), seconds required; a space for the offset's `+`,
# which an unencoded query string turns into one.
_TIMESTAMP = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
              r"(Z|[+ -][0-9]{2}:[0-9]{2})$")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class QueryId:
    """`?name=` an id (a UUID in its usual form), or nothing; 400 otherwise."""

    name: str
    description: str

    def read(self, query: Mapping[str, str]) -> uuid.UUID | None:
        raw = _one(query, self.name) or None
        if raw is None:
            return None
        if re.fullmatch(_UUID, raw) is None:
            raise BadRequest(f"{self.name} must be an id")
        return uuid.UUID(raw)

    def openapi(self) -> dict[str, Any]:
        return _query(self.name, self.description,
                      {"type": "string", "format": "uuid", "pattern": _UUID})


@dataclass(frozen=True, slots=True)
class Timestamp:
    """`?name=` an RFC 3339 date and time with its offset, or nothing."""

    name: str
    description: str

    def read(self, query: Mapping[str, str]) -> dt.datetime | None:
        raw = _one(query, self.name) or None
        if raw is None:
            return None
        if re.fullmatch(_TIMESTAMP, raw) is None:
            raise BadRequest(f"{self.name} must be a date and time such as 2026-12-01T00:00:00Z")
        try:
            # UTC now: an offset at the calendar's edge (year 1 at +01:00)
            # must be refused here, not by the database driver.
            return dt.datetime.fromisoformat(raw.replace(" ", "+").replace("Z", "+00:00")
                                             ).astimezone(dt.UTC)
        except (ValueError, OverflowError):
            raise BadRequest(f"{self.name} is not a valid date and time") from None

    def openapi(self) -> dict[str, Any]:
        return _query(self.name, self.description, {"type": "string", "pattern": _TIMESTAMP})


@dataclass(frozen=True, slots=True)
class Text:
    """`?name=` a string of at most `max_length` characters, or nothing."""

    name: str
    description: str
    max_length: int

    def read(self, query: Mapping[str, str]) -> str | None:
        raw = _one(query, self.name) or None
        if raw is not None and len(raw) > self.max_length:
            raise BadRequest(f"{self.name} must be at most {self.max_length} characters")
        return raw

    def openapi(self) -> dict[str, Any]:
        return _query(self.name, self.description,
                      {"type": "string", "maxLength": self.max_length})


@dataclass(frozen=True, slots=True)
class Position:
    """`?name=` a keyset position in a list ordered by creation time and id
    (keys, devices): opaque to the client, `<microseconds>_<id hex>` to us."""

    name: str
    description: str

    PATTERN = "^[0-9]{1,17}_[0-9a-f]{32}$"

    def read(self, query: Mapping[str, str]) -> tuple[dt.datetime, uuid.UUID] | None:
        raw = _one(query, self.name) or None
        if raw is None:
            return None
        if re.fullmatch(self.PATTERN, raw) is None:
            raise BadRequest(f"{self.name} must be the nextCursor of a previous page")
        micros, _, hex_id = raw.partition("_")
        return _EPOCH + int(micros) * _MICROSECOND, uuid.UUID(hex_id)

    @staticmethod
    def of(created_at: dt.datetime, row_id: uuid.UUID) -> str:
        return f"{(created_at - _EPOCH) // _MICROSECOND}_{row_id.hex}"

    def openapi(self) -> dict[str, Any]:
        return _query(self.name, self.description, {"type": "string", "pattern": self.PATTERN})


Param = Choice | Integer | Cursor | PathId | Header | QueryId | Timestamp | Text | Position
