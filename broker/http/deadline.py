"""The deadline of one request (contract section 12): our own work and the
database's within `delay_s` (5 s), while the time the client takes to send
its body does not count: the body has `body_s` (30 s) of its own. Past the
first, TimeoutError (a 503 at the edge: the database); past the second,
TimeoutError with `body_late` set (a 408: the client).

asyncio.timeout() with a hold for the body would move its timer twice per
body, and a timer costs 4-5 µs in uvloop, on the send path. This one keeps
its timer where it is while a body arrives and checks when it fires: a body
that comes in time costs no timer at all, a slow one re-arms it once or
twice. The cancel and uncancel are asyncio.Timeout's (Python 3.11)."""

from __future__ import annotations

import asyncio
from types import TracebackType

from starlette.types import Scope

# Where the middleware leaves the request's Deadline for read_body and lift().
SCOPE_KEY = "smsdora.deadline"


class Deadline:
    def __init__(self, delay_s: float, body_s: float) -> None:
        self.delay_s = delay_s
        self.body_s = body_s
        self.body_late = False
        self._when: float | None = None  # when our own time is up; later by each body
        self._body_start: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline should be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._loop = asyncio.get_running_loop()
        self._when = self._loop.time() + self.delay_s
        self._handle = self._loop.call_at(self._when, self._fire)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._expired and self._task.uncancel() <= self._cancelling \
                and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def lift(self) -> None:
        """No deadline from now on (a stream, once its headers are out)."""
        self._when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def body_started(self) -> None:
        now = self._loop.time()
        self._body_start = now
        end = now + self.body_s
        if self._handle is None or self._handle.when() > end:  # body_s < delay_s
            self._arm(end)

    def body_done(self) -> None:
        started, self._body_start = self._body_start, None
        if started is None or self._when is None:
            return
        self._when += self._loop.time() - started
        if self._handle is None or self._handle.when() > self._when:
            self._arm(self._when)  # it waited for the body's end: back to ours

    def _arm(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time()
        if self._body_start is not None:
            end = self._body_start + self.body_s
            if now < end:
                self._arm(end)  # our own time is held while the body arrives
                return
            self.body_late = True
        elif self._when is None:
            return
        elif now < self._when:
            self._arm(self._when)  # later by the time bodies took
            return
        self._expired = True
        self._task.cancel()


def of(scope: Scope) -> Deadline | None:
    deadline = scope.get(SCOPE_KEY)
    return deadline if isinstance(deadline, Deadline) else None
