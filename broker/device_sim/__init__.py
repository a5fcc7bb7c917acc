"""Simulated phones: one speaking our device protocol (contract section 4),
one speaking the SMS Gateway for Android app's mobile API (section 8).

Two layers each, as in python-websockets: `Phone` is the pure state machine
(frames in, frames and events out; no I/O, no clock: time is passed in) and
`DeviceSim` is the thin asyncio adapter that owns the socket, the
reconnects, the pings and the simulated radio. For the app, `AppPhone`
(app.py; its wire in mobile.py) is the pure state and `AppSim` (smsgate.py,
on httpx) the adapter: HTTP calls and an event stream instead of a socket.
`smsdora device-sim [--app ws|smsgate]` runs one of them; the tests drive
all four.

The rules a WebSocket phone follows, from the contract (the app's are in
app.py's docstring):
- keyed by message id: a `send` for an id it already knows starts no new
  work. It acks again a job it has not sent yet (the ack may repeat) and
  reports again the status of one it has sent (section 5);
- it sends the SMS only after the `receipt` for its `ack`; a receipt that
  says `sent` or `delivered` means the job was already done (section 5);
- a report stays in the outbox until its `receipt`, and the outbox is
  written again after a reconnect, so a receipt lost in a crash costs
  nothing;
- `cancel` drops a job unsent; an `error` about a job drops what it had
  queued for it, since writing it again would be refused again.
"""

from broker.device_sim.app import AppJob, AppPhone
from broker.device_sim.mobile import app_reconnect_s, mobile_base
from broker.device_sim.phone import (
    ACKED,
    APP_VERSION,
    CANCELLED,
    DELIVERED,
    DROPPED,
    FAILED,
    FAILURE_TEXT,
    OUTCOMES,
    SENDING,
    SENT,
    Event,
    Job,
    Outcome,
    Phone,
)
from broker.device_sim.smsgate import AppSim, fast_reconnect_s
from broker.device_sim.ws import DeviceRejected, DeviceSim, run, ws_url

__all__ = [
    "ACKED", "APP_VERSION", "CANCELLED", "DELIVERED", "DROPPED", "FAILED", "FAILURE_TEXT",
    "OUTCOMES", "SENDING", "SENT", "AppJob", "AppPhone", "AppSim", "DeviceRejected", "DeviceSim",
    "Event", "Job", "Outcome", "Phone", "app_reconnect_s", "fast_reconnect_s", "mobile_base", "run",
    "ws_url",
]
