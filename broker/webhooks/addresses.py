"""Where a webhook may be sent (CONTRACT section 9): not to the broker's own
network. A URL whose host resolves to a loopback, private, link-local or
otherwise non-global address is refused when the endpoint is saved, and
every connection is checked again (client.py resolves, checks, and
connects to a checked address), so a name that
resolved to a public address then and to 127.0.0.1 now (DNS rebinding)
reaches nothing. SMSDORA_WEBHOOK_ALLOW_PRIVATE=1 lets them all through (a
receiver on the LAN; the tests)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

MAX_URL = 2048

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class NotAllowed(Exception):
    """The URL, or the address its host resolves to, is not a webhook's."""


def check_url(url: str) -> tuple[str, int]:
    """The URL's host and port, if it is one a webhook may have: http or
    https, a host, at most MAX_URL characters, no fragment."""
    if len(url) > MAX_URL:
        raise NotAllowed(f"url must be at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise NotAllowed("url is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise NotAllowed("url must start with http:// or https://")
    if not parts.hostname:
        raise NotAllowed("url must have a host")
    if parts.fragment:
        raise NotAllowed("url must not have a fragment")
    if any(c.isspace() for c in url):
        raise NotAllowed("url must not contain spaces")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def allowed(ip: IP) -> bool:
    """A public unicast address (an IPv4 one mapped into IPv6 judged as itself)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolve(host: str, port: int) -> list[IP]:
    """Every address of `host` (an address itself: just it)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise NotAllowed(f"url host {host!r} does not resolve") from None
    return [ipaddress.ip_address(info[4][0]) for info in infos]


async def check(url: str, allow_private: bool) -> None:
    """Refuse a URL a webhook may not have, or (unless `allow_private`) whose
    host resolves to any address that is not public."""
    host, port = check_url(url)
    if allow_private:
        return
    for ip in await resolve(host, port):
        if not allowed(ip):
            raise NotAllowed("url must not point to a loopback, private or link-local address")
