"""The network registry and the drivers behind it, over in-memory kernel stubs and a real store."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import logging
import pathlib
import re
import threading
from ipaddress import IPv4Address, IPv4Network

import pytest

import qiao
from qiao.daemon import docker_json
from qiao.drivers import Drivers
from qiao.drivers.bridge import DEFAULT_BRIDGE, OPT_BRIDGE_NAME, OPT_ICC, OPT_MTU, bridge_of
from qiao.drivers.overlay import OverlayDriver
from qiao.engine import etcfiles, ids
from qiao.engine.engine import builtin_drivers
from qiao.engine.errors import Conflict, InvalidParameter, NotFound
from qiao.engine.events import Event, Events
from qiao.engine.models import Endpoint, Network, to_dict
from qiao.engine.networks import Networks
from qiao.engine.specs import EndpointSpec, NetworkSpec
from qiao.engine.steps import InjectedFault, Steps, Teardown, fault_at
from qiao.engine.store import KINDS, Store
from qiao.kernel.firewall import BridgeRules, EndpointGuard, StubFirewall
from qiao.kernel.host import Iface, StubHost
from qiao.kernel.vxlan import StubVxlan

SANDBOX = "/run/qiao-test/netns/c1"


@pytest.fixture(autouse=True)
def no_host_nameservers(monkeypatch):
    """The host's /etc/resolv.conf must not influence subnet choice."""
    monkeypatch.setattr(etcfiles, "host_nameservers", lambda *a: [])


_opened: list[Store] = []


@pytest.fixture(autouse=True)
def close_stores():
    yield
    while _opened:
        _opened.pop().close()


class FakeManager:
    """The overlay's cluster side, in memory: this host leases the first share
    of a network's range, as the real manager's ``_ensure_network`` would, and
    hands it to the engine through ``ensure``."""

    def __init__(self) -> None:
        self.local: Networks | None = None
        self.created: list[tuple[str, int]] = []
        self.removed: list[str] = []
        self.remote = [(["far", "f" * 12], ["10.244.9.2"])]

    def create_network(self, net: Network, subnet_len: int) -> Network:
        assert self.local is not None and net.cluster_subnet
        self.created.append((net.name, subnet_len))
        share = next(IPv4Network(net.cluster_subnet).subnets(new_prefix=subnet_len))
        vni = 4096 + len(self.created)
        state = {
            "bridge": "br-" + net.id[:12],
            "vni": vni,
            "vxlan": f"qv{vni}",
            "port": 8472,
            "vtep_mac": "0e:01:c0:00:02:0a",
            "local_ip": "192.0.2.10",
            "underlay": "eth0",
        }
        local = dataclasses.replace(
            net, created="", subnet=str(share), gateway=str(share.network_address + 1), mtu=1450, driver_state=state
        )
        return self.local.ensure(local)

    def remove_network(self, net: Network) -> None:
        assert self.local is not None
        self.removed.append(net.name)
        self.local.drop(net)

    def records(self, net: Network) -> list[tuple[list[str], list[str]]]:
        return self.remote


def make(
    tmp_path, host: StubHost | None = None, builtin: bool = True, manager: FakeManager | None = None, firewall: StubFirewall | None = None
) -> Networks:
    """Networks over the store in ``tmp_path`` (a second call reloads the same db), with the
    built-in drivers and the overlay (refusing without a ``manager``, as qiaod without a cluster store)."""
    store = Store(str(tmp_path / "qiao.db"))
    _opened.append(store)
    host = host or StubHost()
    fw = firewall or StubFirewall()
    overlay = OverlayDriver(host, fw, StubVxlan(host.links), manager) if manager else OverlayDriver(host, fw)
    nets = Networks(store, Drivers(builtin_drivers(host, fw) + [overlay]), fw, threading.RLock(), Events())
    if manager:
        manager.local = nets
    nets.load()
    if builtin:
        nets.ensure_builtin()
    return nets


@pytest.fixture
def nets(tmp_path) -> Networks:
    return make(tmp_path)


def kernel(nets: Networks) -> StubHost:
    """The StubHost the drivers program."""
    host = nets.drivers.get("bridge").host  # type: ignore[attr-defined]
    assert isinstance(host, StubHost)
    return host


def create(nets: Networks, name: str, **kw) -> Network:
    return nets.create(NetworkSpec(name, **kw))


def snapshot(nets: Networks) -> dict:
    return {
        "store": {kind: sorted(nets.store.load(kind), key=lambda r: r["id"]) for kind in KINDS},
        "links": copy.deepcopy(kernel(nets).links),
        "firewall": dict(nets.firewall.networks),
        "by_id": dict(nets.by_id),
        "pools": set(nets.pools),
        "pools6": set(nets.pools6),
    }


def first_free(nets: Networks, net_id: str) -> IPv4Address:
    """The address the pool would hand out next (allocated, then given back)."""
    pool = nets.pools[net_id]
    address = pool.allocate()
    pool.release(address)
    assert isinstance(address, IPv4Address)
    return address


def veths(host: StubHost) -> dict:
    return {n: link for n, link in host.links.items() if link["kind"] == "veth"}


def rules(nets: Networks, net: Network) -> BridgeRules:
    return nets.firewall.networks[bridge_of(net)]


# -- built-in networks -------------------------------------------------------


def test_ensure_builtin_creates_bridge_host_none(nets):
    by_name = {n.name: n for n in nets.by_id.values()}
    assert set(by_name) == {"bridge", "host", "none"}
    bridge = by_name["bridge"]
    assert (bridge.driver, bridge_of(bridge), bridge.mtu) == ("bridge", DEFAULT_BRIDGE, 1500)
    assert (bridge.subnet, bridge.gateway) == ("172.17.0.0/16", "172.17.0.1")
    assert bridge.options[OPT_BRIDGE_NAME] == "qiao0"
    assert bridge.options["com.docker.network.bridge.default_bridge"] == "true"
    assert (by_name["host"].driver, by_name["host"].subnet, by_name["host"].driver_state) == ("host", None, {})
    assert (by_name["none"].driver, by_name["none"].subnet) == ("null", None)
    assert all(n.builtin for n in by_name.values())
    assert {n.scope for n in by_name.values()} == {"local"}
    # tagged with its network, so a restart after a crash mid-create can find and remove it
    host = kernel(nets)
    assert host.links == {"qiao0": {"kind": "bridge", "address": "172.17.0.1/16", "mtu": 1500, "owner": f"net:{bridge.id}"}}
    assert host.forwarding and not host.forwarding6
    assert nets.firewall.networks == {"qiao0": BridgeRules("qiao0", "172.17.0.0/16", masquerade=True)}
    assert not bridge.user_defined and rules(nets, bridge).icc and not bridge.enable_ipv6
    assert {r["name"] for r in nets.store.load("networks")} == {"bridge", "host", "none"}
    assert first_free(nets, bridge.id) == IPv4Address("172.17.0.2")
    assert set(nets.pools) == {bridge.id}


