"""Hostile device frames (issue 4): hypothesis against a live broker.

Generated frames: wrong types for every field, unknown and non-string types,
huge numbers, odd unicode (NUL, RTL marks, escaped lone surrogates, astral
planes), binary frames, truncated and deeply nested JSON, empty strings,
non-objects, and valid-looking hellos, acks and statuses, for random ids and
for jobs the target really holds. Two phases, each a fixed number of
derandomized examples (reproducible) after a few explicit ones:

1. First frames of fresh connections of a "newcomer" phone: a hello is
   welcomed (its pending ids answered with cancels), a bad protocol version
   is refused and closed with 1002 by design, anything else gets an `error`
   and the socket still waits for its hello. Whatever a hello carried
   (appVersion, health), presence still reaches PostgreSQL afterwards.
2. Frames on the open socket of a "target" phone: exactly one answer each,
   the `error` the frame deserves (the code `protocol.frames` gives it), or
   a `pong`, `receipt` or `cancel` where the frame happens to be valid; the
   socket stays open.

A "bystander" phone of the same account is connected throughout; at the end
it still gets a job, acks it and reports it, and the broker logged no error.
Frames stay under 64 KiB (larger ones close with 1009 by design, tested
elsewhere), and the frame bucket is opened wide (floods are tested elsewhere).

A text frame that is not UTF-8 at all (a lone surrogate's bytes, say)
cannot be read as text: RFC 6455 8.1 fails that connection with 1007, and
only that one (the second test).

The websockets clients live in the test's event loop with the server;
hypothesis, which is synchronous, runs in a worker thread and hands each
frame to the loop.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from broker.settings import Settings
from protocol import frames, lifecycle
from tests.e2e.conftest import Account, Phone, PhoneFactory, Server, send_sms, wait_for

pytestmark = pytest.mark.timeout(90)

T = TypeVar("T")
EXAMPLES = 300  # frames on the target's open socket
HELLO_EXAMPLES = 120  # first frames of fresh connections
ANSWER_S = 5.0
MAX_FRAME = 60_000  # stay clear of the 64 KiB limit, which closes the socket


@pytest.fixture
def broker_settings(broker_settings: Settings) -> Settings:
    # Fuzzing is not flooding: the per-connection frame bucket has its own
    # tests, and must not throttle or close the target here.
    return dataclasses.replace(broker_settings, frame_rate=1e6, frame_burst=1_000_000)


# --- the frames ---------------------------------------------------------------

ODD_TEXT = st.sampled_from([
    "", " ", "\x00", "a\x00b", "\u202eevil\u202c", "\u200f\u05e9\u05dc\u05d5\u05dd", "\ufeff",
    "\U0001f4a9" * 20, "e\u0301" * 30, "\uffff", "\x1b[31m", "null", "{}", "ack", "sent",
    "\u0000" * 100, "\u2028\u2029", "x" * 600, "\u0661\u0662", "١٢٣", "\U000e0041",
])
TEXT = st.one_of(ODD_TEXT, st.text(max_size=40),
                 st.builds(lambda a, b: f"{a}\x00{b}", st.text(max_size=8), st.text(max_size=8)))
IDS_RANDOM = st.one_of(st.uuids().map(str), TEXT, st.just("0" * 64), st.just("0" * 65))
HUGE_INTS = st.one_of(st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
                      st.integers(max_value=-(2**63) + 2, min_value=-(2**64) - 2),
                      st.integers(min_value=10**30, max_value=10**40))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 200), HUGE_INTS,
                    st.floats(allow_nan=False, allow_infinity=False), TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(TEXT, kids, max_size=3)), max_leaves=8)
HEALTH = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    # In range: out-of-range and wild values come from `mutated`.
    "battery": st.integers(0, 100), "charging": st.one_of(st.booleans(), st.none()),
    "signal": st.integers(0, 4),
}))


def _drop_none(frame: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in frame.items() if v is not None}


def hellos(ids: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda v, p, h: _drop_none({"type": "hello", "protocol": 1, "appVersion": v,
                                                 "pending": p, "health": h}),
                     TEXT, st.one_of(st.none(), st.lists(ids, max_size=3)), HEALTH)


def well_formed(ids: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Frames of the four device types with plausible values (ids real or not)."""
    return st.one_of(
        hellos(ids),
        st.builds(lambda i: {"type": "ack", "id": i}, ids),
        st.builds(lambda i, s, e, at: _drop_none({"type": "status", "id": i, "status": s,
                                                  "error": e, "at": at}),
                  ids, st.sampled_from(["sent", "delivered", "failed"]),
                  st.one_of(st.none(), TEXT), st.one_of(st.none(), TEXT)),
        st.builds(lambda h: _drop_none({"type": "ping", "health": h}), HEALTH),
    )


