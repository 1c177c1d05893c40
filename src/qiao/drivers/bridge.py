"""The bridge driver: the principle of container networking in one module.

A network is a Linux bridge with the subnet's gateway address on it, routed
by the host (``ip_forward``) and masqueraded on the way out.  An endpoint is
a veth pair: one end is a port of the bridge, the other is ``ethN`` inside
the sandbox, with the endpoint's address and a default route via the
bridge.  The firewall part (NAT out, isolation between networks, published
ports) is :mod:`qiao.kernel.firewall`'s, from the :class:`BridgeRules`
given here.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Any, ClassVar

from qiao.engine import etcfiles, ids
from qiao.engine.errors import Conflict, InvalidParameter
from qiao.engine.ipam import IPNetwork, choose_subnet, parse_address, parse_subnet, refuse_reserved
from qiao.engine.models import Endpoint, Network, now
from qiao.engine.specs import NetworkSpec
from qiao.engine.steps import Steps, Teardown
from qiao.kernel.firewall import BridgeRules, Firewall
from qiao.kernel.host import Host, Iface, Peer

if TYPE_CHECKING:
    from qiao.drivers import NetworkDriver
    from qiao.engine.networks import Networks
    from qiao.kernel.recording import Recorder

DEFAULT_BRIDGE = "qiao0"
OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_MTU = "com.docker.network.driver.mtu"
OPT_ICC = "com.docker.network.bridge.enable_icc"
OPT_MASQUERADE = "com.docker.network.bridge.enable_ip_masquerade"
OPTIONS = (
    OPT_BRIDGE_NAME,
    OPT_MTU,
    OPT_ICC,
    OPT_MASQUERADE,
    "com.docker.network.bridge.default_bridge",
    "com.docker.network.bridge.host_binding_ipv4",
)
# The default network, as docker0's: `docker network inspect bridge` shows these options.
DEFAULT_OPTIONS = {
    OPT_BRIDGE_NAME: DEFAULT_BRIDGE,
    "com.docker.network.bridge.default_bridge": "true",
    OPT_ICC: "true",
    OPT_MASQUERADE: "true",
    "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
    OPT_MTU: "1500",
}


def _flag(options: dict[str, str], key: str) -> bool:
    value = options.get(key, "true").lower()
    if value not in ("true", "false"):
        raise InvalidParameter(f"invalid value {options[key]!r} for option {key}: expected true or false")
    return value == "true"


def mtu_option(options: dict[str, str], default: int = 1500) -> int:
    text = options.get(OPT_MTU)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise InvalidParameter(f"invalid MTU {text!r}")
    mtu = int(text)
    if not 68 <= mtu <= 65535:
        raise InvalidParameter(f"invalid MTU {mtu}: must be between 68 and 65535")
    return mtu


class BridgeDriver:
    name: ClassVar[str] = "bridge"
    endpoints: ClassVar[bool] = True
    scope: ClassVar[str] = "local"

    def __init__(self, host: Host, firewall: Firewall, resolv_conf: str = ""):
        self.host, self.firewall = host, firewall
        self.resolv_conf = resolv_conf or etcfiles.default_resolv_conf()

    # -- validate (pure) --------------------------------------------------

    def validate(self, spec: NetworkSpec, others: Sequence[Network]) -> Network:
        for key in sorted(spec.options):
            if key.startswith("com.docker.network.") and key not in OPTIONS:
                raise InvalidParameter(f"driver bridge does not support option {key}")
        net_id = ids.new_id()
        bridge = spec.options.get(OPT_BRIDGE_NAME) or "br-" + net_id[:12]
        if not ids.valid_ifname(bridge):
            raise InvalidParameter(f"invalid bridge name {bridge!r}: an interface name is 1-15 characters of A-Z a-z 0-9 _ . -")
        if any(n.driver_state.get("bridge") == bridge for n in others):
            raise Conflict(f"bridge name {bridge} is already used by another network")
        if self.host.link_kind(bridge) not in (None, "bridge"):  # e.g. lo or a NIC: never give it our address
            raise Conflict(f"existing interface {bridge} is not a bridge")
        mtu = mtu_option(spec.options)
        _flag(spec.options, OPT_ICC)
        _flag(spec.options, OPT_MASQUERADE)
        net4, range4, gw = self._ipv4(spec, others)
        net = Network(
            id=net_id,
            name=spec.name,
            driver=self.name,
            created=now(),
            subnet=str(net4),
            gateway=str(gw),
            ip_range=str(range4) if range4 else None,
            mtu=mtu,
            options=dict(spec.options),
            labels=dict(spec.labels),
            internal=spec.internal,
            attachable=spec.attachable,
            driver_state={"bridge": bridge},
        )
        if spec.enable_ipv6 or spec.subnet6:
            self._ipv6(net, spec, others)
        return net

    def _ipv4(self, spec: NetworkSpec, others: Sequence[Network]) -> tuple[IPv4Network, IPNetwork | None, ipaddress.IPv4Address]:
        taken = [(ipaddress.IPv4Network(n.subnet), n.name) for n in others if n.subnet]
        taken += [(ipaddress.IPv4Network(n.cluster_subnet), n.name) for n in others if n.cluster_subnet]
        if spec.subnet:
            net4 = parse_subnet(spec.subnet)
            if not isinstance(net4, IPv4Network):
                raise InvalidParameter(f"invalid subnet {spec.subnet}: the first subnet must be IPv4 (add an IPv6 one with --ipv6)")
            for other, name in taken:
                if net4.overlaps(other):
                    raise Conflict(f"invalid pool request: Pool overlaps with other one on this address space ({other}, network {name})")
            refuse_reserved(net4, self.host.addresses())
        else:
            if spec.gateway or spec.ip_range:
                raise InvalidParameter("--gateway and --ip-range need a --subnet")
            reserved = [t for t, _n in taken] + self.host.reserved_networks()
            for ns in etcfiles.host_nameservers(self.resolv_conf):
                with contextlib.suppress(ValueError):
                    reserved.append(ipaddress.IPv4Network(ns))
            net4 = choose_subnet(reserved)
        range4: IPNetwork | None = None
        if spec.ip_range:
            range4 = parse_subnet(spec.ip_range)
            if not isinstance(range4, IPv4Network) or not range4.subnet_of(net4):
                raise InvalidParameter(f"ip-range {spec.ip_range} is not inside subnet {net4}")
        if spec.gateway:
            gw = parse_address(spec.gateway, "gateway")
            if gw not in net4 or gw in (net4.network_address, net4.broadcast_address):
                raise InvalidParameter(f"no matching subnet for gateway {spec.gateway}: it must be a host address of {net4}")
        else:
            gw = net4.network_address + 1
        assert isinstance(gw, ipaddress.IPv4Address)
        return net4, range4, gw

    def _ipv6(self, net: Network, spec: NetworkSpec, others: Sequence[Network]) -> None:
        if not spec.enable_ipv6:
            raise InvalidParameter("an IPv6 --subnet needs --ipv6")
        if not spec.subnet6:
            raise InvalidParameter("--ipv6 needs an IPv6 --subnet (for example --subnet fd00:1::/64)")
        net6 = parse_subnet(spec.subnet6)
        for other in others:
            if other.subnet6 and net6.overlaps(ipaddress.ip_network(other.subnet6)):
                raise Conflict(
                    f"invalid pool request: Pool overlaps with other one on this address space ({other.subnet6}, network {other.name})"
                )
        refuse_reserved(net6, self.host.addresses())
        gw6 = parse_address(spec.gateway6, "gateway") if spec.gateway6 else net6.network_address + 1
        if gw6 not in net6 or gw6 == net6.network_address:
            raise InvalidParameter(f"no matching subnet for gateway {spec.gateway6}: it must be a host address of {net6}")
        net.enable_ipv6, net.subnet6, net.gateway6 = True, str(net6), str(gw6)

    def publish(self, net: Network) -> Network:
        raise NotImplementedError("bridge networks are local")

    def unpublish(self, net: Network) -> None:
        raise NotImplementedError("bridge networks are local")

    # -- the kernel side ------------------------------------------------

    def create(self, steps: Steps, net: Network) -> None:
        bridge, rules = bridge_of(net), self.firewall_rules(net)
        created = steps.run("create-bridge", lambda: self.ensure_bridge(net), lambda: self.host.delete_link(bridge) if created else None)
        steps.run("enable-forwarding", lambda: self.host.enable_forwarding(ipv6=net.enable_ipv6))
        steps.run("add-firewall", lambda: self.firewall.add_network(rules), lambda: self.firewall.del_network(rules))

    def delete(self, net: Network, teardown: Teardown) -> None:
        rules = self.firewall_rules(net)
        teardown.run("del-firewall", lambda: self.firewall.del_network(rules))
        teardown.run("delete-bridge", lambda: self.host.delete_link(bridge_of(net)))

    def restore(self, nets: Sequence[Network]) -> None:
        for net in nets:
            self.ensure_bridge(net)
        if nets:
            self.host.enable_forwarding(ipv6=any(n.enable_ipv6 for n in nets))

    def ensure_bridge(self, net: Network) -> bool:
        assert net.gateway
        v6 = (net.gateway6, int(net.subnet6.split("/")[1])) if net.subnet6 and net.gateway6 else None
        return self.host.ensure_bridge(bridge_of(net), net.gateway, net.prefixlen, net.mtu, v6, owner=f"net:{net.id}")

    def join(self, steps: Steps, net: Network, ep: Endpoint, sandbox: str) -> None:
        """The veth pair: host end on the bridge, ``ep.ifname`` in the sandbox with
        the address and route; with no sandbox, ``ep.ifname`` stays in the host
        namespace, unconfigured, for the caller to move (dockerd does)."""
        # icc=false: when bridged traffic passes netfilter (br_netfilter), the
        # network's forward chain drops container-to-container packets but
        # lets port-forwarded ones through; otherwise bridge port isolation
        # does it (packets to published ports are then routed via the host).
        isolated = not _flag(net.options, OPT_ICC) and not self.host.bridge_netfilter()
        peer = Peer(ep.ifname, ep.mac, net.mtu)
        steps.run(
            "create-veth",
            lambda: self.host.plug_veth(ep.host_ifname, bridge_of(net), sandbox, peer, ep.id, isolated=isolated),
            lambda: self.host.delete_link(ep.host_ifname),
        )
        if not sandbox:  # the runtime moves the peer into its sandbox and configures it (Docker's remote driver contract)
            return
        iface = Iface(ep.ifname, ep.address, ep.prefixlen, ep.gateway, ep.address6, ep.prefixlen6, ep.gateway6)
        steps.run("configure-sandbox", lambda: self.host.configure_sandbox(sandbox, iface))

    def leave(self, net: Network, ep: Endpoint, teardown: Teardown) -> None:
        # Deleting one end deletes the pair; off the caller's path (the kernel's RCU waits).
        teardown.run("delete-veth", lambda: self.host.retire_link(ep.host_ifname))

    def firewall_rules(self, net: Network) -> BridgeRules:
        assert net.subnet
        return BridgeRules(
            bridge_of(net),
            net.subnet,
            masquerade=_flag(net.options, OPT_MASQUERADE) and not net.internal,
            internal=net.internal,
            subnet6=net.subnet6 or "",
            icc=_flag(net.options, OPT_ICC),
        )

    def dns_records(self, net: Network) -> list[tuple[list[str], list[str]]]:
        return []

    def layout(self, net: Network) -> dict[str, Any]:
        return {"bridge": bridge_of(net)}

    def status(self) -> dict[str, Any]:
        return {}

    def dry_run(self, recorder: Recorder, networks: Networks) -> NetworkDriver:
        return BridgeDriver(recorder.host, recorder.firewall, self.resolv_conf)

    def join_cluster(self) -> None:
        pass


def bridge_of(net: Network) -> str:
    return str(net.driver_state["bridge"])
