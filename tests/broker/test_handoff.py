"""broker/delivery/handoff.py: the one place a job leaves for a channel.
Pure: presence and phones are in memory (RecordingChannel)."""

from __future__ import annotations

import time
import uuid

from broker import store
from broker.delivery.channel import Job
from broker.delivery.handoff import hand, job_of
from broker.delivery.presence import Connection, Presence
from tests.conftest import RecordingChannel

ACCOUNT = uuid.uuid4()


def connect(presence: Presence, device_id: uuid.UUID, channel: RecordingChannel,
            window: int = 0) -> Connection:
    conn = Connection(device_id, ACCOUNT, "phone", channel, presence.pacer(device_id, 0),
                      time.time(), window)
    presence.register(conn)
    return conn


def test_job_of_a_row_is_what_the_phone_is_offered() -> None:
    mid = uuid.uuid4()
    row = store.Job(id=mid, recipient="+16502530000", body="Your code is 4829", status="dispatching")
    assert job_of(row) == Job(id=str(mid), recipient="+16502530000", message="Your code is 4829")


async def test_a_handed_job_is_in_flight_until_the_phone_answers() -> None:
    presence, channel = Presence(), RecordingChannel()
    conn = connect(presence, uuid.uuid4(), channel, window=1)
    mid = uuid.uuid4()
    job = Job(id=str(mid), recipient="+16502530000", message="hi")
    await hand(presence, conn, mid, job)
    assert channel.offered == [job]
    assert conn.inflight == {mid}
    assert presence.pick(ACCOUNT, time.monotonic()) == (conn, False)  # its window is full


async def test_a_job_the_channel_could_not_take_frees_its_room_at_once() -> None:
    presence, channel = Presence(), RecordingChannel(accept=False)  # the connection is gone
    conn = connect(presence, uuid.uuid4(), channel, window=1)
    mid = uuid.uuid4()
    await hand(presence, conn, mid, Job(id=str(mid), recipient="+16502530000", message="hi"))
    assert conn.inflight == set()
    assert presence.pick(ACCOUNT, time.monotonic()) == (conn, True)


async def test_a_phone_that_reconnected_meanwhile_gets_the_job_on_its_new_connection_too() -> None:
    presence, old_channel, new_channel = Presence(), RecordingChannel(), RecordingChannel()
    device = uuid.uuid4()
    old = connect(presence, device, old_channel)
    new = connect(presence, device, new_channel)  # replaced `old`, read its jobs already
    mid = uuid.uuid4()
    job = Job(id=str(mid), recipient="+16502530000", message="hi")
    await hand(presence, old, mid, job)
    assert old_channel.offered == [job] and new_channel.offered == [job]
    assert mid in new.inflight
    # Already in flight on the new connection (its redelivery had it): not twice.
    await hand(presence, old, mid, job)
    assert new_channel.offered == [job]
