"""The nftables text qiao sends (rendered, never applied) and the stub firewall."""

from __future__ import annotations

import pytest

from qiao.kernel.firewall import BASE, TABLE, BridgeRules, NftFirewall, PortMapping, StubFirewall, _elements, _network

WILD = PortMapping("tcp", "0.0.0.0", 8080, "10.1.0.2", 80)
BOUND = PortMapping("udp", "127.0.0.1", 5353, "10.1.0.3", 53)
SCTP = PortMapping("sctp", "0.0.0.0", 9, "10.1.0.2", 9)


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


# -- the base table ----------------------------------------------------------


def test_base_declares_the_maps():
    for decl in (
        "map fwd_in { type ifname : verdict; }",
        "map fwd_out { type ifname : verdict; }",
        "map nat_out { type ifname : verdict; }",
        "map published { type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }",
        "map published_any { type inet_proto . inet_service : ipv4_addr . inet_service; }",
    ):
        assert decl in lines(BASE)
    assert BASE.startswith(f"table {TABLE} {{") and TABLE == "inet qiao"


def test_base_policies_stay_accept():
    hooks = [line for line in lines(BASE) if line.startswith("type ")]
    assert len(hooks) == 4 and all(line.endswith("policy accept;") for line in hooks)


def test_base_forward_checks_internal_networks_before_the_accepting_chains():
    """An accept in fwd-in-BR (e.g. ``ct status dnat``) ends the base chain: an
    internal network's fwd-out drop must come first, or its containers reach
    other networks' published ports through the gateway address."""
    body = BASE.split("chain forward {", 1)[1].split("}", 1)[0]
    rules = lines(body)[1:]
    assert [r.split(" comment ")[0] for r in rules] == ["iifname vmap @fwd_out", "oifname vmap @fwd_in"]


# -- per network -------------------------------------------------------------


def test_network_default_rules():
    assert lines(_network(BridgeRules("br-x", "10.1.0.0/24"))) == [
        "add chain inet qiao fwd-in-br-x",
        "add rule inet qiao fwd-in-br-x ct state established,related accept",
        'add rule inet qiao fwd-in-br-x ct status dnat accept comment "published ports"',
        'add rule inet qiao fwd-in-br-x iifname "br-x" accept',
        "add rule inet qiao fwd-in-br-x drop",
        'add element inet qiao fwd_in { "br-x" : jump fwd-in-br-x }',
        "add chain inet qiao nat-out-br-x",
        'add rule inet qiao nat-out-br-x oifname "br-x" ip saddr 10.1.0.0/24 ct status dnat masquerade comment "hairpin"',
        'add element inet qiao nat_out { "br-x" : jump nat-out-br-x }',
        'add rule inet qiao nat-out-br-x oifname != "br-x" ip saddr 10.1.0.0/24 masquerade',
    ]


def test_network_masquerade_v4_and_v6():
    text = _network(BridgeRules("br-x", "10.1.0.0/24", subnet6="fd00:1::/64"))
    masq = [line for line in lines(text) if line.endswith(" masquerade")]
    assert masq == [
        'add rule inet qiao nat-out-br-x oifname != "br-x" ip saddr 10.1.0.0/24 masquerade',
        'add rule inet qiao nat-out-br-x oifname != "br-x" ip6 saddr fd00:1::/64 masquerade',
    ]


def test_network_without_masquerade_keeps_only_hairpin():
    text = _network(BridgeRules("br-x", "10.1.0.0/24", masquerade=False, subnet6="fd00:1::/64"))
    assert [line for line in lines(text) if "masquerade" in line] == [
        'add rule inet qiao nat-out-br-x oifname "br-x" ip saddr 10.1.0.0/24 ct status dnat masquerade comment "hairpin"'
    ]
    assert "ip6" not in text


