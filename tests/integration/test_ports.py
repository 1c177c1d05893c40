"""Published ports, TCP and UDP, in real namespaces.

* Syntax and display: ``-p HOST:CTR``, ``-p IP:HOST:CTR``, ``-p CTR`` (a
  random host port), ranges, one free port out of a host range, ``--expose``
  + ``-P``; ``qiao port``, inspect (``NetworkSettings.Ports``,
  ``HostConfig.PortBindings``, ``Config.ExposedPorts``) and ``ps``.
* Reachability: from an outside machine (source address preserved), from the
  host through each of its addresses and 127.0.0.1, from another container
  and from the server itself through the host's addresses (hairpin); with
  and without br_netfilter (``bridge-nf-call-iptables``).
* Address-bound ports: 127.0.0.1 ones are for the host only (even for a
  neighbour that routes 127.0.0.0/8 to us), an address-bound port answers on
  that address only.
* No proxy: no new listening process; the mappings are map elements, not rules.
* Conflicts: one clear line naming the holder (container or process), and a
  failed ``run`` changes nothing.
* Removal: ``stop`` / ``rm -f`` remove the mapping at once; a long UDP flow
  follows the port to a new container (conntrack flush).
* Coexistence: a foreign ``forward`` chain with policy drop, an unrelated
  table that qiao never changes, the ruleset back to what it was.
* Adding and removing one mapping leaves the others (and their traffic) alone.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import RUN, Host, Namespace, wait_for

PY = sys.executable  # the same interpreter everywhere: containers share the host's file system

HOST_IP, OUT_IP, GATEWAY = "198.51.100.1", "198.51.100.2", "172.17.0.1"

# The container's server: ``SERVER LABEL tcp:PORT udp:PORT ...``.  TCP: a first
# line "LABEL PEER", then an echo of every line; UDP: "LABEL PEER DATA" back to
# the sender.  So every reply says which container answered and whom it saw.
SERVER = r"""
import socket, sys, threading
label = sys.argv[1]
def tcp(s):
    while True:
        c, peer = s.accept()
        threading.Thread(target=echo, args=(c, peer), daemon=True).start()
def echo(c, peer):
    with c:
        c.sendall(f"{label} {peer[0]}\n".encode())
        for line in c.makefile("rb"):
            c.sendall(line)
def udp(s):
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(f"{label} {peer[0]} ".encode() + data, peer)
workers = []
for spec in sys.argv[2:]:
    proto, port = spec.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    if proto == "tcp":
        s.listen(128)
    workers.append(threading.Thread(target=tcp if proto == "tcp" else udp, args=(s,), daemon=True))
for w in workers:
    w.start()
print("ready", flush=True)
threading.Event().wait()
"""

# ``PROBE TIMEOUT RETRY PROTO:IP:PORT ...`` -> a JSON list: the server's first
# line (TCP) or reply (UDP, data "probe"), or "ERR <exception>".  A target is
# tried again (fresh socket) until it answers or RETRY seconds have passed.
PROBE = r"""
import json, socket, sys, time
timeout, retry = float(sys.argv[1]), float(sys.argv[2])
def once(proto, ip, port):
    try:
        if proto == "tcp":
            with socket.create_connection((ip, port), timeout) as s:
                s.settimeout(timeout)
                return s.makefile("rb").readline().decode().strip()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((ip, port))
            s.send(b"probe")
            return s.recv(2048).decode().strip()
    except OSError as exc:
        return f"ERR {type(exc).__name__}"
out = []
for target in sys.argv[3:]:
    proto, ip, port = target.split(":")
    end = time.monotonic() + retry
    while True:
        reply = once(proto, ip, int(port))
        if not reply.startswith("ERR") or time.monotonic() > end:
            break
        time.sleep(0.05)
    out.append(reply)
print(json.dumps(out))
"""

# A UDP client with one socket for its whole life (fixed source port): each
# line of stdin is sent as a datagram; prints the reply or "ERR <exception>".
UDP_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.connect((sys.argv[1], int(sys.argv[2])))
for line in sys.stdin:
    s.setblocking(False)
    with __import__("contextlib").suppress(OSError):
        while True:
            s.recv(2048)  # drop late replies and pending errors
    s.settimeout(float(sys.argv[4]))
    try:
        s.send(line.strip().encode())
        reply = s.recv(2048).decode().strip()
    except OSError as exc:
        reply = f"ERR {type(exc).__name__}"
    print(reply, flush=True)
"""