def test_ensure_builtin_is_idempotent(nets):
    before = snapshot(nets)
    nets.ensure_builtin()
    assert snapshot(nets) == before


def test_ensure_builtin_skips_reserved_host_routes(tmp_path):
    host = StubHost(reserved=[IPv4Network("172.17.0.0/16"), IPv4Network("172.18.3.4/32")])
    nets = make(tmp_path, host)
    assert nets.get("bridge").subnet == "172.19.0.0/16"
    assert host.links["qiao0"]["address"] == "172.19.0.1/16"


def test_ensure_builtin_skips_nameservers(tmp_path, monkeypatch):
    monkeypatch.setattr(etcfiles, "host_nameservers", lambda *a: ["172.17.0.53", "fe80::1", "bogus"])
    nets = make(tmp_path)
    assert nets.get("bridge").subnet == "172.18.0.0/16"


def test_ensure_builtin_after_reload_does_not_duplicate(tmp_path):
    first = make(tmp_path)
    again = make(tmp_path)  # loads, then ensure_builtin
    assert sorted(n.name for n in again.by_id.values()) == ["bridge", "host", "none"]
    assert {n.id for n in again.by_id.values()} == set(first.by_id)
    assert len(again.store.load("networks")) == 3


# -- create ------------------------------------------------------------------


def test_create_picks_next_free_pool(nets):
    net = create(nets, "web")
    assert net.subnet == "172.18.0.0/16" and net.gateway == "172.18.0.1"
    assert bridge_of(net) == "br-" + net.id[:12]
    assert len(net.id) == 64
    assert kernel(nets).links[bridge_of(net)] == {"kind": "bridge", "address": "172.18.0.1/16", "mtu": 1500, "owner": f"net:{net.id}"}
    assert net.user_defined and not net.enable_ipv6 and net.subnet6 is None
    assert rules(nets, net) == BridgeRules(bridge_of(net), "172.18.0.0/16", masquerade=True)
    stored = {r["name"]: r for r in nets.store.load("networks")}
    assert stored["web"] == to_dict(net)
    assert first_free(nets, net.id) == IPv4Address("172.18.0.2")
    assert create(nets, "web2").subnet == "172.19.0.0/16"


def test_create_with_subnet_gateway_range_options(nets):
    net = create(
        nets,
        "custom",
        subnet="10.9.0.0/24",
        gateway="10.9.0.254",
        ip_range="10.9.0.16/28",
        options={OPT_BRIDGE_NAME: "br-custom", OPT_MTU: "1400"},
        labels={"a": "b"},
    )
    assert (net.subnet, net.gateway, net.ip_range, bridge_of(net), net.mtu) == (
        "10.9.0.0/24",
        "10.9.0.254",
        "10.9.0.16/28",
        "br-custom",
        1400,
    )
    assert net.labels == {"a": "b"}
    assert kernel(nets).links["br-custom"]["mtu"] == 1400
    assert first_free(nets, net.id) == IPv4Address("10.9.0.16")


def test_create_gateway_defaults_to_first_host(nets):
    net = create(nets, "n", subnet="10.9.0.0/24", gateway="10.9.0.9")
    assert first_free(nets, net.id) == IPv4Address("10.9.0.1")
    assert create(nets, "m", subnet="10.8.0.0/30").gateway == "10.8.0.1"


