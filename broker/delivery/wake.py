"""How a code path that committed events tells who listens: `Wake.poke`.
The webhook sender (for accounts with an enabled endpoint) and the
dashboard's live streams (for accounts someone is watching) listen."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator


class Wake:
    """Events of an account were committed: the sender should look now
    rather than at its next poll. Cheap enough for every send: a set
    lookup, and an Event set only for an account with an enabled endpoint.
    A lost poke costs at most one poll interval (PostgreSQL is the truth)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.accounts: frozenset[uuid.UUID] = frozenset()  # with an enabled endpoint
        self.hot: set[uuid.UUID] = set()  # poked since the sender last looked
        self._watchers: dict[uuid.UUID, set[asyncio.Event]] = {}  # the dashboard's tabs
        self.closed = False  # shutting down: the tabs' streams end

    def poke(self, account_id: uuid.UUID) -> None:
        if account_id in self.accounts:
            self.hot.add(account_id)
            self.event.set()
        if account_id in self._watchers:
            self.notify(account_id)

    def notify(self, account_id: uuid.UUID) -> None:
        """The account's dashboard tabs on this node (a change with no event:
        a phone coming or going)."""
        for event in self._watchers.get(account_id, ()):
            event.set()

    def watching(self, account_id: uuid.UUID) -> int:
        return len(self._watchers.get(account_id, ()))

    @contextlib.contextmanager
    def watch(self, account_id: uuid.UUID) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._watchers.setdefault(account_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(account_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[account_id]

    def close(self) -> None:
        """Shutdown: every tab's stream ends now."""
        self.closed = True
        for watchers in self._watchers.values():
            for event in watchers:
                event.set()

    def poke_now(self, account_id: uuid.UUID) -> None:
        """The account has events due now, whatever `accounts` says yet."""
        self.hot.add(account_id)
        self.event.set()
