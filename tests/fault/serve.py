"""`python -m broker serve` for the short soak, with one thing shorter: the
lease a claimed webhook event carries while its attempt is under way.

The sender moves a claimed row's `next_at` past the attempt's deadline plus
30 s (broker/webhooks/sender.py, `Sender.lease_s`), so that a node that
dies mid-attempt leaves the row to be claimed again then. A SIGKILL always
strands the few rows being sent at that instant, and with them every later
event of their messages (per-message order, contract section 9): as
shipped, the soak's outbox then drains 32 s after the kill, whatever else
happens. That wait is the lease working as designed, and `make soak` (the
long form) runs the broker unchanged and waits it out; the short soak in
`make test` cannot afford it, so it runs the broker through this wrapper
with the margin from $SOAK_WEBHOOK_LEASE_MARGIN (seconds). Nothing else
changes: the rows are leased, stranded, claimed again and delivered again
under the same webhook-id, as after any kill, only sooner.

    SOAK_WEBHOOK_LEASE_MARGIN=3 python -m tests.fault.serve serve --port P
"""

from __future__ import annotations

import os
from typing import Any

from broker.cli import main
from broker.webhooks import sender

_init = sender.Sender.__init__


def _shorter_lease(self: sender.Sender, *args: Any, **kwargs: Any) -> None:
    _init(self, *args, **kwargs)
    # Fail loudly if the sender no longer keeps its lease here: the soak
    # would otherwise wait the shipped lease out and only be slower.
    if not isinstance(getattr(self, "lease_s", None), float):
        raise SystemExit("tests/fault/serve.py: Sender.lease_s is gone; update the wrapper")
    self.lease_s = self.settings.webhook_timeout_s + float(os.environ["SOAK_WEBHOOK_LEASE_MARGIN"])


sender.Sender.__init__ = _shorter_lease  # type: ignore[method-assign]

raise SystemExit(main())
