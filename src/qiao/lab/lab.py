"""A lab of simulated hosts: an underlay bridge in a namespace of its own,
one network namespace per host on it (each with its own qiao root and
qiaod), and etcd on the underlay, so the overlay runs across "hosts"
exactly as it would across machines::

    underlay ns  qlab-ID-ul:   ul0 10.250.0.1/24  (etcd :2379)
                                 |  h1        |  h2  ...
    host ns      qlab-ID-host1: eth0 10.250.0.11   qlab-ID-host2: eth0 10.250.0.12 ...
                                 qiaod --root ROOT/hosts/host1 --cluster-store etcd://10.250.0.1:2379

The lab id is 8 hex digits, drawn again while any name it would give is in
use.  A namespace is made held under the lab root first (ROOT/netns/NAME,
ours by where it is), then published under /run/netns/NAME with an
exclusive create, and only then recorded in ROOT/lab.json; ``down`` removes
a /run/netns name only when it is the very namespace the lab holds, so a
failed ``up`` never removes another lab's namespace.  ``down`` also finds
the lab's processes by their command lines (the lab root's paths), so after
``up`` was killed anywhere, ``down`` still removes everything: processes
are checked before they are signalled, namespaces by their inode.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from typing import Any

from qiao.kernel import linux
from qiao.kernel import netns as qnetns

UNDERLAY = "10.250.0"
ETCD = f"{UNDERLAY}.1"
DEFAULT_ROOT = "/var/lib/qiao-lab"
BIN = os.path.dirname(sys.executable)
MAX_HOSTS = 50
ID_BYTES = 4  # 8 hex digits: the underlay's veth ends qlab<ID>h<N>, at most 15 bytes (IFNAMSIZ - 1) with N <= 99
ID_TRIES = 20


class NameTaken(Exception):
    """A name the lab would give is in use: not the lab's, left alone."""


def _new_id() -> str:
    return os.urandom(ID_BYTES).hex()


def _taken(lab_id: str) -> bool:
    """Whether any name of a lab with this id is in use: a namespace qlab-ID-*
    or a link qlab<ID>h* (the host ends of the underlay live in the lab's
    namespaces, but a lab that died may have left one anywhere)."""
    with contextlib.suppress(FileNotFoundError):
        if any(e.startswith(f"qlab-{lab_id}-") for e in os.listdir(qnetns.NETNS_RUN_DIR)):
            return True
    with contextlib.suppress(FileNotFoundError):
        return any(e.startswith(f"qlab{lab_id}h") for e in os.listdir("/sys/class/net"))
    return False


