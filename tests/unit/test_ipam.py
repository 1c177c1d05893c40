"""IPAM: Docker's default pools, subnet choice, per-network address pools."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from qiao.engine.errors import Conflict, InvalidParameter
from qiao.engine.ipam import DEFAULT_POOLS, AddressPool, choose_subnet, parse_address, parse_subnet

A = IPv4Address
N = IPv4Network


# -- default pools -----------------------------------------------------------


def test_default_pools_are_dockers():
    assert DEFAULT_POOLS[:15] == [N(f"172.{n}.0.0/16") for n in range(17, 32)]
    rest = DEFAULT_POOLS[15:]
    assert len(rest) == 16
    assert rest[0] == N("192.168.0.0/20")
    assert rest[1] == N("192.168.16.0/20")
    assert rest[-1] == N("192.168.240.0/20")
    assert all(p.prefixlen == 20 and p.subnet_of(N("192.168.0.0/16")) for p in rest)
    assert len(DEFAULT_POOLS) == 31
    assert len(set(DEFAULT_POOLS)) == 31


# -- choose_subnet -----------------------------------------------------------


def test_choose_subnet_first_pool_when_nothing_reserved():
    assert choose_subnet([]) == N("172.17.0.0/16")


def test_choose_subnet_skips_on_link_route():
    assert choose_subnet([N("172.17.0.0/16")]) == N("172.18.0.0/16")
    # a smaller on-link route inside a pool still rules the pool out
    assert choose_subnet([N("172.17.5.0/24")]) == N("172.18.0.0/16")
    # a larger one rules out every pool it covers
    assert choose_subnet([N("172.16.0.0/12")]) == N("192.168.0.0/20")


def test_choose_subnet_skips_host_address_and_nameserver():
    host_address = N("172.17.0.9/32")
    nameserver = N("172.18.200.1/32")
    assert choose_subnet([host_address, nameserver]) == N("172.19.0.0/16")


def test_choose_subnet_skips_taken_subnets():
    taken = [N("172.17.0.0/16"), N("172.18.0.0/16"), N("172.20.0.0/16")]
    assert choose_subnet(taken) == N("172.19.0.0/16")


def test_choose_subnet_unrelated_reservations_do_not_matter():
    assert choose_subnet([N("10.0.0.0/8"), N("192.168.1.0/24"), N("172.16.0.0/16")]) == N("172.17.0.0/16")


def test_choose_subnet_into_192_168():
    reserved = [N(f"172.{n}.0.0/16") for n in range(17, 32)] + [N("192.168.0.0/24")]
    assert choose_subnet(reserved) == N("192.168.16.0/20")


def test_choose_subnet_exhausted():
    with pytest.raises(Conflict, match="non-overlapping IPv4 address pool"):
        choose_subnet([N("172.16.0.0/12"), N("192.168.0.0/16")])
    # every pool taken one by one
    with pytest.raises(Conflict):
        choose_subnet(list(DEFAULT_POOLS))


def test_choose_subnet_custom_pools():
    pools = [N("10.1.0.0/24"), N("10.2.0.0/24")]
    assert choose_subnet([N("10.1.0.7/32")], pools) == N("10.2.0.0/24")


# -- parse_subnet / parse_address ------------------------------------------


def test_parse_subnet_ok():
    assert parse_subnet("10.10.0.0/16") == N("10.10.0.0/16")
    assert parse_subnet("10.10.0.0/30") == N("10.10.0.0/30")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("nonsense", "invalid subnet"),
        ("10.0.0.0/33", "invalid subnet"),
        ("300.1.0.0/16", "invalid subnet"),
        ("", "invalid subnet"),
        ("10.0.0.1/24", "host bits set"),
        ("fd00::/64", "only IPv4"),
        ("10.0.0.0/31", "too small"),
        ("10.0.0.0/32", "too small"),
    ],
)
def test_parse_subnet_errors(text, fragment):
    with pytest.raises(InvalidParameter, match=fragment):
        parse_subnet(text)


def test_parse_address():
    assert parse_address("10.0.0.1") == A("10.0.0.1")
    with pytest.raises(InvalidParameter, match="invalid gateway 'x'"):
        parse_address("x", "gateway")
    with pytest.raises(InvalidParameter):
        parse_address("fd00::1")


# -- AddressPool -------------------------------------------------------------


def pool(subnet: str, gateway: str | None = None, ip_range: str | None = None) -> AddressPool:
    net = N(subnet)
    gw = A(gateway) if gateway else net.network_address + 1
    return AddressPool(net, gw, N(ip_range) if ip_range else None)


def test_allocate_lowest_free_skips_network_and_gateway():
    p = pool("172.17.0.0/16")
    assert [str(p.allocate()) for _ in range(3)] == ["172.17.0.2", "172.17.0.3", "172.17.0.4"]


def test_allocate_skips_gateway_elsewhere():
    p = pool("10.0.0.0/29", gateway="10.0.0.3")
    assert [str(p.allocate()) for _ in range(5)] == ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    with pytest.raises(Conflict):
        p.allocate()


def test_release_then_reuse_lowest():
    p = pool("10.0.0.0/24")
    got = [p.allocate() for _ in range(5)]  # .2 .. .6
    p.release(got[3])
    p.release(got[1])
    assert p.allocate() == got[1]
    assert p.allocate() == got[3]
    assert p.allocate() == A("10.0.0.7")


def test_release_of_fixed_addresses_is_ignored():
    p = pool("10.0.0.0/30")
    p.release(A("10.0.0.0"))
    p.release(A("10.0.0.1"))
    p.release(A("10.0.0.3"))
    p.release(A("192.0.2.1"))  # not in the pool at all
    assert p.allocate() == A("10.0.0.2")
    with pytest.raises(Conflict):
        p.allocate()


def test_slash30_edge_one_address():
    p = pool("10.0.0.0/30")
    assert p.allocate() == A("10.0.0.2")
    with pytest.raises(Conflict, match="no available IPv4 addresses"):
        p.allocate()
    p.release(A("10.0.0.2"))
    assert p.allocate() == A("10.0.0.2")


def test_exhaustion_and_never_network_broadcast_gateway():
    p = pool("10.0.0.0/28")
    got = []
    while True:
        try:
            got.append(p.allocate())
        except Conflict:
            break
    assert got == [A(f"10.0.0.{i}") for i in range(2, 15)]
    assert A("10.0.0.0") not in got and A("10.0.0.1") not in got and A("10.0.0.15") not in got


def test_ip_range_restricts_allocation():
    p = pool("10.1.0.0/16", ip_range="10.1.2.0/30")
    got = [p.allocate() for _ in range(4)]
    # the range's own first and last addresses are ordinary hosts of the subnet
    assert got == [A("10.1.2.0"), A("10.1.2.1"), A("10.1.2.2"), A("10.1.2.3")]
    with pytest.raises(Conflict):
        p.allocate()


def test_ip_range_containing_gateway_and_network_address():
    p = pool("10.1.0.0/24", ip_range="10.1.0.0/29")
    assert [str(p.allocate()) for _ in range(6)] == [f"10.1.0.{i}" for i in range(2, 8)]
    with pytest.raises(Conflict):
        p.allocate()


def test_ip_range_at_end_of_subnet_skips_broadcast():
    p = pool("10.1.0.0/24", ip_range="10.1.0.252/30")
    assert [str(p.allocate()) for _ in range(3)] == ["10.1.0.252", "10.1.0.253", "10.1.0.254"]
    with pytest.raises(Conflict):
        p.allocate()


def test_reserve_marks_used_and_conflicts():
    p = pool("10.0.0.0/24")
    p.reserve(A("10.0.0.2"))
    assert p.allocate() == A("10.0.0.3")
    with pytest.raises(Conflict, match="already in use"):
        p.reserve(A("10.0.0.2"))
    with pytest.raises(Conflict, match="already in use"):
        p.reserve(A("10.0.0.3"))


@pytest.mark.parametrize("address", ["10.0.0.0", "10.0.0.1", "10.0.0.255"])
def test_reserve_fixed_addresses_conflict(address):
    p = pool("10.0.0.0/24")
    with pytest.raises(Conflict, match="reserved"):
        p.reserve(A(address))


def test_reserve_outside_subnet_is_invalid():
    p = pool("10.0.0.0/24")
    with pytest.raises(InvalidParameter, match="not in subnet"):
        p.reserve(A("10.0.1.5"))


def test_reserve_outside_ip_range_inside_subnet():
    p = pool("10.0.0.0/24", ip_range="10.0.0.128/25")
    p.reserve(A("10.0.0.50"))  # static address outside the range: accepted, not tracked
    assert p.allocate() == A("10.0.0.128")
    p.reserve(A("10.0.0.130"))
    assert p.allocate() == A("10.0.0.129")
    assert p.allocate() == A("10.0.0.131")


def test_large_pool_allocation_is_sequential():
    p = pool("172.17.0.0/16")
    last = None
    for _ in range(600):
        last = p.allocate()
    assert last == A("172.17.2.89")  # .2 + 599
