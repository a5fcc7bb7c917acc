"""`AppSim`: the thin asyncio adapter around an `AppPhone` that speaks the
SMS Gateway for Android app's mobile API (contract section 8,
shared/SMSGATE.md): registration, the event stream and its reconnects, the
listings, the PATCHes and the simulated radio.

What it does, when, as the app (SMSGATE.md 6.1, 6.2, 7):
- at its start: `POST /device` with a key (`Bearer`, the app's Sign Up) or
  a one-time code (`Code`, By code) if it has no token; else `PATCH /device`,
  and a 401 there registers it again with the key (a new device). Retried
  until the broker answers; then `GET /message`, `/webhooks`, `/settings`;
- `GET /events`: on its open `GET /message`; `MessageEnqueued` -> `GET
  /message`, `WebhooksUpdated` -> `GET /webhooks`, `SettingsUpdated` -> `GET
  /settings`, `MessageCancelled` -> cancel a job not yet sent;
- a listed job is handed to the radio at once: `PATCH` Processed, then after
  `delay_ms` Sent, then Delivered or Failed (`outcome`).

Where it differs from the app, on purpose: it reconnects its stream in
0.5 s doubling to 10 s (`reconnect=app_reconnect_s` for the app's 5 s x5,
30 s x5, then every 60 s); it retries a failed PATCH every 0.25 s doubling
to 2 s until the broker takes it (the app: 11 tries from 10 s); it waits
for the stream's next byte 45 s (three keepalives; the app: 1 h); a 401 on
the stream makes it start again (the app retries the stream as it is).
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import ssl
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, Final

import httpx
import msgspec

from broker.device_sim import calls, mobile
from broker.device_sim.app import PENDING, PROCESSED, AppJob, AppPhone, Fetch, ListingRefused
from broker.device_sim.console import STDIN, Console
from broker.device_sim.phone import BACKOFF_FIRST_S, BACKOFF_MAX_S, Event, Outcome, log
from broker.device_sim.ws import DeviceRejected

DEFAULT_NAME: Final = "smsdora/device-sim"  # the app's is MANUFACTURER/PRODUCT
CALL_TIMEOUT_S: Final = 10.0  # OkHttp's defaults: 10 s to connect, read, write
SSE_READ_TIMEOUT_S: Final = 45.0
PATCHES_IN_FLIGHT: Final = 4  # at most, and never two for one job
_PATHS: Final[dict[Fetch, str]] = {"message": "/message?order=lifo", "webhooks": "/webhooks",
                                   "settings": "/settings"}


def fast_reconnect_s(attempt: int) -> float:
    """The WebSocket simulator's backoff: 0.5 s doubling to 10 s."""
    return float(min(BACKOFF_FIRST_S * 2 ** min(attempt, 16), BACKOFF_MAX_S))


