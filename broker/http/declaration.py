"""What one HTTP endpoint is, said once: `Endpoint`. The list of them is in
endpoints.py; the Starlette routes and /openapi.json are both made from it."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from broker.http.params import Param
from broker.http.responses import JSON

Handler = Callable[[Request], Awaitable[Response]]


class Wrap(enum.Enum):
    """How the response Struct sits in the body."""

    BARE = "bare"    # the Struct is the body
    ONE = "one"      # {"statusCode": N, "data": Struct}
    LIST = "list"    # {"statusCode": N, "data": [Struct, …], "nextCursor"?: "…"}


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    # What the success answer is (the document's description of it).
    answer: str
    # The key scope it needs (contract section 3); None: no key at all.
    scope: str | None
    status: int = 200
    # The request body's Struct, with an example of it for the document.
    body: type[msgspec.Struct] | None = None
    example: msgspec.Struct | None = None
    params: tuple[Param, ...] = ()
    # None: a JSON object (JSON) or a string (any other media type).
    response: type[msgspec.Struct] | None = None
    wrap: Wrap = Wrap.BARE
    media_type: str = JSON
    # Every error status it can answer in the error shape besides 500 and
    # 503, which any endpoint can (a fault, the database, the deadline).
    errors: tuple[int, ...] = ()
    # An error status that may also carry the success Struct, and what that
    # means (/health: 503 degraded).
    also: tuple[tuple[int, str], ...] = ()
    # The same answers as a bare ASGI app that the middleware calls without
    # Starlette's router (the send hot path).
    asgi: ASGIApp | None = None
    # False for what is not part of the API itself (the docs page's assets).
    documented: bool = True
