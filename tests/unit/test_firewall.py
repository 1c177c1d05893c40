"""The nftables text qiao sends (rendered, never applied), the intent it is
rebuilt from, the healer's bookkeeping, the notification parser, and the
stub firewall."""

from __future__ import annotations

import struct

import pytest

from qiao.kernel import nftwatch
from qiao.kernel.firewall import (
    BASE,
    GUARD_BASE,
    GUARD_TABLE,
    RESET,
    TABLE,
    BridgeRules,
    EndpointGuard,
    NftFirewall,
    PortMapping,
    StubFirewall,
    elements_script,
    guard_elements_script,
    network_script,
)

WILD = PortMapping("tcp", "0.0.0.0", 8080, "10.1.0.2", 80)
BOUND = PortMapping("udp", "127.0.0.1", 5353, "10.1.0.3", 53)
SCTP = PortMapping("sctp", "0.0.0.0", 9, "10.1.0.2", 9)


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


# -- the base table ----------------------------------------------------------


def test_base_declares_the_maps():
    for decl in (
        "set bridges { type ifname; }",
        "map fwd_in { type ifname : verdict; }",
        "map fwd_out { type ifname : verdict; }",
        "map nat_out { type ifname : verdict; }",
        "map published { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }",
        "map published_any { type inet_proto . inet_service : ipv4_addr . inet_service; }",
    ):
        assert decl in lines(BASE)
    assert BASE.startswith(f"table {TABLE} {{") and TABLE == "inet qiao"


def test_base_policies_stay_accept():
    hooks = [line for line in lines(BASE + GUARD_BASE) if line.startswith("type ")]
    assert len(hooks) == 6 and all(line.endswith("policy accept;") for line in hooks)


def test_base_forward_checks_internal_networks_before_the_accepting_chains():
    """An accept in fwd-in-BR (e.g. ``ct status dnat``) ends the base chain: an
    internal network's fwd-out drop must come first, or its containers reach
    other networks' published ports through the gateway address."""
    body = BASE.split("chain forward {", 1)[1].split("}", 1)[0]
    rules = lines(body)[1:]
    assert [r.split(" comment ")[0] for r in rules] == ["iifname vmap @fwd_out", "oifname vmap @fwd_in"]


# -- per network -------------------------------------------------------------


def test_network_default_rules():
    assert lines(network_script(BridgeRules("br-x", "10.1.0.0/24"))) == [
        "add chain inet qiao fwd-in-br-x",
        "add rule inet qiao fwd-in-br-x ct state established,related accept",
        'add rule inet qiao fwd-in-br-x ct status dnat accept comment "published ports"',
        'add rule inet qiao fwd-in-br-x iifname "br-x" accept',
        "add rule inet qiao fwd-in-br-x drop",
        'add element inet qiao fwd_in { "br-x" : jump fwd-in-br-x }',
        "add chain inet qiao nat-out-br-x",
        'add rule inet qiao nat-out-br-x oifname "br-x" ip saddr 10.1.0.0/24 ct status dnat masquerade comment "hairpin"',
        'add element inet qiao nat_out { "br-x" : jump nat-out-br-x }',
        'add element inet qiao bridges { "br-x" }',
        'add rule inet qiao nat-out-br-x oifname != "br-x" ip saddr 10.1.0.0/24 masquerade',
    ]


def test_network_masquerade_v4_and_v6():
    text = network_script(BridgeRules("br-x", "10.1.0.0/24", subnet6="fd00:1::/64"))
    masq = [line for line in lines(text) if line.endswith(" masquerade")]
    assert masq == [
        'add rule inet qiao nat-out-br-x oifname != "br-x" ip saddr 10.1.0.0/24 masquerade',
        'add rule inet qiao nat-out-br-x oifname != "br-x" ip6 saddr fd00:1::/64 masquerade',
    ]