@pytest.mark.parametrize(
    "kwargs, masquerade",
    [({}, True), ({"internal": True}, False), ({"options": {"com.docker.network.bridge.enable_ip_masquerade": "false"}}, False)],
)
def test_create_masquerade(nets, kwargs, masquerade):
    net = create(nets, "n", **kwargs)
    assert rules(nets, net).masquerade is masquerade


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"name": "bridge"}, Conflict, "network with name bridge already exists"),
        ({"name": ""}, InvalidParameter, "a network name is required"),
        ({"name": "-bad"}, InvalidParameter, "invalid network name"),
        ({"name": "a b"}, InvalidParameter, "invalid network name"),
        ({"name": "web\n"}, InvalidParameter, "invalid network name"),
        ({"driver": "x"}, InvalidParameter, 'plugin "x" not found'),
        ({"driver": "overlay"}, InvalidParameter, "overlay networks need a cluster store"),
        ({"driver": "macvlan"}, InvalidParameter, 'plugin "macvlan" not found'),
        ({"driver": "host"}, InvalidParameter, 'only one instance of "host" network is allowed'),
        ({"driver": "null"}, InvalidParameter, 'only one instance of "null" network is allowed'),
        ({"subnet": "172.17.5.0/24"}, Conflict, "Pool overlaps with other one on this address space (172.17.0.0/16, network bridge)"),
        ({"subnet": "172.0.0.0/8"}, Conflict, "Pool overlaps"),
        ({"subnet": "10.0.0.1/24"}, InvalidParameter, "host bits set"),
        ({"subnet": "10.0.0.0/31"}, InvalidParameter, "too small"),
        ({"subnet": "fd00::/64"}, InvalidParameter, "the first subnet must be IPv4"),
        ({"subnet6": "fd00::/64"}, InvalidParameter, "an IPv6 --subnet needs --ipv6"),
        ({"enable_ipv6": True}, InvalidParameter, "--ipv6 needs an IPv6 --subnet"),
        ({"enable_ipv6": True, "subnet6": "fd00::1/64"}, InvalidParameter, "host bits set"),
        ({"enable_ipv6": True, "subnet6": "fd00::/127"}, InvalidParameter, "too small"),
        ({"enable_ipv6": True, "subnet6": "fd00::/64", "gateway6": "fd01::1"}, InvalidParameter, "no matching subnet for gateway fd01::1"),
        ({"enable_ipv6": True, "subnet6": "fd00::/64", "gateway6": "fd00::"}, InvalidParameter, "no matching subnet for gateway"),
        ({"enable_ipv6": True, "subnet6": "fd00::/64", "gateway6": "x"}, InvalidParameter, "invalid gateway"),
        ({"subnet": "10.2.0.0/24", "gateway": "10.3.0.1"}, InvalidParameter, "no matching subnet for gateway 10.3.0.1"),
        ({"subnet": "10.2.0.0/24", "gateway": "10.2.0.0"}, InvalidParameter, "no matching subnet for gateway"),
        ({"subnet": "10.2.0.0/24", "gateway": "10.2.0.255"}, InvalidParameter, "no matching subnet for gateway"),
        ({"subnet": "10.2.0.0/24", "gateway": "nope"}, InvalidParameter, "invalid gateway"),
        ({"subnet": "10.2.0.0/24", "ip_range": "10.2.1.0/28"}, InvalidParameter, "ip-range 10.2.1.0/28 is not inside subnet 10.2.0.0/24"),
        ({"subnet": "10.2.0.0/24", "ip_range": "10.0.0.0/8"}, InvalidParameter, "not inside subnet"),
        ({"gateway": "172.18.0.1"}, InvalidParameter, "need a --subnet"),
        ({"ip_range": "172.18.0.0/24"}, InvalidParameter, "need a --subnet"),
        ({"options": {OPT_BRIDGE_NAME: "this-name-is-too-long"}}, InvalidParameter, "invalid bridge name"),
        ({"options": {OPT_BRIDGE_NAME: "br 0"}}, InvalidParameter, "invalid bridge name"),
        ({"options": {OPT_BRIDGE_NAME: 'br";0'}}, InvalidParameter, "invalid bridge name"),
        ({"options": {OPT_BRIDGE_NAME: "qiao0"}}, Conflict, "bridge name qiao0 is already used"),
        ({"options": {OPT_MTU: "abc"}}, InvalidParameter, "invalid MTU 'abc'"),
        ({"options": {OPT_MTU: "67"}}, InvalidParameter, "invalid MTU 67"),
        ({"options": {OPT_MTU: "65536"}}, InvalidParameter, "invalid MTU 65536"),
        ({"options": {OPT_MTU: "\uff11\uff15\uff10\uff10"}}, InvalidParameter, "invalid MTU"),  # fullwidth digits: ASCII only
        ({"options": {OPT_ICC: "yes"}}, InvalidParameter, f"invalid value 'yes' for option {OPT_ICC}: expected true or false"),
        (
            {"options": {"com.docker.network.bridge.unknown": "1"}},
            InvalidParameter,
            "does not support option com.docker.network.bridge.unknown",
        ),
    ],
)
def test_create_validation_errors_change_nothing(nets, kwargs, error, fragment):
    kwargs = {"name": "n", **kwargs}
    before = snapshot(nets)
    with pytest.raises(error) as info:
        nets.create(NetworkSpec(**kwargs))
    assert fragment in str(info.value)
    assert snapshot(nets) == before


def test_create_accepts_foreign_options_and_mtu_bounds(nets):
    assert create(nets, "a", options={"my.option": "x", OPT_MTU: "68"}).mtu == 68
    assert create(nets, "b", options={OPT_MTU: "65535"}).mtu == 65535


def test_create_overlap_with_user_network(nets):
    create(nets, "a", subnet="10.1.0.0/16")
    with pytest.raises(Conflict, match=r"\(10\.1\.0\.0/16, network a\)"):
        create(nets, "b", subnet="10.1.2.0/24")
    # automatic choice skips user networks too
    create(nets, "c", subnet="172.18.0.0/16")
    assert create(nets, "d").subnet == "172.19.0.0/16"


@pytest.mark.parametrize("step", ["create-bridge", "enable-forwarding", "add-firewall", "store"])
def test_create_is_all_or_nothing(nets, step):
    before = snapshot(nets)
    nets.fault = fault_at(step)
    with pytest.raises(InjectedFault, match=step):
        create(nets, "web", subnet="10.7.0.0/24")
    assert snapshot(nets) == before
    nets.fault = None
    net = create(nets, "web", subnet="10.7.0.0/24")  # nothing left behind blocks a retry
    assert bridge_of(net) in kernel(nets).links


def test_create_failure_in_store_keeps_preexisting_bridge(nets):
    """A bridge that existed before (not created by this call) survives the rollback."""
    kernel(nets).links["br-mine"] = {"kind": "bridge", "address": "10.7.0.1/24", "mtu": 1500}
    before = snapshot(nets)
    nets.fault = fault_at("store")
    with pytest.raises(InjectedFault):
        create(nets, "web", subnet="10.7.0.0/24", options={OPT_BRIDGE_NAME: "br-mine"})
    assert snapshot(nets) == before


def test_create_real_store_failure_rolls_back(nets, monkeypatch):
    before = snapshot(nets)

    def broken_transaction():
        raise OSError("disk full")

    monkeypatch.setattr(nets.store, "transaction", broken_transaction)
    with pytest.raises(OSError, match="disk full"):
        create(nets, "web")
    monkeypatch.undo()
    assert snapshot(nets) == before


# -- lookup ------------------------------------------------------------------


def test_get_by_id_name_prefix(nets):
    net = create(nets, "web")
    assert nets.get(net.id) is net
    assert nets.get("web") is net
    assert nets.get(net.id[:5]) is net
    with pytest.raises(NotFound, match="network nope not found"):
        nets.get("nope")
    with pytest.raises(NotFound):
        nets.get("")


def test_get_ambiguous_prefix(nets, monkeypatch):
    made = iter(["abc1" + "0" * 60, "abc2" + "0" * 60])
    monkeypatch.setattr(ids, "new_id", lambda: next(made))
    create(nets, "one")
    create(nets, "two")
    with pytest.raises(NotFound, match="ambiguous"):
        nets.get("abc")
    assert nets.get("abc2").name == "two"


# -- remove / prune ----------------------------------------------------------


@pytest.mark.parametrize("name", ["bridge", "host", "none"])
def test_remove_builtin_refused(nets, name):
    before = snapshot(nets)
    with pytest.raises(Conflict, match="pre-defined network"):
        nets.remove(name)
    assert snapshot(nets) == before


def join_and_adopt(nets: Networks, net: Network, owner: str = "c" * 64, ifname: str = "eth0", **spec) -> Endpoint:
    with Steps() as steps:
        ep = nets.join(steps, net, SANDBOX, ifname, owner, EndpointSpec(**spec))
    nets.adopt(ep)
    return ep


