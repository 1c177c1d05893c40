"""``qiao topology``: what exists now, read from the store and the kernel.

:class:`Topology` copies the records it needs under the engine lock
(:class:`Records`), reads the kernel without it (a
:class:`~qiao.kernel.inventory.Snapshot`: links, addresses, routes, the
overlay's entries, every sandbox's interfaces, qiao's nft table), and
:func:`build` puts the two side by side as plain data, the model the CLI
draws (:mod:`qiao.cli.netview`: text, SVG, DOT, JSON).

Side by side means differences show:

* **foreign**: kernel objects on qiao's bridges that qiao did not make (a
  port no endpoint owns, an address that is not the gateway's), and other
  tables whose forward hook drops by policy;
* **drift**: what the store has and the kernel lacks, each with what qiao
  will do about it (``fix``): a bridge or its address (restored at the
  next start), a container's veth (plugged again by the link repair within
  5 s), its ``eth0`` or address inside the sandbox (not repaired: restart
  the container), a network's chains or a published port's map element
  (the firewall healer rebuilds the table), an overlay peer etcd has and
  the kernel lacks (programmed again at the overlay's next change);
  and links tagged ``qiao:`` that no record owns (stale: deleted at the
  next start).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from qiao.engine.models import Attachment, Container, Endpoint, Network
from qiao.kernel.firewall import BridgeRules
from qiao.kernel.host import ALIAS_PREFIX
from qiao.kernel.inventory import Inventory, Link, Sandbox, Snapshot

FIX_RESTORE = "restored at qiaod's next start"
FIX_HEAL = "the firewall healer rebuilds qiao's table within milliseconds"
FIX_REPLUG = "the link repair plugs it again within 5 s"
FIX_RESTART = "not repaired while it runs: restart the container (qiao stop, qiao start)"
FIX_STALE = "deleted at qiaod's next start"
FIX_PEER = "programmed again at the overlay's next change (or qiaod's next start)"


@dataclass
class NetRecord:
    net: Network
    layout: dict[str, Any]
    rules: BridgeRules | None


@dataclass
class Records:
    """A copy of what the store says, taken under the engine lock."""

    networks: list[NetRecord] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    containers: list[Container] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    link_notes: dict[str, str] = field(default_factory=dict)  # endpoint id -> what happened to its link

    def sandboxes(self) -> list[str]:
        """The namespaces to look into: every running container's, every attachment's."""
        paths = [c.sandbox_key for c in self.containers if c.running and c.sandbox_key and not c.joined_to]
        paths += [a.sandbox for a in self.attachments if a.sandbox]
        return sorted(set(paths))


def _drift(what: str, fix: str) -> dict[str, str]:
    return {"what": what, "fix": fix}


def _mapping_text(m: dict[str, Any]) -> str:
    return f"{m['host_ip']}:{m['host_port']}->{m['container_port']}/{m['proto']}"


def _mapping_key(m: dict[str, Any]) -> str:
    return f"{m['proto']} . {m['host_port']}" if m["host_ip"] == "0.0.0.0" else f"{m['proto']} . {m['host_ip']} . {m['host_port']}"


def _uplink(snap: Snapshot) -> dict[str, Any] | None:
    default = next((r for r in snap.routes if r.dst == "0.0.0.0/0"), None)
    if default is None or not default.dev:
        return None
    link = snap.link(default.dev)
    return {
        "dev": default.dev,
        "addresses": list(link.addresses) if link else [],
        "mac": link.mac if link else "",
        "gateway": default.gateway,
    }


def _network_order(rec: NetRecord) -> tuple[int, str]:
    return (0 if rec.net.name == "bridge" else 1, rec.net.name)


def build(rec: Records, snap: Snapshot, host: str) -> dict[str, Any]:
    """The model: ``{"host", "firewall", "networks", "containers", "stale"}`` (see docs/topology-and-trace.md)."""
    links = {link.name: link for link in snap.links}
    fw = snap.firewall
    owners = {c.id: c.name for c in rec.containers}
    owners.update({a.id: f"{a.runtime}:{a.container_id[:12]}" for a in rec.attachments})
    endpoints_of: dict[str, list[Endpoint]] = {}
    for ep in rec.endpoints:
        endpoints_of.setdefault(ep.network_id, []).append(ep)
    firewall: dict[str, Any] = {"table": "inet qiao", "drift": [], "foreign": []}
    if not fw.present:
        firewall["drift"].append(_drift("table inet qiao is missing", FIX_HEAL))
    for chain in fw.drop_forward:
        firewall["foreign"].append(f"{chain}: hooks forward with policy drop (qiao keeps an accept pair per bridge in it)")
    model: dict[str, Any] = {
        "host": {"name": host, "uplink": _uplink(snap)},
        "firewall": firewall,
        "networks": [],
        "containers": [],
        "stale": [],
    }
    known_owners = {ep.id for ep in rec.endpoints} | {f"net:{r.net.id}" for r in rec.networks}
    for nr in sorted(rec.networks, key=_network_order):
        if not nr.layout.get("bridge"):
            continue
        model["networks"].append(_network(nr, endpoints_of.get(nr.net.id, []), links, snap, owners, rec.link_notes))
    for ctr in sorted(rec.containers, key=lambda c: c.name):
        if ctr.running:
            model["containers"].append(_container(ctr, rec, snap))
    for att in sorted(rec.attachments, key=lambda a: a.name):
        model["containers"].append(_attachment(att, rec, snap))
    for link in snap.links:
        owner = link.alias[len(ALIAS_PREFIX) :] if link.alias.startswith(ALIAS_PREFIX) else None
        if owner is not None and owner not in known_owners:
            model["stale"].append(_drift(f"{link.kind or 'link'} {link.name} tagged qiao:{owner[:12]}: no record owns it", FIX_STALE))
    return model


def _network(
    nr: NetRecord, endpoints: list[Endpoint], links: dict[str, Link], snap: Snapshot, owners: dict[str, str], notes: dict[str, str]
) -> dict[str, Any]:
    net, bridge = nr.net, nr.layout["bridge"]
    rules = nr.rules
    flags = []
    if net.internal:
        flags.append("internal")
    if rules is not None and not rules.icc:
        flags.append("icc off")
    if rules is not None and not rules.masquerade and not net.internal:
        flags.append("no masquerade")
    if net.enable_ipv6:
        flags.append("IPv6")
    address = f"{net.gateway}/{net.prefixlen}" if net.gateway and net.subnet else ""
    out: dict[str, Any] = {
        "name": net.name,
        "id": net.id[:12],
        "driver": net.driver,
        "scope": net.scope,
        "bridge": bridge,
        "address": address,
        "subnet": net.subnet or "",
        "cluster_subnet": net.cluster_subnet or "",
        "flags": flags,
        "drift": [],
        "ports": [],
        "foreign": [],
    }
    br = links.get(bridge)
    if br is None:
        out["drift"].append(_drift(f"bridge {bridge} is missing", FIX_RESTORE))
    else:
        if address and address not in br.addresses:
            out["drift"].append(_drift(f"address {address} is missing on {bridge}", FIX_RESTORE))
        if not br.up:
            out["drift"].append(_drift(f"{bridge} is down", FIX_RESTORE))
        wanted = {address} | ({f"{net.gateway6}/{net.subnet6.split('/')[1]}"} if net.gateway6 and net.subnet6 else set())
        for extra in br.addresses:
            if extra not in wanted:
                out["foreign"].append({"name": extra, "kind": "address", "note": f"address {extra} on {bridge} (not qiao's)"})
    if snap.firewall.present and nr.rules is not None and f"fwd-in-{bridge}" not in snap.firewall.chains:
        out["drift"].append(_drift(f"chain fwd-in-{bridge} is missing from table inet qiao", FIX_HEAL))
    veths = set()
    for ep in sorted(endpoints, key=lambda e: (owners.get(e.owner, e.owner), e.ifname)):
        if not ep.host_ifname:
            continue
        veths.add(ep.host_ifname)
        port: dict[str, Any] = {
            "veth": ep.host_ifname,
            "owner": owners.get(ep.owner, ep.owner[:12]),
            "ifname": ep.ifname,
            "address": f"{ep.address}/{ep.prefixlen}",
            "mac": ep.mac,
            "drift": [],
        }
        link = links.get(ep.host_ifname)
        if link is None:
            note = notes.get(ep.id, "")
            port["drift"].append(_drift(f"veth {ep.host_ifname} is missing", note if note.startswith("unplugged") else FIX_REPLUG))
        elif br is not None and link.master != br.index:
            port["drift"].append(
                _drift(f"veth {ep.host_ifname} is not a port of {bridge}", "not repaired: qiao network disconnect, then connect")
            )
        out["ports"].append(port)
    if br is not None:
        for link in snap.links:
            if link.master == br.index and link.name not in veths:
                out["foreign"].append(
                    {"name": link.name, "kind": link.kind or "link", "note": f"{link.kind or 'link'} {link.name} on {bridge} (not qiao's)"}
                )
    vxlan = nr.layout.get("vxlan")
    if vxlan:
        out["vxlan"] = _vxlan(vxlan, links, snap)
    return out


def _vxlan(layout: dict[str, Any], links: dict[str, Link], snap: Snapshot) -> dict[str, Any]:
    dev = layout["dev"]
    link = links.get(dev)
    out: dict[str, Any] = {
        "dev": dev,
        "vni": layout["vni"],
        "local": layout["local"],
        "port": layout["port"],
        "underlay": layout.get("underlay", ""),
        "address": next((a for a in link.addresses if ":" not in a), "") if link else "",
        "drift": [],
        "peers": [],
    }
    if link is None:
        out["drift"].append(_drift(f"VXLAN device {dev} is missing", FIX_RESTORE))
    routes = {r.dst: r for r in snap.routes if r.dev == dev and r.gateway}
    neigh = {n.address: n for n in snap.neighbours if n.dev == dev}
    fdb = {f.mac: f for f in snap.fdb if f.dev == dev}
    expected = set()
    for peer in layout.get("peers", []):
        subnet = peer["subnet"]
        expected.add(subnet)
        entry = dict(peer, drift=[])
        if link is not None:
            missing = []
            if subnet not in routes:
                missing.append("route")
            if peer["vtep"] not in neigh:
                missing.append("neighbour")
            if peer["mac"] not in fdb or fdb[peer["mac"]].dst != peer["host"]:
                missing.append("FDB entry")
            if missing:
                entry["drift"].append(_drift(f"{', '.join(missing)} for {subnet} (host {peer['host']}) missing", FIX_PEER))
        out["peers"].append(entry)
    for subnet, route in sorted(routes.items()):
        if subnet not in expected:
            mac = neigh[route.gateway].mac if route.gateway in neigh else ""
            host = fdb[mac].dst if mac in fdb else ""
            out["peers"].append(
                {
                    "host": host,
                    "subnet": subnet,
                    "vtep": route.gateway,
                    "mac": mac,
                    "drift": [_drift(f"peer {subnet} is not in etcd's leases", FIX_PEER)],
                }
            )
    return out


def _interfaces(endpoints: list[tuple[Network | None, Endpoint]], box: Sandbox | None) -> list[dict[str, Any]]:
    out = []
    for net, ep in endpoints:
        iface: dict[str, Any] = {
            "ifname": ep.ifname,
            "network": net.name if net else "?",
            "address": f"{ep.address}/{ep.prefixlen}",
            "address6": f"{ep.address6}/{ep.prefixlen6}" if ep.address6 else "",
            "mac": ep.mac,
            "veth": ep.host_ifname,
            "gateway": ep.gateway,
            "drift": [],
        }
        if box is not None and not box.error:
            link = next((lk for lk in box.links if lk.name == ep.ifname), None)
            if link is None:
                iface["drift"].append(_drift(f"{ep.ifname} is missing in the namespace", FIX_RESTART))
            else:
                if iface["address"] not in link.addresses:
                    iface["drift"].append(_drift(f"{iface['address']} is missing on {ep.ifname}", FIX_RESTART))
                if link.mac and link.mac != ep.mac:
                    iface["drift"].append(_drift(f"{ep.ifname}'s MAC is {link.mac}, not {ep.mac}", FIX_RESTART))
        out.append(iface)
    return out


def _container(ctr: Container, rec: Records, snap: Snapshot) -> dict[str, Any]:
    nets = {r.net.id: r.net for r in rec.networks}
    eps = {ep.id: ep for ep in rec.endpoints}
    endpoints = [(nets.get(eps[e].network_id), eps[e]) for e in ctr.endpoint_ids if e in eps]
    names = {c.id: c.name for c in rec.containers}
    box = snap.sandboxes.get(ctr.sandbox_key) if ctr.sandbox_key and not ctr.joined_to else None
    mode = ctr.network_mode
    if ctr.joined_to:
        mode = f"container:{names.get(ctr.joined_to, ctr.joined_to[:12])}"
    elif mode not in ("host", "none", "bridge"):
        mode = "user"
    out: dict[str, Any] = {
        "name": ctr.name,
        "id": ctr.id[:12],
        "kind": "container",
        "mode": mode,
        "namespace": "host"
        if ctr.network_mode == "host" and not ctr.joined_to
        else os.path.basename(ctr.sandbox_key)
        if ctr.sandbox_key
        else "",
        "interfaces": [] if ctr.joined_to else _interfaces(endpoints, box),
        "ports": [_mapping_text(m) for m in ctr.ports],
        "sharers": sorted(c.name for c in rec.containers if c.running and c.joined_to == ctr.id),
        "drift": [],
    }
    if box is not None and box.error:
        out["drift"].append(_drift(f"its namespace {ctr.sandbox_key} cannot be read: {box.error}", "finished when its process exits"))
    if snap.firewall.present:
        for m in ctr.ports:
            if _mapping_key(m) not in snap.firewall.published:
                out["drift"].append(_drift(f"published port {_mapping_text(m)} has no map element", FIX_HEAL))
    return out


def _attachment(att: Attachment, rec: Records, snap: Snapshot) -> dict[str, Any]:
    nets = {r.net.id: r.net for r in rec.networks}
    ep = next((e for e in rec.endpoints if e.id == att.endpoint_id), None)
    box = snap.sandboxes.get(att.sandbox) if att.sandbox else None
    return {
        "name": f"{att.runtime}:{att.container_id[:12]}",
        "id": att.id[:12],
        "kind": att.runtime,
        "mode": "attachment",
        "namespace": att.sandbox,
        "interfaces": _interfaces([(nets.get(ep.network_id), ep)], box) if ep else [],
        "ports": [_mapping_text(m) for m in att.ports],
        "sharers": [],
        "drift": [],
    }


class Topology:
    def __init__(self, engine: Any, inventory: Inventory) -> None:
        self.engine = engine
        self.inventory = inventory

    def records(self) -> Records:
        engine = self.engine
        with engine.lock:
            networks = engine.networks
            rec = Records(
                networks=[
                    NetRecord(dataclasses.replace(n), networks.driver(n).layout(n), networks.driver(n).firewall_rules(n))
                    for n in networks.by_id.values()
                ],
                endpoints=[dataclasses.replace(e) for e in networks.endpoints.values()],
                containers=[dataclasses.replace(c) for c in engine.containers.by_id.values()],
                attachments=[dataclasses.replace(a) for a in engine.attachments.by_name.values()],
                link_notes=dict(networks.link_notes),
            )
        return rec

    def model(self) -> dict[str, Any]:
        rec = self.records()
        snap = self.inventory.snapshot(rec.sandboxes())
        return build(rec, snap, socket.gethostname())