def test_network_without_masquerade_keeps_only_hairpin():
    text = network_script(BridgeRules("br-x", "10.1.0.0/24", masquerade=False, subnet6="fd00:1::/64"))
    assert [line for line in lines(text) if "masquerade" in line] == [
        'add rule inet qiao nat-out-br-x oifname "br-x" ip saddr 10.1.0.0/24 ct status dnat masquerade comment "hairpin"'
    ]
    assert "ip6" not in text


def test_network_internal_drops_what_leaves_the_bridge():
    text = network_script(BridgeRules("br-i", "10.2.0.0/24", masquerade=False, internal=True))
    assert lines(text)[-3:] == [
        "add chain inet qiao fwd-out-br-i",
        'add rule inet qiao fwd-out-br-i oifname != "br-i" drop comment "internal network"',
        'add element inet qiao fwd_out { "br-i" : jump fwd-out-br-i }',
    ]
    assert 'oifname != "br-i" ip saddr' not in text  # no way out, so nothing to masquerade
    assert 'iifname "br-i" accept' in text  # within the network, traffic flows


def test_network_not_internal_has_no_fwd_out():
    assert "fwd-out" not in network_script(BridgeRules("br-x", "10.1.0.0/24"))
    assert "fwd_out" not in network_script(BridgeRules("br-x", "10.1.0.0/24"))


def test_network_icc_false_drops_container_to_container():
    text = lines(network_script(BridgeRules("br-x", "10.1.0.0/24", icc=False)))
    assert 'add rule inet qiao fwd-in-br-x iifname "br-x" drop comment "icc=false"' in text
    assert 'add rule inet qiao fwd-in-br-x iifname "br-x" accept' not in text
    # published ports still reach the containers, before the icc drop
    dnat = text.index('add rule inet qiao fwd-in-br-x ct status dnat accept comment "published ports"')
    assert dnat < text.index('add rule inet qiao fwd-in-br-x iifname "br-x" drop comment "icc=false"')


def test_bridge_rules_defaults():
    rules = BridgeRules("br-x", "10.1.0.0/24")
    assert (rules.masquerade, rules.internal, rules.icc, rules.subnet6) == (True, False, True, "")


# -- port maps ---------------------------------------------------------------


def test_elements_add_with_data():
    assert elements_script("add", [WILD, BOUND, SCTP], with_data=True) == (
        "add element inet qiao published { udp . 127.0.0.1 . 5353 : 10.1.0.3 . 53 }\n"
        "add element inet qiao published_any { tcp . 8080 : 10.1.0.2 . 80, sctp . 9 : 10.1.0.2 . 9 }\n"
    )


def test_elements_delete_keys_only():
    assert elements_script("delete", [WILD, BOUND], with_data=False) == (
        "delete element inet qiao published { udp . 127.0.0.1 . 5353 }\ndelete element inet qiao published_any { tcp . 8080 }\n"
    )


def test_elements_only_the_maps_used():
    assert elements_script("add", [WILD], with_data=True) == "add element inet qiao published_any { tcp . 8080 : 10.1.0.2 . 80 }\n"
    assert elements_script("add", [BOUND], with_data=True).startswith("add element inet qiao published {")
    assert elements_script("add", [], with_data=True).strip() == ""


def test_port_mapping_wildcard():
    assert WILD.wildcard and not BOUND.wildcard


# -- NftFirewall scripts, with the library replaced ----------------------------


class FakeNft(NftFirewall):
    """Records scripts instead of applying them; ``chains`` plays other tables' chains;
    ``fail`` makes the next that many non-empty transactions fail."""

    def __init__(self, chains: dict[str, list[dict]] | None = None, fail: int = 0):  # no libnftables
        self._init_state()
        self.scripts: list[str] = []
        self.chains = chains or {}
        self.fail = fail

    def _apply(self, script: str) -> None:
        self.scripts.append(script)
        if self.fail and script.strip():
            self.fail -= 1
            raise RuntimeError("nftables: No such file or directory")

    def _list(self, what: str) -> list[dict]:
        return self.chains.get(what, [])


DROP_CHAIN = {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "drop"}}
WHERE = "ip filter FORWARD"


