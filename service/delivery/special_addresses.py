"""The special-purpose address ranges, written out: IANA's IPv4 and IPv6 Special-Purpose
Address Registries (RFC 6890), each range with whether the registry calls it globally
reachable, plus the multicast ranges and, for IPv6, what lies outside the global unicast
space (IANA's IPv6 Address Space registry).

Written out rather than taken from `ipaddress`' `is_global` / `is_private`: those lists
changed between patch releases (3.11.2 calls all of 6to4 2002::/16 private and 2001:1::1
public; 3.11.7 the reverse), so the SSRF guard would judge differently on each Python.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class SpecialRange:
    network: IPNetwork
    # the registry's "Globally Reachable"; None is its "N/A": a tunnel (6to4, Teredo),
    # judged by the IPv4 addresses it carries
    reachable: bool | None
    name: str


def _r(cidr: str, reachable: bool | None, name: str) -> SpecialRange:
    return SpecialRange(ipaddress.ip_network(cidr), reachable, name)


# The most specific range containing an address decides (192.0.0.9/32 is reachable inside
# the unreachable 192.0.0.0/24), as the registries' footnotes say.
SPECIAL_RANGES: tuple[SpecialRange, ...] = (
    # IPv4 Special-Purpose Address Registry
    _r("0.0.0.0/8", False, "this network"),
    _r("0.0.0.0/32", False, "this host on this network"),
    _r("10.0.0.0/8", False, "private-use"),
    _r("100.64.0.0/10", False, "shared address space (carrier-grade NAT)"),
    _r("127.0.0.0/8", False, "loopback"),
    _r("169.254.0.0/16", False, "link local (cloud metadata)"),
    _r("172.16.0.0/12", False, "private-use"),
    _r("192.0.0.0/24", False, "IETF protocol assignments"),
    _r("192.0.0.0/29", False, "IPv4 service continuity prefix (DS-Lite)"),
    _r("192.0.0.8/32", False, "IPv4 dummy address"),
    _r("192.0.0.9/32", True, "Port Control Protocol anycast"),
    _r("192.0.0.10/32", True, "TURN anycast"),
    _r("192.0.0.170/32", False, "NAT64/DNS64 discovery"),
    _r("192.0.0.171/32", False, "NAT64/DNS64 discovery"),
    _r("192.0.2.0/24", False, "documentation (TEST-NET-1)"),
    _r("192.31.196.0/24", True, "AS112-v4"),
    _r("192.52.193.0/24", True, "AMT"),
    # deprecated (RFC 7526): an anycast relay, never a webhook receiver
    _r("192.88.99.0/24", False, "deprecated 6to4 relay anycast"),
    _r("192.168.0.0/16", False, "private-use"),
    _r("192.175.48.0/24", True, "direct delegation AS112 service"),
    _r("198.18.0.0/15", False, "benchmarking"),
    _r("198.51.100.0/24", False, "documentation (TEST-NET-2)"),
    _r("203.0.113.0/24", False, "documentation (TEST-NET-3)"),
    _r("240.0.0.0/4", False, "reserved"),
    _r("255.255.255.255/32", False, "limited broadcast"),
    # IPv4 multicast (its own registry): one-to-many, never a receiver
    _r("224.0.0.0/4", False, "multicast"),
    # IPv6 Address Space registry: only 2000::/3 is allocated as global unicast; the rest is
    # reserved by the IETF unless a range below says otherwise
    _r("::/3", False, "reserved by the IETF (outside 2000::/3)"),
    _r("4000::/2", False, "reserved by the IETF (outside 2000::/3)"),
    _r("8000::/1", False, "reserved by the IETF (outside 2000::/3)"),
    _r("ff00::/8", False, "multicast"),
    # IPv6 Special-Purpose Address Registry
    _r("::1/128", False, "loopback"),
    _r("::/128", False, "unspecified"),
    _r("::ffff:0:0/96", False, "IPv4-mapped"),  # the guard judges it by its IPv4 first
    _r("64:ff9b::/96", True, "IPv4-IPv6 translation (NAT64)"),  # likewise
    # where the IPv4 address sits depends on the prefix length the network chose (RFC 6052
    # §2.2: /48 to /96), which we cannot know: any one reading could be dodged
    _r("64:ff9b:1::/48", False, "IPv4-IPv6 translation, local use"),
    _r("100::/64", False, "discard-only"),
    _r("100:0:0:1::/64", False, "dummy IPv6 prefix"),
    _r("2001::/23", False, "IETF protocol assignments"),
    _r("2001::/32", None, "Teredo"),
    _r("2001:1::1/128", True, "Port Control Protocol anycast"),
    _r("2001:1::2/128", True, "TURN anycast"),
    _r("2001:1::3/128", True, "DNS-SD service registration protocol anycast"),
    _r("2001:2::/48", False, "benchmarking"),
    _r("2001:3::/32", True, "AMT"),
    _r("2001:4:112::/48", True, "AS112-v6"),
    _r("2001:10::/28", False, "deprecated (ORCHID)"),
    _r("2001:20::/28", True, "ORCHIDv2"),
    _r("2001:30::/28", True, "drone remote ID protocol entity tags"),
    _r("2001:db8::/32", False, "documentation"),
    _r("2002::/16", None, "6to4"),
    _r("2620:4f:8000::/48", True, "direct delegation AS112 service"),
    _r("3fff::/20", False, "documentation"),
    _r("5f00::/16", False, "segment routing (SRv6) SIDs"),
    _r("fc00::/7", False, "unique-local"),
    _r("fe80::/10", False, "link-local unicast"),
)

# most specific first, so the first range containing an address is the one that decides
_BY_SPECIFICITY = sorted(SPECIAL_RANGES, key=lambda r: r.network.prefixlen, reverse=True)


@lru_cache(maxsize=4096)  # the guard asks about the few addresses endpoints resolve to
def special_range(ip: IPAddress) -> SpecialRange | None:
    """The most specific special-purpose range holding the address; None for an ordinary
    (globally reachable) unicast address."""
    for special in _BY_SPECIFICITY:
        if special.network.version == ip.version and ip in special.network:
            return special
    return None
