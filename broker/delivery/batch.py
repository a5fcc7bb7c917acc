"""`SendBatch`: concurrent sends committed together (issue 14, "sends
committed in groups"), the way phones' reports already are
(broker/delivery/reports.py).

A send hands its row to `insert` and waits. The rows that arrive in one
turn of the event loop go to PostgreSQL in one statement
(`store.insert_messages`: arrays, one statement per table, one commit);
while a batch is being written the next ones gather for the one after, so
under load a batch carries every send that arrived during the last one's
round trip, and alone a send waits for nothing but its own loop turn. Each
caller learns its own row's fate only once the batch has committed: its
201 still comes after its row is in PostgreSQL.

A row fails alone: a revoked key, a deactivated device, or a quota unit the
batch could not take (a stripe a concurrent send filled, a month not opened
yet, a plan changed) is answered for that row only, and the last kind is
sent again by itself through the one-row statement, which tells those
cases apart and opens or re-cuts the month (broker/delivery/sending.py). A
statement that fails as a whole (a row PostgreSQL refuses) is tried again
row by row, so that only the bad row's request fails; a database that is
away fails every waiting request, as it would have one by one.

Every hand-off between tasks costs a turn of the event loop, a millisecond
or more under load: a writer is a task of its own whose first step takes
the rows of the turn it was created in, keeps one connection while rows
keep coming, and hands each row's outcome to its caller's future as soon
as the statement answers, before the connection goes back (asyncpg's
release is a task and a shield: three turns). A caller awaits its future
itself, without a shield (one turn fewer); if it is cancelled once the
row has left, `orphaned` gets the outcome.

Sends with an Idempotency-Key gather in a batch of their own (`keyed`):
one transaction claims their keys in one statement and writes the messages
of those whose key is theirs (`store.insert_keyed`); a key another request
holds is answered KEY_TAKEN (that request's response is replayed), and a
row not written lets its key go in the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from broker import store
from broker.ops import metrics

log = logging.getLogger("smsdora.sending")

# At most this many rows a statement: a bigger burst takes more statements,
# in flight together up to IN_FLIGHT (their commits overlap: PostgreSQL
# flushes the WAL for several at once, and a commit waits on the disk).
# Many small statements rather than a few big ones: while PostgreSQL runs a
# big one, every request of its rows waits, and with them the loop, for the
# length of the whole statement (~100 µs a row). Measured in closed loops
# (bench.profile, 10k phones, five pairs): 4 x 256 left the broker's thread
# asleep 12-16 % of the time, waiting for PostgreSQL; 8 x 32, 5-6 %, and
# the accept path went from 0.68 to 0.74 of the baseline, answering from
# 0.41 to 0.45 (docs/PERFORMANCE.md, "Smaller statements, more of them").
MAX_ROWS = 32
IN_FLIGHT = 8
# The keyed sends' batch: fewer writers (each keyed send is rarer, and its
# writers' connections are those the other requests need too).
KEYED_IN_FLIGHT = 4
# A batch of fewer rows goes as one-row statements (bench.sends: the batch
# statement for one row cost PostgreSQL 1,440-1,690 µs, the one-row INSERT
# 450-500; at 8 rows 155-220 µs a row).
SMALL = 3

Outcome = store.Inserted | None


# A row, the future its caller waits on, and what gets its outcome instead
# if the caller gives up once the row is in flight.
Waiter = tuple[store.NewMessage, asyncio.Future[Outcome], Callable[[Outcome], object] | None]


class SendBatch:
    def __init__(self, pool: store.Pool, keyed: bool = False) -> None:
        self.pool = pool
        self.keyed = keyed  # rows with a claim: store.insert_keyed
        self.in_flight = KEYED_IN_FLIGHT if keyed else IN_FLIGHT
        self._waiting: list[Waiter] = []
        self._writers = 0
        self._starting = False  # a writer created whose first step has not run yet
        self.statements = 0  # batch statements written (tests, metrics)

    async def insert(self, row: store.NewMessage,
                     orphaned: Callable[[Outcome], object] | None = None) -> Outcome:
        """Write `row` with the others of its batch; its outcome once the
        batch committed (None: send it alone). A caller cancelled meanwhile
        takes its row back if the batch has not left; else `orphaned` gets
        the row's outcome when it comes."""
        future = self.submit(row, orphaned)
        try:
            return await future
        except asyncio.CancelledError:
            # Its future is cancelled with it, unless the outcome had come
            # already (the caller was cancelled before it woke up).
            if not self.withdraw(future) and orphaned is not None and future.done() \
                    and not future.cancelled() and future.exception() is None:
                orphaned(future.result())
            raise

    def submit(self, row: store.NewMessage,
               orphaned: Callable[[Outcome], object] | None = None) -> asyncio.Future[Outcome]:
        """`row` into the next batch; its outcome comes on the future (if
        the future is cancelled once the batch has left, `orphaned` gets the
        outcome instead)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((row, future, orphaned))
        self._spawn()
        return future

    def withdraw(self, future: asyncio.Future[Outcome]) -> bool:
        """Take a row back if its batch has not gone to PostgreSQL yet (its
        caller gave up: a request past its deadline). False: it is being
        written, and its outcome still comes."""
        for i, (_, waiting, _) in enumerate(self._waiting):
            if waiting is future:
                del self._waiting[i]
                future.cancel()
                return True
        return False

    def _spawn(self) -> None:
        """A writer for the rows waiting, unless one about to start will
        take them or IN_FLIGHT are busy (the first to finish takes them).
        Its first step comes on the next loop turn: the rest of this turn's
        rows join it."""
        if self._waiting and not self._starting and self._writers < self.in_flight:
            self._starting = True
            self._writers += 1
            asyncio.get_running_loop().create_task(self._write())

    def _take(self) -> list[Waiter]:
        batch, self._waiting = self._waiting[:MAX_ROWS], self._waiting[MAX_ROWS:]
        return batch

    async def _write(self) -> None:
        """One writer: the rows waiting now, then those that came while it
        wrote, on one connection held meanwhile. Each row's outcome is given
        as soon as its statement answers, before the connection goes back
        (asyncpg's release costs loop turns: a task and a shield)."""
        self._starting = False
        batch = self._take()
        self._spawn()  # more than one writer's worth
        try:
            if batch:
                async with self.pool.acquire() as conn:
                    while batch:
                        await self._run(conn, batch)
                        batch = self._take()
                        self._spawn()
        except BaseException as err:  # the pool or the connection: every row of the batch fails
            _fail(batch, err)
            if not isinstance(err, Exception):
                raise
        finally:
            self._writers -= 1
            self._spawn()

    async def _run(self, conn: store.Conn, batch: list[Waiter]) -> None:
        """Raises only when the connection is gone (DATABASE_DOWN): the
        batch's rows fail with it, and a new writer takes a new connection."""
        rows = [row for row, _, _ in batch]
        try:
            if self.keyed:
                outcomes = await _keyed(conn, rows)
            elif len(rows) < SMALL:
                # Too few to pay for the batch statement (its plan and CTEs
                # cost PostgreSQL about three one-row INSERTs): each alone,
                # at once, as before the batches (light load: no wait).
                await self._each_alone(conn, batch)
                metrics.SEND_BATCH_ROWS.observe(len(rows))
                return
            else:
                outcomes = await store.insert_messages(conn, rows)
        except store.DATABASE_DOWN:
            raise
        except Exception as err:
            if len(batch) == 1:  # this row is the one refused: its request fails
                _fail(batch, err)
                return
            # One row PostgreSQL refused fails the statement: each again
            # alone, so that only its own request fails.
            log.warning("send batch refused: its rows go one by one",
                        extra={"rows": len(batch)}, exc_info=True)
            for item in batch:
                await self._run(conn, [item])
            return
        self.statements += 1
        metrics.SEND_BATCH_ROWS.observe(len(rows))
        for item, outcome in zip(batch, outcomes, strict=True):
            _give(item, outcome)

    async def _each_alone(self, conn: store.Conn, batch: list[Waiter]) -> None:
        """The first row on this writer's connection, the others at the
        same time on connections of their own."""
        others = [asyncio.get_running_loop().create_task(self._alone_pooled(item))
                  for item in batch[1:]]
        try:
            await _alone_given(conn, batch[0])
        finally:
            if others:
                await asyncio.gather(*others)

    async def _alone_pooled(self, item: Waiter) -> None:
        try:
            async with self.pool.acquire() as conn:
                await _alone_given(conn, item)
        except store.DATABASE_DOWN as err:  # no connection for it, or it broke
            _fail([item], err)


def _give(item: Waiter, outcome: Outcome) -> None:
    _, future, orphaned = item
    if not future.done():
        future.set_result(outcome)
    elif future.cancelled() and orphaned is not None:
        orphaned(outcome)  # its caller gave up while the row was in flight


def _fail(batch: list[Waiter], err: BaseException) -> None:
    for _, future, _ in batch:
        if not future.done():
            future.set_exception(err)


async def _alone_given(conn: store.Conn, item: Waiter) -> None:
    """One row of a small batch: its outcome, or its own failure."""
    try:
        outcome = await _alone(conn, item[0])
    except Exception as err:
        _fail([item], err)
        if isinstance(err, store.DATABASE_DOWN):
            raise  # the writer's connection is gone with it
        return
    _give(item, outcome)


async def _alone(conn: store.Conn, r: store.NewMessage) -> Outcome:
    """One row through the one-row statement: its exact outcome, or None
    for those the caller tries again itself (a stripe filled meanwhile, the
    month to open, a plan changed)."""
    try:
        got = await store.insert_row(conn, r)
    except store.DATABASE_BUSY:
        return None  # ended by PostgreSQL (a deadlock): nothing written, again alone
    return None if got in _AGAIN else got


async def _keyed(conn: store.Conn, rows: list[store.NewMessage]) -> list[Outcome]:
    """Keyed rows in one transaction (`store.insert_keyed`). Ended by
    PostgreSQL (a deadlock): rolled back, nothing written, each alone."""
    try:
        return await store.insert_keyed(conn, rows)
    except store.DATABASE_BUSY:
        return [None] * len(rows)


_AGAIN = (store.Inserted.CONTENDED, store.Inserted.MONTH_UNOPENED, store.Inserted.PLAN_CHANGED)