def test_reset_replaces_the_whole_table_in_one_script():
    fw = FakeNft()
    nets = [BridgeRules("qiao0", "172.17.0.0/16"), BridgeRules("br-i", "10.2.0.0/24", masquerade=False, internal=True)]
    fw.reset(nets, [WILD])
    (script,) = fw.scripts
    assert script.startswith(f"add table {TABLE}\ndelete table {TABLE}\nadd table {GUARD_TABLE}\ndelete table {GUARD_TABLE}\n" + BASE)
    assert network_script(nets[0]) in script and network_script(nets[1]) in script
    assert script.rstrip().endswith("add element inet qiao published_any { tcp . 8080 : 10.1.0.2 . 80 }")


def test_reset_without_mappings_adds_no_elements():
    fw = FakeNft()
    fw.reset([], [])
    assert fw.scripts == [RESET + BASE + GUARD_BASE + "\n"]


def test_add_and_del_network():
    fw = FakeNft()
    rules = BridgeRules("br-x", "10.1.0.0/24")
    fw.add_network(rules)
    fw.del_network(rules)
    assert fw.scripts[0].strip() == network_script(rules).strip()
    assert lines(fw.scripts[1]) == [
        'delete element inet qiao fwd_in { "br-x" }',
        'delete element inet qiao nat_out { "br-x" }',
        'delete element inet qiao bridges { "br-x" }',
        "flush chain inet qiao fwd-in-br-x",
        "delete chain inet qiao fwd-in-br-x",
        "flush chain inet qiao nat-out-br-x",
        "delete chain inet qiao nat-out-br-x",
    ]


def test_del_internal_network_removes_fwd_out():
    fw = FakeNft()
    fw.del_network(BridgeRules("br-i", "10.2.0.0/24", masquerade=False, internal=True))
    assert lines(fw.scripts[0])[:3] == [
        'delete element inet qiao fwd_out { "br-i" }',
        "flush chain inet qiao fwd-out-br-i",
        "delete chain inet qiao fwd-out-br-i",
    ]


def test_add_and_del_ports():
    fw = FakeNft()
    fw.add_ports([WILD])
    fw.del_ports([WILD])
    assert fw.scripts == [elements_script("add", [WILD], True), elements_script("delete", [WILD], False)]


def test_foreign_drop_chain_gets_the_accept_pair():
    fw = FakeNft({"chains": [DROP_CHAIN]})
    fw.add_network(BridgeRules("br-x", "10.1.0.0/24"))
    assert lines(fw.scripts[0])[-2:] == [
        f'insert rule {WHERE} oifname "br-x" accept comment "qiao:br-x"',
        f'insert rule {WHERE} iifname "br-x" accept comment "qiao:br-x"',
    ]


@pytest.mark.parametrize(
    "chain",
    [
        {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "accept"},
        {"family": "ip", "table": "filter", "name": "INPUT", "hook": "input", "policy": "drop"},
        {"family": "bridge", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "drop"},
        {"family": "inet", "table": "qiao", "name": "forward", "hook": "forward", "policy": "drop"},
    ],
)
def test_other_chains_are_left_alone(chain):
    fw = FakeNft({"chains": [{"chain": chain}]})
    fw.ensure_foreign_hooks(["br-x"])
    assert fw.scripts[0].strip() == ""


def test_foreign_pair_complete_is_kept_partial_is_replaced():
    rules = [{"rule": {"comment": "qiao:br-x", "handle": 7}}, {"rule": {"comment": "qiao:br-x", "handle": 8}}]
    rules += [{"rule": {"comment": "qiao:br-y", "handle": 9}}, {"rule": {"comment": "other", "handle": 1}}, {"chain": {}}]
    fw = FakeNft({"chains": [DROP_CHAIN], f"chain {WHERE}": rules})
    fw.ensure_foreign_hooks(["br-x", "br-y"])
    assert lines(fw.scripts[0]) == [
        f"delete rule {WHERE} handle 9",
        f'insert rule {WHERE} oifname "br-y" accept comment "qiao:br-y"',
        f'insert rule {WHERE} iifname "br-y" accept comment "qiao:br-y"',
    ]


