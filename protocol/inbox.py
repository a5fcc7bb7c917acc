"""`GET /inbox` (contract section 9): one SMS a phone of the account received.
The `message.received` webhook event's `data` is the same item."""

from __future__ import annotations

import msgspec

from protocol.api import DeviceRef


class InboxItem(msgspec.Struct, frozen=True):
    id: str
    sender: str  # as the phone gave it: a number, or an alphanumeric sender id
    message: str
    receivedAt: str  # when the phone received it
    createdAt: str  # when the broker stored it
    device: DeviceRef
