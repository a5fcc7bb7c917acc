"""A customer's webhook receiver for the tests: a real uvicorn on a loopback
port that verifies every delivery with the `standardwebhooks` library from
PyPI (as a customer would), keeps what it got, and dedups by `webhook-id`.

`answer` decides each response (a status, headers, a delay), so a test can
make it fail, slow or gone; `stop()` and `start()` take it off the network
and back on the same port (the broker then gets connection refused)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.conftest import free_port


@dataclass
class Got:
    """One request the receiver took."""

    webhook_id: str
    timestamp: str
    signature: str
    body: dict[str, Any]
    raw: bytes
    verified: bool
    status: int  # what the receiver answered


@dataclass
class Reply:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


Answer = Callable[[Got], Reply | Awaitable[Reply]]


class Receiver:
    def __init__(self, secrets: list[str] | None = None) -> None:
        self.secrets: list[str] = list(secrets or [])  # any of them may verify
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.requests: list[Got] = []
        self.answer: Answer = lambda got: Reply()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    # --- what it got --------------------------------------------------------

    @property
    def delivered(self) -> dict[str, Got]:
        """First 2xx-answered request per webhook-id (the receiver's dedup)."""
        out: dict[str, Got] = {}
        for g in self.requests:
            if 200 <= g.status < 300 and g.webhook_id not in out:
                out[g.webhook_id] = g
        return out

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Bodies of delivered events (deduped), in the order they came."""
        return [g.body for g in self.delivered.values()
                if kind is None or g.body.get("type") == kind]

    def statuses(self, message_id: str) -> list[str]:
        """The message's events as delivered, in arrival order."""
        return [b["data"]["status"] for b in self.events()
                if b["type"].startswith("message.") and b["data"].get("id") == message_id]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 10.0,
                   what: str = "deliveries") -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; got "
                                     f"{[(g.body.get('type'), g.status) for g in self.requests]}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.2))

    # --- the server ---------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the sender went away mid-request (a SIGKILL): nothing was delivered
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        verified = False
        for secret in self.secrets:
            try:
                Webhook(secret).verify(raw, headers)
                verified = True
                break
            except WebhookVerificationError:
                continue
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        got = Got(webhook_id=headers.get("webhook-id", ""),
                  timestamp=headers.get("webhook-timestamp", ""),
                  signature=headers.get("webhook-signature", ""), body=body, raw=raw,
                  verified=verified, status=0)
        reply = self.answer(got)
        if not isinstance(reply, Reply):
            reply = await reply
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        got.status = reply.status
        self.requests.append(got)
        self.changed.set()
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": [(k.encode(), v.encode()) for k, v in reply.headers.items()]})
        await send({"type": "http.response.body", "body": b""})

    async def start(self) -> None:
        config = uvicorn.Config(self._app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", loop="none", timeout_graceful_shutdown=1,
                                interface="asgi3")
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._server = server
        self._task = asyncio.get_running_loop().create_task(server.serve())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not server.started:
            if self._task.done():
                self._task.result()
            if loop.time() > deadline:
                raise AssertionError("the receiver did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = True
            await asyncio.wait_for(self._task, 10)
        self._server = None
        self._task = None


@contextlib.asynccontextmanager
async def running(secrets: list[str] | None = None) -> AsyncIterator[Receiver]:
    """A started receiver, stopped on the way out (the `receiver` fixture of
    tests/e2e/conftest.py, and any second one a test needs)."""
    r = Receiver(secrets)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()

