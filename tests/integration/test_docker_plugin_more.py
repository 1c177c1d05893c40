"""qiao as dockerd's network + IPAM plugin, with Debian's dockerd 20.10:
what test_docker_plugin.py does not cover yet.

* `docker network connect --ip --alias` / `disconnect`: a second interface
  with qiao's address and MAC, listed by qiao with its name, and nothing of it
  left after the disconnect (veth, guard, address);
* `--internal`: no way out (no default route, and none works when added by
  hand); two qiao networks are isolated from each other;
* `-P`: qiao chooses the host port (found in qiao's store: `docker port`
  shows nothing for a plugin's network) and it works from outside;
* restarts and faults: dockerd restarted with `--live-restore`, qiaod
  restarted (SIGTERM) and killed (SIGKILL) under a running dockerd, and
  `docker network create -d qiao` while qiaod is down (an error, never a hang);
* two lab hosts (etcd), each with its qiaod and a dockerd: one overlay
  network, created with `docker network create` on both, a container on one
  host reached from the other by address and by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from tests.integration.conftest import RUN, Host, Namespace, sh, wait_for
from tests.integration.engines import BUSYBOX, DOCKER, Dockerd, qiao_serving_dockerd
from tests.integration.test_overlay import Lab, down_and_check, lab_up
from tests.integration.test_user_networks import dns_query, in_netns

pytestmark = [
    pytest.mark.skipif(not shutil.which("dockerd"), reason="dockerd is not installed (scripts/setup.sh installs docker.io)"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason=f"no {DOCKER} (Debian's docker.io client)"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason=f"no {BUSYBOX} (busybox-static)"),
]
CREATE = ("network", "create", "-d", "qiao", "--ipam-driver", "qiao")
HTTPD = ("httpd", "-f", "-p", "80", "-h", "/www")
HELLO = "hello from busybox\n"
SLEEP = ("sleep", "600")
T = TypeVar("T")
FIGURES: dict[str, str] = {}  # measured, printed when the module ends (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def figures() -> Iterator[None]:
    yield
    for what, figure in FIGURES.items():
        print(f"{what}: {figure}")


def timed(fn: Callable[..., T], *args: Any, **kw: Any) -> tuple[float, T]:
    """(seconds taken, result) of one call."""
    started = time.monotonic()
    got = fn(*args, **kw)
    return time.monotonic() - started, got


# -- one host: qiaod serving the plugin to a dockerd -------------------------------


@dataclass
class Node:
    host: Host
    docker: Dockerd
    ref: str
    plugin_socket: Path

    def run(self, name: str, network: str, cmd: Sequence[str], *opts: str) -> dict[str, Any]:
        """``docker run -d --name NAME --network NETWORK OPTS IMAGE CMD``; its inspect."""
        self.docker.docker("run", "-d", "--name", name, "--network", network, *opts, self.ref, *cmd)
        return self.inspect(name)

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self.docker.docker("inspect", name).stdout)[0]  # type: ignore[no-any-return]

    def fetch(self, network: str, url: str, *opts: str, check: bool = True, wait: int = 5) -> subprocess.CompletedProcess[str]:
        """``wget -qO- URL`` from a throw-away container on ``network`` (``--init``: a ``timeout`` that is PID 1 could not end wget)."""
        cmd = ("timeout", str(wait), "wget", "-qO-", url)
        return self.docker.docker("run", "--rm", "--init", "--network", network, *opts, self.ref, *cmd, check=check)

    def qiao_network(self, docker_name: str) -> dict[str, Any]:
        """qiao's view (``qiao network inspect``) of the qiao network behind a Docker network."""
        docker_id = json.loads(self.docker.docker("network", "inspect", docker_name).stdout)[0]["Id"]
        return json.loads(self.host.qiao("network", "inspect", f"docker-{docker_id[:12]}").stdout)[0]  # type: ignore[no-any-return]

    def state(self) -> dict[str, Any]:
        """What qiao holds for dockerd: attachments (which, on which network, with which ports), host
        veths, guard elements.  (Not the names, which qiaod learns from dockerd's events at its pace.)"""
        rows = [{k: r[k] for k in ("name", "network_id", "endpoint_id", "ports")} for r in store_rows(self.host.root, "attachments")]
        return {"attachments": rows, "veths": veths(self.host), "guards": guards(self.host)}


