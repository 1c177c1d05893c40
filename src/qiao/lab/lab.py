"""A lab of simulated hosts: an underlay bridge in a namespace of its own,
one network namespace per host on it (each with its own qiao root and
qiaod), and etcd on the underlay, so the overlay runs across "hosts"
exactly as it would across machines::

    underlay ns  qlab-ID-ul:   ul0 10.250.0.1/24  (etcd :2379)
                                 |  h1        |  h2  ...
    host ns      qlab-ID-host1: eth0 10.250.0.11   qlab-ID-host2: eth0 10.250.0.12 ...
                                 qiaod --root ROOT/hosts/host1 --cluster-store etcd://10.250.0.1:2379

Everything the lab makes is recorded in ROOT/lab.json *before* it is made,
so ``down`` removes it all, also after ``up`` crashed half-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

from qiao.kernel import netns as qnetns

UNDERLAY = "10.250.0"
ETCD = f"{UNDERLAY}.1"
DEFAULT_ROOT = "/var/lib/qiao-lab"
BIN = os.path.dirname(sys.executable)


def _say(text: str) -> None:
    print(text, flush=True)


class Lab:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.state_file = os.path.join(self.root, "lab.json")
        self.state: dict[str, Any] = {}
        if os.path.exists(self.state_file):
            with open(self.state_file) as f:
                self.state = json.load(f)

    def _save(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=2)
        os.replace(tmp, self.state_file)

    # -- up --------------------------------------------------------------

    def up(self, hosts: int) -> None:
        from pyroute2 import IPRoute, netns

        if self.state:
            raise SystemExit(f"qiao lab: a lab already exists under {self.root} (qiao lab down first)")
        if not 1 <= hosts <= 50:
            raise SystemExit("qiao lab: --hosts must be between 1 and 50")
        lab_id = os.urandom(2).hex()
        ul = f"qlab-{lab_id}-ul"
        self.state = {
            "id": lab_id,
            "underlay": ul,
            "namespaces": [ul],
            "hosts": [],
            "pids": {},
            "run_dir_was_mounted": qnetns.run_dir_mounted(),
        }
        self._save()
        netns.create(ul)
        with qnetns.entered(f"/run/netns/{ul}"), IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("add", ifname="ul0", kind="bridge")
            br = ipr.link_lookup(ifname="ul0")[0]
            ipr.addr("add", index=br, address=ETCD, prefixlen=24)
            ipr.link("set", index=br, state="up")
        _say(f"underlay: namespace {ul}, bridge ul0 {ETCD}/24")
        self._start_etcd(ul)
        _say(f"etcd: {ETCD}:2379 (data in {self.root}/etcd)")
        for i in range(1, hosts + 1):
            self.add_host(i)
        _say(f"lab {lab_id} up: {hosts} hosts; try: qiao lab exec host1 -- qiao network create -d overlay --subnet 10.244.0.0/16 ov")

    def _start_etcd(self, ul: str) -> None:
        data = os.path.join(self.root, "etcd")
        url = f"http://{ETCD}:2379"
        with open(os.path.join(self.root, "etcd.log"), "ab") as log:
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ul}", "--", "etcd", "--name", "lab", "--data-dir", data,
                 "--listen-client-urls", url, "--advertise-client-urls", url,
                 "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                 "--initial-cluster", "lab=http://127.0.0.1:2380"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        self.state["pids"]["etcd"] = proc.pid
        self._save()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with qnetns.entered(f"/run/netns/{ul}"), urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                    if b"true" in r.read():
                        return
            except OSError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"qiao lab: etcd exited; see {self.root}/etcd.log")
            time.sleep(0.1)
        raise SystemExit(f"qiao lab: etcd did not answer; see {self.root}/etcd.log")

    def add_host(self, i: int) -> None:
        from pyroute2 import IPRoute, netns

        name, ns = f"host{i}", f"qlab-{self.state['id']}-host{i}"
        address = f"{UNDERLAY}.{10 + i}"
        host_root = os.path.join(self.root, "hosts", name)
        self.state["namespaces"].append(ns)
        self.state["hosts"].append({"name": name, "netns": ns, "address": address, "root": host_root})
        self._save()
        netns.create(ns)
        with IPRoute() as ipr:
            fd = os.open(f"/run/netns/{self.state['underlay']}", os.O_RDONLY)
            hfd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                ipr.link("add", ifname=f"qlab{self.state['id']}h{i}", kind="veth", net_ns_fd=fd, peer={"ifname": "eth0", "net_ns_fd": hfd})
            finally:
                os.close(fd)
                os.close(hfd)
        with qnetns.entered(f"/run/netns/{self.state['underlay']}"), IPRoute() as ipr:
            port = ipr.link_lookup(ifname=f"qlab{self.state['id']}h{i}")[0]
            ipr.link("set", index=port, master=ipr.link_lookup(ifname="ul0")[0], state="up")
        with qnetns.entered(f"/run/netns/{ns}"), IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=address, prefixlen=24)
            ipr.link("set", index=eth0, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=ETCD)
        os.makedirs(host_root, exist_ok=True)
        resolv = os.path.join(self.root, "resolv.conf")
        if not os.path.exists(resolv):
            with open(resolv, "w") as f:
                f.write(f"nameserver {ETCD}\n")
        with open(os.path.join(host_root, "qiaod.log"), "ab") as log:
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", "--", os.path.join(BIN, "qiaod"), "--root", host_root,
                 "--cluster-store", f"etcd://{ETCD}:2379", "--cluster-advertise", "eth0", "--resolv-conf", resolv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        self.state["pids"][name] = proc.pid
        self._save()
        sock = os.path.join(host_root, "run", "qiao.sock")
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"qiao lab: qiaod on {name} did not start; see {host_root}/qiaod.log")
            time.sleep(0.05)
        _say(f"{name}: namespace {ns}, eth0 {address}/24, qiaod pid {proc.pid}, root {host_root}")

    # -- exec / status ---------------------------------------------------

    def host(self, name: str) -> dict[str, Any]:
        for h in self.state.get("hosts", []):
            if h["name"] == name:
                return h
        raise SystemExit(f"qiao lab: no host {name!r} (have: {', '.join(h['name'] for h in self.state.get('hosts', [])) or 'none'})")

    def exec(self, name: str, cmd: list[str]) -> None:
        h = self.host(name)
        env = dict(os.environ, QIAO_ROOT=h["root"], PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
        os.execvpe("nsenter", ["nsenter", f"--net=/run/netns/{h['netns']}", "--", *cmd], env)

    def status(self) -> None:
        from qiao.cli.client import Client, DaemonError, Unreachable
        from qiao.overlay.store import ClusterStore
        from qiao.paths import Root

        if not self.state:
            _say(f"no lab under {self.root}")
            return
        leases: dict[str, list[str]] = {}
        try:
            with qnetns.entered(f"/run/netns/{self.state['underlay']}"):
                dump = ClusterStore(f"etcd://{ETCD}:2379").dump()
            for net, st in dump.items():
                for subnet, rec in st["subnets"].items():
                    leases.setdefault(rec["PublicIP"], []).append(f"{net}:{subnet} vtep {rec['BackendData']['VtepMAC']}")
        except Exception as exc:
            _say(f"etcd: unreachable ({exc})")
        _say(f"lab {self.state['id']} under {self.root}; etcd {ETCD}:2379 pid {self.state['pids'].get('etcd')}")
        _say(f"{'HOST':8} {'ADDRESS':13} {'QIAOD':8} {'CONTAINERS':11} LEASES")
        for h in self.state["hosts"]:
            pid = self.state["pids"].get(h["name"])
            try:
                rows = Client(Root.resolve(h["root"]), autostart=False).request("GET", "/containers/json")
                running = str(len(rows))
            except (Unreachable, DaemonError):
                running = "-"
            alive = "up" if pid and _alive(pid, h["root"]) else "down"
            _say(f"{h['name']:8} {h['address']:13} {alive:8} {running:11} {'; '.join(leases.get(h['address'], [])) or '-'}")

    # -- down ------------------------------------------------------------

    def down(self) -> None:
        from qiao.cli.client import Client, DaemonError, Unreachable
        from qiao.paths import Root

        if not self.state:
            _say(f"no lab under {self.root}")
            return
        for h in self.state.get("hosts", []):
            client = Client(Root.resolve(h["root"]), autostart=False)
            with contextlib.suppress(Unreachable, DaemonError, OSError):
                ids = [c["Id"] for c in client.request("GET", "/containers/json", {"all": 1})]
                for cid in ids:
                    client.request("DELETE", f"/containers/{cid}", {"force": 1})
        for name, pid in self.state.get("pids", {}).items():
            _stop(pid, self.root)
            _say(f"stopped {name} (pid {pid})")
        left = _container_processes(self.root)  # of hosts whose qiaod was dead: nobody removed them
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            _say(f"killed {len(left)} container processes left by dead daemons")
        for h in self.state.get("hosts", []):
            netns_dir = os.path.join(h["root"], "run", "netns")
            if os.path.isdir(netns_dir):
                for entry in os.listdir(netns_dir):
                    qnetns.destroy(os.path.join(netns_dir, entry))
        from pyroute2 import netns

        for ns in reversed(self.state.get("namespaces", [])):
            with contextlib.suppress(OSError):
                netns.remove(ns)
        qnetns.release_run_dir(self.state.get("run_dir_was_mounted", True))
        shutil.rmtree(self.root, ignore_errors=True)
        _say(f"lab {self.state.get('id')} down: namespaces, links, etcd and daemons removed")
        self.state = {}


def _alive(pid: int, root: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return root.encode() in f.read()
    except OSError:
        return False


def _container_processes(root: str) -> list[int]:
    """The lab's container shims (their command line names the lab's host roots)
    and every process under them, children first."""
    marker = (os.path.join(root, "hosts") + os.sep).encode()
    found: list[int] = []

    def below(pid: int) -> list[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            return []
        return [p for c in children for p in below(c)] + children

    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if b"qiao.runtime.shim" in cmdline and marker in cmdline:
                found += below(int(entry)) + [int(entry)]
    return found


def _stop(pid: int, root: str) -> None:
    """End a process the lab started (checked by its command line naming the lab root)."""
    if not _alive(pid, root):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid, root) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if _alive(pid, root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="qiao lab", description="simulated hosts on one kernel")
    p.add_argument("--root", default=os.environ.get("QIAO_LAB_ROOT", DEFAULT_ROOT))
    sub = p.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up")
    up.add_argument("--hosts", type=int, default=3)
    ex = sub.add_parser("exec")
    ex.add_argument("host")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("status")
    sub.add_parser("down")
    a = p.parse_args(argv)
    lab = Lab(a.root)
    if a.action == "up":
        try:
            lab.up(a.hosts)
        except BaseException:
            _say("qiao lab: up failed; removing what was made")
            lab.down()
            raise
    elif a.action == "exec":
        cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
        if not cmd:
            raise SystemExit("qiao lab exec: no command given")
        lab.exec(a.host, cmd)
    elif a.action == "status":
        lab.status()
    else:
        lab.down()
    return 0
