"""`GET /inbox`: the SMS the account's phones received (CONTRACT section 9)."""

from __future__ import annotations

from broker.http.declaration import Endpoint

INBOX_ENDPOINTS: tuple[Endpoint, ...] = ()
