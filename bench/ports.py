"""bench/ports: published ports at scale, in one run.

qiao's nftables maps side by side with the CNI ``portmap`` plugin (iptables
chains) and Docker's ``docker-proxy`` (a userland proxy process per mapping):

* with 1, 1 000 and 10 000 mappings active: the time to add one mapping
  (qiao: ``qiao run -d -p P:80`` end to end, the same through the API, and
  ``NftFirewall.add_ports`` alone; CNI: the ``portmap`` ADD; Docker: one
  docker-proxy start) and the latency of a TCP connect plus a short HTTP
  request from a client namespace through the newest mapping;
* iperf3 throughput (3 x 10 s, ``--quick`` 3 x 3 s): client -> host:port ->
  container and 127.0.0.1:port -> container against direct container-IP
  throughput, and the same through docker-proxy.

Everything happens in namespaces this script creates and removes at the end,
also on failure or Ctrl-C: per size a qiao host with its own qiaod and a CNI
host, and one client with a veth link to each (/28s of 198.51.100.0/24 and
203.0.113.0/24).  The sizes' repetitions are interleaved round-robin, so load
from elsewhere hits every size alike.  Only processes it started are ended,
by PID.  Traffic goes only to those
namespaces.  Root only.  Results: a table on stdout, JSON in
bench/results/ports.json.  See bench/README.md.

    .venv/bin/python -m bench.ports [--sizes 1,1000,10000] [--reps 30] [--lat-reps 200] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import platform
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import common

RUN = "qp" + secrets.token_hex(2)  # prefix of every object made here (interface names: <= 15 bytes)
BIN = Path(sys.executable).parent
QIAO = str(BIN / "qiao")
QIAOD = str(BIN / "qiaod")
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "ports.json"
CNI_DIR = "/usr/lib/cni"
DOCKER_PROXY_PATHS = [
    "/usr/local/lib/qiao-bench/docker-proxy",
    "/usr/sbin/docker-proxy",
    "/usr/bin/docker-proxy",
    "/usr/libexec/docker/docker-proxy",
]

QIAO_NET = "198.51.100"  # client <-> qiao host (host .1, client .2)
CNI_NET = "203.0.113"  # client <-> CNI host
CNI_SUBNET = "10.222.0.0/16"  # the CNI bridge, inside the CNI host namespace only
CNI_FILL_BASE = ipaddress.IPv4Address("10.222.16.0")  # addresses of the pre-populated CNI "containers"

# Host ports (qiao host and CNI host): fill FILL_BASE.., added mappings REP_BASE.., proxies PROXY_BASE..
FILL_BASE, REP_BASE, PROXY_BASE, PROBE_PORT = 20000, 10000, 45000, 65000
IPERF_PORT, IPERF_PROXY_PORT = 5201, 5202
TARGET_SCALE, TARGET_DNAT, TARGET_LOCAL = 1.3, 0.95, 0.90

# The container's server: one short HTTP/1.0 answer per connection.
SERVER = r"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen(512)
reply = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
while True:
    c, _ = s.accept()
    try:
        c.recv(4096)
        c.sendall(reply)
    except OSError:
        pass
    finally:
        c.close()
"""

# The client: wait until the mapping answers, warm up, then time connect + request + reply.
CLIENT = r"""
import json, socket, sys, time
host, port, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
req = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n"
def once():
    s = socket.create_connection((host, port), timeout=5)
    try:
        s.sendall(req)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    if not data.endswith(b"ok"):
        raise RuntimeError("unexpected reply %r" % data[:80])
deadline = time.monotonic() + 20
while True:
    try:
        once()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.02)
for _ in range(10):
    once()
out = []
for _ in range(reps):
    t = time.perf_counter_ns()
    once()
    out.append((time.perf_counter_ns() - t) / 1e6)
print(json.dumps(out))
"""


