"""Network modes other than a bridge: ``none``, ``host`` and ``container:X``,
and what qiao refuses around them."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.integration.conftest import Host, one_line_error, wait_for

# Connect to 127.0.0.1:PORT (retrying while the server starts) and print the HTTP status of GET /.
PROBE = (
    "import sys, time, urllib.request\n"
    "deadline = time.monotonic() + 15\n"
    "while True:\n"
    "    try:\n"
    "        print(urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/', timeout=2).status); break\n"
    "    except OSError:\n"
    "        if time.monotonic() > deadline: raise\n"
    "        time.sleep(0.05)\n"
)


pytestmark = pytest.mark.usefixtures("clean")  # every test starts with no containers on the shared host and leaves none


def link_names(ip_json: str) -> list[str]:
    return sorted(link["ifname"] for link in json.loads(ip_json))


def veths(host: Host) -> list[str]:
    return link_names(host.sh("ip", "-j", "link", "show", "type", "veth").stdout or "[]")


def ns_ids(pid: int) -> dict[str, str]:
    return {kind: os.readlink(f"/proc/{pid}/ns/{kind}") for kind in ("net", "uts", "mnt")}


# -- none ------------------------------------------------------------------------


def test_none_has_only_loopback_and_it_is_up(host: Host) -> None:
    links = json.loads(host.qiao("run", "--rm", "--network", "none", "--", "ip", "-j", "addr").stdout)
    assert [link["ifname"] for link in links] == ["lo"]
    assert "UP" in links[0]["flags"]
    assert [a["local"] for a in links[0]["addr_info"] if a["family"] == "inet"] == ["127.0.0.1"]
    before = veths(host)

    cid = host.run_d("--name", "iso", "--network", "none", "--", "sleep", "300")
    info = host.inspect("iso")
    assert info["HostConfig"]["NetworkMode"] == "none"
    ns = info["NetworkSettings"]
    assert (ns["IPAddress"], ns["Gateway"], ns["MacAddress"]) == ("", "", "")
    assert list(ns["Networks"]) == ["none"] and ns["SandboxKey"].startswith(host.root)
    assert veths(host) == before  # no endpoint, no veth
    assert host.exec("iso", "hostname").stdout.strip() == cid[:12]
    hosts = host.exec("iso", "cat", "/etc/hosts").stdout
    assert hosts.startswith("127.0.0.1\tlocalhost\n") and cid[:12] not in hosts  # no address to name
    assert ns_ids(info["State"]["Pid"])["net"] != os.readlink("/proc/self/ns/net")
    assert host.exec("iso", "readlink", "/proc/self/ns/net").stdout.strip() == f"net:[{os.stat(ns['SandboxKey']).st_ino}]"


# -- host ------------------------------------------------------------------------


def test_host_mode_shares_the_hosts_interfaces_hostname_and_etc_files(host: Host) -> None:
    host.qiao("network", "create", "extra")  # one more bridge: the host's links are not just lo and qiao0
    try:
        script = "readlink /proc/self/ns/net; hostname; echo ---; ip -j link"
        out = host.qiao("run", "--rm", "--network", "host", "--", "sh", "-c", script).stdout
        head, _, links = out.partition("---\n")
        netns, hostname = head.split()
        assert netns == f"net:[{os.stat(host.path).st_ino}]"
        assert hostname == socket.gethostname() == host.sh("hostname").stdout.strip()
        assert link_names(links) == link_names(host.sh("ip", "-j", "link").stdout)

        for name in ("hosts", "resolv.conf", "hostname"):
            seen = host.qiao("run", "--rm", "--network", "host", "--", "cat", f"/etc/{name}", check=False)
            mine = Path(f"/etc/{name}")
            assert seen.stdout == (mine.read_text() if mine.exists() else ""), name

        host.run_d("--name", "hn", "--network", "host", "--", "sleep", "300")
        info = host.inspect("hn")
        assert info["HostConfig"]["NetworkMode"] == "host" and info["Config"]["Hostname"] == socket.gethostname()
        assert info["NetworkSettings"]["SandboxKey"] == "" and list(info["NetworkSettings"]["Networks"]) == ["host"]
        assert (info["NetworkSettings"]["IPAddress"], info["NetworkSettings"]["EndpointID"]) == ("", "")
        assert ns_ids(info["State"]["Pid"])["net"] == f"net:[{os.stat(host.path).st_ino}]"
        assert host.exec("hn", "hostname").stdout.strip() == socket.gethostname()
    finally:
        host.qiao("network", "rm", "extra", check=False)


# -- container:X -----------------------------------------------------------------


def test_container_mode_shares_address_hostname_and_loopback(host: Host) -> None:
    web = host.run_d("--name", "web", "--", "python3", "-m", "http.server", "--bind", "127.0.0.1", "8000")
    host.run_d("--name", "side", "--network", f"container:{web[:8]}", "--", "python3", "-m", "http.server", "--bind", "127.0.0.1", "8001")
    web_info, side_info = host.inspect("web"), host.inspect("side")
    assert side_info["HostConfig"]["NetworkMode"] == f"container:{web}"
    assert side_info["Config"]["Hostname"] == web_info["Config"]["Hostname"] == web[:12]
    web_ns, side_ns = ns_ids(web_info["State"]["Pid"]), ns_ids(side_info["State"]["Pid"])
    assert (side_ns["net"], side_ns["uts"]) == (web_ns["net"], web_ns["uts"])
    assert side_info["NetworkSettings"]["Networks"] == {}  # no endpoint of its own
    assert len(veths(host)) == 1  # only web's

    ip = web_info["NetworkSettings"]["IPAddress"]
    addrs = json.loads(host.exec("side", "ip", "-j", "addr", "show", "eth0").stdout)[0]["addr_info"]
    assert [a["local"] for a in addrs if a["family"] == "inet"] == [ip]
    assert host.exec("side", "hostname").stdout.strip() == web[:12]
    assert host.exec("side", "cat", "/etc/hosts").stdout.endswith(f"{ip}\t{web[:12]}\n")

    # Each reaches the other's listener on 127.0.0.1.
    assert host.exec("side", "python3", "-c", PROBE, "8000").stdout.strip() == "200"
    assert host.exec("web", "python3", "-c", PROBE, "8001").stdout.strip() == "200"

    # By name too, and with the target's /etc files.
    script = 'hostname; cat /etc/hostname; python3 -c "$0" 8000'
    r = host.qiao("run", "--rm", "--network", "container:web", "--", "sh", "-c", script, PROBE)
    assert r.stdout.split() == [web[:12], web[:12], "200"]


def test_container_mode_joins_a_joined_or_a_host_mode_container(host: Host) -> None:
    # A chain: third joins side, which joined web: all three share web's namespaces and /etc files.
    web = host.run_d("--name", "web", "--", "sleep", "300")
    host.run_d("--name", "side", "--network", "container:web", "--", "sleep", "300")
    host.run_d("--name", "third", "--network", "container:side", "--", "sleep", "300")
    ip = host.inspect("web")["NetworkSettings"]["IPAddress"]
    web_ns = ns_ids(host.inspect("web")["State"]["Pid"])
    third_ns = ns_ids(host.inspect("third")["State"]["Pid"])
    assert (third_ns["net"], third_ns["uts"]) == (web_ns["net"], web_ns["uts"])
    assert host.exec("third", "sh", "-c", "hostname; cat /etc/hostname").stdout.split() == [web[:12]] * 2
    assert host.exec("third", "cat", "/etc/hosts").stdout.endswith(f"{ip}\t{web[:12]}\n")

    # A host-mode target: the host's network, hostname and /etc files.
    host.run_d("--name", "hn", "--network", "host", "--", "sleep", "300")
    host.run_d("--name", "hj", "--network", "container:hn", "--", "sleep", "300")
    assert ns_ids(host.inspect("hj")["State"]["Pid"])["net"] == f"net:[{os.stat(host.path).st_ino}]"
    assert host.exec("hj", "hostname").stdout.strip() == socket.gethostname()
    assert host.exec("hj", "cat", "/etc/hosts").stdout == Path("/etc/hosts").read_text()
    assert host.inspect("hj")["Config"]["Hostname"] == socket.gethostname()


def test_container_mode_refusals_are_one_line_and_change_nothing(host: Host) -> None:
    host.run_d("--name", "web", "--", "sleep", "300")
    host.qiao("run", "--name", "dead", "--", "true")
    before = host.ps_ids()
    cases = [
        (("--network", "container:web", "--hostname", "other"), "hostname"),
        (("--network", "container:web", "-p", "8080:80"), "port"),
        (("--network", "container:nosuch"), "No such container: nosuch"),
        (("--network", "container:dead"), "non running"),
    ]
    for args, message in cases:
        for detach in ((), ("-d",)):
            r = host.qiao("run", *detach, *args, "--", "sleep", "300", check=False)
            assert message in one_line_error(r), (args, r.stderr)
            assert host.ps_ids() == before, args


def test_rm_of_a_target_is_refused_while_a_joined_container_runs(host: Host) -> None:
    # A running target: refused, and -f removes it.
    host.run_d("--name", "web", "--", "sleep", "300")
    host.run_d("--name", "side", "--network", "container:web", "--", "sleep", "300")
    line = one_line_error(host.qiao("rm", "web", check=False))
    assert "side" in line and "network namespace" in line
    assert host.inspect("web")["State"]["Running"] and host.inspect("side")["State"]["Running"]
    assert host.qiao("rm", "-f", "web").stdout == "web\n"
    assert host.qiao("inspect", "web", check=False).returncode != 0
    host.qiao("rm", "-f", "side")
    assert veths(host) == [] and os.listdir(os.path.join(host.root, "run", "netns")) == []

    # A target that has exited: still refused while the joined one runs; fine once it stopped.
    host.run_d("--name", "web2", "--", "sleep", "300")
    host.run_d("--name", "side2", "--network", "container:web2", "--", "sleep", "300")
    host.qiao("kill", "web2")
    wait_for("web2 to exit", lambda: host.inspect("web2")["State"]["Status"] == "exited")
    assert "side2" in one_line_error(host.qiao("rm", "web2", check=False))
    assert host.inspect("side2")["State"]["Running"]
    host.qiao("stop", "side2")
    host.qiao("rm", "web2", "side2")
    assert host.ps_ids() == []
    assert veths(host) == [] and os.listdir(os.path.join(host.root, "run", "netns")) == []
