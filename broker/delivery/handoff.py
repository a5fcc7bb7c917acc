"""Handing a job to a phone: the one place a job leaves for a channel."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Protocol

from broker import store
from broker.delivery.channel import Job
from broker.delivery.presence import Connection, Presence

log = logging.getLogger("smsdora.sweeper")


class JobRow(Protocol):
    """A job as PostgreSQL returns it (store.Job, store.Dispatched, store.Unacked)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def recipient(self) -> str: ...
    @property
    def body(self) -> str: ...


def job_of(row: JobRow) -> Job:
    return Job(id=str(row.id), recipient=row.recipient, message=row.body)


async def hand(presence: Presence, conn: Connection, message_id: uuid.UUID, job: Job) -> None:
    """Offer a job to a phone; it is in flight until the phone answers.

    If the phone reconnected meanwhile (its new connection read its open
    jobs before this one was committed), the job goes to the new connection
    too: the phone keys its work by id, so a repeat costs nothing, and
    without it the job would wait for the next reconnect."""
    conn.inflight.add(message_id)
    if not await conn.channel.offer(job):
        conn.inflight.discard(message_id)
        presence.room_freed(conn, time.monotonic())
    current = presence.get(conn.device_id)
    if current is not None and current is not conn and message_id not in current.inflight:
        current.inflight.add(message_id)
        if not await current.channel.offer(job):
            current.inflight.discard(message_id)


async def move(pool: store.Pool, presence: Presence, conn: Connection, message_id: uuid.UUID,
               from_device: uuid.UUID, job: Job) -> bool:
    """Move a job no phone holds (never acked nor listed, or given back) from
    `from_device` to `conn`'s device, which has room, and offer it there.
    False if the move lost to a report or a listing stored meanwhile."""
    mono = time.monotonic()
    conn.pacer.take(mono)
    if not await store.reassign(pool, message_id, from_device, conn.device_id):
        conn.pacer.give_back(mono)
        presence.room_freed(conn, mono)
        return False
    log.info("job reassigned", extra={"message_id": str(message_id),
                                      "from_device": str(from_device),
                                      "to_device": str(conn.device_id)})
    await hand(presence, conn, message_id, job)
    return True
