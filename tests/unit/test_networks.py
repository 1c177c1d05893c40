"""The bridge driver's logic over in-memory kernel stubs and a real store."""

from __future__ import annotations

import copy
import ipaddress
import threading
from ipaddress import IPv4Address, IPv4Network

import pytest

from qiao.engine import etcfiles, ids
from qiao.engine.errors import Conflict, InvalidParameter, NotFound
from qiao.engine.models import to_dict
from qiao.engine.networks import DEFAULT_BRIDGE, OPT_BRIDGE_NAME, OPT_MTU, Networks
from qiao.engine.steps import InjectedFault, Steps, fault_at
from qiao.engine.store import KINDS, Store
from qiao.kernel.firewall import BridgeRules, EndpointGuard, StubFirewall
from qiao.kernel.host import Iface, StubHost

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


def make(tmp_path, host: StubHost | None = None, builtin: bool = True) -> Networks:
    """Networks over the store in ``tmp_path`` (a second call reloads the same db)."""
    store = Store(str(tmp_path / "qiao.db"))
    _opened.append(store)
    nets = Networks(store, host or StubHost(), StubFirewall(), threading.RLock())
    nets.load()
    if builtin:
        nets.ensure_builtin()
    return nets


@pytest.fixture
def nets(tmp_path) -> Networks:
    return make(tmp_path)


def snapshot(nets: Networks) -> dict:
    return {
        "store": {kind: sorted(nets.store.load(kind), key=lambda r: r["id"]) for kind in KINDS},
        "links": copy.deepcopy(nets.host.links),
        "firewall": dict(nets.firewall.networks),
        "by_id": dict(nets.by_id),
        "pools": set(nets.pools),
    }


def first_free(nets: Networks, net_id: str) -> IPv4Address:
    """The address the pool would hand out next (allocated, then given back)."""
    pool = nets.pools[net_id]
    address = pool.allocate()
    pool.release(address)
    return address


def veths(host: StubHost) -> dict:
    return {n: link for n, link in host.links.items() if link["kind"] == "veth"}


# -- built-in networks -------------------------------------------------------


def test_ensure_builtin_creates_bridge_host_none(nets):
    by_name = {n.name: n for n in nets.by_id.values()}
    assert set(by_name) == {"bridge", "host", "none"}
    bridge = by_name["bridge"]
    assert (bridge.driver, bridge.bridge, bridge.mtu) == ("bridge", DEFAULT_BRIDGE, 1500)
    assert (bridge.subnet, bridge.gateway) == ("172.17.0.0/16", "172.17.0.1")
    assert bridge.options[OPT_BRIDGE_NAME] == "qiao0"
    assert bridge.options["com.docker.network.bridge.default_bridge"] == "true"
    assert (by_name["host"].driver, by_name["host"].subnet, by_name["host"].bridge) == ("host", None, None)
    assert (by_name["none"].driver, by_name["none"].subnet) == ("null", None)
    assert all(n.builtin for n in by_name.values())
    # tagged with its network, so a restart after a crash mid-create can find and remove it
    assert nets.host.links == {"qiao0": {"kind": "bridge", "address": "172.17.0.1/16", "mtu": 1500, "owner": f"net:{bridge.id}"}}
    assert nets.host.forwarding and not nets.host.forwarding6
    assert nets.firewall.networks == {"qiao0": BridgeRules("qiao0", "172.17.0.0/16", masquerade=True)}
    assert not bridge.user_defined and bridge.icc and not bridge.enable_ipv6
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
    net = nets.create("web")
    assert net.subnet == "172.18.0.0/16" and net.gateway == "172.18.0.1"
    assert net.bridge == "br-" + net.id[:12]
    assert len(net.id) == 64
    assert nets.host.links[net.bridge] == {"kind": "bridge", "address": "172.18.0.1/16", "mtu": 1500, "owner": f"net:{net.id}"}
    assert net.user_defined and not net.enable_ipv6 and net.subnet6 is None
    assert nets.firewall.networks[net.bridge] == BridgeRules(net.bridge, "172.18.0.0/16", masquerade=True)
    stored = {r["name"]: r for r in nets.store.load("networks")}
    assert stored["web"] == to_dict(net)
    assert first_free(nets, net.id) == IPv4Address("172.18.0.2")
    assert nets.create("web2").subnet == "172.19.0.0/16"


