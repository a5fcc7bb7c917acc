"""The webhook sender's pure parts: signatures (checked with the
`standardwebhooks` library a receiver uses), the retry schedule and
Retry-After, the body's bytes, and which addresses a webhook may reach."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import random

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from broker.settings import Settings
from broker.webhooks import addresses, signing
from broker.webhooks.sender import body_of, next_attempt, retry_after_s

NOW = dt.datetime(2026, 12, 2, 10, 0, 0, tzinfo=dt.UTC)


def test_a_new_secret_is_whsec_and_24_random_bytes() -> None:
    a, b = signing.new_secret(), signing.new_secret()
    assert a.startswith("whsec_") and a != b
    assert len(base64.b64decode(a.removeprefix("whsec_"))) == 24


def test_signed_headers_verify_with_the_reference_library_and_bind_id_time_body() -> None:
    secret = signing.new_secret()
    at = dt.datetime.now(dt.UTC)
    body = '{"type":"message.sent"}'
    headers = signing.headers("evt-1", at, body, [secret])
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    Webhook(secret).verify(body, headers)
    for changed in ({**headers, "webhook-id": "evt-2"},
                    {**headers, "webhook-timestamp": str(int(at.timestamp()) + 1)}):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(body, changed)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + " ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)


def test_two_secrets_sign_side_by_side_and_either_verifies() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    at = dt.datetime.now(dt.UTC)
    headers = signing.headers("evt-1", at, "{}", [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify("{}", headers)


def test_the_default_schedule_is_the_standard_webhooks_one() -> None:
    assert Settings().webhook_retries_s == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert sum(Settings().webhook_retries_s) / 3600 == pytest.approx(27.6, abs=0.1)


def test_retries_follow_the_schedule_with_jitter_then_stop() -> None:
    schedule = (5.0, 300.0)
    rng = random.Random(1)
    first = next_attempt(1, schedule, NOW, None, rng)
    second = next_attempt(2, schedule, NOW, None, rng)
    assert first is not None and second is not None
    assert 4.5 <= (first - NOW).total_seconds() <= 5.5
    assert 270 <= (second - NOW).total_seconds() <= 330
    assert next_attempt(3, schedule, NOW, None, rng) is None
    spread = {next_attempt(1, schedule, NOW, None, rng) for _ in range(20)}
    assert len(spread) > 1, "jittered"


def test_retry_after_replaces_the_schedule_s_delay() -> None:
    at = next_attempt(1, (5.0,), NOW, 120.0, random.Random(1))
    assert at == NOW + dt.timedelta(seconds=120)
    assert next_attempt(2, (5.0,), NOW, 120.0, random.Random(1)) is None


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), ("0", 0.0), (" 7 ", 7.0), ("999999999", 86400.0),
    ("Wed, 02 Dec 2026 10:01:00 GMT", 60.0), ("Wed, 02 Dec 2026 09:00:00 GMT", 0.0),
    ("soon", None), ("", None), (None, None), ("-5", None),
])
def test_retry_after_reads_seconds_and_http_dates(value: str | None,
                                                  seconds: float | None) -> None:
    assert retry_after_s(value, NOW) == seconds


def test_the_body_is_the_envelope_in_the_api_s_key_order() -> None:
    data = {"id": "m1", "error": None, "device": None, "status": "sent", "message": "hi",
            "createdAt": "2026-12-02T10:00:00.000+00:00", "recipient": "+1650"}
    body = body_of("message.sent", NOW, data)
    assert body == ('{"type":"message.sent","timestamp":"2026-12-02T10:00:00.000+00:00",'
                    '"data":{"id":"m1","recipient":"+1650","message":"hi","status":"sent",'
                    '"device":null,"error":null,"createdAt":"2026-12-02T10:00:00.000+00:00"}}')
    assert body_of("message.sent", NOW, dict(reversed(list(data.items())))) == body
    assert body_of("webhook.test", NOW, {"webhookId": "w"}) == \
        '{"type":"webhook.test","timestamp":"2026-12-02T10:00:00.000+00:00",' \
        '"data":{"webhookId":"w"}}'


@pytest.mark.parametrize(("address", "ok"), [
    ("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),
    ("224.0.0.1", False), ("::1", False), ("fe80::1", False), ("fc00::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:93.184.216.34", True),
])
def test_only_public_unicast_addresses_are_allowed(address: str, ok: bool) -> None:
    assert addresses.allowed(ipaddress.ip_address(address)) is ok


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://example.com/", "http:// or https://"), ("https:///path", "must have a host"),
    ("https://example.com:99999/", "not a valid URL"), ("https://example.com/#x", "fragment"),
    ("https://exa mple.com/", "spaces"), ("https://example.com/" + "a" * 2100, "at most 2048"),
])
def test_urls_a_webhook_may_not_have(url: str, why: str) -> None:
    with pytest.raises(addresses.NotAllowed, match=why):
        addresses.check_url(url)


def test_a_url_s_host_and_port() -> None:
    assert addresses.check_url("https://example.com/h") == ("example.com", 443)
    assert addresses.check_url("http://example.com:8080/h?x=1") == ("example.com", 8080)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/h", "http://localhost/h",
                                 "http://[::1]/h", "http://169.254.169.254/latest",
                                 "http://10.0.0.1/"])
async def test_private_targets_are_refused_unless_the_operator_allows_them(url: str) -> None:
    with pytest.raises(addresses.NotAllowed, match="loopback, private or link-local"):
        await addresses.check(url, allow_private=False)
    await addresses.check(url, allow_private=True)


async def test_a_host_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(addresses.NotAllowed, match="does not resolve"):
        await addresses.check("https://no-such-host.invalid/h", allow_private=False)
