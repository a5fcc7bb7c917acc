"""The app's jobs: `GET /message` lists what the phone holds, `PATCH
/message` is its report (CONTRACT section 8, SMSGATE.md 4.6-4.7, 6.7-6.11).

Listing is holding: the app sends a job as soon as it has listed it. Its
states map onto the lifecycle forward only, through the same group commit
as a WebSocket phone's reports: `Pending` (it holds the job) and
`Processed` are the ack, `Sent` and `Delivered` the ack and that report,
`Failed` the failure with the phone's error. A repeat or a regression
changes nothing (section 5), an unknown id is answered 2xx like any other.
`Cancelled` gives the job back: it goes to another phone, never this one."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from broker import store
from broker.clock import iso
from broker.delivery.channel import Cancel, Job
from broker.delivery.dispatch import parse_id
from broker.delivery.handoff import move
from broker.delivery.presence import Connection
from broker.errors import BadRequest
from broker.http.responses import bare, decode, read_body
from broker.transports.smsgate import auth, shapes
from broker.transports.smsgate.channel import SseChannel
from protocol import lifecycle

if TYPE_CHECKING:
    from broker.runtime import Broker

log = logging.getLogger("smsdora.devices")

_REPORTS: dict[str, tuple[lifecycle.Report, ...]] = {
    "Pending": ("ack",),  # "I hold it" (sent when a listing names a job it knows)
    "Processed": ("ack",),  # handed to the modem
    "Sent": ("ack", lifecycle.SENT),  # no receipt to wait for: the ack is implied
    "Delivered": ("ack", lifecycle.DELIVERED),
    "Failed": (lifecycle.FAILED,),
}


def _channel(conn: Connection | None) -> SseChannel | None:
    return conn.channel if conn is not None and isinstance(conn.channel, SseChannel) else None


def _item(row: store.Listed) -> shapes.MobileMessage:
    return shapes.MobileMessage(
        id=str(row.id), message=row.body, textMessage=shapes.TextMessage(row.body),
        phoneNumbers=[row.recipient], withDeliveryReport=True,
        state="Cancelling" if row.handback == "requested" else "Pending",
        createdAt=iso(row.created_at) or "", validUntil=iso(row.expires_at))


async def list_messages(request: Request) -> Response:
    """`GET /message?order=lifo|fifo`: the phone's jobs it has not reported
    on, at most a page; listing them is the phone taking them."""
    broker: Broker = request.app.state.broker
    device = await auth.device_of(request)
    order = request.query_params.get("order", "lifo").lower()
    if order not in ("lifo", "fifo"):
        raise BadRequest("order must be lifo or fifo")
    channel = _channel(broker.presence.get(device.id))
    if channel is not None:
        channel.looked()  # before the query: a job committed after it is announced again
    rows, more = await store.list_held(broker.pool, device.id, order)
    if channel is not None:
        channel.more = more
    elif device.online_node is not None and device.online_node != broker.settings.node:
        # Its event stream is at another node, which waits for this look
        # before it announces the next job: tell it (CONTRACT section 13).
        broker.peers.looked(device.id, device.online_node)
    return bare([_item(r) for r in rows])


async def report_messages(request: Request) -> Response:
    """`PATCH /message`: the phone's snapshot of each job (the app sends one
    at a time); answered once every report is committed."""
    broker: Broker = request.app.state.broker
    body = await read_body(request)
    device = await auth.device_of(request)
    items: list[shapes.MessageState] = decode(shapes.patch_decoder, body)
    for item in items:
        if item.state == "Cancelled":
            await _given_back(broker, device, item.id)
        else:
            await _report(broker, device, item)
    channel = _channel(broker.presence.get(device.id))
    if channel is not None and channel.more:
        # The last page was full: now that the phone reports on it, the next.
        channel.more = False
        await channel.announce()
    return bare({})


async def _report(broker: Broker, device: store.DeviceRow, item: shapes.MessageState) -> None:
    dispatcher = broker.dispatcher
    error = item.error() if item.state == "Failed" else None
    results = await asyncio.gather(*(dispatcher.report(device.id, item.id, r, error)
                                     for r in _REPORTS[item.state]))
    conn = broker.presence.get(device.id)
    for result in results:
        answer = dispatcher.answer(conn, item.id, result)
        if isinstance(answer, Cancel) and conn is not None:
            # Failed meanwhile (expired): the phone must not send it.
            await conn.channel.cancel(item.id, answer.reason)


async def _given_back(broker: Broker, device: store.DeviceRow, raw_id: str) -> None:
    """The phone cancelled a job it had not sent: straight to another
    eligible phone, or to the first one that has room (the sweeper)."""
    message_id = parse_id(raw_id)
    released = await store.release(broker.pool, device.id, message_id) if message_id else None
    if released is None:
        return  # not its job, or reported already: a Cancelled changes nothing
    presence = broker.presence
    now = time.monotonic()
    conn = presence.get(device.id)
    if conn is not None:
        conn.inflight.discard(released.id)
        presence.room_freed(conn, now)
    log.info("job given back", extra={"message_id": str(released.id),
                                      "device_id": str(device.id)})
    picked = presence.pick_other(released.account_id, now, device.id)
    if picked is not None and picked[1]:
        await move(broker.pool, presence, picked[0], released.id, device.id,
                   Job(id=str(released.id), recipient=released.recipient,
                       message=released.body))