def test_create_with_subnet_gateway_range_options(nets):
    net = nets.create(
        "custom",
        subnet="10.9.0.0/24",
        gateway="10.9.0.254",
        ip_range="10.9.0.16/28",
        options={OPT_BRIDGE_NAME: "br-custom", OPT_MTU: "1400"},
        labels={"a": "b"},
    )
    assert (net.subnet, net.gateway, net.ip_range, net.bridge, net.mtu) == ("10.9.0.0/24", "10.9.0.254", "10.9.0.16/28", "br-custom", 1400)
    assert net.labels == {"a": "b"}
    assert nets.host.links["br-custom"]["mtu"] == 1400
    assert first_free(nets, net.id) == IPv4Address("10.9.0.16")


def test_create_gateway_defaults_to_first_host(nets):
    net = nets.create("n", subnet="10.9.0.0/24", gateway="10.9.0.9")
    assert first_free(nets, net.id) == IPv4Address("10.9.0.1")
    assert nets.create("m", subnet="10.8.0.0/30").gateway == "10.8.0.1"


@pytest.mark.parametrize(
    "kwargs, masquerade",
    [({}, True), ({"internal": True}, False), ({"options": {"com.docker.network.bridge.enable_ip_masquerade": "false"}}, False)],
)
def test_create_masquerade(nets, kwargs, masquerade):
    net = nets.create("n", **kwargs)
    assert nets.firewall.networks[net.bridge].masquerade is masquerade


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
        ({"options": {"com.docker.network.bridge.unknown": "1"}}, InvalidParameter, "unsupported option"),
    ],
)
def test_create_validation_errors_change_nothing(nets, kwargs, error, fragment):
    kwargs = {"name": "n", **kwargs}
    before = snapshot(nets)
    with pytest.raises(error) as info:
        nets.create(**kwargs)
    assert fragment in str(info.value)
    assert snapshot(nets) == before


def test_create_accepts_foreign_options_and_mtu_bounds(nets):
    assert nets.create("a", options={"my.option": "x", OPT_MTU: "68"}).mtu == 68
    assert nets.create("b", options={OPT_MTU: "65535"}).mtu == 65535


def test_create_overlap_with_user_network(nets):
    nets.create("a", subnet="10.1.0.0/16")
    with pytest.raises(Conflict, match=r"\(10\.1\.0\.0/16, network a\)"):
        nets.create("b", subnet="10.1.2.0/24")
    # automatic choice skips user networks too
    nets.create("c", subnet="172.18.0.0/16")
    assert nets.create("d").subnet == "172.19.0.0/16"


@pytest.mark.parametrize("step", ["create-bridge", "enable-forwarding", "add-firewall", "store"])
def test_create_is_all_or_nothing(nets, step):
    before = snapshot(nets)
    nets.fault = fault_at(step)
    with pytest.raises(InjectedFault, match=step):
        nets.create("web", subnet="10.7.0.0/24")
    assert snapshot(nets) == before
    nets.fault = None
    net = nets.create("web", subnet="10.7.0.0/24")  # nothing left behind blocks a retry
    assert net.bridge in nets.host.links


def test_create_failure_in_store_keeps_preexisting_bridge(nets):
    """A bridge that existed before (not created by this call) survives the rollback."""
    nets.host.links["br-mine"] = {"kind": "bridge", "address": "10.7.0.1/24", "mtu": 1500}
    before = snapshot(nets)
    nets.fault = fault_at("store")
    with pytest.raises(InjectedFault):
        nets.create("web", subnet="10.7.0.0/24", options={OPT_BRIDGE_NAME: "br-mine"})
    assert snapshot(nets) == before


def test_create_real_store_failure_rolls_back(nets, monkeypatch):
    before = snapshot(nets)

    def broken_transaction():
        raise OSError("disk full")

    monkeypatch.setattr(nets.store, "transaction", broken_transaction)
    with pytest.raises(OSError, match="disk full"):
        nets.create("web")
    monkeypatch.undo()
    assert snapshot(nets) == before


