"""The CNI plugin on a real kernel: the ``qiao-cni`` executable driven as a
runtime drives it (the ``CNI_*`` environment, the configuration on stdin),
in a test host with its own qiaod, on pod namespaces the test made.

* ADD gives eth0 on qiao's bridge (address, MAC, route) and a result that
  says so; pods resolve each other by pod name through the network's resolver;
* a port mapping is a map element: reachable from an outside machine, from
  the host and from 127.0.0.1, with no rule per port and no proxy;
* DEL is idempotent: unknown container, twice, after the netns is gone,
  after a daemon restart; GC removes what the runtime no longer lists;
* CHECK notices a veth deleted by hand; STATUS fails while qiaod is stopped;
* the overlay: pods on two lab hosts reach each other by address and name,
  plugged by the plugin directly and by a containerd on each host.

containerd driving the same plugin is in test_containerd.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import BIN, QIAO, RUN, Host, Namespace, sh, wait_for
from tests.integration.engines import BUSYBOX, Containerd, busybox_image
from tests.integration.test_overlay import Lab, down_and_check, lab_up
from tests.integration.test_user_networks import PY, SERVER, dns_query, in_netns, probe

PLUGIN = str(BIN / "qiao-cni")
SUBNET, GATEWAY = "10.89.0.0/24", "10.89.0.1"


def conf(root: str, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": f"{RUN}net", "type": "qiao", "subnet": SUBNET, "qiaoRoot": root, **extra}


def cni(host_ns: str, command: str, config: dict[str, Any], cid: str = "", netns: str = "", args: str = "") -> tuple[int, Any]:
    """One plugin run in the host's namespace, with a runtime's bare environment."""
    env = {"CNI_COMMAND": command, "CNI_PATH": str(BIN), "CNI_IFNAME": "eth0", "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_ARGS": args}
    proc = subprocess.run(
        ["nsenter", f"--net={host_ns}", "--", PLUGIN],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if v},
        timeout=60,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    if proc.returncode != 0:
        assert out and set(out) <= {"cniVersion", "code", "msg", "details"} and isinstance(out["code"], int), proc
    return proc.returncode, out


class Pods:
    """Pod namespaces made by the test, each ADDed through the plugin; DEL and removal at the end."""

    def __init__(self, host: Host):
        self.host = host
        self.made: dict[str, Namespace] = {}
        self.servers: list[subprocess.Popen] = []

    def add(self, name: str, **extra: Any) -> tuple[Namespace, dict[str, Any]]:
        ns = Namespace(f"pod{name}")
        self.made[name] = ns
        code, result = cni(self.host.path, "ADD", conf(self.host.root, **extra), name, ns.path, f"K8S_POD_NAME={name};K8S_POD_NAMESPACE=t")
        assert code == 0, result
        return ns, result

    def serve(self, ns: Namespace) -> None:
        proc = ns.popen(PY, "-c", SERVER, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.servers.append(proc)

    def close(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for name, ns in self.made.items():
            cni(self.host.path, "DEL", conf(self.host.root), name, ns.path)
            ns.delete()


@pytest.fixture
def pods(host: Host) -> Iterator[Pods]:
    p = Pods(host)
    try:
        yield p
    finally:
        p.close()


def ip_json(ns: str, *args: str) -> Any:
    return json.loads(sh("nsenter", f"--net={ns}", "--", "ip", "-j", *args).stdout or "[]")


def test_add_puts_eth0_on_the_bridge_and_says_so(host: Host, pods: Pods) -> None:
    ns, result = pods.add("a")
    eth0 = next(link for link in ip_json(ns.path, "addr", "show") if link["ifname"] == "eth0")
    address = next(a for a in eth0["addr_info"] if a["family"] == "inet")
    host_end, inside = result["interfaces"]
    assert inside == {"name": "eth0", "mac": eth0["address"], "sandbox": ns.path}
    assert eth0["address"].startswith("02:42:0a:59:00:")  # Docker's MAC from the address
    assert result["ips"] == [{"address": f"{address['local']}/24", "gateway": GATEWAY, "interface": 1}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}] and result["dns"] == {"nameservers": [GATEWAY]}
    assert ip_json(ns.path, "route", "show", "default")[0]["gateway"] == GATEWAY
    veth = ip_json(host.path, "link", "show", host_end["name"])[0]
    bridge = ip_json(host.path, "-d", "link", "show", veth["master"])[0]
    assert veth["address"] == host_end["mac"] and bridge["linkinfo"]["info_kind"] == "bridge"
    listed = json.loads(host.qiao("network", "inspect", f"{RUN}net").stdout)[0]["Containers"]
    assert [c["Name"] for c in listed.values()] == ["a"]


def test_pods_resolve_each_other_by_pod_name(host: Host, pods: Pods) -> None:
    a, result_a = pods.add("a")
    _b, result_b = pods.add("b")
    want = ("NOERROR", [result_b["ips"][0]["address"].split("/")[0]])
    both = lambda: dns_query(GATEWAY, "b") == want and dns_query(GATEWAY, "b.t") == want  # noqa: E731
    assert in_netns(a.path, lambda: wait_for("b in the zone", both))
    assert in_netns(a.path, probe, "tcp", want[1][0], 7000, False) is None  # reachable path, nothing listens: no answer


def test_port_mapping_reaches_the_pod_from_everywhere(host: Host, pods: Pods) -> None:
    outside = host.add_outside(f"o{len(host.links)}", subnet="198.51.100")
    mapping = {"portMappings": [{"hostPort": 18080, "containerPort": 7000, "protocol": "tcp"}]}
    ns, result = pods.add("web", runtimeConfig=mapping)
    pods.serve(ns)
    pod_ip = result["ips"][0]["address"].split("/")[0]
    assert in_netns(outside.path, probe, "tcp", "198.51.100.1", 18080, True, 10) == "198.51.100.2"  # source address kept
    assert in_netns(host.path, probe, "tcp", "198.51.100.1", 18080) is not None
    assert in_netns(host.path, probe, "tcp", "127.0.0.1", 18080) is not None
    ruleset = sh("nsenter", f"--net={host.path}", "--", "nft", "list", "ruleset").stdout
    assert "18080" in ruleset and pod_ip in ruleset and ruleset.count("dport 18080") == 0  # an element, not a rule
    code, _ = cni(host.path, "DEL", conf(host.root), "web", ns.path)
    assert code == 0 and "18080" not in sh("nsenter", f"--net={host.path}", "--", "nft", "list", "ruleset").stdout


def test_del_is_idempotent_also_after_the_netns_is_gone_and_a_restart(host: Host) -> None:
    assert cni(host.path, "DEL", conf(host.root), "nobody", "/nonexistent")[0] == 0
    ns = Namespace("podgone")
    try:
        code, result = cni(host.path, "ADD", conf(host.root), "gone", ns.path)
        assert code == 0, result
    finally:
        ns.delete()  # the runtime removed the namespace before DEL
    veth = result["interfaces"][0]["name"]
    gone = lambda: not sh("nsenter", f"--net={host.path}", "--", "ip", "link", "show", veth, check=False).stdout  # noqa: E731
    wait_for("the veth to go with the namespace", gone)
    host.stop_daemon(signal.SIGKILL)
    host.start_daemon()
    assert cni(host.path, "DEL", conf(host.root), "gone", ns.path) == (0, None)
    assert cni(host.path, "DEL", conf(host.root), "gone", ns.path) == (0, None)
    listed = json.loads(host.qiao("network", "inspect", f"{RUN}net").stdout)[0]["Containers"]
    assert not listed


def test_two_adds_of_one_interface_and_a_missing_netns(host: Host, pods: Pods) -> None:
    ns, _ = pods.add("twice")
    before = ip_json(host.path, "link", "show")
    code, err = cni(host.path, "ADD", conf(host.root), "twice", ns.path)
    assert code == 1 and err["code"] == 100 and "already has interface eth0" in err["msg"]
    code, err = cni(host.path, "ADD", conf(host.root), "ghost", f"/run/netns/{RUN}-nosuchpod")
    assert code == 1 and err["code"] == 4 and "does not exist" in err["msg"]
    assert ip_json(host.path, "link", "show") == before


def test_check_gc_and_status(host: Host, pods: Pods) -> None:
    ns, result = pods.add("chk")
    _ns2, _ = pods.add("stale")
    assert cni(host.path, "CHECK", conf(host.root, prevResult=result), "chk", ns.path) == (0, None)
    sh("nsenter", f"--net={host.path}", "--", "ip", "link", "del", result["interfaces"][0]["name"])  # by hand
    code, err = cni(host.path, "CHECK", conf(host.root, prevResult=result), "chk", ns.path)
    assert code == 1 and err["code"] == 101 and "missing" in err["msg"]
    gc = conf(host.root, "1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "chk", "ifname": "eth0"}]})
    assert cni(host.path, "GC", gc) == (0, None)
    names = [c["Name"] for c in json.loads(host.qiao("network", "inspect", f"{RUN}net").stdout)[0]["Containers"].values()]
    assert names == ["chk"]
    assert cni(host.path, "STATUS", conf(host.root, "1.1.0")) == (0, None)
    assert host.daemon is not None
    host.daemon.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        code, err = cni(host.path, "STATUS", conf(host.root, "1.1.0"))
        assert code == 1 and err["code"] == 50 and time.monotonic() - started < 15
    finally:
        host.daemon.send_signal(signal.SIGCONT)


def test_version_and_bad_input_need_no_daemon(host: Host) -> None:
    code, out = cni(host.path, "VERSION", {"cniVersion": "1.1.0"})
    assert code == 0 and out["supportedVersions"][-3:] == ["0.4.0", "1.0.0", "1.1.0"]
    code, out = cni(host.path, "ADD", conf(host.root, version="0.1.0"), "x", "/proc/self/ns/net")
    assert code == 1 and out["code"] == 1


# -- the overlay, on two lab hosts ------------------------------------------------


@pytest.fixture(scope="module")
def lab2() -> Iterator[Lab]:
    root = tempfile.mkdtemp(prefix=f"{RUN}-cnilab-")
    lab = Lab(root)
    try:
        lab, _lines, _took = lab_up(root, 2)
        yield lab
    finally:
        down_and_check(lab)


def test_overlay_pods_on_two_hosts_reach_each_other_by_address_and_name(lab2: Lab) -> None:
    made: list[tuple[str, Namespace, dict[str, Any]]] = []
    config = {"cniVersion": "1.0.0", "name": f"{RUN}ov", "type": "qiao", "driver": "overlay", "subnet": "10.245.0.0/16"}
    servers = []
    try:
        for host in ("host1", "host2"):
            ns = Namespace(f"ov{host[-1]}")
            root = lab2.host(host)["root"]
            code, result = cni(lab2.ns(host), "ADD", {**config, "qiaoRoot": root}, f"p{host}", ns.path, f"K8S_POD_NAME=p{host}")
            made.append((host, ns, result))
            assert code == 0, result
        (_h1, ns1, r1), (_h2, ns2, r2) = made
        ip1, ip2 = (r["ips"][0]["address"].split("/")[0] for r in (r1, r2))
        assert ip1.split(".")[:3] != ip2.split(".")[:3]  # each host's pods come from its own leased subnet
        servers.append(ns2.popen(PY, "-c", SERVER, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        assert in_netns(ns1.path, probe, "tcp", ip2, 7000, True, 10) == ip1
        gateway1 = r1["dns"]["nameservers"][0]
        assert in_netns(ns1.path, lambda: wait_for("phost2 by name", lambda: dns_query(gateway1, "phost2") == ("NOERROR", [ip2]), 20))
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        for host, ns, _result in made:
            cni(lab2.ns(host), "DEL", {**config, "qiaoRoot": lab2.host(host)["root"]}, f"p{host}", ns.path)
            ns.delete()
        if made:
            lab2.qiao("host1", "network", "rm", f"{RUN}ov", check=False)  # cluster-wide


def test_plugin_never_imports_pyroute2() -> None:
    env = {**os.environ, "CNI_COMMAND": "VERSION", "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run([PLUGIN], input="{}", capture_output=True, text=True, env=env, timeout=30)
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert proc.returncode == 0 and "qiao.cni.plugin" in imported
    assert not {m for m in imported if m.startswith(("pyroute2", "msgspec", "qiao.engine", "qiao.kernel", "http", "urllib"))}


@dataclass
class LabHost:
    """A lab host as the containerd harness takes it (its network namespace file)."""

    path: str


def test_overlay_with_containerd_on_two_lab_hosts(lab2: Lab) -> None:
    """Each host runs its qiaod (on the lab's etcd) and a containerd whose ctr uses
    the conflist of ``qiao cni install --driver overlay``: flannel's job, one component."""
    if not all(shutil.which(t) for t in ("containerd", "ctr", "runc")) or not os.path.exists(BUSYBOX):
        pytest.skip("containerd, ctr, runc or busybox-static is not installed (scripts/setup.sh installs them)")
    network = f"{RUN}ovc"
    tmp = Path(tempfile.mkdtemp(prefix=f"{RUN}-ovc-"))
    engines: dict[str, Containerd] = {}
    try:
        for host in ("host1", "host2"):
            d = tmp / host
            d.mkdir()
            sh(QIAO, "--root", lab2.host(host)["root"], "cni", "install", "--bin-dir", str(d / "bin"), "--conf-dir", str(d / "net.d"),
               "--network", network, "--driver", "overlay", "--subnet", "10.246.0.0/16")  # fmt: skip
            archive, ref = busybox_image(d)
            engines[host] = Containerd(LabHost(lab2.ns(host)), d, d / "net.d", d / "bin", namespace=f"{RUN}-{host}")
            engines[host].import_image(archive)
        server = engines["host1"].ctr_popen("run", "--cni", "--rm", ref, "srv", "httpd", "-f", "-p", "80", "-h", "/www")
        pid = engines["host1"].wait_running("srv", server)
        address = sh("nsenter", f"--net=/proc/{pid}/ns/net", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout.split()[3]
        name = engines["host1"].cni_id("srv")
        # as a runtime does with the result's dns: the network's resolver on this host (its gateway)
        fetch = (
            "echo \"nameserver $(ip route | awk '/default/ {print $3}')\" > /etc/resolv.conf; "
            f"timeout 10 wget -q -O - http://{address.split('/')[0]}/ && timeout 10 wget -q -O - http://{name}/"
        )
        got = engines["host2"].ctr("run", "--cni", "--rm", ref, "cli", "sh", "-c", fetch)
        assert got.stdout == "hello from busybox\n" * 2, got
        engines["host1"].ctr("tasks", "kill", "--signal", "SIGKILL", "srv")
        assert server.wait(30) == 137
        server.communicate(timeout=5)
    finally:
        for ctrd in engines.values():
            ctrd.close()
        if engines:
            lab2.qiao("host1", "network", "rm", network, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
