"""Reading one traced probe: the kernel's trace events (:mod:`qiao.kernel.nftrace`)
turned into the path hop by hop, and a result named in Docker's terms.

Pure: it takes a :class:`~qiao.kernel.tracing.Capture`, names for the
daemon namespace's interfaces (:class:`Where`, from qiao's records), what
the probe was meant to reach (:class:`Intent`) and the route lookups done
after it, and returns plain data.  Unit tests feed it recorded events.

How a drop gets its name, from the rule that gave the verdict:

=====================================  ===============================================
rule                                   reason
=====================================  ===============================================
``fwd-in-BR``: ``iifname BR drop``     icc disabled (the rule is ``comment "icc=false"``)
  (comment icc=false)
``fwd-out-BR`` (internal networks)     internal network
``fwd-in-BR``: the last ``drop``       internal network, when either side's network is
                                       internal; isolated: different networks, when the
                                       packet comes from another of qiao's bridges;
                                       port not published, from anywhere else
``raw``: 127.0.0.0/8 from a bridge     the host's loopback is not for containers
``bridge qiao guard``: ``drop``        spoofed source address
a rule of another table                dropped by another table (named)
=====================================  ===============================================

Without a drop rule: a TCP reset or ICMP port unreachable is "no listener",
or "port not published" when a container's port was asked for and the
packet ended at the host itself (nothing rewrote it to the container); a
packet that entered a bridge and went no further between two ports of an
icc=false network was stopped by bridge port isolation: icc disabled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qiao.kernel import nftrace
from qiao.kernel.nftrace import Packet, TraceEvent
from qiao.kernel.tracing import Capture, rule_key

ISOLATED = "isolated: different networks"
INTERNAL = "internal network"
NOT_PUBLISHED = "port not published"
ICC = "icc disabled"
NO_NAME = "name not found by the resolver"
LOOPBACK = "the host's loopback is not for containers"
SPOOFED = "spoofed source address"
FOREIGN = "dropped by another table"

# The hook a chain of qiao's own tables (or of a trace table) is on.
OWN_HOOKS = {
    ("inet", "raw"): "prerouting",
    ("inet", "prerouting"): "prerouting",
    ("inet", "output"): "output",
    ("inet", "forward"): "forward",
    ("inet", "postrouting"): "postrouting",
    ("bridge", "prerouting"): "prerouting",
}


@dataclass(frozen=True)
class NetInfo:
    """One of qiao's networks, as the firewall sees it."""

    name: str
    bridge: str
    subnet: str = ""
    internal: bool = False
    icc: bool = True
    member: str = ""  # a device whose traffic belongs to the network (an overlay's VXLAN device)


@dataclass
class Where:
    """What the daemon namespace's interfaces are, from qiao's records."""

    networks: dict[str, NetInfo] = field(default_factory=dict)  # bridge -> network
    ports: dict[str, tuple[str, str]] = field(default_factory=dict)  # veth -> (whose, bridge)
    devices: dict[str, str] = field(default_factory=dict)  # other interfaces -> what they are

    def describe(self, ifname: str) -> str:
        if not ifname:
            return "?"
        if ifname in self.networks:
            return f"bridge {ifname} (network {self.networks[ifname].name})"
        if ifname in self.ports:
            return f"{ifname} ({self.ports[ifname][0]}'s veth)"
        if ifname in self.devices:
            return f"{ifname} ({self.devices[ifname]})"
        return ifname

    def network_of(self, ifname: str) -> NetInfo | None:
        if ifname in self.networks:
            return self.networks[ifname]
        if ifname in self.ports:
            return self.networks.get(self.ports[ifname][1])
        return next((n for n in self.networks.values() if n.member and n.member == ifname), None)


@dataclass
class Intent:
    """What the probe was meant to reach, and from where."""

    src: str  # a label: a container's name, "host", "outside", an address
    dst: str
    proto: str
    port: int = 0
    dst_container: bool = False  # the destination is a container (not the host, not an address)
    dst_ports: list[str] = field(default_factory=list)  # its published ports, "8080->80/tcp"
    via_host: bool = False  # the probe was sent to a host address, for the container behind it
    src_networks: list[NetInfo] = field(default_factory=list)
    dst_networks: list[NetInfo] = field(default_factory=list)