# -- lookup ------------------------------------------------------------------


def test_get_by_id_name_prefix(nets):
    net = nets.create("web")
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
    nets.create("one")
    nets.create("two")
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


def join_and_adopt(nets: Networks, net, container_id: str = "c" * 64, ifname: str = "eth0"):
    with Steps() as steps:
        ep = nets.join(steps, net, container_id, SANDBOX, ifname)
    nets.adopt(ep)
    return ep


def test_remove_with_endpoints_refused_then_allowed(nets):
    net = nets.create("web")
    ep = join_and_adopt(nets, net)
    before = snapshot(nets)
    with pytest.raises(Conflict, match="has active endpoints"):
        nets.remove("web")
    assert snapshot(nets) == before
    nets.leave(ep)
    nets.remove("web")
    assert net.id not in nets.by_id and net.id not in nets.pools
    assert net.bridge not in nets.host.links
    assert net.bridge not in nets.firewall.networks
    assert "web" not in {r["name"] for r in nets.store.load("networks")}


def test_remove_unknown(nets):
    with pytest.raises(NotFound):
        nets.remove("nope")


@pytest.mark.parametrize("step", ["del-firewall", "store"])
def test_remove_is_all_or_nothing(nets, step):
    nets.create("web")
    before = snapshot(nets)
    nets.fault = fault_at(step)
    with pytest.raises(InjectedFault):
        nets.remove("web")
    assert snapshot(nets) == before


def test_prune(nets):
    a = nets.create("a")
    b = nets.create("b")
    join_and_adopt(nets, b)
    assert nets.prune() == ["a"]
    assert sorted(n.name for n in nets.by_id.values()) == ["b", "bridge", "host", "none"]
    assert a.bridge not in nets.host.links and b.bridge in nets.host.links
    assert nets.prune() == []


# -- endpoints ---------------------------------------------------------------


def test_join_plugs_veth_into_bridge_and_sandbox(nets):
    net = nets.get("bridge")
    ep = join_and_adopt(nets, net, "c" * 64)
    assert (ep.address, ep.prefixlen, ep.gateway, ep.mac, ep.ifname) == ("172.17.0.2", 16, "172.17.0.1", "02:42:ac:11:00:02", "eth0")
    assert ep.network_id == net.id and ep.container_id == "c" * 64
    assert (ep.aliases, ep.address6, ep.prefixlen6, ep.gateway6) == ([], "", 0, "")
    link = nets.host.links[ep.host_ifname]
    assert link == {"kind": "veth", "netns": SANDBOX, "peer": "eth0", "mac": ep.mac, "owner": ep.id, "master": "qiao0", "isolated": False}
    assert nets.host.sandboxes[SANDBOX] == {"eth0": Iface("eth0", "172.17.0.2", 16, "172.17.0.1")}
    assert nets.endpoints_of(net.id) == [ep]
    second = join_and_adopt(nets, net, "d" * 64)
    assert second.address == "172.17.0.3"


def test_join_guards_the_port_with_the_endpoints_addresses_and_leave_unguards(nets, dual):
    v4 = join_and_adopt(nets, nets.get("bridge"))
    v6 = join_and_adopt(nets, dual, ifname="eth1")
    assert nets.firewall.guards == {
        v4.host_ifname: EndpointGuard(v4.host_ifname, ("172.17.0.2",)),
        v6.host_ifname: EndpointGuard(v6.host_ifname, ("10.8.0.2", "fd00:8::2")),
    }
    nets.leave(v4)
    nets.leave(v6)
    assert nets.firewall.guards == {}


def test_leave_returns_address_and_removes_veth(nets):
    net = nets.get("bridge")
    ep = join_and_adopt(nets, net)
    nets.leave(ep)
    assert veths(nets.host) == {}
    assert nets.endpoints_of(net.id) == []
    assert first_free(nets, net.id) == IPv4Address("172.17.0.2")
    nets.leave(ep)  # best effort: twice is harmless


