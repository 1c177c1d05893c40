"""The CNI front door over the kernel stubs: the plugin's own checks, the
service's answers (results per spec version, error codes), and the engine's
attachments behind them (idempotent DEL, GC, CHECK, ports, names, restart).

The sandbox "namespaces" are plain files: the engine only needs a path
that exists (and its inode, to notice a path naming another namespace)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import pytest

from qiao import cni
from qiao.cli import client as client_module
from qiao.cni import plugin
from qiao.cni.service import CniService, parse_args
from qiao.engine import containers as containers_module
from qiao.engine import etcfiles
from qiao.engine.engine import Engine
from qiao.engine.specs import ContainerSpec, PortBinding
from qiao.kernel.firewall import PortMapping, StubFirewall
from qiao.kernel.host import StubHost
from qiao.paths import Root
from tests.unit.test_containers import FakeSupervisor

SUBNET = "10.89.0.0/24"


@pytest.fixture
def engine(tmp_path, monkeypatch) -> Any:
    monkeypatch.setattr(etcfiles, "host_nameservers", lambda *a: [])
    monkeypatch.setattr(containers_module, "Supervisor", FakeSupervisor)
    root = Root.resolve(str(tmp_path / "root"))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    eng = Engine(root, StubHost(), StubFirewall(), resolv_conf=str(resolv))
    eng.networks.load()
    eng.networks.ensure_builtin()
    yield eng
    eng.store.close()


@pytest.fixture
def svc(engine) -> CniService:
    return CniService(engine)


@pytest.fixture
def netns(tmp_path):
    """Paths that stand for network namespaces."""

    def make(name: str = "pod") -> str:
        path = tmp_path / f"ns-{name}"
        path.touch()
        return str(path)

    return make


def conf(version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "qnet", "type": "qiao", "subnet": SUBNET, **extra}


def call(svc: CniService, command: str, config: dict[str, Any], cid: str = "c1", netns: str = "", ifname: str = "eth0", args: str = ""):
    body = {"command": command, "containerID": cid, "netns": netns, "ifname": ifname, "args": args, "config": config}
    return svc.handle(json.dumps(body).encode())


def add(svc: CniService, netns: str, cid: str = "c1", **kw: Any) -> dict[str, Any]:
    args = kw.pop("args", "")
    status, answer = call(svc, "ADD", conf(**kw), cid, netns, args=args)
    assert status == 200, answer
    return answer["result"]


def restarted(engine: Engine, tmp_path) -> Engine:
    """The engine a new qiaod builds on the same root and kernel (``start`` without its resync thread)."""
    engine.store.close()
    again = Engine(engine.root, engine.host, StubFirewall(), resolv_conf=str(tmp_path / "resolv.conf"))
    again.networks.load()
    again.containers.load()
    again.attachments.load()
    again.containers.reconcile(keep_endpoints=again.attachments.endpoint_ids(), keep_sandboxes=again.attachments.pins())
    again.attachments.reconcile()
    return again


# -- the plugin executable's own part -------------------------------------------


def run_plugin(env: dict[str, str], stdin: Any) -> tuple[int, dict | None]:
    raw = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    return plugin.run(env, raw)


def test_version_needs_no_daemon():
    status, out = run_plugin({"CNI_COMMAND": "VERSION"}, {"cniVersion": "0.4.0"})
    assert status == 0 and out == {"cniVersion": "0.4.0", "supportedVersions": list(cni.SUPPORTED_VERSIONS)}
    status, out = run_plugin({"CNI_COMMAND": "VERSION"}, b"")
    assert status == 0 and out and out["cniVersion"] == cni.LATEST


@pytest.mark.parametrize(
    ("env", "stdin", "code"),
    [
        ({"CNI_COMMAND": "NOPE"}, conf(), cni.INVALID_ENVIRONMENT),
        ({}, conf(), cni.INVALID_ENVIRONMENT),
        ({"CNI_COMMAND": "ADD"}, b"{not json", cni.DECODE_FAILURE),
        ({"CNI_COMMAND": "ADD"}, b"[1, 2]", cni.DECODE_FAILURE),
        ({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}, conf(), cni.INVALID_ENVIRONMENT),  # no CNI_NETNS
        ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1"}, conf(), cni.INVALID_ENVIRONMENT),  # no CNI_IFNAME
        (
            {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/nonexistent/ns"},
            conf(),
            cni.INVALID_ENVIRONMENT,
        ),
    ],
)
def test_plugin_refuses_before_asking_qiaod(env, stdin, code):
    status, out = run_plugin(env, stdin)
    assert status == 1 and out is not None
    assert out["code"] == code and out["msg"] and set(out) <= {"cniVersion", "code", "msg", "details"}


@pytest.mark.parametrize(("command", "code"), [("ADD", cni.TRY_AGAIN_LATER), ("STATUS", cni.NOT_READY), ("GC", cni.TRY_AGAIN_LATER)])
def test_no_qiaod_is_try_again_or_not_ready(tmp_path, monkeypatch, command, code):
    def no_daemon(self):
        raise client_module.Unreachable("qiaod failed to start: test")

    monkeypatch.setattr(client_module.Client, "_start_daemon", no_daemon)
    ns = tmp_path / "ns"
    ns.touch()
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": str(ns)}
    status, out = run_plugin(env, conf(qiaoRoot=str(tmp_path / "root")))
    assert status == 1 and out and out["code"] == code and "qiaod cannot serve" in out["msg"]


def test_cni_args():
    assert parse_args("IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default") == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAME": "web",
        "K8S_POD_NAMESPACE": "default",
    }
    assert parse_args("") == {}


# -- results ------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_result_has_the_versions_shape(svc, netns, version):
    result = add(svc, netns(), version=version)
    assert result["cniVersion"] == version
    host_end, inside = result["interfaces"]
    assert host_end["name"].startswith("veth") and "sandbox" not in host_end
    assert inside == {"name": "eth0", "mac": "02:42:0a:59:00:02", "sandbox": netns(), **({"mtu": 1500} if version == "1.1.0" else {})}
    ip = result["ips"][0]
    assert ip["address"] == "10.89.0.2/24" and ip["gateway"] == "10.89.0.1" and ip["interface"] == 1
    assert ("version" in ip) == version.startswith("0.")
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.89.0.1"}]
    assert result["dns"] == {"nameservers": ["10.89.0.1"]}  # the network's resolver


def test_first_add_creates_the_network_from_the_configuration(svc, engine, netns):
    add(svc, netns(), bridge="qcni0", mtu=1400, ipMasq=False)
    net = engine.networks.get("qnet")
    assert net.subnet == SUBNET and net.mtu == 1400 and net.driver_state["bridge"] == "qcni0"
    assert net.options["com.docker.network.bridge.enable_ip_masquerade"] == "false"


def test_an_existing_network_is_used_and_its_subnet_must_match(svc, engine, netns):
    add(svc, netns("a"), cid="a")
    status, answer = call(svc, "ADD", conf(subnet="10.90.0.0/24"), "b", netns("b"))
    assert status == 400 and answer["code"] == cni.INVALID_CONFIG and "exists with subnet 10.89.0.0/24" in answer["msg"]
    status, answer = call(svc, "ADD", {**conf(), "subnet": ""}, "b", netns("b"))  # no subnet: the network as it is
    assert status == 200, answer


def test_unknown_network_without_subnet_is_invalid_config(svc, netns):
    status, answer = call(svc, "ADD", {"cniVersion": "1.0.0", "name": "nosuch", "type": "qiao"}, "c1", netns())
    assert status == 400 and answer["code"] == cni.INVALID_CONFIG and "nosuch not found" in answer["msg"]


@pytest.mark.parametrize(
    ("config", "code", "words"),
    [
        (conf(version="9.9.9"), cni.INCOMPATIBLE_VERSION, "9.9.9"),
        ({"name": "qnet"}, cni.INCOMPATIBLE_VERSION, "cniVersion"),
        (conf(mtu="big"), cni.INVALID_CONFIG, "mtu"),
        (conf(runtimeConfig={"portMappings": [{"hostPort": "x", "containerPort": 80}]}), cni.INVALID_CONFIG, "hostPort"),
        (conf(runtimeConfig={"portMappings": [{"hostPort": 0, "containerPort": 80}]}), cni.INVALID_CONFIG, "host port"),
        (conf(runtimeConfig={"ips": ["10.1.0.5/24"]}), cni.INVALID_CONFIG, "not in the subnet"),
        (conf(runtimeConfig={"ips": ["bogus"]}), cni.INVALID_CONFIG, "bogus"),
        (conf(runtimeConfig={"mac": "01:00:5e:00:00:01"}), cni.INVALID_CONFIG, "MAC"),
        (conf(subnet="10.89.0.0/33"), cni.INVALID_CONFIG, "10.89.0.0/33"),
        (conf(driver="nosuch"), cni.INVALID_CONFIG, "nosuch"),
    ],
)
def test_bad_configuration_is_one_error_and_changes_nothing(svc, engine, netns, config, code, words):
    before = (set(engine.networks.by_id), set(engine.networks.endpoints), dict(engine.attachments.by_name))
    status, answer = call(svc, "ADD", config, "c1", netns())
    assert status >= 400 and answer["code"] == code and words in answer["msg"] + answer.get("details", ""), answer
    assert (set(engine.networks.by_id), set(engine.networks.endpoints), dict(engine.attachments.by_name)) == before
    assert not [n for n, link in engine.host.links.items() if link.get("kind") == "veth"]


def test_bad_ifname_and_args(svc, netns):
    status, answer = call(svc, "ADD", conf(), "c1", netns(), ifname="eth0/../x")
    assert answer["code"] == cni.INVALID_ENVIRONMENT
    status, answer = call(svc, "ADD", conf(), "c1", netns(), args="novalue")
    assert answer["code"] == cni.INVALID_ENVIRONMENT and "CNI_ARGS" in answer["msg"]


def test_netns_that_does_not_exist(svc, engine):
    status, answer = call(svc, "ADD", conf(), "c1", "/nonexistent/netns")
    assert answer["code"] == cni.INVALID_ENVIRONMENT and not engine.attachments.by_name


# -- ADD twice, DEL, GC ----------------------------------------------------------


def test_second_add_of_the_same_key_is_a_conflict_and_leaves_the_first(svc, engine, netns):
    add(svc, netns())
    links = dict(engine.host.links)
    status, answer = call(svc, "ADD", conf(), "c1", netns())
    assert status == 409 and answer["code"] == cni.CONFLICT
    assert engine.host.links == links and len(engine.attachments.by_name) == 1
    status, answer = call(svc, "ADD", conf(), "c1", netns(), ifname="eth1")  # another interface: allowed
    assert status == 200 and answer["result"]["interfaces"][1]["name"] == "eth1"


def test_del_is_idempotent(svc, engine, netns):
    for _ in range(2):  # unknown container, then again
        assert call(svc, "DEL", conf(), "nobody", "") == (200, {})
    add(svc, netns())
    assert call(svc, "DEL", conf(), "c1", "") == (200, {})
    assert call(svc, "DEL", conf(), "c1", "") == (200, {})
    assert not engine.attachments.by_name and not engine.networks.endpoints_of(engine.networks.get("qnet").id)
    assert not [n for n, link in engine.host.links.items() if link.get("kind") == "veth"]
    assert add(svc, netns())["ips"][0]["address"] == "10.89.0.2/24"  # the address came back


def test_del_after_the_netns_is_gone(svc, engine, netns):
    path = netns()
    add(svc, path)
    os.unlink(path)
    assert call(svc, "DEL", conf(), "c1", path) == (200, {})
    assert not engine.attachments.by_name


def test_del_after_a_failed_add(svc, engine, netns, monkeypatch):
    from qiao.engine.steps import fault_at

    engine.attachments.fault = fault_at("publish-ports")
    status, answer = call(svc, "ADD", conf(runtimeConfig={"portMappings": [{"hostPort": 18080, "containerPort": 80}]}), "c1", netns())
    assert status == 500 and answer["code"] == cni.INTERNAL
    assert not engine.attachments.by_name and not [n for n, v in engine.host.links.items() if v.get("kind") == "veth"]
    assert call(svc, "DEL", conf(), "c1", netns()) == (200, {})


def test_gc_removes_what_is_not_listed_and_only_in_its_configuration(svc, engine, netns):
    for cid in ("keep", "drop"):
        add(svc, netns(cid), cid=cid)
    other = {**conf(), "name": "other", "network": "qnet"}
    assert call(svc, "ADD", other, "drop", netns("o"))[0] == 200
    gc = conf(version="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    assert call(svc, "GC", gc, "") == (200, {})
    assert sorted(engine.attachments.by_name) == ["cni:other/drop/eth0", "cni:qnet/keep/eth0"]
    assert call(svc, "GC", conf(version="1.1.0", **{"cni.dev/attachments": []}), "") == (200, {})  # the older key libcni also sends
    assert sorted(engine.attachments.by_name) == ["cni:other/drop/eth0"]


# -- CHECK, STATUS ----------------------------------------------------------------


def test_check(svc, engine, netns):
    path = netns()
    result = add(svc, path)
    assert call(svc, "CHECK", conf(prevResult=result), "c1", path) == (200, {})
    status, answer = call(svc, "CHECK", conf(), "c1", path)
    assert answer["code"] == cni.INVALID_CONFIG and "prevResult" in answer["msg"]
    status, answer = call(svc, "CHECK", conf(version="0.3.1", prevResult=result), "c1", path)
    assert answer["code"] == cni.INCOMPATIBLE_VERSION
    status, answer = call(svc, "CHECK", conf(prevResult=result), "nobody", path)
    assert answer["code"] == cni.UNKNOWN_CONTAINER
    wrong = {**result, "ips": [{"address": "10.89.0.77/24"}]}
    status, answer = call(svc, "CHECK", conf(prevResult=wrong), "c1", path)
    assert answer["code"] == cni.CHECK_FAILED and "prevResult lacks 10.89.0.2/24" in answer["msg"]
    engine.host.links.pop(result["interfaces"][0]["name"])  # the host end deleted by hand
    status, answer = call(svc, "CHECK", conf(prevResult=result), "c1", path)
    assert answer["code"] == cni.CHECK_FAILED and "host end" in answer["msg"]


def test_status(svc, engine):
    assert call(svc, "STATUS", conf(version="1.1.0"), "") == (200, {})  # creatable
    status, answer = call(svc, "STATUS", {"cniVersion": "1.1.0", "name": "nosuch", "type": "qiao"}, "")
    assert answer["code"] == cni.NOT_READY
    from qiao.drivers.overlay import OverlayDriver

    engine.drivers = type(engine.drivers)([*engine.drivers, OverlayDriver(engine.host, engine.networks.firewall)])  # without a store
    status, answer = call(svc, "STATUS", conf(version="1.1.0", driver="overlay"), "")
    assert answer["code"] == cni.NOT_READY and "cluster-store" in answer["msg"]


# -- capabilities, names, ports ------------------------------------------------------


def test_static_ip_and_mac_from_the_runtime(svc, netns):
    result = add(svc, netns(), runtimeConfig={"ips": ["10.89.0.50/24"], "mac": "c2:11:22:33:44:55"})
    assert result["ips"][0]["address"] == "10.89.0.50/24" and result["interfaces"][1]["mac"] == "c2:11:22:33:44:55"
    result = add(svc, netns("b"), cid="b", args="IP=10.89.0.60;MAC=c2:11:22:33:44:66;IgnoreUnknown=1")
    assert result["ips"][0]["address"] == "10.89.0.60/24" and result["interfaces"][1]["mac"] == "c2:11:22:33:44:66"


def test_pod_names_and_container_ids_become_dns_names(svc, engine, netns):
    add(svc, netns("a"), cid="a" * 64, args="K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop;K8S_POD_INFRA_CONTAINER_ID=x")
    add(svc, netns("b"), cid="default-t1")
    names = sorted(tuple(ep.dns_names) for ep in engine.networks.endpoints.values())
    assert names == [("default-t1",), ("web", "web.shop")]


def test_port_mappings_are_map_elements_and_share_the_hosts_ports(svc, engine, netns):
    mappings = [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}, {"hostPort": 18053, "containerPort": 53, "protocol": "UDP"}]
    add(svc, netns(), runtimeConfig={"portMappings": mappings})
    assert engine.host and engine.networks.firewall.mappings == {
        PortMapping("tcp", "0.0.0.0", 18080, "10.89.0.2", 80),
        PortMapping("udp", "0.0.0.0", 18053, "10.89.0.2", 53),
    }
    ctr = engine.containers.create(ContainerSpec(("sleep", "1"), name="web", port_bindings={"80/tcp": (PortBinding("", "18080"),)}))
    with pytest.raises(Exception, match="allocated to cni attachment c1/eth0"):
        engine.containers.start(ctr.id)
    call(svc, "DEL", conf(), "c1", "")
    assert not engine.networks.firewall.mappings
    engine.containers.start(ctr.id)  # the port is free again
    status, answer = call(svc, "ADD", conf(runtimeConfig={"portMappings": [mappings[0]]}), "c2", netns("c2"))
    assert status == 409 and answer["code"] == cni.CONFLICT and "container web" in answer["msg"]


def test_attachments_survive_a_daemon_restart(svc, engine, netns, tmp_path, caplog):
    add(svc, netns(), runtimeConfig={"portMappings": [{"hostPort": 18081, "containerPort": 80}]})
    engine.ports.reservations.release(engine.attachments.by_name["cni:qnet/c1/eth0"].id)  # the old daemon is gone
    again = restarted(engine, tmp_path)
    assert list(again.attachments.by_name) == ["cni:qnet/c1/eth0"]
    assert any(link.get("kind") == "veth" for link in again.host.links.values())  # not taken for an orphan
    assert again.ports.reservations.owner_of("tcp", "0.0.0.0", 18081) == again.attachments.by_name["cni:qnet/c1/eth0"].id
    request = {"command": "DEL", "containerID": "c1", "ifname": "eth0", "config": conf()}
    with caplog.at_level(logging.WARNING):
        assert CniService(again).handle(json.dumps(request).encode()) == (200, {})
    assert not again.attachments.by_name
    again.store.close()


def test_dual_stack_network_gives_both_families(svc, engine, netns):
    from qiao.engine.specs import NetworkSpec

    engine.networks.create(NetworkSpec("dual", subnet="10.8.0.0/24", enable_ipv6=True, subnet6="fd00:8::/64"))
    status, answer = call(svc, "ADD", {"cniVersion": "0.4.0", "name": "dual", "type": "qiao"}, "c1", netns())
    result = answer["result"]
    assert [ip["version"] for ip in result["ips"]] == ["4", "6"]
    assert result["ips"][1]["address"].startswith("fd00:8::") and result["ips"][1]["gateway"] == "fd00:8::1"
    assert {r["dst"] for r in result["routes"]} == {"0.0.0.0/0", "::/0"}


def test_the_default_bridge_network_takes_pods_too(svc, engine, netns):
    status, answer = call(svc, "ADD", {"cniVersion": "1.0.0", "name": "bridge", "type": "qiao"}, "c1", netns())
    assert status == 200, answer
    result = answer["result"]
    assert result["ips"][0]["address"].startswith("172.17.") and "dns" not in result  # no embedded DNS on the default bridge


def test_a_namespace_qiaod_cannot_name_is_pinned_until_del(svc, engine, netns, tmp_path):
    """The runtime's path names another namespace in qiaod's mount namespace
    (Podman's bind mount, made in its own): qiao pins the one the plugin passed."""
    runtime_path, passed = netns("seen-by-runtime"), netns("passed")
    fd = os.open(passed, os.O_RDONLY)
    try:
        body = {"command": "ADD", "containerID": "c1", "netns": runtime_path, "ifname": "eth0", "config": conf()}
        status, answer = svc.handle(json.dumps(body).encode(), fd)
    finally:
        os.close(fd)
    assert status == 200 and answer["result"]["interfaces"][1]["sandbox"] == runtime_path  # the runtime's name for it
    [att] = engine.attachments.by_name.values()
    assert att.pinned and att.sandbox.startswith(engine.root.netns_dir + "/cni-") and att.sandbox in engine.host.namespaces
    assert engine.host.pins[att.sandbox] == os.stat(passed).st_ino  # the namespace passed, not the one the path names here
    assert engine.networks.endpoints[att.endpoint_id].sandbox == att.sandbox
    assert engine.attachments.pins() == {att.sandbox}
    assert call(svc, "DEL", conf(), "c1", "") == (200, {})
    assert att.sandbox not in engine.host.namespaces


def test_the_same_namespace_is_not_pinned(svc, engine, netns):
    path = netns()
    fd = os.open(path, os.O_RDONLY)
    try:
        body = {"command": "ADD", "containerID": "c1", "netns": path, "ifname": "eth0", "config": conf()}
        assert svc.handle(json.dumps(body).encode(), fd)[0] == 200
    finally:
        os.close(fd)
    [att] = engine.attachments.by_name.values()
    assert not att.pinned and att.sandbox == path and not engine.attachments.pins()


# -- found in review ---------------------------------------------------------------


def test_networks_are_found_by_exact_name_not_by_id_prefix(svc, engine, netns):
    from qiao.engine.specs import NetworkSpec

    other = engine.networks.create(NetworkSpec("other", subnet="10.77.0.0/24"))
    status, answer = call(svc, "ADD", {"cniVersion": "1.0.0", "name": other.id[:2], "type": "qiao"}, "c1", netns())
    assert answer["code"] == cni.INVALID_CONFIG and "not found" in answer["msg"]
    assert not engine.networks.endpoints_of(other.id)


def test_a_conflict_when_creating_is_reported_as_itself(svc, engine, netns):
    from qiao.engine.specs import NetworkSpec

    engine.networks.create(NetworkSpec("wide", subnet="10.89.0.0/16"))
    status, answer = call(svc, "ADD", conf(), "c1", netns())  # qnet 10.89.0.0/24 overlaps wide
    assert status == 409 and answer["code"] == cni.CONFLICT and "not found" not in answer["msg"], answer


def test_an_existing_network_must_be_the_one_configured(svc, engine, netns):
    add(svc, netns("a"), cid="a")
    cases = (({"internal": True}, "internal false, not true"), ({"ipMasq": False}, "enable_ip_masquerade"), ({"mtu": 1400}, "mtu"))
    for extra, words in cases:
        status, answer = call(svc, "ADD", conf(**extra), "b", netns("b"))
        assert answer["code"] == cni.INVALID_CONFIG and words in answer["msg"], answer


def test_gc_needs_its_list_and_gc_status_need_1_1(svc, engine, netns):
    add(svc, netns())
    status, answer = call(svc, "GC", conf(version="1.1.0"), "")
    assert answer["code"] == cni.INVALID_CONFIG and "valid-attachments" in answer["msg"]
    for command in ("GC", "STATUS"):
        status, answer = call(svc, command, conf(version="1.0.0", **{"cni.dev/valid-attachments": []}), "")
        assert answer["code"] == cni.INCOMPATIBLE_VERSION
    assert len(engine.attachments.by_name) == 1


@pytest.mark.parametrize(("cid", "name", "code"), [("a/b", "qnet", cni.INVALID_ENVIRONMENT), ("c1", "q/net", cni.INVALID_CONFIG)])
def test_container_ids_and_network_names_follow_the_spec(svc, engine, netns, cid, name, code):
    status, answer = call(svc, "ADD", {**conf(), "name": name}, cid, netns())
    assert answer["code"] == code and not engine.attachments.by_name


def test_after_a_chained_plugin_its_result_is_kept_and_ours_added(svc, netns):
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "x0"}], "ips": [{"address": "192.0.2.9/24", "interface": 0}]}
    result = add(svc, netns(), prevResult=prev)
    assert [i["name"] for i in result["interfaces"]][0] == "x0" and len(result["interfaces"]) == 3
    assert result["ips"][0]["address"] == "192.0.2.9/24" and result["ips"][1]["interface"] == 2


