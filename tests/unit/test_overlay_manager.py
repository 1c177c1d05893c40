"""The overlay's control loop over an in-memory etcd, VXLAN stub and registry:
leases, peers, names, and what it costs in reads."""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

import pytest

from qiao.drivers.overlay import store as keys
from qiao.drivers.overlay.manager import DRIVER, OverlayManager, vtep_mac
from qiao.engine import ids
from qiao.engine.errors import Conflict
from qiao.engine.models import Endpoint, Network
from qiao.kernel.vxlan import StubVxlan

ME, OTHER = "192.0.2.10", "192.0.2.11"


class Lease:
    def __init__(self, store: FakeEtcd, ident: int):
        self.store, self.id, self.alive = store, ident, True

    def refresh(self) -> int:
        return 15 if self.alive else 0

    def revoke(self) -> None:
        self.alive = False
        for key in [k for k, (_v, lease) in self.store.kv.items() if lease is self]:
            self.store.delete(key)


class FakeEtcd:
    """The subset of ClusterStore the manager uses, with a revision and counters."""

    def __init__(self) -> None:
        self.kv: dict[str, tuple[Any, Lease | None]] = {}
        self.revision = 1
        self.reads = 0
        self.writes: list[str] = []
        self.leases = 0
        self._mutex = threading.Lock()  # etcd's transactions are atomic

    def _changed(self, key: str) -> None:
        self.revision += 1
        self.writes.append(key)

    def read_all(self) -> tuple[int, list[tuple[str, Any]]]:
        self.reads += 1
        return self.revision, [(k, v) for k, (v, _l) in sorted(self.kv.items())]

    def create(self, key: str, value: Any, lease: Any = None) -> bool:
        with self._mutex:
            if key in self.kv:
                return False
            self.kv[key] = (value, lease)
            self._changed(key)
            return True

    def put(self, key: str, value: Any, lease: Any = None) -> None:
        self.kv[key] = (value, lease)
        self._changed(key)

    def replace_if(self, key: str, expected: Any, value: Any, lease: Any = None) -> bool:
        if key not in self.kv or self.kv[key][0] != expected:
            return False
        self.put(key, value, lease)
        return True

    def delete(self, key: str) -> None:
        if self.kv.pop(key, None) is not None:
            self._changed(key)

    def delete_prefix(self, prefix: str) -> None:
        for key in [k for k in self.kv if k.startswith(prefix)]:
            self.delete(key)

    def lease(self, ttl: int) -> Lease:
        self.leases += 1
        return Lease(self, self.leases)


class FakeLocal:
    """The engine's registry, as the manager sees it."""

    def __init__(self) -> None:
        self.nets: dict[str, Network] = {}
        self.endpoints: dict[str, list[Endpoint]] = {}
        self.changed: list[str] = []
        self.dropped: list[str] = []

    def of_driver(self, driver: str) -> list[Network]:
        return [n for n in self.nets.values() if n.driver == driver]

    def ensure(self, net: Network) -> Network:
        have = self.nets.get(net.id)
        if have is None or have.subnet != net.subnet:
            self.nets[net.id] = net
        return self.nets[net.id]

    def drop(self, net: Network) -> None:
        self.nets.pop(net.id, None)
        self.dropped.append(net.name)

    def endpoints_of(self, network_id: str) -> list[Endpoint]:
        return self.endpoints.get(network_id, [])

    def names_changed(self, network_id: str) -> None:
        self.changed.append(network_id)


@pytest.fixture
def etcd() -> FakeEtcd:
    return FakeEtcd()


def manager(etcd: FakeEtcd, ip: str = ME) -> tuple[OverlayManager, FakeLocal, StubVxlan]:
    links: dict[str, dict[str, Any]] = {}
    vx = StubVxlan(links)
    m = OverlayManager(etcd, vx, ip)  # type: ignore[arg-type]
    local = FakeLocal()
    m.local = local
    m.lease = etcd.lease(15)
    return m, local, vx