def store_rows(root: str, table: str) -> list[dict[str, Any]]:
    """The rows of one table of qiao's store (read-only: qiaod may be running)."""
    db = os.path.join(root, "lib", "qiao.db")
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return [json.loads(r[0]) for r in conn.execute(f"SELECT body FROM {table}")]  # noqa: S608 (our own table names)


def veths(ns: Namespace) -> list[str]:
    """The veths in a namespace (qiao's host ends: ``veth`` + 7 hex)."""
    return sorted(link["ifname"] for link in json.loads(ns.sh("ip", "-j", "link", "show", "type", "veth").stdout or "[]"))


def guards(ns: Namespace) -> str:
    """qiao's guarded ports and their addresses (``table bridge qiao``'s sets)."""
    out = ns.sh("nft", "-j", "list", "table", "bridge", "qiao", check=False).stdout
    sets = [obj["set"] for obj in json.loads(out or '{"nftables": []}')["nftables"] if "set" in obj]
    return json.dumps(sorted((s["name"], sorted(map(json.dumps, s.get("elem", [])))) for s in sets))


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    tmp = Path(tempfile.mkdtemp(prefix=f"{RUN}-dqm-"))
    host, docker = qiao_serving_dockerd("dqm", tmp, live_restore=True)
    try:
        host.add_outside("out", subnet="198.51.100")
        yield Node(host, docker, docker.import_busybox(), tmp / "plugins" / "qiao.sock")
    finally:
        docker.close()  # before qiaod: a plugin gone costs dockerd 15 s per call
        host.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def nets(node: Node) -> Iterator[dict[str, str]]:
    """Two qiao networks, A (10.90.0.0/24) and B (10.91.0.0/24); removed with every container after the test."""
    made = {"A": f"{RUN}a", "B": f"{RUN}b"}
    try:
        node.docker.docker(*CREATE, "--subnet", "10.90.0.0/24", made["A"])
        node.docker.docker(*CREATE, "--subnet", "10.91.0.0/24", made["B"])
        yield made
    finally:
        if node.host.daemon is None:
            node.host.start_daemon()  # a test that stopped qiaod and failed: dockerd's calls need it
        node.docker.remove_containers()
        for name in made.values():
            node.docker.docker("network", "rm", name, check=False)
    log = Path(node.host.root, "qiaod.test.log").read_text(errors="replace")
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def published(ns: Namespace) -> str:
    """The elements of qiao's map of ports published on every host address (``-p HOST:CTR``, ``-P``)."""
    return ns.sh("nft", "-nn", "list", "map", "inet", "qiao", "published_any").stdout


def resolves(server: str, name: str, address: str) -> bool:
    return dns_query(server, name) == ("NOERROR", [address])


def wget(ns: Namespace, url: str, wait: int = 5) -> str | None:
    """The body at ``url`` fetched from a namespace (not a container), or None."""
    got = ns.sh("timeout", str(wait), BUSYBOX, "wget", "-qO-", url, check=False)
    return got.stdout if got.returncode == 0 else None


def eth(node: Node, container: str, ifname: str) -> tuple[str, str]:
    """(MAC, IPv4 address/prefix) of an interface inside a container."""
    out = node.docker.docker("exec", container, "ip", "addr", "show", "dev", ifname).stdout
    mac = next(line.split()[1] for line in out.splitlines() if "link/ether" in line)
    address = next(line.split()[1] for line in out.splitlines() if line.strip().startswith("inet "))
    return mac, address


# -- 1. connect / disconnect ----------------------------------------------------------