def _share_run_dir() -> None:
    """Make /run/netns a shared mount point, as iproute2 does before its first
    namespace (so namespaces published there show in every mount namespace)."""
    os.makedirs(qnetns.NETNS_RUN_DIR, exist_ok=True)
    try:
        linux.mount("", qnetns.NETNS_RUN_DIR, "none", linux.MS_SHARED | linux.MS_REC)
    except OSError:  # not a mount point yet: bind it onto itself first
        linux.mount(qnetns.NETNS_RUN_DIR, qnetns.NETNS_RUN_DIR, "none", linux.MS_BIND | linux.MS_REC)
        linux.mount("", qnetns.NETNS_RUN_DIR, "none", linux.MS_SHARED | linux.MS_REC)


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

    def refusal(self, hosts: int) -> str | None:
        """Why ``up`` must not start (checked before anything is made, so that
        the clean-up of a failed ``up`` never touches an existing lab)."""
        if os.geteuid() != 0:
            return "qiao lab: must run as root (it makes namespaces, links and processes)"
        if self.state:
            return f"qiao lab: a lab already exists under {self.root} (qiao lab down first)"
        if not 1 <= hosts <= MAX_HOSTS:
            return f"qiao lab: --hosts must be between 1 and {MAX_HOSTS}"
        return None

    def up(self, hosts: int) -> None:
        from pyroute2 import IPRoute

        why = self.refusal(hosts)
        if why:
            raise SystemExit(why)
        self.state = {
            "id": "",
            "underlay": "",
            "netns_dir": os.path.join(self.root, "netns"),  # where the lab holds its namespaces (see _make_namespace)
            "namespaces": [],  # published under /run/netns by this lab, recorded after it made them
            "hosts": [],
            "pids": {},
            "run_dir_was_mounted": qnetns.run_dir_mounted(),
        }
        self._save()
        _share_run_dir()
        for _ in range(ID_TRIES):
            lab_id = _new_id()
            if _taken(lab_id):
                continue
            ul = f"qlab-{lab_id}-ul"
            self.state["id"], self.state["underlay"] = lab_id, ul
            try:
                self._make_namespace(ul)
            except NameTaken:  # made by someone else since _taken looked
                self.state["id"], self.state["underlay"] = "", ""
                continue
            break
        else:
            raise SystemExit(f"qiao lab: no free lab id in {ID_TRIES} tries (namespaces qlab-ID-* in use)")
        self._save()
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

    def _make_namespace(self, name: str) -> None:
        """Make the network namespace /run/netns/NAME, and record it once made.

        It is made held at ROOT/netns/NAME (under the lab root: the lab's by
        where it is, whatever happens next), then published with an exclusive
        create of /run/netns/NAME (:class:`NameTaken` when that exists: it is
        someone else's, left alone) and a bind mount.  Between the two the
        name is recorded as ``publishing``: ``down`` removes it only when it
        is the namespace held under the root, or the empty file of the create.
        """
        hold = os.path.join(self.state["netns_dir"], name)
        os.makedirs(self.state["netns_dir"], exist_ok=True)
        qnetns.create(hold)
        self.state["publishing"] = name
        self._save()
        path = os.path.join(qnetns.NETNS_RUN_DIR, name)
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
        except FileExistsError:
            del self.state["publishing"]
            self._save()
            qnetns.destroy(hold)
            raise NameTaken(name) from None
        try:
            linux.mount(hold, path, None, linux.MS_BIND)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self.state["namespaces"].append(name)
        del self.state["publishing"]
        self._save()

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
        import urllib.request  # here: ~19 ms that every `qiao lab exec` would pay at import

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
        from pyroute2 import IPRoute

        name, ns = f"host{i}", f"qlab-{self.state['id']}-host{i}"
        address = f"{UNDERLAY}.{10 + i}"
        host_root = os.path.join(self.root, "hosts", name)
        try:
            self._make_namespace(ns)
        except NameTaken:
            raise SystemExit(f"qiao lab: namespace {ns} exists and is not this lab's (left alone)") from None
        self.state["hosts"].append({"name": name, "netns": ns, "address": address, "root": host_root})
        self._save()
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
        from qiao.drivers.overlay.store import ClusterStore
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

    def topology(self) -> dict[str, Any]:
        """Every host's ``qiao topology`` model, and the underlay between them (a view for qiao.cli.netview)."""
        from qiao.cli.client import Client, DaemonError, Unreachable
        from qiao.paths import Root

        if not self.state:
            raise SystemExit(f"qiao lab: no lab under {self.root}")
        names = {h["address"]: h["name"] for h in self.state["hosts"]}
        models = []
        for h in self.state["hosts"]:
            try:
                model = Client(Root.resolve(h["root"]), autostart=False).request("GET", "/qiao/topology")
            except (Unreachable, DaemonError) as exc:
                raise SystemExit(f"qiao lab: {h['name']}: {exc}") from None
            model["label"] = f"{h['name']} ({h['netns']})"
            for net in model["networks"]:
                for peer in (net.get("vxlan") or {}).get("peers", []):
                    if peer["host"] in names:
                        peer["host"] = f"{names[peer['host']]} {peer['host']}"
            models.append(model)
        underlay = {
            "lab": self.state["id"],
            "bridge": "ul0",
            "address": f"{ETCD}/24",
            "namespace": self.state["underlay"],
            "etcd": f"{ETCD}:2379",
            "hosts": [{"label": h["name"], "address": h["address"]} for h in self.state["hosts"]],
        }
        return {"hosts": models, "underlay": underlay}

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
        # the qiaods first, all at once, while etcd still answers (each revokes its lease on the way out), then etcd
        daemons, etcd = _lab_processes(self.root, self.state.get("pids", {}))
        for group in (daemons, etcd):
            for name, pid in _stop_all(group, self.root):
                _say(f"stopped {name} (pid {pid})")
        left = _container_processes(self.root)  # of hosts whose qiaod was dead: nobody removed them
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            _say(f"killed {len(left)} container processes left by dead daemons")
        hosts_dir = os.path.join(self.root, "hosts")
        for host in sorted(os.listdir(hosts_dir)) if os.path.isdir(hosts_dir) else []:
            netns_dir = os.path.join(hosts_dir, host, "run", "netns")
            if os.path.isdir(netns_dir):
                for entry in os.listdir(netns_dir):
                    qnetns.destroy(os.path.join(netns_dir, entry))
        self._remove_namespaces()
        qnetns.release_run_dir(self.state.get("run_dir_was_mounted", True))
        shutil.rmtree(self.root, ignore_errors=True)
        _say(f"lab {self.state.get('id')} down: namespaces, links, etcd and daemons removed")
        self.state = {}

    def _remove_namespaces(self) -> None:
        """The /run/netns names this lab published, each only if it is the namespace the
        lab holds under its root; then the held ones (their links go with them)."""
        held = self.state.get("netns_dir")
        names = list(reversed(self.state.get("namespaces", [])))
        publishing = self.state.get("publishing")
        if publishing and publishing not in names:
            names.append(publishing)
        for name in names:
            path = os.path.join(qnetns.NETNS_RUN_DIR, name)
            if held is None:  # a lab made before namespaces were held under its root
                with contextlib.suppress(OSError):
                    linux.umount(path)
                with contextlib.suppress(OSError):
                    os.unlink(path)
            elif _same_namespace(path, os.path.join(held, name)):
                qnetns.destroy(path)
            elif name == publishing and _empty_file(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)  # up was stopped between the exclusive create and the bind mount
            elif os.path.lexists(path):
                _say(f"left {path}: not the namespace this lab made")
        if held and os.path.isdir(held):
            for entry in os.listdir(held):
                qnetns.destroy(os.path.join(held, entry))


