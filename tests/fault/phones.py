"""The soak's phones, of either kind: `DeviceSim` (our WebSocket protocol)
and `AppSim` (the SMS Gateway for Android app) as shipped, with a carrier
that answers at random per message and a record of what the broker refused.

Only the outcome is the soak's own: everything a phone does on the wire
(WebSocket: ack, wait for the receipt, send once per id, outbox replayed
after a reconnect; the app: send what it lists at once and once, PATCH its
snapshots until the broker takes them, give back what it has not sent) is
`broker.device_sim`, unchanged, so the soak tests the phones everyone else
runs.

With several nodes (CONTRACT section 13) a phone is given every node's
address, as behind a load balancer: it connects to its first node, stays
there across drops, and moves on to the next node, in turn, after an
attempt that never got connected (its node is unreachable: killed).
`Route` is that choice, and the record of where the phone was connected
when, and which node each job reached it through, for the checks that no
phone is held by two nodes (tests/fault/invariants.py). The device-sim
classes read their address afresh at each attempt (`DeviceSim.url`, the
app's `client.base_url`), so the soak steers them from here.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Final

from broker import store
from broker.device_sim import AppPhone, AppSim, DeviceSim, Event, Outcome, Phone, mobile_base, ws_url
from broker.device_sim.app import Fetch
from broker.device_sim.mobile import listing_decoder
from protocol import frames
from tests.fault.invariants import JobSeen

# delivered 60 %, sent 20 % (no delivery report ever comes), failed 20 %.
OUTCOME_WEIGHTS: Final[dict[Outcome, int]] = {"delivered": 6, "sent": 2, "failed": 2}


def outcome_for(seed: int, message_id: str) -> Outcome:
    """The carrier's answer for a message: fixed by the seed and the id."""
    rng = random.Random(f"{seed}/{message_id}")
    return rng.choices(list(OUTCOME_WEIGHTS), list(OUTCOME_WEIGHTS.values()))[0]


class SoakPhone(Phone):
    """A `Phone` whose outcome is drawn per message; `outcomes` (shared by
    all phones) records what each message's phone reported."""

    def __init__(self, seed: int, outcomes: dict[str, str]) -> None:
        super().__init__("delivered")
        self._seed = seed
        self._outcomes = outcomes

    def finish_send(self, message_id: str, at: str) -> list[frames.Status]:
        self.outcome = outcome_for(self._seed, message_id)
        self._outcomes[message_id] = self.outcome
        return super().finish_send(message_id, at)


class SoakAppPhone(AppPhone):
    """An `AppPhone` whose outcome is drawn per message, like `SoakPhone`;
    `listed`: the ids of the last listing it was given."""

    def __init__(self, seed: int, outcomes: dict[str, str]) -> None:
        super().__init__("delivered")
        self._seed = seed
        self._outcomes = outcomes
        self.listed: list[str] = []

    def on_listing(self, raw: bytes, now: dt.datetime) -> None:
        try:
            self.listed = [item.id for item in listing_decoder.decode(raw)]
        except ValueError:  # msgspec.DecodeError: the phone refuses it below
            self.listed = []
        super().on_listing(raw, now)

    def finish_send(self, message_id: str, now: dt.datetime) -> None:
        self.outcome = outcome_for(self._seed, message_id)
        self._outcomes[message_id] = self.outcome
        super().finish_send(message_id, now)


# Port 1: nothing listens there, a connection is refused at once. A phone
# whose network is down connects here.
NOWHERE: Final = "http://127.0.0.1:1"


class Route:
    """Which node a phone connects to, and where it was connected when.

    `nodes` (names) and `urls` (their base URLs) in one order; the phone
    starts at `first`. An attempt that ended without getting connected moves
    it to the next node, unless its network is down (`offline_until`, by
    the soak's clock: every attempt goes NOWHERE meanwhile). `timeline`:
    (when, the node it is connected to, None for none), one entry a change;
    `jobs`: every job that reached it, with the node it came through."""

    def __init__(self, nodes: list[str], urls: list[str], first: int,
                 clock: Callable[[], float]) -> None:
        self.nodes = nodes
        self.urls = urls
        self.at = first % len(nodes)
        self.clock = clock
        self.offline_until = 0.0
        self.moves = 0  # to another node after an attempt that failed
        self.timeline: list[tuple[float, str | None]] = []
        self.jobs: list[JobSeen] = []
        self._connected_since_attempt = False
        self._attempt_offline = False

    @property
    def node(self) -> str:
        """The node of the current (or next) attempt."""
        return self.nodes[self.at]

    def offline(self) -> bool:
        return self.clock() < self.offline_until

    def url(self) -> str:
        return NOWHERE if self.offline() else self.urls[self.at]

    def attempt(self) -> str:
        """An attempt to connect starts: where to."""
        self._attempt_offline = self.offline()
        return self.url()

    def connected(self) -> None:
        self._connected_since_attempt = True
        self._change(self.node)

    def dropping(self) -> None:
        """The soak cuts the connection: from now on the node may see it
        gone (and its row go) before the phone's own end of it has closed."""
        self._change(None)

    def disconnected(self) -> None:
        """An attempt ended (a session, or a connection that never opened)."""
        self._change(None)
        if not (self._connected_since_attempt or self._attempt_offline) and len(self.nodes) > 1:
            self.at = (self.at + 1) % len(self.nodes)
            self.moves += 1
        self._connected_since_attempt = False

    def job(self, device_id: str, message_id: str, node: str) -> None:
        self.jobs.append(JobSeen(self.clock(), device_id, node, message_id))

    def where(self) -> str:
        current = self.timeline[-1][1] if self.timeline else None
        return f"on {current}" if current else f"offline (next: {self.url()})"

    def _change(self, node: str | None) -> None:
        if not self.timeline or self.timeline[-1][1] != node:
            self.timeline.append((self.clock(), node))