def leave(nets: Networks, ep: Endpoint) -> list[str]:
    """Leave, best effort; returns the steps that failed."""
    teardown = Teardown("test leave")
    nets.leave(ep, teardown)
    return teardown.errors


def test_remove_with_endpoints_refused_then_allowed(nets):
    net = create(nets, "web")
    ep = join_and_adopt(nets, net)
    before = snapshot(nets)
    with pytest.raises(Conflict, match="has active endpoints"):
        nets.remove("web")
    assert snapshot(nets) == before
    assert leave(nets, ep) == []
    nets.remove("web")
    assert net.id not in nets.by_id and net.id not in nets.pools
    assert bridge_of(net) not in kernel(nets).links
    assert bridge_of(net) not in nets.firewall.networks
    assert "web" not in {r["name"] for r in nets.store.load("networks")}


def test_remove_unknown(nets):
    with pytest.raises(NotFound):
        nets.remove("nope")


@pytest.mark.parametrize("step", ["del-firewall", "delete-bridge"])
def test_remove_is_complete_when_a_kernel_step_fails(nets, step, caplog):
    """Teardown never stops half-way: a failing step is logged, the next ones run, the record goes."""
    net = create(nets, "web")
    nets.fault = fault_at(step)
    with caplog.at_level(logging.WARNING, logger="qiao.steps"):
        nets.remove("web")
    assert net.id not in nets.by_id and net.id not in nets.pools
    assert "web" not in {r["name"] for r in nets.store.load("networks")}
    assert (bridge_of(net) in kernel(nets).links) is (step == "delete-bridge")
    assert (bridge_of(net) in nets.firewall.networks) is (step == "del-firewall")
    assert f"{step}: injected fault" in caplog.text
    nets.fault = None
    assert create(nets, "web").name == "web"  # the name is free again


def test_remove_succeeds_when_the_host_cannot_delete_the_bridge(nets, monkeypatch, caplog):
    net = create(nets, "web", subnet="10.7.0.0/24")
    seen = []
    nets.events.subscribe(lambda e: seen.append((e.kind, e.action, e.network.id)))

    def broken(name):
        raise OSError(16, f"Device or resource busy: {name}")

    monkeypatch.setattr(kernel(nets), "delete_link", broken)
    with caplog.at_level(logging.WARNING, logger="qiao.steps"):
        nets.remove("web")
    assert net.id not in nets.by_id and net.id not in nets.pools and net.id not in nets.by_network
    assert "web" not in {r["name"] for r in nets.store.load("networks")}
    assert bridge_of(net) not in nets.firewall.networks  # the step after the failing one ran too
    assert seen == [("network", "delete", net.id)]
    assert "delete-bridge" in caplog.text and "Device or resource busy" in caplog.text


def test_prune(nets):
    a = create(nets, "a")
    b = create(nets, "b")
    join_and_adopt(nets, b)
    assert nets.prune() == ["a"]
    assert sorted(n.name for n in nets.by_id.values()) == ["b", "bridge", "host", "none"]
    assert bridge_of(a) not in kernel(nets).links and bridge_of(b) in kernel(nets).links
    assert nets.prune() == []


# -- endpoints ---------------------------------------------------------------


def test_join_plugs_veth_into_bridge_and_sandbox(nets):
    net = nets.get("bridge")
    ep = join_and_adopt(nets, net, "c" * 64)
    assert (ep.address, ep.prefixlen, ep.gateway, ep.mac, ep.ifname) == ("172.17.0.2", 16, "172.17.0.1", "02:42:ac:11:00:02", "eth0")
    assert ep.network_id == net.id and ep.owner == "c" * 64 and ep.sandbox == SANDBOX
    assert (ep.aliases, ep.address6, ep.prefixlen6, ep.gateway6, ep.dns_names) == ([], "", 0, "", [])
    link = kernel(nets).links[ep.host_ifname]
    assert link == {"kind": "veth", "netns": SANDBOX, "peer": "eth0", "mac": ep.mac, "owner": ep.id, "master": "qiao0", "isolated": False}
    assert kernel(nets).sandboxes[SANDBOX] == {"eth0": Iface("eth0", "172.17.0.2", 16, "172.17.0.1")}
    assert nets.endpoints_of(net.id) == [ep]
    second = join_and_adopt(nets, net, "d" * 64)
    assert second.address == "172.17.0.3"


def test_join_keeps_dns_names(nets):
    with Steps() as steps:
        ep = nets.join(steps, create(nets, "web"), SANDBOX, "eth0", "c" * 64, dns_names=["box", "c" * 12])
    assert ep.dns_names == ["box", "c" * 12]


def test_join_guards_the_port_with_the_endpoints_addresses_and_leave_unguards(nets, dual):
    v4 = join_and_adopt(nets, nets.get("bridge"))
    v6 = join_and_adopt(nets, dual, ifname="eth1")
    assert nets.firewall.guards == {
        v4.host_ifname: EndpointGuard(v4.host_ifname, ("172.17.0.2",)),
        v6.host_ifname: EndpointGuard(v6.host_ifname, ("10.8.0.2", "fd00:8::2")),
    }
    leave(nets, v4)
    leave(nets, v6)
    assert nets.firewall.guards == {}


def test_leave_returns_address_and_removes_veth(nets):
    net = nets.get("bridge")
    ep = join_and_adopt(nets, net)
    assert leave(nets, ep) == []
    assert veths(kernel(nets)) == {}
    assert nets.endpoints_of(net.id) == []
    assert first_free(nets, net.id) == IPv4Address("172.17.0.2")
    assert leave(nets, ep) == []  # best effort: twice is harmless


def test_leave_is_complete_when_the_veth_cannot_be_deleted(nets, monkeypatch):
    net = nets.get("bridge")
    ep = join_and_adopt(nets, net)

    def broken(name):
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(kernel(nets), "retire_link", broken)
    assert leave(nets, ep) == ["delete-veth: [Errno 16] Device or resource busy"]
    assert nets.endpoints_of(net.id) == [] and ep.id not in nets.endpoints
    assert first_free(nets, net.id) == IPv4Address("172.17.0.2")


