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

from service.errors import AddressRefused


def is_public(address: str) -> bool:
    """False for loopback, private, link-local (cloud metadata), CGNAT, multicast, reserved."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


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
