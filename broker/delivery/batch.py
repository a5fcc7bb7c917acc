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
MAX_ROWS = 256
IN_FLIGHT = 4
# A batch of fewer rows goes as one-row statements (bench.sends: the batch
# statement for one row cost PostgreSQL 1,440-1,690 µs, the one-row INSERT
# 450-500; at 8 rows 155-220 µs a row).
SMALL = 3

Outcome = store.Inserted | None


class SendBatch:
    def __init__(self, pool: store.Pool, keyed: bool = False) -> None:
        self.pool = pool
        self.keyed = keyed  # rows with a claim: store.insert_keyed
        self._waiting: list[tuple[store.NewMessage, asyncio.Future[Outcome]]] = []
        self._writers = 0
        self._scheduled = False
        self.statements = 0  # batch statements written (tests, metrics)

    async def insert(self, row: store.NewMessage,
                     orphaned: Callable[[asyncio.Future[Outcome]], object] | None = None
                     ) -> Outcome:
        """Write `row` with the others of its batch; its outcome once the
        batch committed (None: send it alone). A caller cancelled meanwhile
        takes its row back if the batch has not left; else `orphaned` gets
        the row's outcome when it comes."""
        future = self.submit(row)
        try:
            return await asyncio.shield(future)  # the batch is not the caller's to cancel
        except asyncio.CancelledError:
            if not self.withdraw(future) and orphaned is not None:
                future.add_done_callback(orphaned)
            raise

    def submit(self, row: store.NewMessage) -> asyncio.Future[Outcome]:
        """`row` into the next batch; its outcome comes on the future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._waiting.append((row, future))
        if not self._scheduled and self._writers < IN_FLIGHT:
            self._scheduled = True
            loop.call_soon(self._start)  # the rest of this loop turn joins
        return future

    def withdraw(self, future: asyncio.Future[Outcome]) -> bool:
        """Take a row back if its batch has not gone to PostgreSQL yet (its
        caller gave up: a request past its deadline). False: it is being
        written, and its outcome still comes."""
        for i, (_, waiting) in enumerate(self._waiting):
            if waiting is future:
                del self._waiting[i]
                future.cancel()
                return True
        return False

    def _start(self) -> None:
        self._scheduled = False
        while self._waiting and self._writers < IN_FLIGHT:
            batch, self._waiting = self._waiting[:MAX_ROWS], self._waiting[MAX_ROWS:]
            self._writers += 1
            asyncio.get_running_loop().create_task(self._write(batch))

    async def _write(self, batch: list[tuple[store.NewMessage, asyncio.Future[Outcome]]]) -> None:
        try:
            await self._run(batch)
        except BaseException as err:
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            if not isinstance(err, Exception):
                raise
        finally:
            self._writers -= 1
            if self._waiting and not self._scheduled:
                self._start()

    async def _run(self, batch: list[tuple[store.NewMessage, asyncio.Future[Outcome]]]) -> None:
        rows = [row for row, _ in batch]
        try:
            if self.keyed:
                outcomes = await _keyed(self.pool, rows)
            elif len(rows) < SMALL:
                # Too few to pay for the batch statement (its plan and CTEs
                # cost PostgreSQL about three one-row INSERTs): each alone,
                # at once, as before the batches (light load: no wait).
                outcomes = await asyncio.gather(*(_alone(self.pool, r) for r in rows))
            else:
                outcomes = await store.insert_messages(self.pool, rows)
        except store.DATABASE_DOWN as err:
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        except Exception as err:
            if len(batch) == 1:  # this row is the one refused: its request fails
                if not batch[0][1].done():
                    batch[0][1].set_exception(err)
                return
            # One row PostgreSQL refused fails the statement: each again
            # alone, so that only its own request fails.
            log.warning("send batch refused: its rows go one by one",
                        extra={"rows": len(batch)}, exc_info=True)
            for item in batch:
                await self._run([item])
            return
        if len(rows) >= SMALL or self.keyed:
            self.statements += 1
        metrics.SEND_BATCH_ROWS.observe(len(rows))
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)


async def _alone(pool: store.Pool, r: store.NewMessage) -> Outcome:
    """One row through the one-row statement: its exact outcome, or None
    for those the caller tries again itself (a stripe filled meanwhile, the
    month to open, a plan changed)."""
    try:
        got = await store.insert_row(pool, r)
    except store.DATABASE_BUSY:
        return None  # ended by PostgreSQL (a deadlock): nothing written, again alone
    return None if got in _AGAIN else got


async def _keyed(pool: store.Pool, rows: list[store.NewMessage]) -> list[Outcome]:
    """Keyed rows in one transaction (`store.insert_keyed`). Ended by
    PostgreSQL (a deadlock): rolled back, nothing written, each alone."""
    try:
        async with pool.acquire() as conn:
            return await store.insert_keyed(conn, rows)
    except store.DATABASE_BUSY:
        return [None] * len(rows)


_AGAIN = (store.Inserted.CONTENDED, store.Inserted.MONTH_UNOPENED, store.Inserted.PLAN_CHANGED)
