"""Containers over the kernel stubs: endpoint settings (static IP/IPv6/MAC,
aliases), several networks, links, connect/disconnect and the /etc files.

No process is started: the supervisor is replaced by one that pretends, and
a container's exit is simulated with the supervisor's callback.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from ipaddress import IPv4Address
from typing import Any

import pytest

from qiao.daemon import docker_json, wire
from qiao.drivers import Drivers
from qiao.drivers.bridge import bridge_of
from qiao.engine import containers as containers_module
from qiao.engine import etcfiles
from qiao.engine.containers import Containers
from qiao.engine.engine import builtin_drivers
from qiao.engine.errors import Conflict, InvalidParameter, NotFound
from qiao.engine.events import Event, Events
from qiao.engine.networks import Networks
from qiao.engine.specs import EndpointSpec, NetworkSpec
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


def stub_containers(tmp_path: Any, monkeypatch: Any, resolv_conf: str, **kw: Any) -> tuple[Containers, Events, Store]:
    """Containers over the kernel stubs and a fake supervisor, with a real store and networks
    (``bridge`` made); the events the networks publish, and the store to close."""
    monkeypatch.setattr(etcfiles, "host_nameservers", lambda *a: [])
    monkeypatch.setattr(containers_module, "Supervisor", FakeSupervisor)
    root = Root.resolve(str(tmp_path / "root"))
    root.ensure()
    store = Store(root.store)
    lock = threading.RLock()
    host, firewall, events = StubHost(), StubFirewall(), Events()
    nets = Networks(store, Drivers(builtin_drivers(host, firewall)), firewall, lock, events)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(resolv_conf)
    nets.load()
    nets.ensure_builtin()
    return Containers(root, store, nets, host, lock, resolv_conf=str(resolv), **kw), events, store


@pytest.fixture
def c(tmp_path, monkeypatch) -> Any:
    ctrs, events, store = stub_containers(tmp_path, monkeypatch, "nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch lan\n")
    ctrs.changes = []  # type: ignore[attr-defined]  # what the containers told the engine's listeners (DNS)

    def listener(e: Event) -> None:
        if e.kind == "endpoint":
            ctrs.changes.append((e.action, e.network.id))  # type: ignore[attr-defined]

    events.subscribe(listener)
    yield ctrs
    store.close()


@pytest.fixture
def web(c):
    return c.networks.create(NetworkSpec("web", subnet="10.9.0.0/24"))


@pytest.fixture
def dual(c):
    return c.networks.create(NetworkSpec("dual", subnet="10.8.0.0/24", enable_ipv6=True, subnet6="fd00:8::/64"))


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


def create(c: Containers, name: str | None, doc: dict):
    """``POST /containers/create``: the body as the API decodes it, then the engine."""
    return c.create(wire.container_spec(name, json.dumps(doc).encode()))


def settings(cfg: dict) -> EndpointSpec:
    """Docker's EndpointSettings (``network connect``'s EndpointConfig), as the API decodes it."""
    _container, spec = wire.network_connect(json.dumps({"Container": "x", "EndpointConfig": cfg}).encode())
    return spec


def inspect(c: Containers, ref: str) -> dict:
    """``GET /containers/{ref}/json``."""
    return docker_json.container(c.inspect(ref))


def started(c: Containers, name: str, *networks: str, **kw):
    ctr = create(c, name, body(*networks, **kw))
    return c.start(ctr.id)


def eps(c: Containers, ctr) -> dict[str, Any]:
    return {name: ep for name, ep in c.endpoints(ctr)}


def read(c: Containers, ctr, name: str) -> str:
    with open(c.files(ctr)[name]) as f:
        return f.read()


def host_lines(text: str) -> list[str]:
    return text.splitlines()[len(etcfiles.HOSTS_HEADER.splitlines()) :]


# -- _attachment: endpoint settings ------------------------------------------


def test_attachment_defaults(c, web):
    assert c._attachment(web, settings({})) == {"network": web.id, "aliases": [], "ip": "", "ip6": "", "mac": ""}


def test_attachment_static_settings(c, dual):
    cfg = {
        "Aliases": ["db", "db.local", "a-1"],
        "IPAMConfig": {"IPv4Address": "10.8.0.50", "IPv6Address": "fd00:8::50"},
        "MacAddress": "02:42:AB:CD:EF:01",
    }
    att = c._attachment(dual, settings(cfg))
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
        c._attachment(c.networks.get("bridge"), settings(cfg))


def test_attachment_default_bridge_takes_a_mac(c):
    assert c._attachment(c.networks.get("bridge"), settings({"MacAddress": "02:00:00:00:00:01"}))["mac"] == "02:00:00:00:00:01"


@pytest.mark.parametrize("name", ["host", "none"])
def test_attachment_refuses_non_bridge_networks(c, name):
    with pytest.raises(InvalidParameter, match=f"cannot be connected to network {name}"):
        c._attachment(c.networks.get(name), settings({}))


@pytest.mark.parametrize("alias", ["-db", "db-", "a_b", "a..b", ".a", "a b", "x" * 64, "ü", "", "a\n"])
def test_attachment_invalid_alias(c, web, alias):
    with pytest.raises(InvalidParameter, match="invalid alias"):
        c._attachment(web, settings({"Aliases": [alias]}))


def test_attachment_long_but_valid_alias(c, web):
    alias = ".".join(["x" * 63] * 3)
    assert c._attachment(web, settings({"Aliases": [alias]}))["aliases"] == [alias]


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
        c._attachment(request.getfixturevalue(net), settings({"IPAMConfig": ipam}))
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "mac", ["02:42:ac:11:00", "02:42:ac:11:00:02:03", "02-42-ac-11-00-02", "zz:42:ac:11:00:02", "0242ac110002", "2:42:ac:11:0:2"]
)
def test_attachment_invalid_mac(c, web, mac):
    with pytest.raises(InvalidParameter, match="invalid MAC address"):
        c._attachment(web, settings({"MacAddress": mac}))


def test_attachment_empty_values_are_no_settings(c):
    cfg = {"Aliases": None, "IPAMConfig": {"IPv4Address": "", "IPv6Address": None}, "MacAddress": ""}
    assert c._attachment(c.networks.get("bridge"), settings(cfg))["ip"] == ""


# -- create --------------------------------------------------------------------


def test_create_default_network_is_bridge(c):
    bridge = c.networks.get("bridge")
    ctr = create(c, "box", {"Cmd": ["true"]})
    assert ctr.network_mode == "bridge"
    assert ctr.attachments == [{"network": bridge.id, "aliases": [], "ip": "", "ip6": "", "mac": ""}]


def test_create_several_networks_in_order_without_duplicates(c, web, dual):
    b = body("web", "dual", IPAMConfig={"IPv4Address": "10.9.0.7"}, Aliases=["api"])
    b["NetworkingConfig"]["EndpointsConfig"][web.id[:6]] = {}  # the same network again, by id prefix
    ctr = create(c, "box", b)
    assert ctr.network_mode == "web"
    assert [a["network"] for a in ctr.attachments] == [web.id, dual.id]
    assert (ctr.attachments[0]["ip"], ctr.attachments[0]["aliases"]) == ("10.9.0.7", ["api"])
    assert ctr.attachments[1] == {"network": dual.id, "aliases": [], "ip": "", "ip6": "", "mac": ""}


def test_create_settings_keyed_by_id_prefix_are_applied(c, web):
    """``--network <id prefix> --ip X``: the settings are keyed by the prefix, as given."""
    ref = web.id[:8]
    ctr = create(c, "box", body(ref, IPAMConfig={"IPv4Address": "10.9.0.9"}))
    assert ctr.network_mode == "web"
    assert [(a["network"], a["ip"]) for a in ctr.attachments] == [(web.id, "10.9.0.9")]


def test_create_settings_keyed_by_full_id(c, web):
    b = {"Cmd": ["true"], "HostConfig": {"NetworkMode": "web"}}
    b["NetworkingConfig"] = {"EndpointsConfig": {web.id: {"Aliases": ["x"]}}}
    assert create(c, "box", b).attachments[0]["aliases"] == ["x"]


def test_create_unknown_extra_network(c, web):
    with pytest.raises(NotFound, match="network nope not found"):
        create(c, "box", body("web", "nope"))
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
        create(c, "box", body(*networks, **cfg))
    assert c.by_id == {} and c.store.load("containers") == []


@pytest.mark.parametrize("mode", ["host", "none"])
def test_create_host_and_none_have_no_attachments(c, mode):
    assert create(c, "box", {"Cmd": ["true"], "HostConfig": {"NetworkMode": mode}}).attachments == []


def test_create_links_only_on_the_default_bridge(c, web):
    with pytest.raises(InvalidParameter, match="--link is supported only on the default bridge"):
        create(c, "box", body("web", links=["x"]))
    with pytest.raises(InvalidParameter, match="--link needs the default bridge"):
        create(c, "box", {"Cmd": ["true"], "HostConfig": {"NetworkMode": "host", "Links": ["x"]}})


def test_create_link_to_unknown_or_stopped_container(c):
    with pytest.raises(NotFound, match="No such container: ghost"):
        create(c, "box", body(links=["ghost"]))
    create(c, "idle", body())
    with pytest.raises(Conflict, match="Cannot link to a non running container: /idle"):
        create(c, "box", body(links=["idle"]))


def test_create_publish_on_internal_network_refused(c):
    c.networks.create(NetworkSpec("secret", subnet="10.7.0.0/24", internal=True))
    with pytest.raises(InvalidParameter, match="port publishing is not possible on internal network secret"):
        create(c, "box", body("secret", ports={"80/tcp": [{"HostPort": "8080"}]}))


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
    assert c.changes == [("join", dual.id)]
    assert host_lines(read(c, ctr, "hosts")) == [f"10.8.0.50\t{ctr.hostname}", f"fd00:8::50\t{ctr.hostname}"]
    # qiao's resolver on the gateway replaces the host's nameservers; search stays
    assert read(c, ctr, "resolv.conf") == "nameserver 10.8.0.1\nsearch lan\n"
    assert read(c, ctr, "hostname") == ctr.hostname + "\n"

    doc = inspect(c, "db")
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
    ns = inspect(c, "box")["NetworkSettings"]
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
    assert c.changes == [("join", web.id), ("join", dual.id)]
    networks = inspect(c, "box")["NetworkSettings"]["Networks"]
    # dockerd shows each network's gateway, whichever carries the default route
    assert (networks["web"]["Gateway"], networks["dual"]["Gateway"]) == ("10.9.0.1", "10.8.0.1")

    other = started(c, "box2", "web", "bridge")  # both IPv4 only: by name
    assert (eps(c, other)["bridge"].gateway, eps(c, other)["web"].gateway) == ("172.17.0.1", "")


def test_start_internal_network_has_no_default_route(c):
    secret = c.networks.create(NetworkSpec("secret", subnet="10.7.0.0/24", internal=True))
    ctr = started(c, "box", "secret")
    assert eps(c, ctr)["secret"].gateway == ""
    assert c.host.sandboxes[ctr.sandbox_key]["eth0"].gateway == ""
    assert read(c, ctr, "resolv.conf").startswith("nameserver 10.7.0.1\n")  # DNS still answers local names
    assert c.firewall.networks[bridge_of(secret)].internal


def test_start_icc_false_isolates_the_port(c):
    net = c.networks.create(NetworkSpec("quiet", subnet="10.6.0.0/24", options={"com.docker.network.bridge.enable_icc": "false"}))
    ctr = started(c, "box", "quiet")
    assert c.host.links[eps(c, ctr)["quiet"].host_ifname]["isolated"] is True
    assert c.firewall.networks[bridge_of(net)].icc is False


def test_start_duplicate_static_ip_fails_and_rolls_back(c, web):
    first = started(c, "a", "web", IPAMConfig={"IPv4Address": "10.9.0.9"})
    links = dict(c.host.links)
    other = create(c, "b", body("web", IPAMConfig={"IPv4Address": "10.9.0.9"}))
    with pytest.raises(Conflict, match="10.9.0.9 is already in use"):
        c.start(other.id)
    assert c.host.links == links and other.sandbox_key == "" and not other.running
    assert eps(c, first)["web"].address == "10.9.0.9"
    assert c.networks.pools[web.id].allocate() == IPv4Address("10.9.0.2")


@pytest.mark.parametrize("address", ["10.9.0.0", "10.9.0.1", "10.9.0.255"])
def test_static_ip_equal_to_the_networks_own_addresses_is_refused_at_create(c, web, address):
    with pytest.raises(InvalidParameter, match="the network's own address"):
        create(c, "a", body("web", IPAMConfig={"IPv4Address": address}))
    assert c.by_id == {}


def test_exit_releases_addresses_and_notifies(c, dual):
    ctr = started(c, "a", "dual", IPAMConfig={"IPv4Address": "10.8.0.9", "IPv6Address": "fd00:8::9"})
    c.changes.clear()
    c._on_exit(ctr.id)
    assert ctr.status == "exited" and ctr.endpoint_ids == [] and c.networks.endpoints_of(dual.id) == []
    assert c.changes == [("leave", dual.id)]
    again = started(c, "b", "dual", IPAMConfig={"IPv4Address": "10.8.0.9", "IPv6Address": "fd00:8::9"})
    assert eps(c, again)["dual"].address == "10.8.0.9"


# -- links -------------------------------------------------------------------


def test_link_hosts_entry_env_and_inspect(c):
    target = create(c, "db", {**body(), "Env": ["PASSWORD=x", "PATH=/bin"], "ExposedPorts": {"5432/tcp": {}, "53/udp": {}}})
    c.start(target.id)
    address = eps(c, target)["bridge"].address
    box = started(c, "box", links=["db:data"])
    assert host_lines(read(c, box, "hosts"))[-1] == f"{address}\tdata {target.hostname} db"
    env = c.supervisor.specs[box.id]["env"]
    assert env["DATA_NAME"] == "/box/data"
    assert env["DATA_PORT"] == f"tcp://{address}:5432"
    assert env["DATA_PORT_53_UDP_ADDR"] == address and env["DATA_PORT_53_UDP_PROTO"] == "udp"
    assert env["DATA_ENV_PASSWORD"] == "x" and "DATA_ENV_PATH" not in env
    assert inspect(c, "box")["HostConfig"]["Links"] == ["/db:/box/data"]
    assert box.links == [[target.id, "data"]]


def test_link_without_alias_uses_the_name(c):
    target = started(c, "db")
    box = started(c, "box", links=["db"])
    assert host_lines(read(c, box, "hosts"))[-1] == f"{eps(c, target)['bridge'].address}\tdb {target.hostname}"


def test_link_invalid_alias(c):
    started(c, "db")
    with pytest.raises(InvalidParameter, match="invalid link alias"):
        create(c, "box", body(links=["db:bad_alias"]))


def test_remove_linked_target_refused(c):
    started(c, "db")
    started(c, "box", links=["db"])
    with pytest.raises(Conflict, match="container box links to it"):
        c.remove("db")


# -- connect / disconnect ------------------------------------------------------


def test_connect_stopped_container_joins_at_start(c, web, dual):
    ctr = create(c, "box", body("web"))
    c.connect("box", "dual", settings({"Aliases": ["api"], "IPAMConfig": {"IPv6Address": "fd00:8::77"}}))
    assert [a["network"] for a in ctr.attachments] == [web.id, dual.id]
    assert c.store.load("containers")[0]["attachments"][1]["ip6"] == "fd00:8::77"
    c.start(ctr.id)
    assert (eps(c, ctr)["dual"].address6, eps(c, ctr)["dual"].aliases) == ("fd00:8::77", ["api"])


def test_connect_running_container_gets_the_next_interface(c, web, dual):
    ctr = started(c, "box", "web")
    c.changes.clear()
    c.connect("box", "dual", settings({"Aliases": ["api"]}))
    ep = eps(c, ctr)["dual"]
    # dual stack comes first in Docker's order: the default route moves to it
    assert (ep.ifname, ep.gateway, ep.gateway6, ep.aliases) == ("eth1", "10.8.0.1", "fd00:8::1", ["api"])
    assert c.host.default_routes[ctr.sandbox_key] == ("10.8.0.1", "fd00:8::1")
    assert eps(c, ctr)["web"].gateway == ""
    assert c.networks.endpoints_of(dual.id) == [ep]
    assert c.changes == [("join", dual.id), ("join", web.id)]  # web's endpoint changed in place (no default route now)
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
    assert c.changes == [("join", web.id), ("leave", dual.id)]  # web's endpoint took the default route back
    assert host_lines(read(c, ctr, "hosts")) == [f"10.9.0.2\t{ctr.hostname}"]
    c.connect("box", "dual", settings({}))  # eth1 is free again
    assert eps(c, ctr)["dual"].ifname == "eth1"


def test_connect_keeps_the_route_when_the_new_network_comes_later(c, web):
    ctr = started(c, "box", "bridge")
    before = dict(c.host.default_routes)
    c.connect("box", "web", settings({}))  # "bridge" < "web"
    assert (eps(c, ctr)["bridge"].gateway, eps(c, ctr)["web"].gateway) == ("172.17.0.1", "")
    assert c.host.default_routes == before


def test_connect_that_fails_after_moving_the_route_moves_it_back(c, web, dual, monkeypatch):
    ctr = started(c, "box", "web")
    monkeypatch.setattr(c, "fault", fault_at("store"))
    with pytest.raises(InjectedFault):
        c.connect("box", "dual", settings({}))
    assert c.host.default_routes[ctr.sandbox_key] == ("10.9.0.1", "")
    assert list(eps(c, ctr)) == ["web"] and eps(c, ctr)["web"].gateway == "10.9.0.1"


def test_inspect_top_level_address_follows_the_default_bridge(c, web):
    ctr = started(c, "box", "web")
    ns = inspect(c, "box")["NetworkSettings"]
    assert (ns["IPAddress"], ns["EndpointID"], ns["Networks"]["web"]["IPAddress"]) == ("", "", "10.9.0.2")

    c.connect("box", "bridge", settings({}))  # second: the bridge's address; "bridge" < "web", so the default route too
    ns = inspect(c, "box")["NetworkSettings"]
    bridge_ep = eps(c, ctr)["bridge"]
    assert (ns["IPAddress"], ns["IPPrefixLen"], ns["MacAddress"]) == (bridge_ep.address, 16, bridge_ep.mac)
    assert (ns["EndpointID"], ns["Gateway"]) == (bridge_ep.id, "172.17.0.1")

    c.disconnect("box", "bridge")
    assert inspect(c, "box")["NetworkSettings"]["IPAddress"] == ""


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
    ctr = create(c, "box", {"Cmd": ["true"], "HostConfig": {"NetworkMode": setup}})
    before = [dict(a) for a in ctr.attachments]
    with pytest.raises(error, match=fragment):
        c.connect("box", net, settings(cfg))
    assert ctr.attachments == before


def test_connect_duplicate_static_ip_on_running_container_rolls_back(c, web, dual):
    started(c, "a", "dual", IPAMConfig={"IPv4Address": "10.8.0.9"})
    ctr = started(c, "box", "web")
    links = dict(c.host.links)
    with pytest.raises(Conflict, match="already in use"):
        c.connect("box", "dual", settings({"IPAMConfig": {"IPv4Address": "10.8.0.9"}}))
    assert c.host.links == links and list(eps(c, ctr)) == ["web"] and len(ctr.attachments) == 1


def test_disconnect_errors(c, web, dual):
    started(c, "box", "web")
    with pytest.raises(Conflict, match="container box is not connected to network dual"):
        c.disconnect("box", "dual")


def test_disconnecting_the_gateway_network_moves_the_default_route(c, web, dual):
    ctr = started(c, "box", "web", "dual", "bridge")
    internal = c.networks.create(NetworkSpec("quiet", subnet="10.7.0.0/24", internal=True))
    c.connect("box", "quiet", settings({}))
    assert eps(c, ctr)["dual"].gateway == "10.8.0.1"

    c.disconnect("box", "dual")  # heirs in Docker's order: bridge < web by name (quiet is internal)
    assert c.host.default_routes[ctr.sandbox_key] == ("172.17.0.1", "")
    assert (eps(c, ctr)["bridge"].gateway, eps(c, ctr)["web"].gateway) == ("172.17.0.1", "")
    stored = {r["network_id"]: r for r in c.store.load("endpoints")}
    assert stored[eps(c, ctr)["bridge"].network_id]["gateway"] == "172.17.0.1"
    assert inspect(c, "box")["NetworkSettings"]["Networks"]["bridge"]["Gateway"] == "172.17.0.1"

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
    ctr = create(c, "box", body("web", "dual"))
    c.disconnect("box", "web")
    assert [a["network"] for a in ctr.attachments] == [dual.id]
    assert c.store.load("containers")[0]["attachments"] == ctr.attachments


# -- teardown is complete: a failing step never leaves the rest behind --------------------


def kill_reports_exit(c: Containers, ctr, monkeypatch) -> None:
    """SIGKILL reaches the command at once and the supervisor reports the exit (what the real one does)."""
    monkeypatch.setattr(c, "_kill_now", lambda pid: c._on_exit(ctr.id))


def test_force_remove_of_a_running_container_is_complete_when_the_firewall_fails(c, web, monkeypatch, caplog):
    ctr = started(c, "box", "web", ports={"80/tcp": [{"HostIp": "127.0.0.1"}]})
    ep, sandbox, port = eps(c, ctr)["web"], ctr.sandbox_key, ctr.ports[0]["host_port"]
    assert ep.host_ifname in c.host.links and sandbox in c.host.namespaces and c.firewall.mappings
    assert c.ports.reservations.owner_of("tcp", "127.0.0.1", port) == ctr.id

    def broken(*args):
        raise RuntimeError("nft: no such table")

    monkeypatch.setattr(c.firewall, "del_ports", broken)
    monkeypatch.setattr(c.firewall, "del_network", broken)
    kill_reports_exit(c, ctr, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="qiao.steps"):
        c.remove("box", force=True)

    assert c.by_id == {} and c.store.load("containers") == [] and c.store.load("endpoints") == []
    assert ep.host_ifname not in c.host.links  # the veth
    assert sandbox not in c.host.namespaces and sandbox not in c.host.sandboxes  # the sandbox
    assert c.networks.endpoints_of(web.id) == [] and ep.id not in c.networks.endpoints
    assert c.networks.pools[web.id].allocate() == IPv4Address(ep.address)  # the address is given out again
    assert c.ports.reservations.owner_of("tcp", "127.0.0.1", port) is None  # the host port too
    assert "unpublish-ports: nft: no such table" in caplog.text

    with caplog.at_level(logging.WARNING, logger="qiao.steps"):
        c.networks.remove("web")  # its firewall rules cannot be deleted either: the network still goes
    assert "del-firewall: nft: no such table" in caplog.text
    assert web.id not in c.networks.by_id and bridge_of(web) not in c.host.links
    assert "web" not in {r["name"] for r in c.store.load("networks")}


@pytest.mark.parametrize("step", ["unpublish-ports", "delete-veth", "destroy-sandbox"])
def test_force_remove_goes_on_past_any_failing_step(c, web, monkeypatch, step):
    ctr = started(c, "box", "web", ports={"80/tcp": [{"HostIp": "127.0.0.1"}]})
    ep, sandbox = eps(c, ctr)["web"], ctr.sandbox_key
    kill_reports_exit(c, ctr, monkeypatch)
    monkeypatch.setattr(c, "fault", fault_at(step))
    c.remove("box", force=True)
    assert c.by_id == {} and c.store.load("containers") == [] and c.store.load("endpoints") == []
    assert (ep.host_ifname in c.host.links) is (step == "delete-veth")  # only what failed is left, for the resync
    assert (sandbox in c.host.namespaces) is (step == "destroy-sandbox")
    assert (len(c.firewall.mappings) == 1) is (step == "unpublish-ports")
    assert c.networks.endpoints_of(web.id) == []
    assert c.networks.pools[web.id].allocate() == IPv4Address(ep.address)


# -- user, working directory, capabilities, hidden root (qiao.runtime.security) -----------


def test_create_checks_and_keeps_the_process_settings(c):
    b = {**body(), "User": "nobody", "WorkingDir": "/tmp"}
    b["HostConfig"].update(CapAdd=["net_admin"], CapDrop=["mknod"])
    ctr = create(c, "sec", b)
    assert (ctr.user, ctr.workdir, ctr.cap_add, ctr.cap_drop, ctr.privileged) == ("nobody", "/tmp", ["CAP_NET_ADMIN"], ["CAP_MKNOD"], False)
    doc = docker_json.container(c.inspect("sec"))
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
        create(c, "bad", b)
    assert c.by_id == {} and c.store.load("containers") == []


@pytest.mark.parametrize("mode", ["bridge", "host", "none"])
def test_start_spec_carries_the_process_settings_and_hides_the_root(c, mode):
    b = {**body(), "User": "nobody"}
    b["HostConfig"].update(NetworkMode=mode, CapAdd=["NET_ADMIN"])
    ctr = c.start(create(c, "s-" + mode, b).id)
    spec = c.supervisor.specs[ctr.id]
    assert (spec["uid"], spec["gid"], spec["cwd"], spec["no_new_privs"]) == (65534, 65534, "/", True)
    assert spec["caps"][-1] == "CAP_NET_ADMIN" and "CAP_SYS_ADMIN" not in spec["caps"]
    assert spec["hide"][0] == c.root.base  # the whole root: store, logs, socket, namespace files
    assert spec["env"]["HOME"] == "/nonexistent"  # nobody's, as Docker sets it
    if mode == "host":
        assert spec.get("mounts") is None and "netns" not in spec  # still a mount namespace: the shim makes one to hide the root


def test_start_keeps_a_home_the_container_sets(c):
    b = {**body(), "User": "nobody", "Env": ["HOME=/srv"]}
    ctr = c.start(create(c, "home", b).id)
    assert c.supervisor.specs[ctr.id]["env"]["HOME"] == "/srv"


# -- what `docker events` shows ------------------------------------------------------


def logged(c: Containers) -> list[tuple[str, str, dict]]:
    records, _ = c.eventlog.snapshot()
    return [(r.type, r.action, dict(r.attributes)) for r in records]


def test_events_of_a_life_in_dockerds_order(c, web, monkeypatch):
    """create, connect, start; disconnect of a stopped container; die (exitCode), then disconnect; destroy."""
    ctr = create(c, "box", {**body("web"), "Image": "qiao/host", "Labels": {"tier": "db", "name": "not this"}})
    assert ctr.labels == {"tier": "db", "name": "not this"} and ctr.image == "qiao/host"
    c.start(ctr.id)
    kill_reports_exit(c, ctr, monkeypatch)
    c.remove("box", force=True)
    attrs = {"tier": "db", "name": "box", "image": "qiao/host"}  # the labels, then image and name over them
    net = {"container": ctr.id, "name": "web", "type": "bridge"}
    assert logged(c) == [
        ("container", "create", attrs),
        ("network", "connect", net),
        ("container", "start", attrs),
        ("container", "kill", {**attrs, "signal": "9"}),
        ("container", "die", {**attrs, "exitCode": "255"}),  # the fake supervisor records no exit code
        ("network", "disconnect", net),
        ("container", "destroy", attrs),
    ]


def test_events_of_kill_connect_and_disconnect(c, web, dual):
    ctr = started(c, "box", "web")
    before = len(logged(c))
    c.kill("box", 15)
    c.connect("box", "dual", EndpointSpec())
    c.disconnect("box", "dual")
    assert [(t, a, attrs.get("signal", attrs.get("name"))) for t, a, attrs in logged(c)[before:]] == [
        ("container", "kill", "15"),
        ("network", "connect", "dual"),
        ("network", "disconnect", "dual"),
    ]
    assert all(r[2].get("container", ctr.id) == ctr.id for r in logged(c)[before:])


# -- containers with an image ----------------------------------------------------------


def _busybox(
    c: Containers, process: str = '["CMD [\\"sh\\"]", "ENV PATH=/bin A=image", "WORKDIR /srv", "USER nobody", "EXPOSE 80"]'
) -> Any:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("bin/sh")
        info.size, info.mode = 2, 0o755
        tar.addfile(info, io.BytesIO(b"#!"))
    c.images.load()
    return c.images.import_tar(io.BytesIO(buf.getvalue()), "busybox", "", json.loads(process), "")


def test_create_with_an_image_merges_its_config(c):
    img = _busybox(c)
    ctr = create(c, "b", {"Image": "busybox", "Env": ["A=user"]})
    assert (ctr.image, ctr.image_id, ctr.cmd, ctr.entrypoint) == ("busybox", img.id, ["sh"], [])
    assert (ctr.env, ctr.workdir, ctr.user, ctr.exposed_ports) == (["A=user", "PATH=/bin"], "/srv", "nobody", ["80/tcp"])
    doc = inspect(c, "b")
    assert (doc["Image"], doc["Config"]["Image"], doc["Path"], doc["Args"], doc["Config"]["Entrypoint"]) == (
        img.id,
        "busybox",
        "sh",
        [],
        None,
    )
    summary = docker_json.container_summary(c.views(True)[0])
    assert (summary["Image"], summary["ImageID"], summary["Command"]) == ("busybox", img.id, "sh")
    ctr = create(c, "e", {"Image": img.id[7:19], "Entrypoint": ["/bin/echo"], "Cmd": ["hi"], "User": "nosuch-on-the-host"})
    assert (ctr.argv, ctr.user) == (["/bin/echo", "hi"], "nosuch-on-the-host")  # users are the image's business, at start
    with pytest.raises(InvalidParameter, match="no command specified"):
        create(c, "x", {"Image": "busybox", "Entrypoint": [""]})


def test_create_with_a_missing_image_is_docker_404(c):
    with pytest.raises(NotFound, match="No such image: nothing:latest"):
        create(c, "x", {"Image": "nothing", "Cmd": ["true"]})
    assert c.by_id == {}
    ctr = create(c, "h", {"Image": "qiao/host", "Cmd": ["true"]})  # the image-less mode, by name
    assert (ctr.image, ctr.image_id, docker_json.container_summary(c.views(True)[0])["Image"]) == ("qiao/host", "", "qiao/host")


def test_start_with_an_image_asks_the_shim_for_its_root_filesystem(c):
    img = _busybox(c)
    ctr = c.start(create(c, "b", {"Image": "busybox", "User": "daemon"}).id)
    spec = c.supervisor.specs[ctr.id]  # type: ignore[attr-defined]
    layer = c.root.container_dir(ctr.id) + "/fs"
    assert spec["rootfs"] == {
        "lower": c.images.rootfs(img.id),
        "upper": layer + "/upper",
        "work": layer + "/work",
        "target": layer + "/root",
        "etc": [[c.files(ctr)[n], "/etc/" + n] for n in ("hosts", "resolv.conf", "hostname")],
        "privileged": False,
    }
    assert spec["user"] == "daemon" and "uid" not in spec and "hide" not in spec and "mounts" not in spec
    assert spec["cmd"] == ["sh"] and spec["env"]["PATH"] == "/bin" and "HOME" not in spec["env"] and spec["cwd"] == "/srv"


def test_start_with_an_image_in_host_mode_gets_copies_of_the_hosts_files(c):
    _busybox(c, '["ENV A=1"]')
    ctr = c.start(create(c, "h", {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"NetworkMode": "host"}}).id)
    spec = c.supervisor.specs[ctr.id]  # type: ignore[attr-defined]
    assert spec["env"]["PATH"] == containers_module.DEFAULT_PATH  # not the daemon's: the image's directories
    assert read(c, ctr, "hostname").strip() == ctr.hostname and [p for _s, p in spec["rootfs"]["etc"]] == [
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
    ]


def test_image_files_outlive_a_forced_rmi_until_their_container_goes(c):
    img = _busybox(c)
    c.images.users = lambda iid: [(x.id, x.running) for x in c.by_id.values() if x.image_id == iid]
    ctr = create(c, "b", {"Image": "busybox"})
    with pytest.raises(Conflict, match="must force"):
        c.images.remove("busybox")
    assert c.images.remove("busybox", force=True) == [{"Untagged": "busybox:latest"}, {"Deleted": img.id}]
    with pytest.raises(NotFound):
        create(c, "c", {"Image": "busybox"})
    assert os.path.isdir(c.images.rootfs(img.id))
    c.remove(ctr.id)
    assert not os.path.exists(c.images.rootfs(img.id))