# Traffic to published ports for as long as stdin is open: each round a fresh
# TCP connection, a UDP exchange, and a line over one long-lived TCP
# connection.  Prints "started", then at EOF a JSON summary.
TRAFFIC = r"""
import json, socket, sys, threading, time
ip, tport, uport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
keep = socket.create_connection((ip, tport), 2)
keep.settimeout(2)
lines = keep.makefile("rb")
lines.readline()
rounds, failures = 0, []
print("started", flush=True)
while not stop.is_set():
    rounds += 1
    for what in ("tcp", "udp", "kept"):
        try:
            if what == "tcp":
                with socket.create_connection((ip, tport), 2) as s:
                    s.settimeout(2)
                    assert s.makefile("rb").readline()
            elif what == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(2)
                    s.connect((ip, uport))
                    s.send(b"x")
                    assert s.recv(2048)
            else:
                keep.sendall(f"round {rounds}\n".encode())
                assert lines.readline() == f"round {rounds}\n".encode()
        except (OSError, AssertionError) as exc:
            failures.append(f"round {rounds} {what}: {exc!r}")
    time.sleep(0.01)
print(json.dumps({"rounds": rounds, "failures": failures}), flush=True)
"""

HOLD = r"""
import socket, sys, threading
for spec in sys.argv[1:]:
    proto, port = spec.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(port)))
    if proto == "tcp":
        s.listen()
    globals().setdefault("held", []).append(s)
print("ready", flush=True)
threading.Event().wait()
"""


# -- helpers -------------------------------------------------------------------


Where = Namespace | tuple[Host, str]  # a namespace, or (host, container name)


def probe(where: Where, *targets: str, timeout: float = 1.0, retry: float = 0.0) -> list[str]:
    """Replies of the servers at ``PROTO:IP:PORT`` targets, seen from ``where``."""
    args = (PY, "-c", PROBE, str(timeout), str(retry), *targets)
    r = where[0].exec(where[1], *args) if isinstance(where, tuple) else where.sh(*args)
    return json.loads(r.stdout)


def label_of(reply: str) -> str:
    return reply.split()[0]


def refused(replies: list[str]) -> bool:
    return all(r.startswith("ERR") for r in replies)