def test_attachments_whose_namespace_is_gone_are_detached_at_start(svc, engine, netns, tmp_path):
    gone, kept = netns("gone"), netns("kept")
    add(svc, gone, cid="gone", runtimeConfig={"portMappings": [{"hostPort": 18090, "containerPort": 80}]})
    add(svc, kept, cid="kept")
    os.unlink(gone)  # a reboot, a runtime that never sent DEL
    for att in engine.attachments.by_name.values():
        engine.ports.reservations.release(att.id)
    again = restarted(engine, tmp_path)
    assert list(again.attachments.by_name) == ["cni:qnet/kept/eth0"]
    assert again.ports.reservations.owner_of("tcp", "0.0.0.0", 18090) is None
    again.store.close()


def test_uninstall_keeps_the_plugin_link_while_another_conflist_uses_it(tmp_path):
    from qiao.cni import install

    root = Root.resolve(str(tmp_path / "root"))
    args = [("--bin-dir", str(tmp_path / "bin")), ("--conf-dir", str(tmp_path / "net.d"))]
    flat = [x for pair in args for x in pair]
    for network in ("a", "b"):
        assert install.main(["install", *flat, "--network", network, "--subnet", "10.89.0.0/24"], root) == 0
    assert install.main(["uninstall", *flat, "--network", "a"], root) == 0
    assert os.path.islink(tmp_path / "bin" / "qiao") and os.listdir(tmp_path / "net.d") == ["10-qiao-b.conflist"]
    assert install.main(["uninstall", *flat, "--network", "b"], root) == 0
    assert not os.path.lexists(tmp_path / "bin" / "qiao") and not os.listdir(tmp_path / "net.d")
