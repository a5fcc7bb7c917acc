"""Who is asking: the client address of a request (contract section 12).

The direct peer, unless that peer is one of the configured trusted proxies
(`SMSDORA_TRUSTED_PROXIES`): then the address the proxy reports. A client
can write any `X-Forwarded-For` it likes, so the header is read only from a
peer we trust, and in it only the entries our own proxies appended: walking
it from the right, the first address that is not a trusted proxy is the
client (the proxy nearest us appended the one it saw). `X-Real-IP` is read
only when there is no `X-Forwarded-For`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# No peer address: a unix socket, or a test client without one.
UNKNOWN = "-"


def from_trusted_proxy(scope: Scope, trusted: Sequence[Network]) -> bool:
    """The peer is one of `trusted`: only then are its X-Forwarded-* believed."""
    client = scope.get("client")
    return bool(client and trusted and _is_trusted(client[0], trusted))


def client_address(scope: Scope, trusted: Sequence[Network]) -> str:
    """The client's address as text (an IP address, or "-" when the
    connection has none); `trusted`: `Settings.trusted_proxies`."""
    client = scope.get("client")
    peer = client[0] if client else None
    if peer is None:
        return UNKNOWN
    if not trusted or not _is_trusted(peer, trusted):
        return str(peer)
    forwarded: list[bytes] = []
    real_ip: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded.append(value)  # several headers are one list, in order (RFC 9110 5.3)
        elif name == b"x-real-ip":
            real_ip = value
    if forwarded:
        hops = [h.strip() for h in b",".join(forwarded).split(b",")]
        for hop in reversed(hops):
            address = _parse(hop)
            if address is None:
                break  # not written by a proxy of ours: trust nothing left of it
            if not any(address in net for net in trusted):
                return str(address)
            peer = str(address)  # another of our proxies: look further left
        return str(peer)
    if real_ip is not None:
        address = _parse(real_ip.strip())
        if address is not None:
            return str(address)
    return str(peer)


def _is_trusted(peer: str, trusted: Sequence[Network]) -> bool:
    address = _parse(peer.encode())
    return address is not None and any(address in net for net in trusted)


def _parse(raw: bytes) -> Address | None:
    try:
        address = ipaddress.ip_address(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address

