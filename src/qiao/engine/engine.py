"""The engine: one lock, one store, the drivers, the networks and the containers.

Start-up order follows moby's controller: load state, re-assert networks
in the kernel (idempotent), rebuild the firewall table from intent, then
reconcile containers against what is really running.  Whoever needs to
know of a change (the DNS zones, an overlay's name publisher) listens to
:attr:`events`; the engine calls none of them by name.
"""

from __future__ import annotations

import logging
import threading
import time

from qiao.dns.resolver import Resolver, build_zone
from qiao.drivers import Drivers
from qiao.drivers.bridge import BridgeDriver
from qiao.drivers.host import HostDriver
from qiao.drivers.null import NullDriver
from qiao.engine.attachments import Attachments
from qiao.engine.containers import Containers
from qiao.engine.eventlog import EventLog
from qiao.engine.events import Event, Events
from qiao.engine.execs import Execs
from qiao.engine.lifecycle import Lifecycle
from qiao.engine.models import Endpoint, Network
from qiao.engine.networks import Networks
from qiao.engine.ports import Publisher
from qiao.engine.steps import Fault
from qiao.engine.store import Store
from qiao.images.registry import Images
from qiao.kernel.cgroup import Cgroups
from qiao.kernel.firewall import Firewall
from qiao.kernel.host import Host
from qiao.paths import Root

REMOTE_NAMES = "driver"  # a zone's group of the names a driver knows from other hosts (the overlay's)
log = logging.getLogger("qiao.engine")


def builtin_drivers(host: Host, firewall: Firewall, resolv_conf: str = "") -> list:
    """The drivers every qiaod has; the overlay is added when a cluster store is given."""
    return [BridgeDriver(host, firewall, resolv_conf), HostDriver(), NullDriver()]


class Engine:
    def __init__(
        self,
        root: Root,
        host: Host,
        firewall: Firewall,
        fault: Fault | None = None,
        resolver: Resolver | None = None,
        resolv_conf: str | None = None,
        drivers: list | None = None,
        cgroups: Cgroups | None = None,
    ):
        root.ensure()
        self.root = root
        self.host = host
        self.lock = threading.RLock()
        self.store = Store(root.store)
        self.events = Events()
        self.eventlog = EventLog()  # what `docker events` shows (containers record theirs; networks' come from `events`)
        self.drivers = Drivers(drivers if drivers is not None else builtin_drivers(host, firewall, resolv_conf or ""))
        self.networks = Networks(self.store, self.drivers, firewall, self.lock, self.events, fault)
        self.ports = Publisher(firewall, host, self._describe_owner)
        self.images = Images(root, self.store, self.lock)
        self.containers = Containers(
            root, self.store, self.networks, host, self.lock, fault, resolv_conf or "", self.ports,
            eventlog=self.eventlog, cgroups=cgroups, images=self.images,
        )  # fmt: skip
        self.images.users = self._image_users
        self.lifecycle = Lifecycle(self.containers, host)
        self.attachments = Attachments(self.store, self.networks, host, self.ports, self.lock, root.netns_dir, fault)
        self.execs = Execs(self.containers)
        self.resolver = resolver
        self.events.subscribe(self._dns_follows)
        self.events.subscribe(self._log_network)

    def start(self) -> None:
        with self.lock:
            self.networks.load()
            self.containers.load()
            self.images.load()  # after the containers: an image's files stay while one uses them
            self.attachments.load()
            self.networks.restore_kernel(self.containers.published() + self.attachments.published())
            self.networks.ensure_builtin()
            self.containers.reconcile(keep_endpoints=self.attachments.endpoint_ids(), keep_sandboxes=self.attachments.pins())
            self.attachments.reconcile()
            for net in list(self.networks.by_id.values()):
                self.refresh_dns(net)
        threading.Thread(target=self._resync, name="resync", daemon=True).start()

    def _resync(self, every: float = 5.0) -> None:
        """Re-assert what others may change behind our back (flannel resyncs its
        rules every 5 s too): the accept pair in foreign FORWARD-DROP chains, and
        endpoints' links deleted by hand."""
        while True:
            time.sleep(every)
            try:
                with self.lock:
                    bridges = [r.bridge for r in self.networks.firewall_rules()]
                    self.networks.firewall.ensure_foreign_hooks(bridges)
            except Exception:
                log.exception("firewall resync failed")
            try:
                for ep in self.networks.repair_links(self.host.owned_links, self.attachments.sandbox_same):
                    log.warning("endpoint %s: its link %s had been deleted by hand; plugged again", ep.id[:12], ep.host_ifname)
            except Exception:
                log.exception("link resync failed")

    def _image_users(self, image_id: str) -> list[tuple[str, bool]]:
        """The containers made from an image: (id, running), running ones first."""
        users = [(c.id, c.running) for c in self.containers.by_id.values() if c.image_id == image_id]
        return sorted(users, key=lambda u: not u[1])

    def _describe_owner(self, owner: str) -> str:
        """Who holds a host port, for a conflict's message."""
        return self.attachments.describe(owner) or self.containers.describe(owner)

    def _log_network(self, event: Event) -> None:
        """A network's create and removal, as `docker events` shows them."""
        if event.kind == "network":
            action = {"create": "create", "delete": "destroy"}[event.action]
            self.eventlog.record("network", action, event.network.id, {"name": event.network.name, "type": event.network.driver})

    # -- DNS: a zone per user network, from its endpoints' names ----------

    def _dns_follows(self, event: Event) -> None:
        """Keep the network's zone current: an endpoint's change touches its own
        record only, so a run or rm costs the same with 1 or 1 000 containers."""
        if self.resolver is None:
            return
        net = event.network
        if event.kind == "network" and event.action == "delete":
            self.resolver.drop_zone(net.id)
            return
        zone = self.resolver.zones.get(net.id)
        if event.kind == "network" or zone is None:
            self.refresh_dns(net)
        elif event.kind == "names":
            zone.replace_group(REMOTE_NAMES, self.networks.driver(net).dns_records(net))
        elif event.endpoint is not None and event.action == "leave":
            zone.remove(event.endpoint.id)
        elif event.endpoint is not None:
            zone.put(event.endpoint.id, event.endpoint.dns_names, _addresses(event.endpoint), self._upstreams_of(event.endpoint))

    def _upstreams_of(self, ep: Endpoint) -> list[str] | None:
        """A container's ``--dns`` servers: its queries for other names go there, not to the host's."""
        ctr = self.containers.by_id.get(ep.owner)
        return list(ctr.dns) if ctr is not None and ctr.dns else None

    def refresh_dns(self, net: Network) -> None:
        """Give the resolver the current names of one network, built afresh (under the lock)."""
        if self.resolver is None:
            return
        if not net.user_defined or net.id not in self.networks.by_id:
            self.resolver.drop_zone(net.id)
            return
        gateways = [g for g in (net.gateway, net.gateway6) if g]
        subnets = [s for s in (net.subnet, net.subnet6) if s]
        if net.cluster_subnet:
            subnets.append(net.cluster_subnet)  # containers on every host may ask this host's resolver
        zone = build_zone(gateways, subnets, net.internal, [])
        for ep in self.networks.endpoints_of(net.id):
            zone.put(ep.id, ep.dns_names, _addresses(ep), self._upstreams_of(ep))
        zone.replace_group(REMOTE_NAMES, self.networks.driver(net).dns_records(net))
        self.resolver.set_zone(net.id, zone)


def _addresses(ep: Endpoint) -> list[str]:
    return [a for a in (ep.address, ep.address6) if a]