def test_network_internal_drops_what_leaves_the_bridge():
    text = _network(BridgeRules("br-i", "10.2.0.0/24", masquerade=False, internal=True))
    assert lines(text)[-3:] == [
        "add chain inet qiao fwd-out-br-i",
        'add rule inet qiao fwd-out-br-i oifname != "br-i" drop comment "internal network"',
        'add element inet qiao fwd_out { "br-i" : jump fwd-out-br-i }',
    ]
    assert 'oifname != "br-i" ip saddr' not in text  # no way out, so nothing to masquerade
    assert 'iifname "br-i" accept' in text  # within the network, traffic flows


def test_network_not_internal_has_no_fwd_out():
    assert "fwd-out" not in _network(BridgeRules("br-x", "10.1.0.0/24"))
    assert "fwd_out" not in _network(BridgeRules("br-x", "10.1.0.0/24"))


def test_network_icc_false_drops_container_to_container():
    text = lines(_network(BridgeRules("br-x", "10.1.0.0/24", icc=False)))
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
    assert _elements("add", [WILD, BOUND, SCTP], with_data=True) == (
        "add element inet qiao published { udp . 127.0.0.1 . 5353 : 10.1.0.3 . 53 }\n"
        "add element inet qiao published_any { tcp . 8080 : 10.1.0.2 . 80, sctp . 9 : 10.1.0.2 . 9 }\n"
    )


def test_elements_delete_keys_only():
    assert _elements("delete", [WILD, BOUND], with_data=False) == (
        "delete element inet qiao published { udp . 127.0.0.1 . 5353 }\ndelete element inet qiao published_any { tcp . 8080 }\n"
    )


def test_elements_only_the_maps_used():
    assert _elements("add", [WILD], with_data=True) == "add element inet qiao published_any { tcp . 8080 : 10.1.0.2 . 80 }\n"
    assert _elements("add", [BOUND], with_data=True).startswith("add element inet qiao published {")
    assert _elements("add", [], with_data=True).strip() == ""


def test_port_mapping_wildcard():
    assert WILD.wildcard and not BOUND.wildcard


# -- NftFirewall scripts, with the library replaced ----------------------------


class FakeNft(NftFirewall):
    """Records scripts instead of applying them; ``chains`` plays other tables' chains."""

    def __init__(self, chains: dict[str, list[dict]] | None = None):  # no libnftables
        self.scripts: list[str] = []
        self.chains = chains or {}

    def _apply(self, script: str) -> None:
        self.scripts.append(script)

    def _list(self, what: str) -> list[dict]:
        return self.chains.get(what, [])


DROP_CHAIN = {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "drop"}}
WHERE = "ip filter FORWARD"


def test_reset_replaces_the_whole_table_in_one_script():
    fw = FakeNft()
    nets = [BridgeRules("qiao0", "172.17.0.0/16"), BridgeRules("br-i", "10.2.0.0/24", masquerade=False, internal=True)]
    fw.reset(nets, [WILD])
    (script,) = fw.scripts
    assert script.startswith(f"add table {TABLE}\ndelete table {TABLE}\n" + BASE)
    assert _network(nets[0]) in script and _network(nets[1]) in script
    assert script.rstrip().endswith("add element inet qiao published_any { tcp . 8080 : 10.1.0.2 . 80 }")


def test_reset_without_mappings_adds_no_elements():
    fw = FakeNft()
    fw.reset([], [])
    assert fw.scripts == [f"add table {TABLE}\ndelete table {TABLE}\n" + BASE + "\n"]


def test_add_and_del_network():
    fw = FakeNft()
    rules = BridgeRules("br-x", "10.1.0.0/24")
    fw.add_network(rules)
    fw.del_network(rules)
    assert fw.scripts[0].strip() == _network(rules).strip()
    assert lines(fw.scripts[1]) == [
        'delete element inet qiao fwd_in { "br-x" }',
        'delete element inet qiao nat_out { "br-x" }',
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
    assert fw.scripts == [_elements("add", [WILD], True), _elements("delete", [WILD], False)]


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
    assert (fw.networks, fw.mappings, fw.resets) == ({"br-x": rules}, {BOUND}, 1)
    fw.ensure_foreign_hooks(["br-x"])
    assert fw.ensured == ["br-x"]
