"""The send path (contract section 3): pick the freshest device with room,
write the message in one statement, and hand the job to the phone once it
is committed, or queue it when every device is at its rate.

A job has one owner device at a time (`messages.device_id`) and every state
is in PostgreSQL, so whatever this process holds in memory (timers, presence)
can be rebuilt from the database after a restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import time
import uuid
from typing import NamedTuple

from broker import store
from broker.clock import Month, utcnow
from broker.cluster.peers import Peers
from broker.delivery.batch import SendBatch
from broker.delivery.channel import CloseReason, Job
from broker.delivery.handoff import hand
from broker.delivery.presence import Connection, Presence
from broker.delivery.queue import Queue
from broker.delivery.wake import Wake
from broker.errors import Conflict, Forbidden, KeyChanged, NoEligibleDevice, Unavailable
from broker.lookups import Coalescer
from broker.ops import metrics
from protocol import lifecycle
from protocol.api import DeviceRef, MessageData, SendResponse
from protocol.api import encoder as api_encoder

IDEMPOTENCY_WINDOW = dt.timedelta(hours=24)
_PICK_ATTEMPTS = 4
_QUOTA_ATTEMPTS = 2 * store.STRIPES + 4
# The send path's metric children, looked up once rather than per send.
_SENDS = {r: metrics.SENDS.labels(r)
          for r in ("no_device", "dispatching", "queued", "replayed")}
_QUEUED_T = metrics.TRANSITIONS.labels(lifecycle.QUEUED)
_DISPATCHING_T = metrics.TRANSITIONS.labels(lifecycle.DISPATCHING)


class Sender:
    def __init__(self, pool: store.Pool, presence: Presence, queue: Queue,
                 wake: Wake | None = None, peers: Peers | None = None) -> None:
        self.pool = pool
        self.wake = wake or Wake()  # the webhook sender: this send's events are committed
        # The other nodes (CONTRACT section 13): their phones, when ours have no room.
        self.peers = peers or Peers(pool, None, "")
        # Sends outside a transaction of their own share statements and
        # commits; those with an Idempotency-Key, transactions of their own.
        self.batch = SendBatch(pool)
        self.keyed = SendBatch(pool, keyed=True)
        # Keyed sends in progress here: a twin waits for the first, then
        # replays its response, and never picks a device (nor takes its room).
        self._keyed_now: dict[tuple[uuid.UUID, str], asyncio.Future[None]] = {}

        async def claims(keys: list[tuple[uuid.UUID, str]]
                         ) -> dict[tuple[uuid.UUID, str], store.Idempotent]:
            return await store.idempotent_responses(pool, keys, utcnow() - IDEMPOTENCY_WINDOW)

        # The keyed sends' look for an earlier claim of their key: one query
        # for the sends of one moment.
        self._claims: Coalescer[tuple[uuid.UUID, str], store.Idempotent] = Coalescer(claims)
        self._orphans: set[asyncio.Task[None]] = set()
        self.presence = presence
        self.queue = queue
        self._month = Month()

    async def send(self, account_id: uuid.UUID, monthly: int, recipient: str, body: str,
                   ttl_s: int | None, idempotency_key: str | None, raw_body: bytes,
                   key_id: uuid.UUID | None = None, key_prefix: str | None = None) -> bytes:
        """Accept one message; returns the 201 body. The row is committed and
        the job handed to the phone before this returns."""
        now = utcnow()
        job = _NewJob(uuid.uuid4(), account_id, recipient, body,
                      now + dt.timedelta(seconds=ttl_s) if ttl_s else None, now, key_id,
                      key_prefix, store.Quota(self._month.of(now).date(), monthly))
        if idempotency_key is None:
            accepted = await self._accept(self.pool, job)
        else:
            keyed = await self._send_keyed(job, idempotency_key, raw_body, now)
            if isinstance(keyed, bytes):
                return keyed  # a replay
            accepted = keyed
        await self._deliver(job, accepted)
        return accepted.response

    async def _send_keyed(self, job: _NewJob, key: str, raw_body: bytes,
                          now: dt.datetime) -> _Accepted | bytes:
        """A send with an Idempotency-Key (contract section 3): accepted, or
        the response of the request that used the key first (bytes)."""
        request_hash = hashlib.sha256(raw_body).digest()
        twin = (job.account_id, key)
        while True:
            replay = await self._replay(job.account_id, key, request_hash)
            if replay is not None:
                return replay
            ahead = self._keyed_now.get(twin)
            if ahead is None:
                break
            await asyncio.wait([ahead])  # a twin here first: its outcome, then again
        done = self._keyed_now[twin] = asyncio.get_running_loop().create_future()
        try:
            return await self._accept_keyed(job, key, request_hash, now)
        finally:
            del self._keyed_now[twin]
            done.set_result(None)

    async def _accept_keyed(self, job: _NewJob, key: str, request_hash: bytes,
                            now: dt.datetime) -> _Accepted | bytes:
        """A send with an Idempotency-Key: the key is claimed in the
        transaction that writes the message, shared with the other keyed
        sends of the moment; a twin at another node waits on the key until
        we commit and then replays our response (bytes, if its claim won)."""
        try:
            return await self._accept(self.pool, job._replace(claim=store.Claim(
                key, request_hash, b"", now - IDEMPOTENCY_WINDOW)))
        except _KeyTaken:
            replay = await self._replay(job.account_id, key, request_hash)
            if replay is not None:
                return replay
            # Its holder did not write its message and let the key go: again.
        except _Alone:
            pass  # the batch could not write it: in a transaction of its own
        return await self._keyed_alone(job, key, request_hash, now)

    async def _keyed_alone(self, job: _NewJob, key: str, request_hash: bytes,
                           now: dt.datetime) -> _Accepted | bytes:
        """A keyed send in a transaction of its own: the key claimed first
        (a twin blocks on it until we commit), then the message; or the
        twin's response (bytes) if its claim won."""
        accepted: _Accepted | None = None
        try:
            async with self.pool.acquire() as db, db.transaction():
                if not await store.claim_idempotency(db, job.account_id, key, request_hash,
                                                     job.id, b"", now - IDEMPOTENCY_WINDOW):
                    raise _LostRace()
                accepted = await self._accept(db, job)
                await store.set_idempotent_response(db, job.account_id, key, accepted.response)
        except _LostRace:
            replay = await self._replay(job.account_id, key, request_hash)
            assert replay is not None, "idempotency row vanished under us"
            return replay
        except BaseException:
            if accepted is not None and accepted.conn is not None and accepted.has_room:
                self._give_back(accepted.conn, accepted.mono)  # rolled back: nothing sent
            raise
        return accepted

    async def close(self) -> None:
        await self._claims.close()

    def _give_back(self, conn: Connection, mono: float) -> None:
        """Undo a pacer take whose job never went out."""
        conn.pacer.give_back(mono)
        self.presence.room_freed(conn, time.monotonic())

    async def _accept(self, db: store.Db, job: _NewJob) -> _Accepted:
        """Pick the device and write the message (not yet the frame)."""
        # A pick can name a device that was deactivated a moment ago (presence
        # hears of it by NOTIFY, PostgreSQL knows at once): drop it, pick again.
        for _ in range(_PICK_ATTEMPTS):
            mono = time.monotonic()
            picked = self.presence.pick(job.account_id, mono)
            if picked is None:
                break
            conn, has_room = picked
            status = lifecycle.DISPATCHING if has_room else lifecycle.QUEUED
            if has_room:
                conn.pacer.take(mono)  # before the await: a concurrent send sees it
            else:
                await self.queue.admit(db, job.account_id)
                # Other nodes' phones may have room: they drain it if so.
                wake = tuple(await self.peers.nodes_holding(db, job.account_id))
            response = job.created(status, DeviceRef(id=str(conn.device_id),
                                                     deviceName=conn.name))
            try:
                written = await self._insert(db, job, conn.device_id, status, response)
            except BaseException:
                if has_room:
                    self._give_back(conn, mono)
                raise
            if written is store.Inserted.WRITTEN:
                return _Accepted(conn, has_room, mono, response, () if has_room else wake)
            if has_room:
                self._give_back(conn, mono)  # nothing went to the phone
            _fail_if_refused(written)
            self.presence.unregister(conn)  # DEVICE_GONE
            await conn.channel.close(CloseReason.DEACTIVATED)
        held = await self._remote(db, job)
        if held is not None:
            return held
        if job.expires_at is None:
            # Without a ttl the caller asked for now or never (contract section 3).
            _SENDS["no_device"].inc()
            raise NoEligibleDevice()
        # No phone of the account is connected and the message has a ttl: it
        # waits `queued` with no device, for the first eligible phone that
        # connects before its ttl (contract section 3, v2), at any node.
        held = await self._queued(db, job, None, None)
        assert held is not None  # no device to be gone
        return held

    async def _remote(self, db: store.Db, job: _NewJob) -> _Accepted | None:
        """No phone of the account here: the node holding its freshest phone
        names one with room and keeps that room (broker/delivery/remote.py);
        the job is committed `dispatching` for it, and that node hands it
        after the commit (one commit on the path, as for a phone here). No
        room there, or no answer in time: the job waits `queued` for the
        freshest phone, whose node drains the queue to its phones with room
        (broker/cluster/peers.py). None: no other node holds a phone of the
        account (or the one named was deactivated meanwhile)."""
        holder = await self.peers.holder(db, job.account_id)
        if holder is None:
            return None
        node = holder.node
        reserved = await self.peers.reserve(node, job.account_id)
        if reserved is None:
            return await self._queued(db, job, DeviceRef(id=str(holder.device_id),
                                                         deviceName=holder.name), (node,))
        device_id, name = reserved
        response = job.created(lifecycle.DISPATCHING, DeviceRef(id=str(device_id),
                                                                deviceName=name))
        written = await self._insert(db, job, device_id, lifecycle.DISPATCHING, response, node)
        _fail_if_refused(written)
        if written is store.Inserted.DEVICE_GONE:
            return None
        # (The room kept there for a job that is not written lapses there.)
        return _Accepted(None, False, time.monotonic(), response, (), _Remote(node, device_id))

    async def _queued(self, db: store.Db, job: _NewJob, device: DeviceRef | None,
                      wake: tuple[str, ...] | None) -> _Accepted | None:
        """The message written `queued` for `device` (None: any phone), and
        the nodes to wake after the commit (None: every node). None: the
        device was deactivated meanwhile."""
        await self.queue.admit(db, job.account_id)
        response = job.created(lifecycle.QUEUED, device)
        written = await self._insert(db, job, uuid.UUID(device.id) if device else None,
                                     lifecycle.QUEUED, response)
        _fail_if_refused(written)
        if written is store.Inserted.DEVICE_GONE:
            return None
        return _Accepted(None, False, time.monotonic(), response, wake)

    async def _insert(self, db: store.Db, job: _NewJob, device_id: uuid.UUID | None,
                      status: str, response: bytes, remote: str | None = None
                      ) -> store.Inserted:
        """The message's INSERT, which takes its unit of the monthly quota in
        the same statement (contract section 3, v2), and for a keyed send
        its key's claim with `response`. `remote`: the node holding the
        device, when another does."""
        claim = job.claim._replace(response=response) if job.claim is not None else None
        row = store.NewMessage(job.id, job.account_id, device_id, job.recipient, job.body,
                               status, job.expires_at, job.created_at, job.key_id,
                               job.key_prefix, job.quota, claim)
        if db is self.pool:
            # The request may give up (its deadline) while its row is being
            # written: if it is committed, its job goes to the phone all the
            # same, rather than wait for a reconnect.
            orphaned = (functools.partial(self._orphan_written, job=job, device_id=device_id,
                                          remote=remote)
                        if device_id is not None and status == lifecycle.DISPATCHING else None)
            batched = await (self.batch if claim is None else self.keyed).insert(row, orphaned)
            if batched is store.Inserted.KEY_TAKEN:
                raise _KeyTaken()
            if batched is not None:
                return batched
            if claim is not None:
                raise _Alone()
            # Its quota unit needs a look of its own (a stripe filled
            # meanwhile, the month's first send, a plan changed): alone.
        # Each CONTENDED means another send took a stripe's last unit, and a
        # stripe fills once: the attempts are bounded by the stripes.
        for _ in range(_QUOTA_ATTEMPTS):
            try:
                written = await store.insert_row(db, row)
            except store.DATABASE_BUSY:
                if db is not self.pool:
                    raise  # its transaction is over: the request fails (503), all of it
                continue  # nothing was written: the statement again
            if written is store.Inserted.MONTH_UNOPENED:
                # The month's first send, in any process: open it, then take from it.
                await store.open_month(db, job.account_id, job.quota.month, job.quota.limit)
            elif written is store.Inserted.PLAN_CHANGED:
                await store.resize_month(db, job.account_id, job.quota.month, job.quota.limit)
            elif written is not store.Inserted.CONTENDED:
                return written
        raise Unavailable("Monthly quota busy, try again", headers={"Retry-After": "1"})

    def _orphan_written(self, outcome: store.Inserted | None, job: _NewJob,
                        device_id: uuid.UUID, remote: str | None) -> None:
        """A send whose request was cancelled while its batch was written."""
        if outcome is not store.Inserted.WRITTEN:
            return
        if remote is not None:
            self.peers.dispatched(remote, device_id, job.id)
            return
        conn = self.presence.get(device_id)
        if conn is not None:
            task = asyncio.get_running_loop().create_task(hand(
                self.presence, conn, job.id, job.frame()))
            self._orphans.add(task)
            task.add_done_callback(self._orphans.discard)

    async def _deliver(self, job: _NewJob, accepted: _Accepted) -> None:
        """After the commit: the job frame to the phone, or a wake-up for the queue."""
        _QUEUED_T.inc()
        self.wake.poke(job.account_id)
        if accepted.remote is not None:
            # Its node writes the frame (broker/delivery/remote.py).
            _DISPATCHING_T.inc()
            self.peers.dispatched(accepted.remote.node, accepted.remote.device_id, job.id)
            _SENDS["dispatching"].inc()
        elif accepted.has_room and accepted.conn is not None:
            _DISPATCHING_T.inc()
            await hand(self.presence, accepted.conn, job.id, job.frame())
            metrics.DISPATCH_LATENCY.observe(time.monotonic() - accepted.mono)
            _SENDS["dispatching"].inc()
        else:
            # Again after the commit: a drain that ran while this row was
            # uncommitted found the queue empty and may have said so since.
            self.queue.filled(job.account_id)
            _SENDS["queued"].inc()
            if accepted.wake != ():
                self.peers.queued(job.account_id, None if accepted.wake is None
                                  else list(accepted.wake))
            self.queue.wake_at(job.account_id, self.presence.next_room_at(job.account_id,
                                                                    accepted.mono))

    async def _replay(self, account_id: uuid.UUID, key: str,
                      request_hash: bytes) -> bytes | None:
        found = await self._claims.get((account_id, key))
        if found is None:
            return None
        if found.request_hash != request_hash:
            raise Conflict("Idempotency-Key was already used with a different request body")
        _SENDS["replayed"].inc()
        return found.response