@pytest.mark.parametrize("step", ["allocate-address", "create-veth", "add-guards", "configure-sandbox"])
def test_join_is_all_or_nothing(nets, step):
    net = nets.get("bridge")
    first = join_and_adopt(nets, net, "a" * 64)  # holds .2
    links_before = copy.deepcopy(kernel(nets).links)
    with pytest.raises(InjectedFault, match=step), Steps(fault_at(step)) as steps:
        nets.join(steps, net, SANDBOX, "eth0", "b" * 64)
    assert kernel(nets).links == links_before
    assert list(nets.firewall.guards) == [first.host_ifname]
    assert len(veths(kernel(nets))) == 1
    assert nets.pools[net.id].allocate() == IPv4Address("172.17.0.3")


def test_join_failure_of_kernel_call_rolls_back(nets, monkeypatch):
    net = nets.get("bridge")

    def broken(*args):
        raise OSError("no such device")

    monkeypatch.setattr(kernel(nets), "configure_sandbox", broken)
    with pytest.raises(OSError), Steps() as steps:
        nets.join(steps, net, SANDBOX, "eth0", "b" * 64)
    assert veths(kernel(nets)) == {}
    assert first_free(nets, net.id) == IPv4Address("172.17.0.2")


def test_join_exhausted_pool(nets):
    net = create(nets, "tiny", subnet="10.3.0.0/30")
    join_and_adopt(nets, net)
    with pytest.raises(Conflict, match="no available IPv4 addresses"), Steps() as steps:
        nets.join(steps, net, SANDBOX, "eth0", "b" * 64)
    assert len(veths(kernel(nets))) == 1


# -- reload ------------------------------------------------------------------


def store_endpoint(nets: Networks, ep) -> None:
    with nets.store.transaction() as tx:
        tx.put("endpoints", to_dict(ep))


def test_reload_restores_networks_and_pools(tmp_path):
    nets = make(tmp_path)
    web = create(nets, "web", subnet="10.5.0.0/24", ip_range="10.5.0.0/29")
    bridge = nets.get("bridge")
    eps = [join_and_adopt(nets, web, f"{i}" * 64) for i in range(3)]  # .2 .3 .4
    store_endpoint(nets, eps[0])
    store_endpoint(nets, eps[2])
    store_endpoint(nets, join_and_adopt(nets, bridge, "9" * 64))  # 172.17.0.2

    again = make(tmp_path, StubHost())
    assert {n.id: to_dict(n) for n in again.by_id.values()} == {n.id: to_dict(n) for n in nets.by_id.values()}
    assert set(again.endpoints) == {eps[0].id, eps[2].id} | {e.id for e in nets.endpoints_of(bridge.id)}
    assert [str(again.pools[web.id].allocate()) for _ in range(4)] == ["10.5.0.3", "10.5.0.5", "10.5.0.6", "10.5.0.7"]
    with pytest.raises(Conflict):
        again.pools[web.id].allocate()
    assert again.pools[bridge.id].allocate() == IPv4Address("172.17.0.3")
    assert set(again.pools) == {web.id, bridge.id}


def test_reload_then_restore_kernel(tmp_path):
    nets = make(tmp_path)
    web = create(nets, "web", subnet="10.5.0.0/24", internal=True)
    host = StubHost()
    again = make(tmp_path, host, builtin=False)
    again.restore_kernel([])
    assert set(host.links) == {"qiao0", bridge_of(web)}
    assert host.links[bridge_of(web)]["address"] == "10.5.0.1/24"
    assert host.forwarding
    assert again.firewall.resets == 1
    assert again.firewall.guards == {}
    assert again.firewall.networks == {
        "qiao0": BridgeRules("qiao0", "172.17.0.0/16", True),
        bridge_of(web): BridgeRules(bridge_of(web), "10.5.0.0/24", masquerade=False, internal=True),
    }


def test_restore_kernel_guards_every_stored_endpoint(tmp_path):
    nets = make(tmp_path)
    ep = join_and_adopt(nets, nets.get("bridge"))
    store_endpoint(nets, ep)
    again = make(tmp_path, StubHost(), builtin=False)
    again.restore_kernel([])
    assert again.firewall.guards == {ep.host_ifname: EndpointGuard(ep.host_ifname, (ep.address,))}


def test_describe_uses_docker_json(nets):
    net = nets.get("bridge")
    ep = join_and_adopt(nets, net, "c" * 64)
    doc = docker_json.network(net, nets.endpoints_of(net.id), {})
    assert doc["Name"] == "bridge"
    assert doc["Containers"]["c" * 64]["IPv4Address"] == f"{ep.address}/16"


# -- IPv6, static settings, isolation, notifications ---------------------------


@pytest.fixture
def dual(nets):
    return create(nets, "dual", subnet="10.8.0.0/24", enable_ipv6=True, subnet6="fd00:8::/64")