def test_connect_with_ip_and_alias_then_disconnect(node: Node, nets: dict[str, str]) -> None:
    a, b = nets["A"], nets["B"]
    node.run("cc", b, SLEEP)
    before = node.state()
    node.docker.docker("network", "connect", "--ip", "10.90.0.50", "--alias", "db", a, "cc")
    settings = node.inspect("cc")["NetworkSettings"]["Networks"][a]
    assert settings["IPAddress"] == "10.90.0.50" and settings["MacAddress"] == "02:42:0a:5a:00:32", settings
    assert eth(node, "cc", "eth1") == ("02:42:0a:5a:00:32", "10.90.0.50/24")  # the second interface: qiao's address and MAC
    listed = lambda: node.qiao_network(a)["Containers"]  # noqa: E731
    wait_for("qiao to list cc by its name", lambda: [e["Name"] for e in listed().values()] == ["cc"])
    (entry,) = listed().values()
    assert entry["IPv4Address"] == "10.90.0.50/24" and entry["MacAddress"] == "02:42:0a:5a:00:32", entry
    after_connect = node.state()
    assert len(after_connect["attachments"]) == len(before["attachments"]) + 1
    new_veth = set(after_connect["veths"]) - set(before["veths"])
    assert len(new_veth) == 1 and "10.90.0.50" in after_connect["guards"]
    # the alias: in Docker's resolver, and (learned from dockerd) in qiao's on the network's gateway
    got = node.docker.docker("run", "--rm", "--network", a, node.ref, "nslookup", "db").stdout
    assert "10.90.0.50" in got, got
    pid = node.inspect("cc")["State"]["Pid"]
    for name in ("db", "cc"):
        assert in_netns(f"/proc/{pid}/ns/net", wait_for, f"{name} in qiao's zone", partial(resolves, "10.90.0.1", name, "10.90.0.50"))

    node.docker.docker("network", "disconnect", a, "cc")
    assert "eth1" not in node.docker.docker("exec", "cc", "ip", "-o", "link").stdout
    assert node.state() == before  # no attachment, veth or guard left
    assert not listed()
    node.run("again", a, SLEEP, "--ip", "10.90.0.50")  # the address is free again
    assert node.inspect("again")["NetworkSettings"]["Networks"][a]["IPAddress"] == "10.90.0.50"


# -- 2. internal networks, isolation ---------------------------------------------------


def test_internal_network_has_no_way_out(node: Node) -> None:
    net = f"{RUN}int"
    node.docker.docker(*CREATE, "--internal", "--subnet", "10.92.0.0/24", net)
    try:
        assert node.qiao_network(net)["Internal"] is True
        pid = node.run("inner", net, SLEEP)["State"]["Pid"]
        routes = node.docker.docker("exec", "inner", "ip", "route").stdout
        assert "default" not in routes, routes
        ping = ("exec", "inner", "ping", "-c", "1", "-W", "1", "198.51.100.2")
        assert node.docker.docker(*ping, check=False).returncode != 0
        # even with a default route added by hand, qiao's firewall lets nothing out
        sh("nsenter", f"--net=/proc/{pid}/ns/net", "--", "ip", "route", "add", "default", "via", "10.92.0.1")
        assert node.docker.docker(*ping, check=False).returncode != 0
        assert node.docker.docker("exec", "inner", "ping", "-c", "1", "-W", "1", "10.92.0.1", check=False).returncode == 0
    finally:
        node.docker.remove_containers()
        node.docker.docker("network", "rm", net, check=False)


def test_two_qiao_networks_are_isolated(node: Node, nets: dict[str, str]) -> None:
    a, b = nets["A"], nets["B"]
    web = node.run("web", a, HTTPD)["NetworkSettings"]["Networks"][a]["IPAddress"]
    assert node.fetch(a, f"http://{web}/").stdout == HELLO
    assert node.fetch(b, f"http://{web}/", check=False, wait=2).returncode != 0
    b_side = node.run("bweb", b, HTTPD)["NetworkSettings"]["Networks"][b]["IPAddress"]
    assert node.fetch(b, f"http://{b_side}/").stdout == HELLO
    assert node.fetch(a, f"http://{b_side}/", check=False, wait=2).returncode != 0


