"""Standard Webhooks signatures (https://www.standardwebhooks.com), made by
the specification's own reference library, so that what a receiver's
`standardwebhooks` verifies is what this signed."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Sequence

from standardwebhooks.webhooks import Webhook

PREFIX = "whsec_"


def new_secret() -> str:
    """`whsec_` and base64 of 24 random bytes (192 bits), as the
    specification's examples and the libraries expect."""
    return PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def headers(webhook_id: str, at: dt.datetime, body: str,
            signing_secrets: Sequence[str]) -> dict[str, str]:
    """The three headers of one attempt: `webhook-id` (the event's, the same
    on every attempt), `webhook-timestamp` (this attempt's time, so each is
    signed anew) and `webhook-signature`, one `v1,…` per secret, space
    separated (after a rotation both the new and the old secret sign)."""
    signature = " ".join(Webhook(s).sign(webhook_id, at, body) for s in signing_secrets)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signature}