def cluster_net(name: str = "ov", subnet: str = "10.244.0.0/16") -> Network:
    return Network(ids.new_id(), name, DRIVER, "", scope="global", cluster_subnet=subnet, attachable=True, driver_state={"subnet_len": 24})


def peer_record(ip: str, vni: int) -> dict[str, Any]:
    return {"PublicIP": ip, "BackendType": "vxlan", "BackendData": {"VNI": vni, "VtepMAC": vtep_mac(ip, vni)}}


def test_create_stores_the_definition_once_and_leases_one_subnet(etcd: FakeEtcd) -> None:
    m, local, _vx = manager(etcd)
    net = m.create_network(cluster_net(), 24)
    cfg = etcd.kv[f"{keys.PREFIX}ov/config"][0]
    assert cfg["Network"] == "10.244.0.0/16" and cfg["SubnetLen"] == 24 and cfg["Id"] == net.id
    leases = {k: v for k, (v, _l) in etcd.kv.items() if "/subnets/" in k}
    assert len(leases) == 1 and list(leases.values())[0]["PublicIP"] == ME
    lease = ipaddress.ip_network(net.subnet or "")
    assert lease.prefixlen == 24 and lease.subnet_of(ipaddress.ip_network("10.244.0.0/16"))
    assert lease != ipaddress.ip_network("10.244.0.0/24"), "the range's first subnet is skipped, as flannel"
    assert net.gateway == str(lease.network_address + 1) and local.nets[net.id] is net
    assert net.driver_state["vxlan"] == f"qv{cfg['Backend']['VNI']}" and net.mtu == 1500 - 50
    with pytest.raises(Conflict):
        m.create_network(cluster_net(), 24)  # the same name again, from any host


def test_watched_leases_program_and_remove_one_peer_each_without_reads(etcd: FakeEtcd) -> None:
    m, _local, vx = manager(etcd)
    net = m.create_network(cluster_net(), 24)
    vni, dev = net.driver_state["vni"], net.driver_state["vxlan"]
    vx.links[dev] = {"peers": {}}
    reads = etcd.reads
    with m._lock:
        m._apply(keys.subnet_key("ov", "10.244.7.0/24"), peer_record(OTHER, vni))
    assert vx.peers(dev) == {"10.244.7.0/24": ("10.244.7.0", vtep_mac(OTHER, vni))}
    with m._lock:
        m._apply(keys.subnet_key("ov", "10.244.7.0/24"), None)
    assert vx.peers(dev) == {}
    assert etcd.reads == reads, "a watched change costs no read"


def test_peer_removals_wait_while_our_own_lease_was_lost(etcd: FakeEtcd) -> None:
    """etcd back after an outage expires every lease at once: keep the routes until peers re-register."""
    m, _local, vx = manager(etcd)
    net = m.create_network(cluster_net(), 24)
    vni, dev = net.driver_state["vni"], net.driver_state["vxlan"]
    vx.links[dev] = {"peers": {}}
    with m._lock:
        m._apply(keys.subnet_key("ov", "10.244.7.0/24"), peer_record(OTHER, vni))
    m._lease_lost = True
    with m._lock:
        m._apply(keys.subnet_key("ov", "10.244.7.0/24"), None)
    assert "10.244.7.0/24" in vx.peers(dev), "removed while every lease was being re-taken"
    m._lease_lost, m._hold_removals_until = False, 0.0
    m._drop_held_back()
    assert vx.peers(dev) == {}, "still there once the grace period is over and the peer did not come back"


def test_names_follow_the_watch_and_exclude_our_own(etcd: FakeEtcd) -> None:
    m, local, _vx = manager(etcd)
    net = m.create_network(cluster_net(), 24)
    theirs = {"Container": "c" * 64, "Name": "web", "Aliases": ["w"], "IPv4": "10.244.7.2", "Host": OTHER}
    mine = {"Container": "d" * 64, "Name": "db", "Aliases": [], "IPv4": "10.244.3.2", "Host": ME}
    with m._lock:
        m._apply(f"{keys.PREFIX}ov/names/e1", theirs)
        m._apply(f"{keys.PREFIX}ov/names/e2", mine)
    assert local.changed.count(net.id) == 2
    assert m.records(net) == [(["web", "c" * 12, "w"], ["10.244.7.2"])]
    with m._lock:
        m._apply(f"{keys.PREFIX}ov/names/e1", None)
    assert m.records(net) == []


