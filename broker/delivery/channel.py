"""`DeviceChannel`: everything the delivery engine may ask of a phone.

The engine (sending, the queue, redelivery, reports, the sweeper, presence)
speaks of jobs, reasons and answers; each phone transport implements this
interface and owns its wire: frame encoding and close codes live in
`transports/ws/`, SSE framing in the SMS Gateway transport. The engine never
sees bytes, frames or close codes.
"""

from __future__ import annotations

import enum
from typing import Protocol

import msgspec


class Job(msgspec.Struct, frozen=True):
    """A job as a phone is offered it (contract section 4, `send`)."""

    id: str
    recipient: str
    message: str


class CloseReason(enum.Enum):
    """Why the engine ends a phone's connection; the transport picks the
    wire's way of saying it."""

    REPLACED = "replaced by a newer connection"
    DEACTIVATED = "device deactivated"
    RESTARTING = "broker restarting"
    UNAVAILABLE = "database unavailable"  # come back later and get every job again
    INTERNAL_ERROR = "internal error"


# --- answers to a phone's report (contract section 5) -----------------------


class Receipt(msgspec.Struct, frozen=True):
    """The report is stored: the phone may forget it."""

    status: str


class Cancel(msgspec.Struct, frozen=True):
    """The job is no longer this phone's to send: drop it unsent."""

    reason: str


class Refusal(msgspec.Struct, frozen=True):
    """The report was refused and changed nothing; `code` is the
    lifecycle's (`not_yours`, `not_acked`, `refused`)."""

    code: str


class NotStored(msgspec.Struct, frozen=True):
    """The report could not be stored now (the database is away): no
    receipt, so the phone keeps it and sends it again."""


Answer = Receipt | Cancel | Refusal | NotStored
NOT_STORED = NotStored()


class DeviceChannel(Protocol):
    """One connected phone, as the engine sees it. Every method returns
    promptly: a phone that does not read is the transport's problem (it
    closes it), never the caller's wait."""

    async def offer(self, job: Job) -> bool:
        """Hand the phone a job; False if it could not be handed (the
        connection is gone): the job stays in PostgreSQL for the next one."""
        ...

    async def cancel(self, message_id: str, reason: str) -> bool:
        """Tell the phone to drop a job unsent, with the reason."""
        ...

    async def answer(self, message_id: str, answer: Answer) -> bool:
        """Answer the phone's report on a job."""
        ...

    async def close(self, reason: CloseReason) -> None:
        """End the connection (idempotent)."""
        ...
