"""qiao's dockerd plugin over the kernel stubs: the calls in the order
dockerd 20.10 makes them for `docker network create -d qiao --ipam-driver
qiao`, `docker run -p`, `docker rm -f`, `docker network rm`, and the
protocol's error answers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qiao.docker_plugin.service import DockerPlugin, DockerWatch
from qiao.engine import etcfiles
from qiao.engine.engine import Engine
from qiao.kernel.firewall import PortMapping, StubFirewall
from qiao.kernel.host import StubHost
from qiao.paths import Root

NET, EP = "n" * 64, "e" * 64


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> Any:
    monkeypatch.setattr(etcfiles, "host_nameservers", lambda *a: [])
    eng = Engine(Root.resolve(str(tmp_path / "root")), StubHost(), StubFirewall(), resolv_conf=str(tmp_path / "none"))
    eng.networks.load()
    eng.networks.ensure_builtin()
    yield DockerPlugin(eng)
    eng.store.close()


def call(plugin: DockerPlugin, name: str, body: dict[str, Any] | None = None, status: int = 200) -> dict[str, Any]:
    got, answer = plugin.call(name, json.dumps(body or {}).encode())
    assert got == status, answer
    return answer


def network(plugin: DockerPlugin, pool: str = "10.90.0.0/24", **options: str) -> str:
    pool_id = call(plugin, "IpamDriver.RequestPool", {"AddressSpace": "qiao", "Pool": pool})["PoolID"]
    gateway_request = {"PoolID": pool_id, "Options": {"RequestAddressType": "com.docker.network.gateway"}}
    gateway = call(plugin, "IpamDriver.RequestAddress", gateway_request)
    ipv4 = [{"AddressSpace": "qiao", "Pool": pool, "Gateway": gateway["Address"]}]
    call(plugin, "NetworkDriver.CreateNetwork", {"NetworkID": NET, "Options": {"com.docker.network.generic": options}, "IPv4Data": ipv4})
    return pool_id


def test_activate_and_capabilities(plugin):
    assert call(plugin, "Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert call(plugin, "NetworkDriver.GetCapabilities")["Scope"] == "local"
    assert call(plugin, "IpamDriver.GetDefaultAddressSpaces") == {"LocalDefaultAddressSpace": "qiao", "GlobalDefaultAddressSpace": "qiao"}
    assert "Err" in call(plugin, "NetworkDriver.Nosuch", status=404)


def test_a_container_lifecycle_as_dockerd_drives_it(plugin):
    eng = plugin.engine
    pool_id = network(plugin)
    net = eng.networks.named(f"docker-{NET[:12]}")
    assert net is not None and net.subnet == "10.90.0.0/24" and net.gateway == "10.90.0.1"
    address = call(plugin, "IpamDriver.RequestAddress", {"PoolID": pool_id})["Address"]
    assert address == "10.90.0.2/24"
    created = call(plugin, "NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": address}})
    assert created == {"Interface": {"MacAddress": "02:42:0a:5a:00:02"}}  # qiao's MAC, as Docker's was
    joined = call(plugin, "NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/x"})
    src = joined["InterfaceName"]["SrcName"]
    assert joined["InterfaceName"]["DstPrefix"] == "eth" and joined["Gateway"] == "10.90.0.1"
    veth = next(link for link in eng.host.links.values() if link.get("kind") == "veth")
    assert veth["peer"] == src and veth["netns"] == ""  # the peer stays in the host, for dockerd to move
    assert veth["master"] == net.driver_state["bridge"]
    portmap = [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18080, "HostPortEnd": 18080}]
    options = {"com.docker.network.portmap": portmap}
    call(plugin, "NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": EP, "Options": options})
    assert eng.networks.firewall.mappings == {PortMapping("tcp", "0.0.0.0", 18080, "10.90.0.2", 80)}
    info = call(plugin, "NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP})["Value"]
    assert info["com.docker.network.portmap"][0]["HostPort"] == 18080
    call(plugin, "NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NET, "EndpointID": EP})
    assert not eng.networks.firewall.mappings
    call(plugin, "NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP})
    call(plugin, "NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    call(plugin, "IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": "10.90.0.2"})
    assert not [v for v in eng.host.links.values() if v.get("kind") == "veth"] and not eng.attachments.by_name
    assert call(plugin, "IpamDriver.RequestAddress", {"PoolID": pool_id})["Address"] == "10.90.0.2/24"  # free again
    call(plugin, "NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})  # again: nothing to do
    call(plugin, "NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert eng.networks.named(f"docker-{NET[:12]}") is None
    call(plugin, "IpamDriver.ReleasePool", {"PoolID": pool_id})


def test_the_ipam_never_hands_an_address_twice(plugin):
    pool_id = network(plugin)
    got = {call(plugin, "IpamDriver.RequestAddress", {"PoolID": pool_id})["Address"] for _ in range(5)}
    assert len(got) == 5 and "10.90.0.1/24" not in got
    assert "Err" in call(plugin, "IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "10.90.0.2"}, status=400)


@pytest.mark.parametrize(
    ("name", "body", "words"),
    [
        ("IpamDriver.RequestPool", {"AddressSpace": "qiao", "Pool": "10.90.0.0/16"}, "overlaps"),
        ("IpamDriver.RequestPool", {"AddressSpace": "qiao", "Pool": "nonsense"}, "invalid pool"),
        ("IpamDriver.RequestPool", {"AddressSpace": "qiao", "V6": True}, "IPv6"),
        ("IpamDriver.RequestAddress", {"PoolID": "qiao/10.90.0.0/24", "Address": "10.1.1.1"}, "not in pool"),
        ("IpamDriver.RequestAddress", {"PoolID": "other/x"}, "unknown pool"),
        ("NetworkDriver.CreateEndpoint", {"NetworkID": "x" * 64, "EndpointID": EP}, "not a qiao network"),
        ("NetworkDriver.CreateEndpoint", {"NetworkID": NET}, "EndpointID"),
        ("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": "z" * 64}, "no endpoint"),
    ],
)
def test_bad_input_is_the_protocols_error_answer(plugin, name, body, words):
    network(plugin)
    answer = call(plugin, name, body, status=400)
    assert set(answer) == {"Err"} and words in answer["Err"], answer


def test_bad_json_and_unknown_driver_options(plugin):
    got, answer = plugin.call("NetworkDriver.CreateNetwork", b"{not json")
    assert got == 400 and "not valid JSON" in answer["Err"]
    ipv4 = [{"Pool": "10.91.0.0/24", "Gateway": "10.91.0.1/24"}]
    options = {"com.docker.network.generic": {"com.docker.network.bridge.nosuch": "1"}}
    answer = call(plugin, "NetworkDriver.CreateNetwork", {"NetworkID": NET, "Options": options, "IPv4Data": ipv4}, status=400)
    assert "com.docker.network.bridge.nosuch" in answer["Err"]


def test_an_empty_body_is_refused_never_read_as_an_empty_request(plugin):
    """dockerd's plugin client sends a call again, without its body, when the connection broke before
    the answer (qiaod killed): ``RequestPool {}`` would be a pool of qiao's choosing, not the one asked for."""
    for name in ("IpamDriver.RequestPool", "IpamDriver.RequestAddress", "NetworkDriver.CreateNetwork", "NetworkDriver.DeleteEndpoint"):
        got, answer = plugin.call(name, b"")
        assert got == 400 and set(answer) == {"Err"} and "empty request" in answer["Err"], (name, answer)
    assert plugin.call("Plugin.Activate", b"") == (200, {"Implements": ["NetworkDriver", "IpamDriver"]})
    assert plugin.call("IpamDriver.RequestPool", b"{}")[0] == 200  # a real empty request still chooses a pool


