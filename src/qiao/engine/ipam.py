"""IPAM: Docker's default pools, subnet choice, and per-network address pools.

Pure logic, no kernel: the daemon holds one :class:`AddressPool` per network
in memory, so allocation needs no store read and costs the same at the 1st
and the 500th container (a bitmap, lowest free bit first, as Docker's
default IPAM hands out the lowest free address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from qiao.engine.errors import Conflict, InvalidParameter


def _default_pools() -> list[IPv4Network]:
    pools = [IPv4Network(f"172.{n}.0.0/16") for n in range(17, 32)]
    pools += list(IPv4Network("192.168.0.0/16").subnets(new_prefix=20))
    return pools


DEFAULT_POOLS = _default_pools()


IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address


def parse_subnet(text: str) -> IPNetwork:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidParameter(f"invalid subnet {text!r}: {exc}") from None
    if net.prefixlen > (30 if net.version == 4 else 126):
        raise InvalidParameter(f"invalid subnet {text}: too small, the prefix must be /{30 if net.version == 4 else 126} or shorter")
    return net


# Ranges no network may use (Docker refuses them too): loopback, "this network",
# link-local, multicast and the reserved class E (IPv4); loopback, link-local,
# multicast and the unspecified address (IPv6).
_FORBIDDEN = [
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "::/128", "::1/128", "fe80::/10", "ff00::/8")
]


def refuse_reserved(net: IPNetwork, host_addresses: Iterable[IPAddress]) -> None:
    """A subnet must not be special-purpose, nor contain an address the host
    already has (its uplink's, its router's network): the gateway or a
    container would take it."""
    for bad in _FORBIDDEN:
        if bad.version == net.version and net.overlaps(bad):  # type: ignore[arg-type]
            raise InvalidParameter(f"invalid subnet {net}: it overlaps the reserved range {bad}")
    for address in host_addresses:
        if address in net:
            raise InvalidParameter(f"invalid subnet {net}: it contains {address}, an address of this host")


def parse_address(text: str, what: str = "address") -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidParameter(f"invalid {what} {text!r}") from None


def choose_subnet(reserved: Iterable[IPv4Network], pools: Iterable[IPv4Network] = DEFAULT_POOLS) -> IPv4Network:
    """The first default pool that overlaps nothing reserved (host on-link
    routes, host addresses, nameservers, other qiao networks)."""
    reserved = list(reserved)
    for candidate in pools:
        if not any(candidate.overlaps(r) for r in reserved):
            return candidate
    raise Conflict("could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network")


class AddressPool:
    """Addresses of one subnet, IPv4 or IPv6 (optionally restricted to ``ip_range``).

    The network address, the IPv4 broadcast address and the gateway are never
    handed out.  Lowest free first, as Docker's default IPAM: a set of used
    offsets plus a "lowest possibly free" hint, so allocation is amortised
    O(1) and the pool of a /64 costs memory only for addresses in use.
    """

    def __init__(self, subnet: IPNetwork, gateway: IPAddress, ip_range: IPNetwork | None = None):
        self.subnet = subnet
        self.gateway = gateway
        self.range = ip_range or subnet
        # Offsets from the subnet's first address: static addresses outside
        # the range are tracked too; only allocation keeps to [_lo, _end).
        self._base = int(subnet.network_address)
        self._lo = int(self.range.network_address) - self._base
        self._end = self._lo + self.range.num_addresses
        self._used: set[int] = set()
        self._hint = self._lo
        for fixed in self.fixed():
            self._used.add(int(fixed) - self._base)

    def fixed(self) -> tuple[IPAddress, ...]:
        if isinstance(self.subnet, IPv4Network):
            return (self.subnet.network_address, self.subnet.broadcast_address, self.gateway)
        return (self.subnet.network_address, self.gateway)

    def allocate(self) -> IPAddress:
        index = max(self._hint, self._lo)
        while index in self._used:
            index += 1
        if index >= self._end:
            raise Conflict(f"no available IPv{self.subnet.version} addresses on this network's address pools")
        self._used.add(index)
        self._hint = index + 1
        return (IPv4Address if self.subnet.version == 4 else IPv6Address)(self._base + index)

    def reserve(self, address: IPAddress) -> None:
        if address not in self.subnet:
            raise InvalidParameter(f"address {address} is not in subnet {self.subnet}")
        if address in self.fixed():
            raise Conflict(f"address {address} is reserved on subnet {self.subnet}")
        # Static addresses may lie outside --ip-range but inside the subnet.
        index = int(address) - self._base
        if index in self._used:
            raise Conflict(f"address {address} is already in use")
        self._used.add(index)

    def release(self, address: IPAddress) -> None:
        if address in self.subnet and address not in self.fixed():
            index = int(address) - self._base
            self._used.discard(index)
            self._hint = min(self._hint, index)
