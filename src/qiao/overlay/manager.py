"""The overlay control loop inside qiaod (flanneld's role, in the engine).

It keeps this host's view of every overlay network in step with etcd:

* a network's definition (``config``) is stored once, cluster-wide; every
  daemon that sees it creates the network locally (a bridge for its own
  containers and a VXLAN device);
* each daemon leases one subnet of the network's range per network
  (``subnets/<subnet>``, tied to the daemon's etcd lease) and publishes its
  underlay address and VTEP MAC there;
* for every other host's lease it programs route + neighbour + FDB entry
  (kernel.host, flannel's scheme); they vanish when that lease ends;
* container names on overlay networks are published under ``names/`` so
  every host's resolver answers them.

Writes happen only on change; the steady state costs one lease renewal per
``LEASE_TTL / 3``.  Reads are a watch (instant) plus a periodic full sync
(self-healing after an etcd outage or a missed event).  Kernel state is
never torn down because etcd is unreachable: traffic keeps flowing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from qiao.engine import ids
from qiao.engine.errors import Conflict, InvalidParameter
from qiao.overlay import store as keys
from qiao.overlay.store import ClusterStore

if TYPE_CHECKING:
    from qiao.engine.engine import Engine
    from qiao.engine.models import Network

log = logging.getLogger("qiao.overlay")
LEASE_TTL = 15  # s: a crashed host's routes leave its peers within this
SYNC_EVERY = 5.0  # s: full resync, in case a watch event was missed
VXLAN_PORT = 8472  # the Linux kernel's historical default, as flannel
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14


def vtep_mac(public_ip: str, vni: int) -> str:
    """Stable across restarts (peers' FDB entries stay valid): locally
    administered, from the VNI and the underlay address."""
    raw = ipaddress.IPv4Address(public_ip).packed
    return ":".join(f"{b:02x}" for b in (0x0E, vni & 0xFF, *raw))


class OverlayManager:
    def __init__(self, engine: Engine, url: str, advertise: str | None):
        self.engine = engine
        self.store = ClusterStore(url)
        self.underlay_if, self.public_ip, underlay_mtu = engine.networks.host.underlay(advertise)
        self.mtu = underlay_mtu - VXLAN_OVERHEAD
        self.lease: Any = None
        self.names: dict[str, dict[str, dict[str, Any]]] = {}  # network name -> endpoint id -> record (cluster-wide)
        self._published: dict[str, dict[str, Any]] = {}  # endpoint id -> our record, as written
        self._held: dict[str, tuple[str, Any]] = {}  # network name -> (our subnet, the lease we wrote it under)
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one sync at a time
        self._syncing: int | None = None  # the thread in sync()'s DNS refresh
        self._stopped = threading.Event()  # set by leave(): no more syncs, renewals or watches
        self._cancel_watch: Any = None
        self._lease_lost = False
        self._hold_removals_until = 0.0  # after our lease was lost (etcd away past the TTL), peers' expired too: keep their routes

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        with contextlib.suppress(Exception):
            self.sync()  # best effort now; the loop retries with back-off
        threading.Thread(target=self._sync_loop, name="overlay-sync", daemon=True).start()
        threading.Thread(target=self._watch_loop, name="overlay-watch", daemon=True).start()
        threading.Thread(target=self._keepalive_loop, name="overlay-lease", daemon=True).start()

    def leave(self) -> None:
        """Graceful leave (daemon stopping with no overlay containers left): peers drop our routes at once.
        In any case the loops stop: a stopping daemon must not re-register (and the watch's
        thread would keep the process from exiting)."""
        self._stopped.set()
        with contextlib.suppress(Exception):
            if self._cancel_watch is not None:
                self._cancel_watch()
        locked = self._lock.acquire(timeout=5)  # let a sync in flight finish: it could re-create what we revoke
        try:
            self._leave()
        finally:
            if locked:
                self._lock.release()

    def _leave(self) -> None:
        if self.lease is not None and not any(ep for net in self._overlay_networks() for ep in self.engine.networks.endpoints_of(net.id)):
            with contextlib.suppress(Exception):
                self.lease.revoke()

    def request_sync(self) -> None:
        if self._syncing != threading.get_ident():  # from sync()'s own DNS refresh: names just published, no new sync
            self._wake.set()

    # -- API -------------------------------------------------------------

    def create_network(self, name: str, subnet: str | None, options: dict[str, str], labels: dict[str, str]) -> Network:
        if not subnet:
            raise InvalidParameter("an overlay network needs --subnet (the range shared by all hosts, e.g. 10.244.0.0/16)")
        try:
            net_range = ipaddress.IPv4Network(subnet)
        except ValueError:
            raise InvalidParameter(f"invalid subnet {subnet!r}") from None
        given = options.get("host_subnet_len")
        try:
            length = int(given) if given is not None else (24 if net_range.prefixlen <= 22 else net_range.prefixlen + 2)
        except ValueError:
            raise InvalidParameter(f"invalid host_subnet_len {given!r}: a prefix length such as 24") from None
        if not net_range.prefixlen < length <= 30:
            raise InvalidParameter(f"invalid host_subnet_len {length}: must be longer than /{net_range.prefixlen} and at most /30")
        net_id = ids.new_id()
        vni = self._reserve_vni(net_id)
        config = {
            "Network": str(net_range),
            "SubnetLen": length,
            "Backend": {"Type": "vxlan", "VNI": vni, "Port": VXLAN_PORT},
            "Id": net_id,
            "Name": name,
            "Options": dict(options),
            "Labels": dict(labels),
        }
        if not self.store.create(f"{keys.PREFIX}{name}/config", config):
            self.store.delete(f"{keys.VNI_PREFIX}{vni}")
            raise Conflict(f"network with name {name} already exists in the cluster")
        self.sync()
        net = self.engine.networks.by_id.get(net_id)
        if net is None:
            raise Conflict(f"overlay network {name} was created but no subnet could be leased for this host")
        return net

    def remove_network(self, net: Network) -> None:
        others = [n for n in self.names.get(net.name, {}).values() if n.get("Host") != self.public_ip]
        if others:
            raise Conflict(f"error while removing network: network {net.name} has active endpoints on other hosts")
        self.store.delete_prefix(f"{keys.PREFIX}{net.name}/")
        self.store.delete(f"{keys.VNI_PREFIX}{net.vni}")
        self.sync()

    def _reserve_vni(self, net_id: str) -> int:
        start = 4096 + int(net_id[:6], 16) % (1 << 23)
        for vni in range(start, start + 64):
            if self.store.create(f"{keys.VNI_PREFIX}{vni}", net_id):
                return vni
        raise Conflict("no free VXLAN network identifier")

    # -- names -----------------------------------------------------------

    def publish_names(self) -> None:
        """Write our overlay endpoints' names (only what changed)."""
        if self.lease is None:
            return
        want: dict[str, tuple[str, dict[str, Any]]] = {}
        for net in self._overlay_networks():
            for ep in self.engine.networks.endpoints_of(net.id):
                ctr = self.engine.containers.by_id.get(ep.container_id)
                if ctr is not None and ctr.running:
                    record = {"Container": ctr.id, "Name": ctr.name, "Aliases": ep.aliases, "IPv4": ep.address, "Host": self.public_ip}
                    want[ep.id] = (net.name, record)
        for eid, (net_name, record) in want.items():
            if self._published.get(eid) != record:
                self.store.put(f"{keys.PREFIX}{net_name}/names/{eid}", record, lease=self.lease)
                self._published[eid] = record
                self.names.setdefault(net_name, {})[eid] = record
        for eid in list(self._published):
            if eid not in want:
                for net_name, records in self.names.items():
                    if records.pop(eid, None) is not None:
                        self.store.delete(f"{keys.PREFIX}{net_name}/names/{eid}")
                self._published.pop(eid)

    # -- the loop --------------------------------------------------------

    def _overlay_networks(self) -> list[Network]:
        return [n for n in self.engine.networks.by_id.values() if n.driver == "overlay"]

    def _sync_loop(self) -> None:
        backoff = 1.0
        while not self._stopped.is_set():
            self._wake.wait(SYNC_EVERY)
            self._wake.clear()
            time.sleep(0.01)  # coalesce a burst of events into one sync
            try:
                self.sync()
                backoff = 1.0
            except Exception as exc:
                log.warning("overlay sync failed (%s); retrying in %.0f s", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, SYNC_EVERY)  # back within SYNC_EVERY of etcd's return (see _hold_removals_until)

    def _watch_loop(self) -> None:
        backoff = 1.0
        while not self._stopped.is_set():
            try:
                events, self._cancel_watch = self.store.watch()
                if self._stopped.is_set():  # leave() came while the watch was being set up
                    self._cancel_watch()
                backoff = 1.0
                for _event in events:
                    self._wake.set()
            except Exception as exc:
                log.debug("overlay watch ended: %s", exc)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            self._wake.set()

    def _keepalive_loop(self) -> None:
        while True:
            time.sleep(LEASE_TTL / 3)
            if self._stopped.is_set():
                return
            try:
                if self.lease is not None and self.lease.refresh() <= 0:
                    raise RuntimeError("lease expired")
            except Exception as exc:
                log.warning("overlay lease renewal failed (%s): will re-acquire", exc)
                self.lease = None
                self._lease_lost = True
                self._published.clear()
                self._wake.set()

    def sync(self) -> None:
        """Make local networks, leases, peers and names match etcd."""
        with self._lock:
            if self._stopped.is_set():
                return
            if self.lease is None:
                self.lease = self.store.lease(LEASE_TTL)
                if self._lease_lost:  # so did every peer's, likely (an etcd outage): they re-register within SYNC_EVERY
                    self._hold_removals_until = time.monotonic() + LEASE_TTL
                    self._lease_lost = False
            cluster = self.store.dump()
            seen = set()
            for name, state in cluster.items():
                cfg = state["config"]
                if not cfg:
                    continue
                seen.add(cfg["Id"])
                subnet = self._own_subnet(name, cfg, state["subnets"])
                if subnet is None:
                    continue
                with self.engine.lock:
                    net = self.engine.networks.ensure_overlay(name, cfg, subnet, self.public_ip, self.underlay_if, self.mtu)
                self._program_peers(net, state["subnets"])
                self.names[name] = dict(state["names"])
            with self.engine.lock:
                for net in self._overlay_networks():
                    if net.id not in seen and not self.engine.networks.endpoints_of(net.id):
                        self.engine.networks.drop(net)
                        self.names.pop(net.name, None)
                self.publish_names()
                self._syncing = threading.get_ident()
                try:
                    self.engine.refresh_dns({n.id for n in self._overlay_networks()})
                finally:
                    self._syncing = None

    def _own_subnet(self, name: str, cfg: dict[str, Any], leases: dict[str, Any]) -> str | None:
        """Our lease in this network: keep it, re-take it (same subnet after a
        restart or a lost lease), or take a free one (a create transaction,
        so two hosts never hold the same subnet)."""
        vni = cfg["Backend"]["VNI"]
        record = {"PublicIP": self.public_ip, "BackendType": "vxlan", "BackendData": {"VNI": vni, "VtepMAC": vtep_mac(self.public_ip, vni)}}
        local = next((n for n in self._overlay_networks() if n.id == cfg["Id"]), None)
        held = self._held.get(name)
        if held and held[1] is self.lease and leases.get(held[0]) == record:
            return held[0]  # written by us under this lease: no write (it would wake every host's watch, and so on)
        mine = [s for s, v in leases.items() if v.get("PublicIP") == self.public_ip]
        for subnet in mine:  # ours already (restart, or an old lease): move it under our current lease
            if self.store.replace_if(keys.subnet_key(name, subnet), leases[subnet], record, lease=self.lease):
                self._held[name] = (subnet, self.lease)
                return subnet
        net_range = ipaddress.IPv4Network(cfg["Network"])
        candidates = [str(s) for s in net_range.subnets(new_prefix=cfg["SubnetLen"])][1:]  # the first is skipped, as flannel
        if local and local.subnet in candidates and local.subnet not in leases:
            candidates = [local.subnet]  # lost lease: take the same subnet back when it is still free
        else:
            free = [s for s in candidates if s not in leases]
            candidates = random.sample(free[:100], min(len(free), 100))  # flannel: random among the first free ones
        for subnet in candidates:
            if self.store.create(keys.subnet_key(name, subnet), record, lease=self.lease):
                self._held[name] = (subnet, self.lease)
                return subnet
        log.error("overlay %s: no free subnet left for this host", name)
        return None

    def _program_peers(self, net: Network, leases: dict[str, Any]) -> None:
        want = {
            s: (str(ipaddress.IPv4Network(s).network_address), v["BackendData"]["VtepMAC"], v["PublicIP"])
            for s, v in leases.items()
            if v.get("PublicIP") != self.public_ip
        }
        host = self.engine.networks.host
        have = host.peers(net.vxlan)
        for subnet, (vtep_ip, mac, public_ip) in want.items():
            if have.get(subnet) != (vtep_ip, mac):
                host.set_peer(net.vxlan, subnet, vtep_ip, mac, public_ip)
        if time.monotonic() < self._hold_removals_until:
            return
        for subnet, (vtep_ip, mac) in have.items():
            if subnet not in want:
                host.del_peer(net.vxlan, subnet, vtep_ip, mac)