class Containers:
    """Containers made by one test (removed at its end, even on failure)."""

    def __init__(self, host: Host):
        self.host = host
        self.names: list[str] = []

    def name(self, short: str) -> str:
        return f"{RUN}-{short}"

    def serve(self, short: str, *run_args: str, listen: tuple[str, ...] = ("tcp:80",), network: str = "bridge") -> str:
        """``run -d`` a SERVER labelled ``short``; waits until it has bound its ports.  Returns the container's address."""
        name = self.name(short)
        self.names.append(name)
        self.host.run_d("--name", name, "--network", network, *run_args, "--", PY, "-u", "-c", SERVER, short, *listen)
        try:
            wait_for(f"{name} serving", lambda: "ready" in self.host.qiao("logs", name).stdout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its output: {self.host.qiao('logs', name, check=False).stdout[-2000:]}") from None
        return self.ip(short, network)

    def sleeper(self, short: str, *run_args: str) -> str:
        name = self.name(short)
        self.names.append(name)
        self.host.run_d("--name", name, *run_args, "--", "sleep", "300")
        return name

    def ip(self, short: str, network: str = "bridge") -> str:
        return self.host.inspect(self.name(short))["NetworkSettings"]["Networks"][network]["IPAddress"]

    def remove_all(self) -> None:
        if self.names:
            self.host.qiao("rm", "-f", *self.names, check=False)
        self.names.clear()


@pytest.fixture
def ctrs(host: Host) -> Iterator[Containers]:
    c = Containers(host)
    try:
        yield c
    finally:
        c.remove_all()


@pytest.fixture(scope="module")
def outside(host: Host) -> Namespace:
    """The outside machine (198.51.100.2) on its own link to the module's host (198.51.100.1)."""
    return host.add_outside()


@contextlib.contextmanager
def process(ns: Namespace, *args: str, ready: str | None = "ready") -> Iterator[subprocess.Popen]:
    """A process the test starts in ``ns`` (stdin/stdout pipes); killed by its PID at the end."""
    proc = ns.popen(*args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line == ready, f"{args[:2]} said {line!r}: {proc.stderr.read() if proc.poll() is not None else ''}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def holding(ns: Namespace, *specs: str) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """A host process holding ``tcp:PORT`` (listening) / ``udp:PORT`` (bound) in ``ns``."""
    return process(ns, PY, "-c", HOLD, *specs)


def can_bind(ns: Namespace, *specs: str) -> bool:
    """Whether a new process in ``ns`` can take every ``PROTO:PORT`` (TCP listening) on 0.0.0.0."""
    code = (
        "import socket, sys\n"
        "for spec in sys.argv[1:]:\n"
        "    proto, port = spec.split(':')\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == 'tcp' else socket.SOCK_DGRAM)\n"
        "    try:\n"
        "        s.bind(('0.0.0.0', int(port)))\n"
        "    except OSError:\n"
        "        sys.exit(1)\n"
        "    if proto == 'tcp':\n"
        "        s.listen()\n"
    )
    return ns.sh(PY, "-c", code, *specs, check=False).returncode == 0


def nft_table(ns: Namespace) -> list[dict]:
    return json.loads(ns.sh("nft", "-j", "list", "table", "inet", "qiao").stdout)["nftables"]


def elements(ns: Namespace) -> dict[str, set[str]]:
    """The published maps' elements, as ``"tcp . 8080 : 172.17.0.2 . 80"``."""

    def text(part: Any) -> str:
        return " . ".join(str(p) for p in part["concat"]) if isinstance(part, dict) else str(part)

    out: dict[str, set[str]] = {"published": set(), "published_any": set()}
    for obj in nft_table(ns):
        m = obj.get("map")
        if m and m["name"] in out:
            out[m["name"]] = {f"{text(k)} : {text(v)}" for k, v in m.get("elem", [])}
    return out


def rules(ns: Namespace) -> list[str]:
    """Every rule of qiao's table (chain + expression), without handles."""
    return [f"{o['rule']['chain']}: {json.dumps(o['rule']['expr'])}" for o in nft_table(ns) if "rule" in o]


def sockets(ns: Namespace, flags: str) -> set[str]:
    """``ss -H<flags>np`` lines, whitespace-normalised."""
    return {" ".join(line.split()) for line in ns.sh("ss", f"-H{flags}np").stdout.splitlines() if line.strip()}


def ps_rows(host: Host) -> list[dict]:
    """``ps -a --format json`` without the fields that move with the clock."""
    return [{k: v for k, v in r.items() if k not in ("RunningFor", "Status", "CreatedAt")} for r in host.ps_json("-a")]


def one_clear_line(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode != 0, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def daemon_pid(host: Host) -> int:
    return int(re.search(r"pid (\d+)", host.qiao("daemon", "status").stdout).group(1))  # type: ignore[union-attr]


# -- 1. syntax and display -------------------------------------------------------------


def test_publish_syntax_inspect_port_and_ps(host: Host, ctrs: Containers) -> None:
    pa, pb, pc, pd = (ctrs.name(n) for n in ("pa", "pb", "pc", "pd"))
    with holding(host, "tcp:8000"):  # the first port of pc's range is taken by a host process
        ctrs.serve(
            "pa", "-p", "8080:80", "-p", "127.0.0.1:8081:80", "-p", "9000-9002:9000-9002/udp", "--expose", "7000",
            listen=("tcp:80", "udp:9000", "udp:9001", "udp:9002"),
        )  # fmt: skip
        ctrs.serve("pb", "-p", "80")
        ctrs.serve("pc", "-p", "8000-8010:80")
        ctrs.serve("pd", "--expose", "7000", "--expose", "7001/udp", "-P", listen=("tcp:7000", "udp:7001"))

    a = host.inspect(pa)
    assert a["NetworkSettings"]["Ports"] == {
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": "8081"}],
        "9000/udp": [{"HostIp": "0.0.0.0", "HostPort": "9000"}],
        "9001/udp": [{"HostIp": "0.0.0.0", "HostPort": "9001"}],
        "9002/udp": [{"HostIp": "0.0.0.0", "HostPort": "9002"}],
        "7000/tcp": None,
    }
    assert a["HostConfig"]["PortBindings"] == {
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": "8081"}],
        "9000/udp": [{"HostIp": "", "HostPort": "9000"}],
        "9001/udp": [{"HostIp": "", "HostPort": "9001"}],
        "9002/udp": [{"HostIp": "", "HostPort": "9002"}],
    }
    assert a["HostConfig"]["PublishAllPorts"] is False
    assert a["Config"]["ExposedPorts"] == {"80/tcp": {}, "9000/udp": {}, "9001/udp": {}, "9002/udp": {}, "7000/tcp": {}}

    b = host.inspect(pb)
    assert b["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": ""}]}
    [b80] = b["NetworkSettings"]["Ports"]["80/tcp"]
    lo, hi = map(int, host.sh("cat", "/proc/sys/net/ipv4/ip_local_port_range").stdout.split())
    assert b80["HostIp"] == "0.0.0.0" and lo <= int(b80["HostPort"]) <= hi, b80
    random_port = int(b80["HostPort"])

    c = host.inspect(pc)
    assert c["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8000-8010"}]}
    [c80] = c["NetworkSettings"]["Ports"]["80/tcp"]
    range_port = int(c80["HostPort"])
    assert 8001 <= range_port <= 8010, "8000 is held by a host process"

    d = host.inspect(pd)
    assert d["HostConfig"]["PublishAllPorts"] is True and d["HostConfig"]["PortBindings"] == {}
    assert d["Config"]["ExposedPorts"] == {"7000/tcp": {}, "7001/udp": {}}
    dports = d["NetworkSettings"]["Ports"]
    assert set(dports) == {"7000/tcp", "7001/udp"}
    d7000, d7001 = (int(dports[k][0]["HostPort"]) for k in ("7000/tcp", "7001/udp"))
    assert all(dports[k][0]["HostIp"] == "0.0.0.0" and len(dports[k]) == 1 for k in dports)

    # qiao port
    assert set(host.qiao("port", pa).stdout.splitlines()) == {
        "80/tcp -> 0.0.0.0:8080", "80/tcp -> 127.0.0.1:8081",
        "9000/udp -> 0.0.0.0:9000", "9001/udp -> 0.0.0.0:9001", "9002/udp -> 0.0.0.0:9002",
    }  # fmt: skip
    assert host.qiao("port", pa, "80").stdout.splitlines() == ["0.0.0.0:8080", "127.0.0.1:8081"]
    assert host.qiao("port", pa, "80/tcp").stdout.splitlines() == ["0.0.0.0:8080", "127.0.0.1:8081"]
    assert host.qiao("port", pa, "9001/udp").stdout == "0.0.0.0:9001\n"
    one_clear_line(host.qiao("port", pa, "7000", check=False), "7000/tcp")  # exposed, not published
    one_clear_line(host.qiao("port", pa, "9001", check=False), "9001/tcp")  # 9001 is published as udp only
    assert host.qiao("port", pb).stdout == f"80/tcp -> 0.0.0.0:{random_port}\n"
    assert set(host.qiao("port", pd).stdout.splitlines()) == {f"7000/tcp -> 0.0.0.0:{d7000}", f"7001/udp -> 0.0.0.0:{d7001}"}

    # ps --format json and the PORTS column
    # Docker's DisplayablePorts: ranges of unpublished and same-port ports first, then each other mapping
    ps = {r["Names"]: r["Ports"] for r in ps_rows(host)}
    assert ps[pa] == "7000/tcp, 0.0.0.0:9000-9002->9000-9002/udp, 0.0.0.0:8080->80/tcp, 127.0.0.1:8081->80/tcp"
    assert ps[pb] == f"0.0.0.0:{random_port}->80/tcp"
    assert ps[pc] == f"0.0.0.0:{range_port}->80/tcp"
    assert ps[pd] == f"0.0.0.0:{d7000}->7000/tcp, 0.0.0.0:{d7001}->7001/udp"
    table = host.qiao("ps").stdout.splitlines()
    assert table[0].split()[:7] == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS"]
    [pb_line] = [line for line in table if line.endswith(" " + pb)]
    assert f"0.0.0.0:{random_port}->80/tcp" in pb_line

    # and each of them answers where it says
    targets = [
        "tcp:127.0.0.1:8080", "tcp:127.0.0.1:8081", "udp:127.0.0.1:9000", "udp:127.0.0.1:9001", "udp:127.0.0.1:9002",
        f"tcp:127.0.0.1:{random_port}", f"tcp:127.0.0.1:{range_port}", f"tcp:127.0.0.1:{d7000}", f"udp:127.0.0.1:{d7001}",
    ]  # fmt: skip
    assert [label_of(r) for r in probe(host, *targets)] == ["pa"] * 5 + ["pb", "pc", "pd", "pd"]

    # a stopped container publishes nothing
    host.qiao("stop", pb)
    assert host.inspect(pb)["NetworkSettings"]["Ports"] == {}
    assert {r["Names"]: r["Ports"] for r in ps_rows(host)}[pb] == ""
    assert host.qiao("port", pb).stdout == ""  # nothing published: no output, no error
    assert can_bind(host, f"tcp:{random_port}")