class AppSim:
    """An `AppPhone` on real HTTP (httpx, gzip, a connection per request, no
    proxy from the environment). `await run()` until cancelled; raises
    DeviceRejected when the broker refuses its credentials for good.

    Give it `token` and `device_id` (a registered phone), or `key` / `code`
    to register (both: a registered phone that registers again on a 401).
    Over HTTPS it trusts the system's CAs and `ca_file` (as a CA installed
    on the phone, e.g. the one `smsdora tls` made).
    `receive_sms`, or an `sms` typed into `commands`: an SMS (calls.py).
    """

    def __init__(self, url: str, *, token: str | None = None, device_id: str | None = None,
                 key: str | None = None, code: str | None = None, name: str = DEFAULT_NAME,
                 outcome: Outcome = "delivered", delay_ms: int = 0,
                 reconnect: Callable[[int], float] = fast_reconnect_s, ca_file: str | None = None,
                 phone: AppPhone | None = None,
                 on_event: Callable[[Event], None] | None = None,
                 commands: int | None = STDIN) -> None:
        if (token is None) != (device_id is None):
            raise ValueError("a device token and its device id go together")
        self.url = mobile.mobile_base(url)
        self._tls = ssl.create_default_context()
        if ca_file is not None:
            self._tls.load_verify_locations(cafile=ca_file)
        self.phone = phone or AppPhone(outcome)
        if token is not None:
            self.phone.token, self.phone.device_id = token, device_id
        if self.phone.token is None and key is None and code is None:
            raise ValueError("a device token and id, an API key or a one-time code is needed")
        self._key, self._code, self.name = key, code, name
        self.delay_s = max(0, delay_ms) / 1000
        self.reconnect = reconnect
        self.on_event = on_event
        self.connections = 0  # event streams opened
        self.patch_retries = 0  # PATCH attempts the broker did not answer (said again)
        self.keepalives = 0
        self._stream: asyncio.Timeout | None = None  # the open event stream's, to cut it
        self._wanted: set[Fetch] = set()
        self._fetch_wanted = asyncio.Event()
        self._outbox_changed = asyncio.Event()
        self._changed = asyncio.Event()
        self._radio_on = asyncio.Event()
        self._radio_on.set()
        self._patching: dict[str, asyncio.Task[None]] = {}
        self._radio: dict[str, asyncio.Task[None]] = {}
        self._forwarding: dict[str, asyncio.Task[None]] = {}  # webhook deliveries
        self._commands = commands

    @property
    def sent_count(self) -> Counter[str]:
        return self.phone.sent_count

    @property
    def jobs(self) -> dict[str, AppJob]:
        return self.phone.jobs

    @property
    def device_id(self) -> str | None:
        return self.phone.device_id

    @property
    def connected(self) -> bool:
        return self._stream is not None

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Return once `predicate()` holds; it is checked after every change."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def drop_connection(self) -> None:
        """Cut the event stream as a flaky network would; `run` reconnects."""
        if self._stream is not None and not self._stream.expired():
            self._stream.reschedule(asyncio.get_running_loop().time())

    def pause_radio(self) -> None:
        """Listed jobs wait, locally Pending (as behind the app's own limits),
        and an SMS already going out stays Processed, its end not reported,
        until `resume_radio`."""
        self._radio_on.clear()

    def resume_radio(self) -> None:
        self._radio_on.set()

    def look(self) -> None:
        """`GET /message` now, as the app's periodic poll does."""
        self._want("message")

    async def run(self) -> None:
        workers: dict[str, asyncio.Task[None]] = {}
        headers = {"User-Agent": mobile.USER_AGENT, "Accept-Encoding": "gzip", "Connection": "close"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, verify=self._tls,
                                     timeout=CALL_TIMEOUT_S, trust_env=False) as self.client:
            del self.client.headers["Accept"]  # httpx's */*: the calls say JSON, the stream nothing
            self._spawn(workers, "fetcher", self._fetcher())
            self._spawn(workers, "sender", self._sender())
            console = Console(self._commands, self.receive_sms, self._emit)
            console.start()
            try:
                self._resume_radio()
                await self._start()
                attempt = 0
                while True:
                    opened, refused = await self._session()
                    if opened:
                        attempt = 0
                    if refused:
                        await self._start()
                    delay = self.reconnect(attempt)
                    attempt += 1
                    self._emit(Event("disconnected", None, f"reconnecting in {delay:g} s"))
                    await asyncio.sleep(delay)
            finally:
                console.stop()
                tasks = [*workers.values(), *self._patching.values(), *self._radio.values(),
                         *self._forwarding.values()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._patching.clear()
                self._radio.clear()
                self._forwarding.clear()

    async def _call(self, method: str, path: str, body: bytes | None = None,
                    authorization: str | None = None) -> httpx.Response:
        """One request and its answer; httpx.HTTPError if none (refused, reset, timed out)."""
        json = {"Content-Type": "application/json; charset=UTF-8"} if body is not None else {}
        return await self.client.request(method, path, content=body, headers={
            "Accept": "application/json", "Authorization": authorization or self._bearer(), **json})

    # --- registration ------------------------------------------------------------

    def _bearer(self) -> str:
        return f"Bearer {self.phone.token}"

    async def _start(self) -> None:
        """Register, or tell the broker it started (SMSGATE.md 6.1, 6.2)."""
        attempt = 0
        while True:
            try:
                if self.phone.token is None:
                    if await self._register():
                        return
                else:
                    update = mobile.DeviceUpdate(self.phone.device_id or "", mobile.SIM_CARDS)
                    answer = await self._call("PATCH", "/device", mobile.encode(update))
                    if answer.is_success:
                        self._emit(Event("started", None, f"device {self.phone.device_id}"))
                        self._want("message", "webhooks", "settings")
                        return
                    if answer.status_code == 401 and self._key is not None:
                        self._emit(Event("refused", None, "the device token is refused (401):"
                                                          " registering again with the key"))
                        self.phone.token = None
                        continue
                    if calls.refused(answer):
                        raise DeviceRejected(f"PATCH /device refused: {calls.detail(answer)}")
                    log.warning("PATCH /device failed", extra={"status": answer.status_code})
            except httpx.HTTPError as err:
                log.info("broker unreachable", extra={"error": str(err)})
            await asyncio.sleep(calls.retry_s(attempt))
            attempt += 1

    async def _register(self) -> bool:
        """`POST /device`: True once registered, False to try again."""
        credential = f"Bearer {self._key}" if self._key is not None else f"Code {self._code}"
        body = mobile.encode(mobile.DeviceRegister(self.name, mobile.SIM_CARDS))
        answer = await self._call("POST", "/device", body, credential)
        if calls.refused(answer):
            raise DeviceRejected(f"POST /device refused: {calls.detail(answer)}")
        if not answer.is_success:
            log.warning("POST /device failed", extra={"status": answer.status_code})
            return False
        try:
            self.phone.on_registered(mobile.registered_decoder.decode(answer.content))
        except msgspec.DecodeError as err:  # the app could not store this either
            raise DeviceRejected(f"POST /device answered {calls.detail(answer)}: {err}") from None
        self._code = None  # a one-time code is used up
        self._flush()
        return True

    # --- the event stream ----------------------------------------------------------

    async def _session(self) -> tuple[bool, bool]:
        """One `GET /events` until it ends: (it opened, its token was refused).
        `cut` bounds the wait for its head, then cuts it for `drop_connection`."""
        opened, parser = False, mobile.SseParser()
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S) as cut, self.client.stream(
                    "GET", "/events", timeout=httpx.Timeout(CALL_TIMEOUT_S, read=SSE_READ_TIMEOUT_S),
                    headers={"User-Agent": mobile.SSE_USER_AGENT, "Authorization": self._bearer()},
            ) as stream:
                media = stream.headers.get("content-type", "").split(";")[0].strip()
                if stream.status_code != 200 or media != "text/event-stream":
                    self._emit(Event("refused", None, f"GET /events: {stream.status_code} {media}"))
                    return False, stream.status_code == 401
                cut.reschedule(None)
                opened, self._stream = True, cut
                self.connections += 1
                self._want(self.phone.on_open())
                self._flush()
                async for chunk in stream.aiter_bytes():  # not aiter_lines: OkHttp's line ends
                    now = calls.now()
                    for event in parser.feed(text.decode(chunk)):
                        fetch = self.phone.on_event(event, now)
                        if fetch is not None:
                            self._want(fetch)
                    self.keepalives = parser.comments
                    self._flush()
        except (httpx.HTTPError, TimeoutError) as err:  # no head, a read timeout, a drop, a reset
            log.info("event stream ended" if opened else "event stream not opened",
                     extra={"error": f"{type(err).__name__}: {err}"})
        finally:
            self._stream = None
            self._changed.set()
        return opened, False

    # --- fetches: GET /message, /webhooks, /settings ---------------------------------

    def _want(self, *fetches: Fetch) -> None:
        self._wanted.update(fetches)
        self._fetch_wanted.set()

    async def _fetcher(self) -> None:
        """One fetch at a time; a request that comes while one runs is made
        after it (as the app's pull worker is restarted)."""
        while True:
            await self._fetch_wanted.wait()
            self._fetch_wanted.clear()
            for fetch in list(_PATHS):
                if fetch in self._wanted:
                    self._wanted.discard(fetch)
                    if not await self._fetch(fetch) and fetch == "message" and self.connected:
                        await asyncio.sleep(calls.RETRY_FIRST_S * 2)  # the broker is busy: again
                        self._want(fetch)

    async def _fetch(self, fetch: Fetch) -> bool:
        """True if answered (or refused for good), False to try again."""
        try:
            answer = await self._call("GET", _PATHS[fetch])
        except httpx.HTTPError as err:
            log.info("fetch failed", extra={"fetch": fetch, "error": str(err)})
            return False
        if not answer.is_success:
            if calls.refused(answer):
                self._emit(Event("refused", None, f"GET {_PATHS[fetch]}: {calls.detail(answer)}"))
            return calls.refused(answer)
        if fetch == "message":
            try:
                self.phone.on_listing(answer.content, calls.now())
            except ListingRefused as err:
                self._emit(Event("refused", None, str(err)))
        elif fetch == "webhooks":
            self.phone.on_webhooks(answer.content)
        else:
            self.phone.on_settings(answer.content)
        self._flush()
        return True

    # --- PATCH /message ----------------------------------------------------------------

    async def _sender(self) -> None:
        while True:
            await self._outbox_changed.wait()
            self._outbox_changed.clear()
            for message_id in self.phone.outbox():
                if len(self._patching) >= PATCHES_IN_FLIGHT:
                    break
                if message_id not in self._patching:
                    self._spawn(self._patching, message_id, self._patch(message_id))

    async def _patch(self, message_id: str) -> None:
        """The job's snapshot, said again until the broker takes it or
        refuses it (a 4xx); each try reads the snapshot afresh."""
        attempt = 0
        while self.phone.unpatched(message_id):
            count, state, body = self.phone.snapshot(message_id)
            try:
                answer: httpx.Response | None = await self._call("PATCH", "/message", body)
            except httpx.HTTPError as err:
                log.info("PATCH failed", extra={"message_id": message_id, "error": str(err)})
                answer = None
            if answer is not None and answer.is_success:
                self.phone.on_patched(message_id, count, state)
            elif answer is not None and calls.refused(answer):
                self.phone.on_patch_refused(message_id, count, calls.detail(answer))
            else:
                self.patch_retries += 1
                await asyncio.sleep(calls.retry_s(attempt))
                attempt += 1
            self._flush()

    # --- SMS the phone receives: the sms:received webhook (SMSGATE.md 8) --------------

    async def receive_sms(self, sender: str, text: str, sim: int | None = None) -> list[str]:
        """The phone receives an SMS (while `run` runs); returns the ids of
        the webhook deliveries it makes (none before `GET /webhooks`)."""
        forwards = self.phone.receive_sms(sender, text, calls.now(), sim)
        for forward in forwards:
            self._spawn(self._forwarding, forward.id,
                        calls.forward(self.client, self.phone, forward, self._emit))
        self._flush()
        return [f.id for f in forwards]

    # --- the radio ---------------------------------------------------------------------

    def _resume_radio(self) -> None:
        """After a stop: what was waiting is sent, what was going out is done."""
        for job in self.phone.jobs.values():
            if job.id not in self._radio and job.state == PENDING:
                self.phone.go_ahead.append(job.id)
            elif job.id not in self._radio and job.state == PROCESSED:
                self._spawn(self._radio, job.id, self._finish(job.id))
        self._flush()

    async def _transmit(self, message_id: str) -> None:
        await self._radio_on.wait()
        started = self.phone.start_send(message_id, calls.now())
        self._flush()
        if started:
            await self._finish(message_id)

    async def _finish(self, message_id: str) -> None:
        await asyncio.sleep(self.delay_s)
        await self._radio_on.wait()
        self.phone.finish_send(message_id, calls.now())
        self._flush()

    # --- plumbing -----------------------------------------------------------------------

    def _spawn(self, tasks: dict[str, asyncio.Task[None]], name: str, work: Coroutine[Any, Any, None]) -> None:
        """A task kept in `tasks` under `name` (a message id) until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        tasks[name] = task
        task.add_done_callback(functools.partial(self._done, tasks, name))

    def _done(self, tasks: dict[str, asyncio.Task[None]], name: str, task: asyncio.Task[None]) -> None:
        if tasks.get(name) is task:
            del tasks[name]
        if not task.cancelled() and task.exception() is not None:
            log.error("device-sim task failed", exc_info=task.exception())
        self._outbox_changed.set()

    def _flush(self) -> None:
        while self.phone.go_ahead:
            message_id = self.phone.go_ahead.pop(0)
            self._spawn(self._radio, message_id, self._transmit(message_id))
        for event in self.phone.events:
            self._emit(event)
        self.phone.events.clear()
        self._outbox_changed.set()
        self._changed.set()

    def _emit(self, event: Event) -> None:
        log.debug("device-sim event", extra={"kind": event.kind, "message_id": event.id})
        if self.on_event is not None:
            self.on_event(event)
        self._changed.set()

