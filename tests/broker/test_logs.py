"""broker/ops/logs.py: JSON lines with a request id, into an in-memory stream."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from broker.ops import logs


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger(f"smsdora.test.{uuid.uuid4().hex}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.handlers.clear()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_one_json_object_per_line(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    logger.info("first %s", "arg")
    logger.warning("second\nwith a newline")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("third")
    got = lines(stream)
    assert len(got) == 3  # a multi-line message or traceback stays on one line
    assert [g["msg"] for g in got] == ["first arg", "second\nwith a newline", "third"]
    assert [g["level"] for g in got] == ["info", "warning", "error"]


def test_fields(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    logger.debug("hello %d", 42)
    [rec] = lines(stream)
    assert rec["logger"] == logger.name
    assert rec["msg"] == "hello 42"
    assert rec["level"] == "debug"
    assert rec["request_id"] == "-"  # outside any request
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["ts"]), rec["ts"]
    assert "exc" not in rec


def test_ts_is_the_record_time_in_utc(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "at a fixed time", (), None)
    record.created = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
    record.msecs = 250.0
    logger.handle(record)
    assert lines(stream)[0]["ts"] == "2023-11-14T22:13:20.250Z"


def test_request_id_from_the_contextvar(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    token = logs.request_id.set("req-123")
    try:
        logger.info("inside")
    finally:
        logs.request_id.reset(token)
    logger.info("outside")
    got = lines(stream)
    assert got[0]["request_id"] == "req-123"
    assert got[1]["request_id"] == "-"


def test_extra_fields(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    device = uuid.UUID("12345678-1234-5678-1234-567812345678")
    logger.info("sent", extra={"route": "/messages/send", "status": 201, "ms": 1.5,
                               "ok": True, "none": None, "device_id": device, "_private": "x"})
    [rec] = lines(stream)
    assert rec["route"] == "/messages/send"
    assert rec["status"] == 201
    assert rec["ms"] == 1.5
    assert rec["ok"] is True
    assert rec["none"] is None
    assert rec["device_id"] == str(device)  # non-JSON values as text
    assert "_private" not in rec
    # No LogRecord internals leak in as fields.
    for internal in ("args", "levelno", "pathname", "lineno", "msecs", "created", "thread",
                     "processName", "exc_info", "stack_info"):
        assert internal not in rec


def test_exception_included_as_exc(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    try:
        raise ValueError("the detail")
    except ValueError:
        logger.error("failed", exc_info=True)
    [rec] = lines(stream)
    assert rec["msg"] == "failed"
    assert "Traceback" in rec["exc"]
    assert "ValueError: the detail" in rec["exc"]


def test_setup_installs_one_json_handler_on_root() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    access = logging.getLogger("uvicorn.access")
    access_disabled = access.disabled
    stream = io.StringIO()
    try:
        logs.setup("warning", stream)
        assert len(root.handlers) == 1
        assert root.level == logging.WARNING
        assert access.disabled  # ours carries the request id; uvicorn's would duplicate
        logging.getLogger("smsdora.some.module").info("filtered out")
        logging.getLogger("smsdora.some.module").warning("kept")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        access.disabled = access_disabled
    # Only this test's logger: anything else logging meanwhile is not ours to judge.
    [rec] = [r for r in lines(stream) if r["logger"] == "smsdora.some.module"]
    assert (rec["msg"], rec["level"]) == ("kept", "warning")


def test_formatter_redacts_credentials_that_other_libraries_log() -> None:
    """uvicorn's websockets implementation logs handshake headers at DEBUG."""
    from broker.ops.logs import JsonFormatter

    token = "smsdev_92ce8d81_C7naL-ItnqsvDFHYQJNKbfCjVfVYB5_v0ZQnIv2y8wY"
    key = "smsgw_0123abcd_" + "A" * 43
    record = logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1,
                               "< authorization: Bearer %s; key %s; x-api-key: %s",
                               (token, key, key), None)
    line = JsonFormatter().format(record)
    assert token not in line and key not in line and "A" * 43 not in line
    assert "smsgw_0123abcd_[redacted]" in line and "authorization: [redacted]" in line


def test_formatter_redacts_webhook_signing_secrets() -> None:
    from broker.ops.logs import JsonFormatter
    from broker.webhooks.signing import new_secret

    secret = new_secret()
    record = logging.LogRecord("httpx", logging.DEBUG, __file__, 1, "body %s", (secret,), None)
    line = JsonFormatter().format(record)
    assert secret not in line and secret.removeprefix("whsec_") not in line
    assert "whsec_[redacted]" in line


def test_client_from_the_contextvar_and_a_records_own_wins(
        log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log
    token = logs.client.set("203.0.113.9")
    try:
        logger.info("inside")
        logger.info("request", extra={"client": "198.51.100.7"})
    finally:
        logs.client.reset(token)
    logger.info("outside")
    got = lines(stream)
    assert [g.get("client") for g in got] == ["203.0.113.9", "198.51.100.7", None]
