"""qiao as dockerd's network and IPAM plugin, with Debian's dockerd 20.10 in
a throw-away test host (engines.Dockerd) and qiaod serving the plugin
protocol into dockerd's plugin directory (``qiaod --docker-plugin``, set in
the root's daemon.json, as a user would):

* `docker network create -d qiao --ipam-driver qiao`: a qiao network, qiao's
  bridge, veth, MAC and address; `qiao network inspect` names the Docker
  containers;
* `-p`: map elements, reachable from an outside machine, the host and
  127.0.0.1, no docker-proxy, gone after `docker rm -f`;
* names: Docker's resolver for its containers on one host;
* bad input from dockerd: the protocol's error answer, shown by `docker`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import RUN, Host, sh, wait_for
from tests.integration.engines import BUSYBOX, DOCKER, Dockerd, qiao_serving_dockerd
from tests.integration.test_user_networks import PY, SERVER, in_netns, probe

pytestmark = [
    pytest.mark.skipif(not shutil.which("dockerd"), reason="dockerd is not installed (scripts/setup.sh installs docker.io)"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason=f"no {DOCKER} (Debian's docker.io client)"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason=f"no {BUSYBOX} (busybox-static)"),
]
SUBNET = "10.90.0.0/24"
NET = f"{RUN}dq"


@dataclass
class Node:
    host: Host
    docker: Dockerd
    ref: str

    def qiao_network(self, name: str) -> dict:
        return json.loads(self.host.qiao("network", "inspect", name).stdout)[0]


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    tmp = Path(tempfile.mkdtemp(prefix=f"{RUN}-dq-"))
    host, docker = qiao_serving_dockerd("dq", tmp)
    try:
        yield Node(host, docker, docker.import_busybox())
    finally:
        docker.close()  # before qiaod: a plugin gone costs dockerd 15 s per call
        host.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def qnet(node: Node) -> Iterator[str]:
    node.docker.docker("network", "create", "-d", "qiao", "--ipam-driver", "qiao", "--subnet", SUBNET, NET)
    try:
        yield NET
    finally:
        node.docker.remove_containers()
        node.docker.docker("network", "rm", NET, check=False)


def test_a_docker_network_is_a_qiao_network(node: Node, qnet: str) -> None:
    docker_id = json.loads(node.docker.docker("network", "inspect", qnet).stdout)[0]["Id"]
    node.docker.docker("run", "-d", "--name", "web", "--network", qnet, node.ref, "httpd", "-f", "-p", "80", "-h", "/www")
    inspect = json.loads(node.docker.docker("inspect", "web").stdout)[0]
    settings = inspect["NetworkSettings"]["Networks"][qnet]
    assert settings["IPAddress"] == "10.90.0.2" and settings["MacAddress"] == "02:42:0a:5a:00:02" and settings["Gateway"] == "10.90.0.1"
    ours = node.qiao_network(f"docker-{docker_id[:12]}")
    assert ours["IPAM"]["Config"][0]["Subnet"] == SUBNET

    def names() -> list[str]:
        return [c["Name"] for c in node.qiao_network(f"docker-{docker_id[:12]}")["Containers"].values()]

    try:
        wait_for("qiao to learn the container's name (from dockerd's API)", lambda: names() == ["web"])
    except AssertionError:
        raise AssertionError(f"{names()}: {node.host.daemon_log()}") from None
    listed = node.qiao_network(f"docker-{docker_id[:12]}")["Containers"]
    assert list(listed) == [inspect["Id"]]  # the Docker container's id and name
    got = node.docker.docker("run", "--rm", "--network", qnet, node.ref, "timeout", "10", "wget", "-qO-", "http://web/")
    assert got.stdout == "hello from busybox\n"  # Docker's own resolver, on qiao's network


def test_published_ports_are_map_elements_reachable_from_everywhere(node: Node, qnet: str) -> None:
    outside = node.host.add_outside(f"o{len(node.host.links)}", subnet="198.51.100")
    node.docker.docker("run", "-d", "--name", "pub", "--network", qnet, "-p", "18080:7000", node.ref, "sh", "-c", "sleep 600")
    pid = json.loads(node.docker.docker("inspect", "pub").stdout)[0]["State"]["Pid"]
    proc = subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", "--", PY, "-c", SERVER])  # a server in its namespace
    try:
        assert in_netns(outside.path, probe, "tcp", "198.51.100.1", 18080, True, 10) == "198.51.100.2"
        assert in_netns(node.host.path, probe, "tcp", "127.0.0.1", 18080) is not None
        ruleset = node.host.sh("nft", "list", "ruleset").stdout
        assert "18080" in ruleset and "dport 18080" not in ruleset  # an element of qiao's map
        assert not sh("pgrep", "-P", str(node.docker.pid), "-f", "docker-proxy", check=False).stdout  # none of this dockerd's
        # (`docker port` shows nothing: dockerd reads typed port maps of its built-in drivers only)
    finally:
        proc.kill()
        proc.wait()
    node.docker.docker("rm", "-f", "pub")
    wait_for("the element to go", lambda: "18080" not in node.host.sh("nft", "list", "ruleset").stdout)


def test_bad_input_from_dockerd_is_the_protocols_error(node: Node, qnet: str) -> None:
    create = ["network", "create", "-d", "qiao", "--ipam-driver", "qiao"]
    overlap = node.docker.docker(*create, "--subnet", "10.90.0.0/16", f"{RUN}x", check=False)
    assert overlap.returncode != 0 and "overlaps" in overlap.stderr, overlap
    outside = node.docker.docker("run", "--rm", "--network", qnet, "--ip", "10.1.1.1", node.ref, "true", check=False)
    assert outside.returncode != 0 and "10.1.1.1" in outside.stderr, outside
