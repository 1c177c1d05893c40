"""The network registry: networks, their address pools, and endpoints.

What a network *is* in the kernel is its driver's business
(:mod:`qiao.drivers`); this module keeps the records, hands out addresses
(IPAM), and runs the drivers' steps all-or-nothing.  An endpoint joins any
sandbox (a network namespace path) for any owner: qiao's containers are one
caller, a CNI runtime or dockerd will be others.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Callable, Iterable, Sequence

from qiao.drivers import Drivers, NetworkDriver
from qiao.drivers.bridge import DEFAULT_OPTIONS
from qiao.engine import ids
from qiao.engine.errors import Conflict, InvalidParameter, NotFound
from qiao.engine.events import Event, Events
from qiao.engine.ipam import AddressPool, IPAddress, parse_address
from qiao.engine.models import Endpoint, Network, from_dict, now, to_dict
from qiao.engine.specs import EndpointSpec, NetworkSpec
from qiao.engine.steps import Fault, Steps, Teardown
from qiao.engine.store import Store
from qiao.kernel.firewall import BridgeRules, EndpointGuard, Firewall, PortMapping

NO_SETTINGS = EndpointSpec()
PREDEFINED = (("host", "host"), ("none", "null"))  # (name, driver), besides "bridge"


class Networks:
    def __init__(
        self, store: Store, drivers: Drivers, firewall: Firewall, lock: threading.RLock, events: Events, fault: Fault | None = None
    ):
        self.store, self.drivers, self.firewall, self.lock, self.events, self.fault = store, drivers, firewall, lock, events, fault
        self.by_id: dict[str, Network] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.pools: dict[str, AddressPool] = {}
        self.pools6: dict[str, AddressPool] = {}
        self.by_network: dict[str, dict[str, Endpoint]] = {}  # network id -> endpoint id -> endpoint
        self.link_notes: dict[str, str] = {}  # endpoint id -> what happened to its link behind our back
        # Addresses a remote IPAM request handed out (dockerd's RequestAddress) that no endpoint uses yet:
        # network id -> addresses; the endpoint created with one takes it over.
        self.held: dict[str, set[str]] = {}

    def driver(self, net: Network) -> NetworkDriver:
        return self.drivers.get(net.driver)

    # -- start-up --------------------------------------------------------

    def load(self) -> None:
        for row in self.store.load("networks"):
            net = from_dict(Network, row)
            self.by_id[net.id] = net
            self._add_pools(net)
        for row in self.store.load("endpoints"):
            ep = from_dict(Endpoint, row)
            self._index(ep)
            self.pools[ep.network_id].reserve(ipaddress.ip_address(ep.address))
            if ep.address6:
                self.pools6[ep.network_id].reserve(ipaddress.ip_address(ep.address6))

    def ensure_builtin(self) -> None:
        """Create ``bridge`` (on qiao0), ``host`` and ``none`` on first use."""
        have = {n.name for n in self.by_id.values()}
        if "bridge" not in have:
            self.create(NetworkSpec("bridge", options=dict(DEFAULT_OPTIONS)))
        for name, driver in PREDEFINED:
            if name not in have:
                net = Network(ids.new_id(), name, driver, now())
                with self.store.transaction() as tx:
                    tx.put("networks", to_dict(net))
                self.by_id[net.id] = net

    def restore_kernel(self, mappings: list[PortMapping]) -> None:
        """Re-assert every network's kernel side and the whole firewall table from intent."""
        for driver in self.drivers:
            driver.restore(self.of_driver(driver.name))
        self.firewall.reset(self.firewall_rules(), mappings, [_guard(ep) for ep in self.endpoints.values() if ep.host_ifname])

    def firewall_rules(self) -> list[BridgeRules]:
        return [r for n in self.by_id.values() if (r := self.driver(n).firewall_rules(n)) is not None]

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

    def named(self, name: str) -> Network | None:
        """By exact name only (front doors that name a network in a file, not a user typing an id prefix)."""
        with self.lock:
            return next((n for n in self.by_id.values() if n.name == name), None)

    def endpoints_of(self, network_id: str) -> list[Endpoint]:
        with self.lock:
            return list(self.by_network.get(network_id, {}).values())

    def of_driver(self, driver: str) -> list[Network]:
        with self.lock:
            return [n for n in self.by_id.values() if n.driver == driver]

    # -- create / remove -------------------------------------------------

    def create(self, spec: NetworkSpec) -> Network:
        """Validate everything (the driver's ``validate`` is pure), then apply, all or nothing."""
        driver = self.drivers.get(spec.driver)
        with self.lock:
            self._check_name(spec.name)
            net = driver.validate(spec, list(self.by_id.values()))
            if net.scope == "local":
                return self._create_local(driver, net)
        return driver.publish(net)  # cluster-wide first (no engine lock: etcd may be slow); it calls ensure()

    def _check_name(self, name: str) -> None:
        if not name:
            raise InvalidParameter("a network name is required")
        if not ids.NAME_RE.match(name):
            raise InvalidParameter(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if any(n.name == name for n in self.by_id.values()):
            raise Conflict(f"network with name {name} already exists")

    def _create_local(self, driver: NetworkDriver, net: Network) -> Network:
        with Steps(self.fault) as steps:
            driver.create(steps, net)

            def commit() -> None:
                with self.store.transaction() as tx:
                    tx.put("networks", to_dict(net))

            steps.run("store", commit)
        self.by_id[net.id] = net
        self._add_pools(net)
        self.events.publish(Event("network", "create", net))
        return net

    def ensure(self, net: Network) -> Network:
        """This host's side of a global network (a driver's control loop calls
        it on every change it sees): created when missing, renumbered when this
        host's share changed and nothing uses the old one.  Idempotent."""
        with self.lock:
            have = self.by_id.get(net.id)
            if have is not None and have.subnet != net.subnet and not self.by_network.get(have.id):
                self.drop(have)
                have = None
            if have is not None:
                return have
            return self._create_local(self.driver(net), net)

    def remove(self, ref: str) -> None:
        with self.lock:
            net = self.get(ref)
            if net.builtin:
                raise Conflict(f"{net.name} is a pre-defined network and cannot be removed")
            if self.by_network.get(net.id):
                raise Conflict(f"error while removing network: network {net.name} id {net.id} has active endpoints")
            if net.scope == "local":
                self.drop(net)
                return
        self.driver(net).unpublish(net)  # cluster-wide; every host drops its side when it sees that

    def drop(self, net: Network) -> None:
        """This host's side of a network, best effort and complete: the kernel
        side is asked to go (what fails is logged), the record always goes."""
        with self.lock:
            teardown = Teardown(f"removing network {net.name}", self.fault)
            self.driver(net).delete(net, teardown)
            with self.store.transaction() as tx:
                tx.delete("networks", net.id)
            self.by_id.pop(net.id, None)
            self.pools.pop(net.id, None)
            self.pools6.pop(net.id, None)
            self.by_network.pop(net.id, None)
            teardown.report()
            self.events.publish(Event("network", "delete", net))

    def prune(self, keep: Callable[[Network], bool] = lambda net: False) -> list[str]:
        """Remove the unused local networks but those ``keep`` (the caller's
        filters and whatever else refers to a network) says to keep."""
        removed = []
        with self.lock:
            for net in list(self.by_id.values()):
                # Global networks are the cluster's: `network rm` removes them on every host.
                if not net.builtin and net.scope == "local" and not self.by_network.get(net.id) and not keep(net):
                    self.drop(net)
                    removed.append(net.name)
        return removed

    def names_changed(self, network_id: str) -> None:
        """A driver saw other hosts' names change (the DNS zone follows)."""
        with self.lock:
            net = self.by_id.get(network_id)
            if net is not None:
                self.events.publish(Event("names", "update", net))

    # -- endpoints -------------------------------------------------------

    def check_endpoint(self, net: Network, spec: EndpointSpec) -> None:
        """Validate one network's endpoint settings before anything is made (Docker's EndpointsConfig)."""
        if not self.driver(net).endpoints:
            raise InvalidParameter(f"container cannot be connected to network {net.name} (driver {net.driver}) and to other networks")
        if (spec.aliases or spec.ip or spec.ip6) and not net.user_defined:
            raise InvalidParameter("network-scoped aliases and user-specified IP addresses are supported only on user-defined networks")
        for alias in spec.aliases:
            if not ids.DNS_NAME_RE.match(alias):
                raise InvalidParameter(
                    f"invalid alias {alias!r}: not a DNS name (letters, digits and '-', labels of 1-63, separated by '.')"
                )
        for text, subnet, what in ((spec.ip, net.subnet, "IPv4 address"), (spec.ip6, net.subnet6, "IPv6 address")):
            if text:
                address = parse_address(text, what)
                if not subnet or address not in ipaddress.ip_network(subnet):
                    raise InvalidParameter(f"invalid {what} {text}: not in the subnet of network {net.name} ({subnet or 'none'})")
                pool = (self.pools if address.version == 4 else self.pools6).get(net.id)
                if pool is not None and address in pool.fixed():
                    raise InvalidParameter(f"invalid {what} {text}: the network's own address (subnet, broadcast or gateway)")
        if spec.mac:
            ids.check_mac(spec.mac)

    def join(
        self,
        steps: Steps,
        net: Network,
        sandbox: str,
        ifname: str,
        owner: str,
        spec: EndpointSpec = NO_SETTINGS,
        default_route: bool = True,
        dns_names: Sequence[str] = (),
    ) -> Endpoint:
        """A new endpoint of ``net`` in the sandbox at ``sandbox`` (any network
        namespace path); every step registers its undo on ``steps``.  The
        caller stores the endpoint and then calls :meth:`adopt`."""
        if not self.driver(net).endpoints:
            raise InvalidParameter(f"network {net.name} (driver {net.driver}) gives no interface to join")
        if spec.ip6 and not net.enable_ipv6:
            raise InvalidParameter(f"network {net.name} has no IPv6 subnet: --ip6 cannot be used")
        address = self._take(steps, "allocate-address", net.id, self.pools[net.id], spec.ip, "IPv4 address")
        address6 = None
        if net.enable_ipv6:
            address6 = self._take(steps, "allocate-address6", net.id, self.pools6[net.id], spec.ip6, "IPv6 address")
        assert net.gateway
        route = default_route and not net.internal
        ep = Endpoint(
            id=ids.new_id(),
            network_id=net.id,
            owner=owner,
            ifname=ifname,
            host_ifname=ids.veth_name(),
            address=str(address),
            prefixlen=net.prefixlen,
            gateway=net.gateway if route else "",
            mac=spec.mac.lower() or ids.mac_from_ipv4(str(address)),
            aliases=list(spec.aliases),
            address6=str(address6) if address6 else "",
            prefixlen6=int(net.subnet6.split("/")[1]) if net.subnet6 else 0,
            gateway6=net.gateway6 if address6 and route and net.gateway6 else "",
            sandbox=sandbox,
            dns_names=list(dns_names),
        )
        guard = [_guard(ep)]  # anti-spoofing: the port sends from the endpoint's own addresses only, from its first packet on
        steps.run("add-guards", lambda: self.firewall.add_guards(guard), lambda: self.firewall.del_guards(guard))
        self.driver(net).join(steps, net, ep, sandbox)
        return ep

    def _take(self, steps: Steps, step: str, net_id: str, pool: AddressPool, static: str, what: str) -> IPAddress:
        """A static address (reserved, or taken over from a remote IPAM's hold) or the lowest free one, undone on failure."""
        if static:
            address = parse_address(static, what)
            held = self.held.get(net_id, set())
            if str(address) in held:
                steps.run(step, lambda: held.discard(str(address)), lambda: held.add(str(address)))
            else:
                steps.run(step, lambda: pool.reserve(address), lambda: pool.release(address))
            return address
        taken: IPAddress = steps.run(step, pool.allocate, lambda: pool.release(taken))
        return taken

    def adopt(self, ep: Endpoint) -> None:
        """Index a stored endpoint (new, or changed in place) and tell the listeners."""
        self._index(ep)
        net = self.by_id.get(ep.network_id)
        if net is not None:
            self.events.publish(Event("endpoint", "join", net, ep))

    def _index(self, ep: Endpoint) -> None:
        self.endpoints[ep.id] = ep
        self.by_network.setdefault(ep.network_id, {})[ep.id] = ep

    def leave(self, ep: Endpoint, teardown: Teardown) -> None:
        """Best effort: the driver's kernel side (errors go to ``teardown``);
        memory and addresses always.  The caller deletes the stored row."""
        net = self.by_id.get(ep.network_id)
        if net is not None:
            self.driver(net).leave(net, ep, teardown)
        teardown.run("del-guards", lambda: self.firewall.del_guards([_guard(ep)]))
        self.endpoints.pop(ep.id, None)
        self.link_notes.pop(ep.id, None)
        self.by_network.get(ep.network_id, {}).pop(ep.id, None)
        if ep.network_id in self.pools:
            self.pools[ep.network_id].release(ipaddress.ip_address(ep.address))
        if ep.address6 and ep.network_id in self.pools6:
            self.pools6[ep.network_id].release(ipaddress.ip_address(ep.address6))
        if net is not None:
            self.events.publish(Event("endpoint", "leave", net, ep))

    # -- a remote IPAM (dockerd's RequestAddress / ReleaseAddress) ------------

    def hold(self, net: Network, address: str = "") -> str:
        """Take ``address`` (or the lowest free one) from the network's pool for an endpoint to come."""
        with self.lock:
            pool = self.pools[net.id]
            if address:
                taken = parse_address(address, "address")
                pool.reserve(taken)
            else:
                taken = pool.allocate()
            self.held.setdefault(net.id, set()).add(str(taken))
            return str(taken)

    def unhold(self, net_id: str, address: str) -> None:
        """Give back a held address no endpoint took (an endpoint's own address goes back when it leaves)."""
        with self.lock:
            held = self.held.get(net_id, set())
            if address in held:
                held.discard(address)
                if net_id in self.pools:
                    self.pools[net_id].release(ipaddress.ip_address(address))

    def repair_links(
        self, links_now: Callable[[], Iterable[str]], sandbox_same: Callable[[Endpoint], bool] | None = None
    ) -> list[Endpoint]:
        """Endpoints whose host-side link was deleted behind our back (``links_now``:
        the links qiao's tag finds) are plugged again with the same names and
        addresses, when their sandbox still exists; the others are noted as
        unplugged.  ``sandbox_same`` says whether an endpoint's sandbox path
        still names the namespace it joined (a ``/proc/PID/ns/net`` path may
        name another process's by now).  Docker shows nothing in that case;
        ``inspect`` and ``ps`` show these notes.  Returns the endpoints plugged
        again.

        The dump of every link runs outside the lock (with 1 000 containers it
        takes a while, and runs and removals must not wait for it); only
        endpoints indexed before it began are judged (an endpoint is indexed
        after its link is made), and only if unchanged since."""
        with self.lock:
            before = {ep.id: ep.host_ifname for ep in self.endpoints.values() if ep.host_ifname}
        present = set(links_now())
        repaired = []
        with self.lock:
            for ep_id, ifname in before.items():
                ep = self.endpoints.get(ep_id)
                net = self.by_id.get(ep.network_id) if ep else None
                if ep is None or net is None or ep.host_ifname != ifname or ifname in present:
                    continue
                if not ep.sandbox or not os.path.exists(ep.sandbox) or (sandbox_same is not None and not sandbox_same(ep)):
                    self.link_notes[ep.id] = f"unplugged: {ep.host_ifname} was deleted and the sandbox is gone"
                    continue
                try:
                    with Steps(self.fault) as steps:
                        self.driver(net).join(steps, net, ep, ep.sandbox)
                except Exception as exc:
                    self.link_notes[ep.id] = f"unplugged: {ep.host_ifname} was deleted; plugging it again failed: {exc}"
                    continue
                self.link_notes[ep.id] = f"replugged at {now()}: {ep.host_ifname} had been deleted"
                repaired.append(ep)
        return repaired

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


def _guard(ep: Endpoint) -> EndpointGuard:
    return EndpointGuard(ep.host_ifname, tuple(a for a in (ep.address, ep.address6) if a))
