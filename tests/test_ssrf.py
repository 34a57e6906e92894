"""The SSRF guard: what counts as public, and the resolver really refuses private answers."""

from __future__ import annotations

import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

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
