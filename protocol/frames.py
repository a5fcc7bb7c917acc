"""Device WebSocket frames (contract section 4) as tagged-union msgspec Structs.

Everything a phone and the broker say to each other over ``/devices/ws`` is
one JSON object with a ``type``. New fields get defaults so that older peers
keep working; unknown fields are ignored.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal, TypeVar

import msgspec

_T = TypeVar("_T")

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024

# Error codes carried by ``error`` frames (and FrameError).
BAD_JSON = "bad_json"
BAD_FRAME = "bad_frame"
UNKNOWN_TYPE = "unknown_type"
BINARY_FRAME = "binary_frame"
TOO_LARGE = "too_large"
BAD_PROTOCOL = "bad_protocol"
NOT_YOURS = "not_yours"
NOT_ACKED = "not_acked"
REFUSED = "refused"
HELLO_FIRST = "hello_first"
UNAVAILABLE = "unavailable"  # the broker could not store it now: keep it, send it again

Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]
Signal = Annotated[int, msgspec.Meta(ge=0, le=4)]
# No NUL anywhere: PostgreSQL text cannot hold it, so a phone's string that
# will be stored is refused here, at the edge, with a bad_frame error.
_NO_NUL = "^[^\x00]*$"
MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=_NO_NUL)]
ShortText = Annotated[str, msgspec.Meta(max_length=500, pattern=_NO_NUL)]


class FrameError(Exception):
    """A frame the broker (or a phone) cannot take; ``code`` goes on the wire."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Health(msgspec.Struct, frozen=True, omit_defaults=True):
    battery: Percent | None = None
    charging: bool | None = None
    signal: Signal | None = None


# --- device -> broker -------------------------------------------------------


class Hello(msgspec.Struct, frozen=True, tag="hello", tag_field="type", omit_defaults=True):
    protocol: int
    appVersion: ShortText = ""
    pending: Annotated[list[MessageId], msgspec.Meta(max_length=1000)] = []
    health: Health | None = None


class Ack(msgspec.Struct, frozen=True, tag="ack", tag_field="type"):
    id: MessageId


ReportedStatus = Literal["sent", "delivered", "failed"]


class Status(msgspec.Struct, frozen=True, tag="status", tag_field="type", omit_defaults=True):
    id: MessageId
    status: ReportedStatus
    error: ShortText | None = None
    at: str | None = None  # the phone's own timestamp, kept as given (informational)


class Ping(msgspec.Struct, frozen=True, tag="ping", tag_field="type", omit_defaults=True):
    health: Health | None = None


# An SMS the phone received (contract sections 4 and 9, v2). `sender` is kept
# as given: alphanumeric sender ids ("MyBank") exist. `receivedAt` is ISO 8601
# with an offset (RFC 3339), when the phone got it; `sim` the 1-based slot.
Sender = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_NO_NUL)]
SmsText = Annotated[str, msgspec.Meta(max_length=10_000, pattern=_NO_NUL)]
SimSlot = Annotated[int, msgspec.Meta(ge=1, le=16)]


class Incoming(msgspec.Struct, frozen=True, tag="incoming", tag_field="type",
               omit_defaults=True):
    id: MessageId  # the phone's own id for the SMS: stored once per (device, id)
    sender: Sender
    message: SmsText
    receivedAt: Annotated[dt.datetime, msgspec.Meta(tz=True)]
    sim: SimSlot | None = None


DeviceFrame = Hello | Ack | Status | Ping | Incoming


# --- broker -> device -------------------------------------------------------


class Welcome(msgspec.Struct, frozen=True, tag="welcome", tag_field="type"):
    deviceId: str
    heartbeatSeconds: int
    serverTime: str


class Send(msgspec.Struct, frozen=True, tag="send", tag_field="type"):
    id: str
    recipient: str
    message: str


class Receipt(msgspec.Struct, frozen=True, tag="receipt", tag_field="type"):
    id: str
    status: str  # where a job stands now, or RECEIVED for an `incoming`


RECEIVED = "received"  # the receipt's status for an `incoming` SMS: it is stored


class Cancel(msgspec.Struct, frozen=True, tag="cancel", tag_field="type"):
    id: str
    reason: str


