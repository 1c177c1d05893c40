"""User networks: isolation by every protocol and both address families,
``--internal``, ``enable_icc=false``, ``network connect``/``disconnect`` on a
running container, static addresses, IPv6 dual stack, ``--link`` on the
default bridge, and bad input that is refused in one line and changes nothing.

Traffic is probed from inside the namespaces themselves: a thread of this
process enters a container's (or a test namespace's) network namespace with
``setns`` and opens its sockets there, so a probe costs no process start and
hundreds run in parallel.  The helpers are shared with ``test_dns.py``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from qiao.kernel import linux
from tests.integration.conftest import RUN, Host, Namespace

PY = sys.executable  # the venv's python: has dnslib, starts fast (no pyenv shim)

# Runs in containers and test namespaces: TCP :7000 and UDP :7001, both
# families, each answering with the address it saw the client come from.
SERVER = """
import socket, threading
def serve_tcp(t):
    while True:
        c, a = t.accept()
        c.sendall(a[0].removeprefix("::ffff:").encode())
        c.close()
t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("::", 7000))
t.listen(64)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
u.bind(("::", 7001))
threading.Thread(target=serve_tcp, args=(t,), daemon=True).start()
while True:
    d, a = u.recvfrom(512)
    u.sendto(a[0].removeprefix("::ffff:").encode(), a)
"""

# A tiny upstream DNS server: NAME.example.test -> A ANSWER, anything else NXDOMAIN;
# every question asked is appended to LOG.
UPSTREAM = """
import socket, sys
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
answer, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
while True:
    data, peer = s.recvfrom(4096)
    query = DNSRecord.parse(data)
    reply = query.reply()
    name = str(query.q.qname).rstrip(".").lower()
    with open(log, "a") as f:
        f.write(name + "\\n")
    if name.endswith(".example.test"):
        if query.q.qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(answer), ttl=5))
    else:
        reply.header.rcode = RCODE.NXDOMAIN
    s.sendto(reply.pack(), peer)
"""


# -- running code inside a network namespace ----------------------------------


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        linux.setns(fd, linux.CLONE_NEWNET)  # this thread only
    finally:
        os.close(fd)


def in_parallel(calls: list[tuple[str, Callable[..., Any], tuple]]) -> list[Any]:
    """Run each ``fn(*args)`` in a fresh thread inside the network namespace at
    ``path`` (a /proc/PID/ns/net or /run/netns file); results in order."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def body(i: int, path: str, fn: Callable[..., Any], args: tuple) -> None:
        try:
            _enter(path)
            results[i] = fn(*args)
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i, *call)) for i, call in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def in_netns(path: str, fn: Callable[..., Any], *args: Any) -> Any:
    return in_parallel([(path, fn, args)])[0]


def netns_of(h: Host, container: str) -> str:
    return f"/proc/{h.inspect(container)['State']['Pid']}/ns/net"