# -- 3. -P --------------------------------------------------------------------------------


def test_publish_all_chooses_a_host_port_that_works(node: Node, nets: dict[str, str]) -> None:
    a = nets["A"]
    address = node.run("pub", a, HTTPD, "--expose", "80", "-P")["NetworkSettings"]["Networks"][a]["IPAddress"]
    rows = [r for r in store_rows(node.host.root, "attachments") if r["ports"]]
    assert len(rows) == 1 and len(rows[0]["ports"]) == 1, rows
    mapping = rows[0]["ports"][0]
    assert mapping["container_port"] == 80 and mapping["proto"] == "tcp" and mapping["host_port"] >= 1024, mapping
    port = mapping["host_port"]
    outside = node.host.links[0]
    assert wget(outside, f"http://198.51.100.1:{port}/") == HELLO
    assert wget(node.host, f"http://127.0.0.1:{port}/") == HELLO
    element = f"6 . {port} : {address} . 80"  # tcp . port : container . port (nft -nn)
    assert element in published(node.host), published(node.host)  # an element of qiao's map, no rule, no proxy
    node.docker.docker("rm", "-f", "pub")
    assert element not in published(node.host)


# -- 4. restarts and faults ---------------------------------------------------------------


@dataclass
class Serving:
    """A web server container (published on the host) and a client container on one network."""

    web: str  # its address
    port: int  # its host port
    pid: int  # its process

    @classmethod
    def start(cls, node: Node, network: str, port: int) -> Serving:
        inspect = node.run("web", network, HTTPD, "-p", f"{port}:80")
        node.run("cli", network, SLEEP)
        return cls(inspect["NetworkSettings"]["Networks"][network]["IPAddress"], port, inspect["State"]["Pid"])

    def works(self, node: Node) -> None:
        """The server answers: from the outside machine (its host port), and from the client by address and by name."""
        assert wget(node.host.links[0], f"http://198.51.100.1:{self.port}/") == HELLO
        for target in (self.web, "web"):
            got = node.docker.docker("exec", "cli", "timeout", "5", "wget", "-qO-", f"http://{target}/", check=False)
            assert got.stdout == HELLO, got


def test_dockerd_restarted_with_live_restore_keeps_traffic_and_duplicates_nothing(node: Node, nets: dict[str, str]) -> None:
    a = nets["A"]
    serving = Serving.start(node, a, 18081)
    serving.works(node)
    before = node.state()
    node.docker.restart()  # --live-restore (the module's dockerd): the containers keep running
    assert node.inspect("web")["State"]["Pid"] == serving.pid
    serving.works(node)
    assert node.state() == before  # no attachment, veth or guard twice
    assert node.fetch(a, f"http://{serving.web}/").stdout == HELLO  # dockerd still drives qiao: run, then rm
    node.docker.docker("rm", "-f", "cli")
    after = node.state()
    assert len(after["attachments"]) == len(before["attachments"]) - 1 and len(after["veths"]) == len(before["veths"]) - 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_qiaod_restarted_under_a_running_dockerd(node: Node, nets: dict[str, str], sig: signal.Signals) -> None:
    a = nets["A"]
    empty = node.state()
    serving = Serving.start(node, a, 18082)
    before = node.state()
    node.host.stop_daemon(sig)
    serving.works(node)  # qiaod away: the kernel keeps forwarding (the name is Docker's resolver's)
    node.host.start_daemon()
    serving.works(node)
    assert node.state() == before
    assert sorted(c["Name"] for c in node.qiao_network(a)["Containers"].values()) == ["cli", "web"]  # names kept
    assert node.fetch(a, f"http://{serving.web}/").stdout == HELLO  # the next run works
    node.docker.docker("rm", "-f", "cli", "web")
    assert node.state() == empty  # nothing left over


def pending_connections(ns: Namespace, socket_path: Path) -> int:
    """Connections waiting in the backlog of a listening unix socket of a namespace's (``ss``'s Recv-Q)."""
    out = ns.sh("ss", "-xlnH", "src", str(socket_path)).stdout.split()
    return int(out[2]) if len(out) > 2 else 0