def _same_namespace(path: str, held: str) -> bool:
    """Whether ``path`` is a bind mount of the very namespace held at ``held``."""
    if not (linux.is_netns_mount(path) and linux.is_netns_mount(held)):
        return False
    a, b = os.stat(path), os.stat(held)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _empty_file(path: str) -> bool:
    """An empty regular file, not a mount point: the stub of an unfinished publish."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0 and not linux.is_netns_mount(path)


def _alive(pid: int, root: str) -> bool:
    """Whether ``pid`` runs and its command line names the lab root or a path under it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    mine = os.fsencode(root)
    return any(a == mine or a.startswith(mine + b"/") or a.endswith(b"=" + mine) or b"=" + mine + b"/" in a for a in argv)


def _lab_processes(root: str, recorded: dict[str, int]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """([(host, pid)] of the lab's qiaods, [("etcd", pid)]): those recorded in its
    state and those found by their command line naming the lab's own paths
    (``--root ROOT/hosts/HOST``, ``--data-dir ROOT/etcd``), for ``up`` killed
    between starting one and recording it."""
    daemons = [(n, p) for n, p in recorded.items() if n != "etcd"]
    etcd = [(n, p) for n, p in recorded.items() if n == "etcd"]
    known = set(recorded.values())
    hosts, data = os.path.join(root, "hosts"), os.path.join(root, "etcd")
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in known or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [os.fsdecode(a) for a in f.read().split(b"\0")]
        except OSError:
            continue
        pairs = list(itertools.pairwise(argv))
        host = next((os.path.basename(v) for k, v in pairs if k == "--root" and os.path.dirname(v) == hosts), None)
        if host:
            daemons.append((host, int(entry)))
        elif ("--data-dir", data) in pairs:
            etcd.append(("etcd", int(entry)))
    return daemons, etcd


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


def _stop_all(procs: list[tuple[str, int]], root: str) -> list[tuple[str, int]]:
    """End processes the lab started (each checked by its command line naming the
    lab root): SIGTERM to all, then wait for all (10 s, then SIGKILL); those stopped."""
    alive = [(n, p) for n, p in procs if _alive(p, root)]
    for _, pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for grace, sig in ((10.0, signal.SIGKILL), (5.0, None)):
        deadline = time.monotonic() + grace
        while True:
            for _, pid in alive:  # reap those that are ours (after a failed up)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            running = [pid for _, pid in alive if _alive(pid, root)]
            if not running or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if not running or sig is None:
            break
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    return alive


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
    topo = sub.add_parser("topology", help="every host's qiao topology and the underlay between them")
    topo.add_argument("--format", choices=["text", "svg", "dot", "json"], default="text")
    tr = sub.add_parser("trace", help="qiao trace across hosts: traced on the host that sends and on the host it reaches")
    tr.add_argument("--json", action="store_true", help="the hops and the result as JSON")
    tr.add_argument("host", help="the lab host SRC is on")
    tr.add_argument("source", help="as for qiao trace: a container, host, outside or an address (on HOST)")
    tr.add_argument("destination", help="DST[:PORT][/tcp|udp]: a container on any host, a host's name or an address")
    sub.add_parser("down")
    a = p.parse_args(argv)
    lab = Lab(a.root)
    if a.action == "up":
        why = lab.refusal(a.hosts)
        if why:
            raise SystemExit(why)
        try:
            lab.up(a.hosts)
        except BaseException as exc:
            _say("qiao lab: up failed; removing what was made")
            lab.down()
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                raise
            raise SystemExit(f"qiao lab up: {exc}") from None
    elif a.action == "exec":
        cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
        if not cmd:
            raise SystemExit("qiao lab exec: no command given")
        lab.exec(a.host, cmd)
    elif a.action == "status":
        lab.status()
    elif a.action == "topology":
        from qiao.cli import netview

        view = lab.topology()
        draw = {"svg": netview.topology_svg, "dot": netview.topology_dot, "json": lambda v: json.dumps(v, indent=2) + "\n"}.get(a.format)
        sys.stdout.write(draw(view) if draw else netview.topology_text(view, color=sys.stdout.isatty()))
    elif a.action == "trace":
        return _trace(lab, a)
    else:
        lab.down()
    return 0


def _trace(lab: Lab, a: Any) -> int:
    """Exit status 0 when the probe was delivered, 1 when not (as qiao trace)."""
    from qiao.cli import netview
    from qiao.cli.client import DaemonError, Unreachable
    from qiao.lab.trace import LabTraceError, trace

    if not lab.state:
        raise SystemExit(f"qiao lab: no lab under {lab.root}")
    try:
        result = trace(lab, a.host, a.source, a.destination)
    except (DaemonError, Unreachable, LabTraceError) as exc:
        raise SystemExit(f"qiao lab trace: {exc}") from None
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if a.json else netview.trace_text(result, color=sys.stdout.isatty()))
    return 0 if result["result"]["status"] == "delivered" else 1