@pytest.mark.parametrize("step", ["allocate-address", "create-veth", "add-guards", "configure-sandbox"])
def test_join_is_all_or_nothing(nets, step):
    net = nets.get("bridge")
    first = join_and_adopt(nets, net, "a" * 64)  # holds .2
    links_before = copy.deepcopy(nets.host.links)
    with pytest.raises(InjectedFault, match=step), Steps(fault_at(step)) as steps:
        nets.join(steps, net, "b" * 64, SANDBOX, "eth0")
    assert nets.host.links == links_before
    assert list(nets.firewall.guards) == [first.host_ifname]
    assert len(veths(nets.host)) == 1
    assert nets.pools[net.id].allocate() == IPv4Address("172.17.0.3")


def test_join_failure_of_kernel_call_rolls_back(nets, monkeypatch):
    net = nets.get("bridge")

    def broken(*args):
        raise OSError("no such device")

    monkeypatch.setattr(nets.host, "configure_sandbox", broken)
    with pytest.raises(OSError), Steps() as steps:
        nets.join(steps, net, "b" * 64, SANDBOX, "eth0")
    assert veths(nets.host) == {}
    assert first_free(nets, net.id) == IPv4Address("172.17.0.2")


def test_join_exhausted_pool(nets):
    net = nets.create("tiny", subnet="10.3.0.0/30")
    join_and_adopt(nets, net)
    with pytest.raises(Conflict, match="no available IPv4 addresses"), Steps() as steps:
        nets.join(steps, net, "b" * 64, SANDBOX, "eth0")
    assert len(veths(nets.host)) == 1


# -- reload ------------------------------------------------------------------


def store_endpoint(nets: Networks, ep) -> None:
    with nets.store.transaction() as tx:
        tx.put("endpoints", to_dict(ep))


def test_reload_restores_networks_and_pools(tmp_path):
    nets = make(tmp_path)
    web = nets.create("web", subnet="10.5.0.0/24", ip_range="10.5.0.0/29")
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
    web = nets.create("web", subnet="10.5.0.0/24", internal=True)
    host = StubHost()
    again = make(tmp_path, host, builtin=False)
    again.restore_kernel([])
    assert set(host.links) == {"qiao0", web.bridge}
    assert host.links[web.bridge]["address"] == "10.5.0.1/24"
    assert host.forwarding
    assert again.firewall.resets == 1
    assert again.firewall.guards == {}
    assert again.firewall.networks == {
        "qiao0": BridgeRules("qiao0", "172.17.0.0/16", True),
        web.bridge: BridgeRules(web.bridge, "10.5.0.0/24", masquerade=False, internal=True),
    }


def test_restore_kernel_guards_every_stored_endpoint(tmp_path):
    nets = make(tmp_path)
    ep = join_and_adopt(nets, nets.get("bridge"))
    store_endpoint(nets, ep)
    again = make(tmp_path, StubHost(), builtin=False)
    again.restore_kernel([])
    assert again.firewall.guards == {ep.host_ifname: EndpointGuard(ep.host_ifname, (ep.address,))}


def test_describe_uses_schema(nets):
    net = nets.get("bridge")
    ep = join_and_adopt(nets, net, "c" * 64)
    doc = nets.describe(net, {})
    assert doc["Name"] == "bridge"
    assert doc["Containers"]["c" * 64]["IPv4Address"] == f"{ep.address}/16"


# -- IPv6, static settings, isolation, notifications ---------------------------


@pytest.fixture
def dual(nets):
    return nets.create("dual", subnet="10.8.0.0/24", enable_ipv6=True, subnet6="fd00:8::/64")