def test_qiaod_killed_in_the_middle_of_a_dockerd_call(node: Node, nets: dict[str, str]) -> None:
    """dockerd waits for qiao's answer (qiaod stopped with SIGSTOP), qiaod is killed and started again:
    dockerd sends the call again without its body, qiao refuses that (never reads it as an empty
    request), `docker run` fails with that message; the next one works and nothing is left over."""
    a = nets["A"]
    empty = node.state()
    assert node.host.daemon is not None
    node.host.daemon.send_signal(signal.SIGSTOP)
    try:
        proc = node.docker.docker_popen("run", "-d", "--name", "mid", "--network", a, node.ref, *SLEEP)
        wait_for("dockerd's call to wait in qiao's backlog", lambda: pending_connections(node.host, node.plugin_socket) > 0)
    finally:
        node.host.stop_daemon(signal.SIGKILL)
    node.host.start_daemon()
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "IpamDriver.RequestAddress" in err and "empty request" in err, err
    node.docker.docker("rm", "-f", "mid")
    assert node.state() == empty
    assert node.run("after", a, SLEEP)["NetworkSettings"]["Networks"][a]["IPAddress"] == "10.90.0.2"  # the next run works
    node.docker.docker("rm", "-f", "after")
    assert node.state() == empty


def plugin_call(node: Node, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call of Docker's plugin protocol to qiaod, as dockerd makes it."""
    data = json.dumps(body).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(node.plugin_socket))
        s.sendall(f"POST /{name} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return json.loads(answer.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


def test_an_endpoint_dockerd_never_learned_of_is_detached_at_the_next_start(node: Node, nets: dict[str, str]) -> None:
    """What `kill -9` of qiaod right after CreateEndpoint leaves (qiao made the endpoint, dockerd never read
    the answer, so it will never delete it) is detached at qiaod's next start: its veth, guard and address go."""
    a = nets["A"]
    empty = node.state()
    docker_id = json.loads(node.docker.docker("network", "inspect", a).stdout)[0]["Id"]
    lost = {"NetworkID": docker_id, "EndpointID": "d" * 64, "Interface": {"Address": "10.90.0.77/24"}}
    assert "Err" not in plugin_call(node, "NetworkDriver.CreateEndpoint", lost)
    assert len(node.state()["attachments"]) == 1
    node.host.stop_daemon(signal.SIGKILL)
    node.host.start_daemon()
    wait_for("qiaod to detach the endpoint dockerd does not know", lambda: node.state() == empty)
    assert node.run("reuse", a, SLEEP, "--ip", "10.90.0.77")["NetworkSettings"]["Networks"][a]["IPAddress"] == "10.90.0.77"
    node.docker.docker("rm", "-f", "reuse")


def test_create_while_qiaod_is_down_fails_within_seconds(node: Node) -> None:
    """dockerd retries a plugin call for 15 s (1 + 2 + 4 + 8), then fails; the error names the socket
    when the driver was already activated, and is "plugin not found" for a dockerd started since."""
    node.docker.docker(*CREATE, "--subnet", "10.93.0.0/24", f"{RUN}up")  # the driver is activated
    node.docker.docker("network", "rm", f"{RUN}up")
    node.host.stop_daemon()
    try:
        assert not node.plugin_socket.exists()
        took, got = timed(node.docker.docker, *CREATE, "--subnet", "10.93.0.0/24", f"{RUN}down", check=False, timeout=40)
        FIGURES["network create, qiaod down, driver activated"] = f"{took:.1f} s"
        assert got.returncode != 0 and took < 20, (took, got)
        assert "qiao.sock" in got.stderr and "no such file or directory" in got.stderr, got.stderr
        node.docker.restart()
        took, got = timed(node.docker.docker, *CREATE, "--subnet", "10.93.0.0/24", f"{RUN}down", check=False, timeout=40)
        FIGURES["network create, qiaod down, dockerd restarted since"] = f"{took:.1f} s"
        assert got.returncode != 0 and took < 20, (took, got)
        assert 'plugin "qiao" not found' in got.stderr, got.stderr
        assert not node.docker.docker("network", "ls", "-q", "--filter", "driver=qiao").stdout.strip()
    finally:
        node.host.start_daemon()
    node.docker.docker(*CREATE, "--subnet", "10.93.0.0/24", f"{RUN}down")  # found again
    node.docker.docker("network", "rm", f"{RUN}down")


# -- 5. two lab hosts: one overlay, each host's dockerd on its qiaod -----------------------------


@dataclass
class LabHost:
    """A lab host as the Dockerd harness takes it (its network namespace file)."""

    path: str


class Cluster:
    """A lab of two hosts (etcd, qiaod --cluster-store on each); ``join`` gives a host's qiaod a
    daemon.json that serves the plugin and starts a dockerd of the host's own on it."""

    def __init__(self, lab: Lab, tmp: Path):
        self.lab, self.tmp = lab, tmp
        self.dockers: dict[str, Dockerd] = {}
        self.daemons: list[subprocess.Popen[bytes]] = []  # the qiaods started here (``lab down`` ends them; reaped after)
        self.ref = ""

    def join(self, host: str) -> Dockerd:
        """Restart the host's qiaod (SIGTERM, then the lab's own command line) with ROOT/daemon.json
        naming the plugin socket and the dockerd; then start that dockerd."""
        d = self.tmp / host
        plugins = d / "plugins"
        plugins.mkdir(parents=True)
        root = self.lab.host(host)["root"]
        pid = self.lab.pid(host)
        argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        wait_for(f"qiaod {pid} on {host} to end", lambda: not os.path.exists(f"/proc/{pid}"), timeout=15)
        FIGURES[f"{host}: the lab's qiaod stopped (SIGTERM)"] = f"{time.monotonic() - started:.1f} s"
        config = {"docker-plugin": str(plugins / "qiao.sock"), "docker-host": f"unix://{d / 'docker' / 'docker.sock'}"}
        Path(root, "daemon.json").write_text(json.dumps(config))
        with open(os.path.join(root, "qiaod.log"), "ab") as log:
            proc = subprocess.Popen(
                ["nsenter", f"--net={self.lab.ns(host)}", "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.daemons.append(proc)
        state = self.lab.state
        state["pids"][host] = proc.pid
        self.lab.save_state(state)
        wait_for(f"qiaod on {host} to serve the plugin", lambda: proc.poll() is None and (plugins / "qiao.sock").exists(), timeout=20)
        self.lab.qiao(host, "daemon", "status")
        FIGURES[f"{host}: qiaod with the plugin serving"] = f"{time.monotonic() - started:.1f} s"
        lab_host = cast(Namespace, LabHost(self.lab.ns(host)))  # the harness reads its .path only
        self.dockers[host] = docker = Dockerd(lab_host, d, plugin_dir=plugins, name=f"{RUN}-{host}")
        self.ref = docker.import_busybox()
        FIGURES[f"{host}: joined (qiaod restarted, dockerd up, busybox imported)"] = f"{time.monotonic() - started:.1f} s"
        return docker

    def close(self) -> None:
        for docker in self.dockers.values():
            docker.close()  # before the qiaods (lab down): a plugin gone costs dockerd 15 s per call


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    root = tempfile.mkdtemp(prefix=f"{RUN}-dqlab-")
    tmp = Path(tempfile.mkdtemp(prefix=f"{RUN}-dqlabd-"))
    lab = Lab(root)
    made = Cluster(lab, tmp)
    try:
        made.lab, _lines, took = lab_up(root, 2)
        FIGURES["lab up --hosts 2"] = f"{took:.1f} s"
        yield made
    finally:
        made.close()
        try:
            with contextlib.suppress(Exception):
                made.lab.qiao("host1", "network", "rm", SPAN, check=False)  # cluster-wide (Docker leaves an overlay to qiao)
            down_and_check(made.lab)  # ends the qiaods too (by their command lines)
        finally:
            for proc in made.daemons:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            shutil.rmtree(tmp, ignore_errors=True)


SPAN, SPAN_RANGE = "span", "10.200.0.0/16"
SPAN_CREATE = (*CREATE, "-o", "qiao.overlay=true", "-o", f"qiao.name={SPAN}", "--subnet", SPAN_RANGE, SPAN)


def fetch_both(docker: Dockerd, ref: str, dns: str, address: str, name: str) -> subprocess.CompletedProcess[str]:
    """From a throw-away container on the overlay: the server by address, then by name (``--dns``)."""
    script = f"timeout 10 wget -qO- http://{address}/ && timeout 20 wget -qO- http://{name}/"
    return docker.docker("run", "--rm", "--init", "--network", SPAN, "--dns", dns, ref, "sh", "-c", script, check=False)


def test_overlay_across_two_hosts_with_a_dockerd_on_each(cluster: Cluster) -> None:
    lab = cluster.lab
    d1 = cluster.join("host1")
    d1.docker(*SPAN_CREATE)
    d1.docker("run", "-d", "--name", "web", "--network", SPAN, cluster.ref, *HTTPD)
    web = json.loads(d1.docker("inspect", "web").stdout)[0]["NetworkSettings"]["Networks"][SPAN]["IPAddress"]
    ours1 = json.loads(lab.qiao("host1", "network", "inspect", SPAN).stdout)[0]
    assert ours1["Scope"] == "global" and ours1["IPAM"]["Config"][0]["Subnet"] == SPAN_RANGE
    names1 = lambda: [c["Name"] for c in json.loads(lab.qiao("host1", "network", "inspect", SPAN).stdout)[0]["Containers"].values()]  # noqa: E731
    wait_for("host1's qiao to learn web's name from dockerd", lambda: names1() == ["web"])

    # host2 joins later: its qiaod (restarted with the plugin) has the network from etcd already
    seen = json.loads(lab.qiao("host2", "network", "inspect", SPAN).stdout)[0]
    d2 = cluster.join("host2")
    d2.docker(*SPAN_CREATE)  # this host's Docker network on the same qiao network
    ours2 = json.loads(lab.qiao("host2", "network", "inspect", SPAN).stdout)[0]
    assert ours2["Id"] == seen["Id"] == ours1["Id"], (ours2, seen)
    gateway2 = ours2["IPAM"]["Config"][0]["Gateway"]
    assert gateway2.split(".")[:3] != web.split(".")[:3]  # each host's containers come from its own lease
    # Docker's resolver knows its own host's containers only; it asks the --dns server (qiao's, on this
    # host's gateway) for the others, and qiao's knows them from the overlay's name records in etcd
    took, got = timed(fetch_both, d2, cluster.ref, gateway2, web, "web")
    FIGURES["host2 -> host1 by address and by name"] = f"{took:.1f} s"
    assert got.stdout == HELLO * 2, (got, lab.in_ns("host2", "ip", "route").stdout)

    # and the other way: host2's qiao learns its container's name from host2's dockerd
    d2.docker("run", "-d", "--name", "web2", "--network", SPAN, cluster.ref, *HTTPD)
    web2 = json.loads(d2.docker("inspect", "web2").stdout)[0]["NetworkSettings"]["Networks"][SPAN]["IPAddress"]
    took, got = timed(fetch_both, d1, cluster.ref, ours1["IPAM"]["Config"][0]["Gateway"], web2, "web2")
    FIGURES["host1 -> host2 by address and by name"] = f"{took:.1f} s"
    assert got.stdout == HELLO * 2, got

    d1.docker("rm", "-f", "web")
    d2.docker("rm", "-f", "web2")
    d2.docker("network", "rm", SPAN)
    d1.docker("network", "rm", SPAN)
    assert json.loads(lab.qiao("host1", "network", "inspect", SPAN).stdout)[0]["Id"] == ours1["Id"]  # the cluster's: qiao removes it
