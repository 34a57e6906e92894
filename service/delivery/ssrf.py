"""The SSRF guard: webhooks go to public addresses only, unless private ones are allowed.

Checked against the addresses the connection is really made to (the resolver's answer, and
IP literals in the URL), not only against the configured name: DNS can change under us.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from service.delivery.special_addresses import IPAddress, special_range
from service.errors import AddressRefused

# IPv6 forms that are only another way to write an IPv4 address (its last 32 bits): a
# connection to one reaches that IPv4 host, through the kernel or a translator on the path.
_IPV4_IN_LAST_32 = (
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64, the well-known prefix (RFC 6052)
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (RFC 2765)
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (RFC 4291, deprecated)
)


def is_public(address: str) -> bool:
    """False for loopback, private, link-local (cloud metadata), CGNAT, multicast, reserved,
    documentation and the other ranges the special-purpose registries call not globally
    reachable (special_addresses), and for an IPv6 address that carries an IPv4 address
    which is not public."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _public(ip.ipv4_mapped)
        if any(ip in net for net in _IPV4_IN_LAST_32):
            return _public(ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF))
        # tunnels: the packet goes to the IPv4 addresses inside (6to4's relay target;
        # Teredo's server and client), and the IPv6 address must be public as well
        tunnelled = [ip.sixtofour] if ip.sixtofour is not None else list(ip.teredo or ())
        if not all(_public(v4) for v4 in tunnelled):
            return False
    return _public(ip)


def _public(ip: IPAddress) -> bool:
    special = special_range(ip)
    # a tunnel's own range (N/A in the registry) is judged by what it carries, above
    return special is None or special.reachable is not False


@lru_cache(maxsize=1024)  # called before every delivery, with one of a few endpoint URLs
def check_url(url: str, allow_private: bool) -> None:
    """Refuse a URL whose host is a non-public IP literal (names go through the resolver)."""
    host = URL(url).host or ""
    if allow_private:
        return
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return  # a name: GuardedResolver checks what it resolves to
    if not is_public(host):
        raise AddressRefused(host, host)


class GuardedResolver(AbstractResolver):
    """Resolves as usual, then drops non-public addresses; none left → AddressRefused."""

    def __init__(self, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self.allow_private = allow_private
        self.inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if self.allow_private:
            return results
        allowed = [r for r in results if is_public(r["host"])]
        if not allowed:
            raise AddressRefused(host, results[0]["host"] if results else "")
        return allowed

    async def close(self) -> None:
        await self.inner.close()