def test_create_dual_stack(nets, monkeypatch):
    calls = []
    host = kernel(nets)
    real = host.ensure_bridge
    monkeypatch.setattr(host, "ensure_bridge", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    net = create(nets, "dual", subnet="10.8.0.0/24", enable_ipv6=True, subnet6="fd00:8::/64")
    assert (net.enable_ipv6, net.subnet6, net.gateway6) == (True, "fd00:8::/64", "fd00:8::1")
    assert calls == [(bridge_of(net), "10.8.0.1", 24, 1500, ("fd00:8::1", 64))]
    assert host.forwarding6
    assert rules(nets, net) == BridgeRules(bridge_of(net), "10.8.0.0/24", masquerade=True, subnet6="fd00:8::/64")
    assert str(nets.pools6[net.id].allocate()) == "fd00:8::2"
    doc = docker_json.network(net, nets.endpoints_of(net.id), {})
    assert doc["EnableIPv6"] is True
    assert doc["IPAM"]["Config"] == [{"Subnet": "10.8.0.0/24", "Gateway": "10.8.0.1"}, {"Subnet": "fd00:8::/64", "Gateway": "fd00:8::1"}]


def test_create_dual_stack_custom_gateway_and_normalised_text(nets):
    net = create(nets, "dual", subnet="10.8.0.0/24", enable_ipv6=True, subnet6="FD00:8:0::/64", gateway6="fd00:8::fe")
    assert (net.subnet6, net.gateway6) == ("fd00:8::/64", "fd00:8::fe")
    assert str(nets.pools6[net.id].allocate()) == "fd00:8::1"


def test_create_ipv6_overlap(nets, dual):
    before = snapshot(nets)
    with pytest.raises(Conflict, match=r"Pool overlaps .*\(fd00:8::/64, network dual\)"):
        create(nets, "other", enable_ipv6=True, subnet6="fd00:8::/48")
    assert snapshot(nets) == before


def test_create_ipv4_only_network_has_no_v6_pool(nets):
    net = create(nets, "web")
    assert net.id not in nets.pools6
    assert not kernel(nets).forwarding6  # IPv6 forwarding only with an IPv6 network, as Docker


def record(nets: Networks) -> list[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []

    def listener(e: Event) -> None:
        seen.append((e.kind, e.action, e.network.id))

    nets.events.subscribe(listener)
    return seen


def test_create_and_remove_notify(nets):
    seen = record(nets)
    net = create(nets, "web")
    nets.remove("web")
    other = create(nets, "other")
    assert nets.prune() == ["other"]
    assert seen == [
        ("network", "create", net.id),
        ("network", "delete", net.id),
        ("network", "create", other.id),
        ("network", "delete", other.id),
    ]


def test_failed_create_does_not_notify(nets):
    seen = record(nets)
    nets.fault = fault_at("store")
    with pytest.raises(InjectedFault):
        create(nets, "web")
    assert seen == []


def test_join_and_leave_notify(nets):
    net = create(nets, "web")
    seen = record(nets)
    with Steps() as steps:
        ep = nets.join(steps, net, SANDBOX, "eth0", "c" * 64)
    assert seen == []  # not before the caller stored it and adopts it
    nets.adopt(ep)
    leave(nets, ep)
    assert seen == [("endpoint", "join", net.id), ("endpoint", "leave", net.id)]


def test_join_dual_stack(nets, dual):
    ep = join_and_adopt(nets, dual)
    assert (ep.address, ep.prefixlen, ep.gateway) == ("10.8.0.2", 24, "10.8.0.1")
    assert (ep.address6, ep.prefixlen6, ep.gateway6) == ("fd00:8::2", 64, "fd00:8::1")
    assert kernel(nets).sandboxes[SANDBOX]["eth0"] == Iface("eth0", "10.8.0.2", 24, "10.8.0.1", "fd00:8::2", 64, "fd00:8::1")
    leave(nets, ep)
    assert str(nets.pools6[dual.id].allocate()) == "fd00:8::2"


def test_join_static_addresses_mac_and_aliases(nets, dual):
    with Steps() as steps:
        spec = EndpointSpec(aliases=("db",), ip="10.8.0.50", ip6="fd00:8::50", mac="02:00:00:00:00:50")
        ep = nets.join(steps, dual, SANDBOX, "eth0", "c" * 64, spec)
    assert (ep.address, ep.address6, ep.mac, ep.aliases) == ("10.8.0.50", "fd00:8::50", "02:00:00:00:00:50", ["db"])
    assert kernel(nets).links[ep.host_ifname]["mac"] == "02:00:00:00:00:50"
    assert str(nets.pools[dual.id].allocate()) == "10.8.0.2"  # dynamic allocation goes around it
    with pytest.raises(Conflict, match="10.8.0.50 is already in use"), Steps() as steps:
        nets.join(steps, dual, SANDBOX, "eth1", "d" * 64, EndpointSpec(ip="10.8.0.50"))
    with pytest.raises(Conflict, match="fd00:8::50 is already in use"), Steps() as steps:
        nets.join(steps, dual, SANDBOX, "eth1", "d" * 64, EndpointSpec(ip6="fd00:8::50"))
    assert str(nets.pools[dual.id].allocate()) == "10.8.0.3"  # the failed joins gave their IPv4 address back


def test_ip6_on_ipv4_only_network_refused(nets):
    """Checked before anything is made (``check_endpoint``, called at create and connect)."""
    net = create(nets, "web", subnet="10.9.0.0/24")
    before = snapshot(nets)
    with pytest.raises(InvalidParameter, match=r"invalid IPv6 address fd00::5: not in the subnet of network web \(none\)"):
        nets.check_endpoint(net, EndpointSpec(ip6="fd00::5"))
    assert snapshot(nets) == before
    assert first_free(nets, net.id) == IPv4Address("10.9.0.2")
    assert veths(kernel(nets)) == {}


@pytest.mark.parametrize("step", ["allocate-address6", "create-veth", "add-guards", "configure-sandbox"])
def test_join_dual_stack_is_all_or_nothing(nets, dual, step):
    with pytest.raises(InjectedFault), Steps(fault_at(step)) as steps:
        nets.join(steps, dual, SANDBOX, "eth0", "c" * 64, EndpointSpec(ip="10.8.0.9", ip6="fd00:8::9"))
    assert veths(kernel(nets)) == {} and nets.firewall.guards == {}
    nets.pools[dual.id].reserve(IPv4Address("10.8.0.9"))  # both given back
    nets.pools6[dual.id].reserve(ipaddress.ip_address("fd00:8::9"))


def test_join_without_default_route(nets, dual):
    with Steps() as steps:
        ep = nets.join(steps, dual, SANDBOX, "eth1", "c" * 64, default_route=False)
    assert (ep.gateway, ep.gateway6) == ("", "")
    assert kernel(nets).sandboxes[SANDBOX]["eth1"] == Iface("eth1", "10.8.0.2", 24, "", "fd00:8::2", 64, "")


def test_join_internal_network_has_no_default_route(nets):
    net = create(nets, "secret", subnet="10.7.0.0/24", internal=True, enable_ipv6=True, subnet6="fd00:7::/64")
    ep = join_and_adopt(nets, net)
    assert (ep.gateway, ep.gateway6, ep.address6) == ("", "", "fd00:7::2")
    assert rules(nets, net) == BridgeRules(bridge_of(net), "10.7.0.0/24", masquerade=False, internal=True, subnet6="fd00:7::/64")


@pytest.mark.parametrize("br_netfilter, isolated", [(False, True), (True, False)])
def test_join_icc_false(nets, monkeypatch, br_netfilter, isolated):
    """icc=false: bridge port isolation, unless bridged traffic passes netfilter (then the forward chain drops it)."""
    monkeypatch.setattr(kernel(nets), "bridge_netfilter", lambda: br_netfilter)
    net = create(nets, "quiet", options={OPT_ICC: "false"})
    assert rules(nets, net).icc is False
    ep = join_and_adopt(nets, net)
    assert kernel(nets).links[ep.host_ifname]["isolated"] is isolated


def test_by_network_index(nets, dual):
    bridge = nets.get("bridge")
    a, b = join_and_adopt(nets, dual, "a" * 64), join_and_adopt(nets, dual, "b" * 64)
    c = join_and_adopt(nets, bridge, "c" * 64)
    assert nets.by_network == {dual.id: {a.id: a, b.id: b}, bridge.id: {c.id: c}}
    assert nets.endpoints_of(dual.id) == [a, b] and nets.endpoints_of("nope") == []
    leave(nets, a)
    assert nets.endpoints_of(dual.id) == [b]
    leave(nets, b)
    nets.remove("dual")
    assert dual.id not in nets.by_network and dual.id not in nets.pools6


def test_reload_restores_ipv6_and_static_addresses(tmp_path):
    nets = make(tmp_path)
    dual = create(nets, "dual", subnet="10.8.0.0/24", ip_range="10.8.0.128/25", enable_ipv6=True, subnet6="fd00:8::/64")
    with Steps() as steps:
        ep = nets.join(steps, dual, SANDBOX, "eth0", "c" * 64, EndpointSpec(aliases=("db",), ip="10.8.0.5"))  # outside the range
    store_endpoint(nets, ep)
    again = make(tmp_path, StubHost())
    assert again.endpoints[ep.id] == ep
    assert again.by_network == {dual.id: {ep.id: ep}}
    with pytest.raises(Conflict, match="already in use"):
        again.pools[dual.id].reserve(IPv4Address("10.8.0.5"))
    assert str(again.pools6[dual.id].allocate()) == "fd00:8::3"


def test_restore_kernel_enables_ipv6_forwarding_only_with_an_ipv6_network(tmp_path):
    make(tmp_path)
    host = StubHost()
    again = make(tmp_path, host, builtin=False)
    again.restore_kernel([])
    assert host.forwarding and not host.forwarding6
    create(again, "dual", subnet="10.8.0.0/24", enable_ipv6=True, subnet6="fd00:8::/64")
    host = StubHost()
    third = make(tmp_path, host, builtin=False)
    third.restore_kernel([])
    assert host.forwarding6
    assert rules(third, third.get("dual")).subnet6 == "fd00:8::/64"


# -- what the redesign promises: refusals before anything changes ---------------------


@pytest.mark.parametrize(
    "option",
    [
        "com.docker.network.bridge.unknown",
        "com.docker.network.bridge.gateway_mode_ipv4",
        "com.docker.network.bridge.inhibit_ipv4",
        "com.docker.network.bridge.trusted_host_interfaces",
        "com.docker.network.container_iface_prefix",
        "com.docker.network.driver.mtux",
    ],
)
def test_bridge_refuses_every_option_it_does_not_implement_by_name(nets, option):
    before = snapshot(nets)
    with pytest.raises(InvalidParameter, match=f"^driver bridge does not support option {re.escape(option)}$"):
        create(nets, "n", options={OPT_MTU: "1400", option: "1"})
    assert snapshot(nets) == before


@pytest.fixture
def manager() -> FakeManager:
    return FakeManager()


@pytest.fixture
def cluster(tmp_path, manager) -> Networks:
    """Networks whose overlay driver has a (fake) cluster store."""
    return make(tmp_path, manager=manager)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"internal": True}, "driver overlay does not support --internal"),
        ({"gateway": "10.244.0.1"}, "driver overlay does not support --gateway"),
        ({"ip_range": "10.244.0.0/24"}, "driver overlay does not support --ip-range"),
        ({"enable_ipv6": True, "subnet6": "fd00:44::/64"}, "driver overlay does not support --ipv6"),
        ({"subnet6": "fd00:44::/64"}, "driver overlay does not support --ipv6"),
        ({"options": {"foo": "1"}}, "driver overlay does not support option foo"),
        ({"options": {OPT_BRIDGE_NAME: "br-o"}}, f"driver overlay does not support option {OPT_BRIDGE_NAME}"),
        ({"options": {OPT_MTU: "1400"}}, f"driver overlay does not support option {OPT_MTU}"),
        ({"subnet": ""}, "an overlay network needs --subnet"),
        ({"subnet": "fd00:44::/48"}, "an overlay's range is IPv4"),
        ({"subnet": "172.16.0.0/12"}, "Pool overlaps with other one on this address space (172.17.0.0/16, network bridge)"),
        ({"subnet": "127.0.0.0/16"}, "overlaps the reserved range 127.0.0.0/8"),
        ({"options": {"host_subnet_len": "x"}}, "invalid host_subnet_len 'x'"),
        ({"options": {"host_subnet_len": "16"}}, "invalid host_subnet_len 16: must be longer than /16 and at most /30"),
        ({"options": {"host_subnet_len": "31"}}, "invalid host_subnet_len 31"),
    ],
)
def test_overlay_refusals_reach_neither_the_cluster_nor_the_kernel(cluster, manager, kwargs, fragment):
    before = snapshot(cluster)
    with pytest.raises((InvalidParameter, Conflict)) as info:
        create(cluster, "o", driver="overlay", **{"subnet": "10.244.0.0/16", **kwargs})
    assert fragment in str(info.value)
    assert snapshot(cluster) == before and manager.created == []


