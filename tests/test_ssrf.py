"""The SSRF guard: what counts as public, and the resolver really refuses private answers."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from service.delivery.special_addresses import SPECIAL_RANGES, special_range
from service.delivery.ssrf import GuardedResolver, check_url, is_public
from service.errors import AddressRefused


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fd00:ec2::254", False),
        ("fe80::1%eth0", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("not-an-ip", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(address) is public


@pytest.mark.parametrize(
    ("address", "public"),
    [
        # NAT64, well-known prefix 64:ff9b::/96 (RFC 6052): the last 32 bits
        ("64:ff9b::a9fe:a9fe", False),  # 169.254.169.254, cloud metadata
        ("64:ff9b::7f00:1", False),  # 127.0.0.1
        ("64:ff9b::a00:1", False),  # 10.0.0.1
        ("64:ff9b::5db8:d822", True),  # 93.184.216.34
        # NAT64, local-use prefix 64:ff9b:1::/48 (RFC 8215): where the IPv4 sits depends on
        # the network's prefix length, so no reading of it can be trusted: never public
        ("64:ff9b:1::a9fe:a9fe", False),
        ("64:ff9b:1:a9fe:a9:fe00::", False),  # the same, as a /48 prefix embeds it
        ("64:ff9b:1::5db8:d822", False),
        # IPv4-compatible ::/96 (RFC 4291, deprecated)
        ("::7f00:1", False),
        ("::a9fe:a9fe", False),
        ("::5db8:d822", True),
        # IPv4-translated ::ffff:0:0:0/96 (RFC 2765)
        ("::ffff:0:7f00:1", False),
        ("::ffff:0:a9fe:a9fe", False),
        ("::ffff:0:5db8:d822", True),
        # IPv4-mapped ::ffff:0:0/96
        ("::ffff:a9fe:a9fe", False),
        ("::ffff:5db8:d822", True),
        # 6to4 2002::/16 (RFC 3056): bits 16-47
        ("2002:a9fe:a9fe::1", False),
        ("2002:7f00:1::1", False),
        ("2002:5db8:d822::1", True),
        # Teredo 2001::/32 (RFC 4380): the server and the (inverted) client address
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # client 192.0.2.45, documentation
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # client 127.0.0.1
        ("2001:0:a9fe:a9fe:8000:63bf:a247:27dd", False),  # server 169.254.169.254
        ("2001:0:4136:e378:8000:63bf:a247:27dd", True),  # 65.54.227.120, client 93.184.216.34
    ],
)
def test_addresses_embedding_ipv4_are_judged_by_it(address: str, public: bool) -> None:
    assert is_public(address) is public
    url = f"https://[{address}]/hooks"
    if public:
        check_url(url, allow_private=False)
    else:
        with pytest.raises(AddressRefused):
            check_url(url, allow_private=False)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        # the edges of the IANA registries' ranges, written out here (not read from the
        # guard's table, so a typo in the table fails); each differs on some Python 3.11.x
        # or 3.12.x when judged by `ipaddress.is_global`
        ("9.255.255.255", True),
        ("10.0.0.0", False),
        ("10.255.255.255", False),
        ("11.0.0.0", True),
        ("100.63.255.255", True),
        ("100.64.0.0", False),
        ("100.127.255.255", False),
        ("100.128.0.0", True),
        ("172.15.255.255", True),
        ("172.31.255.255", False),
        ("172.32.0.0", True),
        ("192.0.0.8", False),
        ("192.0.0.9", True),  # PCP anycast, inside the unreachable 192.0.0.0/24
        ("192.0.0.10", True),
        ("192.0.0.11", False),
        ("192.0.0.255", False),
        ("192.0.1.0", True),
        ("192.31.196.1", True),
        ("192.88.99.1", False),
        ("198.17.255.255", True),
        ("198.18.0.0", False),
        ("198.19.255.255", False),
        ("198.20.0.0", True),
        ("223.255.255.255", True),
        ("224.0.0.0", False),
        ("239.255.255.255", False),
        ("240.0.0.0", False),
        ("255.255.255.255", False),
        ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", False),  # below global unicast
        ("2000::", True),
        ("2001::", False),  # Teredo, its server 0.0.0.0
        ("2001:1::", False),
        ("2001:1::1", True),  # PCP anycast, inside the unreachable 2001::/23
        ("2001:1::3", True),
        ("2001:1::4", False),
        ("2001:2::", False),
        ("2001:3::", True),
        ("2001:3:ffff:ffff:ffff:ffff:ffff:ffff", True),
        ("2001:4::", False),
        ("2001:4:112::", True),
        ("2001:10::", False),
        ("2001:20::", True),
        ("2001:3f:ffff:ffff:ffff:ffff:ffff:ffff", True),
        ("2001:40::", False),
        ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", False),
        ("2001:200::", True),
        ("2001:db8::1", False),
        ("2620:4f:8000::1", True),
        ("3ffe:ffff::1", True),
        ("3fff::", False),
        ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", False),
        ("3fff:1000::", True),
        ("4000::", False),  # reserved by the IETF
        ("5f00::1", False),
        ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", False),
        ("fc00::", False),
        ("fe80::", False),
        ("fec0::1", False),  # site-local, deprecated
        ("ff02::1", False),
    ],
)
def test_special_purpose_range_edges(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_walking_the_table_each_range_decides_its_own_edges() -> None:
    """Each range's first and last address are judged by it (or by a range nested in it),
    and the addresses just outside it are not: no range is off by one, and the most
    specific range wins."""
    for entry in SPECIAL_RANGES:
        net = entry.network
        for edge in (net[0], net[-1]):
            found = special_range(edge)
            assert found is not None and found.network.subnet_of(net), (entry, edge)  # type: ignore[arg-type]
            if found is entry and entry.reachable is not None and net not in _READ_AS_IPV4:
                assert is_public(str(edge)) is entry.reachable, (entry, edge)
        address = type(net[0])
        for outside in (int(net[0]) - 1, int(net[-1]) + 1):
            if 0 <= outside < 2**net.max_prefixlen:
                assert special_range(address(outside)) is not entry, (entry, outside)


# judged by the IPv4 address in their last 32 bits, not by their own row
_READ_AS_IPV4 = {ipaddress.ip_network("::ffff:0:0/96"), ipaddress.ip_network("64:ff9b::/96")}


async def test_resolver_refuses_a_name_resolving_to_nat64_metadata() -> None:
    """A name whose only answer is the NAT64 form of 169.254.169.254 is refused."""

    class Answers(AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            return [
                ResolveResult(
                    hostname=host,
                    host="64:ff9b::a9fe:a9fe",
                    port=port,
                    family=socket.AF_INET6,
                    proto=0,
                    flags=0,
                )
            ]

        async def close(self) -> None:
            pass

    guarded = GuardedResolver(allow_private=False, inner=Answers())
    with pytest.raises(AddressRefused) as caught:
        await guarded.resolve("hooks.example.com", 443)
    assert caught.value.address == "64:ff9b::a9fe:a9fe"


def test_ip_literal_urls() -> None:
    with pytest.raises(AddressRefused, match="allow_private_addresses"):
        check_url("https://127.0.0.1/hooks", allow_private=False)
    with pytest.raises(AddressRefused):
        check_url("https://[::1]:8443/hooks", allow_private=False)
    check_url("https://127.0.0.1/hooks", allow_private=True)
    check_url("https://93.184.216.34/hooks", allow_private=False)
    check_url("https://hooks.example.com/x", allow_private=False)  # names: the resolver checks


async def test_resolver_refuses_a_name_resolving_to_loopback() -> None:
    guarded = GuardedResolver(allow_private=False)
    try:
        with pytest.raises(AddressRefused) as caught:
            await guarded.resolve("localhost", 443)
        assert caught.value.host == "localhost"
    finally:
        await guarded.close()
    allowing = GuardedResolver(allow_private=True)
    try:
        answers = await allowing.resolve("localhost", 443)
        assert answers and not is_public(answers[0]["host"])
    finally:
        await allowing.close()