def test_foreign_pair_goes_with_the_network():
    rules = [{"rule": {"comment": "qiao:br-x", "handle": 7}}, {"rule": {"comment": "qiao:br-x", "handle": 8}}]
    fw = FakeNft({"chains": [DROP_CHAIN], f"chain {WHERE}": rules})
    fw.del_network(BridgeRules("br-x", "10.1.0.0/24"))
    assert lines(fw.scripts[0])[:2] == [f"delete rule {WHERE} handle 7", f"delete rule {WHERE} handle 8"]


# -- host loopback -----------------------------------------------------------


def test_loopback_from_a_bridge_is_dropped_before_conntrack_and_nat():
    """``route_localnet=1`` on the bridges lets 127.0.0.0/8 in from containers: the raw chain drops it.
    At priority raw nothing is un-NATed yet, so the reply to a host -> 127.0.0.1 published
    connection (addressed to the gateway it was masqueraded to) is not mistaken for it."""
    body = BASE.split("chain raw {", 1)[1].split("}", 1)[0]
    rules = lines(body)
    assert rules[0] == "type filter hook prerouting priority raw; policy accept;"
    assert [r.split(" comment ")[0] for r in rules[1:]] == [
        "iifname @bridges ip daddr 127.0.0.0/8 drop",
        "iifname @bridges ip6 daddr ::1 drop",
    ]


def test_every_network_is_a_member_of_bridges_and_leaves_it():
    fw = FakeNft()
    fw.add_network(BridgeRules("br-x", "10.1.0.0/24"))
    fw.del_network(BridgeRules("br-x", "10.1.0.0/24"))
    assert 'add element inet qiao bridges { "br-x" }' in lines(fw.scripts[0])
    assert 'delete element inet qiao bridges { "br-x" }' in lines(fw.scripts[1])


# -- anti-spoofing (table bridge qiao) ------------------------------------------

G1 = EndpointGuard("veth1111111", ("172.17.0.2",))
G2 = EndpointGuard("veth2222222", ("10.8.0.3", "fd00:8::3"))


def test_guard_table_declares_its_sets_and_only_jumps_for_guarded_ports():
    assert GUARD_BASE.startswith(f"table {GUARD_TABLE} {{") and GUARD_TABLE == "bridge qiao"
    for decl in ("set ports { type ifname; }", "set addrs4 { type ifname . ipv4_addr; }", "set addrs6 { type ifname . ipv6_addr; }"):
        assert decl in lines(GUARD_BASE)
    pre = lines(GUARD_BASE.split("chain prerouting {", 1)[1].split("}", 1)[0])
    assert pre[0] == "type filter hook prerouting priority -300; policy accept;"  # before br_netfilter (0)
    assert [r.split(" comment ")[0] for r in pre[1:]] == ["iifname @ports jump guard"]


def test_guard_chain_allows_own_addresses_link_local_and_probes_then_drops():
    rules = [r.split(" comment ")[0] for r in lines(GUARD_BASE.split("chain guard {", 1)[1].split("}", 1)[0])]
    assert rules == [
        "iifname . ip saddr @addrs4 return",
        "iifname . arp saddr ip @addrs4 return",
        "arp saddr ip 0.0.0.0 return",
        "ip6 saddr fe80::/10 return",
        "ip6 saddr :: meta l4proto ipv6-icmp return",
        "iifname . ip6 saddr @addrs6 return",
        "drop",
    ]


def test_guard_elements_split_by_family():
    assert guard_elements_script("add", [G1, G2]) == (
        'add element bridge qiao ports { "veth1111111", "veth2222222" }\n'
        'add element bridge qiao addrs4 { "veth1111111" . 172.17.0.2, "veth2222222" . 10.8.0.3 }\n'
        'add element bridge qiao addrs6 { "veth2222222" . fd00:8::3 }\n'
    )
    assert guard_elements_script("delete", [G1]) == (
        'delete element bridge qiao ports { "veth1111111" }\ndelete element bridge qiao addrs4 { "veth1111111" . 172.17.0.2 }\n'
    )
    assert guard_elements_script("add", []) == ""