def test_overlay_create_remove_through_the_cluster(cluster, manager):
    seen = record(cluster)
    net = create(cluster, "o", driver="overlay", subnet="10.244.0.0/16", options={"host_subnet_len": "26"})
    assert manager.created == [("o", 26)]
    assert (net.scope, net.cluster_subnet, net.subnet, net.gateway, net.attachable) == (
        "global",
        "10.244.0.0/16",
        "10.244.0.0/26",
        "10.244.0.1",
        True,
    )
    host = kernel(cluster)
    vxlan = net.driver_state["vxlan"]
    assert host.links[bridge_of(net)]["address"] == "10.244.0.1/26"
    assert host.links[vxlan]["kind"] == "vxlan" and host.links[vxlan]["address"] == "10.244.0.0"
    assert rules(cluster, net) == BridgeRules(bridge_of(net), "10.244.0.0/26", masquerade=True, member_dev=vxlan, cluster="10.244.0.0/16")
    assert cluster.driver(net).dns_records(net) == manager.remote
    assert seen == [("network", "create", net.id)]
    assert docker_json.network(net, [], {})["Scope"] == "global"

    ep = join_and_adopt(cluster, net)
    assert (ep.address, host.links[ep.host_ifname]["master"]) == ("10.244.0.2", bridge_of(net))
    leave(cluster, ep)
    assert cluster.prune() == []  # global networks are removed with `network rm` only
    cluster.remove("o")
    assert manager.removed == ["o"]
    assert net.id not in cluster.by_id and bridge_of(net) not in host.links and vxlan not in host.links
    assert bridge_of(net) not in cluster.firewall.networks


