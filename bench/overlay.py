"""bench/overlay: qiao's overlay networks across simulated hosts, in one run.

Three questions, on one ``qiao lab`` (hosts are network namespaces on one
underlay bridge, each with its own qiaod, etcd on the underlay):

(a) TCP throughput, iperf3 (3 x 10 s, ``--quick`` 3 x 3 s), host1 -> host2:
    container -> container through qiao's overlay network, against the same
    two host namespaces over the raw underlay (their eth0 addresses), and
    over a hand-made VXLAN pair between them (``ip link add ... type vxlan
    id 42 dstport 4789 local ... remote ...``, static remote, no bridge, the
    overlay's MTU): the floor.  Runs interleave, the order rotates.
(b) convergence: with N-1 hosts up, one container on each, host N is added
    (``Lab.add_host``); from its qiaod's start, a container is run there at
    once (a UDP echo server) and a prober in a container's namespace on every
    other host sends a datagram every 5 ms until answered.  Measured for
    every N from 3 to ``--max-hosts`` (10), the hosts joining one by one.
(d) the cost of a container start elsewhere: at the largest lab, 10
    containers are started on host1 one after another; every other host's
    qiaod reports (``GET /info`` -> ``QiaoDrivers.overlay``) the etcd reads
    (full range reads) and watch events it made meanwhile.  Goal: O(1) per
    start (events), no reads: not O(containers).
(c) steady state: with the lab idle, etcd's revision (one per key write),
    its lease renewals (``etcd_debugging_lease_renewed_total``) and range
    requests over a window (60 s, ``--quick`` 20 s), at 3 hosts and at the
    largest size; the keys every host holds; which keys were written.

Everything happens in the lab's namespaces and in two VXLAN devices this
script adds to host1's and host2's namespaces; traffic goes only there.  At
the end, also after a failure or Ctrl-C / SIGTERM, the processes this script
started are ended by PID and ``qiao lab --root TMP down`` removes the lab.
Root only.  Results: a table on stdout, JSON in bench/results/overlay.json.
See bench/OVERLAY.md.

    .venv/bin/python -m bench.overlay [--quick] [--runs 3] [--duration 10] [--max-hosts 10] [--steady 60]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import ipaddress
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import common

BIN = Path(sys.executable).parent
QIAO = str(BIN / "qiao")
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "overlay.json"

ETCD_URL = "http://10.250.0.1:2379"  # the lab's etcd, on its underlay namespace
NET, NET_RANGE = "ov", "10.244.0.0/16"
FLOOR_DEV, FLOOR_VNI, FLOOR_PORT, FLOOR_NET = "qbvx42", 42, 4789, "10.249.42"  # the hand-made VXLAN pair
REPLICA_NET = "10.249.6"  # + host index: hand-made "containers" routed over that pair (10.249.61.0/24, 10.249.62.0/24)
RAW_IPERF_PORT, FLOOR_IPERF_PORT, REPLICA_IPERF_PORT = 5202, 5203, 5204  # iperf3 servers (qiao's is in a container, on 5201)
ECHO_PORT = 7
PROBE_EVERY = 0.005  # s
JOIN_TIMEOUT = 20.0  # s: a join not reachable from every host by then is reported as such

TARGET_THROUGHPUT = 0.95  # overlay / hand-made VXLAN
TARGET_CONVERGENCE = 1.0  # s, at the largest size

# The new host's container: a UDP echo server (python3 -S: no site import, the lightest server at hand).
ECHO = (
    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    f"s.bind(('', {ECHO_PORT})); [s.sendto(*m) for m in iter(lambda: s.recvfrom(256), None)]"
)

# One prober per other host, run by this script in a container's network namespace
# (nsenter --net=SANDBOX).  stdin: "IP" lines (the target; a later line corrects it), "stop".
# stdout: "ready", then {"sent_at", "recv_at", "probes"} for the first answer (CLOCK_BOOTTIME).
PROBER = (
    r"""
import json, os, select, socket, struct, time
clk = lambda: time.clock_gettime(time.CLOCK_BOOTTIME)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
print("ready", flush=True)
target, buf, sent, next_send, deadline = None, b"", 0, 0.0, 0.0
while True:
    r, _, _ = select.select([s, 0], [], [], EVERY if target else None)
    if 0 in r:
        chunk = os.read(0, 4096)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        if any(line.strip() == b"stop" for line in lines):
            break
        for line in lines:
            if line.strip():
                target = line.strip().decode()
                deadline = deadline or clk() + TIMEOUT
    if s in r:
        with __import__("contextlib").suppress(OSError):
            data, addr = s.recvfrom(64)
            if target and addr[0] == target and len(data) == 8:
                print(json.dumps({"sent_at": struct.unpack("!d", data)[0], "recv_at": clk(), "probes": sent}), flush=True)
                target = None
    if target:
        t = clk()
        if t > deadline:
            print(json.dumps({"timeout": True, "probes": sent}), flush=True)
            target = None
        elif t >= next_send:
            with __import__("contextlib").suppress(OSError):
                s.sendto(struct.pack("!d", t), (target, PORT))
                sent += 1
            next_send = t + EVERY
