"""The address policy refuses every non-public address unless the operator admits it."""

from __future__ import annotations

import socket

import pytest

from engine.crawl.address_policy import AddressPolicy, StaticResolver, SystemResolver


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.200.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("fec0::1", "site-local"),
        # IPv6 forms that carry an IPv4 address the packet really goes to.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::10.0.0.1", "private"),
        ("64:ff9b::a00:1", "private"),
        ("64:ff9b:1::a9fe:a9fe", "metadata"),
        ("2002:a9fe:a9fe::1", "metadata"),
        ("2002:7f00:1::1", "loopback"),
    ],
)
def test_non_public_addresses_are_refused_with_a_reason(ip: str, reason: str) -> None:
    refusal = AddressPolicy().check(ip)
    assert refusal is not None
    assert reason in refusal


@pytest.mark.parametrize(
    "ip",
    [
        "93.184.216.34",
        "8.8.8.8",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses_and_their_ipv6_forms_are_allowed(ip: str) -> None:
    assert AddressPolicy().check(ip) is None


def test_the_allow_list_admits_its_networks_and_nothing_else() -> None:
    policy = AddressPolicy(["127.0.0.0/8"])

    assert policy.check("127.0.0.1") is None
    assert policy.check("127.9.9.9") is None
    assert policy.check("::ffff:127.0.0.1") is None  # the same address, written as IPv6
    assert policy.check("10.0.0.1") is not None
    assert policy.check("169.254.169.254") is not None
    assert policy.check("::1") is not None  # IPv6 loopback is another network


def test_an_admitted_host_name_may_resolve_to_anything() -> None:
    policy = AddressPolicy(["Intranet.Example."])

    assert policy.check("10.0.0.5", host="intranet.example") is None
    assert policy.check("10.0.0.5", host="other.example") is not None
    assert policy.check("10.0.0.5") is not None


def test_an_allow_entry_that_is_neither_cidr_nor_host_name_is_refused() -> None:
    with pytest.raises(ValueError, match="neither a CIDR nor a host name"):
        AddressPolicy(["not a host!"])


def test_something_that_is_not_an_address_is_refused() -> None:
    assert AddressPolicy().check("site-0001.test") is not None


async def test_static_resolver_maps_names_ignoring_case_and_trailing_dot() -> None:
    resolver = StaticResolver({"one.test": "10.0.0.1", "Two.test": ["10.0.0.2", "10.0.0.3"]})

    assert await resolver.resolve("ONE.test.", 80) == ["10.0.0.1"]
    assert await resolver.resolve("two.test", 443) == ["10.0.0.2", "10.0.0.3"]
    with pytest.raises(socket.gaierror):
        await resolver.resolve("three.test", 80)


async def test_static_resolver_default_catches_every_other_name() -> None:
    resolver = StaticResolver({"internal.test": "10.0.0.1"}, default="127.0.0.1")

    assert await resolver.resolve("site-0001.test", 80) == ["127.0.0.1"]
    assert await resolver.resolve("internal.test", 80) == ["10.0.0.1"]


async def test_system_resolver_uses_the_system_table() -> None:
    resolver = SystemResolver()

    assert await resolver.resolve("127.0.0.1", 80) == ["127.0.0.1"]
    addresses = await resolver.resolve("localhost", 80)
    assert addresses
    assert all(AddressPolicy().check(ip) == "loopback address" for ip in addresses)
