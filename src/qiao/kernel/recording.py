"""Kernel ports that change nothing: each call is recorded instead (``qiao explain``).

A dry run of the engine (:mod:`qiao.engine.dryrun`) is the engine's own code
over these ports.  Every change it asks for (a bridge, a veth pair, an nft
transaction, a VXLAN peer) becomes a :class:`Call`, in order, tagged with the
engine step it belongs to: the :class:`Recorder` is the dry run's fault hook,
which ``Steps`` and ``Teardown`` call with each step's name before running it.
Questions about the kernel (is there a link of that name, which addresses does
the host have, which foreign tables drop forwarded traffic) are answered by
the real ports, read-only, so validation runs as it would for real.

``fresh``: answer as a host where qiao never ran: the host's own links,
addresses and routes are there, none of the objects qiao made.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from qiao.kernel.firewall import (
    BridgeRules,
    EndpointGuard,
    Firewall,
    PortMapping,
    del_network_script,
    elements_script,
    guard_elements_script,
    network_script,
    tables_script,
)
from qiao.kernel.host import Host, Iface, IPAddress, Peer, bridge_mac
from qiao.kernel.vxlan import Vxlan


@dataclass(frozen=True)
class Call:
    """One recorded call: ``port`` is ``step`` (a step begins), ``host``,
    ``firewall``, ``vxlan``, ``process`` or ``cluster`` (the cluster store)."""

    step: str  # the engine step it belongs to ("" before the first)
    port: str
    method: str
    args: dict[str, Any]


class Recorder:
    """The calls of one dry run, and the recording ports that make them."""

    def __init__(self, host: Host, firewall: Firewall, fresh: bool = False, ours: Iterable[str] = (), our_subnets: Sequence[str] = ()):
        """``ours``, ``our_subnets``: the links qiao made here and its networks' subnets, which a fresh host lacks."""
        self.fresh = fresh
        self.calls: list[Call] = []
        self._step = ""
        self.host = RecordingHost(self, host, ours if fresh else (), our_subnets if fresh else ())
        self.firewall = RecordingFirewall(self, firewall)

    def step(self, name: str) -> None:
        """The fault hook: a named step begins."""
        self._step = name
        self.calls.append(Call(name, "step", name, {}))

    def record(self, port: str, method: str, /, **args: Any) -> None:
        self.calls.append(Call(self._step, port, method, args))

    def vxlan(self, real: Vxlan) -> RecordingVxlan:
        return RecordingVxlan(self, real)


class RecordingHost:
    """:class:`qiao.kernel.host.Host`, recorded."""

    def __init__(self, recorder: Recorder, real: Host, hidden_links: Iterable[str] = (), hidden_subnets: Sequence[str] = ()):
        self._rec, self._real = recorder, real
        self._hidden = {IPv4Network(s) for s in hidden_subnets}  # routes of qiao's own bridges (not on a fresh host)
        self._made: dict[str, str] = {}  # links this dry run made: name -> kind
        self._gone = set(hidden_links)  # links this dry run deleted, and qiao's own (not on a fresh host)

    def _absent(self, name: str) -> bool:
        return name in self._gone

    # -- questions: the real kernel's answers (read only) --------------------

    def link_exists(self, name: str) -> bool:
        return self.link_kind(name) is not None

    def link_kind(self, name: str) -> str | None:
        if name in self._made:
            return self._made[name]
        return None if self._absent(name) else self._real.link_kind(name)

    def link_mac(self, name: str) -> str | None:
        return None if name in self._made or self._absent(name) else self._real.link_mac(name)

    def sandbox_link(self, netns_path: str, ifname: str) -> tuple[str, list[str]] | None:
        return None if self._rec.fresh else self._real.sandbox_link(netns_path, ifname)

    def sandbox_counters(self, netns_path: str) -> dict[str, dict[str, int]]:
        return {} if self._rec.fresh else self._real.sandbox_counters(netns_path)

    def owned_links(self) -> dict[str, str]:
        return {} if self._rec.fresh else self._real.owned_links()

    def namespace_id(self, path: str) -> int:
        return 0 if self._rec.fresh else self._real.namespace_id(path)

    def bridge_netfilter(self) -> bool:
        return self._real.bridge_netfilter()

    def reserved_networks(self) -> list[IPv4Network]:
        return [n for n in self._real.reserved_networks() if n not in self._hidden]

    def addresses(self) -> list[IPAddress]:
        return self._real.addresses()

    def settle(self, timeout: float) -> None:
        pass

    # -- changes: recorded ------------------------------------------------

    def ensure_bridge(self, name: str, address: str, prefixlen: int, mtu: int, v6: tuple[str, int] | None = None, owner: str = "") -> bool:
        created = not self.link_exists(name)
        self._rec.record("host", "ensure_bridge", name=name, address=address, prefixlen=prefixlen, mtu=mtu, v6=v6, owner=owner,
                         created=created, mac=bridge_mac())  # fmt: skip
        self._made[name] = "bridge"
        self._gone.discard(name)
        return created

    def delete_link(self, name: str) -> None:
        self._rec.record("host", "delete_link", name=name)
        self._made.pop(name, None)
        self._gone.add(name)

    def retire_link(self, name: str) -> None:
        self._rec.record("host", "retire_link", name=name)
        self._made.pop(name, None)
        self._gone.add(name)

    def create_netns(self, path: str) -> None:
        self._rec.record("host", "create_netns", path=path)

    def pin_netns(self, source: str, path: str) -> None:
        self._rec.record("host", "pin_netns", source=source, path=path)

    def destroy_netns(self, path: str) -> None:
        self._rec.record("host", "destroy_netns", path=path)

    def plug_veth(self, host_ifname: str, bridge: str, netns_path: str, peer: Peer, owner: str, isolated: bool = False) -> None:
        self._rec.record("host", "plug_veth", host_ifname=host_ifname, bridge=bridge, netns=netns_path, ifname=peer.ifname,
                         mac=peer.mac, mtu=peer.mtu, owner=owner, isolated=isolated)  # fmt: skip
        self._made[host_ifname] = "veth"

    def configure_sandbox(self, netns_path: str, iface: Iface | None) -> None:
        self._rec.record("host", "configure_sandbox", netns=netns_path, iface=iface)

    def set_default_route(self, netns_path: str, gateway: str, gateway6: str = "") -> None:
        self._rec.record("host", "set_default_route", netns=netns_path, gateway=gateway, gateway6=gateway6)

    def enable_forwarding(self, ipv6: bool = False) -> None:
        self._rec.record("host", "enable_forwarding", ipv6=ipv6)

    def flush_conntrack(self, proto: str, port: int) -> None:
        self._rec.record("host", "flush_conntrack", proto=proto, port=port)