def test_our_names_are_published_once_and_withdrawn(etcd: FakeEtcd) -> None:
    m, _local, _vx = manager(etcd)
    net = m.create_network(cluster_net(), 24)
    ep = Endpoint("e" * 64, net.id, "f" * 64, "eth0", "veth1", "10.244.3.2", 24, "", "02:42:0a:f4:03:02", dns_names=["app", "f" * 12])
    m.endpoint_changed(net, ep, joined=True)
    m.endpoint_changed(net, ep, joined=True)  # re-indexed (a route moved): no second write
    before = len(etcd.writes)
    m._publish()
    key = f"{keys.PREFIX}ov/names/{ep.id}"
    assert etcd.kv[key][0] == {"Container": "f" * 64, "Name": "app", "Aliases": [], "IPv4": "10.244.3.2", "Host": ME}
    assert etcd.writes[before:] == [key]
    m.endpoint_changed(net, ep, joined=False)
    m._publish()
    assert key not in etcd.kv


def test_a_restarted_daemon_keeps_its_subnet_under_its_new_lease(etcd: FakeEtcd) -> None:
    m, _local, _vx = manager(etcd)
    net = m.create_network(cluster_net(), 24)
    old_lease = m.lease
    m2, local2, _vx2 = manager(etcd)  # the next qiaod on the same host: a new lease
    m2._full_read()
    again = local2.nets[net.id]
    assert again.subnet == net.subnet
    key = keys.subnet_key("ov", net.subnet or "")
    assert etcd.kv[key][1] is m2.lease and m2.lease is not old_lease


def test_an_expired_lease_is_taken_again_with_the_same_subnet(etcd: FakeEtcd) -> None:
    m, local, _vx = manager(etcd)
    net = m.create_network(cluster_net(), 24)
    key = keys.subnet_key("ov", net.subnet or "")
    m.lease.alive = False
    etcd.delete(key)  # expired while etcd was away (the watch was broken: nothing seen)
    m.lease = etcd.lease(15)
    m._full_read()
    assert etcd.kv[key][1] is m.lease and local.nets[net.id].subnet == net.subnet


def test_a_deleted_definition_drops_the_idle_local_side(etcd: FakeEtcd) -> None:
    m, local, _vx = manager(etcd)
    net = m.create_network(cluster_net(), 24)
    with m._lock:
        m._apply(f"{keys.PREFIX}ov/config", None)
    assert net.id not in local.nets and local.dropped == ["ov"]


def test_ten_hosts_creating_at_once_never_share_a_subnet(etcd: FakeEtcd) -> None:
    first, _l, _v = manager(etcd, "192.0.2.100")
    first.create_network(cluster_net(subnet="10.250.0.0/20"), 24)
    hosts = [manager(etcd, f"192.0.2.{i}")[0] for i in range(1, 11)]
    threads = [threading.Thread(target=h._full_read) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    leases = [v["PublicIP"] for k, (v, _l) in etcd.kv.items() if "/subnets/" in k]
    assert len(leases) == 11 and len(set(leases)) == 11


def test_a_restarted_daemon_publishes_the_names_it_holds_again(etcd: FakeEtcd) -> None:
    m, local, _vx = manager(etcd)
    net = m.create_network(cluster_net(), 24)
    ep = Endpoint("e" * 64, net.id, "f" * 64, "eth0", "veth1", "10.244.3.2", 24, "", "02:42:0a:f4:03:02", dns_names=["app", "f" * 12])
    local.endpoints[net.id] = [ep]
    m2 = OverlayManager(etcd, StubVxlan({}), ME)  # type: ignore[arg-type]
    m2.local = local
    m2._seed_names()  # what start() does first
    m2.lease = etcd.lease(15)
    m2._publish()
    assert etcd.kv[f"{keys.PREFIX}ov/names/{ep.id}"][1] is m2.lease
