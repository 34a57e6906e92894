"""The SSRF guard: what counts as public, and the resolver really refuses private answers."""

from __future__ import annotations

import pytest

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