# -- 2. reachability -----------------------------------------------------------------


@pytest.mark.parametrize("br_netfilter", ["1", "0"], ids=["br_netfilter", "routed"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_reachable_from_outside_host_addresses_loopback_and_hairpin(
    host: Host, outside: Namespace, ctrs: Containers, proto: str, br_netfilter: str
) -> None:
    """``br_netfilter``: whether traffic between ports of a bridge goes through the IP hooks (the kernel's
    default in a new namespace when the module is loaded, and Docker loads it) or is routed by the host."""
    key = "net.bridge.bridge-nf-call-iptables"
    was = host.sh("sysctl", "-n", key, check=False)
    if was.returncode != 0:
        if br_netfilter == "1":
            pytest.skip("br_netfilter is not loaded")
        return check_reachability(host, outside, ctrs, proto)
    host.sh("sysctl", "-qw", f"{key}={br_netfilter}")
    try:
        check_reachability(host, outside, ctrs, proto)
    finally:
        host.sh("sysctl", "-qw", f"{key}={was.stdout.strip()}")


def check_reachability(host: Host, outside: Namespace, ctrs: Containers, proto: str) -> None:
    suffix = "" if proto == "tcp" else "/udp"
    ctrs.serve("web", "-p", f"8080:80{suffix}", listen=(f"{proto}:80",))
    cli = ctrs.sleeper("cli")

    # the outside machine, and the server sees its real address
    assert probe(outside, f"{proto}:{HOST_IP}:8080") == [f"web {OUT_IP}" + (" probe" if proto == "udp" else "")]

    # the host, through each of its addresses and through 127.0.0.1
    replies = probe(host, f"{proto}:{HOST_IP}:8080", f"{proto}:{GATEWAY}:8080", f"{proto}:127.0.0.1:8080")
    assert [label_of(r) for r in replies] == ["web"] * 3, replies
    assert replies[2].split()[1] == GATEWAY, "127.0.0.1 leaves masqueraded to the bridge address"

    # another container on the bridge, through the host's addresses (hairpin)
    replies = probe((host, cli), f"{proto}:{HOST_IP}:8080", f"{proto}:{GATEWAY}:8080")
    assert [label_of(r) for r in replies] == ["web"] * 2, replies
    # and the server itself (it must see another source than its own address: masqueraded to the gateway)
    replies = probe((host, ctrs.name("web")), f"{proto}:{HOST_IP}:8080", f"{proto}:{GATEWAY}:8080")
    assert [r.split()[:2] for r in replies] == [["web", GATEWAY]] * 2, replies


# -- 3. address-bound ports --------------------------------------------------------------


def test_loopback_bound_port_is_for_the_host_only(host: Host, ctrs: Containers) -> None:
    ip = ctrs.serve("lo", "-p", "127.0.0.1:8081:80", "-p", "127.0.0.1:8081:80/udp", "-p", "8080:80", listen=("tcp:80", "udp:80"))
    assert [label_of(r) for r in probe(host, "tcp:127.0.0.1:8081", "udp:127.0.0.1:8081")] == ["lo", "lo"]

    # A neighbour of its own (203.0.113.2) that routes 127.0.0.0/8 to the host.  DNAT in prerouting
    # comes before the kernel's martian check, so only qiao's own rule keeps these packets from the
    # container.  A reply would come back from 127.0.0.1 and die as a martian at the neighbour: "not
    # answered" is not enough, the host's conntrack must show no flow from the neighbour to the container.
    nb = host.add_outside("lonb", subnet="203.0.113")

    def reaches_container() -> str:
        flows = host.sh("conntrack", "-L", "-s", "203.0.113.2").stdout
        return "\n".join(line for line in flows.splitlines() if f"src={ip} " in line)

    assert probe(nb, "tcp:203.0.113.1:8081", "udp:203.0.113.1:8081", timeout=0.5) == [
        "ERR ConnectionRefusedError", "ERR ConnectionRefusedError"
    ]  # fmt: skip
    nb.sh("ip", "addr", "del", "127.0.0.1/8", "dev", "lo")
    nb.sh("ip", "route", "add", "127.0.0.0/8", "via", "203.0.113.1")
    targets = ("tcp:127.0.0.1:8081", "udp:127.0.0.1:8081", "tcp:127.0.0.1:8080")
    assert refused(probe(nb, *targets, timeout=0.5))
    assert reaches_container() == ""
    # even where the host accepts 127.0.0.0/8 from the wire (kube-proxy sets route_localnet)
    host.sh("sysctl", "-qw", f"net.ipv4.conf.{RUN}lonbh.route_localnet=1")
    assert refused(probe(nb, *targets, timeout=0.5))
    assert reaches_container() == ""
    # the host still gets through; the neighbour through the wildcard port on the host's address
    assert [label_of(r) for r in probe(host, "tcp:127.0.0.1:8081", "udp:127.0.0.1:8081")] == ["lo", "lo"]
    assert probe(nb, "tcp:203.0.113.1:8080") == ["lo 203.0.113.2"]


def test_address_bound_port_answers_on_that_address_only(host: Host, outside: Namespace, ctrs: Containers) -> None:
    ctrs.serve("one", "-p", f"{HOST_IP}:8082:80", "-p", f"{HOST_IP}:8082:80/udp", listen=("tcp:80", "udp:80"))
    assert [label_of(r) for r in probe(outside, f"tcp:{HOST_IP}:8082", f"udp:{HOST_IP}:8082")] == ["one", "one"]
    assert [label_of(r) for r in probe(host, f"tcp:{HOST_IP}:8082", f"udp:{HOST_IP}:8082")] == ["one", "one"]
    others = [f"{p}:{ip}:8082" for p in ("tcp", "udp") for ip in ("127.0.0.1", GATEWAY)]
    assert refused(probe(host, *others, timeout=0.5)), "bound to 198.51.100.1 only"
    assert host.inspect(ctrs.name("one"))["NetworkSettings"]["Ports"] == {
        "80/tcp": [{"HostIp": HOST_IP, "HostPort": "8082"}],
        "80/udp": [{"HostIp": HOST_IP, "HostPort": "8082"}],
    }
    # An address the host does not have: one clear line, nothing left.
    r = host.qiao("run", "-d", "--name", ctrs.name("nope"), "-p", "192.0.2.7:8083:80", "--", "sleep", "300", check=False)
    one_clear_line(r, "192.0.2.7")
    assert ctrs.name("nope") not in host.qiao("ps", "-a").stdout


# -- 4. no proxy process; map elements, not rules ------------------------------------------


def test_no_proxy_process_and_mappings_are_map_elements(host: Host, ctrs: Containers) -> None:
    tcp_before, udp_before = sockets(host, "tln"), sockets(host, "uln")
    rules_before, elements_before = rules(host), elements(host)
    ip = ctrs.serve(
        "np", "-p", "8080:80", "-p", "127.0.0.1:8081:80", "-p", "9000:9000/udp", "-p", "127.0.0.1:9001:9001/udp",
        listen=("tcp:80", "udp:9000", "udp:9001"),
    )  # fmt: skip
    assert [label_of(r) for r in probe(host, "tcp:127.0.0.1:8080", "udp:127.0.0.1:9000")] == ["np", "np"]

    # Nobody listens on the host for the container: the daemon's TCP sockets are bound, not listening,
    # and its UDP ones are bound by qiaod itself, nothing else.
    assert sockets(host, "tln") == tcp_before
    pid = daemon_pid(host)
    new_udp = sockets(host, "uln") - udp_before
    assert {line.split()[3] for line in new_udp} == {"0.0.0.0:9000", "127.0.0.1:9001"}, new_udp
    assert all(f'(("qiaod",pid={pid},' in line for line in new_udp), new_udp

    # The table: the same rules as before, the mappings as elements of the two maps
    assert rules(host) == rules_before
    assert not any(re.search(r"\b(8080|8081|9000|9001)\b", rule) for rule in rules(host))
    assert elements(host) == {
        "published": elements_before["published"] | {f"tcp . 127.0.0.1 . 8081 : {ip} . 80", f"udp . 127.0.0.1 . 9001 : {ip} . 9001"},
        "published_any": elements_before["published_any"] | {f"tcp . 8080 : {ip} . 80", f"udp . 9000 : {ip} . 9000"},
    }


# -- 5. conflicts ------------------------------------------------------------------------------


def test_conflicts_name_the_holder_and_change_nothing(host: Host, ctrs: Containers) -> None:
    holder = ctrs.sleeper("holder", "-p", "8080:80", "-p", "9000:9000/udp")
    ps_before, nft_before = ps_rows(host), host.sh("nft", "list", "table", "inet", "qiao").stdout

    def fails(*publish: str) -> str:
        name = ctrs.name("loser")
        r = host.qiao("run", "-d", "--name", name, *publish, "--", "sleep", "300", check=False)
        line = one_clear_line(r)
        assert r.returncode == 125 and r.stdout == "", r
        assert ps_rows(host) == ps_before, "a failed run leaves no container"
        assert host.sh("nft", "list", "table", "inet", "qiao").stdout == nft_before, "a failed run leaves the firewall alone"
        return line

    for publish in (["-p", "8080:80"], ["-p", "127.0.0.1:8080:81"], ["-p", "9000:53/udp"]):
        line = fails(*publish)
        assert holder in line and "already allocated" in line, line

    # the first port was taken before the second failed: it goes back too
    line = fails("-p", "8084:80", "-p", "8080:81")
    assert holder in line
    assert can_bind(host, "tcp:8084")

    # a host process: named by pid and command
    with holding(host, "tcp:8085", "udp:8086") as proc:
        comm = Path(f"/proc/{proc.pid}/comm").read_text().strip()
        for publish, port in ((["-p", "8085:80"], "8085"), (["-p", "8086:80/udp"], "8086")):
            line = fails(*publish)
            assert f"process {proc.pid} ({comm})" in line and port in line, line
        # the other protocol on the same port is free
        ctrs.sleeper("other-proto", "-p", "8085:80/udp", "-p", "8086:80")
    # and the other protocol of the holder's ports too
    ctrs.sleeper("udp-8080", "-p", "8080:80/udp")


# -- 6. removal ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stop", "rm -f"])
def test_stop_or_rm_removes_the_mapping_at_once(host: Host, ctrs: Containers, how: str) -> None:
    ip = ctrs.serve("gone", "-p", "8080:80", "-p", "9000:9000/udp", listen=("tcp:80", "udp:9000"))
    mine = {f"tcp . 8080 : {ip} . 80", f"udp . 9000 : {ip} . 9000"}
    assert mine <= elements(host)["published_any"]
    assert not can_bind(host, "tcp:8080") and not can_bind(host, "udp:9000")

    host.qiao(*how.split(), ctrs.name("gone"))
    # no waiting: gone when the command returns
    assert not mine & elements(host)["published_any"]
    assert can_bind(host, "tcp:8080", "udp:9000")
    assert refused(probe(host, "tcp:127.0.0.1:8080", "udp:127.0.0.1:9000", timeout=0.5))

    if how == "stop":  # and back on start
        host.qiao("start", ctrs.name("gone"))
        wait_for("the restarted server", lambda: host.qiao("logs", ctrs.name("gone")).stdout.count("ready") == 2)
        assert [label_of(r) for r in probe(host, "tcp:127.0.0.1:8080", "udp:127.0.0.1:9000")] == ["gone", "gone"]


def test_udp_flow_follows_the_port_to_a_new_container(host: Host, outside: Namespace, ctrs: Containers) -> None:
    """A client sending from one socket keeps one conntrack flow; the daemon must flush it (moby #8795)."""
    host.qiao("network", "create", "--subnet", "10.77.0.0/24", f"{RUN}-n2")
    try:
        ip1 = ctrs.serve("u1", "-p", "9000:9000/udp", listen=("udp:9000",))
        with process(outside, PY, "-u", "-c", UDP_CLIENT, HOST_IP, "9000", "45678", "1.0", ready=None) as client:

            def send(data: str) -> str:
                assert client.stdin is not None and client.stdout is not None
                client.stdin.write(data + "\n")
                client.stdin.flush()
                return client.stdout.readline().strip()

            assert send("1") == f"u1 {OUT_IP} 1"
            assert send("2") == f"u1 {OUT_IP} 2"
            flows = host.sh("conntrack", "-L", "-p", "udp", "--dport", "9000").stdout
            assert f"src={OUT_IP}" in flows and "sport=45678" in flows and f"src={ip1}" in flows, flows

            # the old container goes, a new one with another address takes the port: the very next datagram gets there
            host.qiao("rm", "-f", ctrs.name("u1"))
            ip2 = ctrs.serve("u2", "-p", "9000:9000/udp", listen=("udp:9000",), network=f"{RUN}-n2")
            assert ip2.startswith("10.77.0.") and ip2 != ip1
            assert send("3") == f"u2 {OUT_IP} 3"

            # a datagram while nothing is published makes a flow to the host itself; the next container still gets the next one
            host.qiao("rm", "-f", ctrs.name("u2"))
            assert send("4").startswith("ERR")
            ctrs.serve("u3", "-p", "9000:9000/udp", listen=("udp:9000",))
            assert send("5") == f"u3 {OUT_IP} 5"
    finally:
        ctrs.remove_all()
        host.qiao("network", "rm", f"{RUN}-n2")


# -- 7. coexistence ------------------------------------------------------------------------------

FOREIGN_FORWARD = """\
table ip filter {
    chain FORWARD {
        type filter hook forward priority filter; policy drop;
        iifname "docker0" oifname != "docker0" accept
    }
}
"""


def foreign_rules(ns: Namespace, table: str, chain: str) -> tuple[str, list[str]]:
    """(policy, rules other than qiao's) of a foreign chain."""
    objs = json.loads(ns.sh("nft", "-j", "list", "chain", "ip", table, chain).stdout)["nftables"]
    [policy] = [o["chain"]["policy"] for o in objs if "chain" in o]
    return policy, [json.dumps(o["rule"]["expr"]) for o in objs if "rule" in o and not o["rule"].get("comment", "").startswith("qiao:")]


def test_foreign_forward_chain_with_policy_drop(make_host) -> None:
    h: Host = make_host("fwd", start=False)
    out = h.add_outside("fwdo")
    h.sh("nft", "-f", "-", input=FOREIGN_FORWARD)  # what Docker does to FORWARD, before qiaod starts
    before = foreign_rules(h, "filter", "FORWARD")
    h.start_daemon()
    c = Containers(h)
    try:
        c.serve("web", "-p", "8080:80", "-p", "9000:9000/udp", listen=("tcp:80", "udp:9000"))
        assert probe(out, f"tcp:{HOST_IP}:8080", f"udp:{HOST_IP}:9000", timeout=2) == [f"web {OUT_IP}", f"web {OUT_IP} probe"]
        assert foreign_rules(h, "filter", "FORWARD") == before, "the foreign chain keeps its policy and its own rules"
        # a user network gets the same, and takes it away with it
        h.qiao("network", "create", f"{RUN}-fn")
        c.serve("web2", "-p", "8081:80", listen=("tcp:80",), network=f"{RUN}-fn")
        assert probe(out, f"tcp:{HOST_IP}:8081", timeout=2) == [f"web2 {OUT_IP}"]
    finally:
        c.remove_all()
    h.qiao("network", "rm", f"{RUN}-fn")
    ours = [line for line in h.sh("nft", "list", "chain", "ip", "filter", "FORWARD").stdout.splitlines() if "qiao:" in line]
    assert len(ours) == 2 and all('"qiao0"' in line for line in ours), ours

    # A foreign drop chain that appears after qiaod (Docker started later) is handled by the periodic re-check.
    c.serve("late", "-p", "8082:80", listen=("tcp:80",))
    try:
        h.sh("nft", "-f", "-", input=LATE_FORWARD)
        assert probe(out, f"tcp:{HOST_IP}:8082", timeout=0.3, retry=15) == [f"late {OUT_IP}"]
        assert foreign_rules(h, "late", "FORWARD") == ("drop", [])
    finally:
        c.remove_all()


LATE_FORWARD = """\
table ip late {
    chain FORWARD {
        type filter hook forward priority filter + 10; policy drop;
    }
}
"""


UNRELATED = """\
table inet {run}-other {{
    set blocked {{ type ipv4_addr; elements = {{ 192.0.2.1, 192.0.2.2 }} }}
    map ports {{ type inet_service : verdict; elements = {{ 2223 : drop }} }}
    chain input {{
        type filter hook input priority filter + 5; policy accept;
        ip saddr @blocked drop
        tcp dport 2222 accept
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat + 5; policy accept;
        iifname "{run}-none" tcp dport 8080 redirect to :80
        tcp dport vmap @ports
    }}
}}
"""


def test_unrelated_table_untouched_and_ruleset_restored(make_host) -> None:
    h: Host = make_host("coex", start=False)
    out = h.add_outside("cxo")
    h.sh("nft", "-f", "-", input=UNRELATED.format(run=RUN))
    other = h.sh("nft", "list", "table", "inet", f"{RUN}-other").stdout
    h.start_daemon()
    ruleset = h.sh("nft", "list", "ruleset").stdout  # before the first container
    c = Containers(h)
    try:
        h.qiao("network", "create", f"{RUN}-cn")
        c.serve(
            "a", "-p", "8080:80", "-p", "127.0.0.1:8081:80", "-p", "9000:9000/udp", "--expose", "7000", "-P",
            listen=("tcp:80", "udp:9000", "tcp:7000"),
        )  # fmt: skip
        c.serve("b", "-p", f"{HOST_IP}:8082:80", "-p", "9001:9001/udp", listen=("tcp:80", "udp:9001"), network=f"{RUN}-cn")
        replies = probe(out, f"tcp:{HOST_IP}:8080", f"udp:{HOST_IP}:9000", f"tcp:{HOST_IP}:8082", f"udp:{HOST_IP}:9001")
        assert [label_of(r) for r in replies] == ["a", "a", "b", "b"]
        assert [label_of(r) for r in probe(h, "tcp:127.0.0.1:8081")] == ["a"]
        assert h.sh("nft", "list", "table", "inet", f"{RUN}-other").stdout == other
        h.qiao("stop", c.name("b"))
        h.qiao("rm", c.name("b"))
        h.qiao("network", "rm", f"{RUN}-cn")
    finally:
        c.remove_all()
    assert h.sh("nft", "list", "table", "inet", f"{RUN}-other").stdout == other
    assert h.sh("nft", "list", "ruleset").stdout == ruleset


# -- 8. one mapping at a time ------------------------------------------------------------------


def test_adding_and_removing_a_mapping_leaves_the_others_alone(host: Host, outside: Namespace, ctrs: Containers) -> None:
    ctrs.serve("keep", "-p", "8090:80", "-p", "9090:9090/udp", listen=("tcp:80", "udp:9090"))
    base = elements(host)
    count = sum(map(len, base.values()))
    with process(outside, PY, "-u", "-c", TRAFFIC, HOST_IP, "8090", "9090", ready="started") as traffic:
        for round_ in range(2):
            ip = ctrs.serve(f"tmp{round_}", "-p", "8091:80", "-p", "127.0.0.1:9091:9091/udp", listen=("tcp:80", "udp:9091"))
            now = elements(host)
            assert now["published_any"] == base["published_any"] | {f"tcp . 8091 : {ip} . 80"}
            assert now["published"] == base["published"] | {f"udp . 127.0.0.1 . 9091 : {ip} . 9091"}
            assert sum(map(len, now.values())) == count + 2
            assert [label_of(r) for r in probe(outside, f"tcp:{HOST_IP}:8091")] == [f"tmp{round_}"]
            host.qiao("rm", "-f", ctrs.name(f"tmp{round_}"))
            assert elements(host) == base
        assert traffic.stdin is not None and traffic.stdout is not None
        traffic.stdin.close()
        summary = json.loads(traffic.stdout.readline())
    assert summary["failures"] == [] and summary["rounds"] >= 5, summary
    assert [label_of(r) for r in probe(outside, f"tcp:{HOST_IP}:8090", f"udp:{HOST_IP}:9090")] == ["keep", "keep"]


def test_module_host_is_left_clean(host: Host) -> None:
    """Every test above removed its containers and networks: no container, no mapping, no network of ours."""
    assert host.qiao("ps", "-aq").stdout == ""
    assert elements(host) == {"published": set(), "published_any": set()}
    networks = {json.loads(line)["Name"] for line in host.qiao("network", "ls", "--format", "json").stdout.splitlines()}
    assert networks == {"bridge", "host", "none"}
