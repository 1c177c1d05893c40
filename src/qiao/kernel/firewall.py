"""The firewall port: qiao's own nftables table, changed one atomic
libnftables transaction at a time.

Layout (``table inet qiao``), after moby's nftables design: base chains only
dispatch, through verdict maps keyed by bridge name, to small per-network
chains, and published ports are elements of two maps, so a packet costs a
few hash lookups however many networks and mappings exist, and adding or
removing a network or a mapping touches nothing else::

    map published     { inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service }  # -p IP:HOST:CTR
    map published_any { inet_proto . inet_service : ipv4_addr . inet_service }              # -p HOST:CTR
    chain prerouting  { nat/dstnat: ip daddr 127.0.0.0/8 return; fib daddr type local jump publish }
    chain output      { nat/dstnat: fib daddr type local jump publish }     # host -> any own address, 127.0.0.1 too
    chain publish     { dnat via @published, then via @published_any }
    chain forward     { filter: iifname vmap @fwd_out; oifname vmap @fwd_in }
    chain postrouting { nat/srcnat: ip saddr 127.0.0.0/8 ct status dnat masquerade; iifname vmap @nat_out; oifname vmap @nat_out }
    chain fwd-in-BR   { ct state established,related accept; ct status dnat accept; iifname BR accept; drop }
    chain nat-out-BR  { oifname BR ip saddr SUBNET ct status dnat masquerade (hairpin); oifname != BR ip saddr SUBNET masquerade }
    chain fwd-out-BR  { internal networks only: oifname != BR drop }

The second dispatch, by output interface, is for hairpin traffic that
br_netfilter bridges back out of the bridge (``bridge-nf-call-iptables``):
the kernel runs postrouting for it with no input interface.  With the
ports in hairpin mode this lets a container reach even its own published
port through a host address (moby's "MASQ TO OWN PORT").

Nothing outside this table is touched; policies stay ``accept``, with one
documented exception: when another table hooks ``forward`` with policy
``drop`` (Docker does that to iptables' FORWARD, which silently breaks every
other bridge), a drop there would be final whatever qiao accepts, so qiao
inserts exactly two rules per bridge into that chain, tagged
``comment "qiao:BR"``::

    iifname "BR" accept comment "qiao:BR"
    oifname "BR" accept comment "qiao:BR"

They only neutralise the foreign policy for qiao's bridges (what reaches a
container is still decided by qiao's own ``fwd-in-BR``), are re-checked
periodically (Docker may start after qiao), and go with the network.

Why the nft language and not libnftables JSON: the JSON parser of the
libnftables shipped with Debian 12 (1.0.6) cannot express maps whose data
is a concatenation (it creates a plain set, and a ``dnat ... map`` rule over
one crashes the library), and those maps are what makes port forwarding
O(1).  The text goes through the same library call, as one transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

TABLE = "inet qiao"


@dataclass(frozen=True)
class BridgeRules:
    """What the firewall needs to know of one bridge network."""

    bridge: str
    subnet: str  # CIDR
    masquerade: bool = True
    internal: bool = False  # no traffic in or out of the network, only within
    icc: bool = True  # containers of the network may talk to each other
    member_dev: str = ""  # a device whose traffic belongs to the network (an overlay's VXLAN device)
    cluster: str = ""  # a global network's whole range (not masqueraded when it is the destination)
    subnet6: str = ""


@dataclass(frozen=True)
class PortMapping:
    """One published port: host (proto, address, port) -> container address and port."""

    proto: str  # tcp | udp | sctp
    host_ip: str  # 0.0.0.0 means every host address
    host_port: int
    container_ip: str
    container_port: int

    @property
    def wildcard(self) -> bool:
        return self.host_ip == "0.0.0.0"


class Firewall(Protocol):
    def reset(self, networks: list[BridgeRules], mappings: list[PortMapping]) -> None: ...
    def add_network(self, net: BridgeRules) -> None: ...
    def del_network(self, net: BridgeRules) -> None: ...
    def add_ports(self, mappings: list[PortMapping]) -> None: ...
    def del_ports(self, mappings: list[PortMapping]) -> None: ...
    def ensure_foreign_hooks(self, bridges: list[str]) -> None: ...


BASE = f"""\
table {TABLE} {{
    map fwd_in {{ type ifname : verdict; }}
    map fwd_out {{ type ifname : verdict; }}
    map nat_out {{ type ifname : verdict; }}
    map published {{ type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }}
    map published_any {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
    chain publish {{
        dnat ip to meta l4proto . ip daddr . th dport map @published
        dnat ip to meta l4proto . th dport map @published_any
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 127.0.0.0/8 return comment "loopback-bound ports are for the host only"
        fib daddr type local jump publish
    }}
    chain output {{
        type nat hook output priority -100; policy accept;
        fib daddr type local jump publish
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname vmap @fwd_out comment "first: an accept in fwd-in-BR (ct status dnat) would end the chain"
        oifname vmap @fwd_in
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 127.0.0.0/8 ct status dnat masquerade comment "host 127.0.0.1 -> published port"
        iifname vmap @nat_out
        oifname vmap @nat_out comment "hairpin bridged by br_netfilter: no input interface"
    }}
}}
"""


def _network(net: BridgeRules) -> str:
    br = net.bridge
    extra = []
    if net.member_dev:
        extra.append(f'insert rule {TABLE} fwd-in-{br} iifname "{net.member_dev}" accept comment "member device"')
    if net.masquerade and net.cluster:
        extra.append(f'add rule {TABLE} nat-out-{br} oifname != "{br}" ip saddr {net.subnet} ip daddr != {net.cluster} masquerade')
    elif net.masquerade:
        extra.append(f'add rule {TABLE} nat-out-{br} oifname != "{br}" ip saddr {net.subnet} masquerade')
        if net.subnet6:
            extra.append(f'add rule {TABLE} nat-out-{br} oifname != "{br}" ip6 saddr {net.subnet6} masquerade')
    if net.internal:
        extra.append(f"add chain {TABLE} fwd-out-{br}")
        extra.append(f'add rule {TABLE} fwd-out-{br} oifname != "{br}" drop comment "internal network"')
        extra.append(f'add element {TABLE} fwd_out {{ "{br}" : jump fwd-out-{br} }}')
    return f"""\
add chain {TABLE} fwd-in-{br}
add rule {TABLE} fwd-in-{br} ct state established,related accept
add rule {TABLE} fwd-in-{br} ct status dnat accept comment "published ports"
add rule {TABLE} fwd-in-{br} iifname "{br}" {"accept" if net.icc else 'drop comment "icc=false"'}
add rule {TABLE} fwd-in-{br} drop
add element {TABLE} fwd_in {{ "{br}" : jump fwd-in-{br} }}
add chain {TABLE} nat-out-{br}
add rule {TABLE} nat-out-{br} oifname "{br}" ip saddr {net.subnet} ct status dnat masquerade comment "hairpin"
add element {TABLE} nat_out {{ "{br}" : jump nat-out-{br} }}
""" + "".join(line + "\n" for line in extra)


def _elements(verb: str, mappings: list[PortMapping], with_data: bool) -> str:
    lines = []
    for wildcard, name in ((False, "published"), (True, "published_any")):
        elems = []
        for m in mappings:
            if m.wildcard != wildcard:
                continue
            key = f"{m.proto} . {m.host_port}" if wildcard else f"{m.proto} . {m.host_ip} . {m.host_port}"
            elems.append(f"{key} : {m.container_ip} . {m.container_port}" if with_data else key)
        if elems:
            lines.append(f"{verb} element {TABLE} {name} {{ {', '.join(elems)} }}")
    return "\n".join(lines) + "\n"


class NftFirewall:
    def __init__(self) -> None:
        import nftables  # libnftables binding (Debian's python3-nftables, from PyPI as pip-nftables)

        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(True)  # rule handles: to delete our rules in foreign chains

    def _apply(self, script: str) -> None:
        if not script.strip():
            return
        rc, _out, err = self._nft.cmd(script)
        if rc != 0:
            raise RuntimeError(f"nftables: {' '.join(err.split())[:400] or 'transaction failed'}")

    def _list(self, what: str) -> list[dict]:
        rc, out, _err = self._nft.cmd(f"list {what}")
        return json.loads(out).get("nftables", []) if rc == 0 and out else []

    def _foreign_drop_chains(self) -> list[dict]:
        """Base chains of other tables that hook forward with policy drop."""
        return [
            c
            for obj in self._list("chains")
            if (c := obj.get("chain"))
            and c.get("hook") == "forward"
            and c.get("policy") == "drop"
            and c["family"] in ("ip", "inet")
            and (c["family"], c["table"]) != ("inet", "qiao")
        ]

    def _foreign_script(self, keep: list[str], drop: list[str]) -> str:
        """Insert the accept pair for ``keep`` bridges where missing; delete ours for ``drop``."""
        lines = []
        for chain in self._foreign_drop_chains():
            where = f"{chain['family']} {chain['table']} {chain['name']}"
            present: dict[str, list[int]] = {}
            for obj in self._list(f"chain {where}"):
                rule = obj.get("rule")
                if rule and str(rule.get("comment", "")).startswith("qiao:"):
                    present.setdefault(rule["comment"][5:], []).append(rule["handle"])
            for br in drop:
                lines += [f"delete rule {where} handle {h}" for h in present.get(br, [])]
            for br in keep:
                if len(present.get(br, [])) != 2:
                    lines += [f"delete rule {where} handle {h}" for h in present.get(br, [])]
                    lines.append(f'insert rule {where} oifname "{br}" accept comment "qiao:{br}"')
                    lines.append(f'insert rule {where} iifname "{br}" accept comment "qiao:{br}"')
        return "\n".join(lines) + "\n"

    def ensure_foreign_hooks(self, bridges: list[str]) -> None:
        self._apply(self._foreign_script(bridges, []))

    def reset(self, networks: list[BridgeRules], mappings: list[PortMapping]) -> None:
        """Replace the whole table from intent in one transaction (no gap)."""
        script = f"add table {TABLE}\ndelete table {TABLE}\n" + BASE
        script += "".join(_network(n) for n in networks)
        if mappings:
            script += _elements("add", mappings, with_data=True)
        script += self._foreign_script([n.bridge for n in networks], [])
        self._apply(script)

    def add_network(self, net: BridgeRules) -> None:
        self._apply(_network(net) + self._foreign_script([net.bridge], []))

    def del_network(self, net: BridgeRules) -> None:
        br = net.bridge
        internal = f'delete element {TABLE} fwd_out {{ "{br}" }}\nflush chain {TABLE} fwd-out-{br}\ndelete chain {TABLE} fwd-out-{br}\n'
        self._apply(
            self._foreign_script([], [br])
            + (internal if net.internal else "")
            + f"""\
delete element {TABLE} fwd_in {{ "{br}" }}
delete element {TABLE} nat_out {{ "{br}" }}
flush chain {TABLE} fwd-in-{br}
delete chain {TABLE} fwd-in-{br}
flush chain {TABLE} nat-out-{br}
delete chain {TABLE} nat-out-{br}
"""
        )

    def add_ports(self, mappings: list[PortMapping]) -> None:
        self._apply(_elements("add", mappings, with_data=True))

    def del_ports(self, mappings: list[PortMapping]) -> None:
        self._apply(_elements("delete", mappings, with_data=False))


class StubFirewall:
    def __init__(self) -> None:
        self.networks: dict[str, BridgeRules] = {}
        self.mappings: set[PortMapping] = set()
        self.resets = 0

    def reset(self, networks: list[BridgeRules], mappings: list[PortMapping]) -> None:
        self.resets += 1
        self.networks = {n.bridge: n for n in networks}
        self.mappings = set(mappings)

    def add_network(self, net: BridgeRules) -> None:
        self.networks[net.bridge] = net

    def del_network(self, net: BridgeRules) -> None:
        self.networks.pop(net.bridge, None)

    def add_ports(self, mappings: list[PortMapping]) -> None:
        self.mappings |= set(mappings)

    def del_ports(self, mappings: list[PortMapping]) -> None:
        self.mappings -= set(mappings)

    def ensure_foreign_hooks(self, bridges: list[str]) -> None:
        self.ensured = list(bridges)