class Error(msgspec.Struct, frozen=True, tag="error", tag_field="type", omit_defaults=True):
    code: str
    detail: str
    id: str | None = None


class Pong(msgspec.Struct, frozen=True, tag="pong", tag_field="type"):
    pass


BrokerFrame = Welcome | Send | Receipt | Cancel | Error | Pong

_DEVICE_TAGS = frozenset({"hello", "ack", "status", "ping", "incoming"})
_BROKER_TAGS = frozenset({"welcome", "send", "receipt", "cancel", "error", "pong"})

# Built once at import: hot paths never construct encoders or decoders.
_encoder = msgspec.json.Encoder()
_device_decoder: msgspec.json.Decoder[DeviceFrame] = msgspec.json.Decoder(DeviceFrame)
_broker_decoder: msgspec.json.Decoder[BrokerFrame] = msgspec.json.Decoder(BrokerFrame)


class _Probe(msgspec.Struct):
    """Only the tag of a frame that failed to decode; other values are skipped, never converted."""

    type: msgspec.Raw = msgspec.Raw()


_probe_decoder = msgspec.json.Decoder(_Probe)
_tag_decoder = msgspec.json.Decoder(str)


def encode(frame: DeviceFrame | BrokerFrame) -> bytes:
    return _encoder.encode(frame)


def _classify(data: bytes | str, known: frozenset[str], err: msgspec.DecodeError) -> FrameError:
    """Turn a msgspec failure into the most useful named error.

    bad_json: not JSON text at all; bad_frame: JSON, but not a frame we can take.
    The probe converts nothing but ``type``, so a value msgspec refuses elsewhere
    (an integer beyond 4300 digits, say) cannot make valid JSON look malformed.
    """
    try:
        probe = _probe_decoder.decode(data)
    except msgspec.ValidationError:
        return FrameError(BAD_FRAME, "frame is not a JSON object")
    except msgspec.DecodeError:
        return FrameError(BAD_JSON, "frame is not valid JSON")
    except RecursionError:
        return FrameError(BAD_FRAME, "frame is nested too deeply")
    try:
        kind = _tag_decoder.decode(probe.type)
    except msgspec.DecodeError:
        return FrameError(BAD_FRAME, "frame has no string 'type'")
    if kind not in known:
        return FrameError(UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}")
    return FrameError(BAD_FRAME, str(err)[:300])


def _checked(data: bytes | str) -> bytes | str:
    """The frame if it is at most 64 KiB of UTF-8 (contract section 4; RFC 8259 8.1).

    A str is measured in UTF-8 bytes, not characters, and one holding a lone
    surrogate has no UTF-8 form at all. Bytes are checked for UTF-8 up front:
    msgspec validates only the strings it converts, not the ones it skips.
    """
    if len(data) > MAX_FRAME_BYTES:  # UTF-8 is never shorter than the str
        raise FrameError(TOO_LARGE, f"frame over {MAX_FRAME_BYTES} bytes")
    try:
        if isinstance(data, str):
            if data.isascii():
                return data
            data = data.encode("utf-8")
            if len(data) > MAX_FRAME_BYTES:
                raise FrameError(TOO_LARGE, f"frame over {MAX_FRAME_BYTES} bytes")
        else:
            data.decode("utf-8")
    except UnicodeError:
        raise FrameError(BAD_JSON, "frame is not valid UTF-8") from None
    return data


def _decode(decoder: msgspec.json.Decoder[_T], data: bytes | str, known: frozenset[str]) -> _T:
    data = _checked(data)
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as err:
        raise _classify(data, known, err) from None
    except RecursionError:  # msgspec's own depth guard: deep nesting is input, not our bug
        raise FrameError(BAD_FRAME, "frame is nested too deeply") from None


def decode_device(data: bytes | str) -> DeviceFrame:
    """Decode a frame a phone sent; raises FrameError with a wire code."""
    return _decode(_device_decoder, data, _DEVICE_TAGS)


def decode_broker(data: bytes | str) -> BrokerFrame:
    """Decode a frame the broker sent (used by device clients)."""
    return _decode(_broker_decoder, data, _BROKER_TAGS)
