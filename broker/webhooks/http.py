"""The webhook routes of the client API (CONTRACT section 9)."""

from __future__ import annotations

from broker.http.declaration import Endpoint

WEBHOOK_ENDPOINTS: tuple[Endpoint, ...] = ()
