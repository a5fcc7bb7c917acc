"""The SMS Gateway for Android app's side of the mobile API, call by call as
the app makes them (shared/SMSGATE.md sections 2-7), for the tests: register,
the event stream (`GET /events`, read with the app's parser rules), the
listing (`GET /message`) and the reports (`PATCH /message`, a one-item
snapshot with `recipients` and `states`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

API = "/api/mobile/v1"
APP_HEADERS = {"User-Agent": "me.capcom.smsgateway/1.68.0", "Accept": "application/json"}
# OkHttp's EventSource: its own client, read timeout 1 h (SMSGATE.md 5.1).
SSE_HEADERS = {"User-Agent": "okhttp/4.10.0", "Accept-Encoding": "gzip"}


@dataclass(frozen=True)
class Event:
    """One dispatched SSE event: `name` (MessageEnqueued when the frame had
    no `event:` line) and its `data` (lines joined with a newline)."""

    name: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def parse_events(lines: list[str]) -> tuple[list[Event], list[str]]:
    """OkHttp's ServerSentEventReader: an event is dispatched at a blank line
    only if a `data` line was seen; `:` lines are comments. Returns the
    events and the comments."""
    events: list[Event] = []
    comments: list[str] = []
    name: str | None = None
    data: list[str] | None = None
    for line in lines:
        if line == "":
            if data is not None:
                events.append(Event(name or "MessageEnqueued", "\n".join(data)))
            name, data = None, None
        elif line.startswith(":"):
            comments.append(line[1:])
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data = [*(data or []), value]
    return events, comments


class EventStream:
    """One open `GET /events`: events and comments as they arrive."""

    def __init__(self, response: httpx.Response, stack: contextlib.AsyncExitStack) -> None:
        self.response = response
        self._stack = stack
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.comments: list[str] = []
        self.ended = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        pending: list[str] = []
        try:
            async for line in self.response.aiter_lines():
                pending.append(line)
                if line == "":
                    events, comments = parse_events(pending)
                    pending = []
                    self.comments.extend(comments)
                    for e in events:
                        self.events.put_nowait(e)
        except (httpx.HTTPError, asyncio.CancelledError):
            pass
        finally:
            self.ended.set()

    async def next(self, timeout: float = 5.0) -> Event:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        with contextlib.suppress(BaseException):
            await self._stack.aclose()


def app_date(t: dt.datetime | None = None) -> str:
    """The app's own date format, in a phone time zone (`+07:00`)."""
    zone = dt.timezone(dt.timedelta(hours=7))
    return (t or dt.datetime.now(dt.UTC)).astimezone(zone).isoformat(timespec="milliseconds")


@dataclass
class App:
    """One registered app: its device id and token."""

    http: httpx.AsyncClient
    id: str
    token: str
    streams: list[EventStream] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {**APP_HEADERS, "Authorization": f"Bearer {self.token}"}

    async def open_events(self) -> EventStream:
        """`GET /events`; asserts the 200 and `text/event-stream`."""
        stack = contextlib.AsyncExitStack()
        response = await stack.enter_async_context(self.http.stream(
            "GET", f"{API}/events",
            headers={**SSE_HEADERS, "Authorization": f"Bearer {self.token}"},
            timeout=httpx.Timeout(10, read=3600)))
        if response.status_code != 200:
            await response.aread()
            await stack.aclose()
            raise AssertionError(f"GET /events: {response.status_code} {response.text}")
        media = response.headers.get("content-type", "").split(";")[0].strip()
        assert media == "text/event-stream", response.headers
        stream = EventStream(response, stack)
        self.streams.append(stream)
        return stream

    async def close_events(self) -> None:
        for s in self.streams:
            await s.close()
        self.streams.clear()

    async def list(self, order: str = "lifo") -> list[dict[str, Any]]:
        """`GET /message?order=...`: the items, asserting 200 and JSON."""
        r = await self.http.get(f"{API}/message", params={"order": order},
                                headers=self.headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].split(";")[0] == "application/json", r.headers
        items = r.json()
        assert isinstance(items, list), items
        return items

    async def patch(self, message_id: str, state: str, phone_number: str = "+16502530000",
                    error: str | None = None) -> httpx.Response:
        """`PATCH /message` exactly as SendStateWorker builds it: one item,
        the recipients' states, the first time of each state."""
        recipient: dict[str, Any] = {"phoneNumber": phone_number, "state": state}
        if error is not None:
            recipient["error"] = error
        body = [{"id": message_id, "state": state, "recipients": [recipient],
                 "states": {"Pending": app_date(), state: app_date()}}]
        return await self.http.patch(f"{API}/message", json=body, headers=self.headers)

    async def report(self, message_id: str, state: str, phone_number: str = "+16502530000",
                     error: str | None = None) -> None:
        r = await self.patch(message_id, state, phone_number, error)
        assert 200 <= r.status_code < 300, r.text


async def register(http: httpx.AsyncClient, key: str, name: str = "samsung/beyond1ltexx",
                   ) -> App:
    """`POST /device` with the key as Private Token ("Sign Up")."""
    r = await http.post(f"{API}/device", json={"name": name},
                        headers={**APP_HEADERS, "Authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text
    out = r.json()
    return App(http=http, id=out["id"], token=out["token"])
