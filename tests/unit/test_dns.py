"""The embedded resolver's zone logic, without sockets: zones, access, answers."""

from __future__ import annotations

import ipaddress
import os

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from qiao.dns import resolver
from qiao.dns.resolver import TTL, Resolver, Upstreams, Zone, build_zone

WEB = "c" * 12
DB = "d" * 12


@pytest.fixture
def zone() -> Zone:
    return build_zone(
        ["10.1.0.1", "fd00:1::1"],
        ["10.1.0.0/24", "fd00:1::/64"],
        False,
        [
            (["web", WEB, "Frontend"], ["10.1.0.2", "fd00:1::2"]),
            (["db", DB, "store.local"], ["10.1.0.3"]),
            (["cache", "e" * 12, "store.local"], ["10.1.0.4"]),
        ],
    )


@pytest.fixture
def dns() -> Resolver:
    """A resolver without its epoll loop, thread or sockets: only ``answer`` and ``forward`` are used."""
    r = Resolver.__new__(Resolver)
    r.upstreams = Upstreams("/nonexistent/resolv.conf", set())
    return r


def ask(dns: Resolver, zone: Zone, name: str, qtype: str = "A") -> DNSRecord | None:
    query = DNSRecord.question(name, qtype)
    data = dns.answer(zone, query.pack())
    if data is None:
        return None
    reply = DNSRecord.parse(data)
    assert reply.header.id == query.header.id and reply.header.qr == 1
    assert [str(q.qname) for q in reply.questions] == [str(query.q.qname)]
    return reply


def answers(reply: DNSRecord) -> list[tuple[str, str, str, int]]:
    return [(str(rr.rname), QTYPE[rr.rtype], str(rr.rdata), rr.ttl) for rr in reply.rr]


# -- build_zone / Zone -------------------------------------------------------


def test_build_zone_names_and_reverse(zone):
    assert zone.gateways == ["10.1.0.1", "fd00:1::1"]
    assert zone.subnets == [ipaddress.ip_network("10.1.0.0/24"), ipaddress.ip_network("fd00:1::/64")]
    assert zone.internal is False
    assert zone.names["web"] == ["10.1.0.2", "fd00:1::2"]
    assert zone.names[WEB] == ["10.1.0.2", "fd00:1::2"]
    assert zone.names["frontend"] == ["10.1.0.2", "fd00:1::2"]  # names are stored lower-case
    assert "Frontend" not in zone.names
    assert zone.names["store.local"] == ["10.1.0.3", "10.1.0.4"]  # an alias shared by two endpoints
    # the first name (the container's) answers reverse lookups
    assert zone.reverse == {
        "2.0.1.10.in-addr.arpa": "web",
        ipaddress.ip_address("fd00:1::2").reverse_pointer: "web",
        "3.0.1.10.in-addr.arpa": "db",
        "4.0.1.10.in-addr.arpa": "cache",
    }


def test_build_zone_strips_trailing_dot_and_keeps_first_reverse():
    zone = build_zone(["10.1.0.1"], ["10.1.0.0/24"], True, [(["a.", "B."], ["10.1.0.2"]), (["c"], ["10.1.0.2"])])
    assert zone.names == {"a": ["10.1.0.2"], "b": ["10.1.0.2"], "c": ["10.1.0.2"]}
    assert zone.reverse == {"2.0.1.10.in-addr.arpa": "a."}  # setdefault: the first endpoint keeps it
    assert zone.internal is True


def test_zone_put_and_remove_touch_one_record(zone):
    zone.put("new", ["api", "store.local"], ["10.1.0.9"])
    assert zone.names["api"] == ["10.1.0.9"]
    assert zone.names["store.local"] == ["10.1.0.3", "10.1.0.4", "10.1.0.9"]
    assert zone.reverse["9.0.1.10.in-addr.arpa"] == "api"
    zone.put("new", ["api2"], ["10.1.0.9"])  # renamed in place
    assert "api" not in zone.names and zone.names["store.local"] == ["10.1.0.3", "10.1.0.4"]
    assert zone.reverse["9.0.1.10.in-addr.arpa"] == "api2"
    zone.remove("new")
    zone.remove("new")  # twice: nothing to do
    assert "api2" not in zone.names and "9.0.1.10.in-addr.arpa" not in zone.reverse