# -- probes (run inside a namespace) ------------------------------------------


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp_once(addr: str, port: int, timeout: float) -> str | None:
    with socket.socket(_family(addr), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((addr, port))
            return s.recv(100).decode() or "connected"
        except OSError:
            return None


def udp_once(addr: str, port: int, timeout: float) -> str | None:
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(b"?", (addr, port))
            return s.recv(100).decode()
        except OSError:
            return None


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_once(addr: str, _port: int, timeout: float) -> str | None:
    """An echo request over a raw socket; "pong" when the matching reply comes back."""
    v6 = ":" in addr
    request, reply = (128, 129) if v6 else (8, 0)
    ident, payload = secrets.randbits(16), secrets.token_bytes(16)
    packet = struct.pack("!BBHHH", request, 0, 0, ident, 1) + payload
    if not v6:  # the kernel fills in the ICMPv6 checksum, not the ICMP one
        packet = packet[:2] + struct.pack("!H", _checksum(packet)) + packet[4:]
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    with socket.socket(_family(addr), socket.SOCK_RAW, proto) as s:
        deadline = time.monotonic() + timeout
        try:
            s.sendto(packet, (addr, 0))
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                data = s.recv(2048)
                if not v6:
                    data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 sockets see the IP header
                if data[0] == reply and data[8:] == payload:
                    return "pong"
        except OSError:
            return None
    return None


PROBES: dict[str, tuple[Callable[[str, int, float], str | None], int]] = {
    "tcp": (tcp_once, 7000),
    "udp": (udp_once, 7001),
    "icmp": (icmp_once, 0),
}


def probe(kind: str, addr: str, port: int = 0, expect_answer: bool = True, wait: float = 3.0, silence: float = 1.0) -> str | None:
    """An answer is retried for up to ``wait`` s; silence is one try of ``silence`` s
    (a dropped packet never answers, an allowed one answers in milliseconds)."""
    fn, default_port = PROBES[kind]
    port = port or default_port
    if not expect_answer:
        return fn(addr, port, silence)
    deadline = time.monotonic() + wait
    while True:
        got = fn(addr, port, min(1.0, max(0.1, deadline - time.monotonic())))
        if got is not None or time.monotonic() >= deadline:
            return got
        time.sleep(0.05)


def dns_query(server: str, name: str, qtype: str = "A", timeout: float = 1.0, tcp: bool = False) -> tuple[str, list[str]] | None:
    """(rcode, sorted answers) from ``server``:53, or None when nothing answered."""
    question = DNSRecord.question(name, qtype)
    try:
        raw = question.send(server, 53, tcp=tcp, timeout=timeout, ipv6=":" in server)
        reply = DNSRecord.parse(raw)
    except Exception:  # timeout, refused, connection closed without an answer
        return None
    return RCODE[reply.header.rcode], sorted(str(rr.rdata) for rr in reply.rr if rr.rtype == getattr(QTYPE, qtype))


def poll_dns(
    ns: str, server: str, name: str, want: tuple[str, list[str]] | None, within: float = 1.0, since: float | None = None, qtype: str = "A"
) -> tuple[str, list[str]] | None:
    """Ask until the answer is ``want`` or ``within`` s (from ``since``) have passed; the last answer."""
    deadline = (since if since is not None else time.monotonic()) + within

    def ask() -> tuple[str, list[str]] | None:
        while True:
            got = dns_query(server, name, qtype, timeout=max(0.05, min(0.5, deadline - time.monotonic())))
            if got == want or time.monotonic() >= deadline:
                return got
            time.sleep(0.02)

    return in_netns(ns, ask)


# -- hosts with a chosen resolv.conf and a DNS upstream of our own -------------


class Upstream:
    """A DNS server in a namespace of its own, linked to host ``h`` (host .1, server .2)."""

    def __init__(self, h: Host, name: str, subnet: str, answer: str):
        self.ns: Namespace = h.add_outside(name, subnet)
        self.address = f"{subnet}.2"
        self.answer = answer
        self.log = os.path.join(h.root, f"upstream-{name}.log")
        open(self.log, "w").close()
        self.proc = self.ns.popen(PY, "-c", UPSTREAM, answer, self.log, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = in_netns(h.path, lambda: any(dns_query(self.address, "ready.example.test", timeout=0.2) for _ in range(50)))
            assert ready, f"upstream {name} did not answer"
        except BaseException:
            self.stop()
            raise

    def asked(self) -> list[str]:
        with open(self.log) as f:
            return f.read().split()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def user_host(name: str, upstreams: list[tuple[str, str, str]]) -> tuple[Host, list[Upstream], str]:
    """A host whose qiaod reads its own resolv.conf (first upstream), with upstream DNS servers
    ``(name, subnet, answer)``.  The caller cleans up with :func:`drop_host`."""
    h = Host(name, start=False)
    ups: list[Upstream] = []
    try:
        for up in upstreams:
            ups.append(Upstream(h, *up))
        resolv = os.path.join(h.root, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(f"nameserver {ups[0].address}\n" if ups else "")
        h.start_daemon(args=("--resolv-conf", resolv))
    except BaseException:
        drop_host(h, ups)
        raise
    return h, ups, resolv


def drop_host(h: Host, ups: list[Upstream]) -> None:
    for up in ups:
        up.stop()
    h.cleanup()


def clean(h: Host) -> None:
    """Remove every container and user network of ``h`` (a test's leftovers, also after a failure)."""
    if h.daemon is None or h.daemon.poll() is not None:
        return  # no qiaod: a qiao command would start one we do not own (Host.cleanup kills leftovers)
    h.remove_containers()
    for line in h.qiao("network", "ls", "--format", "json", check=False).stdout.splitlines():
        name = json.loads(line)["Name"]
        if name not in ("bridge", "host", "none"):
            h.qiao("network", "rm", name, check=False)


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode != 0, f"accepted: {r.args}"
    assert r.stdout == "", r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"{r.args}: not one line:\n{r.stderr}"
    for word in words:
        assert word in lines[0], f"{r.args}: {word!r} not in {lines[0]!r}"


def serve(h: Host, name: str, *opts: str) -> str:
    return h.run_d("--name", name, *opts, "--", PY, "-c", SERVER)


def addresses(h: Host, name: str) -> dict[str, tuple[str, str]]:
    """network name -> (IPv4, IPv6) of a container."""
    nets = h.inspect(name)["NetworkSettings"]["Networks"]
    return {net: (v["IPAddress"], v["GlobalIPv6Address"]) for net, v in nets.items()}


def ip_json(h: Host, name: str, *args: str) -> Any:
    return json.loads(h.exec(name, "ip", "-j", *args).stdout)


def default_routes(h: Host, name: str) -> list[tuple[str, str]]:
    routes = ip_json(h, name, "route") + ip_json(h, name, "-6", "route")
    return [(r.get("gateway", ""), r.get("dev", "")) for r in routes if r["dst"] == "default"]


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Host]:
    """One host for this module (an upstream answering NXDOMAIN at once, so a failed lookup is quick)."""
    h, ups, _resolv = user_host("un" + secrets.token_hex(1), [("up", "198.51.100", "100.64.0.1")])
    try:
        yield h
    finally:
        drop_host(h, ups)


@pytest.fixture
def h(lab: Host) -> Iterator[Host]:
    try:
        yield lab
    finally:
        clean(lab)


# -- 1. isolation -----------------------------------------------------------------


def test_isolation_matrix(make_host) -> None:
    """Every protocol (TCP, UDP, ICMP), both families, both directions: networks are
    islands unless a container is on both; the host routes between none of them;
    --internal has no way off its network; icc=false isolates containers of one
    network from each other while its published ports still work through the host."""
    h = make_host("iso")
    out = h.add_outside()  # 198.51.100.1 (host) <-> 198.51.100.2 (outside)
    hostside, outside = f"{RUN}outh", f"{RUN}outo"  # conftest's names for the link of add_outside("out")
    h.sh("ip", "-6", "addr", "add", "fd00:5e::1/64", "dev", hostside, "nodad")
    out.sh("ip", "-6", "addr", "add", "fd00:5e::2/64", "dev", outside, "nodad")
    # The outside can route to the internal network: only the firewall can stop that traffic.
    out.sh("ip", "route", "add", "10.61.3.0/24", "via", "198.51.100.1")
    out.sh("ip", "-6", "route", "add", "fd00:61:3::/64", "via", "fd00:5e::1")
    server = out.popen(PY, "-c", SERVER)
    try:
        nets = {"a": 1, "b": 2, "int": 3, "noicc": 4}
        extra = {"int": ["--internal"], "noicc": ["-o", "com.docker.network.bridge.enable_icc=false"]}
        for net, n in nets.items():
            h.qiao("network", "create", "--ipv6", "--subnet", f"10.61.{n}.0/24", "--subnet", f"fd00:61:{n}::/64", *extra.get(net, []), net)
        serve(h, "a1", "--network", "a")
        serve(h, "a2", "--network", "a")
        serve(h, "b1", "--network", "b")
        serve(h, "ab", "--network", "a", "--network", "b")
        serve(h, "i1", "--network", "int", "--cap-add", "NET_ADMIN")  # may change its own routes (below)
        serve(h, "i2", "--network", "int")
        serve(h, "n1", "--network", "noicc")
        serve(h, "n2", "--network", "noicc", "-p", "8000:7000", "-p", "8001:7001/udp")
        names = ["a1", "a2", "b1", "ab", "i1", "i2", "n1", "n2"]
        addr = {name: addresses(h, name) for name in names}
        ns = {name: netns_of(h, name) for name in names}
        ns["outside"] = out.path

        # Every server answers the host (its own bridges: no forwarding involved).
        ready = in_parallel(
            [(h.path, probe, (kind, addr[n][net][fam])) for n in names for net in addr[n] for fam in (0, 1) for kind in ("tcp", "udp")]
        )
        assert all(ready), "a container's server did not come up"

        # --internal: no default route, no masquerade, -p refused.
        assert default_routes(h, "i1") == []
        ruleset = h.sh("nft", "list", "table", "inet", "qiao").stdout
        assert "ip saddr 10.61.1.0/24 masquerade" in ruleset and "ip6 saddr fd00:61:1::/64 masquerade" in ruleset
        assert "ip saddr 10.61.3.0/24 masquerade" not in ruleset and "fd00:61:3::/64 masquerade" not in ruleset
        before = h.qiao("ps", "-aq").stdout
        one_line_error(h.qiao("run", "-d", "--network", "int", "-p", "8080:7000", "--", "sleep", "30", check=False), "internal")
        assert h.qiao("ps", "-aq").stdout == before
        # Even with a route added by hand, the host forwards nothing off the internal network.
        h.exec("i1", "ip", "route", "add", "default", "via", "10.61.3.1")
        h.exec("i1", "ip", "-6", "route", "add", "default", "via", "fd00:61:3::1")

        out4, out6 = ("198.51.100.2", "fd00:5e::2")
        cases: list[tuple[str, str, str, str | bool]] = []  # (source, what, address, expected answer / True / False)

        def pair(src: str, dst: str, net: str, expect: bool) -> None:
            for fam in (0, 1):
                cases.append((src, f"{dst}@{net}", addr[dst][net][fam], expect))

        # Same network, or sharing one: reachable.
        pair("a1", "a2", "a", True)
        pair("a2", "a1", "a", True)
        pair("ab", "a1", "a", True)
        pair("ab", "b1", "b", True)
        pair("a1", "ab", "a", True)
        pair("b1", "ab", "b", True)
        pair("i1", "i2", "int", True)
        pair("i2", "i1", "int", True)
        # Different networks: never, either way, through the host as a router.
        pair("a1", "b1", "b", False)
        pair("b1", "a1", "a", False)
        pair("a1", "ab", "b", False)  # the other leg of a two-network container
        pair("b1", "ab", "a", False)
        pair("a1", "i1", "int", False)
        pair("i1", "a1", "a", False)
        pair("b1", "i1", "int", False)
        pair("i1", "b1", "b", False)
        pair("a1", "n1", "noicc", False)
        pair("n1", "a1", "a", False)
        # icc=false: not even within the network.
        pair("n1", "n2", "noicc", False)
        pair("n2", "n1", "noicc", False)
        # Off the network: a normal one masquerades to the host's address, an internal one cannot leave.
        cases += [("a1", "outside", out4, "198.51.100.1"), ("a1", "outside", out6, "fd00:5e::1")]
        cases += [("i1", "outside", out4, False), ("i1", "outside", out6, False)]
        cases += [("outside", "i1@int", addr["i1"]["int"][0], False), ("outside", "i1@int", addr["i1"]["int"][1], False)]

        calls, rows = [], []
        for src, what, address, expect in cases:
            for kind in ("tcp", "udp", "icmp"):
                calls.append((ns[src], probe, (kind, address, 0, expect is not False)))
                rows.append((src, what, address, kind, expect))
        # Published ports of an icc=false network work through the host (from a neighbour: see the next test).
        for kind, port in (("tcp", 8000), ("udp", 8001)):
            calls.append((ns["outside"], probe, (kind, "198.51.100.1", port)))
            rows.append(("outside", "n2 published", f"198.51.100.1:{port}", kind, "198.51.100.2"))

        results = in_parallel(calls)
        wrong = []
        for (src, what, address, kind, expect), got in zip(rows, results, strict=True):
            ok = got is None if expect is False else got is not None and (expect is True or kind == "icmp" or got == expect)
            if not ok:
                wrong.append(f"{src} -> {what} ({address}) {kind}: expected {expect}, got {got!r}")
        assert not wrong, f"{len(wrong)} of {len(rows)} probes wrong:\n" + "\n".join(wrong)
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("nf_call", ["0", "1"], ids=["bridge-nf-call-iptables=0", "bridge-nf-call-iptables=1"])
def test_icc_false_published_port_works_for_a_neighbour_through_the_host(h: Host, nf_call: str) -> None:
    """With icc=false a container still reaches a neighbour's published port through the
    host (Docker: through docker-proxy), while the neighbour's own address stays closed;
    with or without br_netfilter passing bridged frames to the inet hooks (a per-namespace
    knob when the module is loaded, as on most Docker and Kubernetes hosts)."""
    knob = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    had = h.sh("cat", knob, check=False)
    if had.returncode != 0 and nf_call == "1":
        pytest.skip("br_netfilter is not loaded on this machine")
    if had.returncode == 0:
        h.sh("sh", "-c", f"echo {nf_call} > {knob}")
    try:
        _icc_false_published_port(h)
    finally:
        if had.returncode == 0:
            h.sh("sh", "-c", f"echo {had.stdout.strip()} > {knob}")


def _icc_false_published_port(h: Host) -> None:
    h.qiao("network", "create", "--subnet", "10.62.8.0/24", "-o", "com.docker.network.bridge.enable_icc=false", "noicc")
    serve(h, "n1", "--network", "noicc")
    serve(h, "n2", "--network", "noicc", "-p", "8000:7000", "-p", "8001:7001/udp")
    n2 = addresses(h, "n2")["noicc"][0]
    assert all(in_parallel([(h.path, probe, (kind, n2)) for kind in ("tcp", "udp")])), "n2's server did not come up"
    n1 = netns_of(h, "n1")
    got = in_parallel([(n1, probe, (kind, "10.62.8.1", port)) for kind, port in (("tcp", 8000), ("udp", 8001))])
    got += in_parallel([(n1, probe, (kind, n2, 0, False)) for kind in ("tcp", "udp", "icmp")])
    assert got[2:] == [None, None, None], "icc=false: a neighbour's own address must stay closed"
    assert None not in got[:2], f"published port through the host (tcp, udp): {got[:2]}"


# -- 4. connect / disconnect, several networks, static addresses ------------------------


def test_connect_and_disconnect_a_running_container(h: Host) -> None:
    h.qiao("network", "create", "--subnet", "10.62.1.0/24", "front")
    h.qiao("network", "create", "--subnet", "10.62.2.0/24", "back")
    h.run_d("--name", "app", "--network", "front", "--", "sleep", "300")
    h.run_d("--name", "peer", "--network", "back", "--", "sleep", "300")
    pid = h.inspect("app")["State"]["Pid"]
    hostname = h.inspect("app")["Config"]["Hostname"]
    peer_ns = netns_of(h, "peer")
    assert {link["ifname"] for link in ip_json(h, "app", "link")} == {"lo", "eth0"}

    h.qiao("network", "connect", "--ip", "10.62.2.50", "--alias", "api", "back", "app")
    since = time.monotonic()
    eth1 = [a for link in ip_json(h, "app", "addr", "show", "eth1") for a in link["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"]) for a in eth1] == [("10.62.2.50", 24)]
    assert default_routes(h, "app") == [("10.62.2.1", "eth1")]  # as Docker: "back" sorts before "front"
    assert f"10.62.2.50\t{hostname}\n" in h.exec("app", "cat", "/etc/hosts").stdout
    for name in ("app", "api"):
        assert poll_dns(peer_ns, "10.62.2.1", name, ("NOERROR", ["10.62.2.50"]), since=since) == ("NOERROR", ["10.62.2.50"])
    assert h.exec("peer", "getent", "hosts", "api").stdout.split()[0] == "10.62.2.50"
    back = h.inspect("app")["NetworkSettings"]["Networks"]["back"]
    assert (back["IPAddress"], back["Aliases"], back["Gateway"]) == ("10.62.2.50", ["api"], "10.62.2.1")
    assert h.inspect("app")["NetworkSettings"]["Networks"]["front"]["Gateway"] == "10.62.1.1"  # each network's own, as dockerd
    assert back["IPAMConfig"] == {"IPv4Address": "10.62.2.50"}
    assert in_netns(peer_ns, icmp_once, "10.62.2.50", 0, 2.0) == "pong"

    h.qiao("network", "disconnect", "back", "app")
    since = time.monotonic()
    assert {link["ifname"] for link in ip_json(h, "app", "link")} == {"lo", "eth0"}
    assert default_routes(h, "app") == [("10.62.1.1", "eth0")]  # back to the network left
    assert "10.62.2.50" not in h.exec("app", "cat", "/etc/hosts").stdout
    for name in ("app", "api"):
        assert poll_dns(peer_ns, "10.62.2.1", name, ("NXDOMAIN", []), since=since) == ("NXDOMAIN", [])
    assert list(h.inspect("app")["NetworkSettings"]["Networks"]) == ["front"]
    assert h.inspect("app")["State"]["Pid"] == pid  # never restarted

    # Connecting a network that sorts later keeps the route; disconnecting the route's network moves it.
    h.qiao("network", "create", "--subnet", "10.62.9.0/24", "zulu")
    h.qiao("network", "connect", "zulu", "app")
    assert default_routes(h, "app") == [("10.62.1.1", "eth0")]
    h.qiao("network", "connect", "back", "app")
    assert default_routes(h, "app") == [("10.62.2.1", "eth2")]
    h.qiao("network", "disconnect", "front", "app")
    assert default_routes(h, "app") == [("10.62.2.1", "eth2")]
    h.qiao("network", "disconnect", "back", "app")
    assert default_routes(h, "app") == [("10.62.9.1", "eth1")]
    h.qiao("network", "connect", "back", "app")
    assert h.inspect("app")["NetworkSettings"]["Networks"]["back"]["Gateway"] == "10.62.2.1"
    assert in_netns(peer_ns, icmp_once, h.inspect("app")["NetworkSettings"]["Networks"]["back"]["IPAddress"], 0, 2.0) == "pong"


def test_run_on_two_networks_with_static_ip_ip6_and_mac(h: Host) -> None:
    h.qiao("network", "create", "--ipv6", "--subnet", "10.62.3.0/24", "--subnet", "fd00:62:3::/64", "one")
    h.qiao("network", "create", "--subnet", "10.62.4.0/24", "two")
    h.run_d(
        "--name", "multi", "--network", "one", "--network", "two",
        "--ip", "10.62.3.77", "--ip6", "fd00:62:3::77", "--mac-address", "02:00:00:AA:BB:CC", "--", "sleep", "300",
    )  # fmt: skip
    nets = h.inspect("multi")["NetworkSettings"]["Networks"]
    assert list(nets) == ["one", "two"]
    one, two = nets["one"], nets["two"]
    assert (one["IPAddress"], one["GlobalIPv6Address"], one["MacAddress"]) == ("10.62.3.77", "fd00:62:3::77", "02:00:00:aa:bb:cc")
    assert (one["Gateway"], one["IPv6Gateway"]) == ("10.62.3.1", "fd00:62:3::1")
    assert (two["IPAddress"], two["Gateway"]) == ("10.62.4.2", "10.62.4.1")  # each network's own gateway, as dockerd
    links = {link["ifname"]: link for link in ip_json(h, "multi", "addr")}
    assert links["eth0"]["address"] == "02:00:00:aa:bb:cc"
    assert {(a["local"], a["prefixlen"]) for a in links["eth0"]["addr_info"] if a.get("scope") == "global"} == {
        ("10.62.3.77", 24),
        ("fd00:62:3::77", 64),
    }
    assert [(a["local"], a["prefixlen"]) for a in links["eth1"]["addr_info"] if a["family"] == "inet"] == [("10.62.4.2", 24)]
    assert sorted(default_routes(h, "multi")) == [("10.62.3.1", "eth0"), ("fd00:62:3::1", "eth0")]
    # Both networks reach it.
    h.run_d("--name", "onepeer", "--network", "one", "--", "sleep", "300")
    h.run_d("--name", "twopeer", "--network", "two", "--", "sleep", "300")
    got = in_parallel(
        [
            (netns_of(h, "onepeer"), icmp_once, ("10.62.3.77", 0, 2.0)),
            (netns_of(h, "onepeer"), icmp_once, ("fd00:62:3::77", 0, 2.0)),
            (netns_of(h, "twopeer"), icmp_once, ("10.62.4.2", 0, 2.0)),
        ]
    )
    assert got == ["pong"] * 3


# -- 5. IPv6 ------------------------------------------------------------------------------


def test_ipv6_dual_stack_address_route_dns_and_inspect(h: Host) -> None:
    net_id = h.qiao("network", "create", "--ipv6", "--subnet", "10.62.5.0/24", "--subnet", "fd00:62:5::/64", "six").stdout.strip()
    cid = h.run_d("--name", "v6a", "--network", "six", "--", "sleep", "300")
    h.run_d("--name", "v6b", "--network", "six", "--", "sleep", "300")
    settings = h.inspect("v6a")["NetworkSettings"]
    six = settings["Networks"]["six"]
    addr6 = six["GlobalIPv6Address"]
    assert ipaddress.ip_address(addr6) in ipaddress.ip_network("fd00:62:5::/64")
    assert (six["GlobalIPv6PrefixLen"], six["IPv6Gateway"]) == (64, "fd00:62:5::1")
    # Docker copies only the default bridge's values to the deprecated top-level fields
    assert (settings["GlobalIPv6Address"], settings["GlobalIPv6PrefixLen"], settings["IPv6Gateway"]) == ("", 0, "")
    net = json.loads(h.qiao("network", "inspect", "six").stdout)[0]
    assert net["Id"] == net_id and net["EnableIPv6"] is True
    assert net["IPAM"]["Config"] == [
        {"Subnet": "10.62.5.0/24", "Gateway": "10.62.5.1"},
        {"Subnet": "fd00:62:5::/64", "Gateway": "fd00:62:5::1"},
    ]
    assert net["Containers"][cid]["IPv6Address"] == f"{addr6}/64"
    assert net["Containers"][cid]["IPv4Address"] == f"{six['IPAddress']}/24"

    eth0 = ip_json(h, "v6a", "-6", "addr", "show", "eth0")[0]
    assert (addr6, 64) in {(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["scope"] == "global"}
    assert ("fd00:62:5::1", "eth0") in default_routes(h, "v6a")
    b_ns = netns_of(h, "v6b")
    # DNS: AAAA and A, over the v4 and the v6 gateway address.
    for server in ("10.62.5.1", "fd00:62:5::1"):
        assert in_netns(b_ns, dns_query, server, "v6a", "AAAA") == ("NOERROR", [addr6])
        assert in_netns(b_ns, dns_query, server, "v6a", "A") == ("NOERROR", [six["IPAddress"]])
    assert h.exec("v6b", "getent", "ahostsv6", "v6a").stdout.split()[0] == addr6
    assert in_netns(b_ns, icmp_once, addr6, 0, 2.0) == "pong"


# -- 3. --link on the default bridge ------------------------------------------------------


def _environ(h: Host, name: str) -> dict[str, str]:
    with open(f"/proc/{h.inspect(name)['State']['Pid']}/environ", "rb") as f:
        return dict(item.decode().partition("=")[::2] for item in f.read().split(b"\0") if item)


def test_link_hosts_line_env_and_refusals(h: Host) -> None:
    exposed = ("--expose", "9000", "--expose", "8080", "--expose", "53/udp")
    h.run_d("--name", "web", "-e", "FOO=bar", "-e", "EMPTY=", *exposed, "--", "sleep", "300")
    web = h.inspect("web")
    ip, hostname = web["NetworkSettings"]["IPAddress"], web["Config"]["Hostname"]
    h.run_d("--name", "cli", "--link", "web:db", "--link", "web", "--", "sleep", "300")

    hosts = h.exec("cli", "cat", "/etc/hosts").stdout.splitlines()
    assert f"{ip}\tdb {hostname} web" in hosts
    assert f"{ip}\tweb {hostname}" in hosts  # NAME left out when it equals ALIAS
    assert h.exec("cli", "getent", "hosts", "db").stdout.split()[0] == ip
    assert h.inspect("cli")["HostConfig"]["Links"] == ["/web:/cli/db", "/web:/cli/web"]

    env = _environ(h, "cli")
    want = {
        "DB_NAME": "/cli/db",
        "DB_PORT": f"tcp://{ip}:8080",
        "DB_PORT_8080_TCP": f"tcp://{ip}:8080",
        "DB_PORT_8080_TCP_ADDR": ip,
        "DB_PORT_8080_TCP_PORT": "8080",
        "DB_PORT_8080_TCP_PROTO": "tcp",
        "DB_PORT_9000_TCP": f"tcp://{ip}:9000",
        "DB_PORT_9000_TCP_ADDR": ip,
        "DB_PORT_9000_TCP_PORT": "9000",
        "DB_PORT_9000_TCP_PROTO": "tcp",
        "DB_PORT_53_UDP": f"udp://{ip}:53",
        "DB_PORT_53_UDP_ADDR": ip,
        "DB_PORT_53_UDP_PORT": "53",
        "DB_PORT_53_UDP_PROTO": "udp",
        "DB_ENV_FOO": "bar",
        "DB_ENV_EMPTY": "",
        "WEB_NAME": "/cli/web",
        "WEB_PORT": f"tcp://{ip}:8080",
    }
    assert {k: env.get(k) for k in want} == want
    assert "DB_ENV_PATH" not in env and "DB_ENV_HOME" not in env
    # qiao exec sees them too, as docker exec does.
    assert h.exec("cli", "printenv", "DB_PORT_8080_TCP_ADDR", "WEB_NAME").stdout.split() == [ip, "/cli/web"]

    # Refused: a missing target, a stopped one, and removing a target while its linker runs.
    before = h.qiao("ps", "-aq").stdout
    one_line_error(h.qiao("run", "-d", "--link", "nosuch:x", "--", "sleep", "30", check=False), "nosuch")
    h.qiao("run", "--name", "gone", "--", "true")
    one_line_error(h.qiao("run", "-d", "--link", "gone:x", "--", "sleep", "30", check=False), "non running", "gone")
    assert sorted(h.qiao("ps", "-aq").stdout.split()) == sorted([*before.split(), h.inspect("gone")["Id"][:12]])
    one_line_error(h.qiao("rm", "web", check=False), "cli")
    h.qiao("stop", "-t", "1", "web")
    one_line_error(h.qiao("rm", "web", check=False), "cli", "link")
    assert h.inspect("web")["State"]["Status"] == "exited"
    h.qiao("rm", "-f", "web")
    assert h.qiao("inspect", "web", check=False).returncode != 0


# -- 6. bad input: one clear line, nothing changed ---------------------------------------


def _state(h: Host) -> dict[str, Any]:
    ctrs = {}
    for cid in h.qiao("ps", "-aq").stdout.split():
        info = h.inspect(cid)
        endpoints = info["NetworkSettings"]["Networks"].items()
        nets = {n: (v["IPAddress"], v.get("GlobalIPv6Address"), v["MacAddress"], v.get("Aliases")) for n, v in endpoints}
        links = ""
        if info["State"]["Running"]:
            links = " ".join(sorted(line.split(": ")[1].split("@")[0] for line in h.exec(cid, "ip", "-o", "link").stdout.splitlines()))
        ctrs[info["Name"]] = (info["State"]["Status"], info["State"]["Pid"], nets, links)
    names = [json.loads(line)["Name"] for line in h.qiao("network", "ls", "--format", "json").stdout.splitlines()]
    return {
        "containers": ctrs,
        "networks": {n["Name"]: n["Containers"] for n in json.loads(h.qiao("network", "inspect", *names).stdout)},
        "links": sorted(line.split(": ")[1].split("@")[0] for line in h.sh("ip", "-o", "link").stdout.splitlines()),
        "nft": h.sh("nft", "list", "ruleset").stdout,
    }


def test_bad_input_is_one_line_and_changes_nothing(h: Host) -> None:
    h.qiao("network", "create", "--subnet", "10.62.6.0/24", "left")
    h.qiao("network", "create", "--subnet", "10.62.7.0/24", "right")
    h.run_d("--name", "c1", "--network", "left", "--", "sleep", "300")
    h.run_d("--name", "c2", "--network", "right", "--", "sleep", "300")
    h.run_d("--name", "pub", "--network", "left", "-p", "8080:80", "--", "sleep", "300")
    h.qiao("run", "--name", "stopped", "--", "true")
    c1_ip = addresses(h, "c1")["left"][0]
    c2_ip = addresses(h, "c2")["right"][0]
    sleep = ("--", "sleep", "300")
    bad = [
        (("run", "-d", "--network", "nosuch", *sleep), ["nosuch", "not found"]),
        (("network", "connect", "nosuch", "c1"), ["nosuch", "not found"]),
        (("network", "disconnect", "nosuch", "c1"), ["nosuch", "not found"]),
        (("network", "connect", "left", "c1"), ["already"]),
        (("network", "disconnect", "right", "c1"), ["not connected"]),
        (("network", "disconnect", "left", "pub"), ["pub", "publishes"]),
        (("run", "-d", "--network", "left", "--network-alias", "bad_alias!", *sleep), ["bad_alias!", "DNS name"]),
        (("network", "connect", "--alias", "bad_alias!", "right", "c1"), ["bad_alias!", "DNS name"]),
        (("run", "-d", "--network", "left", "--ip", "10.62.99.5", *sleep), ["10.62.99.5", "subnet"]),
        (("network", "connect", "--ip", "10.62.99.5", "right", "c1"), ["10.62.99.5", "subnet"]),
        (("run", "-d", "--network", "left", "--ip", c1_ip, *sleep), [c1_ip, "in use"]),
        (("network", "connect", "--ip", c2_ip, "right", "c1"), [c2_ip, "in use"]),
        (("run", "-d", "--network", "left", "--ip", "10.62.6.1", *sleep), ["10.62.6.1"]),  # the gateway
        (("run", "-d", "--ip", "172.17.0.77", *sleep), ["user-defined"]),  # static addresses: user networks only
        (("run", "-d", "--network", "left", "--ip6", "fd00:62:6::5", *sleep), ["IPv6"]),  # no IPv6 subnet
        (("run", "-d", "--network", "left", "--mac-address", "02:42:zz:00:00:01", *sleep), ["MAC"]),
        (("run", "-d", "--link", "stopped:db", *sleep), ["stopped", "non running"]),
        (("run", "-d", "--network", "left", "--link", "c1:db", *sleep), ["--link"]),
    ]
    before = _state(h)
    for args, words in bad:
        one_line_error(h.qiao(*args, check=False), *words)
    assert _state(h) == before
    # And what was refused works once the input is right.
    h.qiao("network", "connect", "--ip", "10.62.7.99", "--alias", "good-alias", "right", "c1")
    assert addresses(h, "c1") == {"left": (c1_ip, ""), "right": ("10.62.7.99", "")}


# Nothing here may leak between tests: the module host is cleaned after each.
def test_module_host_is_clean_between_tests(h: Host) -> None:
    assert h.qiao("ps", "-aq").stdout == ""
    names = {json.loads(line)["Name"] for line in h.qiao("network", "ls", "--format", "json").stdout.splitlines()}
    assert names == {"bridge", "host", "none"}
    with contextlib.suppress(FileNotFoundError):
        assert os.listdir(os.path.join(h.root, "run", "netns")) == []