def test_create_dual_stack(nets, monkeypatch):
    calls = []
    real = nets.host.ensure_bridge
    monkeypatch.setattr(nets.host, "ensure_bridge", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    net = nets.create("dual", subnet="10.8.0.0/24", enable_ipv6=True, subnet6="fd00:8::/64")
    assert (net.enable_ipv6, net.subnet6, net.gateway6) == (True, "fd00:8::/64", "fd00:8::1")
    assert calls == [(net.bridge, "10.8.0.1", 24, 1500, ("fd00:8::1", 64))]
    assert nets.host.forwarding6
    assert nets.firewall.networks[net.bridge] == BridgeRules(net.bridge, "10.8.0.0/24", masquerade=True, subnet6="fd00:8::/64")
    assert str(nets.pools6[net.id].allocate()) == "fd00:8::2"
    doc = nets.describe(net, {})
    assert doc["EnableIPv6"] is True
    assert doc["IPAM"]["Config"] == [{"Subnet": "10.8.0.0/24", "Gateway": "10.8.0.1"}, {"Subnet": "fd00:8::/64", "Gateway": "fd00:8::1"}]


def test_create_dual_stack_custom_gateway_and_normalised_text(nets):
    net = nets.create("dual", subnet="10.8.0.0/24", enable_ipv6=True, subnet6="FD00:8:0::/64", gateway6="fd00:8::fe")
    assert (net.subnet6, net.gateway6) == ("fd00:8::/64", "fd00:8::fe")
    assert str(nets.pools6[net.id].allocate()) == "fd00:8::1"


def test_create_ipv6_overlap(nets, dual):
    before = snapshot(nets)
    with pytest.raises(Conflict, match=r"Pool overlaps .*\(fd00:8::/64, network dual\)"):
        nets.create("other", enable_ipv6=True, subnet6="fd00:8::/48")
    assert snapshot(nets) == before


def test_create_ipv4_only_network_has_no_v6_pool(nets):
    net = nets.create("web")
    assert net.id not in nets.pools6
    assert not nets.host.forwarding6  # IPv6 forwarding only with an IPv6 network, as Docker


def test_create_and_remove_notify(nets):
    seen = []
    nets.on_change = seen.append
    net = nets.create("web")
    nets.remove("web")
    other = nets.create("other")
    assert nets.prune() == ["other"]
    assert seen == [{net.id}, {net.id}, {other.id}, {other.id}]


def test_failed_create_does_not_notify(nets):
    seen = []
    nets.on_change = seen.append
    nets.fault = fault_at("store")
    with pytest.raises(InjectedFault):
        nets.create("web")
    assert seen == []


def test_join_dual_stack(nets, dual):
    ep = join_and_adopt(nets, dual)
    assert (ep.address, ep.prefixlen, ep.gateway) == ("10.8.0.2", 24, "10.8.0.1")
    assert (ep.address6, ep.prefixlen6, ep.gateway6) == ("fd00:8::2", 64, "fd00:8::1")
    assert nets.host.sandboxes[SANDBOX]["eth0"] == Iface("eth0", "10.8.0.2", 24, "10.8.0.1", "fd00:8::2", 64, "fd00:8::1")
    nets.leave(ep)
    assert str(nets.pools6[dual.id].allocate()) == "fd00:8::2"


def test_join_static_addresses_mac_and_aliases(nets, dual):
    with Steps() as steps:
        ep = nets.join(steps, dual, "c" * 64, SANDBOX, "eth0", ip="10.8.0.50", ip6="fd00:8::50", mac="02:00:00:00:00:50", aliases=["db"])
    assert (ep.address, ep.address6, ep.mac, ep.aliases) == ("10.8.0.50", "fd00:8::50", "02:00:00:00:00:50", ["db"])
    assert nets.host.links[ep.host_ifname]["mac"] == "02:00:00:00:00:50"
    assert str(nets.pools[dual.id].allocate()) == "10.8.0.2"  # dynamic allocation goes around it
    with pytest.raises(Conflict, match="10.8.0.50 is already in use"), Steps() as steps:
        nets.join(steps, dual, "d" * 64, SANDBOX, "eth1", ip="10.8.0.50")
    with pytest.raises(Conflict, match="fd00:8::50 is already in use"), Steps() as steps:
        nets.join(steps, dual, "d" * 64, SANDBOX, "eth1", ip6="fd00:8::50")
    assert str(nets.pools[dual.id].allocate()) == "10.8.0.3"  # the failed joins gave their IPv4 address back


def test_join_ip6_on_ipv4_only_network(nets):
    net = nets.create("web", subnet="10.9.0.0/24")
    with pytest.raises(InvalidParameter, match="network web has no IPv6 subnet"), Steps() as steps:
        nets.join(steps, net, "c" * 64, SANDBOX, "eth0", ip6="fd00::5")
    assert first_free(nets, net.id) == IPv4Address("10.9.0.2")
    assert veths(nets.host) == {}


@pytest.mark.parametrize("step", ["allocate-address6", "create-veth", "add-guards", "configure-sandbox"])
def test_join_dual_stack_is_all_or_nothing(nets, dual, step):
    with pytest.raises(InjectedFault), Steps(fault_at(step)) as steps:
        nets.join(steps, dual, "c" * 64, SANDBOX, "eth0", ip="10.8.0.9", ip6="fd00:8::9")
    assert veths(nets.host) == {} and nets.firewall.guards == {}
    nets.pools[dual.id].reserve(IPv4Address("10.8.0.9"))  # both given back
    nets.pools6[dual.id].reserve(ipaddress.ip_address("fd00:8::9"))


def test_join_without_default_route(nets, dual):
    with Steps() as steps:
        ep = nets.join(steps, dual, "c" * 64, SANDBOX, "eth1", default_route=False)
    assert (ep.gateway, ep.gateway6) == ("", "")
    assert nets.host.sandboxes[SANDBOX]["eth1"] == Iface("eth1", "10.8.0.2", 24, "", "fd00:8::2", 64, "")


def test_join_internal_network_has_no_default_route(nets):
    net = nets.create("secret", subnet="10.7.0.0/24", internal=True, enable_ipv6=True, subnet6="fd00:7::/64")
    ep = join_and_adopt(nets, net)
    assert (ep.gateway, ep.gateway6, ep.address6) == ("", "", "fd00:7::2")
    assert nets.firewall.networks[net.bridge] == BridgeRules(
        net.bridge, "10.7.0.0/24", masquerade=False, internal=True, subnet6="fd00:7::/64"
    )


@pytest.mark.parametrize("br_netfilter, isolated", [(False, True), (True, False)])
def test_join_icc_false(nets, monkeypatch, br_netfilter, isolated):
    """icc=false: bridge port isolation, unless bridged traffic passes netfilter (then the forward chain drops it)."""
    monkeypatch.setattr(nets.host, "bridge_netfilter", lambda: br_netfilter)
    net = nets.create("quiet", options={"com.docker.network.bridge.enable_icc": "false"})
    assert not net.icc and nets.firewall.networks[net.bridge].icc is False
    ep = join_and_adopt(nets, net)
    assert nets.host.links[ep.host_ifname]["isolated"] is isolated


def test_by_network_index(nets, dual):
    bridge = nets.get("bridge")
    a, b = join_and_adopt(nets, dual, "a" * 64), join_and_adopt(nets, dual, "b" * 64)
    c = join_and_adopt(nets, bridge, "c" * 64)
    assert nets.by_network == {dual.id: {a.id: a, b.id: b}, bridge.id: {c.id: c}}
    assert nets.endpoints_of(dual.id) == [a, b] and nets.endpoints_of("nope") == []
    nets.leave(a)
    assert nets.endpoints_of(dual.id) == [b]
    nets.leave(b)
    nets.remove("dual")
    assert dual.id not in nets.by_network and dual.id not in nets.pools6


def test_reload_restores_ipv6_and_static_addresses(tmp_path):
    nets = make(tmp_path)
    dual = nets.create("dual", subnet="10.8.0.0/24", ip_range="10.8.0.128/25", enable_ipv6=True, subnet6="fd00:8::/64")
    with Steps() as steps:
        ep = nets.join(steps, dual, "c" * 64, SANDBOX, "eth0", ip="10.8.0.5", aliases=["db"])  # outside the range
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
    again.create("dual", subnet="10.8.0.0/24", enable_ipv6=True, subnet6="fd00:8::/64")
    host = StubHost()
    third = make(tmp_path, host, builtin=False)
    third.restore_kernel([])
    assert host.forwarding6
    assert third.firewall.networks[third.get("dual").bridge].subnet6 == "fd00:8::/64"