def test_zone_shared_address_reverse_passes_to_the_next_endpoint():
    zone = build_zone(["10.1.0.1"], ["10.1.0.0/24"], False, [])
    zone.put("a", ["first"], ["10.1.0.2"])
    zone.put("b", ["second"], ["10.1.0.2"])
    assert zone.reverse["2.0.1.10.in-addr.arpa"] == "first"
    zone.remove("a")
    assert zone.reverse["2.0.1.10.in-addr.arpa"] == "second" and zone.names == {"second": ["10.1.0.2"]}


def test_zone_replaces_a_group_by_difference():
    zone = build_zone(["10.1.0.1"], ["10.1.0.0/24"], False, [])
    zone.put("local", ["web"], ["10.1.0.2"])
    zone.replace_group("remote", [(["r1"], ["10.1.1.2"]), (["r2"], ["10.1.1.3"])])
    zone.replace_group("remote", [(["r2"], ["10.1.1.3"]), (["r3"], ["10.1.1.4"])])
    assert zone.names == {"web": ["10.1.0.2"], "r2": ["10.1.1.3"], "r3": ["10.1.1.4"]}
    zone.replace_group("remote", [])
    assert zone.names == {"web": ["10.1.0.2"]}


def test_build_zone_empty():
    zone = build_zone(["10.1.0.1"], ["10.1.0.0/24"], False, [])
    assert (zone.names, zone.reverse) == ({}, {})


@pytest.mark.parametrize(
    "client, allowed",
    [
        ("10.1.0.2", True),
        ("10.1.0.255", True),
        ("10.1.1.2", False),
        ("172.17.0.2", False),
        ("127.0.0.1", False),
        ("fd00:1::2", True),
        ("fd00:2::2", False),
        ("::ffff:10.1.0.7", True),  # an IPv4 client seen on a dual-stack socket
        ("::ffff:10.9.0.7", False),
        ("fe80::1%eth0", False),
    ],
)
def test_zone_allows_only_the_networks_subnets(zone, client, allowed):
    assert zone.allows(client) is allowed


def test_zone_allows_scoped_address_in_subnet():
    zone = build_zone(["fe80::1"], ["fe80::/64"], False, [])
    assert zone.allows("fe80::5%br-0123")


# -- answers -----------------------------------------------------------------


def test_answer_a(dns, zone):
    reply = ask(dns, zone, "web", "A")
    assert reply.header.rcode == RCODE.NOERROR and reply.header.ra == 1
    assert answers(reply) == [("web.", "A", "10.1.0.2", TTL)]
    assert TTL == 600  # Docker's embedded DNS


def test_answer_is_case_insensitive_and_by_short_id(dns, zone):
    assert answers(ask(dns, zone, "WeB.", "A")) == [("WeB.", "A", "10.1.0.2", 600)]
    assert answers(ask(dns, zone, "frontend", "A")) == [("frontend.", "A", "10.1.0.2", 600)]
    assert answers(ask(dns, zone, WEB, "A")) == [(WEB + ".", "A", "10.1.0.2", 600)]


def test_answer_aaaa(dns, zone):
    assert answers(ask(dns, zone, "web", "AAAA")) == [("web.", "AAAA", "fd00:1::2", 600)]


def test_answer_any_gives_both_families(dns, zone):
    assert answers(ask(dns, zone, "web", "ANY")) == [("web.", "A", "10.1.0.2", 600), ("web.", "AAAA", "fd00:1::2", 600)]


def test_answer_shared_alias_gives_every_address(dns, zone):
    assert [a[2] for a in answers(ask(dns, zone, "store.local", "A"))] == ["10.1.0.3", "10.1.0.4"]


@pytest.mark.parametrize("name, qtype", [("db", "AAAA"), ("web", "MX"), ("web", "TXT"), ("db", "SRV")])
def test_answer_nodata_for_known_name_without_such_record(dns, zone, name, qtype):
    reply = ask(dns, zone, name, qtype)
    assert reply is not None  # never forwarded: the name is ours
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []


def test_answer_ptr(dns, zone):
    assert answers(ask(dns, zone, "2.0.1.10.in-addr.arpa", "PTR")) == [("2.0.1.10.in-addr.arpa.", "PTR", "web.", 600)]
    assert answers(ask(dns, zone, "3.0.1.10.in-addr.arpa.", "PTR")) == [("3.0.1.10.in-addr.arpa.", "PTR", "db.", 600)]
    v6 = ipaddress.ip_address("fd00:1::2").reverse_pointer
    assert answers(ask(dns, zone, v6, "PTR")) == [(v6 + ".", "PTR", "web.", 600)]


