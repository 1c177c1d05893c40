"""Containers over the kernel stubs: endpoint settings (static IP/IPv6/MAC,
aliases), several networks, links, connect/disconnect and the /etc files.

No process is started: the supervisor is replaced by one that pretends, and
a container's exit is simulated with the supervisor's callback.
"""

from __future__ import annotations

import threading
from ipaddress import IPv4Address

import pytest

from qiao.engine import containers as containers_module
from qiao.engine import etcfiles
from qiao.engine.containers import Containers
from qiao.engine.errors import Conflict, InvalidParameter, NotFound
from qiao.engine.networks import Networks
from qiao.engine.steps import InjectedFault, fault_at
from qiao.engine.store import Store
from qiao.kernel.firewall import StubFirewall
from qiao.kernel.host import Iface, StubHost
from qiao.paths import Root
from qiao.runtime.supervisor import Started

NO_SUCH_PID = 2**31 - 1  # above any pid_max: a stray kill finds nothing


class FakeSupervisor:
    """Pretends to start the command; never forks, never kills."""

    def __init__(self, on_exit, tag=""):
        self.on_exit = on_exit
        self.specs: dict[str, dict] = {}

    def spawn(self, cid, spec, stdio):
        self.specs[cid] = spec
        return Started(NO_SUCH_PID, NO_SUCH_PID, 1)

    def watch(self, cid, shim_pid, child=False):
        pass


@pytest.fixture
def c(tmp_path, monkeypatch) -> Containers:
    monkeypatch.setattr(etcfiles, "host_nameservers", lambda *a: [])
    monkeypatch.setattr(containers_module, "Supervisor", FakeSupervisor)
    root = Root.resolve(str(tmp_path / "root"))
    root.ensure()
    store = Store(root.store)
    lock = threading.RLock()
    nets = Networks(store, StubHost(), StubFirewall(), lock)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch lan\n")
    nets.resolv_conf = str(resolv)
    nets.load()
    nets.ensure_builtin()
    ctrs = Containers(root, store, nets, lock)
    ctrs.changes = []
    ctrs.on_change = ctrs.changes.append
    yield ctrs
    store.close()


@pytest.fixture
def web(c):
    return c.networks.create("web", subnet="10.9.0.0/24")


@pytest.fixture
def dual(c):
    return c.networks.create("dual", subnet="10.8.0.0/24", enable_ipv6=True, subnet6="fd00:8::/64")


def body(*networks: str, links: list[str] | None = None, ports: dict | None = None, **first) -> dict:
    """A create body as the CLI sends it; ``first`` holds the first network's endpoint settings."""
    networks = networks or ("bridge",)
    configs: dict[str, dict] = {}
    for i, n in enumerate(networks):
        configs.setdefault(n, first if i == 0 else {})
    return {
        "Cmd": ["sleep", "60"],
        "HostConfig": {"NetworkMode": networks[0], "Links": links or [], "PortBindings": ports or {}},
        "NetworkingConfig": {"EndpointsConfig": configs},
    }


def started(c: Containers, name: str, *networks: str, **kw):
    ctr = c.create(name, body(*networks, **kw))
    return c.start(ctr.id)


def eps(c: Containers, ctr) -> dict[str, object]:
    return {name: ep for name, ep in c.endpoints(ctr)}


def read(c: Containers, ctr, name: str) -> str:
    with open(c.files(ctr)[name]) as f:
        return f.read()


def host_lines(text: str) -> list[str]:
    return text.splitlines()[len(etcfiles.HOSTS_HEADER.splitlines()) :]


# -- _attachment: endpoint settings ------------------------------------------


def test_attachment_defaults(c, web):
    assert c._attachment(web, {}) == {"network": web.id, "aliases": [], "ip": "", "ip6": "", "mac": ""}


def test_attachment_static_settings(c, dual):
    cfg = {
        "Aliases": ["db", "db.local", "a-1"],
        "IPAMConfig": {"IPv4Address": "10.8.0.50", "IPv6Address": "fd00:8::50"},
        "MacAddress": "02:42:AB:CD:EF:01",
    }
    att = c._attachment(dual, cfg)
    assert att == {
        "network": dual.id,
        "aliases": ["db", "db.local", "a-1"],
        "ip": "10.8.0.50",
        "ip6": "fd00:8::50",
        "mac": "02:42:ab:cd:ef:01",
    }


