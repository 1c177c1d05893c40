"""``qiao trace SRC DST[:PORT][/tcp|udp]``: why a packet does or does not get through.

:class:`Tracer` turns the two ends into a probe (:meth:`Tracer.plan`, under
the engine lock: which namespace sends, from which address, to which
address and port), has the kernel send it with tracing on for that packet
only (:mod:`qiao.kernel.tracing`), looks up the routes and neighbours it
met, and reads the result (:mod:`.verdicts`).

The ends, as a user names them:

* a container (name, id or id prefix): its namespace sends, from its
  address on the network the two ends share (else its first one); a
  ``container:`` sharer is the container whose namespace it shares, a
  ``--network host`` container is the host;
* ``host``: the daemon's own namespace; as a destination, the address a
  container reaches the host by (its gateway), or the uplink's from outside;
* ``outside``: the namespace at the other end of the host's uplink, when it
  is a veth into a named namespace (a ``qiao lab`` underlay, a test's
  neighbour machine); to a container from outside, the probe goes to the
  host's uplink address and the container's published host port;
* an IPv4 address.

A destination named by a name is first asked of the source's resolver, as
the container itself would (the zones of its user networks): a name it
cannot resolve is "name not found by the resolver", and the probe still
goes to the container's address, to show what the firewall would do too.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from qiao.engine.errors import Conflict, InvalidParameter, NotFound
from qiao.engine.models import Container, Endpoint, Network
from qiao.kernel.inventory import Inventory, Uplink
from qiao.kernel.nftrace import Match
from qiao.kernel.tracing import Capture, Probe, Tracing
from qiao.observe import verdicts
from qiao.observe.verdicts import Intent, NetInfo, Where

_DESTINATION = re.compile(r"^(?P<name>[^:/]+)(?::(?P<port>[0-9]{1,5}))?(?:/(?P<proto>[a-z]+))?$")


def parse_destination(text: str) -> tuple[str, int, str]:
    """``DST[:PORT][/tcp|udp]`` -> (name, port, protocol); no port: an ICMP echo."""
    m = _DESTINATION.match(text)
    if not m:
        raise InvalidParameter(f"invalid destination {text!r}: expected NAME[:PORT][/tcp|udp]")
    port = int(m["port"]) if m["port"] else 0
    if m["port"] is not None and not 1 <= port <= 65535:
        raise InvalidParameter(f"invalid port in {text!r}: 1-65535")
    proto = m["proto"] or ("tcp" if port else "icmp")
    if proto not in ("tcp", "udp", "icmp"):
        raise InvalidParameter(f"invalid protocol {proto!r} in {text!r}: tcp or udp")
    if proto in ("tcp", "udp") and not 1 <= port <= 65535:
        raise InvalidParameter(f"{text!r}: /{proto} needs a port (1-65535)")
    if proto == "icmp" and port:
        raise InvalidParameter(f"{text!r}: an ICMP echo has no port")
    return m["name"], port, proto


def _is_address(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


@dataclass
class End:
    """One end of the path."""

    label: str
    kind: str  # container | host | outside | address
    netns: str = ""  # where a source sends from ("": the daemon's namespace)
    address: str = ""
    container: Container | None = None
    endpoints: list[tuple[Network, Endpoint]] = field(default_factory=list)
    note: str = ""  # how it sends (a sharer of another's namespace, a host-network container)
    pinned: bool = False  # a destination given by its address: the probe goes there, whoever has it


@dataclass
class Expected:
    """Another host's probe, as the host it is sent to expects it."""

    match: Match
    where: Where
    intent: Intent


@dataclass
class Plan:
    src: End
    dst: End
    proto: str
    port: int
    daddr: str  # where the probe goes
    dport: int
    intent: Intent
    where: Where
    hops: list[dict[str, Any]] = field(default_factory=list)  # before the probe: the resolver, the published port used
    name_failure: str = ""


def _source_address(endpoints: list[tuple[Network, Endpoint]], daddr: str) -> str:
    """The address a container's kernel would send from to ``daddr``: the one on its
    network, else the one on the network of its default route (the guard on each
    veth lets a container send only from that veth's own address)."""
    target = ipaddress.IPv4Address(daddr)
    for net, ep in endpoints:
        if net.subnet and target in ipaddress.IPv4Network(net.subnet):
            return ep.address
    return next((ep.address for _n, ep in endpoints if ep.gateway), endpoints[0][1].address)


def _ports_text(ctr: Container) -> list[str]:
    return [f"{m['host_ip']}:{m['host_port']}->{m['container_port']}/{m['proto']}" for m in ctr.ports]


