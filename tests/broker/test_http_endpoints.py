"""broker/http/endpoints.py: the declarations are the only source of the
app's HTTP routes and of /openapi.json's paths. Pure: the app is built but
never started (no database)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute

from broker import dashboard
from broker.app import create_app
from broker.http import endpoints, messages, openapi
from broker.http.declaration import Endpoint
from broker.http.endpoints import ENDPOINTS, fast_http, routes
from broker.settings import Settings
from broker.transports import smsgate

DOCUMENT = openapi.document(ENDPOINTS)


def declared_methods() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in ENDPOINTS:
        out.setdefault(e.path, set()).add(e.method)
    return out


@pytest.mark.parametrize("e", [e for e in ENDPOINTS if e.documented],
                         ids=lambda e: f"{e.method} {e.path}")
def test_every_declared_endpoint_is_in_the_document_with_its_method(e: Endpoint) -> None:
    op = DOCUMENT["paths"][e.path][e.method.lower()]
    assert op["operationId"] == e.operation_id
    assert str(e.status) in op["responses"]
    assert op["security"] == ([] if e.scope is None else
                              [{"apiKey": [e.scope]}, {"bearerKey": [e.scope]}])
    for status in e.errors:
        assert str(status) in op["responses"], status
    assert ("requestBody" in op) == (e.body is not None)


def test_the_document_has_nothing_undeclared() -> None:
    documented = {(e.method.lower(), e.path) for e in ENDPOINTS if e.documented}
    in_document = {(method, path) for path, ops in DOCUMENT["paths"].items() for method in ops}
    assert in_document == documented


def test_every_http_route_of_the_app_comes_from_a_declaration(tmp_path: Path) -> None:
    """No hand-written path: each Route of the app is a declared path with
    exactly its declared methods; the others are the phones' transports (the
    WebSocket, and the SMS Gateway app's mobile API, whose shapes are the
    app's and are documented in protocol/, not in this API's document) and
    the dashboard's pages."""
    app = create_app(Settings(home=tmp_path, secret=b"s" * 32), "postgresql://unused/never")
    declared = declared_methods()
    # The dashboard's pages (HTML for a person, CONTRACT section 11) are
    # its own routes, not the API's: in the README, not in /openapi.json.
    pages = {r.path for r in dashboard.routes()}
    seen = set()
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            assert route.path == "/devices/ws"
            continue
        if getattr(route, "path", None) in pages:
            continue
        if isinstance(route, Mount):
            assert route.path in smsgate.PREFIXES
            continue
        assert isinstance(route, Route), route
        assert route.path in declared, f"{route.path} is not declared in endpoints.py"
        assert (route.methods or set()) - {"HEAD"} == declared[route.path], route.path
        seen.add(route.path)
    assert seen == set(declared)


def test_a_path_with_one_method_routes_to_the_declared_handler_itself() -> None:
    """So the latency metric and the log line name the handler."""
    by_path = {r.path: r for r in routes()}
    for e in ENDPOINTS:
        if declared_methods()[e.path] == {e.method}:
            assert by_path[e.path].endpoint is e.handler, e.path


def test_no_two_declarations_share_a_method_and_path_or_an_operation_id() -> None:
    pairs = [(e.method, e.path) for e in ENDPOINTS]
    assert len(set(pairs)) == len(pairs)
    ids = [e.operation_id for e in ENDPOINTS]
    assert len(set(ids)) == len(ids)


def test_messages_send_is_routed_before_the_message_id_it_would_match() -> None:
    paths = [r.path for r in routes()]
    assert paths.index("/messages/send") < paths.index("/messages/{message_id}")


def test_the_send_is_the_fast_path() -> None:
    assert fast_http() == {("POST", "/messages/send"): messages.send_message_asgi}


async def test_the_served_document_is_the_generated_one() -> None:
    endpoints._document_bytes.cache_clear()
    response = await endpoints.openapi_endpoint(_request("GET", "/openapi.json"))
    assert msgspec.json.decode(response.body) == msgspec.json.decode(
        msgspec.json.encode(DOCUMENT))


# --- one route for a path of several methods -------------------------------------------


async def _listing(request: Request) -> Response:
    return Response(b"list")


async def _creating(request: Request) -> Response:
    return Response(b"create", status_code=201)


TWO = (Endpoint("GET", "/things", _listing, "listThings", "List", "The things.", scope=None),
       Endpoint("POST", "/things", _creating, "createThing", "Create", "The thing.", scope=None,
                status=201))


def _request(method: str, path: str) -> Request:
    scope: dict[str, Any] = {"type": "http", "method": method, "path": path, "headers": [],
                             "query_string": b""}
    return Request(scope)


async def test_a_path_of_two_methods_is_one_route_answering_each() -> None:
    (route,) = routes(TWO)
    assert route.path == "/things" and route.methods == {"GET", "HEAD", "POST"}
    for method, body, name in [("GET", b"list", "_listing"), ("HEAD", b"list", "_listing"),
                               ("POST", b"create", "_creating")]:
        request = _request(method, "/things")
        response = await route.endpoint(request)
        assert response.body == body, method
        # The metric names the handler that ran, not the dispatcher.
        assert request.scope["endpoint"].__name__ == name
    # A method the path does not take is refused before any handler runs:
    # the metric and log line name the path then.
    assert route.endpoint.__name__ == "things"
