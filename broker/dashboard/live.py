"""Live updates (CONTRACT section 11): one event stream per tab, from the
broker itself, carrying rendered HTML (the same partials the page was
rendered with), so the browser only swaps elements by id (static/live.js).

A page names its feed in `<main data-live="/dashboard/live?view=NAME&...">`.
A feed is a function a page module registers in FEEDS: given the account,
the query and the cursor the browser last saw (`Last-Event-ID`), it returns
the partials to send and the new cursor. The stream asks its feed again
when the account's events are committed (`Wake.poke`, where the webhook
sender is poked, and `Wake.notify` where presence changes) and at least every
POLL_S (another node's changes, the sweeper's): PostgreSQL stays the truth,
a lost notice costs a poll."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from broker.dashboard.web import LoginRequired, broker_of, redirect, session
from broker.http.middleware import lift_deadline

POLL_S = 2.0
KEEPALIVE_S = 15.0
MAX_STREAMS_PER_ACCOUNT = 20


@dataclass(frozen=True)
class Update:
    html: list[str]  # elements with an id, each one SSE `html` event
    cursor: str | None  # the Last-Event-ID to resume from (None: no change)


Feed = Callable[[Request, uuid.UUID, Mapping[str, str], str | None], Awaitable[Update]]
FEEDS: dict[str, Feed] = {}


def feed(name: str) -> Callable[[Feed], Feed]:
    def register(fn: Feed) -> Feed:
        FEEDS[name] = fn
        return fn
    return register


def _sse(html: str, cursor: str | None) -> bytes:
    lines = [f"data: {line}" for line in html.splitlines() or [""]]
    head = f"id: {cursor}\n" if cursor else ""
    return (head + "event: html\n" + "\n".join(lines) + "\n\n").encode()


async def live(request: Request) -> Response:
    try:
        user = await session(request)
    except LoginRequired:
        return redirect("/login")
    broker = broker_of(request)
    name = request.query_params.get("view", "")
    fn = FEEDS.get(name)
    if fn is None:
        return Response("unknown view", status_code=404, media_type="text/plain")
    hub = broker.wake
    if hub.watching(user.account_id) >= MAX_STREAMS_PER_ACCOUNT:
        return Response("too many live tabs", status_code=429, media_type="text/plain",
                        headers={"Retry-After": "10"})
    query = dict(request.query_params)
    cursor = request.headers.get("last-event-id") or None

    async def stream() -> AsyncIterator[bytes]:
        nonlocal cursor
        with hub.watch(user.account_id) as changed:
            yield b"retry: 2000\n\n"
            idle = 0.0
            while not hub.closed:
                changed.clear()
                update = await fn(request, user.account_id, query, cursor)
                for html in update.html:
                    yield _sse(html, update.cursor)
                if update.cursor is not None:
                    cursor = update.cursor
                if update.html:
                    idle = 0.0
                elif idle >= KEEPALIVE_S:
                    yield b": keepalive\n\n"
                    idle = 0.0
                if hub.closed:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), POLL_S)
                idle += POLL_S

    return LiveStream(stream(), media_type="text/event-stream", headers={
        "cache-control": "no-store", "x-accel-buffering": "no"})


class LiveStream(StreamingResponse):
    """Past the request deadline: it lives as long as the tab."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lift_deadline(scope)
        await super().__call__(scope, receive, send)
