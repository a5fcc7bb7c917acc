"""Several broker nodes on one PostgreSQL (CONTRACT section 13): the bus
between them (bus.py), picked by `SMSDORA_BUS`."""

from __future__ import annotations

from broker.cluster.bus import Bus
from broker.settings import Settings
from broker.store.listener import Listener


def make_bus(settings: Settings, listener: Listener) -> Bus:
    """The configured bus; `listener` is the node's LISTEN connection."""
    if settings.bus == "nats":
        from broker.cluster.nats_bus import NatsBus  # nats-py only where it is used
        return NatsBus(settings.nats_url, name=f"smsdora {settings.node}")
    from broker.cluster.pg_bus import PgBus
    return PgBus(listener, name=f"smsdora {settings.node}")