def test_answer_ptr_of_unknown_address_is_forwarded(dns, zone):
    assert ask(dns, zone, "9.0.1.10.in-addr.arpa", "PTR") is None


def test_answer_a_query_for_a_reverse_name_is_not_a_ptr(dns, zone):
    assert ask(dns, zone, "2.0.1.10.in-addr.arpa", "A") is None


@pytest.mark.parametrize("name", ["example.com", "web.example.com", "webx", "store", "local"])
def test_unknown_name_is_forwarded(dns, zone, name):
    assert ask(dns, zone, name) is None


def test_internal_network_answers_nxdomain_instead_of_forwarding(dns):
    zone = build_zone(["10.2.0.1"], ["10.2.0.0/24"], True, [(["web"], ["10.2.0.2"])])
    reply = ask(dns, zone, "example.com", "A")
    assert reply.header.rcode == RCODE.NXDOMAIN and reply.rr == []
    assert ask(dns, zone, "9.0.2.10.in-addr.arpa", "PTR").header.rcode == RCODE.NXDOMAIN
    assert answers(ask(dns, zone, "web", "A")) == [("web.", "A", "10.2.0.2", 600)]  # its own names still resolve
    assert ask(dns, zone, "web", "AAAA").header.rcode == RCODE.NOERROR


@pytest.mark.parametrize("data", [b"", b"\x00", b"not a dns message at all"])
def test_garbage_is_dropped(dns, zone, data):
    assert dns.answer(zone, data) == b""


# -- forwarding without upstreams, the upstream list ---------------------------


def test_forward_without_upstreams_is_servfail(dns):
    query = DNSRecord.question("example.com", "A")
    reply = DNSRecord.parse(dns.forward(query.pack()))
    assert reply.header.id == query.header.id and reply.header.rcode == RCODE.SERVFAIL


def test_forward_garbage_without_upstreams_is_dropped(dns):
    assert dns.forward(b"junk") == b""


def test_upstreams_follow_the_file_and_exclude_own_gateways(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 10.1.0.1\nnameserver 192.0.2.53\nnameserver 192.0.2.54\nnameserver 192.0.2.55\n")
    gateways = {"10.1.0.1"}
    up = Upstreams(str(path), gateways)
    # at most three (as resolv.conf), then qiao's own resolvers are left out: no loop
    assert up.servers() == ["192.0.2.53", "192.0.2.54"]
    gateways.discard("10.1.0.1")  # the set is shared with the resolver and changes with it
    assert up.servers() == ["10.1.0.1", "192.0.2.53", "192.0.2.54"]
    new = tmp_path / "new.conf"
    new.write_text("nameserver 198.51.100.1\n")
    os.replace(new, path)  # a new inode, as most tools write resolv.conf
    up._checked = float("-inf")  # the file is looked at no more than once a second
    assert up.servers() == ["198.51.100.1"]
    path.unlink()
    up._checked = float("-inf")
    assert up.servers() == []


def test_upstreams_exclude_defaults_to_nothing(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 192.0.2.53\n")
    assert Upstreams(str(path)).servers() == ["192.0.2.53"]


def test_module_reads_nameservers_through_etcfiles():
    assert resolver.host_nameservers.__module__ == "qiao.engine.etcfiles"


def test_a_containers_own_upstreams_replace_the_hosts(dns):
    """--dns on a user network: that container's queries for other names go to its servers only."""
    zone = build_zone(["10.1.0.1"], ["10.1.0.0/24"], False, [])
    zone.put("ep1", ["web"], ["10.1.0.2", "fd00:1::2"], ["192.0.2.53"])
    zone.put("ep2", ["db"], ["10.1.0.3"])
    assert zone.upstreams_of("10.1.0.2") == ["192.0.2.53"] == zone.upstreams_of("fd00:1::2%eth0")
    assert zone.upstreams_of("10.1.0.3") is None
    zone.remove("ep1")
    assert zone.upstreams == {} and zone.upstreams_of("10.1.0.2") is None
    dns.upstreams = Upstreams("/nonexistent/resolv.conf", set())
    query = DNSRecord.question("example.com", "A")
    assert DNSRecord.parse(dns.forward(query.pack(), [])).header.rcode == RCODE.SERVFAIL
