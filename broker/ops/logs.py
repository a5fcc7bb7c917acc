"""Structured (JSON-lines) logging with a request id.

Log lines carry ids, routes, statuses and timings, never a header, body,
key, token or password: secrets cannot leak through a log call that never
receives them.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from typing import Any

import msgspec

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The client address of the request (or phone socket) a line is logged in
# (CONTRACT section 12: every log line of a request carries it).
client: contextvars.ContextVar[str | None] = contextvars.ContextVar("client", default=None)
_encoder = msgspec.json.Encoder()
_STD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "color_message"}  # uvicorn's terminal-coloured copy of msg


# A second line of defence for lines we do not write ourselves: uvicorn's
# websockets implementation logs every handshake header at DEBUG, the
# device's `Authorization` among them.
_SECRET = re.compile(r"\b(smsgw|smsdev)_([0-9a-f]{8})_[A-Za-z0-9_-]+")
_WEBHOOK_SECRET = re.compile(r"\bwhsec_[A-Za-z0-9+/=]+")
_CREDENTIAL_HEADER = re.compile(r"(?i)\b(authorization|x-api-key)(\s*[:=]\s*)[^\s,'\"}]+(\s+[^\s,'\"}]+)?")


def redact(text: str) -> str:
    text = _CREDENTIAL_HEADER.sub(r"\1\2[redacted]", text)
    text = _WEBHOOK_SECRET.sub("whsec_[redacted]", text)
    return _SECRET.sub(r"\1_\2_[redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(self._format(record))

    def _format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
        }
        address = client.get()
        if address is not None:
            out["client"] = address  # a record's own `client` (below) wins
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


class DenialNoise(logging.Filter):
    """uvicorn (0.54, websockets-sansio) logs an error after every WebSocket
    refused with a denial response, which is how the broker answers a bad
    device token (contract section 4: 401 before the upgrade). The client got
    its 401; the line is noise that would bury real errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


def setup(level: str = "INFO", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log would duplicate ours (which has the request id).
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("uvicorn.error").addFilter(DenialNoise())
