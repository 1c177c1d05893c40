"""Networks and their endpoints (the bridge driver's logic).

A network here is a Linux bridge with a subnet; an endpoint is a veth pair
whose host end hangs on that bridge and whose other end is ``ethN`` inside a
sandbox.  The kernel and firewall work goes through the ports of
:mod:`qiao.kernel`; this module decides what to ask for and undoes it all
when a step fails.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import threading
from collections.abc import Callable
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Any

from qiao.engine import etcfiles, ids
from qiao.engine.errors import Conflict, InvalidParameter, NotFound
from qiao.engine.ipam import AddressPool, IPAddress, IPNetwork, choose_subnet, parse_address, parse_subnet
from qiao.engine.models import Endpoint, Network, from_dict, to_dict
from qiao.engine.steps import Fault, Steps
from qiao.engine.store import Store
from qiao.kernel.firewall import BridgeRules, EndpointGuard, Firewall, PortMapping
from qiao.kernel.host import Host, Iface, Peer

if TYPE_CHECKING:
    from qiao.overlay.manager import OverlayManager

DEFAULT_BRIDGE = "qiao0"
OPT_BRIDGE_NAME = "com.docker.network.bridge.name"
OPT_MTU = "com.docker.network.driver.mtu"
KNOWN_OPTIONS = (
    OPT_BRIDGE_NAME,
    OPT_MTU,
    "com.docker.network.bridge.default_bridge",
    "com.docker.network.bridge.enable_icc",
    "com.docker.network.bridge.enable_ip_masquerade",
    "com.docker.network.bridge.host_binding_ipv4",
)


def _guard(ep: Endpoint) -> EndpointGuard:
    return EndpointGuard(ep.host_ifname, tuple(a for a in (ep.address, ep.address6) if a))


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


class Networks:
    def __init__(self, store: Store, host: Host, firewall: Firewall, lock: threading.RLock, fault: Fault | None = None):
        self.store, self.host, self.firewall, self.lock, self.fault = store, host, firewall, lock, fault
        self.by_id: dict[str, Network] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.pools: dict[str, AddressPool] = {}
        self.pools6: dict[str, AddressPool] = {}
        self.by_network: dict[str, dict[str, Endpoint]] = {}  # network id -> endpoint id -> endpoint
        self.on_change: Callable[[set[str]], None] = lambda network_ids: None  # the engine refreshes DNS
        self.resolv_conf = etcfiles.default_resolv_conf()
        self.overlay: OverlayManager | None = None  # set when qiaod has a cluster store  # the host's resolvers (qiaod --resolv-conf)

    # -- start-up --------------------------------------------------------

    def load(self) -> None:
        for row in self.store.load("networks"):
            net = from_dict(Network, row)
            self.by_id[net.id] = net
            self._add_pools(net)
        for row in self.store.load("endpoints"):
            ep = from_dict(Endpoint, row)
            self.adopt(ep)
            self.pools[ep.network_id].reserve(ipaddress.ip_address(ep.address))
            if ep.address6:
                self.pools6[ep.network_id].reserve(ipaddress.ip_address(ep.address6))

    def ensure_builtin(self) -> None:
        """Create ``bridge`` (on qiao0), ``host`` and ``none`` on first use."""
        have = {n.name for n in self.by_id.values()}
        if "bridge" not in have:
            self.create(
                "bridge",
                options={
                    OPT_BRIDGE_NAME: DEFAULT_BRIDGE,
                    "com.docker.network.bridge.default_bridge": "true",
                    "com.docker.network.bridge.enable_icc": "true",
                    "com.docker.network.bridge.enable_ip_masquerade": "true",
                    "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
                    OPT_MTU: "1500",
                },
            )
        for name, driver in (("host", "host"), ("none", "null")):
            if name not in have:
                net = Network(ids.new_id(), name, driver, now())
                with self.store.transaction() as tx:
                    tx.put("networks", to_dict(net))
                self.by_id[net.id] = net

    def restore_kernel(self, mappings: list[PortMapping]) -> None:
        """Re-assert every bridge and the whole firewall table from intent."""
        bridges = [n for n in self.by_id.values() if n.driver in ("bridge", "overlay")]
        for net in bridges:
            self._ensure_bridge(net)
        if bridges:
            self.host.enable_forwarding(ipv6=any(n.enable_ipv6 for n in bridges))
        self.firewall.reset([self._rules(n) for n in bridges], mappings, [_guard(ep) for ep in self.endpoints.values()])

    # -- lookup ----------------------------------------------------------

    def get(self, ref: str) -> Network:
        """By full id, name, or unique id prefix (Docker's order)."""
        if ref in self.by_id:
            return self.by_id[ref]
        for net in self.by_id.values():
            if net.name == ref:
                return net
        matches = [n for n in self.by_id.values() if n.id.startswith(ref)] if ref else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise NotFound(f"network {ref} is ambiguous ({len(matches)} matches found based on ID prefix)")
        raise NotFound(f"network {ref} not found")

    def endpoints_of(self, network_id: str) -> list[Endpoint]:
        return list(self.by_network.get(network_id, {}).values())

    # -- create / remove -------------------------------------------------

    def create(
        self,
        name: str,
        driver: str = "bridge",
        subnet: str | None = None,
        gateway: str | None = None,
        ip_range: str | None = None,
        options: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        internal: bool = False,
        attachable: bool = False,
        enable_ipv6: bool = False,
        subnet6: str | None = None,
        gateway6: str | None = None,
    ) -> Network:
        if driver == "overlay":
            if self.overlay is None:
                raise InvalidParameter("overlay networks need a cluster store: start qiaod with --cluster-store etcd://HOST:2379")
            with self.lock:
                if any(n.name == name for n in self.by_id.values()):
                    raise Conflict(f"network with name {name} already exists")
                if not name or not ids.NAME_RE.match(name):
                    raise InvalidParameter(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
            return self.overlay.create_network(name, subnet, options or {}, labels or {})
        with self.lock:
            net = self._validate(name, driver, subnet, gateway, ip_range, options or {}, labels or {}, internal, attachable)
            if enable_ipv6 or subnet6:
                self._validate_v6(net, enable_ipv6, subnet6, gateway6)
            rules = self._rules(net)
            assert net.bridge
            bridge = net.bridge
            with Steps(self.fault) as steps:
                created = steps.run(
                    "create-bridge",
                    lambda: self._ensure_bridge(net),
                    lambda: self.host.delete_link(bridge) if created else None,
                )
                steps.run("enable-forwarding", lambda: self.host.enable_forwarding(ipv6=net.enable_ipv6))
                steps.run("add-firewall", lambda: self.firewall.add_network(rules), lambda: self.firewall.del_network(rules))

                def commit() -> None:
                    with self.store.transaction() as tx:
                        tx.put("networks", to_dict(net))

                steps.run("store", commit)
            self.by_id[net.id] = net
            self._add_pools(net)
            self.on_change({net.id})
            return net

    def _validate_v6(self, net: Network, enable_ipv6: bool, subnet6: str | None, gateway6: str | None) -> None:
        if not enable_ipv6:
            raise InvalidParameter("an IPv6 --subnet needs --ipv6")
        if not subnet6:
            raise InvalidParameter("--ipv6 needs an IPv6 --subnet (for example --subnet fd00:1::/64)")
        net6 = parse_subnet(subnet6)
        for other in self.by_id.values():
            if other.subnet6 and net6.overlaps(ipaddress.ip_network(other.subnet6)):
                raise Conflict(
                    f"invalid pool request: Pool overlaps with other one on this address space ({other.subnet6}, network {other.name})"
                )
        gw6 = parse_address(gateway6, "gateway") if gateway6 else net6.network_address + 1
        if gw6 not in net6 or gw6 == net6.network_address:
            raise InvalidParameter(f"no matching subnet for gateway {gateway6}: it must be a host address of {net6}")
        net.enable_ipv6, net.subnet6, net.gateway6 = True, str(net6), str(gw6)

    def _validate(
        self,
        name: str,
        driver: str,
        subnet: str | None,
        gateway: str | None,
        ip_range: str | None,
        options: dict[str, str],
        labels: dict[str, str],
        internal: bool,
        attachable: bool,
    ) -> Network:
        if not name:
            raise InvalidParameter("a network name is required")
        if not ids.NAME_RE.match(name):
            raise InvalidParameter(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if any(n.name == name for n in self.by_id.values()):
            raise Conflict(f"network with name {name} already exists")
        if driver != "bridge":
            raise InvalidParameter(f'plugin "{driver}" not found')
        for key in options:
            if key.startswith("com.docker.network.") and key not in KNOWN_OPTIONS:
                raise InvalidParameter(f"unsupported option {key}")
        net_id = ids.new_id()
        bridge = options.get(OPT_BRIDGE_NAME) or "br-" + net_id[:12]
        if not ids.valid_ifname(bridge):
            raise InvalidParameter(f"invalid bridge name {bridge!r}: an interface name is 1-15 characters of A-Z a-z 0-9 _ . -")
        if any(n.bridge == bridge for n in self.by_id.values()):
            raise Conflict(f"bridge name {bridge} is already used by another network")
        if self.host.link_kind(bridge) not in (None, "bridge"):  # e.g. lo or a NIC: never give it our address
            raise Conflict(f"existing interface {bridge} is not a bridge")
        try:
            mtu = int(options.get(OPT_MTU, "1500"))
        except ValueError:
            raise InvalidParameter(f"invalid MTU {options[OPT_MTU]!r}") from None
        if not 68 <= mtu <= 65535:
            raise InvalidParameter(f"invalid MTU {mtu}: must be between 68 and 65535")

        taken = [ipaddress.IPv4Network(n.subnet) for n in self.by_id.values() if n.subnet]
        if subnet:
            net4 = parse_subnet(subnet)
            if not isinstance(net4, IPv4Network):
                raise InvalidParameter(f"invalid subnet {subnet}: the first subnet must be IPv4 (add an IPv6 one with --ipv6)")
            for other in self.by_id.values():
                if other.subnet and net4.overlaps(ipaddress.ip_network(other.subnet)):
                    raise Conflict(
                        f"invalid pool request: Pool overlaps with other one on this address space ({other.subnet}, network {other.name})"
                    )
        else:
            if gateway or ip_range:
                raise InvalidParameter("--gateway and --ip-range need a --subnet")
            reserved = taken + self.host.reserved_networks()
            for ns in etcfiles.host_nameservers(self.resolv_conf):
                with contextlib.suppress(ValueError):
                    reserved.append(ipaddress.IPv4Network(ns))
            net4 = choose_subnet(reserved)
        range4: IPNetwork | None = None
        if ip_range:
            range4 = parse_subnet(ip_range)
            if not isinstance(range4, IPv4Network) or not range4.subnet_of(net4):
                raise InvalidParameter(f"ip-range {ip_range} is not inside subnet {net4}")
        if gateway:
            gw = parse_address(gateway, "gateway")
            if gw not in net4 or gw in (net4.network_address, net4.broadcast_address):
                raise InvalidParameter(f"no matching subnet for gateway {gateway}: it must be a host address of {net4}")
        else:
            gw = net4.network_address + 1
        return Network(
            id=net_id,
            name=name,
            driver="bridge",
            created=now(),
            subnet=str(net4),
            gateway=str(gw),
            ip_range=str(range4) if range4 else None,
            bridge=bridge,
            mtu=mtu,
            options=dict(options),
            labels=dict(labels),
            internal=internal,
            attachable=attachable,
        )

    def remove(self, ref: str) -> None:
        with self.lock:
            net = self.get(ref)
            if net.builtin:
                raise Conflict(f"{net.name} is a pre-defined network and cannot be removed")
            if self.endpoints_of(net.id):
                raise Conflict(f"error while removing network: network {net.name} id {net.id} has active endpoints")
            if net.driver != "overlay":
                self.drop(net)
                return
        if self.overlay is None:
            raise InvalidParameter(f"network {net.name} is an overlay: removing it needs the cluster store (qiaod --cluster-store)")
        self.overlay.remove_network(net)  # cluster-wide; every host drops it when it sees the change

    # -- overlay networks (driven by overlay.manager) --------------------

    def ensure_overlay(self, name: str, cfg: dict[str, Any], subnet: str, public_ip: str, underlay: str, mtu: int) -> Network:
        """This host's side of an overlay network: a bridge holding our
        containers with the lease's first address, and the VXLAN device.
        Idempotent: called on every sync."""
        from qiao.overlay.manager import VXLAN_PORT, vtep_mac

        net = self.by_id.get(cfg["Id"])
        if net is not None and net.subnet != subnet and not self.endpoints_of(net.id):
            self.drop(net)  # our lease changed and nothing uses the old one: renumber
            net = None
        vni = cfg["Backend"]["VNI"]
        lease = ipaddress.IPv4Network(subnet)
        if net is None:
            net = Network(
                id=cfg["Id"],
                name=name,
                driver="overlay",
                created=now(),
                subnet=subnet,
                gateway=str(lease.network_address + 1),
                bridge="br-" + cfg["Id"][:12],
                mtu=mtu,
                options=dict(cfg.get("Options") or {}),
                labels=dict(cfg.get("Labels") or {}),
                attachable=True,
                cluster_subnet=cfg["Network"],
                vni=vni,
                vxlan=f"qv{vni}",
            )
        self._ensure_bridge(net)
        self.host.ensure_vxlan(
            net.vxlan,
            vni,
            public_ip,
            cfg["Backend"].get("Port", VXLAN_PORT),
            mtu,
            vtep_mac(public_ip, vni),
            underlay,
            str(lease.network_address),
        )
        if net.id not in self.by_id:
            self.host.enable_forwarding()
            self.firewall.add_network(self._rules(net))
            with self.store.transaction() as tx:
                tx.put("networks", to_dict(net))
            self.by_id[net.id] = net
            self._add_pools(net)
            self.on_change({net.id})
        return net

    def drop(self, net: Network) -> None:
        """This host's side of a network: firewall, record, bridge (and an overlay's VXLAN device)."""
        rules = self._rules(net)
        with Steps(self.fault) as steps:
            steps.run("del-firewall", lambda: self.firewall.del_network(rules), lambda: self.firewall.add_network(rules))

            def commit() -> None:
                with self.store.transaction() as tx:
                    tx.delete("networks", net.id)

            steps.run("store", commit)
        assert net.bridge
        self.host.delete_link(net.bridge)  # after the store: a leftover bridge is harmless, a dangling record is not
        if net.vxlan:
            self.host.delete_link(net.vxlan)
        del self.by_id[net.id]
        self.pools.pop(net.id, None)
        self.pools6.pop(net.id, None)
        self.by_network.pop(net.id, None)
        self.on_change({net.id})

    def prune(self) -> list[str]:
        removed = []
        with self.lock:
            for net in list(self.by_id.values()):
                # Overlays are cluster-wide: `network rm` removes them on every host.
                if not net.builtin and net.driver != "overlay" and not self.endpoints_of(net.id):
                    self.drop(net)
                    removed.append(net.name)
        return removed

    # -- endpoints -------------------------------------------------------

    def join(
        self,
        steps: Steps,
        net: Network,
        container_id: str,
        sandbox: str,
        ifname: str,
        default_route: bool = True,
        ip: str = "",
        ip6: str = "",
        mac: str = "",
        aliases: list[str] | None = None,
    ) -> Endpoint:
        """Plug a new endpoint of ``net`` into the sandbox at ``sandbox``; every
        step registers its undo on ``steps``.  The caller stores the endpoint."""
        address = self._take(steps, "allocate-address", self.pools[net.id], ip, "IPv4 address")
        address6 = None
        if net.enable_ipv6:
            address6 = self._take(steps, "allocate-address6", self.pools6[net.id], ip6, "IPv6 address")
        elif ip6:
            raise InvalidParameter(f"network {net.name} has no IPv6 subnet: --ip6 cannot be used")
        assert net.bridge and net.gateway
        ep = Endpoint(
            id=ids.new_id(),
            network_id=net.id,
            container_id=container_id,
            ifname=ifname,
            host_ifname=ids.veth_name(),
            address=str(address),
            prefixlen=net.prefixlen,
            gateway=net.gateway if default_route and not net.internal else "",
            mac=mac or ids.mac_from_ipv4(str(address)),
            aliases=list(aliases or []),
            address6=str(address6) if address6 else "",
            prefixlen6=int(net.subnet6.split("/")[1]) if net.subnet6 else 0,
            gateway6=net.gateway6 if address6 and default_route and not net.internal and net.gateway6 else "",
        )
        # icc=false: when bridged traffic passes netfilter (br_netfilter), the
        # network's forward chain drops container-to-container packets but
        # lets port-forwarded ones through; otherwise bridge port isolation
        # does it (packets to published ports are then routed via the host).
        isolated = not net.icc and not self.host.bridge_netfilter()
        peer = Peer(ifname, ep.mac, net.mtu)
        steps.run(
            "create-veth",
            lambda: self.host.plug_veth(ep.host_ifname, net.bridge or "", sandbox, peer, ep.id, isolated=isolated),
            lambda: self.host.delete_link(ep.host_ifname),
        )
        guard = [_guard(ep)]  # anti-spoofing: the port sends from the endpoint's own addresses only
        steps.run("add-guards", lambda: self.firewall.add_guards(guard), lambda: self.firewall.del_guards(guard))
        iface = Iface(ifname, ep.address, ep.prefixlen, ep.gateway, ep.address6, ep.prefixlen6, ep.gateway6)
        steps.run("configure-sandbox", lambda: self.host.configure_sandbox(sandbox, iface))
        return ep

    @staticmethod
    def _take(steps: Steps, step: str, pool: AddressPool, static: str, what: str) -> IPAddress:
        """A static address (reserved) or the lowest free one, undone on failure."""
        if static:
            address = parse_address(static, what)
            steps.run(step, lambda: pool.reserve(address), lambda: pool.release(address))
            return address
        taken: IPAddress = steps.run(step, pool.allocate, lambda: pool.release(taken))
        return taken

    def adopt(self, ep: Endpoint) -> None:
        self.endpoints[ep.id] = ep
        self.by_network.setdefault(ep.network_id, {})[ep.id] = ep

    def leave(self, ep: Endpoint) -> None:
        """Best effort: remove the veth (off the caller's path) and return the addresses."""
        self.host.retire_link(ep.host_ifname)
        self.firewall.del_guards([_guard(ep)])  # never raises
        self.endpoints.pop(ep.id, None)
        self.by_network.get(ep.network_id, {}).pop(ep.id, None)
        if ep.network_id in self.pools:
            self.pools[ep.network_id].release(ipaddress.ip_address(ep.address))
        if ep.address6 and ep.network_id in self.pools6:
            self.pools6[ep.network_id].release(ipaddress.ip_address(ep.address6))

    # -- helpers ---------------------------------------------------------

    def _add_pools(self, net: Network) -> None:
        if net.subnet and net.gateway:
            self.pools[net.id] = AddressPool(
                ipaddress.ip_network(net.subnet),
                ipaddress.ip_address(net.gateway),
                ipaddress.ip_network(net.ip_range) if net.ip_range else None,
            )
        if net.subnet6 and net.gateway6:
            self.pools6[net.id] = AddressPool(ipaddress.ip_network(net.subnet6), ipaddress.ip_address(net.gateway6))

    def _ensure_bridge(self, net: Network) -> bool:
        assert net.bridge and net.gateway
        v6 = (net.gateway6, int(net.subnet6.split("/")[1])) if net.subnet6 and net.gateway6 else None
        return self.host.ensure_bridge(net.bridge, net.gateway, net.prefixlen, net.mtu, v6, owner=f"net:{net.id}")

    @staticmethod
    def _rules(net: Network) -> BridgeRules:
        assert net.bridge and net.subnet
        masq = net.options.get("com.docker.network.bridge.enable_ip_masquerade", "true") == "true" and not net.internal
        return BridgeRules(
            net.bridge,
            net.subnet,
            masquerade=masq,
            internal=net.internal,
            subnet6=net.subnet6 or "",
            icc=net.icc,
            peer_dev=net.vxlan,
            cluster=net.cluster_subnet or "",
        )

    def describe(self, net: Network, containers: dict[str, Any]) -> dict[str, Any]:
        from qiao.engine import schema

        return schema.network(net, self.endpoints_of(net.id), containers)
