"""Device frames (contract section 4): round trips, exact JSON, malformed input.

Pure and synchronous: bytes and str in, Structs or FrameError out.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from protocol import frames
from protocol.frames import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Cancel,
    Error,
    FrameError,
    Health,
    Hello,
    Ping,
    Pong,
    Receipt,
    Send,
    Status,
    Welcome,
    decode_broker,
    decode_device,
    encode,
)

WIRE_CODES = {
    frames.BAD_JSON,
    frames.BAD_FRAME,
    frames.UNKNOWN_TYPE,
    frames.BINARY_FRAME,
    frames.TOO_LARGE,
    frames.BAD_PROTOCOL,
    frames.NOT_YOURS,
    frames.NOT_ACKED,
    frames.REFUSED,
    frames.HELLO_FIRST,
}

DEVICE_FRAMES: list[Any] = [
    Hello(protocol=1),
    Hello(protocol=1, appVersion="2.3.1"),
    Hello(
        protocol=1,
        appVersion="2.3.1 (42)",
        pending=["m1", "m2"],
        health=Health(battery=87, charging=True, signal=3),
    ),
    Hello(protocol=1, health=Health()),
    Ack(id="3f2c0a9e-0d0b-4a8e-9a55-2b5f7c1c9e01"),
    Status(id="m1", status="sent"),
    Status(id="m1", status="delivered", at="2024-05-01T12:00:00Z"),
    Status(id="m1", status="failed", error="RESULT_ERROR_NO_SERVICE", at="2024-05-01T12:00:00Z"),
    Ping(),
    Ping(health=Health(battery=0, charging=False, signal=0)),
    Ping(health=Health(battery=100, signal=4)),
    frames.Incoming(id="sms-1", sender="+212600000001", message="Votre code: 1234",
                    receivedAt=dt.datetime(2024, 5, 1, 12, 0, 3, 120000, tzinfo=dt.UTC)),
    frames.Incoming(id="sms-2", sender="MyBank", message="", sim=2,
                    receivedAt=dt.datetime(2024, 5, 1, 14, 0, tzinfo=dt.timezone(
                        dt.timedelta(hours=2)))),
]

BROKER_FRAMES: list[Any] = [
    Welcome(deviceId="d1", heartbeatSeconds=20, serverTime="2024-05-01T12:00:00.000Z"),
    Send(id="m1", recipient="+212600000000", message="Your code is 4829"),
    Send(id="m2", recipient="+16502530000", message="héllo ✓ — ünïcode 📱"),
    Receipt(id="m1", status="sending"),
    Receipt(id="m1", status="delivered"),
    Cancel(id="m1", reason="expired"),
    Error(code="not_acked", detail="ack the job first", id="m1"),
    Error(code="bad_json", detail="frame is not valid JSON"),
    Pong(),
]


def _ids(items: list[Any]) -> list[str]:
    return [f"{i}-{type(x).__name__}" for i, x in enumerate(items)]


# --- round trips -------------------------------------------------------------


@pytest.mark.parametrize("frame", DEVICE_FRAMES, ids=_ids(DEVICE_FRAMES))
def test_device_frame_round_trip(frame: Any) -> None:
    data = encode(frame)
    assert decode_device(data) == frame
    assert type(decode_device(data)) is type(frame)
    assert decode_device(data.decode()) == frame  # text frames arrive as str


@pytest.mark.parametrize("frame", BROKER_FRAMES, ids=_ids(BROKER_FRAMES))
def test_broker_frame_round_trip(frame: Any) -> None:
    data = encode(frame)
    assert decode_broker(data) == frame
    assert type(decode_broker(data)) is type(frame)
    assert decode_broker(data.decode()) == frame


@pytest.mark.parametrize("frame", DEVICE_FRAMES, ids=_ids(DEVICE_FRAMES))
def test_device_frame_is_not_a_broker_frame(frame: Any) -> None:
    with pytest.raises(FrameError) as info:
        decode_broker(encode(frame))
    assert info.value.code == frames.UNKNOWN_TYPE


@pytest.mark.parametrize("frame", BROKER_FRAMES, ids=_ids(BROKER_FRAMES))
def test_broker_frame_is_not_a_device_frame(frame: Any) -> None:
    with pytest.raises(FrameError) as info:
        decode_device(encode(frame))
    assert info.value.code == frames.UNKNOWN_TYPE


def test_every_frame_type_is_exercised() -> None:
    device = {type(f) for f in DEVICE_FRAMES}
    broker = {type(f) for f in BROKER_FRAMES}
    assert device == set(frames.DeviceFrame.__args__)  # type: ignore[attr-defined]
    assert broker == set(frames.BrokerFrame.__args__)  # type: ignore[attr-defined]


def test_protocol_version() -> None:
    assert PROTOCOL_VERSION == 1
    assert MAX_FRAME_BYTES == 64 * 1024


# --- exact JSON --------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "wire"),
    [
        (
            Welcome(deviceId="d1", heartbeatSeconds=20, serverTime="2024-05-01T12:00:00Z"),
            b'{"type":"welcome","deviceId":"d1","heartbeatSeconds":20,'
            b'"serverTime":"2024-05-01T12:00:00Z"}',
        ),
        (Pong(), b'{"type":"pong"}'),
        (Ping(), b'{"type":"ping"}'),
        (Hello(protocol=1), b'{"type":"hello","protocol":1}'),
        (
            Hello(protocol=1, appVersion="1.0", pending=["m1"], health=Health(battery=50)),
            b'{"type":"hello","protocol":1,"appVersion":"1.0","pending":["m1"],'
            b'"health":{"battery":50}}',
        ),
        (Ack(id="m1"), b'{"type":"ack","id":"m1"}'),
        (Status(id="m1", status="sent"), b'{"type":"status","id":"m1","status":"sent"}'),
        (
            Status(id="m1", status="failed", error="no service"),
            b'{"type":"status","id":"m1","status":"failed","error":"no service"}',
        ),
        (
            Send(id="m1", recipient="+212600000000", message="Your code is 4829"),
            b'{"type":"send","id":"m1","recipient":"+212600000000","message":"Your code is 4829"}',
        ),
        (Receipt(id="m1", status="sending"), b'{"type":"receipt","id":"m1","status":"sending"}'),
        (Cancel(id="m1", reason="expired"), b'{"type":"cancel","id":"m1","reason":"expired"}'),
        (Error(code="bad_json", detail="x"), b'{"type":"error","code":"bad_json","detail":"x"}'),
        (
            Error(code="not_yours", detail="x", id="m1"),
            b'{"type":"error","code":"not_yours","detail":"x","id":"m1"}',
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, msgspec.Struct) else "",
)
def test_exact_json(frame: Any, wire: bytes) -> None:
    assert encode(frame) == wire


def test_welcome_has_the_contract_fields() -> None:
    frame = Welcome(deviceId="d1", heartbeatSeconds=20, serverTime="t")
    assert msgspec.json.decode(encode(frame)) == {
        "type": "welcome",
        "deviceId": "d1",
        "heartbeatSeconds": 20,
        "serverTime": "t",
    }


def test_non_ascii_is_utf8_on_the_wire() -> None:
    data = encode(Send(id="m1", recipient="+1", message="📱"))
    assert "📱".encode() in data


# --- tolerant reading --------------------------------------------------------


def test_unknown_fields_are_ignored_by_the_broker() -> None:
    data = (
        '{"type":"ack","id":"m1","extra":{"nested":[1,2,{"x":null}]},"v":2,'
        '"big":123456789012345678901234567890,"f":1e999}'
    )
    assert decode_device(data) == Ack(id="m1")


def test_unknown_fields_in_health_are_ignored() -> None:
    data = '{"type":"ping","health":{"battery":5,"temperature":41.5,"network":"5G"}}'
    assert decode_device(data) == Ping(health=Health(battery=5))


def test_unknown_fields_are_ignored_by_the_phone() -> None:
    data = '{"type":"send","id":"m1","recipient":"+1","message":"hi","priority":"high"}'
    assert decode_broker(data) == Send(id="m1", recipient="+1", message="hi")


def test_field_order_does_not_matter() -> None:
    assert decode_device('{"id":"m1","status":"sent","type":"status"}') == Status(
        id="m1", status="sent"
    )


def test_whitespace_around_the_object_is_fine() -> None:
    assert decode_device(' \n{ "type" : "ping" }\n ') == Ping()


def test_optional_fields_are_defaulted() -> None:
    hello = decode_device('{"type":"hello","protocol":1}')
    assert hello == Hello(protocol=1, appVersion="", pending=[], health=None)
    status = decode_device('{"type":"status","id":"m1","status":"delivered"}')
    assert isinstance(status, Status)
    assert (status.error, status.at) == (None, None)
    assert decode_device('{"type":"ping"}') == Ping(health=None)
    ping = decode_device('{"type":"ping","health":{}}')
    assert ping == Ping(health=Health(battery=None, charging=None, signal=None))
    error = decode_broker('{"type":"error","code":"bad_json","detail":"x"}')
    assert isinstance(error, Error) and error.id is None


def test_explicit_nulls_are_the_defaults() -> None:
    data = '{"type":"hello","protocol":1,"health":{"battery":null,"charging":null,"signal":null}}'
    assert decode_device(data) == Hello(protocol=1, health=Health())
    data = '{"type":"status","id":"m1","status":"failed","error":null,"at":null}'
    assert decode_device(data) == Status(id="m1", status="failed")


def test_default_pending_is_not_shared() -> None:
    first = decode_device('{"type":"hello","protocol":1}')
    second = decode_device('{"type":"hello","protocol":1}')
    assert isinstance(first, Hello) and isinstance(second, Hello)
    assert first.pending is not second.pending


def test_other_protocol_versions_decode() -> None:
    # The broker, not the decoder, answers `bad_protocol`: it needs the frame to say so.
    assert decode_device('{"type":"hello","protocol":2}') == Hello(protocol=2)


def test_health_boundaries_are_accepted() -> None:
    for battery in (0, 100):
        for signal in (0, 4):
            data = f'{{"type":"ping","health":{{"battery":{battery},"signal":{signal}}}}}'
            assert decode_device(data) == Ping(health=Health(battery=battery, signal=signal))


# --- size --------------------------------------------------------------------


def _padded(size: int, fill: str = "x") -> str:
    """An ack frame of exactly ``size`` bytes of UTF-8 (``fill`` is 1-4 bytes)."""
    head, tail = '{"type":"ack","id":"m1","pad":"', '"}'
    room = size - len(head) - len(tail)
    width = len(fill.encode())
    text = head + fill * (room // width) + "x" * (room % width) + tail
    assert len(text.encode()) == size
    return text


@pytest.mark.parametrize("fill", ["x", "é", "€", "📱"])
def test_a_frame_of_exactly_64_kib_is_taken(fill: str) -> None:
    text = _padded(MAX_FRAME_BYTES, fill)
    assert decode_device(text) == Ack(id="m1")
    assert decode_device(text.encode()) == Ack(id="m1")


@pytest.mark.parametrize("fill", ["x", "é", "€", "📱"])
def test_a_frame_over_64_kib_is_too_large(fill: str) -> None:
    text = _padded(MAX_FRAME_BYTES + 1, fill)
    for data in (text, text.encode()):
        with pytest.raises(FrameError) as info:
            decode_device(data)
        assert info.value.code == frames.TOO_LARGE


def test_size_counts_utf8_bytes_not_characters() -> None:
    # 30 000 characters, 90 000 bytes: too large, though under 64 Ki characters.
    text = '{"type":"ack","id":"m1","pad":"' + "€" * 30_000 + '"}'
    assert len(text) < MAX_FRAME_BYTES < len(text.encode())
    with pytest.raises(FrameError) as info:
        decode_device(text)
    assert info.value.code == frames.TOO_LARGE


def test_too_large_is_checked_before_parsing() -> None:
    with pytest.raises(FrameError) as info:
        decode_device(b"\xff" * (MAX_FRAME_BYTES + 1))
    assert info.value.code == frames.TOO_LARGE
    with pytest.raises(FrameError) as info:
        decode_broker("[" * (MAX_FRAME_BYTES + 1))
    assert info.value.code == frames.TOO_LARGE


# --- malformed frames --------------------------------------------------------

BAD_JSON = frames.BAD_JSON
BAD_FRAME = frames.BAD_FRAME
UNKNOWN = frames.UNKNOWN_TYPE

MALFORMED_DEVICE: list[tuple[str, str | bytes, str]] = [
    # not JSON at all
    ("empty", "", BAD_JSON),
    ("blank", "  \n", BAD_JSON),
    ("words", "hello", BAD_JSON),
    ("truncated", '{"type":"ack","id":"m1"', BAD_JSON),
    ("truncated string", '{"type":"ack","id":"m1', BAD_JSON),
    ("truncated after key", '{"type":', BAD_JSON),
    ("single quotes", "{'type':'ping'}", BAD_JSON),
    ("trailing comma", '{"type":"ping",}', BAD_JSON),
    ("trailing data", '{"type":"ping"} x', BAD_JSON),
    ("two objects", '{"type":"ping"}{"type":"ping"}', BAD_JSON),
    ("NaN", '{"type":"ack","id":"m1","x":NaN}', BAD_JSON),
    ("comment", '{"type":"ping"} // hi', BAD_JSON),
    ("control char in string", '{"type":"ack","id":"m\x01"}', BAD_JSON),
    ("nul after object", b'{"type":"ping"}\x00', BAD_JSON),
    ("utf-8 BOM", b'\xef\xbb\xbf{"type":"ping"}', BAD_JSON),
    # not UTF-8 / not Unicode
    ("invalid utf-8 in a field", b'{"type":"ack","id":"\xff\xfe"}', BAD_JSON),
    ("invalid utf-8 in an unknown field", b'{"type":"ack","id":"m1","x":"\xc3"}', BAD_JSON),
    ("latin-1 bytes", '{"type":"ack","id":"é"}'.encode("latin-1"), BAD_JSON),
    ("utf-16", '{"type":"ping"}'.encode("utf-16"), BAD_JSON),
    ("overlong utf-8", b'{"type":"ack","id":"\xc0\xaf"}', BAD_JSON),
    ("encoded surrogate", b'{"type":"ack","id":"\xed\xa0\x80"}', BAD_JSON),
    ("lone surrogate in str", '{"type":"ack","id":"\ud800"}', BAD_JSON),
    ("lone surrogate escape", '{"type":"ack","id":"\\ud800"}', BAD_JSON),
    # JSON, but not an object
    ("array", '[{"type":"ping"}]', BAD_FRAME),
    ("number", "42", BAD_FRAME),
    ("string", '"ping"', BAD_FRAME),
    ("null", "null", BAD_FRAME),
    ("true", "true", BAD_FRAME),
    ("deeply nested array", "[" * 5000 + "]" * 5000, BAD_FRAME),
    # an object without a usable type
    ("empty object", "{}", BAD_FRAME),
    ("no type", '{"id":"m1"}', BAD_FRAME),
    ("type null", '{"type":null}', BAD_FRAME),
    ("type number", '{"type":1,"id":"m1"}', BAD_FRAME),
    ("type bool", '{"type":true}', BAD_FRAME),
    ("type array", '{"type":["ack"],"id":"m1"}', BAD_FRAME),
    ("type object", '{"type":{"name":"ack"}}', BAD_FRAME),
    ("type huge int", '{"type":' + "9" * 5000 + "}", BAD_FRAME),
    # a type we do not know
    ("unknown type", '{"type":"shout"}', UNKNOWN),
    ("empty type", '{"type":""}', UNKNOWN),
    ("type case", '{"type":"ACK","id":"m1"}', UNKNOWN),
    ("broker type", '{"type":"welcome","deviceId":"d","heartbeatSeconds":20,"serverTime":"t"}', UNKNOWN),
    ("pong from phone", '{"type":"pong"}', UNKNOWN),
    ("long unknown type", '{"type":"' + "z" * 10_000 + '"}', UNKNOWN),
    # missing required fields
    ("hello without protocol", '{"type":"hello","appVersion":"1"}', BAD_FRAME),
    ("ack without id", '{"type":"ack"}', BAD_FRAME),
    ("status without status", '{"type":"status","id":"m1"}', BAD_FRAME),
    ("status without id", '{"type":"status","status":"sent"}', BAD_FRAME),
    # wrong field types
    ("protocol as string", '{"type":"hello","protocol":"1"}', BAD_FRAME),
    ("protocol as float", '{"type":"hello","protocol":1.5}', BAD_FRAME),
    ("protocol as bool", '{"type":"hello","protocol":true}', BAD_FRAME),
    ("protocol null", '{"type":"hello","protocol":null}', BAD_FRAME),
    ("appVersion number", '{"type":"hello","protocol":1,"appVersion":2}', BAD_FRAME),
    ("pending not a list", '{"type":"hello","protocol":1,"pending":"m1"}', BAD_FRAME),
    ("pending of numbers", '{"type":"hello","protocol":1,"pending":[1,2]}', BAD_FRAME),
    ("health not an object", '{"type":"ping","health":[87]}', BAD_FRAME),
    ("id number", '{"type":"ack","id":1}', BAD_FRAME),
    ("id null", '{"type":"ack","id":null}', BAD_FRAME),
    ("id object", '{"type":"ack","id":{"id":"m1"}}', BAD_FRAME),
    ("status not reportable", '{"type":"status","id":"m1","status":"sending"}', BAD_FRAME),
    ("status queued", '{"type":"status","id":"m1","status":"queued"}', BAD_FRAME),
    ("status uppercase", '{"type":"status","id":"m1","status":"SENT"}', BAD_FRAME),
    ("error number", '{"type":"status","id":"m1","status":"failed","error":7}', BAD_FRAME),
    ("charging as string", '{"type":"ping","health":{"charging":"yes"}}', BAD_FRAME),
    ("charging as int", '{"type":"ping","health":{"charging":1}}', BAD_FRAME),
    ("battery as float", '{"type":"ping","health":{"battery":50.5}}', BAD_FRAME),
    ("battery as string", '{"type":"ping","health":{"battery":"50"}}', BAD_FRAME),
    # out of range
    ("battery 101", '{"type":"ping","health":{"battery":101}}', BAD_FRAME),
    ("battery -1", '{"type":"ping","health":{"battery":-1}}', BAD_FRAME),
    ("signal 5", '{"type":"ping","health":{"signal":5}}', BAD_FRAME),
    ("signal -1", '{"type":"hello","protocol":1,"health":{"signal":-1}}', BAD_FRAME),
    ("battery huge", '{"type":"ping","health":{"battery":' + "9" * 40 + "}}", BAD_FRAME),
    ("protocol beyond int digits", '{"type":"hello","protocol":' + "9" * 5000 + "}", BAD_FRAME),
    ("empty id", '{"type":"ack","id":""}', BAD_FRAME),
    ("id over 64", '{"type":"ack","id":"' + "m" * 65 + '"}', BAD_FRAME),
    ("appVersion over 500", '{"type":"hello","protocol":1,"appVersion":"' + "v" * 501 + '"}', BAD_FRAME),
    (
        "error over 500",
        '{"type":"status","id":"m1","status":"failed","error":"' + "e" * 501 + '"}',
        BAD_FRAME,
    ),
    ("pending over 1000", '{"type":"hello","protocol":1,"pending":[' + ",".join(['"m"'] * 1001) + "]}", BAD_FRAME),
    ("pending with empty id", '{"type":"hello","protocol":1,"pending":[""]}', BAD_FRAME),
    # valid type, valid JSON, but a huge value elsewhere makes msgspec refuse it
    ("wrong field and huge int", '{"type":"ack","id":1,"x":' + "9" * 5000 + "}", BAD_FRAME),
    # deep nesting inside an otherwise fine frame
    ("deep unknown field", '{"type":"ack","id":"m1","x":' + "[" * 5000 + "]" * 5000 + "}", BAD_FRAME),
    ("deep and wrong", '{"type":"ack","id":1,"x":' + "[" * 5000 + "]" * 5000 + "}", BAD_FRAME),
    ("deep objects", '{"type":"ping","x":' + '{"a":' * 5000 + "1" + "}" * 5000 + "}", BAD_FRAME),
]


@pytest.mark.parametrize(("data", "code"), [c[1:] for c in MALFORMED_DEVICE], ids=[c[0] for c in MALFORMED_DEVICE])
def test_malformed_device_frame(data: str | bytes, code: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_device(data)
    assert info.value.code == code
    _assert_wire_safe(info.value)
    if isinstance(data, str):
        try:
            as_bytes = data.encode()
        except UnicodeEncodeError:
            return
        with pytest.raises(FrameError) as info:
            decode_device(as_bytes)
        assert info.value.code == code


MALFORMED_BROKER: list[tuple[str, str | bytes, str]] = [
    ("not json", "nope", BAD_JSON),
    ("truncated", '{"type":"send","id":"m1"', BAD_JSON),
    ("invalid utf-8", b'{"type":"send","id":"m1","recipient":"+1","message":"\xff"}', BAD_JSON),
    ("array", "[]", BAD_FRAME),
    ("no type", '{"id":"m1"}', BAD_FRAME),
    ("unknown type", '{"type":"shout"}', UNKNOWN),
    ("device type", '{"type":"ack","id":"m1"}', UNKNOWN),
    ("send without message", '{"type":"send","id":"m1","recipient":"+1"}', BAD_FRAME),
    ("welcome heartbeat as string",
     '{"type":"welcome","deviceId":"d","heartbeatSeconds":"20","serverTime":"t"}', BAD_FRAME),
    ("receipt without status", '{"type":"receipt","id":"m1"}', BAD_FRAME),
    ("cancel without reason", '{"type":"cancel","id":"m1"}', BAD_FRAME),
    ("error without detail", '{"type":"error","code":"x"}', BAD_FRAME),
]


@pytest.mark.parametrize(("data", "code"), [c[1:] for c in MALFORMED_BROKER], ids=[c[0] for c in MALFORMED_BROKER])
def test_malformed_broker_frame(data: str | bytes, code: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_broker(data)
    assert info.value.code == code
    _assert_wire_safe(info.value)


def _assert_wire_safe(err: FrameError) -> None:
    """What goes into an `error` frame: a known code and a short, plain detail."""
    assert err.code in WIRE_CODES
    assert isinstance(err.detail, str) and 0 < len(err.detail) <= 300
    assert "Traceback" not in err.detail
    assert err.__cause__ is None and err.__suppress_context__


def test_frame_error_carries_code_and_detail() -> None:
    err = FrameError(frames.BAD_FRAME, "why")
    assert (err.code, err.detail, str(err)) == (frames.BAD_FRAME, "why", "why")


def test_bad_frame_detail_names_the_field() -> None:
    with pytest.raises(FrameError) as info:
        decode_device('{"type":"ping","health":{"battery":101}}')
    assert "battery" in info.value.detail


# --- nothing but FrameError, whatever comes in ------------------------------


def _decode_or_error(decode: Callable[[bytes | str], Any], data: bytes | str) -> Any:
    try:
        return decode(data)
    except FrameError as err:
        _assert_wire_safe(err)
        return err


@pytest.mark.parametrize("frame", DEVICE_FRAMES + BROKER_FRAMES, ids=_ids(DEVICE_FRAMES + BROKER_FRAMES))
def test_every_truncation_is_bad_json(frame: Any) -> None:
    data = encode(frame)
    for end in range(len(data)):
        for decode in (decode_device, decode_broker):
            result = _decode_or_error(decode, data[:end])
            assert isinstance(result, FrameError), data[:end]
            assert result.code in {BAD_JSON, BAD_FRAME}, (data[:end], result.code)
            if end and data[:1] == b"{":
                assert result.code == BAD_JSON, data[:end]


def test_mutated_frames_only_ever_raise_frame_error() -> None:
    # A seeded, deterministic stand-in for property testing: flip, insert and
    # delete bytes of valid frames; every result is a frame or a FrameError.
    rng = random.Random(20240501)
    seeds = [encode(f) for f in DEVICE_FRAMES + BROKER_FRAMES]
    alphabet = b'{}[]":,\\ -0123456789eE.+tfnulray\x00\x7f\xc3\xa9\xff\xed\xa0\x80'
    structs = tuple(frames.DeviceFrame.__args__ + frames.BrokerFrame.__args__)  # type: ignore[attr-defined]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and pos < len(data):
                data[pos] = rng.choice(alphabet)
            elif op == 1:
                data.insert(pos, rng.choice(alphabet))
            elif pos < len(data):
                del data[pos]
        raw = bytes(data)
        for decode in (decode_device, decode_broker):
            result = _decode_or_error(decode, raw)
            assert isinstance(result, (FrameError, *structs)), raw
            if not isinstance(result, FrameError):
                try:
                    text = raw.decode()
                except UnicodeDecodeError:
                    pytest.fail(f"accepted a frame that is not UTF-8: {raw!r}")
                assert decode(text) == result