@pytest.mark.parametrize(
    "cfg",
    [{"Aliases": ["x"]}, {"IPAMConfig": {"IPv4Address": "172.17.0.9"}}, {"IPAMConfig": {"IPv6Address": "fd00::9"}}],
)
def test_attachment_default_bridge_refuses_aliases_and_static_ips(c, cfg):
    with pytest.raises(InvalidParameter, match="supported only on user-defined networks"):
        c._attachment(c.networks.get("bridge"), cfg)


def test_attachment_default_bridge_takes_a_mac(c):
    assert c._attachment(c.networks.get("bridge"), {"MacAddress": "02:00:00:00:00:01"})["mac"] == "02:00:00:00:00:01"


@pytest.mark.parametrize("name", ["host", "none"])
def test_attachment_refuses_non_bridge_networks(c, name):
    with pytest.raises(InvalidParameter, match=f"cannot be connected to network {name}"):
        c._attachment(c.networks.get(name), {})


@pytest.mark.parametrize("alias", ["-db", "db-", "a_b", "a..b", ".a", "a b", "x" * 64, "ü", "", "a\n"])
def test_attachment_invalid_alias(c, web, alias):
    with pytest.raises(InvalidParameter, match="invalid alias"):
        c._attachment(web, {"Aliases": [alias]})


def test_attachment_long_but_valid_alias(c, web):
    alias = ".".join(["x" * 63] * 3)
    assert c._attachment(web, {"Aliases": [alias]})["aliases"] == [alias]


@pytest.mark.parametrize(
    "net, ipam, fragment",
    [
        ("web", {"IPv4Address": "nope"}, "invalid IPv4 address 'nope'"),
        ("web", {"IPv4Address": "10.9.1.5"}, "invalid IPv4 address 10.9.1.5: not in the subnet of network web (10.9.0.0/24)"),
        ("web", {"IPv4Address": "fd00::5"}, "invalid IPv4 address fd00::5: not in the subnet"),
        ("web", {"IPv4Address": "10.9.0.0/24"}, "invalid IPv4 address"),
        ("web", {"IPv6Address": "fd00::5"}, "invalid IPv6 address fd00::5: not in the subnet of network web (none)"),
        ("web", {"IPv6Address": "zz::1"}, "invalid IPv6 address 'zz::1'"),
        ("dual", {"IPv6Address": "fd00:9::5"}, "invalid IPv6 address fd00:9::5: not in the subnet of network dual (fd00:8::/64)"),
        ("dual", {"IPv6Address": "10.8.0.5"}, "invalid IPv6 address 10.8.0.5: not in the subnet"),
    ],
)
def test_attachment_invalid_static_ip(c, request, net, ipam, fragment):
    """``net`` names the fixture of the network attached to: web (IPv4 only) or dual (IPv4 and IPv6)."""
    with pytest.raises(InvalidParameter) as info:
        c._attachment(request.getfixturevalue(net), {"IPAMConfig": ipam})
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "mac", ["02:42:ac:11:00", "02:42:ac:11:00:02:03", "02-42-ac-11-00-02", "zz:42:ac:11:00:02", "0242ac110002", "2:42:ac:11:0:2"]
)
def test_attachment_invalid_mac(c, web, mac):
    with pytest.raises(InvalidParameter, match="invalid MAC address"):
        c._attachment(web, {"MacAddress": mac})


def test_attachment_empty_values_are_no_settings(c):
    cfg = {"Aliases": None, "IPAMConfig": {"IPv4Address": "", "IPv6Address": None}, "MacAddress": ""}
    assert c._attachment(c.networks.get("bridge"), cfg)["ip"] == ""


# -- create --------------------------------------------------------------------


def test_create_default_network_is_bridge(c):
    bridge = c.networks.get("bridge")
    ctr = c.create("box", {"Cmd": ["true"]})
    assert ctr.network_mode == "bridge"
    assert ctr.attachments == [{"network": bridge.id, "aliases": [], "ip": "", "ip6": "", "mac": ""}]