def reports(real: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Statuses for jobs the target holds, with hostile `error` and `at` texts:
    these are the strings that reach PostgreSQL."""
    return st.builds(lambda i, s, e, at: _drop_none({"type": "status", "id": i, "status": s,
                                                     "error": e, "at": at}),
                     real, st.sampled_from(["sent", "delivered", "failed"]), TEXT,
                     st.one_of(st.none(), TEXT))


def mutated(base: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A well-formed frame with one field of the wrong type, missing, or added."""
    def mutate(frame: dict[str, Any], how: str, value: Any, name: str,
               pick: int) -> dict[str, Any]:
        out = dict(frame)
        keys = sorted(out)
        field = keys[pick % len(keys)]
        if how == "retype":
            out[field] = value
        elif how == "drop":
            out.pop(field)
        else:
            out[name] = value
        return out
    return st.builds(mutate, base, st.sampled_from(["retype", "retype", "drop", "add"]),
                     JSON_VALUES, TEXT, st.integers(0, 10))


def unknown_type() -> st.SearchStrategy[dict[str, Any]]:
    kinds = st.one_of(TEXT.filter(lambda t: t not in {"hello", "ack", "status", "ping"}),
                      st.sampled_from(["welcome", "send", "receipt", "cancel", "error", "pong",
                                       "ACK", "Ping", " ping", "ping "]),
                      JSON_VALUES.filter(lambda v: not isinstance(v, str)))
    return st.builds(lambda k, rest: {**rest, "type": k}, kinds,
                     st.dictionaries(TEXT, JSON_VALUES, max_size=3))


def encoded(frames_: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """As JSON text: ASCII-escaped or raw UTF-8, compact or spaced."""
    return st.builds(lambda f, ascii_, spaced: json.dumps(
        f, ensure_ascii=ascii_, separators=(", ", ": ") if spaced else (",", ":")),
        frames_, st.booleans(), st.booleans())


def raw_texts(ids: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Text frames json.dumps cannot produce."""
    frame_text = encoded(st.one_of(well_formed(ids), mutated(well_formed(ids))))
    return st.one_of(
        # truncated JSON, cut anywhere
        st.builds(lambda t, at: t[:at % max(len(t), 1)], frame_text, st.integers(0, 10_000)),
        # escaped lone surrogates and bad escapes inside otherwise valid frames
        st.sampled_from([
            '{"type":"ack","id":"\\ud800"}', '{"type":"ack","id":"\\udfff\\ud800"}',
            '{"type":"status","id":"x","status":"failed","error":"\\udc00"}',
            '{"type":"hello","protocol":1,"appVersion":"\\ud83d"}',
            '{"type":"\\ud800"}', '{"type":"ack","id":"\\u00"}', '{"type":"ack","id":"\\x41"}',
            '{"type":"ping"}\x00', '\x00{"type":"ping"}', '{"type":"ping"} {"type":"ping"}',
            '{"type":"ping","type":"ack"}', '{"type":"ack","id":"a","id":5}',
            '{"type":"ping",}', "{'type':'ping'}", '{"type":ping}', "", " ", "\n", "null",
            "[]", "true", "0", "-0", "1e400", '"ping"', "NaN", "Infinity",
            '{"type":"ping","health":{"battery":1e400}}',
            '{"type":"ping","health":{"battery":NaN}}',
            '{"type":"hello","protocol":1e400}', '{"type":"hello","protocol":1.0}',
            '{"type":"hello","protocol":' + "9" * 5000 + "}",
            '{"type":"ping","health":{"signal":-' + "9" * 5000 + "}}",
            '{"type":"ping","x":' + "1" * 50_000 + "}",
            '{"type":"ping","x":1' + "0" * 400 + ".5e-99999}",
        ]),
        # deep nesting, in and out of a frame
        st.builds(lambda n, c: c[0] * n + c[1] * n, st.integers(1, 20_000),
                  st.sampled_from([("[", "]"), ('{"a":', "}")])),
        st.builds(lambda n: '{"type":"ping","health":' + '{"a":' * n + "1" + "}" * n + "}",
                  st.integers(1, 10_000)),
        # non-JSON text
        st.text(max_size=200).filter(lambda t: not t.strip().startswith(("{", "[", '"'))),
    )


Frame = str | bytes  # a text frame, or a binary one


def show(frame: Frame) -> str:
    """The frame for a failure message (long ones cut)."""
    kind = "binary" if isinstance(frame, bytes) else "text"
    if len(frame) <= 300:
        return f"{kind} frame {frame!r}"
    return f"{kind} frame {frame[:300]!r}… ({len(frame)} in all)"


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of the strategies, drawn in proportion to its weight (one_of
    draws evenly and folds repeats into one)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


def small(texts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return texts.filter(lambda t: len(t.encode()) < MAX_FRAME)


def device_frames(real_ids: list[str]) -> st.SearchStrategy[Frame]:
    real = st.sampled_from(real_ids)
    ids = weighted((2, real), (1, IDS_RANDOM))
    texts = small(weighted(
        (3, encoded(well_formed(ids))),
        (3, encoded(reports(real))),
        (3, encoded(mutated(well_formed(ids)))),
        (1, encoded(unknown_type())),
        (1, encoded(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))),
        (2, raw_texts(ids)),
    ))
    binary = st.one_of(st.binary(max_size=300), texts.map(lambda t: t.encode()))
    return weighted((9, texts), (1, binary))


def hello_frames(real_ids: list[str]) -> st.SearchStrategy[Frame]:
    """First frames: hellos mostly (their values are what gets stored), then anything."""
    ids = weighted((2, st.sampled_from(real_ids)), (1, st.uuids().map(str)), (1, IDS_RANDOM))
    return weighted((4, small(encoded(hellos(ids)))), (2, small(encoded(mutated(hellos(ids))))),
                    (2, device_frames(real_ids)))


# --- what the broker must answer ---------------------------------------------------


def _decoded(data: str | bytes) -> frames.DeviceFrame | str:
    """The frame as the broker reads it, or the error code it must answer."""
    if isinstance(data, bytes):
        return frames.BINARY_FRAME
    try:
        return frames.decode_device(data)
    except frames.FrameError as err:
        return err.code


def expected(data: str | bytes) -> set[str] | str:
    """The answer a frame deserves: an error code, or the frame types that may answer."""
    frame = _decoded(data)
    match frame:
        case str():
            return frame
        case frames.Ping():
            return {"pong"}
        case frames.Hello():
            return frames.BAD_FRAME  # hello was already received
        case _:  # ack or status: a receipt, a cancel, or refused with an error
            return {"receipt", "cancel", "error"}


def expected_first(data: str | bytes) -> set[str] | str:
    """The answer to the first frame of a connection (before `welcome`)."""
    frame = _decoded(data)
    if isinstance(frame, str):
        return frame
    if not isinstance(frame, frames.Hello):
        return frames.HELLO_FIRST
    if frame.protocol != frames.PROTOCOL_VERSION:
        return frames.BAD_PROTOCOL  # and the socket closes with 1002, by design
    return {"welcome"}


class Answers:
    def __init__(self) -> None:
        self.seen: collections.Counter[str] = collections.Counter()
        self.dropped_by: str | None = None  # the frame after which the target's socket closed
        self.recent: collections.deque[str] = collections.deque(maxlen=3)

    def context(self) -> str:
        return "\nthe frames before it, and their answers:\n" + "\n".join(self.recent)


async def send_and_check(target: Phone, frame: Frame, answers: Answers) -> None:
    if answers.dropped_by is not None:  # hypothesis replays the failing example
        raise AssertionError(f"the target's socket was closed after {answers.dropped_by}")
    try:
        await target.ws.send(frame)
        raw = await asyncio.wait_for(target.ws.recv(), ANSWER_S)
    except websockets.ConnectionClosed as closed:
        answers.dropped_by = f"{show(frame)} ({closed.rcvd}){answers.context()}"
        raise AssertionError(f"socket closed ({closed.rcvd}) at {answers.dropped_by}") from None
    except TimeoutError:
        raise AssertionError(f"no answer within {ANSWER_S} s to {show(frame)}") from None
    answer = json.loads(raw)
    answers.recent.append(f"  {show(frame)} -> {raw!r}")
    want = expected(frame)
    kind = answer.get("type")
    answers.seen[kind if kind != "error" else f"error:{answer.get('code')}"] += 1
    if isinstance(want, str):
        assert kind == "error" and answer.get("code") == want, (
            f"{show(frame)} answered {answer!r}, expected an error {want!r}")
        assert isinstance(answer.get("detail"), str), answer
    else:
        assert kind in want, f"{show(frame)} answered {answer!r}, expected one of {want}"
    assert target.ws.state is websockets.State.OPEN, frame


async def first_frame_and_check(ws_url: str, token: str, frame: Frame, answers: Answers) -> None:
    """A fresh connection of the newcomer whose first frame is `frame`."""
    ws = await websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                                  compression=None, open_timeout=5)
    step = "its answer"
    try:
        await ws.send(frame)
        answer = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_S))
        want = expected_first(frame)
        kind = answer.get("type")
        answers.seen[f"first:{kind}" + (f":{answer.get('code')}" if kind == "error" else "")] += 1
        if not isinstance(want, str):
            assert kind == "welcome", f"{show(frame)} answered {answer!r}, expected welcome"
            # Pending ids are answered with cancels (none is the newcomer's to
            # send), then the socket serves frames as usual.
            step = "the pong after welcome"
            await ws.send('{"type":"ping"}')
            while (answer := json.loads(await asyncio.wait_for(ws.recv(), ANSWER_S)))[
                    "type"] != "pong":
                assert answer["type"] == "cancel", f"{show(frame)}: then {answer!r}"
            return
        assert kind == "error" and answer.get("code") == want, (
            f"{show(frame)} answered {answer!r}, expected an error {want!r}")
        if want == frames.BAD_PROTOCOL:
            step = "the close after bad_protocol"
            await asyncio.wait_for(ws.wait_closed(), ANSWER_S)
            assert ws.close_code == 1002, (frame, ws.close_code)
            return
        # Refused, and still waiting for its hello.
        step = "the welcome to a proper hello after the refusal"
        await ws.send('{"type":"hello","protocol":1,"appVersion":"fuzz/1"}')
        answer = json.loads(await asyncio.wait_for(ws.recv(), ANSWER_S))
        assert answer["type"] == "welcome", f"after {show(frame)}: {answer!r}"
    except websockets.ConnectionClosed as closed:
        raise AssertionError(f"the newcomer's socket closed ({closed.rcvd}) waiting for {step}"
                             f" to its first {show(frame)}") from None
    except TimeoutError:
        raise AssertionError(f"no {step} within {ANSWER_S} s to the first {show(frame)}") from None
    finally:
        await ws.close()


def drive(loop: asyncio.AbstractEventLoop, check: Callable[[Frame], Coroutine[Any, Any, None]],
          strategy: st.SearchStrategy[Frame], explicit: list[Frame], n: int) -> None:
    """Run `check` on the explicit frames, then on `n` drawn ones (in a worker
    thread: each check runs in the loop that serves the broker)."""
    def body(frame: Frame) -> None:
        asyncio.run_coroutine_threadsafe(check(frame), loop).result(ANSWER_S * 2)

    test = given(frame=strategy)(body)
    for frame in reversed(explicit):  # hypothesis runs the outermost first
        test = example(frame=frame)(test)
    # No shrinking: after a dropped socket every later frame would fail too,
    # and the first failing frame is the one worth reporting.
    settings(max_examples=n, deadline=None, derandomize=True, database=None,
             phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
             print_blob=False)(test)()


def explicit_hellos(real_ids: list[str]) -> list[Frame]:
    """Always tried first: strings PostgreSQL text cannot hold, and marks it can
    (appVersion and health reach PostgreSQL with the last-seen flush)."""
    return [json.dumps(f) for f in (
        {"type": "hello", "protocol": 1, "appVersion": "v\x001"},
        {"type": "hello", "protocol": 1, "appVersion": "\u202e1.0", "pending": ["a\x00", "\u200f"],
         "health": {"battery": 50, "charging": True, "signal": 4}},
        {"type": "hello", "protocol": 1, "pending": [real_ids[0], real_ids[-1]]},
    )]


def explicit_frames(real_ids: list[str]) -> list[Frame]:
    """Always tried first, on jobs the target has acked (real_ids[:4] are `sending`)."""
    return [json.dumps(f) for f in (
        {"type": "status", "id": real_ids[0], "status": "failed", "error": "no\x00signal"},
        {"type": "status", "id": real_ids[1], "status": "delivered", "error": "\x00"},
        {"type": "status", "id": real_ids[1], "status": "sent", "error": "late\x00"},  # late
        {"type": "status", "id": real_ids[2], "status": "failed", "error": "\u202eliated"},
        {"type": "status", "id": real_ids[3], "status": "sent", "at": "\x00"},
        {"type": "ping", "health": {"battery": 10**30}},
    )]


async def last_seen_flushed(p: Phone, device_id: uuid.UUID, account: Account) -> None:
    """A frame from `p` moves its last-seen in PostgreSQL within the flush interval."""
    before = dt.datetime.now(dt.UTC) - dt.timedelta(milliseconds=50)
    assert (await p.ask({"type": "ping"}))["type"] == "pong"

    async def flushed() -> bool:
        seen = await account.db.fetchval("SELECT last_seen_at FROM devices WHERE id = $1",
                                         device_id)
        return seen is not None and seen >= before
    await wait_for(flushed, what=f"last-seen of {p.device.name} in PostgreSQL (is the "
                                 "broker's last-seen flush still running?)")


# --- the test ------------------------------------------------------------------------


async def test_hostile_frames_get_error_frames_and_drop_nobody(
        server: Server, account: Account, phone: PhoneFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    started = time.monotonic()
    bystander_device = await account.make_device("Bystander", send_rate=0)
    target_device = await account.make_device("Target", send_rate=0)
    newcomer = await account.make_device("Newcomer", send_rate=0)
    bystander = await phone(bystander_device)
    target = await phone(target_device)
    real_ids: list[str] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        # Jobs the target really holds, so that acks and statuses for real
        # ids (with hostile error texts and timestamps) reach PostgreSQL.
        for _ in range(8):
            await target.ask({"type": "ping"})  # the most recently seen: picked
            r = await send_sms(http, account.key)
            assert r.status_code == 201, r.text
            assert r.json()["data"]["device"]["id"] == target_device.id
            real_ids.append((await target.expect("send"))["id"])
        for mid in real_ids[:4]:
            assert (await target.ask({"type": "ack", "id": mid}))["type"] == "receipt"

        loop = asyncio.get_running_loop()
        answers = Answers()

        # 1. First frames of fresh connections of a third phone, the newcomer.
        async def first(frame: Frame) -> None:
            await first_frame_and_check(server.ws_url, newcomer.token, frame, answers)
        # Whatever a hello carried, presence still reaches PostgreSQL (what
        # the CLI shows): the last-seen flush goes on for every device. Each
        # explicit hello gets a flush of its own (a later hello of the same
        # device would overwrite its values before the flush).
        for frame in explicit_hellos(real_ids):
            await first(frame)
            await last_seen_flushed(bystander, uuid.UUID(bystander_device.id), account)
        await asyncio.to_thread(drive, loop, first, hello_frames(real_ids), [], HELLO_EXAMPLES)
        await last_seen_flushed(bystander, uuid.UUID(bystander_device.id), account)

        # 2. Frames on the target's open socket.
        async def on_target(frame: Frame) -> None:
            await send_and_check(target, frame, answers)
        await asyncio.to_thread(drive, loop, on_target, device_frames(real_ids),
                                explicit_frames(real_ids), EXAMPLES)
        fuzz_s = time.monotonic() - started

        # The target is still there, got one answer a frame, and still answers.
        await target.nothing(0.2)
        assert (await target.ask({"type": "ping"}))["type"] == "pong"
        # The bystander saw nothing of it, and still works end to end.
        await bystander.nothing(0.2)
        await target.close()
        r = await send_sms(http, account.key, message="still here")
        assert r.status_code == 201, r.text
        assert r.json()["data"]["device"]["id"] == bystander_device.id
        job = await bystander.expect("send")
        assert (await bystander.ask({"type": "ack", "id": job["id"]})) == {
            "type": "receipt", "id": job["id"], "status": "sending"}
        assert (await bystander.ask({"type": "status", "id": job["id"],
                                     "status": "delivered"}))["status"] == "delivered"
        got = (await http.get(f"/messages/{job['id']}", headers=account.headers)).json()
        assert got["data"]["status"] == "delivered"

        # Every message the target held can still be read back, in a status
        # of the lifecycle, with a history that begins with `queued`.
        for mid in real_ids:
            r = await http.get(f"/messages/{mid}", headers=account.headers)
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            assert data["status"] in lifecycle.STATUSES, data
            assert data["history"][0]["status"] == lifecycle.QUEUED, data
        devices = await http.get("/devices", headers=account.headers)
        assert devices.status_code == 200, devices.text

        await last_seen_flushed(bystander, uuid.UUID(bystander_device.id), account)

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, "broker logged errors:\n" + "\n".join(
        f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in errors[:5])
    print(f"\nframes fuzz: {sum(answers.seen.values())} frames in {fuzz_s:.1f} s; "
          f"answers {dict(sorted(answers.seen.items()))}")
    assert sum(answers.seen.values()) >= EXAMPLES // 2


@pytest.mark.parametrize("raw", [
    '{"type":"ack","id":"\ud800"}'.encode("utf-8", "surrogatepass"),  # a lone surrogate
    b'{"type":"ack","id":"\xc0\xaf"}',  # overlong
    b'{"type":"ping"}\xe2\x82',  # cut inside a character
    b"\xff\xfe",
], ids=["lone-surrogate", "overlong", "truncated-char", "ff-fe"])
async def test_text_frame_not_utf8_fails_only_that_connection(
        server: Server, account: Account, phone: PhoneFactory, raw: bytes) -> None:
    """A text frame that is not UTF-8 cannot even be read as text: RFC 6455
    section 8.1 has the endpoint fail the connection (1007), below the
    broker's frame handling. Only that connection: another phone of the
    account keeps working, and the same phone may connect again."""
    bystander = await phone(await account.make_device("Bystander"))
    device = await account.make_device("Sender")
    p = await phone(device)
    await p.ws.send(raw, text=True)
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(p.ws.recv(), ANSWER_S)
    assert p.ws.close_code == 1007
    assert (await bystander.ask({"type": "ping"}))["type"] == "pong"
    again = await phone(device)
    assert (await again.ask({"type": "ping"}))["type"] == "pong"
