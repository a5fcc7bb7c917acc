"""broker/http/messages.py, its pure part: the recipient's E.164 form. The
handlers themselves run end to end in tests/e2e/test_api_send.py and
test_api_read.py (real server, real PostgreSQL)."""

from __future__ import annotations

import phonenumbers
import pytest

from broker.errors import BadRequest
from broker.http import messages

# --- normalize_recipient ----------------------------------------------------


@pytest.mark.parametrize("raw, e164", [
    ("+1 650-253-0000", "+16502530000"),          # the contract's own example
    ("+1 (650) 253-0000", "+16502530000"),
    ("+16502530000", "+16502530000"),
    ("+44 20 7183 8750", "+442071838750"),
    ("+212600000000", "+212600000000"),           # the contract's request example
])
def test_normalize_recipient_valid(raw: str, e164: str) -> None:
    # The expectation is phonenumbers' own verdict, checked here, not assumed.
    assert phonenumbers.is_valid_number(phonenumbers.parse(raw, None))
    assert messages.normalize_recipient(raw) == e164


@pytest.mark.parametrize("raw", [
    "+1234567890",        # parses, but no such number
    "+1 650 253 000",     # one digit short
    "garbage",
    "",
    "+",
    "6502530000",         # national form: no region to read it in
    "+999 123 456",       # no such country code
    "+1 650-253-0000" + " " * 50,  # valid digits, but over 64 characters
    "+" + "1" * 70,
])
def test_normalize_recipient_invalid(raw: str) -> None:
    for _ in range(2):  # refused again when its verdict is the one kept
        with pytest.raises(BadRequest) as exc:
            messages.normalize_recipient(raw)
        assert exc.value.message == "Invalid phone number"
        assert exc.value.status == 400


def test_normalize_recipient_length_limit_is_64() -> None:
    number = "+1 650-253-0000"
    at_limit = number + " " * (64 - len(number))
    assert len(at_limit) == 64
    assert messages.normalize_recipient(at_limit) == "+16502530000"
    with pytest.raises(BadRequest):
        messages.normalize_recipient(at_limit + " ")