def test_create_several_networks_in_order_without_duplicates(c, web, dual):
    b = body("web", "dual", IPAMConfig={"IPv4Address": "10.9.0.7"}, Aliases=["api"])
    b["NetworkingConfig"]["EndpointsConfig"][web.id[:6]] = {}  # the same network again, by id prefix
    ctr = c.create("box", b)
    assert ctr.network_mode == "web"
    assert [a["network"] for a in ctr.attachments] == [web.id, dual.id]
    assert (ctr.attachments[0]["ip"], ctr.attachments[0]["aliases"]) == ("10.9.0.7", ["api"])
    assert ctr.attachments[1] == {"network": dual.id, "aliases": [], "ip": "", "ip6": "", "mac": ""}


def test_create_settings_keyed_by_id_prefix_are_applied(c, web):
    """``--network <id prefix> --ip X``: the settings are keyed by the prefix, as given."""
    ref = web.id[:8]
    ctr = c.create("box", body(ref, IPAMConfig={"IPv4Address": "10.9.0.9"}))
    assert ctr.network_mode == "web"
    assert [(a["network"], a["ip"]) for a in ctr.attachments] == [(web.id, "10.9.0.9")]


def test_create_settings_keyed_by_full_id(c, web):
    b = {"Cmd": ["true"], "HostConfig": {"NetworkMode": "web"}}
    b["NetworkingConfig"] = {"EndpointsConfig": {web.id: {"Aliases": ["x"]}}}
    assert c.create("box", b).attachments[0]["aliases"] == ["x"]


def test_create_unknown_extra_network(c, web):
    with pytest.raises(NotFound, match="network nope not found"):
        c.create("box", body("web", "nope"))
    assert c.by_id == {} and c.store.load("containers") == []


@pytest.mark.parametrize(
    "networks, cfg, error, fragment",
    [
        (("bridge",), {"IPAMConfig": {"IPv4Address": "172.17.0.9"}}, InvalidParameter, "only on user-defined networks"),
        (("web",), {"IPAMConfig": {"IPv4Address": "10.1.0.9"}}, InvalidParameter, "not in the subnet"),
        (("web",), {"MacAddress": "nope"}, InvalidParameter, "invalid MAC"),
        (("web", "host"), {}, InvalidParameter, "cannot be connected to network host"),
    ],
)
def test_create_invalid_settings_store_nothing(c, web, networks, cfg, error, fragment):
    with pytest.raises(error, match=fragment):
        c.create("box", body(*networks, **cfg))
    assert c.by_id == {} and c.store.load("containers") == []


@pytest.mark.parametrize("mode", ["host", "none"])
def test_create_host_and_none_have_no_attachments(c, mode):
    assert c.create("box", {"Cmd": ["true"], "HostConfig": {"NetworkMode": mode}}).attachments == []


def test_create_links_only_on_the_default_bridge(c, web):
    with pytest.raises(InvalidParameter, match="--link is supported only on the default bridge"):
        c.create("box", body("web", links=["x"]))
    with pytest.raises(InvalidParameter, match="--link needs the default bridge"):
        c.create("box", {"Cmd": ["true"], "HostConfig": {"NetworkMode": "host", "Links": ["x"]}})


def test_create_link_to_unknown_or_stopped_container(c):
    with pytest.raises(NotFound, match="No such container: ghost"):
        c.create("box", body(links=["ghost"]))
    c.create("idle", body())
    with pytest.raises(Conflict, match="Cannot link to a non running container: /idle"):
        c.create("box", body(links=["idle"]))


def test_create_publish_on_internal_network_refused(c):
    c.networks.create("secret", subnet="10.7.0.0/24", internal=True)
    with pytest.raises(InvalidParameter, match="port publishing is not possible on internal network secret"):
        c.create("box", body("secret", ports={"80/tcp": [{"HostPort": "8080"}]}))


# -- start: endpoints, /etc files, DNS notifications -------------------------