def log(msg: str) -> None:
    print(f"[bench.ports {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ns_path(ns: str) -> str:
    return f"/run/netns/{ns}"


def nsrun(ns: str, *args: str, check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return common.run(["nsenter", f"--net={ns_path(ns)}", "--", *args], check=check, timeout=timeout, **kw)


# -- the lab: everything made here, and its removal ---------------------------


class Lab:
    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.dirs: list[str] = []
        self.hosts: list[QiaoHost] = []

    def netns(self, suffix: str) -> str:
        name = f"{RUN}-{suffix}"
        common.run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        nsrun(name, "ip", "link", "set", "lo", "up")
        return name

    def tmpdir(self, prefix: str) -> str:
        d = tempfile.mkdtemp(prefix=f"{RUN}-{prefix}")
        self.dirs.append(d)
        return d

    def link(self, a: str, b: str, a_cidr: str, b_cidr: str, tag: str) -> None:
        """veth between namespaces a (a_cidr) and b (b_cidr)."""
        ia, ib = f"{RUN}{tag}a", f"{RUN}{tag}b"
        common.run(["ip", "link", "add", ia, "netns", a, "type", "veth", "peer", "name", ib, "netns", b])
        for ns, dev, cidr in ((a, ia, a_cidr), (b, ib, b_cidr)):
            nsrun(ns, "ip", "addr", "add", cidr, "dev", dev)
            nsrun(ns, "ip", "link", "set", dev, "up")

    def spawn(self, ns: str, *args: str, **kw: Any) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(["nsenter", f"--net={ns_path(ns)}", "--", *args], start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()  # by PID: nsenter exec()s the command, so this is the command itself
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def cleanup(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.cleanup()
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)
        for ns in reversed(self.namespaces):
            common.run(["ip", "netns", "del", ns], check=False)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


class QiaoHost:
    """A throw-away host namespace with its own qiao root and qiaod."""

    def __init__(self, lab: Lab, ns: str):
        from qiao.cli.client import Client
        from qiao.paths import Root

        self.lab, self.ns = lab, ns
        self.root = lab.tmpdir("qiao-")
        self.log_path = os.path.join(self.root, "qiaod.bench.log")
        lab.hosts.append(self)
        with open(self.log_path, "ab") as logf:
            self.daemon = lab.spawn(ns, QIAOD, "--root", self.root, stdout=logf, stderr=logf)
        self.api = Client(Root.resolve(self.root), autostart=False)
        common.wait_for_qiaod(self.daemon, lambda: self.api.request("GET", "/info"), self.log_tail)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self.log_path).read_text(errors="replace")[-2000:]
        return ""

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        # Through nsenter: should the daemon be gone, a CLI auto-start happens in the throw-away namespace.
        return nsrun(self.ns, QIAO, "--root", self.root, *args, timeout=timeout)

    def inspect(self, cid: str) -> dict[str, Any]:
        return self.api.request("GET", f"/containers/{cid}/json")

    def ip_of(self, cid: str) -> str:
        return self.inspect(cid)["NetworkSettings"]["IPAddress"]

    def create_start(self, cmd: list[str], bindings: dict[str, str]) -> str:
        """What ``qiao run -d -p HOST:CTR`` sends, from this process (no CLI start-up)."""
        body = {
            "Cmd": cmd,
            "ExposedPorts": {},
            "HostConfig": {"NetworkMode": "bridge", "PortBindings": {k: [{"HostIp": "", "HostPort": v}] for k, v in bindings.items()}},
        }
        cid = self.api.request("POST", "/containers/create", {"name": None}, body)["Id"]
        self.api.request("POST", f"/containers/{cid}/start")
        return cid

    def rm(self, cid: str) -> None:
        self.api.request("DELETE", f"/containers/{cid}", {"force": 1})

    def cleanup(self) -> None:
        if self.daemon.poll() is None:
            with contextlib.suppress(Exception):
                for row in self.api.request("GET", "/containers/json", {"all": 1}):
                    with contextlib.suppress(Exception):
                        self.rm(row["Id"])
        common.stop(self.daemon, 20)
        common.kill_containers(self.root)
        netns_dir = os.path.join(self.root, "run", "netns")
        if os.path.isdir(netns_dir):
            for entry in os.listdir(netns_dir):
                common.run(["umount", "-l", os.path.join(netns_dir, entry)], check=False)


# -- measurements shared by the peers -------------------------------------


def latency(client_ns: str, host: str, port: int, reps: int) -> list[float]:
    out = nsrun(client_ns, sys.executable, "-c", CLIENT, host, str(port), str(reps), timeout=120 + reps)
    return json.loads(out.stdout)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter_ns()
    value = fn()
    return (time.perf_counter_ns() - t) / 1e6, value


def probe_nft(reps: int, ip: str, port: int) -> dict[str, Any]:
    """NftFirewall.add_ports / del_ports of one mapping, against a copy of the host's live map.

    The copy lives in a network namespace of this process's own: qiaod heals
    its table whenever another program changes it, so changing the live
    table from here would measure a fight with its healer."""
    import nftables

    from qiao.kernel import linux
    from qiao.kernel.firewall import TABLE, NftFirewall, PortMapping

    nft = nftables.Nftables()
    nft.set_json_output(True)
    rc, out, _err = nft.cmd(f"list map {TABLE} published_any")
    live = []
    if rc == 0 and out:
        for obj in json.loads(out).get("nftables", []):
            for key, value in obj.get("map", {}).get("elem", []):
                (proto, hport), (cip, cport) = key["concat"], value["concat"]
                live.append(PortMapping(proto, "0.0.0.0", int(hport), cip, int(cport)))
    elements = len(live)
    linux.unshare(linux.CLONE_NEWNET)  # single-threaded here: the whole process moves
    fw = NftFirewall()
    fw.reset([], live)
    add, dele = [], []
    m = PortMapping("tcp", "0.0.0.0", port, ip, 80)
    for i in range(reps + 3):
        ta, _ = timed(lambda: fw.add_ports([m]))
        td, _ = timed(lambda: fw.del_ports([m]))
        if i >= 3:  # warm-up
            add.append(ta)
            dele.append(td)
    return {"add": add, "del": dele, "elements": elements}


# -- qiao -------------------------------------------------------------------


class QiaoBench:
    """One qiao host holding N mappings; its adds, probes and latency runs are
    called round-robin with the other sizes' hosts (see ``bench``)."""

    def __init__(self, lab: Lab, client_ns: str, idx: int, n: int, args: argparse.Namespace):
        self.lab, self.client_ns, self.n, self.args = lab, client_ns, n, args
        ns = lab.netns(f"q{idx}")
        lab.link(ns, client_ns, f"{QIAO_NET}.{16 * idx + 1}/28", f"{QIAO_NET}.{16 * idx + 2}/28", f"q{idx}")
        self.addr, self.client_addr = f"{QIAO_NET}.{16 * idx + 1}", f"{QIAO_NET}.{16 * idx + 2}"
        self.host = QiaoHost(lab, ns)
        self.next_port = REP_BASE
        self.fills: list[dict[str, Any]] = []
        self.cli_ms: list[float] = []
        self.api_ms: list[float] = []
        self.nft_add: list[float] = []
        self.nft_del: list[float] = []
        self.lat: list[float] = []
        self.elements = 0
        self.newest, self.newest_port, self.newest_ip = "", 0, ""
        self.server = [sys.executable, "-c", SERVER]

    def fill(self) -> None:
        """N real mappings, as qiao makes them: one container publishing a range."""
        lo, hi = FILL_BASE, FILL_BASE + self.n - 1
        spec = f"{lo}:{lo}" if lo == hi else f"{lo}-{hi}:{lo}-{hi}"
        ms, _ = timed(lambda: self.host.cli("run", "-d", "-p", spec, "--", "sleep", "infinity"))
        self.fills.append({"size": self.n, "mappings": self.n, "spec": spec, "ms": ms})
        log(f"qiao: run -d -p {spec} ({self.n} mappings, one container): {ms:.0f} ms")

    def port(self) -> int:
        self.next_port += 1
        return self.next_port

    def add_once(self, record: bool) -> None:
        """One mapping added (and removed again, untimed): through the CLI, then through the API."""
        p = self.port()
        ms, proc = timed(lambda: self.host.cli("run", "-d", "-p", f"{p}:80", "--", *self.server))
        self.host.rm(proc.stdout.strip())
        p2 = self.port()
        ms2, cid = timed(lambda: self.host.create_start(["sleep", "infinity"], {"80/tcp": str(p2)}))
        self.host.rm(cid)
        if record:
            self.cli_ms.append(ms)
            self.api_ms.append(ms2)

    def start_newest(self) -> None:
        self.newest_port = self.port()
        self.newest = self.host.cli("run", "-d", "-p", f"{self.newest_port}:80", "--", *self.server).stdout.strip()
        self.newest_ip = self.host.ip_of(self.newest)

    def probe(self, reps: int) -> None:
        out = nsrun(
            self.host.ns, sys.executable, "-m", "bench.ports", "--probe-nft", "--reps", str(reps), "--probe-ip", self.newest_ip, cwd=REPO
        )
        data = json.loads(out.stdout)
        self.nft_add += data["add"]
        self.nft_del += data["del"]
        self.elements = data["elements"]

    def latency(self, reps: int) -> None:
        self.lat += latency(self.client_ns, self.addr, self.newest_port, reps)

    def result(self) -> dict[str, Any]:
        pid = self.host.daemon.pid
        return {
            "mappings_active": self.n,
            "map_elements": self.elements,
            "add_cli_ms": common.stats(self.cli_ms),
            "add_api_ms": common.stats(self.api_ms),
            "add_nft_ms": common.stats(self.nft_add),
            "del_nft_ms": common.stats(self.nft_del),
            "latency_ms": common.stats(self.lat),
            "qiaod_rss_kib": common.rss_kib(pid)[0],
            "qiaod_fds": len(os.listdir(f"/proc/{pid}/fd")),
            "newest": {"id": self.newest, "ip": self.newest_ip, "port": self.newest_port},
            "raw": {"add_cli_ms": self.cli_ms, "add_api_ms": self.api_ms, "add_nft_ms": self.nft_add, "latency_ms": self.lat},
        }


# -- Docker's docker-proxy -----------------------------------------------------


def find_docker_proxy() -> str | None:
    for path in [shutil.which("docker-proxy") or "", *DOCKER_PROXY_PATHS]:
        if path and os.access(path, os.X_OK):
            return path
    return None


class ProxyBench:
    """docker-proxy processes as dockerd starts them (one per published port), without dockerd."""

    def __init__(self, lab: Lab, binary: str, args: argparse.Namespace):
        self.lab, self.binary, self.args = lab, binary, args
        self.start_ms: list[float] = []

    def start(self, ns: str, port: int, ip: str, cport: int) -> subprocess.Popen:
        """dockerd's way: -proto/-host-ip/-host-port/-container-ip/-container-port; readiness on fd 3."""
        r, w = os.pipe()
        t = time.perf_counter_ns()
        args = ["-proto", "tcp", "-host-ip", "0.0.0.0", "-host-port", str(port), "-container-ip", ip, "-container-port", str(cport)]
        proc = self.lab.spawn(ns, "sh", "-c", f'exec "$@" 3>&{w} {w}>&-', "sh", self.binary, *args, pass_fds=(w,))
        os.close(w)
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(r, 4096)
            data += chunk
            if not chunk or b"\n" in data:
                break
        os.close(r)
        self.start_ms.append((time.perf_counter_ns() - t) / 1e6)
        if not data.startswith(b"0"):
            raise RuntimeError(f"docker-proxy on :{port} did not start: {data.decode(errors='replace').strip()!r}")
        return proc

    def measure(self, qb: QiaoBench) -> dict[str, Any]:
        """N proxies (1 above --proxy-max) on qb's host, all to its newest container; start time, memory, latency."""
        count = qb.n if qb.n <= self.args.proxy_max else 1
        first = len(self.start_ms)
        procs = [self.start(qb.host.ns, PROXY_BASE + k, qb.newest_ip, 80) for k in range(count)]
        mem = [common.rss_kib(p.pid) for p in procs]
        lat = latency(qb.client_ns, qb.addr, PROXY_BASE + count - 1, self.args.lat_reps)
        return {
            "proxies_running": count,
            "proxies_wanted": qb.n,
            "start_ms": common.stats(self.start_ms[first:]),
            "rss_kib_total": sum(m[0] for m in mem),
            "pss_kib_total": sum(m[1] for m in mem),
            "rss_kib_each": sum(m[0] for m in mem) / len(mem),
            "latency_ms": common.stats(lat),
            "raw": {"latency_ms": lat},
        }


# -- CNI: bridge + host-local + portmap --------------------------------------


class CniBench:
    """A CNI host namespace; plugins exec'd as a runtime (libcni) does, chain bridge -> portmap."""

    NAME = "qbench"

    def __init__(self, lab: Lab, client_ns: str, idx: int, n: int, args: argparse.Namespace):
        self.lab, self.client_ns, self.idx, self.n, self.args = lab, client_ns, idx, n, args
        self.ns = lab.netns(f"cni{idx}")
        lab.link(self.ns, client_ns, f"{CNI_NET}.{16 * idx + 1}/28", f"{CNI_NET}.{16 * idx + 2}/28", f"c{idx}")
        self.addr = f"{CNI_NET}.{16 * idx + 1}"
        self.state = lab.tmpdir(f"cni{idx}-")
        self.bridge = f"{RUN}br"
        self.count = 0  # CNI "containers" made (real and pre-populated)
        self.real = 0
        self.mappings = 0
        self.template: tuple[list[str], list[str], str, str, int] | None = None
        self.fills: list[dict[str, Any]] = []
        self.next_port = REP_BASE
        self.reps = args.reps if n <= 1000 else min(args.reps, args.cni_reps_large)
        self.warm = min(args.warmup, 1) if n <= 1000 else 0
        self.bridge_ms: list[float] = []
        self.portmap_ms: list[float] = []
        self.lat: list[float] = []
        self.newest: dict[str, Any] = {}

    def _bridge_conf(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": self.NAME,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipMasq": True,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": CNI_SUBNET, "rangeStart": "10.222.0.2", "rangeEnd": "10.222.15.254"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": os.path.join(self.state, "ipam"),
            },
        }

    def _portmap_conf(self, port: int, prev: dict[str, Any]) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": self.NAME,
            "type": "portmap",
            "capabilities": {"portMappings": True},
            "snat": True,
            "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": prev,
        }

    def _exec(self, plugin: str, command: str, cid: str, netns: str, conf: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": ns_path(netns),
            "CNI_IFNAME": "eth0",
            "CNI_PATH": CNI_DIR,
        }
        ms, proc = timed(lambda: nsrun(self.ns, os.path.join(CNI_DIR, plugin), input=json.dumps(conf), env=env, check=False))
        if proc.returncode != 0:
            raise RuntimeError(f"CNI {plugin} {command} failed: {(proc.stdout + proc.stderr).strip()[-600:]}")
        return ms, (json.loads(proc.stdout) if proc.stdout.strip() else {})

    def add(self, port: int) -> dict[str, Any]:
        """One container: netns, bridge ADD, portmap ADD (timed separately)."""
        self.real += 1
        cid = f"{RUN}-{self.idx}-ctr{self.real}"
        netns = self.lab.netns(f"c{self.idx}x{self.real}")
        bridge_ms, result = self._exec("bridge", "ADD", cid, netns, self._bridge_conf())
        pm_conf = self._portmap_conf(port, result)
        portmap_ms, _ = self._exec("portmap", "ADD", cid, netns, pm_conf)
        self.count += 1
        self.mappings += 1
        ip = result["ips"][0]["address"].split("/")[0]
        return {"cid": cid, "netns": netns, "ip": ip, "port": port, "bridge_ms": bridge_ms, "portmap_ms": portmap_ms, "pm_conf": pm_conf}

    def delete(self, ctr: dict[str, Any]) -> None:
        self._exec("portmap", "DEL", ctr["cid"], ctr["netns"], ctr["pm_conf"])
        self._exec("bridge", "DEL", ctr["cid"], ctr["netns"], self._bridge_conf())
        common.run(["ip", "netns", "del", ctr["netns"]], check=False)
        self.lab.namespaces.remove(ctr["netns"])
        self.count -= 1
        self.mappings -= 1

    def _learn_template(self, ctr: dict[str, Any]) -> None:
        """The iptables rules one bridge+portmap container owns, as the plugins wrote them."""
        save = nsrun(self.ns, "iptables-save", "-t", "nat").stdout.splitlines()
        tag = f'id: \\"{ctr["cid"]}\\"'
        ref = [line for line in save if line.startswith("-A ") and tag in line]
        own = set()
        for line in ref:
            m = re.search(r"-j (CNI-\S+)", line)
            if m and not m.group(1).startswith("CNI-HOSTPORT"):
                own.add(m.group(1))
        rules = [line for line in save if line.startswith("-A ") and (line in ref or line.split()[1] in own)]
        if not own or not any("DNAT" in r for r in rules):
            raise RuntimeError("could not find the rules of the first CNI container in iptables-save")
        self.template = (sorted(own), rules, ctr["cid"], ctr["ip"], ctr["port"])

    def _synthetic(self, i: int) -> tuple[list[str], list[str]]:
        assert self.template is not None
        own, rules, cid, ip, port = self.template
        new_cid = f"{RUN}-{self.idx}-fill{i}"
        digest = hashlib.sha512(f"{self.NAME}{new_cid}".encode()).hexdigest()
        names = {}
        for chain in own:
            prefix = "CNI-DN-" if chain.startswith("CNI-DN-") else "CNI-"
            names[chain] = prefix + digest[: len(chain) - len(prefix)]
        new_ip = str(CNI_FILL_BASE + i)
        new_port = FILL_BASE + i
        out = []
        for line in rules:
            for old, new in names.items():
                line = re.sub(rf"(?<![\w-]){re.escape(old)}(?![\w-])", new, line)
            line = line.replace(f'id: \\"{cid}\\"', f'id: \\"{new_cid}\\"')
            line = re.sub(rf"(?<![\d.]){re.escape(ip)}(?![\d])", new_ip, line)
            line = re.sub(rf"(--dports? ){port}\b", rf"\g<1>{new_port}", line)
            out.append(line)
        return [f":{names[c]} - [0:0]" for c in own], out

    def fill(self) -> None:
        """N containers' worth of mappings: the first for real, the rest as the same rules via iptables-restore."""
        n = self.n
        t = time.perf_counter()
        if self.count == 0:
            first = self.add(FILL_BASE)
            self._learn_template(first)
            self.fills.append({"size": n, "mappings": 1, "how": "real bridge+portmap ADD", "ms": (time.perf_counter() - t) * 1000})
        missing = n - self.mappings
        if missing <= 0:
            return
        t = time.perf_counter()
        decls: list[str] = []
        rules: list[str] = []
        for i in range(self.count, self.count + missing):
            d, r = self._synthetic(i)
            decls += d
            rules += r
        nsrun(self.ns, "iptables-restore", "--noflush", input="\n".join(["*nat", *decls, *rules, "COMMIT", ""]), timeout=900)
        self.count += missing
        self.mappings += missing
        ms = (time.perf_counter() - t) * 1000
        self.fills.append(
            {"size": n, "mappings": missing, "how": "iptables-restore --noflush of the first container's rules, renamed", "ms": ms}
        )
        log(f"CNI: pre-populated {missing} containers' portmap+bridge rules with iptables-restore in {ms:.0f} ms")

    def add_once(self, i: int) -> None:
        """Repetition i: one more container with one mapping; removed again (DEL) up to 1000 mappings."""
        if i >= self.warm + self.reps:
            return
        self.next_port += 1
        ctr = self.add(self.next_port)
        if i >= self.warm:
            self.bridge_ms.append(ctr["bridge_ms"])
            self.portmap_ms.append(ctr["portmap_ms"])
        if i == self.warm + self.reps - 1:
            self.newest = ctr
            self.lab.spawn(ctr["netns"], sys.executable, "-c", SERVER)
        elif self.n <= 1000:
            self.delete(ctr)

    def latency(self, reps: int) -> None:
        self.lat += latency(self.client_ns, self.addr, self.newest["port"], reps)

    def result(self) -> dict[str, Any]:
        dnat_rules = nsrun(self.ns, "iptables-save", "-t", "nat").stdout.count("-A CNI-HOSTPORT-DNAT ")
        return {
            "mappings_active": self.n,
            "hostport_dnat_rules": dnat_rules,
            "reps": self.reps,
            "add_portmap_ms": common.stats(self.portmap_ms),
            "add_bridge_ms": common.stats(self.bridge_ms),
            "latency_ms": common.stats(self.lat),
            "raw": {"add_portmap_ms": self.portmap_ms, "add_bridge_ms": self.bridge_ms, "latency_ms": self.lat},
        }


