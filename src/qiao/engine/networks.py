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
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from qiao.engine import etcfiles, ids
from qiao.engine.errors import Conflict, InvalidParameter, NotFound
from qiao.engine.ipam import AddressPool, choose_subnet, parse_address, parse_subnet
from qiao.engine.models import Endpoint, Network, from_dict, to_dict
from qiao.engine.steps import Fault, Steps
from qiao.engine.store import Store
from qiao.kernel.firewall import BridgeRules, Firewall, PortMapping
from qiao.kernel.host import Host

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


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


class Networks:
    def __init__(self, store: Store, host: Host, firewall: Firewall, lock: threading.RLock, fault: Fault | None = None):
        self.store, self.host, self.firewall, self.lock, self.fault = store, host, firewall, lock, fault
        self.by_id: dict[str, Network] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.pools: dict[str, AddressPool] = {}

    # -- start-up --------------------------------------------------------

    def load(self) -> None:
        for row in self.store.load("networks"):
            net = from_dict(Network, row)
            self.by_id[net.id] = net
            if net.subnet:
                self.pools[net.id] = self._pool(net)
        for row in self.store.load("endpoints"):
            ep = from_dict(Endpoint, row)
            self.endpoints[ep.id] = ep
            self.pools[ep.network_id].reserve(IPv4Address(ep.address))

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
        bridges = [n for n in self.by_id.values() if n.driver == "bridge"]
        for net in bridges:
            assert net.bridge and net.gateway
            self.host.ensure_bridge(net.bridge, net.gateway, net.prefixlen, net.mtu)
        if bridges:
            self.host.enable_forwarding()
        self.firewall.reset([self._rules(n) for n in bridges], mappings)

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
        return [e for e in self.endpoints.values() if e.network_id == network_id]

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
    ) -> Network:
        with self.lock:
            net = self._validate(name, driver, subnet, gateway, ip_range, options or {}, labels or {}, internal, attachable)
            rules = self._rules(net)
            assert net.bridge and net.gateway
            bridge, gateway = net.bridge, net.gateway
            with Steps(self.fault) as steps:
                created = steps.run(
                    "create-bridge",
                    lambda: self.host.ensure_bridge(bridge, gateway, net.prefixlen, net.mtu),
                    lambda: self.host.delete_link(bridge) if created else None,
                )
                steps.run("enable-forwarding", self.host.enable_forwarding)
                steps.run("add-firewall", lambda: self.firewall.add_network(rules), lambda: self.firewall.del_network(rules))

                def commit() -> None:
                    with self.store.transaction() as tx:
                        tx.put("networks", to_dict(net))

                steps.run("store", commit)
            self.by_id[net.id] = net
            self.pools[net.id] = self._pool(net)
            return net

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
            for other in self.by_id.values():
                if other.subnet and net4.overlaps(ipaddress.ip_network(other.subnet)):
                    raise Conflict(
                        f"invalid pool request: Pool overlaps with other one on this address space ({other.subnet}, network {other.name})"
                    )
        else:
            if gateway or ip_range:
                raise InvalidParameter("--gateway and --ip-range need a --subnet")
            reserved = taken + self.host.reserved_networks()
            for ns in etcfiles.host_nameservers():
                with contextlib.suppress(ValueError):
                    reserved.append(ipaddress.IPv4Network(ns))
            net4 = choose_subnet(reserved)
        range4: IPv4Network | None = None
        if ip_range:
            range4 = parse_subnet(ip_range)
            if not range4.subnet_of(net4):
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
            self._delete(net)

    def _delete(self, net: Network) -> None:
        rules = self._rules(net)
        with Steps(self.fault) as steps:
            steps.run("del-firewall", lambda: self.firewall.del_network(rules), lambda: self.firewall.add_network(rules))

            def commit() -> None:
                with self.store.transaction() as tx:
                    tx.delete("networks", net.id)

            steps.run("store", commit)
        assert net.bridge
        self.host.delete_link(net.bridge)  # after the store: a leftover bridge is harmless, a dangling record is not
        del self.by_id[net.id]
        self.pools.pop(net.id, None)

    def prune(self) -> list[str]:
        removed = []
        with self.lock:
            for net in list(self.by_id.values()):
                if not net.builtin and not self.endpoints_of(net.id):
                    self._delete(net)
                    removed.append(net.name)
        return removed

    # -- endpoints -------------------------------------------------------

    def join(self, steps: Steps, net: Network, container_id: str, sandbox: str, ifname: str) -> Endpoint:
        """Plug a new endpoint of ``net`` into the sandbox at ``sandbox``; every
        step registers its undo on ``steps``.  The caller stores the endpoint."""
        pool = self.pools[net.id]
        address = steps.run("allocate-address", pool.allocate, lambda: pool.release(address))
        assert net.bridge and net.gateway
        ep = Endpoint(
            id=ids.new_id(),
            network_id=net.id,
            container_id=container_id,
            ifname=ifname,
            host_ifname=ids.veth_name(),
            address=str(address),
            prefixlen=net.prefixlen,
            gateway=net.gateway,
            mac=ids.mac_from_ipv4(str(address)),
        )
        steps.run(
            "create-veth",
            lambda: self.host.create_veth(ep.host_ifname, sandbox, ifname, ep.mac, net.mtu, ep.id),
            lambda: self.host.delete_link(ep.host_ifname),
        )
        steps.run("attach-bridge", lambda: self.host.attach_to_bridge(ep.host_ifname, net.bridge or ""))
        steps.run("configure-sandbox", lambda: self.host.configure_sandbox(sandbox, ifname, ep.address, ep.prefixlen, ep.gateway))
        return ep

    def adopt(self, ep: Endpoint) -> None:
        self.endpoints[ep.id] = ep

    def leave(self, ep: Endpoint) -> None:
        """Best effort: remove the veth and return the address."""
        self.host.delete_link(ep.host_ifname)
        self.endpoints.pop(ep.id, None)
        pool = self.pools.get(ep.network_id)
        if pool:
            pool.release(IPv4Address(ep.address))

    # -- helpers ---------------------------------------------------------

    @staticmethod
    def _pool(net: Network) -> AddressPool:
        assert net.subnet and net.gateway
        return AddressPool(
            ipaddress.IPv4Network(net.subnet),
            IPv4Address(net.gateway),
            ipaddress.IPv4Network(net.ip_range) if net.ip_range else None,
        )

    @staticmethod
    def _rules(net: Network) -> BridgeRules:
        assert net.bridge and net.subnet
        masq = net.options.get("com.docker.network.bridge.enable_ip_masquerade", "true") == "true" and not net.internal
        return BridgeRules(net.bridge, net.subnet, masquerade=masq)

    def describe(self, net: Network, containers: dict[str, Any]) -> dict[str, Any]:
        from qiao.engine import schema

        return schema.network(net, self.endpoints_of(net.id), containers)