def test_overlay_restore_recreates_bridge_and_vxlan(tmp_path, manager):
    net = create(make(tmp_path, manager=manager), "o", driver="overlay", subnet="10.244.0.0/16")
    host = StubHost()
    again = make(tmp_path, host, builtin=False, manager=FakeManager())
    again.restore_kernel([])
    assert host.links[bridge_of(net)]["address"] == "10.244.0.1/24"
    assert host.links[net.driver_state["vxlan"]]["vni"] == net.driver_state["vni"]
    assert again.firewall.networks[bridge_of(net)].member_dev == net.driver_state["vxlan"]


def test_overlay_remove_without_cluster_store_refused(tmp_path, manager):
    create(make(tmp_path, manager=manager), "o", driver="overlay", subnet="10.244.0.0/16")
    again = make(tmp_path, builtin=False)  # qiaod restarted without --cluster-store
    before = snapshot(again)
    with pytest.raises(InvalidParameter, match="removing it needs the cluster store"):
        again.remove("o")
    assert snapshot(again) == before


@pytest.mark.parametrize(
    "subnet, reserved",
    [
        ("127.0.0.0/24", "127.0.0.0/8"),
        ("127.255.0.0/16", "127.0.0.0/8"),
        ("96.0.0.0/3", "127.0.0.0/8"),  # contains it
        ("0.0.0.0/16", "0.0.0.0/8"),
        ("169.254.0.0/24", "169.254.0.0/16"),
        ("169.254.128.0/17", "169.254.0.0/16"),
        ("224.0.0.0/24", "224.0.0.0/4"),
        ("239.255.0.0/16", "224.0.0.0/4"),
        ("240.0.0.0/24", "240.0.0.0/4"),
        ("255.255.255.0/24", "240.0.0.0/4"),
    ],
)
def test_reserved_subnets_refused(nets, subnet, reserved):
    before = snapshot(nets)
    with pytest.raises(InvalidParameter, match=f"invalid subnet {re.escape(subnet)}: it overlaps the reserved range {re.escape(reserved)}"):
        create(nets, "n", subnet=subnet)
    assert snapshot(nets) == before


@pytest.mark.parametrize("subnet6, reserved", [("fe80::/64", "fe80::/10"), ("ff02::/64", "ff00::/8")])
def test_reserved_ipv6_subnets_refused(nets, subnet6, reserved):
    before = snapshot(nets)
    with pytest.raises(InvalidParameter, match=f"overlaps the reserved range {reserved}"):
        create(nets, "n", subnet="10.8.0.0/24", enable_ipv6=True, subnet6=subnet6)
    assert snapshot(nets) == before


def test_subnet_containing_a_host_address_refused(tmp_path, manager):
    host = StubHost()
    host.host_addresses = [IPv4Address("10.20.0.5"), ipaddress.ip_address("2001:db8::5")]
    nets = make(tmp_path, host, manager=manager)
    before = snapshot(nets)
    with pytest.raises(InvalidParameter, match=r"invalid subnet 10\.20\.0\.0/24: it contains 10\.20\.0\.5, an address of this host"):
        create(nets, "n", subnet="10.20.0.0/24")
    with pytest.raises(InvalidParameter, match="it contains 10.20.0.5, an address of this host"):
        create(nets, "n", subnet="10.0.0.0/8")
    with pytest.raises(InvalidParameter, match="it contains 10.20.0.5"):
        create(nets, "o", driver="overlay", subnet="10.20.0.0/16")
    assert snapshot(nets) == before and manager.created == []
    assert create(nets, "n", subnet="10.21.0.0/24").subnet == "10.21.0.0/24"  # next door is fine


@pytest.mark.parametrize(
    "mac, fragment",
    [
        ("01:00:5e:00:00:01", "a multicast address"),
        ("33:33:00:00:00:01", "a multicast address"),
        ("ff:ff:ff:ff:ff:ff", "a multicast address"),
        ("03:42:ac:11:00:02", "a multicast address"),
        ("00:00:00:00:00:00", "all zero"),
    ],
)
def test_check_endpoint_refuses_multicast_and_zero_macs(nets, mac, fragment):
    with pytest.raises(InvalidParameter, match=f"invalid MAC address .*{fragment}"):
        nets.check_endpoint(create(nets, "web"), EndpointSpec(mac=mac))


@pytest.mark.parametrize("mac", ["02:42:ac:11:00:02", "02:42:AB:CD:EF:01", "00:16:3e:00:00:01"])
def test_check_endpoint_takes_unicast_macs(nets, mac):
    nets.check_endpoint(create(nets, "web"), EndpointSpec(mac=mac))


# -- no code outside the drivers branches on a driver's name ----------------------------

# A driver's name compared with a literal, a literal tuple of names, or the overlay named at all.
DRIVER_NAME_BRANCH = re.compile(
    r"""driver\s*(==|!=)\s*["']"""
    r"""|["'][\w-]+["']\s*(==|!=)\s*[\w.()]*driver\b"""
    r"""|^(?!\s*for\b).*driver\s+(not\s+)?in\s*[(\[{]"""  # (not a loop over (name, driver) pairs)
    r"""|["']overlay["']"""
)


@pytest.mark.parametrize(
    "line",
    [
        'if net.driver == "overlay":',
        "if n.driver != 'bridge':",
        'if "bridge" == net.driver:',
        'if driver in ("bridge", "x"):',
        'DRIVER = "overlay"',
    ],
)
def test_driver_name_pattern_catches_branches(line):
    assert DRIVER_NAME_BRANCH.search(line)


@pytest.mark.parametrize(
    "line",
    [
        "return [n for n in self.by_id.values() if n.driver == driver]",  # the registry's lookup, by a name given
        'for name, driver in (("host", "host"), ("none", "null")):',
    ],
)
def test_driver_name_pattern_spares_lookups(line):
    assert not DRIVER_NAME_BRANCH.search(line)


def test_no_code_outside_the_drivers_branches_on_a_driver_name():
    src = pathlib.Path(qiao.__file__).parent
    drivers = src / "drivers"
    found = []
    for path in sorted(src.rglob("*.py")):
        if drivers in path.parents:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if DRIVER_NAME_BRANCH.search(line):
                found.append(f"{path.relative_to(src.parent)}:{number}: {line.strip()}")
    assert len(list(src.rglob("*.py"))) > 20  # the walk found the package
    assert found == []
