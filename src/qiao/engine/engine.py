"""The engine: one lock, one store, the networks and the containers.

Start-up order follows moby's controller: load state, re-assert networks
in the kernel (idempotent), rebuild the firewall table from intent, then
reconcile containers against what is really running.
"""

from __future__ import annotations

import logging
import threading
import time

from qiao.dns.resolver import Resolver, build_zone
from qiao.engine.containers import Containers
from qiao.engine.networks import Networks
from qiao.engine.steps import Fault
from qiao.engine.store import Store
from qiao.kernel.firewall import Firewall
from qiao.kernel.host import Host
from qiao.paths import Root

log = logging.getLogger("qiao.engine")


class Engine:
    def __init__(
        self,
        root: Root,
        host: Host,
        firewall: Firewall,
        fault: Fault | None = None,
        resolver: Resolver | None = None,
        resolv_conf: str | None = None,
    ):
        root.ensure()
        self.root = root
        self.lock = threading.RLock()
        self.store = Store(root.store)
        self.networks = Networks(self.store, host, firewall, self.lock, fault)
        self.containers = Containers(root, self.store, self.networks, self.lock, fault)
        self.resolver = resolver
        if resolv_conf:
            self.networks.resolv_conf = resolv_conf
        self.networks.on_change = self.containers.on_change = self.refresh_dns

    def start(self) -> None:
        with self.lock:
            self.networks.load()
            self.containers.load()
            self.networks.restore_kernel(self.containers.published())
            self.networks.ensure_builtin()
            self.containers.reconcile()
            self.refresh_dns(set(self.networks.by_id))
        threading.Thread(target=self._resync, name="resync", daemon=True).start()

    def _resync(self, every: float = 5.0) -> None:
        """Re-assert what others may change behind our back (flannel resyncs its
        rules every 5 s too): today, the accept pair in foreign FORWARD-DROP chains."""
        while True:
            time.sleep(every)
            try:
                with self.lock:
                    bridges = [n.bridge for n in self.networks.by_id.values() if n.bridge]
                    self.networks.firewall.ensure_foreign_hooks(bridges)
            except Exception:
                log.exception("firewall resync failed")

    def refresh_dns(self, network_ids: set[str]) -> None:
        """Give the resolver the current names of these networks (called under the lock)."""
        if self.resolver is None:
            return
        overlay = self.networks.overlay
        overlay_changed = False
        for nid in network_ids:
            net = self.networks.by_id.get(nid)
            if net is None or not net.user_defined:
                self.resolver.drop_zone(nid)
                continue
            records = []
            local = self.networks.endpoints_of(nid)
            for ep in local:
                ctr = self.containers.by_id.get(ep.container_id)
                if ctr is not None and ctr.running:
                    records.append(([ctr.name, ctr.id[:12], *ep.aliases], [a for a in (ep.address, ep.address6) if a]))
            if net.driver == "overlay" and overlay is not None:
                local_ids = {ep.id for ep in local}
                for eid, rec in overlay.names.get(net.name, {}).items():
                    if eid not in local_ids:  # names of containers on other hosts
                        records.append(([rec["Name"], rec["Container"][:12], *rec.get("Aliases", [])], [rec["IPv4"]]))
                overlay_changed = True
            gateways = [g for g in (net.gateway, net.gateway6) if g]
            subnets = [s for s in (net.subnet, net.subnet6) if s]
            if net.cluster_subnet:
                subnets.append(net.cluster_subnet)  # containers on every host may ask this host's resolver
            self.resolver.set_zone(nid, build_zone(gateways, subnets, net.internal, records))
        if overlay is not None and overlay_changed:
            overlay.request_sync()  # publish our names cluster-wide, soon and outside this lock

    def network_json(self, ref: str) -> dict:
        with self.lock:
            return self.networks.describe(self.networks.get(ref), self.containers.by_id)

    def networks_json(self) -> list[dict]:
        with self.lock:
            nets = sorted(self.networks.by_id.values(), key=lambda n: n.created)
            return [self.networks.describe(n, self.containers.by_id) for n in nets]