""".replace("EVERY", repr(PROBE_EVERY))
    .replace("TIMEOUT", repr(JOIN_TIMEOUT))
    .replace("PORT", str(ECHO_PORT))
)


def clock() -> float:
    """CLOCK_BOOTTIME: the clock of /proc/PID/stat's start time, shared with the probers."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def say(text: str = "") -> None:
    print(text, flush=True)


def proc_start(pid: int) -> float | None:
    """A process's start time on CLOCK_BOOTTIME (10 ms resolution)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": statistics.median(values), "mean": statistics.fmean(values), "min": min(values), "max": max(values)}


class Interrupted(Exception):
    pass


# -- etcd ---------------------------------------------------------------------


class EtcdWatch:
    """``etcdctl watch --prefix /qiao/``, every event timestamped as it arrives."""

    def __init__(self, bench: Bench):
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.proc = bench.spawn(bench.etcdctl_cmd("watch", "--prefix", "/qiao/", "-w", "json"), stdout=subprocess.PIPE)
        threading.Thread(target=self._read, name="etcd-watch", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t = clock()
            try:
                resp = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                for ev in resp.get("Events") or []:
                    kv = ev.get("kv", {})
                    key = base64.b64decode(kv.get("key", "")).decode()
                    raw = base64.b64decode(kv.get("value", "")) if kv.get("value") else b""
                    try:
                        value = json.loads(raw) if raw else None
                    except ValueError:
                        value = raw.decode(errors="replace")
                    self.events.append({"t": t, "key": key, "value": value, "delete": ev.get("type") == 1, "rev": kv.get("mod_revision")})
                self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.events)

    def since(self, mark: int) -> list[dict[str, Any]]:
        with self.cond:
            return list(self.events[mark:])

    def wait_for(self, mark: int, pred: Any, timeout: float) -> dict[str, Any] | None:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events[mark:]:
                    if pred(ev):
                        return ev
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def quiet(self, for_s: float, limit: float) -> bool:
        """Wait until no event arrived for ``for_s`` seconds (at most ``limit``)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            with self.cond:
                last = self.events[-1]["t"] if self.events else 0.0
            if clock() - last >= for_s:
                return True
            time.sleep(0.1)
        return False


