"""Group commit of phones' reports (`ack` and `status`).

Every report must be committed before its receipt (contract section 5), but
one transaction per report costs a commit each: with `ack`, `sent` and
`delivered` that is three per SMS. Reports from all phones are queued here
and written together: while one batch commits, the next gathers, so under
load many reports share one commit; at low load a report waits up to
LINGER_S for others to share it. The reports that move their messages on as
expected are one statement and its commit; the rest go through the lock:
lock the messages (in id order), decide, then update the ones that move and
insert their history rows together.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable
from typing import NamedTuple

from broker import store
from broker.ops import metrics
from protocol import lifecycle

MAX_BATCH = 1000
# A report that finds the writer idle waits up to this long for others to
# share its statement and commit, unless FULL are waiting first. A batch
# statement costs PostgreSQL about 0.35 ms however few its rows, and 25 µs
# a row (docs/PERFORMANCE.md, "Reports that wait for company"): at a few
# hundred reports a second, one each would be most of its CPU. The wait
# counts from the oldest report's arrival: after a write that took this
# long the reports that gathered meanwhile go at once; after a shorter one
# they wait out the rest.
LINGER_S = 0.005
FULL = 64


class WriterClosed(ConnectionError):
    """The writer was closed (the broker stopping) before the report was
    written: nothing of it is committed. A connection error, as with the
    database away: a phone is told NOT_STORED, an HTTP caller gets 503."""

    def __init__(self) -> None:
        super().__init__("the report writer is closed")


class Report(NamedTuple):
    device_id: uuid.UUID
    message_id: uuid.UUID
    report: str  # "ack", "sent", "delivered" or "failed"
    error: str | None


class Result(NamedTuple):
    outcome: lifecycle.Outcome
    error: str | None  # the message's stored error (the reason of a cancel)


def decide(reports: list[Report],
           rows: dict[uuid.UUID, store.Held]) -> tuple[list[Result], list[store.Held],
                                                        list[tuple[uuid.UUID, str, uuid.UUID,
                                                                   str | None]]]:
    """Apply each report in order to the locked rows (pure). Returns the
    results, the rows to update, and the history rows to insert."""
    state = dict(rows)
    moved: dict[uuid.UUID, store.Held] = {}
    history: list[tuple[uuid.UUID, str, uuid.UUID, str | None]] = []
    results: list[Result] = []
    for r in reports:
        row = state.get(r.message_id)
        if row is None or row.device_id != r.device_id:
            results.append(Result(lifecycle.NOT_YOURS, None))
            continue
        outcome = lifecycle.apply(row.status, r.report)
        if outcome.kind is lifecycle.Kind.MOVE:
            assert outcome.new_status is not None
            failed = outcome.new_status == lifecycle.FAILED
            row = store.Held(id=row.id, device_id=row.device_id, status=outcome.new_status,
                             error=r.error if failed and r.error else row.error)
            state[r.message_id] = moved[r.message_id] = row
            history.append((r.message_id, outcome.new_status, r.device_id,
                            r.error if failed else None))
        elif outcome.kind is lifecycle.Kind.LATE:
            assert outcome.new_status is not None
            history.append((r.message_id, outcome.new_status, r.device_id, r.error))
        results.append(Result(outcome, row.error))
    return results, list(moved.values()), history


def _expected_moves(reports: list[Report]) -> tuple[
        list[tuple[uuid.UUID, uuid.UUID, str, str, str | None]],
        list[tuple[uuid.UUID, str, uuid.UUID, str | None]],
        dict[uuid.UUID, list[tuple[int, lifecycle.Outcome]]]]:
    """The messages whose reports in this batch (one device's, in order)
    move them on from some status (`lifecycle.moves`), as `move_reported`
    takes them; and for each, its reports' places in the batch and
    outcomes. Any other message goes through the lock."""
    by_message: dict[uuid.UUID, list[int]] = {}
    for i, r in enumerate(reports):
        by_message.setdefault(r.message_id, []).append(i)
    moves: list[tuple[uuid.UUID, uuid.UUID, str, str, str | None]] = []
    history: list[tuple[uuid.UUID, str, uuid.UUID, str | None]] = []
    expected: dict[uuid.UUID, list[tuple[int, lifecycle.Outcome]]] = {}
    for message_id, places in by_message.items():
        first = reports[places[0]]
        if any(reports[i].device_id != first.device_id for i in places):
            continue
        found = _moves(tuple(reports[i].report for i in places))
        if found is None:
            continue
        froms, outcomes = found
        last = reports[places[-1]]
        error = last.error if outcomes[-1].new_status == lifecycle.FAILED else None
        moves.append((message_id, first.device_id, froms, outcomes[-1].new_status or "", error))
        for i, outcome in zip(places, outcomes, strict=True):
            failed = outcome.new_status == lifecycle.FAILED
            history.append((message_id, outcome.new_status or "", first.device_id,
                            reports[i].error if failed else None))
        expected[message_id] = list(zip(places, outcomes, strict=True))
    return moves, history, expected


@functools.cache
def _moves(reports: tuple[str, ...]) -> tuple[str, tuple[lifecycle.Outcome, ...]] | None:
    """`lifecycle.moves`, its statuses joined as `move_reported` takes them."""
    found = lifecycle.moves(reports)
    return None if found is None else (",".join(sorted(found[0])), found[1])


class ReportWriter:
    def __init__(self, pool: store.Pool,
                 written: Callable[[list[Report]], None] | None = None) -> None:
        self.pool = pool
        self.written = written  # after each commit, with the reports it wrote
        self._pending: list[tuple[Report, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._since = 0.0  # when the oldest report waiting came (loop time)
        self._full: asyncio.Future[None] | None = None  # the writer, lingering
        self._writing: list[tuple[Report, asyncio.Future[Result]]] = []  # the batch in hand
        self._closed = False

    def enqueue(self, report: Report) -> asyncio.Future[Result]:
        """Queue one report; the future is done once it is committed (or
        refused), or fails with WriterClosed if the writer is closed first.
        Reports are written in the order they are queued, so a phone's
        reports apply in the order it sent them."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        if self._closed:
            future.set_exception(WriterClosed())
            return future
        if not self._pending:
            self._since = loop.time()
        self._pending.append((report, future))
        full = self._full
        if full is not None and len(self._pending) >= FULL and not full.done():
            full.set_result(None)
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_all())
        return future

    async def _write_all(self) -> None:
        """The writer: batch after batch on one connection, held while
        reports keep coming (asyncpg's release is a task and a shield: loop
        turns no report should wait for)."""
        while self._pending:
            try:
                await self._linger()
                async with self.pool.acquire() as db:
                    while self._pending:
                        await self._linger()
                        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                        self._since = float("-inf")  # those left waited already
                        self._writing = batch
                        settled = await self._settle(db, batch)
                        self._writing = []
                        if not settled:
                            break  # the connection is gone: a new one for the rest
            except Exception as err:  # noqa: BLE001 - no connection: handed to the callers
                pending, self._pending = self._pending, []
                _fail(pending, err)

    async def _linger(self) -> None:
        """Until FULL reports wait, or the oldest of them has waited LINGER_S."""
        loop = asyncio.get_running_loop()
        wait = self._since + LINGER_S - loop.time()
        if wait <= 0 or len(self._pending) >= FULL:
            return
        self._full = full = loop.create_future()
        timer = loop.call_later(wait, _wake, full)
        try:
            await full
        finally:
            timer.cancel()
            self._full = None

    async def _settle(self, db: store.Conn,
                      batch: list[tuple[Report, asyncio.Future[Result]]]) -> bool:
        """Write a batch and hand each caller its result or the error.
        False: the database is away (the connection with it)."""
        try:
            results = await self._write(db, [r for r, _ in batch])
        except Exception as err:  # noqa: BLE001 - handed to the callers below
            down = isinstance(err, store.DATABASE_DOWN)
            if len(batch) > 1 and not down:
                # One report the database refuses must not fail the others
                # that shared its commit: write them one by one.
                for item in batch:
                    if not await self._settle(db, [item]):
                        return False
                return True
            _fail(batch, err)
            return not down
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
        return True

    async def _write(self, db: store.Conn, reports: list[Report]) -> list[Result]:
        """The reports that move their message on as expected (nearly all)
        in one statement and its own commit (its row locks taken in it, no
        round trip for them); the others, and those whose message had moved
        meanwhile (a sweep, a cancel), through the lock: lock, decide
        (here), write, commit."""
        metrics.REPORT_BATCH.observe(len(reports))
        results: list[Result | None] = [None] * len(reports)
        moves, history, expected = _expected_moves(reports)
        written = False
        if moves:
            for moved in await store.move_reported(db, moves, history):
                # Only a failure writes an error, and a message not final
                # has none: the reports before a failure in the batch had
                # none either.
                *before, (last, outcome) = expected[moved.id]
                earlier = None if outcome.new_status == lifecycle.FAILED else moved.error
                for i, step in before:
                    results[i] = Result(step, earlier)
                results[last] = Result(outcome, moved.error)
                written = True
        rest = [i for i, result in enumerate(results) if result is None]
        if rest:
            try:
                locked = await self._locked(db, [reports[i] for i in rest])
            except BaseException:
                if written and self.written is not None:  # the statement's commit stands
                    self.written([r for r, done in zip(reports, results, strict=True) if done])
                raise
            written = written or locked[1]
            for i, result in zip(rest, locked[0], strict=True):
                results[i] = result
        if written and self.written is not None:
            self.written(reports)
        return results  # type: ignore[return-value]  # every slot filled above

    async def _locked(self, db: store.Conn, reports: list[Report]) -> tuple[list[Result], bool]:
        """Three round trips and the commit: lock, decide (here), write the
        moves and their history rows in one statement. And whether it wrote."""
        pairs = sorted({(r.message_id, r.device_id) for r in reports})
        async with db.transaction():
            rows = {h.id: h for h in await store.lock_for_reports(
                db, [m for m, _ in pairs], [d for _, d in pairs])}
            results, moved, history = decide(reports, rows)
            if history:  # every move has its history row; a late report only that
                await store.write_reports(db, moved, history)
        return results, bool(history)

    async def close(self) -> None:
        """Stop writing, for good. Reports not yet written (lingering,
        waiting for a connection, or in the batch being written) fail with
        WriterClosed rather than wait for ever: no receipt goes out, and the
        phone reports them again."""
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        left = self._writing + self._pending
        self._writing, self._pending = [], []
        _fail(left, WriterClosed())


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail(batch: list[tuple[Report, asyncio.Future[Result]]], err: Exception) -> None:
    """Hand `err` to every caller of `batch` still waiting. Without its
    traceback, which holds the writer's frame and so the futures that hold
    the error: a reference cycle otherwise."""
    err.__traceback__ = None
    for _, future in batch:
        if not future.done():
            future.set_exception(err)
