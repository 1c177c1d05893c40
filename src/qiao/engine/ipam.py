"""IPAM: Docker's default pools, subnet choice, and per-network address pools.

Pure logic, no kernel: the daemon holds one :class:`AddressPool` per network
in memory, so allocation needs no store read and costs the same at the 1st
and the 500th container (a bitmap, lowest free bit first, as Docker's
default IPAM hands out the lowest free address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from qiao.engine.errors import Conflict, InvalidParameter


def _default_pools() -> list[IPv4Network]:
    pools = [IPv4Network(f"172.{n}.0.0/16") for n in range(17, 32)]
    pools += list(IPv4Network("192.168.0.0/16").subnets(new_prefix=20))
    return pools


DEFAULT_POOLS = _default_pools()


def parse_subnet(text: str) -> IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidParameter(f"invalid subnet {text!r}: {exc}") from None
    if not isinstance(net, IPv4Network):
        raise InvalidParameter(f"invalid subnet {text!r}: only IPv4 is supported on this network")
    if net.prefixlen > 30:
        raise InvalidParameter(f"invalid subnet {text}: too small, the prefix must be /30 or shorter")
    return net


def parse_address(text: str, what: str = "address") -> IPv4Address:
    try:
        return IPv4Address(text)
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
    """Addresses of one subnet (optionally restricted to ``ip_range``).

    The network address, the broadcast address and the gateway are never
    handed out.
    """

    def __init__(self, subnet: IPv4Network, gateway: IPv4Address, ip_range: IPv4Network | None = None):
        self.subnet = subnet
        self.gateway = gateway
        self.range = ip_range or subnet
        self._base = int(self.range.network_address)
        self._size = self.range.num_addresses
        self._used = 0  # bit i set: range address i is taken
        for fixed in (subnet.network_address, subnet.broadcast_address, gateway):
            if fixed in self.range:
                self._used |= 1 << (int(fixed) - self._base)

    def allocate(self) -> IPv4Address:
        free_bit = ~self._used & (self._used + 1)  # lowest clear bit
        index = free_bit.bit_length() - 1
        if index >= self._size:
            raise Conflict("no available IPv4 addresses on this network's address pools")
        self._used |= free_bit
        return IPv4Address(self._base + index)

    def reserve(self, address: IPv4Address) -> None:
        if address not in self.subnet:
            raise InvalidParameter(f"address {address} is not in subnet {self.subnet}")
        if address in (self.subnet.network_address, self.subnet.broadcast_address, self.gateway):
            raise Conflict(f"address {address} is reserved on subnet {self.subnet}")
        if address not in self.range:
            # Static addresses may lie outside --ip-range but inside the subnet.
            return
        bit = 1 << (int(address) - self._base)
        if self._used & bit:
            raise Conflict(f"address {address} is already in use")
        self._used |= bit

    def release(self, address: IPv4Address) -> None:
        if address in self.range and address not in (self.subnet.network_address, self.subnet.broadcast_address, self.gateway):
            self._used &= ~(1 << (int(address) - self._base))