class Refusals:
    """Id -> what the broker refused about it (`error` frames; for the app,
    refused requests and cancels that came too late), for the report."""

    def __init__(self) -> None:
        self.refused: dict[str, list[str]] = {}
        self.drops = 0

    def _seen(self, event: Event) -> None:
        if event.kind == "refused" and event.id is not None:
            self.refused.setdefault(event.id, []).append(event.detail)

    def _refused(self, message_id: str) -> str:
        refused = self.refused.get(message_id, [])
        return f", refused: {' / '.join(refused)}" if refused else ""


class SoakSim(Refusals, DeviceSim):
    kind: Final = store.WEBSOCKET

    def __init__(self, route: Route, token: str, device_id: str, name: str, phone: SoakPhone,
                 delay_ms: int) -> None:
        self.route = route
        Refusals.__init__(self)
        DeviceSim.__init__(self, route.url(), token, delay_ms=delay_ms, on_event=self._routed)
        self.phone = phone
        self.device_id = device_id
        self.name = name

    # DeviceSim reads `url` at each attempt, and only then: the route's choice.
    @property
    def url(self) -> str:
        return ws_url(self.route.attempt())

    @url.setter
    def url(self, _value: str) -> None:
        pass  # DeviceSim.__init__ sets it; the route decides

    def _routed(self, event: Event) -> None:
        if event.kind == "connected":
            self.route.connected()
        elif event.kind == "disconnected":
            self.route.disconnected()
        self._seen(event)

    async def _apply(self, frame: frames.BrokerFrame) -> None:
        if isinstance(frame, frames.Send):  # through the socket of the route's node
            self.route.job(self.device_id, frame.id, self.route.node)
        await super()._apply(frame)

    def view(self, message_id: str) -> str:
        """What this phone holds about a message, for a failed check."""
        job = self.phone.jobs.get(message_id)
        outbox = [r.status for r in self.phone.outbox.get(message_id, [])]
        return (f"{self.name} (websocket, {self.route.where()}): job"
                f" {job.state if job else 'unknown'}, outbox {outbox or 'empty'}"
                f"{self._refused(message_id)}")


class SoakAppSim(Refusals, AppSim):
    kind: Final = store.SMSGATE

    def __init__(self, route: Route, token: str, device_id: str, name: str,
                 phone: SoakAppPhone, delay_ms: int) -> None:
        self.route = route
        Refusals.__init__(self)
        AppSim.__init__(self, route.url(), token=token, device_id=device_id, delay_ms=delay_ms,
                        phone=phone, on_event=self._routed)
        self.name = name
        self.app_phone = phone

    def _routed(self, event: Event) -> None:
        if event.kind == "connected":
            self.route.connected()
        elif event.kind == "disconnected":
            self.route.disconnected()
        self._seen(event)

    def steer(self, url: str) -> None:
        """Point the app's client (made in `run`) at `url`: every call from
        now on goes there."""
        client = getattr(self, "client", None)
        if client is not None:
            client.base_url = mobile_base(url)

    async def _session(self) -> tuple[bool, bool]:
        """An attempt: the event stream, at the route's choice."""
        self.steer(self.route.attempt())
        return await super()._session()

    async def _fetch(self, fetch: Fetch) -> bool:
        """A listing's jobs reached it through the node the client points at."""
        base = str(self.client.base_url).rstrip("/")
        node = next((n for n, url in zip(self.route.nodes, self.route.urls, strict=True)
                     if mobile_base(url) == base), None)
        self.app_phone.listed = []
        answered = await super()._fetch(fetch)
        for message_id in self.app_phone.listed:
            if node is not None:  # not NOWHERE
                self.route.job(self.device_id or "", message_id, node)
        return answered

    def view(self, message_id: str) -> str:
        """What this phone holds about a message, for a failed check."""
        job = self.phone.jobs.get(message_id)
        waiting = job is not None and message_id in self.phone.outbox()
        return (f"{self.name} (smsgate, {self.route.where()}): job"
                f" {job.state if job else 'unknown'}, PATCHed {job.patches if job else []}"
                f"{', a snapshot still to PATCH' if waiting else ''}{self._refused(message_id)}")


def go_offline(sim: SoakSim | SoakAppSim, until_s: float) -> None:
    """The phone's network is down until `until_s` (the soak's clock): every
    attempt fails meanwhile, and its node is not given up on for it."""
    sim.route.offline_until = until_s
    if isinstance(sim, SoakAppSim):
        sim.steer(sim.route.url())