def test_start_on_user_network_with_static_settings(c, dual):
    ctr = started(
        c,
        "db",
        "dual",
        Aliases=["store"],
        IPAMConfig={"IPv4Address": "10.8.0.50", "IPv6Address": "fd00:8::50"},
        MacAddress="02:42:00:00:00:50",
    )
    ep = eps(c, ctr)["dual"]
    assert (ep.address, ep.address6, ep.mac, ep.aliases, ep.ifname) == ("10.8.0.50", "fd00:8::50", "02:42:00:00:00:50", ["store"], "eth0")
    assert (ep.gateway, ep.gateway6, ep.prefixlen6) == ("10.8.0.1", "fd00:8::1", 64)
    assert c.host.sandboxes[ctr.sandbox_key]["eth0"] == Iface("eth0", "10.8.0.50", 24, "10.8.0.1", "fd00:8::50", 64, "fd00:8::1")
    assert c.changes == [{dual.id}]
    assert host_lines(read(c, ctr, "hosts")) == [f"10.8.0.50\t{ctr.hostname}", f"fd00:8::50\t{ctr.hostname}"]
    # qiao's resolver on the gateway replaces the host's nameservers; search stays
    assert read(c, ctr, "resolv.conf") == "nameserver 10.8.0.1\nsearch lan\n"
    assert read(c, ctr, "hostname") == ctr.hostname + "\n"

    doc = c.inspect("db")
    settings = doc["NetworkSettings"]["Networks"]["dual"]
    assert settings["IPAMConfig"] == {"IPv4Address": "10.8.0.50", "IPv6Address": "fd00:8::50"}
    assert settings["Aliases"] == ["store"]
    assert settings["DNSNames"] == ["db", ctr.id[:12], "store"]
    assert (settings["GlobalIPv6Address"], settings["GlobalIPv6PrefixLen"], settings["IPv6Gateway"]) == ("fd00:8::50", 64, "fd00:8::1")
    ns = doc["NetworkSettings"]  # the deprecated top-level copy is the default bridge's only, as in Docker
    assert (ns["GlobalIPv6Address"], ns["GlobalIPv6PrefixLen"], ns["IPv6Gateway"], ns["IPAddress"]) == ("", 0, "", "")
    assert doc["HostConfig"]["Links"] is None


def test_start_dynamic_ipv6(c, dual):
    first, second = started(c, "a", "dual"), started(c, "b", "dual")
    assert [eps(c, x)["dual"].address6 for x in (first, second)] == ["fd00:8::2", "fd00:8::3"]
    assert eps(c, first)["dual"].mac == "02:42:0a:08:00:02"  # derived from the IPv4 address when not given