def _fail_if_refused(written: store.Inserted) -> None:
    """The outcomes of an INSERT that fail the request: its key changed, or
    the month's quota is used up."""
    if written is store.Inserted.KEY_GONE:
        raise KeyChanged()
    if written is store.Inserted.OVER_QUOTA:
        raise Forbidden("Monthly message quota exceeded")


class _NewJob(NamedTuple):
    id: uuid.UUID
    account_id: uuid.UUID
    recipient: str
    body: str
    expires_at: dt.datetime | None
    created_at: dt.datetime
    key_id: uuid.UUID | None  # the API key, checked again in the INSERT itself
    key_prefix: str | None
    quota: store.Quota  # the month's usage it takes a unit of
    claim: store.Claim | None = None  # its Idempotency-Key, claimed with its row

    def frame(self) -> Job:
        """The job as its phone is offered it."""
        return Job(id=str(self.id), recipient=self.recipient, message=self.body)

    def created(self, status: str, device: DeviceRef | None) -> bytes:
        """The 201 body of its send."""
        return api_encoder.encode(SendResponse(
            statusCode=201, message="SMS queued for delivery",
            data=MessageData(id=str(self.id), recipient=self.recipient, message=self.body,
                             status=status, device=device)))


class _Accepted(NamedTuple):
    conn: Connection | None  # None: no phone here (one elsewhere, or none yet)
    has_room: bool
    mono: float
    response: bytes
    # Other nodes to wake after the commit to drain the account's queue
    # (None: every node; empty: none).
    wake: tuple[str, ...] | None = ()
    remote: _Remote | None = None  # committed `dispatching` for another node's phone


class _Remote(NamedTuple):
    """Another node's phone a job is committed for."""
    node: str
    device_id: uuid.UUID


class _LostRace(Exception):
    """A concurrent request with the same Idempotency-Key committed first."""


class _KeyTaken(Exception):
    """A keyed send's batch found its key another request's."""


class _Alone(Exception):
    """A keyed send's batch could not write it (its quota unit needs a look
    of its own): it goes in a transaction of its own."""
