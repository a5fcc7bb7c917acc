"""`GET /inbox`: the SMS the account's phones received (CONTRACT section 9),
from either transport, newest first, keyset-paginated like GET /messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from broker import store
from broker.clock import iso
from broker.http.auth import authenticate
from broker.http.declaration import Endpoint, Wrap
from broker.http.params import Cursor, Integer, QueryId, Text
from broker.http.responses import ok
from protocol.api import DeviceRef
from protocol.inbox import InboxItem

if TYPE_CHECKING:
    from broker.runtime import Broker

LIMIT = Integer("limit", "At most this many SMS (default 20).", low=1, high=100, default=20)
CURSOR = Cursor("cursor", "The `nextCursor` of the previous page.", high=2**62)
DEVICE = QueryId("device", "Only SMS received by this device.")
SENDER = Text("sender", "Only SMS from this sender, exactly as the phone gave it (a number in"
                        " the form the phone saw, or an alphanumeric sender id).", max_length=128)


def item(row: store.InboxRow) -> InboxItem:
    return InboxItem(id=str(row.id), sender=row.sender, message=row.body,
                     receivedAt=iso(row.received_at) or "", createdAt=iso(row.created_at) or "",
                     device=DeviceRef(id=str(row.device_id), deviceName=row.device_name or ""))


async def list_inbox(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, "messages:read")
    q = request.query_params
    device, sender = DEVICE.read(q), SENDER.read(q)
    limit, before = LIMIT.read(q), CURSOR.read(q)
    account = key.account_id
    # A read's turn, as GET /messages takes it: a read slot, then a pool slot.
    await broker.read_shares.acquire(account)
    try:
        await broker.pool_shares.acquire(account)
        try:
            rows = await store.list_inbox(broker.pool, account, device, sender, limit + 1, before)
            more = len(rows) > limit
            rows = rows[:limit]
            return ok([item(r) for r in rows], next_cursor=str(rows[-1].seq) if more else None)
        finally:
            broker.pool_shares.release(account)
    finally:
        broker.read_shares.release(account)


INBOX_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET", "/inbox", list_inbox, "listInbox",
        "The SMS the account's phones received, newest first",
        "A page; `nextCursor` is there when more follow. Each item is also the `data` of the"
        " `message.received` webhook event.",
        scope="messages:read", params=(DEVICE, SENDER, LIMIT, CURSOR), response=InboxItem,
        wrap=Wrap.LIST, errors=(400, 401, 403, 405)),
)