# -- throughput ----------------------------------------------------------------


def iperf(ns: str, target: str, port: int, seconds: int, opts: list[str]) -> float:
    """Gbit/s received, one iperf3 run (retried once: the server takes one test at a time)."""
    last = ""
    for _attempt in range(3):
        proc = nsrun(ns, "iperf3", "-c", target, "-p", str(port), "-t", str(seconds), *opts, "-J", check=False, timeout=seconds + 60)
        with contextlib.suppress(ValueError, KeyError):
            data = json.loads(proc.stdout)
            if "error" not in data:
                return data["end"]["sum_received"]["bits_per_second"] / 1e9
            last = data["error"]
        last = last or proc.stderr.strip()
        time.sleep(1)
    raise RuntimeError(f"iperf3 -c {target} -p {port}: {last}")


@contextlib.contextmanager
def routed_baseline(qb: QiaoBench, ip: str, prefixlen: int) -> Iterator[bool]:
    """Let the client reach the container IP itself (no NAT): a route, and one accept rule in the
    network's forward chain (qiao drops unpublished traffic from outside), removed afterwards."""
    host, client_ns = qb.host, qb.client_ns
    subnet = str(ipaddress.ip_interface(f"{ip}/{prefixlen}").network)
    dev = nsrun(host.ns, "ip", "-o", "route", "get", ip).stdout.split(" dev ")[1].split()[0]
    chain = f"inet qiao fwd-in-{dev}"
    ok = nsrun(
        host.ns, "nft", "insert", "rule", *chain.split(), "ip", "saddr", qb.client_addr, "accept", "comment", '"bench-routed"', check=False
    )
    nsrun(client_ns, "ip", "route", "add", subnet, "via", qb.addr, check=False)
    try:
        yield ok.returncode == 0
    finally:
        nsrun(client_ns, "ip", "route", "del", subnet, check=False)
        listing = nsrun(host.ns, "nft", "-a", "list", "chain", *chain.split(), check=False).stdout
        for line in listing.splitlines():
            if "bench-routed" in line and "# handle" in line:
                nsrun(host.ns, "nft", "delete", "rule", *chain.split(), "handle", line.rsplit("# handle", 1)[1].strip(), check=False)