def test_start_on_default_bridge_keeps_legacy_resolv_conf(c):
    ctr = started(c, "box")
    assert read(c, ctr, "resolv.conf") == "nameserver 192.0.2.53\nsearch lan\n"
    ns = c.inspect("box")["NetworkSettings"]
    settings = ns["Networks"]["bridge"]
    assert (settings["DNSNames"], settings["Aliases"], settings["IPAMConfig"]) == (None, None, None)
    assert (settings["GlobalIPv6Address"], settings["IPv6Gateway"]) == ("", "")
    keys = ("EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "MacAddress")
    assert {k: ns[k] for k in keys} == {k: settings[k] for k in keys} and ns["IPAddress"].startswith("172.17.")


def test_start_several_networks_the_default_route_follows_dockers_order(c, web, dual):
    ctr = started(c, "box", "web", "dual")  # dual stack before IPv4 only, whatever the order given
    web_ep, dual_ep = eps(c, ctr)["web"], eps(c, ctr)["dual"]
    assert (web_ep.ifname, web_ep.gateway) == ("eth0", "")
    assert (dual_ep.ifname, dual_ep.gateway, dual_ep.gateway6, dual_ep.address6) == ("eth1", "10.8.0.1", "fd00:8::1", "fd00:8::2")
    assert c.host.sandboxes[ctr.sandbox_key]["eth1"] == Iface("eth1", "10.8.0.2", 24, "10.8.0.1", "fd00:8::2", 64, "fd00:8::1")
    assert c.host.sandboxes[ctr.sandbox_key]["eth0"].gateway == ""
    assert read(c, ctr, "resolv.conf").startswith("nameserver 10.9.0.1\nnameserver 10.8.0.1\n")
    assert c.changes == [{web.id, dual.id}]
    networks = c.inspect("box")["NetworkSettings"]["Networks"]
    assert (networks["web"]["Gateway"], networks["dual"]["Gateway"]) == ("", "10.8.0.1")

    other = started(c, "box2", "web", "bridge")  # both IPv4 only: by name
    assert (eps(c, other)["bridge"].gateway, eps(c, other)["web"].gateway) == ("172.17.0.1", "")


def test_start_internal_network_has_no_default_route(c):
    secret = c.networks.create("secret", subnet="10.7.0.0/24", internal=True)
    ctr = started(c, "box", "secret")
    assert eps(c, ctr)["secret"].gateway == ""
    assert c.host.sandboxes[ctr.sandbox_key]["eth0"].gateway == ""
    assert read(c, ctr, "resolv.conf").startswith("nameserver 10.7.0.1\n")  # DNS still answers local names
    assert c.firewall.networks[secret.bridge].internal


def test_start_icc_false_isolates_the_port(c):
    net = c.networks.create("quiet", subnet="10.6.0.0/24", options={"com.docker.network.bridge.enable_icc": "false"})
    ctr = started(c, "box", "quiet")
    assert c.host.links[eps(c, ctr)["quiet"].host_ifname]["isolated"] is True
    assert c.firewall.networks[net.bridge].icc is False


def test_start_duplicate_static_ip_fails_and_rolls_back(c, web):
    first = started(c, "a", "web", IPAMConfig={"IPv4Address": "10.9.0.9"})
    links = dict(c.host.links)
    other = c.create("b", body("web", IPAMConfig={"IPv4Address": "10.9.0.9"}))
    with pytest.raises(Conflict, match="10.9.0.9 is already in use"):
        c.start(other.id)
    assert c.host.links == links and other.sandbox_key == "" and not other.running
    assert eps(c, first)["web"].address == "10.9.0.9"
    assert c.networks.pools[web.id].allocate() == IPv4Address("10.9.0.2")


def test_start_static_ip_equal_to_gateway_fails(c, web):
    ctr = c.create("a", body("web", IPAMConfig={"IPv4Address": "10.9.0.1"}))
    with pytest.raises(Conflict, match="reserved"):
        c.start(ctr.id)


def test_exit_releases_addresses_and_notifies(c, dual):
    ctr = started(c, "a", "dual", IPAMConfig={"IPv4Address": "10.8.0.9", "IPv6Address": "fd00:8::9"})
    c.changes.clear()
    c._on_exit(ctr.id)
    assert ctr.status == "exited" and ctr.endpoint_ids == [] and c.networks.endpoints_of(dual.id) == []
    assert c.changes == [{dual.id}]
    again = started(c, "b", "dual", IPAMConfig={"IPv4Address": "10.8.0.9", "IPv6Address": "fd00:8::9"})
    assert eps(c, again)["dual"].address == "10.8.0.9"


# -- links -------------------------------------------------------------------


def test_link_hosts_entry_env_and_inspect(c):
    target = c.create("db", {**body(), "Env": ["PASSWORD=x", "PATH=/bin"], "ExposedPorts": {"5432/tcp": {}, "53/udp": {}}})
    c.start(target.id)
    address = eps(c, target)["bridge"].address
    box = started(c, "box", links=["db:data"])
    assert host_lines(read(c, box, "hosts"))[-1] == f"{address}\tdata {target.hostname} db"
    env = c.supervisor.specs[box.id]["env"]
    assert env["DATA_NAME"] == "/box/data"
    assert env["DATA_PORT"] == f"tcp://{address}:5432"
    assert env["DATA_PORT_53_UDP_ADDR"] == address and env["DATA_PORT_53_UDP_PROTO"] == "udp"
    assert env["DATA_ENV_PASSWORD"] == "x" and "DATA_ENV_PATH" not in env
    assert c.inspect("box")["HostConfig"]["Links"] == ["/db:/box/data"]
    assert box.links == [[target.id, "data"]]


def test_link_without_alias_uses_the_name(c):
    target = started(c, "db")
    box = started(c, "box", links=["db"])
    assert host_lines(read(c, box, "hosts"))[-1] == f"{eps(c, target)['bridge'].address}\tdb {target.hostname}"


def test_link_invalid_alias(c):
    started(c, "db")
    with pytest.raises(InvalidParameter, match="invalid link alias"):
        c.create("box", body(links=["db:bad_alias"]))


def test_remove_linked_target_refused(c):
    started(c, "db")
    started(c, "box", links=["db"])
    with pytest.raises(Conflict, match="container box links to it"):
        c.remove("db")


# -- connect / disconnect ------------------------------------------------------


def test_connect_stopped_container_joins_at_start(c, web, dual):
    ctr = c.create("box", body("web"))
    c.connect("box", "dual", {"Aliases": ["api"], "IPAMConfig": {"IPv6Address": "fd00:8::77"}})
    assert [a["network"] for a in ctr.attachments] == [web.id, dual.id]
    assert c.store.load("containers")[0]["attachments"][1]["ip6"] == "fd00:8::77"
    c.start(ctr.id)
    assert (eps(c, ctr)["dual"].address6, eps(c, ctr)["dual"].aliases) == ("fd00:8::77", ["api"])


def test_connect_running_container_gets_the_next_interface(c, web, dual):
    ctr = started(c, "box", "web")
    c.changes.clear()
    c.connect("box", "dual", {"Aliases": ["api"]})
    ep = eps(c, ctr)["dual"]
    # dual stack comes first in Docker's order: the default route moves to it
    assert (ep.ifname, ep.gateway, ep.gateway6, ep.aliases) == ("eth1", "10.8.0.1", "fd00:8::1", ["api"])
    assert c.host.default_routes[ctr.sandbox_key] == ("10.8.0.1", "fd00:8::1")
    assert eps(c, ctr)["web"].gateway == ""
    assert c.networks.endpoints_of(dual.id) == [ep]
    assert c.changes == [{dual.id}]
    assert {r["id"] for r in c.store.load("endpoints")} == set(ctr.endpoint_ids)
    assert {r["network_id"]: r["gateway"] for r in c.store.load("endpoints")} == {web.id: "", dual.id: "10.8.0.1"}
    assert host_lines(read(c, ctr, "hosts")) == [f"10.9.0.2\t{ctr.hostname}", f"10.8.0.2\t{ctr.hostname}", f"fd00:8::2\t{ctr.hostname}"]
    assert read(c, ctr, "resolv.conf").startswith("nameserver 10.9.0.1\nnameserver 10.8.0.1\n")

    c.changes.clear()
    c.disconnect("box", "dual")
    assert list(eps(c, ctr)) == ["web"] and c.networks.endpoints_of(dual.id) == []
    assert c.host.default_routes[ctr.sandbox_key] == ("10.9.0.1", "")  # back to the one left
    assert eps(c, ctr)["web"].gateway == "10.9.0.1"
    assert c.host.links.get(ep.host_ifname) is None
    assert c.changes == [{dual.id}]
    assert host_lines(read(c, ctr, "hosts")) == [f"10.9.0.2\t{ctr.hostname}"]
    c.connect("box", "dual", {})  # eth1 is free again
    assert eps(c, ctr)["dual"].ifname == "eth1"


def test_connect_keeps_the_route_when_the_new_network_comes_later(c, web):
    ctr = started(c, "box", "bridge")
    before = dict(c.host.default_routes)
    c.connect("box", "web", {})  # "bridge" < "web"
    assert (eps(c, ctr)["bridge"].gateway, eps(c, ctr)["web"].gateway) == ("172.17.0.1", "")
    assert c.host.default_routes == before


def test_connect_that_fails_after_moving_the_route_moves_it_back(c, web, dual, monkeypatch):
    ctr = started(c, "box", "web")
    monkeypatch.setattr(c, "fault", fault_at("store"))
    with pytest.raises(InjectedFault):
        c.connect("box", "dual", {})
    assert c.host.default_routes[ctr.sandbox_key] == ("10.9.0.1", "")
    assert list(eps(c, ctr)) == ["web"] and eps(c, ctr)["web"].gateway == "10.9.0.1"


def test_inspect_top_level_address_follows_the_default_bridge(c, web):
    ctr = started(c, "box", "web")
    ns = c.inspect("box")["NetworkSettings"]
    assert (ns["IPAddress"], ns["EndpointID"], ns["Networks"]["web"]["IPAddress"]) == ("", "", "10.9.0.2")

    c.connect("box", "bridge", {})  # second: the bridge's address; "bridge" < "web", so the default route too
    ns = c.inspect("box")["NetworkSettings"]
    bridge_ep = eps(c, ctr)["bridge"]
    assert (ns["IPAddress"], ns["IPPrefixLen"], ns["MacAddress"]) == (bridge_ep.address, 16, bridge_ep.mac)
    assert (ns["EndpointID"], ns["Gateway"]) == (bridge_ep.id, "172.17.0.1")

    c.disconnect("box", "bridge")
    assert c.inspect("box")["NetworkSettings"]["IPAddress"] == ""


@pytest.mark.parametrize(
    "setup, net, cfg, error, fragment",
    [
        ("web", "web", {}, Conflict, "endpoint with name box already exists in network web"),
        ("host", "web", {}, Conflict, "uses network mode host: it cannot join other networks"),
        ("none", "web", {}, Conflict, "uses network mode none"),
        ("web", "bridge", {"Aliases": ["x"]}, InvalidParameter, "only on user-defined networks"),
        ("web", "dual", {"IPAMConfig": {"IPv4Address": "10.9.0.5"}}, InvalidParameter, "not in the subnet of network dual"),
        ("web", "nope", {}, NotFound, "network nope not found"),
    ],
)
def test_connect_errors_change_nothing(c, web, dual, setup, net, cfg, error, fragment):
    ctr = c.create("box", {"Cmd": ["true"], "HostConfig": {"NetworkMode": setup}})
    before = [dict(a) for a in ctr.attachments]
    with pytest.raises(error, match=fragment):
        c.connect("box", net, cfg)
    assert ctr.attachments == before


def test_connect_duplicate_static_ip_on_running_container_rolls_back(c, web, dual):
    started(c, "a", "dual", IPAMConfig={"IPv4Address": "10.8.0.9"})
    ctr = started(c, "box", "web")
    links = dict(c.host.links)
    with pytest.raises(Conflict, match="already in use"):
        c.connect("box", "dual", {"IPAMConfig": {"IPv4Address": "10.8.0.9"}})
    assert c.host.links == links and list(eps(c, ctr)) == ["web"] and len(ctr.attachments) == 1


def test_disconnect_errors(c, web, dual):
    started(c, "box", "web")
    with pytest.raises(Conflict, match="container box is not connected to network dual"):
        c.disconnect("box", "dual")


def test_disconnecting_the_gateway_network_moves_the_default_route(c, web, dual):
    ctr = started(c, "box", "web", "dual", "bridge")
    internal = c.networks.create("quiet", subnet="10.7.0.0/24", internal=True)
    c.connect("box", "quiet", {})
    assert eps(c, ctr)["dual"].gateway == "10.8.0.1"

    c.disconnect("box", "dual")  # heirs in Docker's order: bridge < web by name (quiet is internal)
    assert c.host.default_routes[ctr.sandbox_key] == ("172.17.0.1", "")
    assert (eps(c, ctr)["bridge"].gateway, eps(c, ctr)["web"].gateway) == ("172.17.0.1", "")
    stored = {r["network_id"]: r for r in c.store.load("endpoints")}
    assert stored[eps(c, ctr)["bridge"].network_id]["gateway"] == "172.17.0.1"
    assert c.inspect("box")["NetworkSettings"]["Networks"]["bridge"]["Gateway"] == "172.17.0.1"

    c.disconnect("box", "bridge")
    assert c.host.default_routes[ctr.sandbox_key] == ("10.9.0.1", "")
    c.disconnect("box", "web")  # only the internal network is left: no default route to move to
    assert c.host.default_routes[ctr.sandbox_key] == ("10.9.0.1", "")
    assert eps(c, ctr)["quiet"].gateway == "" and internal.internal


def test_disconnect_that_fails_in_the_store_moves_the_route_back(c, web, dual, monkeypatch):
    ctr = started(c, "box", "web", "dual")
    monkeypatch.setattr(c, "fault", fault_at("store"))
    with pytest.raises(InjectedFault):
        c.disconnect("box", "dual")
    assert c.host.default_routes[ctr.sandbox_key] == ("10.8.0.1", "fd00:8::1")
    assert list(eps(c, ctr)) == ["web", "dual"] and eps(c, ctr)["dual"].gateway == "10.8.0.1"
    assert eps(c, ctr)["web"].gateway == ""


def test_disconnect_stopped_container(c, web, dual):
    ctr = c.create("box", body("web", "dual"))
    c.disconnect("box", "web")
    assert [a["network"] for a in ctr.attachments] == [dual.id]
    assert c.store.load("containers")[0]["attachments"] == ctr.attachments


# -- user, working directory, capabilities, hidden root (qiao.runtime.security) -----------


def test_create_checks_and_keeps_the_process_settings(c):
    b = {**body(), "User": "nobody", "WorkingDir": "/tmp"}
    b["HostConfig"].update(CapAdd=["net_admin"], CapDrop=["mknod"])
    ctr = c.create("sec", b)
    assert (ctr.user, ctr.workdir, ctr.cap_add, ctr.cap_drop, ctr.privileged) == ("nobody", "/tmp", ["CAP_NET_ADMIN"], ["CAP_MKNOD"], False)
    doc = c.inspect("sec")
    assert (doc["Config"]["User"], doc["Config"]["WorkingDir"]) == ("nobody", "/tmp")
    assert (doc["HostConfig"]["CapAdd"], doc["HostConfig"]["CapDrop"], doc["HostConfig"]["Privileged"]) == (
        ["CAP_NET_ADMIN"],
        ["CAP_MKNOD"],
        False,
    )


@pytest.mark.parametrize(
    ("extra", "host_config", "fragment"),
    [
        ({}, {"CapAdd": ["NET_ADMINS"]}, 'unknown capability: "CAP_NET_ADMINS"'),
        ({"User": "no-such-user-here"}, {}, "unable to find user no-such-user-here"),
        ({"WorkingDir": "tmp"}, {}, "needs to be an absolute path"),
    ],
)
def test_create_refuses_bad_process_settings_and_stores_nothing(c, extra, host_config, fragment):
    b = {**body(), **extra}
    b["HostConfig"].update(host_config)
    with pytest.raises(InvalidParameter, match=fragment):
        c.create("bad", b)
    assert c.by_id == {} and c.store.load("containers") == []


@pytest.mark.parametrize("mode", ["bridge", "host", "none"])
def test_start_spec_carries_the_process_settings_and_hides_the_root(c, mode):
    b = {**body(), "User": "nobody"}
    b["HostConfig"].update(NetworkMode=mode, CapAdd=["NET_ADMIN"])
    ctr = c.start(c.create("s-" + mode, b).id)
    spec = c.supervisor.specs[ctr.id]
    assert (spec["uid"], spec["gid"], spec["cwd"], spec["no_new_privs"]) == (65534, 65534, "/", True)
    assert spec["caps"][-1] == "CAP_NET_ADMIN" and "CAP_SYS_ADMIN" not in spec["caps"]
    assert spec["hide"][0] == c.root.base  # the whole root: store, logs, socket, namespace files
    assert spec["env"]["HOME"] == "/nonexistent"  # nobody's, as Docker sets it
    if mode == "host":
        assert spec.get("mounts") is None and "netns" not in spec  # still a mount namespace: the shim makes one to hide the root


def test_start_keeps_a_home_the_container_sets(c):
    b = {**body(), "User": "nobody", "Env": ["HOME=/srv"]}
    ctr = c.start(c.create("home", b).id)
    assert c.supervisor.specs[ctr.id]["env"]["HOME"] == "/srv"