class RecordingFirewall:
    """:class:`qiao.kernel.firewall.Firewall`, recorded with the nft text
    :class:`~qiao.kernel.firewall.NftFirewall` would apply (one transaction each)."""

    def __init__(self, recorder: Recorder, real: Firewall):
        self._rec, self._real = recorder, real

    def foreign_script(self, keep: list[str], drop: list[str]) -> str:
        return "" if self._rec.fresh else self._real.foreign_script(keep, drop)

    def reset(self, networks: list[BridgeRules], mappings: list[PortMapping], guards: Iterable[EndpointGuard] = ()) -> None:
        script = tables_script(networks, mappings, guards) + self.foreign_script([n.bridge for n in networks], [])
        self._rec.record("firewall", "reset", script=script, networks=[n.bridge for n in networks])

    def add_network(self, net: BridgeRules) -> None:
        self._rec.record("firewall", "add_network", script=network_script(net) + self.foreign_script([net.bridge], []), rules=net)

    def del_network(self, net: BridgeRules) -> None:
        self._rec.record("firewall", "del_network", script=self.foreign_script([], [net.bridge]) + del_network_script(net), rules=net)

    def add_ports(self, mappings: list[PortMapping]) -> None:
        self._rec.record("firewall", "add_ports", script=elements_script("add", mappings, with_data=True), mappings=list(mappings))

    def del_ports(self, mappings: list[PortMapping]) -> None:
        self._rec.record("firewall", "del_ports", script=elements_script("delete", mappings, with_data=False), mappings=list(mappings))

    def add_guards(self, guards: list[EndpointGuard]) -> None:
        self._rec.record("firewall", "add_guards", script=guard_elements_script("add", guards), guards=list(guards))

    def del_guards(self, guards: list[EndpointGuard]) -> None:
        self._rec.record("firewall", "del_guards", script=guard_elements_script("delete", guards), guards=list(guards))

    def ensure_foreign_hooks(self, bridges: list[str]) -> None:
        self._rec.record("firewall", "ensure_foreign_hooks", script=self.foreign_script(bridges, []), bridges=list(bridges))


class RecordingVxlan:
    """:class:`qiao.kernel.vxlan.Vxlan`, recorded."""

    def __init__(self, recorder: Recorder, real: Vxlan):
        self._rec, self._real = recorder, real

    def underlay(self, advertise: str | None) -> tuple[str, str, int]:
        return self._real.underlay(advertise)

    def peers(self, dev: str) -> dict[str, tuple[str, str]]:
        return {} if self._rec.fresh else self._real.peers(dev)

    def ensure_vxlan(self, name: str, vni: int, local_ip: str, port: int, mtu: int, mac: str, underlay: str, address: str) -> None:
        self._rec.record("vxlan", "ensure_vxlan", name=name, vni=vni, local_ip=local_ip, port=port, mtu=mtu, mac=mac,
                         underlay=underlay, address=address)  # fmt: skip

    def set_peer(self, dev: str, subnet: str, vtep_ip: str, mac: str, public_ip: str) -> None:
        self._rec.record("vxlan", "set_peer", dev=dev, subnet=subnet, vtep_ip=vtep_ip, mac=mac, public_ip=public_ip)

    def del_peer(self, dev: str, subnet: str, vtep_ip: str, mac: str) -> None:
        self._rec.record("vxlan", "del_peer", dev=dev, subnet=subnet, vtep_ip=vtep_ip, mac=mac)