class FakeDockerd(DockerWatch):
    """dockerd's answers to the watch's GETs: network id -> its endpoint ids (absent: 404; None: no answer)."""

    def __init__(self, plugin: DockerPlugin, networks: dict[str, list[str] | None]):
        super().__init__(plugin, "unix:///nowhere")
        self.networks = networks

    def _get(self, path: str) -> dict[str, Any] | None:
        docker_id = path.removeprefix("/networks/")
        if docker_id not in self.networks:
            return {}
        endpoints = self.networks[docker_id]
        return None if endpoints is None else {"Containers": {f"c{n}": {"EndpointID": e} for n, e in enumerate(endpoints)}}


def endpoint(plugin: DockerPlugin, endpoint_id: str) -> None:
    call(plugin, "NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": endpoint_id, "Interface": {}})


def test_the_sweep_detaches_what_dockerd_never_learned_of(plugin):
    """qiaod killed after CreateEndpoint, before dockerd read the answer: at the next start, the endpoint
    dockerd does not list is detached (its address free again); ones it lists, or that this qiaod made, stay."""
    network(plugin)
    known, lost, fresh = "k" * 64, "l" * 64, "f" * 64
    endpoint(plugin, known)
    endpoint(plugin, lost)
    watch = FakeDockerd(plugin, {NET: [known]})  # "started" now: the two above were made before
    endpoint(plugin, fresh)  # made after this start: dockerd may not have stored it yet
    assert watch.sweep() == [plugin._key(NET, lost)]
    assert {a.container_id for a in plugin.engine.attachments.by_name.values()} == {known, fresh}
    assert FakeDockerd(plugin, {NET: None}).sweep() == []  # dockerd gave no answer: nothing judged
    assert sorted(FakeDockerd(plugin, {}).sweep()) == sorted([plugin._key(NET, known), plugin._key(NET, fresh)])  # network gone
