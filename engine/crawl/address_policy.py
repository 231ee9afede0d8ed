"""Which IP addresses the crawler may connect to, and how names become addresses.

A crawl list is untrusted input: a name (or a redirect) can point at the
machine itself, the private network or a cloud metadata service.  The policy
refuses every address that is not public unless the operator admitted it.
The fetcher applies it to the address it actually connects to, so a name
that resolves differently the second time (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance metadata services (AWS, AWS over IPv6, Alibaba): the classic SSRF prize.
_METADATA: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(text) for text in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # Linux connects 0.x.x.x to the local host
_CARRIER_GRADE_NAT = ipaddress.IPv4Network("100.64.0.0/10")
# Prefixes whose last 32 bits are an IPv4 address that the packet really goes to.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_-]{1,63})*$"
)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries to (mapped, compatible, NAT64, 6to4)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if any(address in prefix for prefix in _NAT64):
        return low32
    # ::/96 minus :: and ::1, which are the IPv6 unspecified and loopback addresses.
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return low32
    return None


def _refusal(address: IPAddress) -> str | None:
    """Why a non-admitted address is refused, or None if it is public."""
    if address in _METADATA:
        return "cloud metadata address"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "unspecified address"
    if address.is_loopback:
        return "loopback address"
    if address.is_link_local:
        return "link-local address"
    if address.is_multicast:
        return "multicast address"
    if address in _CARRIER_GRADE_NAT:
        return "carrier-grade NAT address"
    if address.is_reserved:
        return "reserved address"
    if address.is_private:
        return "private address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local address"
    if not address.is_global:
        return "address not globally routable"
    return None


class AddressPolicy:
    """Refuses loopback, private, link-local, multicast, unspecified, reserved,
    carrier-grade NAT and cloud metadata addresses, including their IPv6 forms
    that embed an IPv4 address, unless `allow` admits them.

    `allow` holds CIDRs ("127.0.0.0/8", "10.1.2.3") and host names
    ("intranet.example"); an admitted host name may resolve to anything.
    """

    def __init__(self, allow: Sequence[str] = ()) -> None:
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in allow:
            text = entry.strip()
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            host = text.lower().rstrip(".")
            if not _HOSTNAME.match(host):
                raise ValueError(f"allow entry {entry!r} is neither a CIDR nor a host name")
            hosts.add(host)
        self._networks = tuple(networks)
        self._hosts = frozenset(hosts)

    def admits_host(self, host: str) -> bool:
        """True if `host` was admitted by name, whatever it resolves to."""
        return host.lower().rstrip(".") in self._hosts

    def check(self, ip: str, host: str | None = None) -> str | None:
        """The reason to refuse connecting to `ip` (reached as `host`), or None to allow."""
        if host is not None and self.admits_host(host):
            return None
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return f"{ip!r} is not an IP address"
        # A scope id ("fe80::1%eth0") does not change what the address is.
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        embedded = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
        if self._admitted(address) or (embedded is not None and self._admitted(embedded)):
            return None
        if embedded is not None:
            reason = _refusal(embedded)
            if reason is not None:
                return f"{reason} ({embedded} embedded in {address})"
            assert isinstance(address, ipaddress.IPv6Address)  # only IPv6 forms embed one
            if address.ipv4_mapped is not None or address in _IPV4_COMPATIBLE:
                return None  # the packet goes to the (public) IPv4 address itself
            if any(address in prefix for prefix in _NAT64):
                return None  # the NAT64 prefix is reserved-looking, but routes to the IPv4 address
        return _refusal(address)

    def _admitted(self, address: IPAddress) -> bool:
        return any(
            address.version == network.version and address in network for network in self._networks
        )


class Resolver(Protocol):
    """Turns a host name into the IP addresses to try, in order.

    Raises `socket.gaierror` when the name does not resolve.
    """

    async def resolve(self, host: str, port: int) -> list[str]: ...


class SystemResolver:
    """The operating system's resolver, through the event loop's `getaddrinfo`."""

    async def resolve(self, host: str, port: int) -> list[str]:
        """The distinct addresses for `host`, in the order the system prefers them."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        addresses: list[str] = []
        for _family, _type, _proto, _canonical, sockaddr in infos:
            ip = str(sockaddr[0])
            if ip not in addresses:
                addresses.append(ip)
        return addresses


class StaticResolver:
    """A fixed table of names, for tests and the synthetic site server.

    Values are one address or a list; a name not in the table resolves to
    `default` when it is set, and fails like an unknown name otherwise.
    """

    def __init__(
        self, mapping: Mapping[str, str | Sequence[str]] | None = None, default: str | None = None
    ) -> None:
        self._table: dict[str, list[str]] = {}
        for name, value in (mapping or {}).items():
            self._table[name.lower().rstrip(".")] = (
                [value] if isinstance(value, str) else list(value)
            )
        self._default = default

    async def resolve(self, host: str, port: int) -> list[str]:
        """The table's addresses for `host`, or `[default]`."""
        key = host.lower().rstrip(".")
        if key in self._table:
            return list(self._table[key])
        if self._default is not None:
            return [self._default]
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: name not in the static table")