def hook_of(ev: TraceEvent) -> str:
    """The hook of the base chain an event's walk began in ("" when unknown: another table)."""
    if nftrace.is_trace_table(ev.family, ev.table):
        return ev.chain.split("-", 1)[1] if "-" in ev.chain else ""
    if ev.table == "qiao":
        return OWN_HOOKS.get((ev.family, ev.chain), "")
    return ""


def _groups(events: list[TraceEvent]) -> list[list[TraceEvent]]:
    """One list per base chain walk (its jumps included): a walk starts with the
    event that carries the packet's interfaces and headers."""
    out: list[list[TraceEvent]] = []
    for ev in events:
        if out and not ev.walk and out[-1][0].trace_id == ev.trace_id:
            out[-1].append(ev)
        else:
            out.append([ev])
    return out


def _addr(p: Packet, source: bool) -> str:
    if source:
        return f"{p.saddr}:{p.sport}" if p.proto in ("tcp", "udp") else p.saddr
    return f"{p.daddr}:{p.dport}" if p.proto in ("tcp", "udp") else p.daddr


def forwarded(capture: Capture) -> tuple[str, str, str] | None:
    """(destination, source, input interface) of the probe as the host routed it
    (after any DNAT), for the route lookup shown with it; None if it was not routed."""
    for ev in capture.events:
        if ev.family == "inet" and hook_of(ev) in ("forward", "input") and ev.packet is not None:
            return ev.packet.daddr, ev.packet.saddr, capture.ifnames.get(ev.iif, "")
    return None


@dataclass
class _Reading:
    hops: list[dict[str, Any]] = field(default_factory=list)
    drop: TraceEvent | None = None
    drop_rule: dict[str, str] = field(default_factory=dict)
    ended: str = ""  # where the packet was last seen: bridge | host-in | host-out | forward | host | out | port
    ended_dev: str = ""
    last_bridge_in: str = ""  # the port it entered a bridge by, last
    dnat: bool = False
    bridged: bool = False  # it went from port to port of one bridge (br_netfilter shows it to the inet hooks too)
    places: set[tuple[str, str, str, str]] = field(default_factory=set)
    ifnames: dict[int, str] = field(default_factory=dict)


def _location(r: _Reading, family: str, hook: str, iif: str, oif: str, packet: Packet | None, where: Where) -> str:
    """The sentence for a base chain's walk, once per place ("" when it adds nothing)."""
    key = (family, hook, iif, oif)
    if key in r.places:
        return ""
    r.places.add(key)
    if family == "bridge":
        if hook == "prerouting":
            r.ended, r.last_bridge_in = "bridge", iif
            bridge = where.ports.get(iif, ("", ""))[1]
            return f"enters bridge {bridge} from {where.describe(iif)}" if bridge else f"enters a bridge from {iif} (not a port of qiao's)"
        if hook == "forward":
            r.ended, r.ended_dev = "port", oif
            return f"bridged from {where.describe(iif)} to {where.describe(oif)}"
        if hook in ("output", "postrouting") and r.ended != "port":
            r.ended, r.ended_dev = "port", oif
            return f"leaves the bridge by {where.describe(oif)}"
        return ""
    if hook == "prerouting":
        if r.bridged:
            return "br_netfilter: the bridged frame passes the host's inet hooks too"
        r.ended = "host-in"
        return f"reaches the host's IP layer from {where.describe(iif)}"
    if hook == "output":
        r.ended = "host-out"
        return "sent by the host itself"
    if hook == "forward":
        if iif and iif == oif:
            return f"forwarded within {where.describe(iif)} (the inet forward hook, by br_netfilter)"
        r.ended, r.ended_dev = "forward", oif
        return f"routed from {where.describe(iif)} to {where.describe(oif)}"
    if hook == "input":
        r.ended = "host"
        return f"delivered to the host itself ({packet.daddr if packet else '?'})"
    if hook == "postrouting" and not r.bridged and r.ended != "port":
        r.ended, r.ended_dev = "out", oif
        return f"leaves the host's IP layer by {where.describe(oif)}"
    return ""


