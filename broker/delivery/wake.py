"""How a code path that committed events tells the sender: `Wake.poke`."""

from __future__ import annotations

import asyncio
import uuid


class Wake:
    """Events of an account were committed: the sender should look now
    rather than at its next poll. Cheap enough for every send: a set
    lookup, and an Event set only for an account with an enabled endpoint.
    A lost poke costs at most one poll interval (PostgreSQL is the truth)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.accounts: frozenset[uuid.UUID] = frozenset()  # with an enabled endpoint
        self.hot: set[uuid.UUID] = set()  # poked since the sender last looked

    def poke(self, account_id: uuid.UUID) -> None:
        if account_id in self.accounts:
            self.hot.add(account_id)
            self.event.set()

    def poke_now(self, account_id: uuid.UUID) -> None:
        """The account has events due now, whatever `accounts` says yet."""
        self.hot.add(account_id)
        self.event.set()
