"""The overlay's control loop inside qiaod (flanneld's role).

It keeps this host's side of every overlay network in step with etcd:

* a network's definition (``config``) is stored once, cluster-wide; every
  daemon that sees it creates the network locally (a bridge for its own
  containers and a VXLAN device);
* each daemon leases one subnet of the network's range per network
  (``subnets/<subnet>``, tied to the daemon's etcd lease) and publishes its
  underlay address and VTEP MAC there;
* for every other host's lease it programs route + neighbour + FDB entry
  (flannel's scheme); they vanish when that lease ends;
* container names on overlay networks are published under ``names/`` so
  every host's resolver answers them.

Reads: one full read at start and after a broken watch or a compaction;
otherwise the watch's events are applied one key at a time, so a container
started anywhere costs every other host one event and no read.  Writes
happen only on change, from this module's own threads: **no etcd call ever
runs under the engine lock**, so a slow or frozen etcd stalls nothing but
the overlay itself.  Kernel state is never torn down because etcd is
unreachable: traffic keeps flowing.

The engine side is reached through :class:`LocalNetworks` only.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from qiao.drivers.overlay import store as keys
from qiao.drivers.overlay.store import ClusterStore, Compacted, DryClusterStore
from qiao.engine.errors import Conflict
from qiao.engine.events import Event
from qiao.engine.models import Endpoint, Network, now
from qiao.kernel.vxlan import Vxlan

if TYPE_CHECKING:
    from qiao.kernel.recording import Recorder

log = logging.getLogger("qiao.overlay")
LEASE_TTL = 15  # s: a crashed host's routes leave its peers within this
VXLAN_PORT = 8472  # the Linux kernel's historical default, as flannel
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
DRIVER = "overlay"


def vtep_mac(public_ip: str, vni: int) -> str:
    """Stable across restarts (peers' FDB entries stay valid): locally
    administered, from the VNI and the underlay address."""
    raw = ipaddress.IPv4Address(public_ip).packed
    return ":".join(f"{b:02x}" for b in (0x0E, vni & 0xFF, *raw))


class LocalNetworks(Protocol):
    """What the manager needs of the engine (its network registry)."""

    def of_driver(self, driver: str) -> list[Network]: ...
    def ensure(self, net: Network) -> Network: ...  # this host's side, created if missing; under the engine lock
    def drop(self, net: Network) -> None: ...
    def endpoints_of(self, network_id: str) -> list[Endpoint]: ...
    def names_changed(self, network_id: str) -> None: ...


class OverlayManager:
    def __init__(self, store: ClusterStore, vxlan: Vxlan, advertise: str | None):
        self.store = store
        self.vxlan = vxlan
        self.underlay_if, self.public_ip, underlay_mtu = vxlan.underlay(advertise)
        self.mtu = underlay_mtu - VXLAN_OVERHEAD
        self.local: LocalNetworks | None = None  # set by the engine before start()
        self.lease: Any = None
        # The cluster as last read or watched: network name -> ...
        self.configs: dict[str, dict[str, Any]] = {}
        self.leases: dict[str, dict[str, dict[str, Any]]] = {}  # -> subnet -> record
        self.names: dict[str, dict[str, dict[str, Any]]] = {}  # -> endpoint id -> record
        self._held: dict[str, tuple[str, Any]] = {}  # network name -> (our subnet, the lease it is under)
        self._lock = threading.RLock()  # the state above; taken before the engine lock, never after
        # Names to publish: endpoint id -> (network name, record) or None (withdraw).  Filled from the
        # engine's events under the engine lock, so guarded by a lock of its own that nothing waits under.
        self._outbox: dict[str, tuple[str, dict[str, Any]] | None] = {}
        self._published: dict[str, tuple[str, dict[str, Any]]] = {}
        self._outbox_lock = threading.Lock()
        self._wake_publisher = threading.Event()
        self._stopped = threading.Event()
        self._cancel_watch: Callable[[], None] | None = None
        self._revision = 0
        self.events = 0  # watch events applied
        self._lease_lost = False
        self._hold_removals_until = 0.0  # after our lease was lost (etcd away past the TTL), peers' expired too: keep their routes
        self._held_back: set[tuple[str, str]] = set()  # (network, subnet) removals deferred meanwhile

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        self._seed_names()
        with contextlib.suppress(Exception):
            self.join()
        loops = {"overlay-watch": self._watch_loop, "overlay-lease": self._keepalive_loop, "overlay-names": self._publish_loop}
        for name, loop in loops.items():
            threading.Thread(target=loop, name=name, daemon=True).start()

    def join(self) -> None:
        """A lease, and this host's side of every network the cluster defines: what a starting daemon does first."""
        self._ensure_lease()

    def dry_copy(self, recorder: Recorder, vxlan: Vxlan) -> OverlayManager:
        """A twin for a dry run (``qiao explain``): no threads, and its etcd writes
        are recorded, never sent.  It starts from a copy of what this host knows of
        the cluster; for a fresh host (``recorder.fresh``) it holds no lease yet,
        so :meth:`join` takes this host's subnets again, as a new daemon here would."""
        with self._lock:
            configs, leases, names = copy.deepcopy((self.configs, self.leases, self.names))
            held = {} if recorder.fresh else dict(self._held)
            lease = None if recorder.fresh else self.lease
        existing = {f"{keys.PREFIX}{net}/config" for net in configs}
        existing |= {keys.subnet_key(net, subnet) for net, by_subnet in leases.items() for subnet in by_subnet}
        existing |= {f"{keys.PREFIX}{net}/names/{eid}" for net, by_id in names.items() for eid in by_id}
        twin = OverlayManager(DryClusterStore(self.store.url, recorder.record, existing), vxlan, self.public_ip)
        twin.configs, twin.leases, twin.names, twin._held, twin.lease = configs, leases, names, held, lease
        return twin

    def _seed_names(self) -> None:
        """The names of endpoints held from before a restart: published again, under our new lease."""
        assert self.local is not None
        for net in self.local.of_driver(DRIVER):
            for ep in self.local.endpoints_of(net.id):
                self.endpoint_changed(net, ep, joined=True)

    def leave(self) -> None:
        """Graceful leave (daemon stopping with no overlay containers left): peers drop our routes at once.
        In any case the loops stop: a stopping daemon must not re-register."""
        self._stopped.set()
        self._wake_publisher.set()
        with contextlib.suppress(Exception):
            if self._cancel_watch is not None:
                self._cancel_watch()
        locked = self._lock.acquire(timeout=5)  # let an update in flight finish: it could re-create what we revoke
        try:
            assert self.local is not None
            in_use = any(self.local.endpoints_of(net.id) for net in self.local.of_driver(DRIVER))
            if self.lease is not None and not in_use:
                with contextlib.suppress(Exception):
                    self.lease.revoke()
        finally:
            if locked:
                self._lock.release()

    # -- called by the overlay driver (API threads, no engine lock) -------

    def create_network(self, net: Network, subnet_len: int) -> Network:
        """Store the network's definition cluster-wide, then create this host's side."""
        vni = self._reserve_vni(net.id)
        assert net.cluster_subnet
        config = {
            "Network": net.cluster_subnet,
            "SubnetLen": subnet_len,
            "Backend": {"Type": "vxlan", "VNI": vni, "Port": VXLAN_PORT},
            "Id": net.id,
            "Name": net.name,
            "Options": dict(net.options),
            "Labels": dict(net.labels),
        }
        if not self.store.create(f"{keys.PREFIX}{net.name}/config", config):
            self.store.delete(f"{keys.VNI_PREFIX}{vni}")
            raise Conflict(f"network with name {net.name} already exists in the cluster")
        with self._lock:
            self.configs[net.name] = config
            local = self._ensure_network(net.name)
        if local is None:
            raise Conflict(f"overlay network {net.name} was created but no subnet could be leased for this host")
        return local

    def remove_network(self, net: Network) -> None:
        others = [n for n in self.names.get(net.name, {}).values() if n.get("Host") != self.public_ip]
        if others:
            raise Conflict(f"error while removing network: network {net.name} has active endpoints on other hosts")
        self.store.delete_prefix(f"{keys.PREFIX}{net.name}/")
        self.store.delete(f"{keys.VNI_PREFIX}{net.driver_state['vni']}")
        with self._lock:
            self._forget_network(net.name)

    def records(self, net: Network) -> list[tuple[list[str], list[str]]]:
        """Names held by the other hosts, for this host's resolver."""
        return [
            ([rec["Name"], rec["Container"][:12], *rec.get("Aliases", [])], [rec["IPv4"]])
            for rec in list(self.names.get(net.name, {}).values())
            if rec.get("Host") != self.public_ip
        ]

    def peers(self, net: Network) -> list[dict[str, Any]]:
        """The other hosts' leases in this network, as :meth:`_program_peers` programs them
        (read without the manager's lock: the caller may hold the engine lock)."""
        leases = dict(self.leases.get(net.name, {}))
        return [
            {"host": v["PublicIP"], "subnet": s, "vtep": str(ipaddress.IPv4Network(s).network_address), "mac": v["BackendData"]["VtepMAC"]}
            for s, v in sorted(leases.items())
            if v.get("PublicIP") != self.public_ip
        ]

    def status(self) -> dict[str, Any]:
        """For ``GET /info``: what the control plane costs (reads are full reads; events are watched keys)."""
        return {"ClusterStore": self.store.url, "PublicIP": self.public_ip, "Reads": self.store.reads, "Events": self.events}

    def _reserve_vni(self, net_id: str) -> int:
        start = 4096 + int(net_id[:6], 16) % (1 << 23)
        for vni in range(start, start + 64):
            if self.store.create(f"{keys.VNI_PREFIX}{vni}", net_id):
                return vni
        raise Conflict("no free VXLAN network identifier")

    # -- called from the engine's events (under the engine lock: no I/O) --

    def on_event(self, event: Event) -> None:
        if event.kind == "endpoint" and event.endpoint is not None and event.network.driver == DRIVER:
            self.endpoint_changed(event.network, event.endpoint, event.action == "join")

    def endpoint_changed(self, net: Network, ep: Endpoint, joined: bool) -> None:
        """Queue our endpoint's names for publishing (or withdrawal)."""
        record = {"Container": ep.owner, "Name": ep.dns_names[0] if ep.dns_names else ep.owner[:12], "Aliases": ep.aliases}
        record.update(IPv4=ep.address, Host=self.public_ip)
        with self._outbox_lock:
            self._outbox[ep.id] = (net.name, record) if joined else None
        self._wake_publisher.set()

    # -- the loops -------------------------------------------------------

    def _watch_loop(self) -> None:
        """A full read, then the watch from the next revision, key by key; again after a break."""
        backoff = 0.5
        while not self._stopped.is_set():
            try:
                self._full_read()
                events, self._cancel_watch = self.store.watch(self._revision + 1)
                if self._stopped.is_set():
                    self._cancel_watch()
                backoff = 0.5
                for key, value, revision in events:
                    self.events += 1
                    with self._lock:
                        self._apply(key, value)
                        self._revision = max(self._revision, revision)
                log.debug("overlay watch ended; reading everything again")
            except Compacted as exc:
                log.info("overlay watch: %s", exc)
            except Exception as exc:
                log.warning("overlay watch failed (%s); again in %.1f s", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _keepalive_loop(self) -> None:
        while not self._stopped.wait(LEASE_TTL / 3):
            try:
                if self.lease is not None and self.lease.refresh() <= 0:
                    raise RuntimeError("lease expired")
                if self.lease is None:
                    self._ensure_lease()
            except Exception as exc:
                if self.lease is not None:
                    log.warning("overlay lease renewal failed (%s): will re-acquire", exc)
                    self.lease, self._lease_lost = None, True
                    with self._outbox_lock:  # republish everything under the next lease
                        self._outbox.update(self._published)
                        self._published.clear()
                    if self._cancel_watch is not None:  # etcd comes back with every lease expired: read again then
                        with contextlib.suppress(Exception):
                            self._cancel_watch()
            self._drop_held_back()

    def _ensure_lease(self) -> None:
        """A lease, and every network's subnet and our names under it."""
        with self._lock:
            if self.lease is None:
                self.lease = self.store.lease(LEASE_TTL)
                if self._lease_lost:  # so did every peer's, likely (an etcd outage): they re-register soon
                    self._hold_removals_until = time.monotonic() + LEASE_TTL
                    self._lease_lost = False
                for name in list(self.configs):
                    self._ensure_network(name)
        self._wake_publisher.set()

    def _publish_loop(self) -> None:
        while not self._stopped.is_set():
            self._wake_publisher.wait()
            self._wake_publisher.clear()
            try:
                self._publish()
            except Exception as exc:
                log.warning("publishing overlay names failed (%s); retrying", exc)
                self._stopped.wait(1.0)
                self._wake_publisher.set()

    def _publish(self) -> None:
        lease = self.lease
        if lease is None:
            return  # the keepalive loop gets one, then wakes us
        while True:
            with self._outbox_lock:
                if not self._outbox:
                    return
                eid, item = next(iter(self._outbox.items()))
            old = self._published.get(eid)
            if item is None:
                if old is not None:
                    self.store.delete(f"{keys.PREFIX}{old[0]}/names/{eid}")
            elif old != item:
                self.store.put(f"{keys.PREFIX}{item[0]}/names/{eid}", item[1], lease=lease)
            with self._outbox_lock:
                if self._outbox.get(eid) == item:  # unchanged meanwhile: done
                    del self._outbox[eid]
                if item is None:
                    self._published.pop(eid, None)
                else:
                    self._published[eid] = item

    # -- applying the cluster's state ---------------------------------------

    def _full_read(self) -> None:
        revision, kvs = self.store.read_all()
        configs: dict[str, dict[str, Any]] = {}
        leases: dict[str, dict[str, dict[str, Any]]] = {}
        names: dict[str, dict[str, dict[str, Any]]] = {}
        for key, value in kvs:
            network, kind, item = keys.parse_key(key)
            if kind == "config":
                configs[network] = value
            elif kind == "subnets":
                leases.setdefault(network, {})[item] = value
            elif kind == "names":
                names.setdefault(network, {})[item] = value
        with self._lock:
            self._revision = revision
            self.configs, self.leases, self.names = configs, leases, names
            for name in configs:
                self._ensure_network(name)
                self._names_changed(name)
            assert self.local is not None
            for net in self.local.of_driver(DRIVER):
                if net.name not in configs:
                    self._forget_network(net.name)

    def _apply(self, key: str, value: Any) -> None:
        """One watched change."""
        network, kind, item = keys.parse_key(key)
        if kind == "config":
            if value is None:
                self.configs.pop(network, None)
                self._forget_network(network)
            else:
                self.configs[network] = value
                self._ensure_network(network)
        elif kind == "subnets":
            if value is None:
                self.leases.get(network, {}).pop(item, None)
                held = self._held.get(network)
                if held and held[0] == item:  # ours expired (etcd was away): take it again under a live lease
                    del self._held[network]
                    if self.lease is not None:
                        self._ensure_network(network)
            else:
                self.leases.setdefault(network, {})[item] = value
            self._program_peers(network)
        elif kind == "names":
            if value is None:
                self.names.get(network, {}).pop(item, None)
            else:
                self.names.setdefault(network, {})[item] = value
            self._names_changed(network)

    def _names_changed(self, network: str) -> None:
        assert self.local is not None
        net = next((n for n in self.local.of_driver(DRIVER) if n.name == network), None)
        if net is not None:
            self.local.names_changed(net.id)

    def _ensure_network(self, name: str) -> Network | None:
        """This host's lease and local side of one network; its peers programmed."""
        cfg = self.configs.get(name)
        if cfg is None or self.lease is None:
            return None
        subnet = self._own_subnet(name, cfg)
        if subnet is None:
            return None
        vni = cfg["Backend"]["VNI"]
        lease = ipaddress.IPv4Network(subnet)
        net = Network(
            id=cfg["Id"],
            name=name,
            driver=DRIVER,
            created=now(),  # kept only when this host's side is created (ensure keeps an existing record)
            scope="global",
            subnet=subnet,
            gateway=str(lease.network_address + 1),
            mtu=self.mtu,
            options=dict(cfg.get("Options") or {}),
            labels=dict(cfg.get("Labels") or {}),
            attachable=True,
            cluster_subnet=cfg["Network"],
            driver_state={
                "bridge": "br-" + cfg["Id"][:12],
                "vni": vni,
                "vxlan": f"qv{vni}",
                "port": cfg["Backend"].get("Port", VXLAN_PORT),
                "vtep_mac": vtep_mac(self.public_ip, vni),
                "local_ip": self.public_ip,
                "underlay": self.underlay_if,
            },
        )
        assert self.local is not None
        local = self.local.ensure(net)
        self._program_peers(name)
        return local

    def _forget_network(self, name: str) -> None:
        assert self.local is not None
        for net in self.local.of_driver(DRIVER):
            if net.name == name and not self.local.endpoints_of(net.id):
                self.local.drop(net)
        self._held.pop(name, None)
        self.names.pop(name, None)
        self.leases.pop(name, None)

    def _own_subnet(self, name: str, cfg: dict[str, Any]) -> str | None:
        """Our lease in this network: keep it, re-take it (same subnet after a
        restart or a lost lease), or take a free one (a create transaction,
        so two hosts never hold the same subnet)."""
        leases = self.leases.setdefault(name, {})
        vni = cfg["Backend"]["VNI"]
        record = {"PublicIP": self.public_ip, "BackendType": "vxlan", "BackendData": {"VNI": vni, "VtepMAC": vtep_mac(self.public_ip, vni)}}
        held = self._held.get(name)
        if held and held[1] is self.lease:
            return held[0]  # written by us under this lease: no write (it would wake every host's watch)
        for subnet in [s for s, v in leases.items() if v.get("PublicIP") == self.public_ip]:
            # ours already (restart, or an old lease): move it under our current lease
            if self.store.replace_if(keys.subnet_key(name, subnet), leases[subnet], record, lease=self.lease):
                return self._took(name, subnet, record)
            leases.pop(subnet)  # gone (it expired) or taken: the view was stale
        assert self.local is not None
        local = next((n for n in self.local.of_driver(DRIVER) if n.name == name), None)
        candidates = [str(s) for s in ipaddress.IPv4Network(cfg["Network"]).subnets(new_prefix=cfg["SubnetLen"])][1:]  # as flannel
        if local and local.subnet in candidates and local.subnet not in leases:
            candidates = [local.subnet]  # lost lease: take the same subnet back when it is still free
        else:
            free = [s for s in candidates if s not in leases]
            candidates = random.sample(free[:100], min(len(free), 100))  # flannel: random among the first free ones
        for subnet in candidates:
            if self.store.create(keys.subnet_key(name, subnet), record, lease=self.lease):
                return self._took(name, subnet, record)
        log.error("overlay %s: no free subnet left for this host", name)
        return None

    def _took(self, name: str, subnet: str, record: dict[str, Any]) -> str:
        self._held[name] = (subnet, self.lease)
        self.leases.setdefault(name, {})[subnet] = record
        return subnet

    def _program_peers(self, name: str) -> None:
        """Route + neighbour + FDB entry per other host's lease; a diff against the kernel."""
        assert self.local is not None
        net = next((n for n in self.local.of_driver(DRIVER) if n.name == name), None)
        if net is None:
            return
        dev = net.driver_state["vxlan"]
        want = {
            s: (str(ipaddress.IPv4Network(s).network_address), v["BackendData"]["VtepMAC"], v["PublicIP"])
            for s, v in self.leases.get(name, {}).items()
            if v.get("PublicIP") != self.public_ip
        }
        have = self.vxlan.peers(dev)
        for subnet, (vtep_ip, mac, public_ip) in want.items():
            self._held_back.discard((name, subnet))
            if have.get(subnet) != (vtep_ip, mac):
                self.vxlan.set_peer(dev, subnet, vtep_ip, mac, public_ip)
        for subnet, (vtep_ip, mac) in have.items():
            if subnet in want:
                continue
            if self._lease_lost or time.monotonic() < self._hold_removals_until:
                self._held_back.add((name, subnet))  # decided once every host had its chance to re-register
            else:
                self.vxlan.del_peer(dev, subnet, vtep_ip, mac)

    def _drop_held_back(self) -> None:
        """Peers whose removal waited for the end of an outage's grace period."""
        if not self._held_back or self._lease_lost or time.monotonic() < self._hold_removals_until:
            return
        with self._lock:
            names = {name for name, _subnet in self._held_back}
            self._held_back.clear()
            for name in names:
                self._program_peers(name)