def throughput(qb: QiaoBench, proxy: ProxyBench | None, args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    host, client_ns = qb.host, qb.client_ns
    seconds = 3 if args.quick else 10
    cid = host.cli("run", "-d", "-p", f"{IPERF_PORT}:{IPERF_PORT}", "--", "iperf3", "-s", "-p", str(IPERF_PORT)).stdout.strip()
    info = host.inspect(cid)["NetworkSettings"]
    ip, prefixlen = info["IPAddress"], info["IPPrefixLen"]
    paths: dict[str, tuple[str, str, int]] = {
        "direct: host ns -> container IP": (host.ns, ip, IPERF_PORT),
        "routed: client -> container IP (no NAT)": (client_ns, ip, IPERF_PORT),
        "qiao DNAT: client -> host:port": (client_ns, qb.addr, IPERF_PORT),
        "qiao localhost: 127.0.0.1:port": (host.ns, "127.0.0.1", IPERF_PORT),
    }
    if proxy is not None:
        proxy.start(host.ns, IPERF_PROXY_PORT, ip, IPERF_PORT)
        paths["docker-proxy: client -> host:port"] = (client_ns, qb.addr, IPERF_PROXY_PORT)
        paths["docker-proxy: 127.0.0.1:port"] = (host.ns, "127.0.0.1", IPERF_PROXY_PORT)
    runs: dict[str, list[float]] = {k: [] for k in paths}
    with routed_baseline(qb, ip, prefixlen) as routed_ok:
        if not routed_ok:
            notes.append("routed baseline skipped: could not add the accept rule to qiao's forward chain")
            runs.pop("routed: client -> container IP (no NAT)")
        for rnd in range(3):  # rounds, each path once per round: drift hits all paths alike
            for name in runs:
                ns, target, port = paths[name]
                runs[name].append(iperf(ns, target, port, seconds, args.iperf_opts.split()))
                log(f"iperf3 round {rnd + 1}/3 {name}: {runs[name][-1]:.2f} Gbit/s")
    host.rm(cid)
    return {"seconds": seconds, "runs": runs, "median_gbps": {k: common.stats(v)["median"] for k, v in runs.items()}}


# -- report --------------------------------------------------------------------


def fmt_ms(s: dict[str, Any] | None) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{s['median']:.2f} / {s['p90']:.2f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def report(res: dict[str, Any]) -> str:
    lines = [f"bench/ports  {res['when']}  kernel {res['kernel']}  {res['cpus']} CPUs  load {res['loadavg_start']:.1f}", ""]
    for size in res["sizes"]:
        q = res["qiao"].get(str(size), {})
        c = res["cni"].get(str(size), {}) if res["cni"] else {}
        d = res["docker_proxy"].get(str(size), {}) if res["docker_proxy"] else {}
        lines.append(f"== {size} mapping{'s' if size != 1 else ''} active (median / p90, ms) ==")
        rows = [["", "qiao (nftables maps)", f"CNI portmap {res['versions'].get('cni', '?')} (iptables)", "Docker (docker-proxy)"]]
        rows.append(["add one: end to end", f"{fmt_ms(q.get('add_cli_ms'))} (qiao run -d)", "-", "- (no dockerd)"])
        rows.append(
            [
                "add one: daemon / plugins",
                f"{fmt_ms(q.get('add_api_ms'))} (API create+start)",
                f"{fmt_ms(c.get('add_bridge_ms'))} (bridge ADD)",
                "-",
            ]
        )
        rows.append(
            [
                "add one: the mapping alone",
                f"{fmt_ms(q.get('add_nft_ms'))} (add_ports)",
                f"{fmt_ms(c.get('add_portmap_ms'))} (portmap ADD)",
                f"{fmt_ms(d.get('start_ms'))} (proxy start)" if d else "-",
            ]
        )
        rows.append(
            [
                "connect + request via newest",
                fmt_ms(q.get("latency_ms")),
                fmt_ms(c.get("latency_ms")),
                fmt_ms(d.get("latency_ms")) if d else "-",
            ]
        )
        mem_d = "-"
        if d:
            mem_d = f"{d['rss_kib_total'] / 1024:.0f} MiB RSS ({d['proxies_running']} proc., PSS {d['pss_kib_total'] / 1024:.0f} MiB)"
        rows.append(["memory", f"{q.get('qiaod_rss_kib', 0) / 1024:.0f} MiB qiaod RSS, {q.get('qiaod_fds', 0)} fds", "-", mem_d])
        lines += [table(rows), ""]
        if c:
            lines.append(f"   (CNI: {c['reps']} reps; {c['hostport_dnat_rules']} CNI-HOSTPORT-DNAT rules after the adds)")
        if q:
            lines.append(f"   (qiao: {q.get('map_elements')} elements in published_any during the add_ports probe)")
        lines.append("")

    lo, hi = str(min(res["sizes"])), str(max(res["sizes"]))
    if lo != hi:
        lines.append(f"== scaling: {hi} vs {lo} mappings (median ratio; target <= {TARGET_SCALE}x) ==")
        rows = [["", "ratio", "target", ""]]

        def ratio(label: str, group: dict[str, Any] | None, key: str, target: bool = True) -> None:
            if not group or lo not in group or hi not in group:
                return
            a, b = group[lo].get(key), group[hi].get(key)
            if not a or not b or not a.get("n") or not b.get("n"):
                return
            r = b["median"] / a["median"]
            res["ratios"][label] = r
            rows.append([label, f"{r:.2f}x", f"<= {TARGET_SCALE}x" if target else "(info)", verdict(r <= TARGET_SCALE) if target else ""])

        ratio("qiao add one (qiao run -d)", res["qiao"], "add_cli_ms")
        ratio("qiao add one (API)", res["qiao"], "add_api_ms")
        ratio("qiao add one (add_ports)", res["qiao"], "add_nft_ms")
        ratio("qiao connect + request", res["qiao"], "latency_ms")
        ratio("CNI portmap ADD", res["cni"], "add_portmap_ms", target=False)
        ratio("CNI bridge ADD", res["cni"], "add_bridge_ms", target=False)
        ratio("CNI connect + request", res["cni"], "latency_ms", target=False)
        ratio("docker-proxy connect + request", res["docker_proxy"], "latency_ms", target=False)
        lines += [table(rows), ""]

    tp = res.get("throughput")
    if tp:
        med = tp["median_gbps"]
        lines.append(f"== throughput, iperf3 3 x {tp['seconds']} s, with {max(res['sizes'])} mappings active (Gbit/s, median of 3) ==")
        direct = med.get("direct: host ns -> container IP")
        routed = med.get("routed: client -> container IP (no NAT)")
        rows = [["path", "Gbit/s", "runs", "vs direct", "vs routed", "target", ""]]
        targets = {
            "qiao DNAT: client -> host:port": TARGET_DNAT,
            "qiao localhost: 127.0.0.1:port": TARGET_LOCAL,
            "docker-proxy: client -> host:port": TARGET_DNAT,
            "docker-proxy: 127.0.0.1:port": TARGET_LOCAL,
        }
        for name, runs in tp["runs"].items():
            g = med[name]
            vd = g / direct if direct else 0
            vr = g / routed if routed else 0
            tgt = targets.get(name)
            if tgt is None:
                check = ""
            elif "client" in name and routed:  # like for like: the same client, the same hops, NAT or not
                check = f"{verdict(vd >= tgt)} vs direct, {verdict(vr >= tgt)} vs routed"
            else:
                check = verdict(vd >= tgt)
            if tgt is not None:
                res["ratios"][f"throughput {name} / direct"] = vd
                if routed:
                    res["ratios"][f"throughput {name} / routed"] = vr
            rows.append(
                [
                    name,
                    f"{g:.2f}",
                    " ".join(f"{x:.2f}" for x in runs),
                    f"{vd:.1%}",
                    f"{vr:.1%}" if routed else "-",
                    f">= {tgt:.0%}" if tgt else "",
                    check,
                ]
            )
        lines += [table(rows), ""]
    if res["fills"]:
        lines.append("== set-up ==")
        for f in res["fills"]:
            how = f"qiao run -d -p {f['spec']}" if f["peer"] == "qiao" else f["how"]
            lines.append(f"  {f['peer']} N={f['size']}: +{f['mappings']} mappings in {f['ms'] / 1000:.2f} s ({how})")
        lines.append("")
    if res["notes"]:
        lines.append("== notes ==")
        lines += [f"  - {n}" for n in res["notes"]]
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict[str, Any]:
    sizes = args.sizes
    if not sizes or sizes[0] < 1 or sizes[-1] > 20000:
        raise SystemExit("bench.ports: --sizes must be between 1 and 20000")
    notes: list[str] = []
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
        "args": vars(args),
        "sizes": sizes,
        "versions": {
            "cni": common.pkg_version("containernetworking-plugins"),
            "iptables": common.pkg_version("iptables"),
            "iperf3": common.pkg_version("iperf3"),
        },
        "qiao": {},
        "cni": {},
        "docker_proxy": {},
        "ratios": {},
        "fills": [],
        "notes": notes,
    }
    lab = Lab()
    try:
        client = lab.netns("cli")
        # One host per size, all alive at once, their repetitions interleaved round-robin: whatever else
        # the machine does hits every size alike, so the scaling ratios hold up on a busy machine.
        qbs = [QiaoBench(lab, client, i, n, args) for i, n in enumerate(sizes)]

        proxy_bin = None if args.no_docker else find_docker_proxy()
        proxy = ProxyBench(lab, proxy_bin, args) if proxy_bin else None
        if proxy_bin:
            notes.append(f"Docker: {proxy_bin} started as dockerd starts it (one process per mapping); dockerd itself is not run")
            if shutil.which("dockerd"):
                notes.append("dockerd is installed but not used: it would change the machine's own firewall")
        elif not args.no_docker:
            notes.append("Docker: no docker-proxy found (scripts/install-peers.sh extracts it from Debian's docker.io); skipped")
            res["docker_proxy"] = None

        cnis: list[CniBench] = []
        have_cni = all(os.access(os.path.join(CNI_DIR, p), os.X_OK) for p in ("bridge", "host-local", "portmap"))
        if args.no_cni:
            res["cni"] = None
        elif have_cni and shutil.which("iptables-restore"):
            cnis = [CniBench(lab, client, i, n, args) for i, n in enumerate(sizes)]
        else:
            notes.append(f"CNI: bridge/host-local/portmap not in {CNI_DIR} or no iptables (scripts/install-peers.sh); skipped")
            res["cni"] = None

        for qb in qbs:
            qb.fill()
        for c in cnis:
            c.fill()
        rounds = args.warmup + args.reps
        log(f"adding one mapping: {rounds} rounds over {len(sizes)} sizes" + (" (CNI above 1000: first rounds only)" if cnis else ""))
        for i in range(rounds):
            k = i % len(sizes)  # rotate who goes first
            for qb in qbs[k:] + qbs[:k]:
                qb.add_once(record=i >= args.warmup)
            for c in cnis[k:] + cnis[:k]:
                c.add_once(i)
        for qb in qbs:
            qb.start_newest()
        for _ in range(5):
            for qb in qbs:
                qb.probe(max(2, max(args.reps, 30) // 5))
        log("connect + request")
        for _ in range(4):
            for qb in qbs:
                qb.latency(max(1, args.lat_reps // 4))
            for c in cnis:
                c.latency(max(1, args.lat_reps // 4))
        for qb in qbs:
            q = res["qiao"][str(qb.n)] = qb.result()
            log(f"qiao {qb.n}: add cli {fmt_ms(q['add_cli_ms'])}, api {fmt_ms(q['add_api_ms'])}, nft {fmt_ms(q['add_nft_ms'])}")
        for c in cnis:
            r = res["cni"][str(c.n)] = c.result()
            log(f"CNI {c.n}: portmap ADD {fmt_ms(r['add_portmap_ms'])}, bridge ADD {fmt_ms(r['add_bridge_ms'])}")
        if proxy is not None:
            for qb in qbs:
                d = res["docker_proxy"][str(qb.n)] = proxy.measure(qb)
                log(f"docker-proxy {qb.n}: {d['proxies_running']} running, connect+request {fmt_ms(d['latency_ms'])}")
                if qb.n > args.proxy_max:
                    notes.append(
                        f"docker-proxy at {qb.n}: 1 proxy started, not {qb.n} (--proxy-max {args.proxy_max}); "
                        f"{qb.n} would take ~{d['rss_kib_each'] * qb.n / 1024 / 1024:.1f} GiB RSS"
                    )
        res["fills"] = [{"peer": "qiao", **f} for qb in qbs for f in qb.fills] + [{"peer": "cni", **f} for c in cnis for f in c.fills]
        if cnis:
            notes.append(
                "CNI: N mappings = N containers of one mapping each; the first made by real plugin calls, the others by "
                "iptables-restore of exactly the rules that container got (renamed); every measured add is a real ADD"
            )
            if any(c.n > 1000 for c in cnis):
                notes.append("CNI above 1000: the measured containers were kept (a DEL costs as much as an ADD there)")
        if not args.no_iperf and shutil.which("iperf3"):
            log("throughput (iperf3)")
            res["throughput"] = throughput(qbs[-1], proxy, args, notes)
        elif not args.no_iperf:
            notes.append("iperf3 not installed (scripts/install-peers.sh); throughput skipped")
    finally:
        log("cleaning up")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not leave half of it behind
            signal.signal(sig, signal.SIG_IGN)
        lab.cleanup()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ports", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=common.int_list, default=[1, 1000, 10000], help="mappings active (default 1,1000,10000)")
    p.add_argument("--reps", type=int, default=30, help="adds per size and peer (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="unrecorded adds first, per size (CNI: 1, and none above 1000)")
    p.add_argument("--lat-reps", type=int, default=200, help="connect+request samples per size and peer (default 200)")
    p.add_argument("--cni-reps-large", type=int, default=5, help="CNI adds per size above 1000 (seconds each; default 5)")
    p.add_argument("--proxy-max", type=int, default=1000, help="at most this many docker-proxy processes (default 1000)")
    p.add_argument("--quick", action="store_true", help="iperf3 3 x 3 s instead of 3 x 10 s")
    p.add_argument("--iperf-opts", default="-O 1", help="extra iperf3 client options (default: -O 1, skip the first second)")
    p.add_argument("--no-cni", action="store_true")
    p.add_argument("--no-docker", action="store_true")
    p.add_argument("--no-iperf", action="store_true")
    p.add_argument("--out", default=str(RESULTS), help="JSON results (default bench/results/ports.json)")
    p.add_argument("--probe-nft", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--probe-ip", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe_nft:
        print(json.dumps(probe_nft(args.reps, args.probe_ip, PROBE_PORT)))
        return 0
    if os.geteuid() != 0:
        print("bench.ports: needs root (namespaces, nftables)", file=sys.stderr)
        return 1

    return common.run_and_save("bench.ports", lambda: bench(args), report, args.out)


if __name__ == "__main__":
    with common.netns_run_dir_restored():
        sys.exit(main())
