"""The firewall port: qiao's own nftables tables, changed one atomic
libnftables transaction at a time, and put back whenever someone else
changes them.

Two tables.  ``table inet qiao`` (routing, NAT, isolation), after moby's
nftables design: base chains only dispatch, through verdict maps keyed by
bridge name, to small per-network chains, and published ports are elements
of two maps, so a packet costs a few hash lookups however many networks and
mappings exist, and adding or removing a network or a mapping touches
nothing else::

    set bridges       { ifname }                                                            # every bridge of qiao's
    map published     { inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service }  # -p IP:HOST:CTR
    map published_any { inet_proto . inet_service : ipv4_addr . inet_service }              # -p HOST:CTR
    chain raw         { filter/raw prerouting: iifname @bridges ip daddr 127.0.0.0/8 drop; ... ip6 daddr ::1 drop }
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

**Host loopback.**  Bridges have ``route_localnet=1``, so that DNATed
``127.0.0.1`` connections may leave through them; but that also lets a
container that routes 127.0.0.0/8 to its gateway reach the host's loopback
services.  ``chain raw`` drops such packets as they come in from a bridge.
It runs at priority ``raw``, before conntrack and NAT, where a packet still
has the addresses it was sent with: the reply to a host -> 127.0.0.1
published connection is addressed to the gateway (it was masqueraded on the
way out) and is un-NATed to 127.0.0.1 only later, so it passes.

``table bridge qiao`` (anti-spoofing), on every frame that enters a bridge
from a guarded port (a container's host-side veth), bridged or routed alike,
before br_netfilter::

    set ports  { ifname }                # guarded ports
    set addrs4 { ifname . ipv4_addr }    # port . each of its endpoint's own addresses
    set addrs6 { ifname . ipv6_addr }
    chain prerouting { filter, priority -300: iifname @ports jump guard }
    chain guard      { iifname . ip saddr @addrs4 return; iifname . arp saddr ip @addrs4 return;
                       arp saddr ip 0.0.0.0 return (probe); ip6 saddr fe80::/10 return;
                       ip6 saddr :: meta l4proto ipv6-icmp return (DAD, MLD); iifname . ip6 saddr @addrs6 return;
                       drop }   # other sources, and other ether types (VLAN tags, raw frames)

An endpoint is two or three elements (:class:`EndpointGuard`), never a rule.

**Intent and healing.**  :class:`NftFirewall` keeps what it was asked for
(networks, mappings, guards), updated by every add/del call, and can rebuild
both tables from it alone: ``add table; delete table`` for each, then their
whole contents, in one transaction, so the old tables are replaced by the
new ones with no moment in between.  :meth:`NftFirewall.start_healing`
starts a thread that listens to the kernel's nftables notifications
(:mod:`qiao.kernel.nftwatch`).  Every commit bumps the ruleset generation by
one; each of qiao's own transactions is bracketed by two generation queries,
so the thread can tell its own generations from others'.  A foreign
generation that touched either table (``nft flush ruleset``, ``delete
table``, an element or rule changed by hand) is answered by a rebuild within
milliseconds; lost notifications by a check of every missed generation.
Without notifications it falls back to a generation check every few
seconds.  A ``del_*`` that finds its objects gone (say the table was
deleted) does not fail: the intent is already updated, and the tables are
rebuilt from it; an ``add_*`` that fails is retried as a rebuild.

Nothing outside these tables is touched; policies stay ``accept``, with one
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

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("qiao.firewall")

TABLE = "inet qiao"
GUARD_TABLE = "bridge qiao"
OWN_TABLES = {("inet", "qiao"), ("bridge", "qiao")}


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


@dataclass(frozen=True)
class EndpointGuard:
    """Anti-spoofing for one endpoint: what enters the bridge from ``port`` must come from ``addresses``."""

    port: str  # the host-side veth name
    addresses: tuple[str, ...]  # the endpoint's own IPv4/IPv6 addresses (no prefix)


class Firewall(Protocol):
    def reset(self, networks: list[BridgeRules], mappings: list[PortMapping], guards: Iterable[EndpointGuard] = ()) -> None: ...
    def add_network(self, net: BridgeRules) -> None: ...
    def del_network(self, net: BridgeRules) -> None: ...
    def add_ports(self, mappings: list[PortMapping]) -> None: ...
    def del_ports(self, mappings: list[PortMapping]) -> None: ...
    def add_guards(self, guards: list[EndpointGuard]) -> None: ...
    def del_guards(self, guards: list[EndpointGuard]) -> None: ...
    def ensure_foreign_hooks(self, bridges: list[str]) -> None: ...
    def foreign_script(self, keep: list[str], drop: list[str]) -> str: ...


BASE = f"""\
table {TABLE} {{
    set bridges {{ type ifname; }}
    map fwd_in {{ type ifname : verdict; }}
    map fwd_out {{ type ifname : verdict; }}
    map nat_out {{ type ifname : verdict; }}
    map published {{ type inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service; }}
    map published_any {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
    chain publish {{
        dnat ip to meta l4proto . ip daddr . th dport map @published
        dnat ip to meta l4proto . th dport map @published_any
    }}
    chain raw {{
        type filter hook prerouting priority raw; policy accept;
        iifname @bridges ip daddr 127.0.0.0/8 drop comment "the host's loopback is not for containers (route_localnet)"
        iifname @bridges ip6 daddr ::1 drop
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

GUARD_BASE = f"""\
table {GUARD_TABLE} {{
    set ports {{ type ifname; }}
    set addrs4 {{ type ifname . ipv4_addr; }}
    set addrs6 {{ type ifname . ipv6_addr; }}
    chain prerouting {{
        type filter hook prerouting priority -300; policy accept;
        iifname @ports jump guard comment "a container's port: before br_netfilter, bridged and routed alike"
    }}
    chain guard {{
        iifname . ip saddr @addrs4 return
        iifname . arp saddr ip @addrs4 return
        arp saddr ip 0.0.0.0 return comment "ARP probe"
        ip6 saddr fe80::/10 return
        ip6 saddr :: meta l4proto ipv6-icmp return comment "DAD, MLD"
        iifname . ip6 saddr @addrs6 return
        drop comment "spoofed source, or not IP/ARP"
    }}
}}
"""

RESET = f"add table {TABLE}\ndelete table {TABLE}\nadd table {GUARD_TABLE}\ndelete table {GUARD_TABLE}\n"


def network_script(net: BridgeRules) -> str:
    """The transaction that adds one network's chains and map elements."""
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
add element {TABLE} bridges {{ "{br}" }}
""" + "".join(line + "\n" for line in extra)


def elements_script(verb: str, mappings: list[PortMapping], with_data: bool) -> str:
    """Add (``with_data``) or delete published ports: elements of ``published`` / ``published_any``."""
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


def guard_elements_script(verb: str, guards: Iterable[EndpointGuard]) -> str:
    """Add or delete anti-spoofing elements of ``table bridge qiao``."""
    ports: list[str] = []
    v4: list[str] = []
    v6: list[str] = []
    for g in guards:
        ports.append(f'"{g.port}"')
        for address in g.addresses:
            (v6 if ":" in address else v4).append(f'"{g.port}" . {address}')
    sets = (("ports", ports), ("addrs4", v4), ("addrs6", v6))
    return "".join(f"{verb} element {GUARD_TABLE} {name} {{ {', '.join(elems)} }}\n" for name, elems in sets if elems)


def del_network_script(net: BridgeRules) -> str:
    """The transaction that removes one network's chains and map elements."""
    br = net.bridge
    internal = f'delete element {TABLE} fwd_out {{ "{br}" }}\nflush chain {TABLE} fwd-out-{br}\ndelete chain {TABLE} fwd-out-{br}\n'
    return (
        (internal if net.internal else "")
        + f"""\
delete element {TABLE} fwd_in {{ "{br}" }}
delete element {TABLE} nat_out {{ "{br}" }}
delete element {TABLE} bridges {{ "{br}" }}
flush chain {TABLE} fwd-in-{br}
delete chain {TABLE} fwd-in-{br}
flush chain {TABLE} nat-out-{br}
delete chain {TABLE} nat-out-{br}
"""
    )


def tables_script(networks: list[BridgeRules], mappings: list[PortMapping], guards: Iterable[EndpointGuard]) -> str:
    """Both tables for this intent, replacing what is there (``add table; delete table`` first): one transaction."""
    script = RESET + BASE + GUARD_BASE + "".join(network_script(n) for n in networks)
    if mappings:
        script += elements_script("add", mappings, with_data=True)
    return script + guard_elements_script("add", guards)


class NftFirewall:
    """Both tables in the kernel, through libnftables, and the intent they are rebuilt from.

    Everything that talks to libnftables holds ``_lock``: one libnftables
    context is not thread-safe, and the healer thread shares it."""

    HEAL_BURST = 10  # rebuilds within HEAL_WINDOW s before the healer backs off (another program fighting us)
    HEAL_WINDOW = 5.0

    def __init__(self) -> None:
        import nftables  # libnftables binding (Debian's python3-nftables, from PyPI as pip-nftables)

        from qiao.kernel import nftwatch

        self._init_state()
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(True)  # rule handles: to delete our rules in foreign chains
        try:
            gens: nftwatch.GenQuery | None = nftwatch.GenQuery()  # in the daemon's namespace, as libnftables' own socket
        except OSError as exc:
            gens = None  # nothing to tell our generations from others' with: no healing
            log.warning("nftables generations unavailable (%s): the firewall will not heal itself", exc)
        self._gens = gens

    def _init_state(self) -> None:
        self._lock = threading.RLock()
        self._networks: dict[str, BridgeRules] = {}  # bridge -> rules, in the order added
        self._mappings: dict[PortMapping, None] = {}  # an ordered set
        self._guards: dict[str, EndpointGuard] = {}  # port -> guard
        self._gens = None  # nftwatch.GenQuery: set by __init__
        self._ours: set[int] = set()  # generations our transactions committed, not yet accounted for by the healer
        self._seen = 0  # the last generation the healer accounted for
        self._dirty = False  # the kernel may differ from the intent: rebuild at the next chance
        self._heals: collections.deque[float] = collections.deque(maxlen=self.HEAL_BURST)
        self._stopping = threading.Event()
        self._healer: threading.Thread | None = None
        self._watch: Any = None  # nftwatch.Watch

    # -- talking to the kernel ---------------------------------------------

    def _apply(self, script: str) -> None:
        """One transaction.  Bracketed by two generation queries: when they are
        one apart, the generation in between is ours.  (An empty batch commits
        nothing and leaves them equal; another program's commit in between
        leaves both generations to the healer, which at worst rebuilds once
        for nothing.)"""
        if not script.strip():
            return
        with self._lock:
            before = self._generation()
            rc, _out, err = self._nft.cmd(script)
            after = self._generation()
            if before is not None and after == before + 1:
                if self._healer is None:  # nobody accounts for them yet: the last one is all start_healing needs
                    self._ours.clear()
                self._ours.add(after)
        if rc != 0:
            raise RuntimeError(f"nftables: {' '.join(err.split())[:400] or 'transaction failed'}")

    def _generation(self) -> int | None:
        if self._gens is None:
            return None
        try:
            return int(self._gens.generation())
        except OSError as exc:
            log.warning("nftables generation query failed: %s", exc)
            return None

    def _list(self, what: str) -> list[dict]:
        with self._lock:
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

    def foreign_script(self, keep: list[str], drop: list[str]) -> str:
        """Insert the accept pair for ``keep`` bridges where missing; delete ours for ``drop``
        (read-only: it lists the ruleset and returns the nft text)."""
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

    def _whole(self) -> str:
        """Both tables from intent, replacing what is there: one transaction, no gap."""
        return tables_script(list(self._networks.values()), list(self._mappings), self._guards.values()) + self.foreign_script(
            list(self._networks), []
        )

    def _rebuild(self, why: str) -> bool:
        """Replace both tables from intent; False (logged; the healer retries) when that fails."""
        with self._lock:
            try:
                self._apply(self._whole())
            except Exception as exc:
                self._dirty = True
                log.error("rebuilding the firewall tables (%s) failed: %s", why, exc)
                return False
            self._dirty = False
            return True

    def _add(self, script: str, undo: Callable[[], None]) -> None:
        """Apply an addition whose intent is already recorded.  When it fails
        (the table may have been deleted), rebuild everything from intent
        instead; when that fails too, take the intent back and raise."""
        with self._lock:
            try:
                self._apply(script)
            except RuntimeError as exc:
                if self._rebuild(f"adding failed: {exc}"):
                    return
                undo()
                self._rebuild("the previous intent")
                raise

    def _remove(self, script: str) -> None:
        """Apply a removal whose intent is already updated.  Never raises: what
        could not be deleted (the table is gone, an element was deleted by
        hand) is dealt with by a rebuild from intent, now or by the healer."""
        with self._lock:
            try:
                self._apply(script)
            except RuntimeError as exc:
                log.info("firewall removal failed (%s): rebuilding from intent", exc)
                self._rebuild(f"removing failed: {exc}")

    # -- the port ----------------------------------------------------------

    def ensure_foreign_hooks(self, bridges: list[str]) -> None:
        with self._lock:
            self._apply(self.foreign_script(bridges, []))

    def reset(self, networks: list[BridgeRules], mappings: list[PortMapping], guards: Iterable[EndpointGuard] = ()) -> None:
        """Replace both tables from this intent in one transaction (no gap)."""
        with self._lock:
            self._networks = {n.bridge: n for n in networks}
            self._mappings = dict.fromkeys(mappings)
            self._guards = {g.port: g for g in guards}
            self._dirty = True
            self._apply(self._whole())
            self._dirty = False

    def add_network(self, net: BridgeRules) -> None:
        with self._lock:
            old = self._networks.get(net.bridge)
            self._networks[net.bridge] = net

            def undo() -> None:
                if old is None:
                    self._networks.pop(net.bridge, None)
                else:
                    self._networks[net.bridge] = old

            self._add(network_script(net) + self.foreign_script([net.bridge], []), undo)

    def del_network(self, net: BridgeRules) -> None:
        with self._lock:
            self._networks.pop(net.bridge, None)
            self._remove(self.foreign_script([], [net.bridge]) + del_network_script(net))

    def add_ports(self, mappings: list[PortMapping]) -> None:
        with self._lock:
            new = [m for m in mappings if m not in self._mappings]
            self._mappings.update(dict.fromkeys(mappings))

            def undo() -> None:
                for m in new:
                    self._mappings.pop(m, None)

            self._add(elements_script("add", mappings, with_data=True), undo)

    def del_ports(self, mappings: list[PortMapping]) -> None:
        with self._lock:
            for m in mappings:
                self._mappings.pop(m, None)
            self._remove(elements_script("delete", mappings, with_data=False))

    def add_guards(self, guards: list[EndpointGuard]) -> None:
        with self._lock:
            old = {g.port: self._guards.get(g.port) for g in guards}
            self._guards.update((g.port, g) for g in guards)

            def undo() -> None:
                for port, was in old.items():
                    if was is None:
                        self._guards.pop(port, None)
                    else:
                        self._guards[port] = was

            self._add(guard_elements_script("add", guards), undo)

    def del_guards(self, guards: list[EndpointGuard]) -> None:
        with self._lock:
            for g in guards:
                self._guards.pop(g.port, None)
            self._remove(guard_elements_script("delete", guards))

    # -- healing -----------------------------------------------------------

    def start_healing(self, period: float = 5.0) -> None:
        """Watch the ruleset from a thread of its own and rebuild both tables
        from intent whenever another program changed them.  Call it in the
        daemon's own network namespace, after the first :meth:`reset`."""
        if self._gens is None or self._healer is not None:
            return
        from qiao.kernel import nftwatch

        try:
            self._watch = nftwatch.Watch()
        except OSError as exc:
            log.warning("no nftables notifications (%s): checking the ruleset every %.0f s instead", exc, period)
        self._stopping.clear()
        with self._lock:  # from our last transaction on: the first look checks every generation since
            self._seen = max(self._ours) if self._ours else self._generation() or 0
            self._healer = threading.Thread(target=self._heal_loop, args=(period,), name="firewall-healer", daemon=True)
        self._healer.start()

    def close(self) -> None:
        """Stop the healer (the tables stay as they are)."""
        self._stopping.set()
        if self._watch is not None:
            self._watch.close()
        if self._healer is not None:
            self._healer.join(5)
            self._healer = None
        if self._watch is not None:
            self._watch.release()
            self._watch = None

    def _heal_loop(self, period: float) -> None:
        touched = False  # the generation being read touched one of our tables
        first = True
        while not self._stopping.is_set():
            try:
                if self._watch is not None:
                    events = self._watch.read(0 if first else 1.0 if self._dirty else period)
                else:
                    self._stopping.wait(period)
                    events = []
                if self._stopping.is_set():
                    return
                with self._lock:
                    why, touched = self._account(events, touched, check=first)
                    first = False
                    if why or self._dirty:
                        self._heal(why or "a rebuild deferred or failed earlier")
            except Exception:
                log.exception("firewall healer")
                self._stopping.wait(1.0)

    def _account(self, events: list[Any], touched: bool, check: bool = False) -> tuple[str, bool]:
        """Go through the notifications read (under the lock: by now every
        generation of ours is recorded).  Returns why to rebuild ("" if not)
        and whether the generation still being read touched our tables.
        ``check``: also account for every generation up to the current one
        (at the start, and when notifications were lost)."""
        why = ""
        lost = check or self._watch is None  # polling: every new generation is as good as lost
        for ev in events:
            if ev.lost:
                lost = True
            elif ev.gen is None:
                touched = touched or (ev.family, ev.table) in OWN_TABLES
            else:
                if ev.gen > self._seen:
                    if touched and ev.gen not in self._ours:
                        why = f"generation {ev.gen} changed them"
                    self._seen = ev.gen
                touched = False
        if lost:
            now = self._generation()
            if now is not None and now > self._seen:
                missed = [g for g in range(self._seen + 1, now + 1) if g not in self._ours]
                if missed:
                    why = why or f"generations {missed[0]}..{missed[-1]} unaccounted for"
                self._seen = now
        self._ours = {g for g in self._ours if g > self._seen}
        return why, touched

    def _heal(self, why: str) -> None:
        start = time.monotonic()
        if len(self._heals) == self._heals.maxlen and start - self._heals[0] < self.HEAL_WINDOW:
            if not self._dirty:
                log.warning("the firewall tables were changed %d times in %.0f s: backing off", len(self._heals), self.HEAL_WINDOW)
            self._dirty = True
            return
        self._heals.append(start)
        if self._rebuild(why):
            log.warning("firewall tables rebuilt from intent (%s) in %.1f ms", why, (time.monotonic() - start) * 1000)


class StubFirewall:
    def __init__(self) -> None:
        self.networks: dict[str, BridgeRules] = {}
        self.mappings: set[PortMapping] = set()
        self.guards: dict[str, EndpointGuard] = {}
        self.resets = 0

    def reset(self, networks: list[BridgeRules], mappings: list[PortMapping], guards: Iterable[EndpointGuard] = ()) -> None:
        self.resets += 1
        self.networks = {n.bridge: n for n in networks}
        self.mappings = set(mappings)
        self.guards = {g.port: g for g in guards}

    def add_network(self, net: BridgeRules) -> None:
        self.networks[net.bridge] = net

    def del_network(self, net: BridgeRules) -> None:
        self.networks.pop(net.bridge, None)

    def add_ports(self, mappings: list[PortMapping]) -> None:
        self.mappings |= set(mappings)

    def del_ports(self, mappings: list[PortMapping]) -> None:
        self.mappings -= set(mappings)

    def add_guards(self, guards: list[EndpointGuard]) -> None:
        self.guards.update((g.port, g) for g in guards)

    def del_guards(self, guards: list[EndpointGuard]) -> None:
        for g in guards:
            self.guards.pop(g.port, None)

    def ensure_foreign_hooks(self, bridges: list[str]) -> None:
        self.ensured = list(bridges)

    def foreign_script(self, keep: list[str], drop: list[str]) -> str:
        return ""
