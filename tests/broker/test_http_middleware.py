"""broker/http/middleware.py, driven as bare ASGI with made-up apps behind
it: which app a request reaches, its request id, the deadline, and the
error shape of every failure. Pure: no server, no database (the same
behaviour end to end is in tests/e2e/test_api_ops.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from broker.errors import NotFound
from broker.http.middleware import RequestContext, broker_error, http_exception, unexpected

pytestmark = pytest.mark.timeout(10)


class App:
    """An ASGI app that answers 200 with its name, or raises `fault`."""

    def __init__(self, name: str, fault: BaseException | None = None,
                 delay_s: float = 0.0) -> None:
        self.name = name
        self.fault = fault
        self.delay_s = delay_s
        self.calls: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append(scope["type"])
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fault is not None:
            raise self.fault
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": self.name.encode()})


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None
               ) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": headers or [],
            "query_string": b""}


async def call(mw: RequestContext, scope: dict[str, Any]) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await mw(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


async def test_only_the_fast_method_and_path_skip_the_router() -> None:
    router, fast = App("router"), App("fast")
    mw = RequestContext(router, fast_http={("POST", "/messages/send"): fast})
    assert (await call(mw, http_scope("POST", "/messages/send")))[2] == b"fast"
    for method, path in [("GET", "/messages/send"), ("POST", "/messages"),
                         ("POST", "/messages/send/")]:
        assert (await call(mw, http_scope(method, path)))[2] == b"router", (method, path)
    assert len(fast.calls) == 1 and len(router.calls) == 3


async def test_without_a_fast_path_everything_goes_to_the_router() -> None:
    router = App("router")
    mw = RequestContext(router)
    for method in ("GET", "POST", ""):
        assert (await call(mw, http_scope(method, "/messages/send")))[2] == b"router"


def test_a_second_fast_path_is_refused() -> None:
    with pytest.raises(ValueError):
        RequestContext(App("r"), fast_http={("POST", "/a"): App("a"), ("POST", "/b"): App("b")})


async def test_the_declared_socket_goes_to_its_handler_and_the_rest_to_the_app() -> None:
    got: list[str] = []

    async def handler(ws: WebSocket) -> None:
        got.append(ws.url.path)

    router = App("router")
    mw = RequestContext(router, websocket={"/devices/ws": handler})

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    ws = {"type": "websocket", "path": "/devices/ws", "headers": [], "query_string": b""}
    await mw(ws, receive, send)
    await mw({**ws, "path": "/other"}, receive, send)
    await mw({"type": "lifespan"}, receive, send)
    assert got == ["/devices/ws"]
    assert router.calls == ["websocket", "lifespan"]


async def test_a_usable_request_id_is_echoed_and_any_other_replaced() -> None:
    mw = RequestContext(App("r"))
    _, headers, _ = await call(mw, http_scope("GET", "/", [(b"x-request-id", b"trace-7")]))
    assert headers[b"x-request-id"] == b"trace-7"
    made = set()
    for given in ([], [(b"x-request-id", b"x" * 65)], [(b"x-request-id", "é".encode())],
                  [(b"x-request-id", b"")]):
        _, headers, _ = await call(mw, http_scope("GET", "/", given))
        rid = headers[b"x-request-id"]
        assert len(rid) == 16 and int(rid, 16) >= 0, given
        made.add(rid)
    assert len(made) == 4


async def test_an_unexpected_fault_is_a_logged_500_in_the_error_shape(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smsdora.app")
    mw = RequestContext(App("r", fault=RuntimeError("bug")))
    status, headers, body = await call(mw, http_scope("GET", "/x", [(b"x-request-id", b"t-500")]))
    assert (status, json.loads(body)) == (500, {"statusCode": 500, "message":
                                                "Internal server error",
                                                "error": "Internal Server Error"})
    assert headers[b"x-request-id"] == b"t-500"
    assert [r.exc_info is not None for r in caplog.records if r.message == "unexpected error"] \
        == [True]
    line = [r for r in caplog.records if r.message == "request"][-1]
    assert (line.status, line.route) == (500, "unmatched")  # type: ignore[attr-defined]


@pytest.mark.parametrize("fault", [ConnectionRefusedError(), TimeoutError()])
async def test_a_database_that_cannot_be_reached_is_a_503(fault: BaseException) -> None:
    status, _, body = await call(RequestContext(App("r", fault=fault)), http_scope("GET", "/"))
    assert (status, json.loads(body)["message"]) == (503, "Database unavailable")


async def test_past_the_deadline_is_a_503_not_a_stuck_client() -> None:
    mw = RequestContext(App("slow", delay_s=5), deadline_s=0.05)
    status, _, body = await call(mw, http_scope("GET", "/"))
    assert (status, json.loads(body)["statusCode"]) == (503, 503)


async def test_a_fault_after_the_answer_started_is_not_answered_twice() -> None:
    class Half(App):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise RuntimeError("mid-body")

    with pytest.raises(RuntimeError):
        await call(RequestContext(Half("h")), http_scope("GET", "/"))


def request(method: str, path: str) -> Request:
    return Request(http_scope(method, path))


async def test_a_broker_error_keeps_its_status_message_and_headers() -> None:
    resp = await broker_error(request("GET", "/"), NotFound("Message not found"))
    assert (resp.status_code, json.loads(bytes(resp.body))["message"]) == (404, "Message not found")


async def test_starlette_s_404_and_405_in_the_error_shape() -> None:
    resp = await http_exception(request("DELETE", "/nope"), HTTPException(404))
    assert json.loads(bytes(resp.body)) == {"statusCode": 404, "message": "Cannot DELETE /nope",
                                     "error": "Not Found"}
    resp = await http_exception(request("PUT", "/health"),
                                HTTPException(405, headers={"Allow": "GET"}))
    assert json.loads(bytes(resp.body))["message"] == "Method Not Allowed"
    assert resp.headers["allow"] == "GET"


def test_unexpected_never_leaks_the_fault() -> None:
    resp = unexpected(ValueError("secret detail"))
    assert b"secret" not in resp.body and resp.status_code == 500