def test_add_and_del_guards_one_transaction_each():
    fw = FakeNft()
    fw.add_guards([G1, G2])
    fw.del_guards([G2])
    assert fw.scripts == [guard_elements_script("add", [G1, G2]), guard_elements_script("delete", [G2])]
    assert fw._guards == {G1.port: G1}


def test_reset_builds_both_tables_with_guards_in_one_transaction():
    fw = FakeNft()
    fw.reset([BridgeRules("qiao0", "172.17.0.0/16")], [WILD], [G1, G2])
    (script,) = fw.scripts
    assert script.startswith(RESET + BASE + GUARD_BASE)
    assert script.rstrip().endswith(guard_elements_script("add", [G1, G2]).rstrip())


# -- intent: additions retried as a rebuild, removals never fail ------------------


def test_add_when_the_table_is_gone_becomes_a_rebuild_with_it():
    fw = FakeNft()
    fw.reset([BridgeRules("qiao0", "172.17.0.0/16")], [], [G1])
    fw.fail = 1
    fw.add_ports([WILD])  # does not raise
    assert fw.scripts[-2] == elements_script("add", [WILD], True)
    rebuild = fw.scripts[-1]
    assert rebuild.startswith(RESET) and elements_script("add", [WILD], True) in rebuild and guard_elements_script("add", [G1]) in rebuild
    assert list(fw._mappings) == [WILD]


def test_add_that_fails_even_as_a_rebuild_takes_the_intent_back_and_raises():
    fw = FakeNft()
    fw.add_guards([G1])
    fw.fail = 2
    with pytest.raises(RuntimeError):
        fw.add_guards([G2])
    assert fw._guards == {G1.port: G1}
    assert fw.scripts[-1].startswith(RESET) and G2.port not in fw.scripts[-1]  # the previous intent, rebuilt
    assert fw._dirty is False


@pytest.mark.parametrize("call", ["del_ports", "del_guards", "del_network"])
def test_removal_when_the_table_is_gone_does_not_raise_and_rebuilds(call):
    net = BridgeRules("br-x", "10.1.0.0/24")
    fw = FakeNft()
    fw.reset([net], [WILD], [G1])
    fw.fail = 1
    getattr(fw, call)({"del_ports": [WILD], "del_guards": [G1], "del_network": net}[call])
    rebuild = fw.scripts[-1]
    assert rebuild.startswith(RESET)
    gone = {"del_ports": "tcp . 8080", "del_guards": G1.port, "del_network": "fwd-in-br-x"}[call]
    assert gone not in rebuild.split(GUARD_BASE, 1)[1]


def test_removal_whose_rebuild_fails_leaves_it_to_the_healer():
    fw = FakeNft(fail=2)
    fw.del_ports([WILD])  # still does not raise
    assert fw._dirty


# -- the healer's bookkeeping -----------------------------------------------------


def gen(n: int) -> nftwatch.Event:
    return nftwatch.Event(gen=n)


def obj(family: str = "inet", table: str = "qiao") -> nftwatch.Event:
    return nftwatch.Event(family=family, table=table)


class Gens:
    def __init__(self, now: int):
        self.now = now

    def generation(self) -> int:
        return self.now


def watched(now: int = 10) -> FakeNft:
    fw = FakeNft()
    fw._gens = Gens(now)
    fw._watch = object()  # as if notifications were on
    fw._seen = now
    return fw


def test_our_own_generations_are_not_healed():
    fw = watched()
    fw._ours = {11}
    assert fw._account([obj(), obj("bridge"), gen(11)], False) == ("", False)
    assert fw._seen == 11 and fw._ours == set()


def test_a_foreign_generation_that_touched_our_tables_is_healed():
    fw = watched()
    for table in (obj(), obj("bridge")):
        why, _ = fw._account([table, gen(fw._seen + 1)], False)
        assert why.startswith("generation")