class RouteMonitor:
    """``ip -n NS monitor route`` on every other host: when each first had a route to a subnet."""

    def __init__(self, bench: Bench, hosts: list[dict[str, Any]]):
        self.seen: dict[str, dict[str, float]] = {}
        self.lock = threading.Lock()
        self.procs = []
        for h in hosts:
            proc = bench.spawn(["ip", "-n", h["netns"], "monitor", "route"], stdout=subprocess.PIPE)
            self.procs.append(proc)
            self.seen[h["name"]] = {}
            threading.Thread(target=self._read, args=(h["name"], proc), daemon=True).start()

    def _read(self, host: str, proc: subprocess.Popen[Any]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            t = clock()
            parts = line.split()
            if parts and parts[0] != "Deleted":
                with self.lock:
                    self.seen[host].setdefault(parts[0], t)

    def when(self, host: str, dst: str) -> float | None:
        with self.lock:
            return self.seen[host].get(dst)

    def stop(self, bench: Bench) -> None:
        for proc in self.procs:
            bench.end(proc)


# -- the bench and its lab ----------------------------------------------------


class Bench:
    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="qbov-")
        self.procs: list[subprocess.Popen[Any]] = []
        self.floor_ns: list[str] = []
        self.replica_ns: list[str] = []
        self.lab_up = False
        self.state: dict[str, Any] = {}
        self.lab_log = io.StringIO()

    # processes this script starts (ended by PID in close())
    def spawn(self, cmd: list[str], stdin: Any = subprocess.DEVNULL, stdout: Any = subprocess.DEVNULL) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=subprocess.DEVNULL, start_new_session=True, text=True)
        self.procs.append(proc)
        return proc

    @staticmethod
    def end(proc: subprocess.Popen[Any]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def lab(self, *args: str) -> str:
        out = subprocess.run([QIAO, "lab", "--root", self.root, *args], capture_output=True, text=True, timeout=300)
        self.lab_log.write(out.stdout + out.stderr)
        if out.returncode:
            raise RuntimeError(f"qiao lab {' '.join(args)} failed: {(out.stderr or out.stdout).strip()[-400:]}")
        return out.stdout

    def up(self, hosts: int) -> None:
        self.lab_up = True  # from here on, close() runs ``qiao lab down``
        self.lab("up", "--hosts", str(hosts))
        self.reload()

    def reload(self) -> None:
        with open(os.path.join(self.root, "lab.json")) as f:
            self.state = json.load(f)

    def host(self, name: str) -> dict[str, Any]:
        return next(h for h in self.state["hosts"] if h["name"] == name)

    @property
    def underlay(self) -> str:
        return f"/run/netns/{self.state['underlay']}"

    def qiao(self, host: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``qiao lab exec HOST -- qiao ARGS`` (the same nsenter + QIAO_ROOT, without the extra Python start)."""
        h = self.host(host)
        env = dict(os.environ, QIAO_ROOT=h["root"], PATH=str(BIN) + os.pathsep + os.environ.get("PATH", ""))
        out = subprocess.run(
            ["nsenter", f"--net=/run/netns/{h['netns']}", "--", QIAO, *args], capture_output=True, text=True, env=env, timeout=timeout
        )
        if check and out.returncode:
            raise RuntimeError(f"{host}: qiao {' '.join(args)} failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-400:]}")
        return out

    def inspect(self, host: str, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.qiao(host, "inspect", name).stdout)[0]
        return data

    def info(self, host: str) -> dict[str, Any]:
        """The host's ``GET /info`` (its socket is a path: reachable from any namespace)."""
        from qiao.cli.client import Client
        from qiao.paths import Root

        data: dict[str, Any] = Client(Root.resolve(self.host(host)["root"]), autostart=False).request("GET", "/info")
        return data

    def etcdctl_cmd(self, *args: str) -> list[str]:
        return ["nsenter", f"--net={self.underlay}", "--", "etcdctl", "--endpoints", ETCD_URL, *args]

    def etcdctl(self, *args: str) -> Any:
        out = subprocess.run(self.etcdctl_cmd(*args), capture_output=True, text=True, timeout=30, check=True)
        return json.loads(out.stdout)

    def revision(self) -> int:
        return int(self.etcdctl("endpoint", "status", "-w", "json")[0]["Status"]["header"]["revision"])

    def metrics(self) -> dict[str, float]:
        """etcd's Prometheus counters we use, summed over their labels."""
        from qiao.kernel import netns as qnetns

        with qnetns.entered(self.underlay), urllib.request.urlopen(f"{ETCD_URL}/metrics", timeout=5) as r:
            text = r.read().decode()
        want = {
            "lease_renewed": ("etcd_debugging_lease_renewed_total", ""),
            "lease_keepalive_msgs": ("grpc_server_msg_received_total", 'grpc_method="LeaseKeepAlive"'),
            "range": ("grpc_server_handled_total", 'grpc_method="Range"'),
            "txn": ("grpc_server_handled_total", 'grpc_method="Txn"'),
            "put": ("grpc_server_handled_total", 'grpc_method="Put"'),
            "lease_grant": ("grpc_server_handled_total", 'grpc_method="LeaseGrant"'),
        }
        out = dict.fromkeys(want, 0.0)
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            base = name.split("{", 1)[0]
            for k, (metric, label) in want.items():
                if base == metric and label in name:
                    out[k] += float(value)
        return out

    # hand-made VXLAN pair between host1 and host2 (static remote, no bridge)
    def floor_up(self, h1: dict[str, Any], h2: dict[str, Any], mtu: int) -> None:
        for i, (a, b) in enumerate(((h1, h2), (h2, h1)), start=1):
            self.floor_ns.append(a["netns"])
            subprocess.run(
                ["ip", "-n", a["netns"], "link", "add", FLOOR_DEV, "type", "vxlan", "id", str(FLOOR_VNI), "dstport", str(FLOOR_PORT),
                 "local", a["address"], "remote", b["address"], "dev", "eth0"], check=True,
            )  # fmt: skip
            subprocess.run(["ip", "-n", a["netns"], "link", "set", FLOOR_DEV, "mtu", str(mtu), "up"], check=True)
            subprocess.run(["ip", "-n", a["netns"], "addr", "add", f"{FLOOR_NET}.{i}/24", "dev", FLOOR_DEV], check=True)

    def replica_up(self, h1: dict[str, Any], h2: dict[str, Any], mtu: int) -> list[str]:
        """qiao's topology made by hand over the floor's VXLAN pair: per host a namespace ("container") on a
        veth, a bridge, and a route to the other host's subnet via the pair.  Returns the two namespaces."""
        for i, (h, other) in enumerate(((h1, 2), (h2, 1)), start=1):
            ns, net = f"qbov{self.state['id']}-c{i}", f"{REPLICA_NET}{i}"
            self.replica_ns.append(ns)
            cmds = [
                ["ip", "netns", "add", ns],
                ["ip", "-n", h["netns"], "link", "add", "qbbr", "mtu", str(mtu), "type", "bridge"],
                ["ip", "-n", h["netns"], "addr", "add", f"{net}.1/24", "dev", "qbbr"],
                ["ip", "-n", h["netns"], "link", "set", "qbbr", "up"],
                ["ip", "-n", h["netns"], "link", "add", "qbveth", "mtu", str(mtu), "type", "veth", "peer", "name", "eth0", "netns", ns],
                ["ip", "-n", h["netns"], "link", "set", "qbveth", "master", "qbbr", "up"],
                ["ip", "-n", ns, "link", "set", "lo", "up"],
                ["ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", "eth0"],
                ["ip", "-n", ns, "link", "set", "eth0", "up"],
                ["ip", "-n", ns, "route", "add", "default", "via", f"{net}.1"],
                ["ip", "-n", h["netns"], "route", "add", f"{REPLICA_NET}{other}.0/24", "via", f"{FLOOR_NET}.{other}", "dev", FLOOR_DEV],
            ]
            for cmd in cmds:
                subprocess.run(cmd, check=True, capture_output=True)
        return self.replica_ns

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.end(proc)
        for ns in self.replica_ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for ns in self.floor_ns:
            subprocess.run(["ip", "-n", ns, "link", "del", FLOOR_DEV], capture_output=True)
        if self.lab_up:
            try:
                self.lab("down")
            except Exception as exc:
                say(f"warning: qiao lab --root {self.root} down: {exc}")
        shutil.rmtree(self.root, ignore_errors=True)


def link_info(ns: str, dev: str) -> dict[str, Any]:
    out = subprocess.run(["ip", "-n", ns, "-d", "-j", "link", "show", "dev", dev], capture_output=True, text=True)
    try:
        link = json.loads(out.stdout)[0]
    except (ValueError, IndexError):
        return {}
    data = link.get("linkinfo", {}).get("info_data", {})
    keep = ("id", "port", "local", "remote", "learning", "udp_csum", "udp_zero_csum6_tx", "ttl")
    return {"mtu": link.get("mtu"), **{k: data.get(k) for k in keep if k in data}}


# -- (a) throughput -------------------------------------------------------------


def iperf_json(text: str) -> dict[str, Any]:
    start = text.find("{")
    data: dict[str, Any] = json.loads(text[start:])
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return data


def throughput(b: Bench, runs: int, duration: int) -> dict[str, Any]:
    h1, h2 = b.host("host1"), b.host("host2")
    ns1, ns2 = f"/run/netns/{h1['netns']}", f"/run/netns/{h2['netns']}"
    b.qiao("host1", "run", "-d", "--network", NET, "--name", "srv", "--", "iperf3", "-s")
    srv_ip = b.inspect("host1", "srv")["NetworkSettings"]["Networks"][NET]["IPAddress"]
    links = subprocess.run(["ip", "-n", h1["netns"], "-j", "link", "show", "type", "vxlan"], capture_output=True, text=True, check=True)
    overlay_dev = json.loads(links.stdout)[0]["ifname"]
    overlay_mtu = link_info(h1["netns"], overlay_dev)["mtu"]
    b.floor_up(h1, h2, overlay_mtu)
    c1, c2 = b.replica_up(h1, h2, overlay_mtu)
    b.spawn(["nsenter", f"--net={ns1}", "--", "iperf3", "-s", "-B", h1["address"], "-p", str(RAW_IPERF_PORT)])
    b.spawn(["nsenter", f"--net={ns1}", "--", "iperf3", "-s", "-B", f"{FLOOR_NET}.1", "-p", str(FLOOR_IPERF_PORT)])
    b.spawn(["nsenter", f"--net=/run/netns/{c1}", "--", "iperf3", "-s", "-p", str(REPLICA_IPERF_PORT)])
    config = {
        "overlay": {"device": overlay_dev, **link_info(h1["netns"], overlay_dev), "server": f"srv ({srv_ip}) in a container on host1"},
        "floor": {"device": FLOOR_DEV, **link_info(h1["netns"], FLOOR_DEV), "server": f"{FLOOR_NET}.1 in host1's namespace"},
        "replica": {"mtu": overlay_mtu, "server": f"{REPLICA_NET}1.2 in namespace {c1} (veth on bridge qbbr in host1), client in {c2}"},
        "raw": {"mtu": link_info(h1["netns"], "eth0").get("mtu"), "server": f"{h1['address']} (host1 eth0)"},
    }
    iperf_c = ["nsenter", f"--net={ns2}", "--", "iperf3", "-t", str(duration), "-J", "-c"]
    clients = {
        "raw": [*iperf_c, h1["address"], "-p", str(RAW_IPERF_PORT)],
        "floor": [*iperf_c, f"{FLOOR_NET}.1", "-p", str(FLOOR_IPERF_PORT)],
        "replica": ["nsenter", f"--net=/run/netns/{c2}", *iperf_c[2:], f"{REPLICA_NET}1.2", "-p", str(REPLICA_IPERF_PORT)],
    }
    time.sleep(0.5)  # the servers' listen
    methods = ["floor", "overlay", "replica", "raw"]
    samples: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for r in range(runs):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for m in order:
            for attempt in range(3):
                if m == "overlay":
                    out = b.qiao("host2", "run", "--rm", "--network", NET, "--", "iperf3", "-c", "srv", "-t", str(duration), "-J",
                                 timeout=duration + 60, check=False)  # fmt: skip
                    text = out.stdout
                else:
                    text = subprocess.run(clients[m], capture_output=True, text=True, timeout=duration + 60).stdout
                try:
                    data = iperf_json(text)
                    break
                except (ValueError, RuntimeError) as exc:
                    if attempt == 2:
                        raise RuntimeError(f"iperf3 {m}: {exc}: {text[-300:]}") from None
                    time.sleep(1)
            end = data["end"]
            sample = {
                "gbps": end["sum_received"]["bits_per_second"] / 1e9,
                "retransmits": end["sum_sent"].get("retransmits"),
                "cpu_sender": end.get("cpu_utilization_percent", {}).get("host_total"),
                "cpu_receiver": end.get("cpu_utilization_percent", {}).get("remote_total"),
            }
            samples[m].append(sample)
            say(f"  (a) run {r + 1}/{runs} {m:8} {sample['gbps']:6.2f} Gbit/s  retr {sample['retransmits']}")
    med = {m: statistics.median(s["gbps"] for s in samples[m]) for m in methods}
    return {
        "runs": runs,
        "duration_s": duration,
        "config": config,
        "samples": samples,
        "gbps": {m: summary([s["gbps"] for s in samples[m]]) for m in methods},
        "overlay_vs_floor": med["overlay"] / med["floor"],
        "overlay_vs_raw": med["overlay"] / med["raw"],
        "overlay_vs_replica": med["overlay"] / med["replica"],
        "replica_vs_floor": med["replica"] / med["floor"],
        "floor_vs_raw": med["floor"] / med["raw"],
    }


# -- (b) convergence ------------------------------------------------------------


def start_probers(b: Bench, sandboxes: dict[str, str]) -> dict[str, subprocess.Popen[Any]]:
    probers = {}
    for host, sandbox in sandboxes.items():
        probers[host] = b.spawn(["nsenter", f"--net={sandbox}", "--", sys.executable, "-S", "-c", PROBER],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    for host, p in probers.items():
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"prober on {host} did not start")
    return probers


def tell(probers: dict[str, subprocess.Popen[Any]], line: str) -> None:
    for p in probers.values():
        assert p.stdin is not None
        p.stdin.write(line + "\n")
        p.stdin.flush()


def join(b: Bench, i: int, watch: EtcdWatch, sandboxes: dict[str, str]) -> dict[str, Any]:
    """Add host i to the lab and time it until its new container answers every other host."""
    from qiao.lab.lab import UNDERLAY, Lab

    name, address = f"host{i}", f"{UNDERLAY}.{10 + i}"
    routes = RouteMonitor(b, [b.host(h) for h in sandboxes])
    probers = start_probers(b, sandboxes)
    watch.quiet(1.0, 3.0)
    mark = watch.mark()
    lab = Lab(b.root)
    failure: list[BaseException] = []

    def add() -> None:
        try:
            with contextlib.redirect_stdout(b.lab_log):
                lab.add_host(i)
        except BaseException as exc:  # noqa: B036 (reported in the main thread)
            failure.append(exc)

    t_call = clock()
    adder = threading.Thread(target=add, name=f"add-{name}", daemon=True)
    adder.start()
    sock = os.path.join(b.root, "hosts", name, "run", "qiao.sock")
    while not os.path.exists(sock):
        if failure or not adder.is_alive() and not os.path.exists(sock):
            raise RuntimeError(f"adding {name} failed: {failure[0] if failure else 'no socket'}")
        if clock() - t_call > 60:
            raise RuntimeError(f"{name}: qiaod's socket did not appear in 60 s")
        time.sleep(0.002)
    t_sock = clock()
    b.reload()
    pid = b.state["pids"][name]
    t_start = proc_start(pid) or t_call
    # the control: the same probe from host i's own namespace (over its bridge, no VXLAN): when the container answers at all
    local = b.spawn(["nsenter", f"--net=/run/netns/{b.host(name)['netns']}", "--", sys.executable, "-S", "-c", PROBER],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip

    def own_lease(ev: dict[str, Any]) -> bool:
        return "/subnets/" in ev["key"] and not ev["delete"] and isinstance(ev["value"], dict) and ev["value"].get("PublicIP") == address

    lease = watch.wait_for(mark, own_lease, 0.0)
    predicted = None
    everyone = {**probers, name: local}
    if lease:
        predicted = str(ipaddress.IPv4Network(_lease_subnet(lease)).network_address + 2)
    # the container, at once (retried while the network is not there yet)
    t_run = clock()
    tries = 0
    while True:
        tries += 1
        out = b.qiao(name, "run", "-d", "--network", NET, "--name", f"j{i}", "--", "python3", "-S", "-c", ECHO, check=False)
        if out.returncode == 0:
            break
        if clock() - t_run > 15:
            raise RuntimeError(f"{name}: qiao run failed: {out.stderr.strip()[-300:]}")
        time.sleep(0.05)
    t_ctr = clock()
    # Probing starts now, not before: a datagram to an address with no container yet would leave host i's
    # neighbour entry for it INCOMPLETE, and the container would be found only at the next ARP retry (1 s).
    if predicted:
        tell(everyone, predicted)
    info = b.inspect(name, f"j{i}")
    ip = info["NetworkSettings"]["Networks"][NET]["IPAddress"]
    if ip != predicted:
        tell(everyone, ip)
    if lease is None:
        lease = watch.wait_for(mark, own_lease, 5.0)
    reach: dict[str, Any] = {}
    for host, p in everyone.items():
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() == "ready":
            line = p.stdout.readline()
        try:
            reach[host] = json.loads(line)
        except ValueError:
            reach[host] = {"timeout": True}
    tell(everyone, "stop")
    for p in everyone.values():
        b.end(p)
    t_local = reach.pop(name).get("recv_at")
    subnet = _lease_subnet(lease) if lease else None
    route_at = {h: routes.when(h, subnet) if subnet else None for h in reach}
    routes.stop(b)
    t_routes = max((t for t in route_at.values() if t is not None), default=None) if all(route_at.values()) else None
    adder.join(30)
    ok = all("recv_at" in r for r in reach.values())
    t_all = max((r["recv_at"] for r in reach.values() if "recv_at" in r), default=None)
    sandboxes[name] = info["NetworkSettings"]["SandboxKey"]  # the next joins probe from this container

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t_start, 4)

    return {
        "hosts": i,
        "peers": len(reach),
        "all_reached": ok,
        "qiaod_pid": pid,
        "t_add_host_called": rel(t_call),
        "t_socket": rel(t_sock),
        "t_lease_published": rel(lease["t"]) if lease else None,
        "t_run_started": rel(t_run),
        "t_container_running": rel(t_ctr),
        "run_attempts": tries,
        "t_all_reachable": rel(t_all) if ok else None,
        "t_routes_everywhere": rel(t_routes),
        "per_host_route": {h: rel(t) for h, t in route_at.items()},
        "control_plane_s": round(t_routes - lease["t"], 4) if t_routes is not None and lease else None,
        "t_local_answer": rel(t_local),
        "t_first_reachable": rel(min((r["recv_at"] for r in reach.values() if "recv_at" in r), default=None)),
        "per_host": {h: rel(r.get("recv_at")) for h, r in reach.items()},
        "container_ip": ip,
        "predicted_ip": predicted,
        "total_s": rel(t_all) if ok else None,
        "after_container_s": round(t_all - t_ctr, 4) if ok and t_all is not None else None,
        "after_socket_s": round(t_all - t_sock, 4) if ok and t_all is not None else None,
        "after_local_answer_s": round(t_all - t_local, 4) if ok and t_all is not None and t_local is not None else None,
        "etcd_events_during_join": len(watch.since(mark)),
    }


def _lease_subnet(ev: dict[str, Any]) -> str:
    return str(ev["key"].rsplit("/", 1)[1].replace("-", "/"))


# -- (c) steady state -----------------------------------------------------------


def steady(b: Bench, watch: EtcdWatch, window: float) -> dict[str, Any]:
    hosts = len(b.state["hosts"])
    settled = watch.quiet(2.0, 5.0)
    rev0, m0, mark, t0 = b.revision(), b.metrics(), watch.mark(), time.monotonic()
    time.sleep(window)
    rev1, m1, events, t1 = b.revision(), b.metrics(), watch.since(mark), time.monotonic()
    minutes = (t1 - t0) / 60
    kvs = b.etcdctl("get", "--prefix", "/qiao/", "-w", "json").get("kvs") or []
    by_host: dict[str, int] = {}
    shared = 0
    for kv in kvs:
        key = base64.b64decode(kv["key"]).decode()
        try:
            value = json.loads(base64.b64decode(kv["value"]))
        except ValueError:
            value = None
        owner = value.get("PublicIP") or value.get("Host") if isinstance(value, dict) and ("/subnets/" in key or "/names/" in key) else None
        if owner:
            by_host[owner] = by_host.get(owner, 0) + 1
        else:
            shared += 1
    written: dict[str, int] = {}
    for ev in events:
        written[ev["key"]] = written.get(ev["key"], 0) + 1
    delta = {k: m1[k] - m0[k] for k in m0}
    return {
        "hosts": hosts,
        "window_s": round(t1 - t0, 2),
        "settled_before": settled,
        "revision_delta": rev1 - rev0,
        "key_writes_per_host_per_min": (rev1 - rev0) / hosts / minutes,
        "lease_renewals_per_host_per_min": delta["lease_renewed"] / hosts / minutes,
        "lease_keepalive_msgs_per_host_per_min": delta["lease_keepalive_msgs"] / hosts / minutes,
        "range_requests_per_host_per_min": delta["range"] / hosts / minutes,
        "txn_per_host_per_min": delta["txn"] / hosts / minutes,
        "put_per_host_per_min": delta["put"] / hosts / minutes,
        "metric_deltas": delta,
        "keys_total": len(kvs),
        "keys_shared": shared,
        "keys_per_host": by_host,
        "keys_written": dict(sorted(written.items(), key=lambda kv: -kv[1])[:20]),
    }


# -- (d) the cost of a start elsewhere --------------------------------------------


def start_cost(b: Bench, starts: int = 10) -> dict[str, Any]:
    others = [h["name"] for h in b.state["hosts"] if h["name"] != "host1"]

    def counters() -> dict[str, dict[str, int]]:
        out = {}
        for h in others:
            out[h] = b.info(h)["QiaoDrivers"]["overlay"]
        return out

    before = counters()
    names = [f"cost{i}" for i in range(starts)]
    for name in names:
        b.qiao("host1", "run", "-d", "--network", NET, "--name", name, "--", "sleep", "3600")
    time.sleep(2.0)  # let every watch deliver
    after = counters()
    for name in names:
        b.qiao("host1", "rm", "-f", name)
    reads = {h: after[h]["Reads"] - before[h]["Reads"] for h in others}
    events = {h: after[h]["Events"] - before[h]["Events"] for h in others}
    return {
        "hosts": len(others) + 1,
        "starts": starts,
        "reads_per_start_per_host": max(reads.values()) / starts,
        "events_per_start_per_host": sum(events.values()) / len(events) / starts,
        "reads": reads,
        "events": events,
    }


# -- report -----------------------------------------------------------------------


def f(v: Any) -> str:
    return f"{v + 0.0:7.3f}".replace("-0.000", " 0.000") if isinstance(v, float | int) else f"{'-':>7}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def report(res: dict[str, Any]) -> None:
    say()
    say(f"qiao overlay benchmark ({'quick' if res['quick'] else 'full'}; {res['machine']['cpus']} CPUs, "
        f"load {res['machine']['loadavg_start']} at start; {res['elapsed_s']:.0f} s)")  # fmt: skip
    a = res.get("throughput")
    if a:
        say(f"\n(a) TCP throughput host1 -> host2, iperf3 {a['runs']} x {a['duration_s']} s, Gbit/s")
        say(f"    {'path':44} {'median':>7} {'min':>7} {'max':>7}  mtu")
        labels = {
            "raw": "raw underlay (host ns eth0 -> eth0)",
            "floor": f"hand-made VXLAN pair (vni {FLOOR_VNI}, no bridge)",
            "replica": "hand-made veth+bridge+route over that pair",
            "overlay": "qiao overlay (container -> container)",
        }
        for m in ("raw", "floor", "replica", "overlay"):
            g = a["gbps"][m]
            say(f"    {labels[m]:44} {g['median']:7.2f} {g['min']:7.2f} {g['max']:7.2f}  {a['config'][m].get('mtu')}")
        say(
            f"    overlay / floor {a['overlay_vs_floor']:.3f}   overlay / hand-made containers {a['overlay_vs_replica']:.3f}   "
            f"hand-made containers / floor {a['replica_vs_floor']:.3f}"
        )
        say(f"    overlay / raw {a['overlay_vs_raw']:.3f}   floor / raw {a['floor_vs_raw']:.3f}")
    joins = res.get("convergence") or []
    if joins:
        say("\n(b) convergence: host N joins; s from its qiaod's start (/proc start time, 10 ms resolution)")
        say(f"    {'N':>3} {'socket':>7} {'lease':>7} {'routes':>7} {'running':>8} {'local':>7} {'all':>7}   "
            f"{'routes-lease':>12} {'all-local':>9}")  # fmt: skip
        for j in joins:
            say(f"    {j['hosts']:>3} {f(j['t_socket'])} {f(j['t_lease_published'])} {f(j['t_routes_everywhere'])} "
                f"{f(j['t_container_running']):>8} {f(j['t_local_answer'])} {f(j['t_all_reachable'])}   "
                f"{f(j['control_plane_s']):>12} {f(j['after_local_answer_s']):>9}")  # fmt: skip
        say("    socket: qiaod serving (start-up incl. its first overlay sync); lease: its subnet key seen in etcd;")
        say("    routes: the last other host has the route to it; running: `qiao run -d` returned;")
        say("    local: the echo answers in host N's own namespace (no VXLAN); all: the last other host gets an echo back")
    st = res.get("steady") or []
    if st:
        say("\n(c) steady state, lab idle (per host per minute)")
        say(f"    {'hosts':>5} {'window':>7} {'Δrev':>6} {'writes':>8} {'renewals':>9} {'ranges':>8} {'keys':>5} {'keys/host':>10}")
        for s in st:
            kph = statistics.fmean(s["keys_per_host"].values()) if s["keys_per_host"] else 0
            say(
                f"    {s['hosts']:>5} {s['window_s']:>6.0f}s {s['revision_delta']:>6} {s['key_writes_per_host_per_min']:>8.1f} "
                f"{s['lease_renewals_per_host_per_min']:>9.1f} {s['range_requests_per_host_per_min']:>8.1f} "
                f"{s['keys_total']:>5} {kph:>10.1f}"
            )
        for s in st:
            if s["keys_written"]:
                top = ", ".join(f"{k} x{n}" for k, n in list(s["keys_written"].items())[:3])
                say(f"    written at {s['hosts']} hosts: {top}")
    say("\nTargets")
    for t in res["targets"]:
        say(f"    {t['name']:52} {t['value']:>24}  {verdict(t['ok'])}")


def targets(res: dict[str, Any], expected_renewals: float) -> list[dict[str, Any]]:
    out = []
    a = res.get("throughput")
    if a:
        out.append({"name": f"(a) overlay >= {TARGET_THROUGHPUT:.0%} of hand-made VXLAN", "value": f"{a['overlay_vs_floor']:.1%}",
                    "ok": a["overlay_vs_floor"] >= TARGET_THROUGHPUT})  # fmt: skip
        out.append({"name": "    (info) overlay / the same topology made by hand", "value": f"{a['overlay_vs_replica']:.1%}", "ok": None})
    joins = res.get("convergence") or []
    for n in sorted({joins[0]["hosts"], joins[-1]["hosts"]} if joins else set()):
        j = next(x for x in joins if x["hosts"] == n)
        total = j["total_s"]
        value = f"{total:.3f} s" if total is not None else f"> {JOIN_TIMEOUT:.0f} s"
        out.append({"name": f"(b) convergence <= {TARGET_CONVERGENCE:g} s at {n} hosts", "value": value,
                    "ok": (total is not None and total <= TARGET_CONVERGENCE) if n == joins[-1]["hosts"] else None})  # fmt: skip
        if j["after_socket_s"] is not None:
            out.append({"name": f"    (info) from qiaod serving, at {n} hosts", "value": f"{j['after_socket_s']:.3f} s", "ok": None})
        if j["control_plane_s"] is not None:
            out.append({"name": f"    (info) lease -> route on every other host, at {n}", "value": f"{j['control_plane_s']:.3f} s",
                        "ok": None})  # fmt: skip
    st = res.get("steady") or []
    if st:
        writes = max(s["key_writes_per_host_per_min"] for s in st)
        renew = max(s["lease_renewals_per_host_per_min"] for s in st)
        ok = all(s["revision_delta"] == 0 for s in st) and renew <= 2 * expected_renewals
        out.append({"name": "(c) steady writes O(1)/host (lease renewals only)", "value": f"{writes:.1f} w + {renew:.1f} r /h/min",
                    "ok": ok})  # fmt: skip
    return out


# -- main -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overlay", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 x 3 s iperf3 runs, 20 s steady-state windows (< 4 min)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=int, help="s per iperf3 run (default 10, --quick 3)")
    p.add_argument("--max-hosts", type=int, default=10, help="hosts join one by one from 3 up to this (default 10)")
    p.add_argument("--steady", type=float, help="s per steady-state window (default 60, --quick 20)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: throughput,convergence,steady,cost")
    p.add_argument("--output", default=str(RESULTS))
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        say("bench.overlay: run as root")
        return 2
    for tool in ("iperf3", "etcd", "etcdctl", "nsenter", "ip"):
        if not shutil.which(tool):
            say(f"bench.overlay: {tool} not found")
            return 2
    duration = a.duration or (3 if a.quick else 10)
    window = a.steady or (20.0 if a.quick else 60.0)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    max_hosts = max(3, a.max_hosts)

    from qiao.drivers.overlay.manager import LEASE_TTL

    expected_renewals = 60 / (LEASE_TTL / 3)

    def on_signal(signum: int, _frame: Any) -> None:
        raise Interrupted(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a background job starts with it ignored
        signal.signal(sig, on_signal)

    started = time.monotonic()
    res: dict[str, Any] = {
        "quick": a.quick,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg())},
        "expected_lease_renewals_per_host_per_min": expected_renewals,
    }
    b = Bench()
    failed: str | None = None
    try:
        say(f"lab: qiao lab --root {b.root} up --hosts 2")
        b.up(2)
        res["lab_id"] = b.state["id"]
        say(f"lab {b.state['id']}: namespaces {', '.join(b.state['namespaces'])}")
        b.qiao("host1", "network", "create", "-d", "overlay", "--subnet", NET_RANGE, NET)
        watch = EtcdWatch(b)
        # one long-lived container per host (the probers' namespaces)
        sandboxes: dict[str, str] = {}
        for h in ("host1", "host2"):
            b.qiao(h, "run", "-d", "--network", NET, "--name", f"p{h[4:]}", "--", "sleep", "3600")
            sandboxes[h] = b.inspect(h, f"p{h[4:]}")["NetworkSettings"]["SandboxKey"]
        if "throughput" not in skip:
            say(f"(a) throughput: iperf3 {a.runs} x {duration} s per path")
            res["throughput"] = throughput(b, a.runs, duration)
        res["convergence"], res["steady"] = [], []
        for i in range(3, max_hosts + 1):
            if "convergence" in skip and i not in (3, max_hosts):
                continue
            j = join(b, i, watch, sandboxes)
            res["convergence"].append(j)
            say(f"  (b) host{i} joined: serving {j['t_socket']} s, all {j['peers']} peers reached at {j['t_all_reachable']} s")
            if "steady" not in skip and i in (3, max_hosts):
                say(f"  (c) steady state at {i} hosts: {window:.0f} s idle")
                res["steady"].append(steady(b, watch, window))
        if "convergence" in skip:
            res["convergence"] = []
        if "cost" not in skip:
            res["start_cost"] = start_cost(b)
            c = res["start_cost"]
            say(
                f"  (d) {c['starts']} starts on host1, {c['hosts']} hosts: {c['reads_per_start_per_host']:.2f} etcd reads "
                f"and {c['events_per_start_per_host']:.2f} watch events per start on each other host"
            )
    except (KeyboardInterrupt, Interrupted) as exc:
        failed = f"interrupted ({exc or 'Ctrl-C'})"
    except Exception as exc:
        failed = f"{type(exc).__name__}: {exc}"
    finally:
        say("cleaning up: own processes by PID, hand-made VXLAN devices, qiao lab down")
        b.close()
    res["elapsed_s"] = time.monotonic() - started
    res["machine"]["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    res["targets"] = targets(res, expected_renewals)
    if failed:
        res["error"] = failed
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    report(res)
    if failed:
        say(f"\nbench.overlay: stopped early: {failed}")
    say(f"\nJSON: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    with common.netns_run_dir_restored():
        sys.exit(main())