class Tracer:
    def __init__(self, engine: Any, tracing: Tracing, inventory: Inventory) -> None:
        self.engine = engine
        self.tracing = tracing
        self.inventory = inventory
        self._uplink: Uplink | None = None
        self._uplink_lock = threading.Lock()

    # -- the whole trace ---------------------------------------------------

    def trace(self, source: str, destination: str, probe_id: int = 0) -> dict[str, Any]:
        """``probe_id``: the probe's source port, or its echo id (0: drawn at random); a lab
        trace chooses it, so that the receiving host's watch knows the probe."""
        name, port, proto = parse_destination(destination)
        plan = self.plan(source, name, port, proto)
        sport, ident = (0, probe_id) if proto == "icmp" else (probe_id, 0)
        probe = Probe(plan.src.netns, proto, plan.daddr, plan.dport, plan.src.address, sport, ident)
        capture = self.tracing.capture(probe)
        return self.report(plan, capture)

    def report(self, plan: Plan, capture: Capture) -> dict[str, Any]:
        assert capture.match is not None
        lookups: dict[str, dict[str, Any]] = {}
        saddr = capture.match.saddr
        lookups["source"] = self.inventory.route_get(plan.src.netns, plan.daddr, saddr)
        routed = verdicts.forwarded(capture)
        if routed is not None:
            lookups["host"] = self.inventory.route_get("", routed[0], routed[1], routed[2])
        reading = verdicts.read(capture, plan.where, plan.intent, lookups)
        m = capture.match
        ports = f":{m.sport}" if m.proto != "icmp" else f" (echo id {m.ident})"
        to = f":{m.dport}" if m.proto != "icmp" else ""
        sends = {
            "at": plan.src.label,
            "kind": "send",
            "text": f"sends {m.proto} {m.saddr or lookups['source'].get('prefsrc', '?')}{ports} -> {m.daddr}{to}",
        }
        notes = [{"at": end.label, "kind": "info", "text": end.note} for end in (plan.src, plan.dst) if end.note]
        hops = notes + plan.hops + [sends, verdicts.route_hop(plan.src.label, lookups["source"])] + reading["hops"]
        result = reading["result"]
        if plan.name_failure:
            by_address = {k: result[k] for k in ("status", "reason", "detail")}
            result = {"status": "dropped", "reason": verdicts.NO_NAME, "detail": plan.name_failure, "by_address": by_address}
        return {
            "source": {"label": plan.src.label, "kind": plan.src.kind},
            "destination": {
                "label": plan.dst.label,
                "kind": plan.dst.kind,
                "address": plan.daddr,
                "port": plan.dport,
                "protocol": plan.proto,
            },
            "hops": hops,
            "result": result,
            "socket": {"outcome": capture.outcome, "detail": capture.detail},  # how the sender's socket ended
            "elapsed_ms": round(capture.elapsed_ms, 1),
        }

    # -- the receiving side of a lab trace (see qiao.daemon.observe_api) ------------

    def expect(self, source: str, destination: str, probe_id: int) -> Expected:
        """What this host expects of another host's probe to ``destination``
        (``DST[:PORT][/tcp|udp]``, as the sender was given it; a container or an
        address here, or one of this host's addresses), sent from ``source`` (a
        label) with source port (or echo id) ``probe_id``."""
        name, port, proto = parse_destination(destination)
        if not 1 <= probe_id <= 65535:
            raise InvalidParameter(f"invalid probe id {probe_id}: the probe's source port or echo id, 1-65535")
        self.uplink()
        with self.engine.lock:
            where = self._where()
            # an address no container has: one of this host's own, say
            dst = (self._owner_of(name) or End(name, "address", address=name)) if _is_address(name) else self._container(name)
            dst_nets = [self._net_info(n) for n, _ep in dst.endpoints]
            intent = Intent(
                source,
                dst.label,
                proto,
                port,
                dst_container=dst.kind == "container",
                dst_ports=_ports_text(dst.container) if dst.container else [],
                dst_networks=[n for n in dst_nets if n],
            )
        sport, ident = (0, probe_id) if proto == "icmp" else (probe_id, 0)
        return Expected(Match(proto, sport=sport, dport=port, ident=ident), where, intent)

    def received(self, expected: Expected, capture: Capture) -> dict[str, Any]:
        """The path here and the result, from what a watch saw and how the sender's socket ended."""
        routed = verdicts.forwarded(capture)
        lookups = {"host": self.inventory.route_get("", routed[0], routed[1], routed[2])} if routed else {}
        reading = verdicts.read(capture, expected.where, expected.intent, lookups)
        return reading | {"seen": bool(capture.events), "lost": capture.lost}

    # -- the plan ----------------------------------------------------------

    def plan(self, source: str, destination: str, port: int, proto: str) -> Plan:
        self.uplink()  # kernel I/O, once: not under the engine lock
        with self.engine.lock:
            where = self._where()
            src = self._source(source)
            hops: list[dict[str, Any]] = []
            dst, failure = self._destination(destination, src, hops)
            daddr, dport = self._aim(src, dst, port, proto, hops)
            if not daddr:
                raise Conflict(f"{dst.label} has no address to trace to (network none?)")
            src_nets = [self._net_info(n) for n, _ep in src.endpoints]
            dst_nets = [self._net_info(n) for n, _ep in dst.endpoints]
            intent = Intent(
                src.label,
                dst.label,
                proto,
                port,
                dst_container=dst.kind == "container",
                dst_ports=_ports_text(dst.container) if dst.container else [],
                via_host=daddr != dst.address,
                src_networks=[n for n in src_nets if n],
                dst_networks=[n for n in dst_nets if n],
            )
        return Plan(src, dst, proto, port, daddr, dport, intent, where, hops, failure)

    def uplink(self) -> Uplink:
        with self._uplink_lock:
            if self._uplink is None or not self._uplink.dev:
                self._uplink = self.inventory.uplink()
            return self._uplink

    def _net_info(self, net: Network) -> NetInfo | None:
        rules = self.engine.networks.driver(net).firewall_rules(net)
        if rules is None:
            return None
        return NetInfo(net.name, rules.bridge, rules.subnet, rules.internal, rules.icc, rules.member_dev)

    def _where(self) -> Where:
        where = Where()
        networks = self.engine.networks
        for net in networks.by_id.values():
            info = self._net_info(net)
            if info is not None:
                where.networks[info.bridge] = info
                if info.member:
                    where.devices[info.member] = f"VXLAN of overlay {net.name}"
        for ep in networks.endpoints.values():
            net = networks.by_id.get(ep.network_id)
            info = self._net_info(net) if net else None
            if ep.host_ifname and info is not None:
                where.ports[ep.host_ifname] = (self._owner(ep.owner), info.bridge)
        up = self._uplink
        if up is not None and up.dev:
            where.devices.setdefault(up.dev, "the uplink")
        return where

    def _owner(self, owner: str) -> str:
        ctr = self.engine.containers.by_id.get(owner)
        if ctr is not None:
            return ctr.name
        return self.engine.attachments.describe(owner) or owner[:12]

    def _container(self, ref: str) -> End:
        ctr = self.engine.containers.get(ref)
        seen = set()
        label = ctr.name
        while ctr.joined_to and ctr.joined_to not in seen:  # container:X shares X's namespace
            seen.add(ctr.joined_to)
            target = self.engine.containers.by_id.get(ctr.joined_to)
            if target is None:
                break
            ctr = target
        if not ctr.running:
            raise Conflict(f"container {label} is not running")
        note = f"{label} shares {ctr.name}'s network namespace (--network container:{ctr.name})" if label != ctr.name else ""
        if ctr.network_mode == "host":
            return End(label, "host", note=f"{label} runs in the host's network namespace (--network host)")
        netns = ctr.sandbox_key or f"/proc/{ctr.pid}/ns/net"
        endpoints = [(self.engine.networks.by_id[ep.network_id], ep) for _name, ep in self.engine.containers.endpoints(ctr)]
        first = endpoints[0][1].address if endpoints else ""
        if not endpoints:
            note = note or f"{label} is on network none: it has lo only"
        return End(label, "container", netns, first, ctr, endpoints, note)

    def _owner_of(self, address: str) -> End | None:
        for ep in self.engine.networks.endpoints.values():
            if ep.address == address:
                ctr = self.engine.containers.by_id.get(ep.owner)
                if ctr is not None and ctr.running:
                    end = self._container(ctr.id)
                    end.address = address
                    return end
        return None

    def _source(self, ref: str) -> End:
        if ref == "host":
            return End("host", "host")
        if ref == "outside":
            up = self.uplink()
            if not up.outside:
                why = f"the uplink {up.dev} leads to no named namespace" if up.dev else "this host has no default route"
                raise Conflict(f"no outside to trace from: {why} (outside is the machine across the uplink, as in a qiao lab)")
            return End("outside", "outside", up.outside, up.outside_address)
        if _is_address(ref):
            found = self._owner_of(ref)
            if found is not None:
                return found
            if ipaddress.IPv4Address(ref) in self.engine.host.addresses():
                return End("host", "host", "", ref)
            up = self.uplink()
            if up.outside and ref == up.outside_address:
                return End("outside", "outside", up.outside, ref)
            raise NotFound(f"no namespace here has the address {ref}: trace from a container, host, outside or one of their addresses")
        return self._container(ref)

    def _destination(self, ref: str, src: End, hops: list[dict[str, Any]]) -> tuple[End, str]:
        """The destination, and why the source's resolver would not find it by name ("" when it would)."""
        if ref in ("host", "outside"):
            if ref == "outside":
                up = self.uplink()
                if not up.outside_address:
                    raise Conflict("no outside to trace to: the uplink leads to no named namespace")
                return End("outside", "outside", address=up.outside_address), ""
            return End("host", "host"), ""
        if _is_address(ref):
            found = self._owner_of(ref)
            if found is not None:
                found.pinned = True
                return found, ""
            return End(ref, "address", address=ref), ""
        answer, zone_note = self._resolve(ref, src)
        try:
            dst = self._container(ref)
        except (NotFound, InvalidParameter, Conflict) as exc:
            if answer:
                hops.append({"at": src.label, "kind": "dns", "text": zone_note})
                return End(ref, "address", address=answer[0]), ""
            if zone_note and isinstance(exc, NotFound):
                raise NotFound(f"{ref}: {verdicts.NO_NAME} ({zone_note}), and no container here has that name") from None
            raise
        if dst.kind == "host":
            return dst, ""
        if answer and not any(ep.address in answer for _net, ep in dst.endpoints):
            # the resolver's: a container elsewhere (an overlay's remote one), the one here matched by its id
            hops.append({"at": src.label, "kind": "dns", "text": zone_note})
            return End(ref, "address", address=answer[0]), ""
        if zone_note:
            hops.append({"at": src.label, "kind": "dns", "text": zone_note})
        if answer:
            for net, ep in dst.endpoints:
                if ep.address in answer:
                    dst.address = ep.address
                    dst.endpoints = [(net, ep)] + [x for x in dst.endpoints if x[1] is not ep]
            return dst, ""
        if zone_note:
            return dst, f"{src.label}'s resolver does not know {ref}: {dst.label} is on no network {src.label} is on"
        return dst, ""

    def _resolve(self, name: str, src: End) -> tuple[list[str], str]:
        """What the source's resolver answers for ``name`` (IPv4 addresses) and a sentence
        saying so; ([], "") when the source has no resolver of qiao's (no user network)."""
        resolver = self.engine.resolver
        user_nets = [n for n, _ep in src.endpoints if n.user_defined]
        if src.kind != "container" or resolver is None or not user_nets:
            return [], ""
        for net in user_nets:
            zone = resolver.zones.get(net.id)
            found = zone.names.get(name.lower().rstrip(".")) if zone else None
            v4 = [a for a in found or [] if ":" not in a]
            if v4:
                return v4, f"resolver {net.gateway}:53 (network {net.name}) answers {name} -> {', '.join(v4)}"
        gateways = ", ".join(f"{n.gateway}:53" for n in user_nets)
        return [], f"resolver {gateways}: {name} not found (NXDOMAIN)"

    def _aim(self, src: End, dst: End, port: int, proto: str, hops: list[dict[str, Any]]) -> tuple[str, int]:
        """The address and port the probe is sent to; the source's address follows it."""
        daddr, dport = self._target(src, dst, port, proto, hops)
        if src.kind == "container" and src.endpoints and daddr:
            src.address = _source_address(src.endpoints, daddr)
        return daddr, dport

    def _target(self, src: End, dst: End, port: int, proto: str, hops: list[dict[str, Any]]) -> tuple[str, int]:
        if dst.kind == "host":
            if src.kind == "container":
                gw = next((ep.gateway for _n, ep in src.endpoints if ep.gateway), "") or next(
                    (n.gateway or "" for n, _ep in src.endpoints), ""
                )
                return gw, port
            if src.kind == "outside":
                return self.uplink().address, port
            return "127.0.0.1", port
        if dst.kind != "container" or dst.pinned:
            return dst.address, port
        shared = [(n, ep) for n, ep in dst.endpoints if any(n.id == s.id for s, _e in src.endpoints)]
        if shared:
            net, ep = shared[0]
            dst.address = ep.address
            src_ep = next(e for s, e in src.endpoints if s.id == net.id)
            src.address = src_ep.address
            return ep.address, port
        if src.kind == "outside":
            assert dst.container is not None
            uplink = self.uplink().address
            for m in dst.container.ports:
                if m["container_port"] == port and m["proto"] == proto and m["host_ip"] in ("0.0.0.0", uplink):
                    hops.append(
                        {
                            "at": "outside",
                            "kind": "info",
                            "text": f"{dst.label} publishes {port}/{proto} on host port {m['host_port']}: to {uplink}:{m['host_port']}",
                        }
                    )
                    return uplink, m["host_port"]
            if proto in ("tcp", "udp"):
                hops.append(
                    {"at": "outside", "kind": "info", "text": f"{dst.label} publishes no host port for {port}/{proto}: to {uplink}:{port}"}
                )
                return uplink, port
        return dst.address, port
