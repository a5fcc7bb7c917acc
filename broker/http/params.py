"""Parameters of an endpoint, declared once: the handler reads its value
through the declaration and /openapi.json documents the same declaration,
so a range or a choice is never written twice.

Query values follow `?status=&limit=&cursor=` (contract section 3): an empty
value is no value.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.errors import BadRequest, NotFound


def _integer(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    raw = query.get(name)
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
        raw = query.get(self.name) or None
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


Param = Choice | Integer | Cursor | PathId | Header