SHOWN_COMMENTS = ("accept", "drop")  # a rule's comment is shown with these verdicts (and NAT rules): they explain it


def read(capture: Capture, where: Where, intent: Intent, lookups: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The path and the result: ``{"hops": [...], "result": {"status", "reason", "detail"}}``.

    ``lookups``: the route lookups made after the probe, ``{"source": ..., "host": ...}``
    (see :meth:`qiao.kernel.inventory.LinuxInventory.route_get`)."""
    lookups = lookups or {}
    r = _Reading(ifnames=capture.ifnames)
    name = capture.ifnames.get
    walks = _groups(capture.events)
    r.bridged = any(w[0].family == "bridge" and hook_of(w[0]) == "forward" for w in walks)
    last: Packet | None = None
    nat_rule = ""
    routed = False
    for walk in walks:
        first = walk[0]
        own = nftrace.is_trace_table(first.family, first.table)
        hook = hook_of(first)
        iif, oif = name(first.iif, ""), name(first.oif, "")
        packet = first.packet
        if packet is not None and last is not None:
            if (packet.daddr, packet.dport) != (last.daddr, last.dport):
                r.hops.append(
                    {"at": "host", "kind": "nat", "text": f"DNAT {_addr(last, False)} -> {_addr(packet, False)}", "rule": nat_rule}
                )
                r.dnat = True
            if (packet.saddr, packet.sport) != (last.saddr, last.sport):
                r.hops.append({"at": "host", "kind": "nat", "text": f"SNAT {_addr(last, True)} -> {_addr(packet, True)}", "rule": nat_rule})
        last = packet or last
        if hook:
            text = _location(r, first.family, hook, iif, oif, packet, where)
            if text:
                r.hops.append({"at": "host", "kind": "hop", "text": text})
            if first.family == "inet" and hook == "forward" and iif != oif and not routed and "host" in lookups:
                routed = True
                r.hops.append(route_hop("host", lookups["host"], quiet=True))
        elif not own:
            r.hops.append({"at": "host", "kind": "hop", "text": f"table {first.family} {first.table} (not qiao's), chain {first.chain}"})
        if not own:
            _rules(r, walk, capture)
            nat_rule = next((h["text"] for h in reversed(r.hops) if h.get("nat")), nat_rule)
        if r.drop:
            break
    if not r.drop and r.ended in ("out", "port"):
        r.hops.append(_exit_hop(r, where, lookups.get("host", {})))
    for hop in r.hops:
        hop.pop("nat", None)
    return {"hops": r.hops, "result": _result(capture, r, where, intent, lookups)}


def _rules(r: _Reading, walk: list[TraceEvent], capture: Capture) -> None:
    """The rules of one walk that matched, with their verdicts; stops at a drop."""
    for ev in walk:
        if ev.kind == "policy" and ev.verdict == "drop":
            r.hops.append({"at": "host", "kind": "rule", "text": f"{ev.family} {ev.table} {ev.chain}: policy drop", "verdict": "drop"})
            r.drop, r.drop_rule = ev, {"text": "policy drop", "comment": ""}
            return
        if ev.kind != "rule" or not ev.handle:
            continue
        rule = capture.rules.get(rule_key(ev.family, ev.table, ev.chain, ev.handle), {"text": f"rule {ev.handle}", "comment": ""})
        verdict = ev.verdict + (f" {ev.target}" if ev.target else "")
        hop: dict[str, Any] = {
            "at": "host",
            "kind": "rule",
            "text": f"{ev.family} {ev.table} {ev.chain}: {rule['text']}",
            "verdict": verdict,
        }
        is_nat = any(word in rule["text"].split() for word in ("dnat", "snat", "masquerade"))
        if rule.get("comment") and (ev.verdict in SHOWN_COMMENTS or is_nat):
            hop["comment"] = rule["comment"]
        if is_nat:
            hop["nat"] = True
        r.hops.append(hop)
        if ev.verdict == "drop":
            r.drop, r.drop_rule = ev, rule
            return


def route_hop(at: str, lookup: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    """A route lookup's result; ``quiet``: say nothing of a neighbour entry that is not there (yet)."""
    if "error" in lookup:
        return {"at": at, "kind": "route", "text": f"route to {lookup.get('dst', '?')}: {lookup['error']}"}
    if lookup.get("local"):
        return {"at": at, "kind": "route", "text": f"route: {lookup['dst']} is a local address"}
    route = lookup.get("route") or f"{lookup['dst']} dev {lookup.get('dev', '?')}"
    if route.startswith("0.0.0.0/0 "):
        route = "default " + route[len("0.0.0.0/0 ") :]
    text = f"route: {route}"
    neigh = lookup.get("neighbour")
    if neigh:
        text += f"; neighbour {neigh['address']} is {neigh['mac'] or '?'} ({neigh['state']})"
        if lookup.get("fdb"):
            text += f"; FDB: {neigh['mac']} is at {lookup['fdb']['dst']}"
    elif not quiet and (lookup.get("gateway") or lookup.get("dev")):
        text += f"; no neighbour entry for {lookup.get('gateway') or lookup['dst']}"
    return {"at": at, "kind": "route", "text": text}


def _exit_hop(r: _Reading, where: Where, lookup: dict[str, Any]) -> dict[str, Any]:
    dev = r.ended_dev
    if r.ended == "port" and dev in where.ports:
        return {"at": "host", "kind": "out", "text": f"over the veth pair into {where.ports[dev][0]}'s namespace (its eth end)"}
    net = next((n for n in where.networks.values() if n.member == dev), None)
    if net is not None:
        remote = lookup.get("fdb", {}).get("dst", "")
        return {
            "at": "host",
            "kind": "out",
            "text": f"into VXLAN {dev} (overlay {net.name})" + (f": to host {remote}, UDP" if remote else ""),
            "tunnel": {"dev": dev, "network": net.name, "remote": remote},
        }
    return {"at": "host", "kind": "out", "text": f"out of {where.describe(dev)}, beyond what this host's chains see"}


def _drop_reason(r: _Reading, where: Where, intent: Intent) -> tuple[str, str]:
    ev = r.drop
    assert ev is not None
    table = (ev.family, ev.table)
    rule = r.drop_rule
    where_text = f"{ev.family} {ev.table} {ev.chain}: {rule.get('text', '')}"
    if table == ("bridge", "qiao"):
        return SPOOFED, f"{where_text}: the source is not the container's own address"
    if table != ("inet", "qiao"):
        return FOREIGN, f"{where_text} (table {ev.family} {ev.table} is not qiao's)"
    if ev.chain == "raw":
        return LOOPBACK, where_text
    if ev.chain.startswith("fwd-out-"):
        net = where.networks.get(ev.chain[len("fwd-out-") :])
        return INTERNAL, f"network {net.name if net else '?'} is --internal: nothing leaves it ({where_text})"
    if ev.chain.startswith("fwd-in-"):
        dst_net = where.networks.get(ev.chain[len("fwd-in-") :])
        if "icc=false" in rule.get("comment", ""):
            return ICC, f"network {dst_net.name if dst_net else '?'} has enable_icc=false: its containers do not talk to each other"
        src_net = where.network_of(r.ifnames.get(ev.iif, ""))
        if (dst_net and dst_net.internal) or (src_net and src_net.internal):
            internal = dst_net if dst_net and dst_net.internal else src_net
            return INTERNAL, f"network {internal.name if internal else '?'} is --internal: nothing enters or leaves it ({where_text})"
        if src_net is not None:
            return ISOLATED, (
                f"from network {src_net.name} to network {dst_net.name if dst_net else '?'}: "
                f"fwd-in-{ev.chain[len('fwd-in-') :]} drops what comes from another bridge"
            )
        ports = f" ({intent.dst} publishes {', '.join(intent.dst_ports)})" if intent.dst_ports else ""
        return NOT_PUBLISHED, f"unsolicited traffic from outside reaches a container only through a published port{ports}"
    return f"dropped by qiao's chain {ev.chain}", where_text


def _result(capture: Capture, r: _Reading, where: Where, intent: Intent, lookups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    port = f"{intent.port}/{intent.proto}" if intent.proto in ("tcp", "udp") else "an ICMP echo"
    if r.drop is not None:
        reason, detail = _drop_reason(r, where, intent)
        return {"status": "dropped", "reason": reason, "detail": detail, "rule": f"{r.drop.family} {r.drop.table} {r.drop.chain}"}
    outcome = capture.outcome
    if outcome in ("connected", "answered"):
        return {
            "status": "delivered",
            "reason": "",
            "detail": f"{intent.dst} answered {'on ' if intent.port else ''}{port}: {capture.detail}",
        }
    if outcome == "refused":
        if intent.dst_container and r.ended == "host" and not r.dnat:
            ports = f"; it publishes {', '.join(intent.dst_ports)}" if intent.dst_ports else "; it publishes none"
            return {
                "status": "dropped",
                "reason": NOT_PUBLISHED,
                "detail": f"the host itself got it: {intent.dst}'s {port} is not published{ports}",
            }
        return {
            "status": "no listener",
            "reason": "",
            "detail": f"delivered to {intent.dst}, but nothing listens on {port} ({capture.detail})",
        }
    if outcome == "no-route":
        nets = intent.src_networks
        if nets and all(n.internal for n in nets):
            return {
                "status": "dropped",
                "reason": INTERNAL,
                "detail": f"{intent.src} is only on --internal networks: it has no default route",
            }
        return {"status": "no route", "reason": "", "detail": f"{intent.src} has no route to {intent.dst} ({capture.detail})"}
    if outcome == "unreachable":
        at = "the host" if capture.events else intent.src
        return {"status": "no route", "reason": "", "detail": f"{at} has no way to {intent.dst} ({capture.detail})"}
    if outcome == "error":
        return {"status": "error", "reason": "", "detail": capture.detail}
    # silent: no answer, no error
    if r.ended == "bridge" and r.last_bridge_in:
        net = where.network_of(r.last_bridge_in)
        if net is not None and not net.icc and any(n.bridge == net.bridge for n in intent.dst_networks):
            return {
                "status": "dropped",
                "reason": ICC,
                "detail": f"network {net.name} has enable_icc=false: bridge port isolation keeps its containers apart",
            }
    if r.ended == "host" and intent.proto == "udp":
        return {
            "status": "delivered",
            "reason": "",
            "detail": "the host took it (no ICMP error: a socket is bound there) and did not answer",
        }
    if r.ended == "port":
        if intent.proto == "udp":
            return {
                "status": "delivered",
                "reason": "",
                "detail": f"handed to {intent.dst}; no answer came back (a UDP listener need not answer)",
            }
        return {"status": "no answer", "reason": "", "detail": f"handed to {intent.dst}, which did not answer"}
    if r.ended == "out":
        return {
            "status": "no answer",
            "reason": "",
            "detail": f"it left the host by {r.ended_dev}; nothing answered within {capture.elapsed_ms:.0f} ms",
        }
    if not capture.events:
        src_lookup = lookups.get("source", {})
        shared = [n for n in intent.src_networks if not n.icc and any(d.bridge == n.bridge for d in intent.dst_networks)]
        unresolved = src_lookup.get("neighbour", {}).get("state", "INCOMPLETE") in ("INCOMPLETE", "FAILED")
        if shared and not src_lookup.get("gateway") and unresolved:
            return {
                "status": "dropped",
                "reason": ICC,
                "detail": f"network {shared[0].name} has enable_icc=false: bridge port isolation keeps even ARP from {intent.dst}",
            }
        neigh = src_lookup.get("neighbour", {})
        hint = f" (neighbour {neigh['address']} is {neigh['state']})" if neigh and neigh.get("state") in ("FAILED", "INCOMPLETE") else ""
        return {"status": "no answer", "reason": "", "detail": f"the packet never reached the host's chains{hint}"}
    return {"status": "no answer", "reason": "", "detail": f"no answer within {capture.elapsed_ms:.0f} ms"}