def test_a_foreign_generation_elsewhere_is_left_alone():
    fw = watched()
    assert fw._account([obj("ip", "filter"), obj("inet", "other"), obj("bridge", "filter"), gen(11)], False) == ("", False)
    assert fw._account([obj("ip", "qiao"), gen(12)], False)[0] == ""  # same name, other family


def test_a_generation_split_across_reads_is_still_seen():
    fw = watched()
    why, touched = fw._account([obj()], False)
    assert (why, touched) == ("", True)
    assert fw._account([gen(11)], touched)[0]


def test_lost_notifications_check_every_missed_generation():
    fw = watched()
    fw._gens.now = 14
    fw._ours = {11, 12, 13, 14}
    assert fw._account([nftwatch.Event(lost=True)], False)[0] == ""  # all ours
    assert fw._seen == 14
    fw._gens.now = 16
    fw._ours = {15}
    assert "16..16" in fw._account([nftwatch.Event(lost=True)], False)[0]


def test_polling_without_notifications_rebuilds_on_any_foreign_generation():
    fw = watched()
    fw._watch = None
    assert fw._account([], False) == ("", False)
    fw._gens.now = 11
    assert fw._account([], False)[0]


def test_the_healer_backs_off_when_another_program_keeps_changing_the_tables():
    fw = watched()
    for _ in range(fw.HEAL_BURST):
        fw._heal("test")
    assert len(fw.scripts) == fw.HEAL_BURST and not fw._dirty
    fw._heal("test")
    assert len(fw.scripts) == fw.HEAL_BURST and fw._dirty  # deferred, retried later


# -- parsing the kernel's notifications ----------------------------------------------


def nlmsg(kind: int, family: int, attrs: list[tuple[int, bytes]]) -> bytes:
    body = struct.pack("=BBH", family, 0, 0)
    for t, data in attrs:
        body += struct.pack("=HH", 4 + len(data), t) + data + b"\0" * (-len(data) % 4)
    return struct.pack("=LHHLL", 16 + len(body), (10 << 8) | kind, 0, 1, 4242) + body


def test_notifications_name_the_table_and_the_generation():
    data = nlmsg(14, 7, [(1, b"qiao\0"), (2, b"addrs4\0")]) + nlmsg(15, 0, [(1, struct.pack("!L", 5)), (3, b"nft\0")])
    msgs = nftwatch._messages(data)
    assert [(kind, family) for kind, family, _ in msgs] == [(14, 7), (15, 0)]
    assert nftwatch._attrs(msgs[0][2])[1] == b"qiao\0"
    assert struct.unpack("!L", nftwatch._attrs(msgs[1][2])[nftwatch.NFTA_GEN_ID])[0] == 5


def test_a_netlink_error_is_raised():
    err = struct.pack("=LHHLL", 36, nftwatch.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1) + b"\0" * 16
    with pytest.raises(OSError):
        nftwatch._messages(err)


# -- the stub ----------------------------------------------------------------


def test_stub_firewall_records_intent():
    fw = StubFirewall()
    rules = BridgeRules("br-x", "10.1.0.0/24")
    fw.add_network(rules)
    fw.add_ports([WILD, BOUND])
    fw.del_ports([BOUND])
    assert fw.networks == {"br-x": rules} and fw.mappings == {WILD}
    fw.del_network(rules)
    fw.del_network(rules)  # twice is harmless
    fw.reset([rules], [BOUND])
    assert (fw.networks, fw.mappings, fw.guards, fw.resets) == ({"br-x": rules}, {BOUND}, {}, 1)
    fw.ensure_foreign_hooks(["br-x"])
    assert fw.ensured == ["br-x"]
    fw.add_guards([G1, G2])
    fw.del_guards([G1])
    fw.del_guards([G1])  # twice is harmless
    assert fw.guards == {G2.port: G2}
    fw.reset([], [], [G1])
    assert fw.guards == {G1.port: G1}
