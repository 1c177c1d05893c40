"""bench/cni: one pod's CNI ADD + DEL with one port mapping, qiao's plugin against the reference chain.

``python -m bench.cni [--sizes 0,100,500] [--reps 20] [--warmup 2] [--peers chain,qiao]`` (root).

Peers, each a conflist run by the same small libcni-like runner (``Runner``):

* ``chain`` -- Debian's containernetworking-plugins from /usr/lib/cni:
  ``bridge`` (isGateway, ipMasq, hairpinMode; ipam ``host-local``) then
  ``portmap`` (iptables), cniVersion 1.0.0.
* ``qiao``  -- qiao's plugin (``.venv/bin/qiao-cni``, linked as ``qiao`` into a
  bin directory of the run's own), a client of a qiaod the benchmark starts
  with a root of its own; the conflist ``qiao cni install`` would write.

A peer whose binaries are missing is skipped with a note.  Each peer lives in
a throw-away network namespace of its own (``<run>-chain``, ``<run>-qiao``:
qiaod listens to every nftables notification in its namespace, so the
chain's iptables-nft commits must not reach it), plugins are exec'd from
there, as a runtime on that host would.  Pods are network namespaces
``<run>-c<k>`` / ``<run>-q<k>``; making and removing them is not timed.

Per size N: ADD N pods (untimed, distinct host ports), then R repetitions
of ADD + DEL of one more pod, the peers interleaved (their order alternating)
so machine noise hits both.  Printed: median ADD, DEL and ADD+DEL per peer
and size, qiao/chain per size, each peer's growth (largest N over the
smallest), and the targets: qiao <= 0.5x the chain at every size; qiao at the
largest size <= 1.3x its own figure at the smallest.  A miss prints FAIL,
never a failing exit status.

At the end, also after a failure, Ctrl-C, SIGTERM or SIGHUP (then ignored
until done): a DEL for every pod still attached, qiaod stopped (by PID),
every pod and peer namespace deleted -- the chain's iptables rules live in
its peer namespace and go with it, which the run verifies (no process or
mount still holds the namespace; no rule naming this run in the machine's
own iptables) -- and the temporary directory removed.  Results: a table on
stdout, JSON in bench/results/cni.json.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from qiao.kernel import netns

RUN = "qc" + secrets.token_hex(2)  # prefix of every object made here
BIN = Path(sys.executable).parent
QIAOD, QIAO_CNI = str(BIN / "qiaod"), str(BIN / "qiao-cni")
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "cni.json"
CNI_DIR = "/usr/lib/cni"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PEERS = ("chain", "qiao")
CHAIN_SUBNET, QIAO_SUBNET = "10.88.0.0/16", "10.89.0.0/16"
PORT_BASE = {"chain": 20000, "qiao": 40000}  # each pod its own host port, from here up
MAX_SIZE = 10000
TARGET_RATIO, TARGET_FLAT = 0.5, 1.3
PLUGIN_TIMEOUT = 120


def log(msg: str) -> None:
    print(f"[bench.cni {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the runner: a conflist exec'd as libcni does --------------------------------


class CniError(RuntimeError):
    """A plugin that failed: which, its exit status, and its error JSON (code, msg, details)."""


@dataclasses.dataclass
class Pod:
    name: str  # also its container id and its namespace's name in /run/netns
    port: int  # its one host port
    result: dict[str, Any] | None = None  # the ADD result, cached for the DEL

    @property
    def netns(self) -> str:
        return f"{netns.NETNS_RUN_DIR}/{self.name}"

    def capability_args(self) -> dict[str, Any]:
        return {"portMappings": [{"hostPort": self.port, "containerPort": 80, "protocol": "tcp"}]}


class Runner:
    """libcni's AddNetworkList / DelNetworkList for one conflist file.

    ADD runs the plugins in order, each with the list's ``name`` and
    ``cniVersion``, a ``runtimeConfig`` of the capability arguments it
    declares in ``capabilities``, and (after the first) the previous
    plugin's result as ``prevResult``; the last result is the list's.  DEL
    runs them in reverse order, each with that cached result as
    ``prevResult``.  Plugins are found in the bin directories (``CNI_PATH``)
    and exec'd with libcni's environment; a non-zero exit raises
    :class:`CniError` with the plugin's error JSON."""

    def __init__(self, conflist: str, bin_dirs: list[str]):
        self.conf = json.loads(Path(conflist).read_text())
        self.bin_dirs = bin_dirs
        self.plugins = [(plugin, self.find(plugin["type"])) for plugin in self.conf["plugins"]]

    def find(self, kind: str) -> str:
        for d in self.bin_dirs:
            path = os.path.join(d, kind)
            if os.access(path, os.X_OK):
                return path
        raise CniError(f"failed to find plugin {kind!r} in path {self.bin_dirs}")

    def stdin(self, plugin: dict[str, Any], capability_args: dict[str, Any], prev: dict[str, Any] | None) -> bytes:
        conf = {**plugin, "name": self.conf["name"], "cniVersion": self.conf["cniVersion"]}
        declared = plugin.get("capabilities") or {}
        runtime = {k: v for k, v in capability_args.items() if declared.get(k)}
        if runtime:
            conf["runtimeConfig"] = runtime
        if prev is not None:
            conf["prevResult"] = prev
        return json.dumps(conf).encode()

    def exec(self, path: str, command: str, pod: Pod, stdin: bytes) -> dict[str, Any]:
        env = {
            "PATH": SYSTEM_PATH,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": pod.name,
            "CNI_NETNS": pod.netns,
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": "IgnoreUnknown=1",
            "CNI_PATH": ":".join(self.bin_dirs),
        }
        proc = subprocess.run([path], input=stdin, env=env, capture_output=True, timeout=PLUGIN_TIMEOUT)
        out = proc.stdout.decode(errors="replace").strip()
        what = f"{os.path.basename(path)} {command} {pod.name}"
        if proc.returncode != 0:
            try:
                err = json.loads(out)
                detail = f"code {err.get('code')}: {err.get('msg')}" + (f" ({err['details']})" if err.get("details") else "")
            except (ValueError, AttributeError):  # not CNI's error JSON: the end of what it wrote, on one line
                text = (out or proc.stderr.decode(errors="replace")).strip().splitlines()
                detail = " | ".join(line.strip() for line in text[-3:])[-600:] or "no output"
            raise CniError(f"{what} exited {proc.returncode}: {detail}")
        if not out:
            return {}
        try:
            result = json.loads(out)
        except ValueError:
            raise CniError(f"{what}: the result is not JSON: {out[:200]!r}") from None
        if not isinstance(result, dict):
            raise CniError(f"{what}: the result is not a JSON object: {out[:200]!r}")
        return result

    def add(self, pod: Pod) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        for plugin, path in self.plugins:
            prev = self.exec(path, "ADD", pod, self.stdin(plugin, pod.capability_args(), prev))
        return prev or {}

    def delete(self, pod: Pod) -> None:
        for plugin, path in reversed(self.plugins):
            self.exec(path, "DEL", pod, self.stdin(plugin, pod.capability_args(), pod.result))

    def versions(self) -> dict[str, str]:
        """Each plugin's answer to CNI_COMMAND=VERSION."""
        out = {}
        for plugin, path in self.plugins:
            try:
                proc = subprocess.run(
                    [path], input=b"{}", env={"PATH": SYSTEM_PATH, "CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30
                )
                out[plugin["type"]] = (proc.stdout or proc.stderr).decode(errors="replace").strip()[:300]
            except (OSError, subprocess.SubprocessError) as exc:
                out[plugin["type"]] = f"VERSION failed: {exc}"
        return out


# -- the peers ---------------------------------------------------------------------


class Peer:
    """One conflist in its own namespace, with the pods it holds."""

    def __init__(self, name: str):
        self.name = name
        self.ns = f"{RUN}-{name}"
        self.ns_path = f"{netns.NETNS_RUN_DIR}/{self.ns}"
        self.runner: Runner | None = None
        self.attached: list[Pod] = []  # ADD done or begun, no DEL yet
        self.retired: list[Pod] = []  # DEL done, the namespace still to remove
        self.ports = itertools.count(PORT_BASE[name])
        self.count = 0
        self.error = ""

    def new_pod(self) -> Pod:
        """A pod namespace (untimed)."""
        self.count += 1
        pod = Pod(f"{RUN}-{self.name[0]}{self.count}", next(self.ports))
        netns.create(pod.netns)
        return pod

    def add(self, pod: Pod) -> float:
        assert self.runner is not None
        self.attached.append(pod)  # from here on the clean-up owes it a DEL
        t = time.perf_counter()
        pod.result = self.runner.add(pod)
        return (time.perf_counter() - t) * 1e3

    def delete(self, pod: Pod) -> float:
        assert self.runner is not None
        t = time.perf_counter()
        self.runner.delete(pod)
        ms = (time.perf_counter() - t) * 1e3
        self.attached.remove(pod)
        self.retired.append(pod)
        return ms

    def remove_retired(self) -> None:
        for pod in self.retired:
            netns.destroy(pod.netns)
        self.retired.clear()


class Lab:
    """Everything one run made, so that all of it can be removed."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix=f"{RUN}-")
        self.peers: list[Peer] = []
        self.inodes: dict[str, int] = {}  # the peers' namespaces, by name
        self.daemon: subprocess.Popen[bytes] | None = None
        self.qiao_root = ""

    def peer(self, name: str) -> Peer:
        p = Peer(name)
        common.run(["ip", "netns", "add", p.ns])
        self.inodes[p.ns] = os.stat(p.ns_path).st_ino
        common.run(["ip", "-n", p.ns, "link", "set", "lo", "up"])
        self.peers.append(p)
        return p

    def write_conflist(self, name: str, conf: dict[str, Any]) -> str:
        conf_dir = os.path.join(self.tmp, "net.d")
        os.makedirs(conf_dir, exist_ok=True)
        path = os.path.join(conf_dir, f"{name}.conflist")
        Path(path).write_text(json.dumps(conf, indent=2) + "\n")
        return path

    def start_qiaod(self, peer: Peer) -> None:
        self.qiao_root = os.path.join(self.tmp, "qiao-root")
        self.daemon = common.start_qiaod(QIAOD, self.qiao_root, peer.ns_path, os.path.join(self.tmp, "qiaod.log"))

    def cleanup(self) -> dict[str, Any]:
        """DEL every pod still attached, then remove everything; what was found on the way."""
        out: dict[str, Any] = {"del": {}, "left_after_del": {}}
        for peer in self.peers:
            if peer.attached and peer.runner is not None:
                n, failed, in_a_row, first, untried = len(peer.attached), 0, 0, "", 0
                log(f"clean-up: DEL of the {n} pods {peer.name} holds")
                with netns.entered(peer.ns_path):
                    for pod in reversed(peer.attached[:]):
                        if in_a_row == 3:  # say qiaod is gone: the namespaces go anyway, with what the DELs left
                            untried = len(peer.attached)
                            break
                        try:
                            peer.delete(pod)
                            in_a_row = 0
                        except Exception as exc:
                            failed, in_a_row, first = failed + 1, in_a_row + 1, first or str(exc)
                            peer.attached.remove(pod)
                out["del"][peer.name] = {"pods": n, "failed": failed, "untried": untried, **({"first_error": first} if first else {})}
            with contextlib.suppress(Exception), netns.entered(peer.ns_path):
                out["left_after_del"][peer.name] = leftovers(peer.name)
        if self.daemon is not None:
            common.stop(self.daemon, 20)
        if self.qiao_root:
            common.kill_qiaod(self.qiao_root)  # one a plugin may have auto-started
            common.kill_containers(self.qiao_root)
        for point in reversed(common.mounts_under(self.tmp)):  # sandbox files of qiao's, if any
            common.run(["umount", "-l", point], check=False)
        # Every namespace of this run, by its prefix (so also a pod's made just as Ctrl-C came): the
        # pods', then the peers', with their links, bridges, iptables and nft tables.
        names = os.listdir(netns.NETNS_RUN_DIR) if os.path.isdir(netns.NETNS_RUN_DIR) else []
        for name in sorted(names, key=lambda n: n in self.inodes):
            if name.startswith(f"{RUN}-"):
                netns.destroy(f"{netns.NETNS_RUN_DIR}/{name}")
        out["namespaces_gone"] = common.namespaces_gone(self.inodes, f"{RUN}-")
        root_rules = iptables_rules()  # this thread is back in the machine's own namespace
        out["root_iptables_rules_naming_run"] = None if root_rules is None else sum(1 for line in root_rules if RUN in line)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return out


def leftovers(peer: str) -> dict[str, Any]:
    """In the peer's namespace (this thread is in it), after the DEL of every pod: host-side
    veths, iptables rules naming one of this run's pods, and (qiao) elements of its port maps."""
    links = common.run(["ip", "-o", "link", "show"]).stdout.splitlines()
    left: dict[str, Any] = {"veths": sum(1 for line in links if line.split(": ")[1].startswith("veth"))}
    rules = iptables_rules()
    if rules is not None:
        left["iptables_rules"] = len(rules)
        left["iptables_rules_naming_a_pod"] = sum(1 for line in rules if f'"{RUN}-' in line)
    if peer == "qiao":
        table = common.run(["nft", "-j", "list", "table", "inet", "qiao"], check=False).stdout
        with contextlib.suppress(ValueError, KeyError):
            maps = [o["map"] for o in json.loads(table)["nftables"] if "map" in o]
            left["port_map_elements"] = sum(len(m.get("elem", [])) for m in maps if m["name"].startswith("published"))
    return left


def iptables_rules() -> list[str] | None:
    """The rules (``-A`` lines of ``iptables-save``, the ``iptables`` the plugins run) in this
    thread's namespace; None without iptables."""
    if not shutil.which("iptables-save", path=SYSTEM_PATH):
        return None
    save = common.run(["iptables-save"], check=False, env={"PATH": SYSTEM_PATH}).stdout
    return [line for line in save.splitlines() if line.startswith("-A ")]


# -- setting the peers up ---------------------------------------------------------


def setup_chain(lab: Lab) -> str:
    """The reference chain; "" when ready, else why it is skipped."""
    missing = [p for p in ("bridge", "host-local", "portmap") if not os.access(os.path.join(CNI_DIR, p), os.X_OK)]
    if missing:
        return f"{', '.join(missing)} not in {CNI_DIR} (scripts/install-peers.sh: Debian's containernetworking-plugins)"
    if not shutil.which("iptables", path=SYSTEM_PATH):
        return "no iptables, which portmap and bridge's ipMasq run (scripts/install-peers.sh)"
    peer = lab.peer("chain")
    conflist = {
        "cniVersion": "1.0.0",
        "name": f"{RUN}net",
        "plugins": [
            {
                "type": "bridge",
                "bridge": f"{RUN}br0",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,  # as podman's and the Kubernetes examples' chains, for portmap's hairpin
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": CHAIN_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": os.path.join(lab.tmp, "host-local"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }
    peer.runner = Runner(lab.write_conflist("chain", conflist), [CNI_DIR])
    return ""


def setup_qiao(lab: Lab) -> str:
    """qiao's plugin against a qiaod of the run's own; "" when ready, else why it is skipped."""
    if not os.access(QIAO_CNI, os.X_OK):
        return f"{QIAO_CNI} not installed (qiao's CNI plugin)"
    peer = lab.peer("qiao")
    lab.start_qiaod(peer)
    bin_dir = os.path.join(lab.tmp, "cni-bin")
    os.makedirs(bin_dir)
    os.symlink(QIAO_CNI, os.path.join(bin_dir, "qiao"))
    # What `qiao cni install --bin-dir B --conf-dir C --network qnet --subnet S` writes.
    conflist = {
        "cniVersion": "1.1.0",
        "cniVersions": ["0.4.0", "1.0.0", "1.1.0"],
        "name": "qnet",
        "plugins": [
            {
                "type": "qiao",
                "network": "qnet",
                "subnet": QIAO_SUBNET,
                "qiaoRoot": lab.qiao_root,
                "capabilities": {"portMappings": True, "ips": True, "mac": True},
            }
        ],
    }
    peer.runner = Runner(lab.write_conflist("qiao", conflist), [bin_dir])
    return ""


# -- the run -----------------------------------------------------------------------


def fail(peer: Peer, exc: BaseException, res: dict[str, Any]) -> None:
    peer.error = f"{type(exc).__name__}: {exc}"
    res["skipped"][peer.name] = f"failed: {peer.error}"
    log(f"{peer.name}: FAILED: {peer.error}")


def grow(peer: Peer, n: int) -> float:
    """ADD pods (untimed) until the peer holds n; seconds taken."""
    t = time.perf_counter()
    with netns.entered(peer.ns_path):
        while len(peer.attached) < n:
            pod = peer.new_pod()
            peer.add(pod)
            if len(peer.attached) % 100 == 0:
                log(f"{peer.name}: {len(peer.attached)} pods attached ({time.perf_counter() - t:.1f} s)")
    return time.perf_counter() - t


def measure(args: argparse.Namespace, lab: Lab, res: dict[str, Any]) -> None:
    for name, setup in (("chain", setup_chain), ("qiao", setup_qiao)):
        if name not in args.peers:
            continue
        try:
            why = setup(lab)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # qiaod did not start, say
            why = f"set-up failed: {exc}"
        if why:
            res["skipped"][name] = why
            log(f"{name}: skipped: {why}")
    for peer in lab.peers:
        if peer.runner is not None:
            res["conflists"][peer.name] = peer.runner.conf
            res["plugin_versions"][peer.name] = peer.runner.versions()
    live = [p for p in lab.peers if p.runner is not None]
    for n in args.sizes:
        for peer in live:
            if peer.error:
                continue
            try:
                seconds = grow(peer, n)
            except (CniError, OSError, subprocess.SubprocessError) as exc:
                fail(peer, exc, res)
                continue
            rules = None
            if peer.name == "chain":
                with netns.entered(peer.ns_path):
                    rules = len(iptables_rules() or [])
            res["grow"].append({"peer": peer.name, "size": n, "seconds": round(seconds, 2), "iptables_rules": rules})
            log(f"{peer.name}: {n} pods attached (+{seconds:.1f} s)" + (f", {rules} iptables rules in its namespace" if rules else ""))
        samples: dict[str, dict[str, list[float]]] = {p.name: {"add_ms": [], "del_ms": []} for p in live if not p.error}
        t0 = time.perf_counter()
        for r in range(args.warmup + args.reps):
            order = live if r % 2 == 0 else live[::-1]  # neither always follows the other
            for peer in order:
                if peer.error:
                    continue
                try:
                    pod = peer.new_pod()  # untimed
                    with netns.entered(peer.ns_path):
                        add_ms = peer.add(pod)
                        del_ms = peer.delete(pod)
                except (CniError, OSError, subprocess.SubprocessError) as exc:
                    fail(peer, exc, res)
                    continue
                if r >= args.warmup:
                    samples[peer.name]["add_ms"].append(add_ms)
                    samples[peer.name]["del_ms"].append(del_ms)
        for peer in live:
            peer.remove_retired()
        log(f"N={n}: {args.reps} reps (+{args.warmup} warm-up) in {time.perf_counter() - t0:.1f} s")
        for name, s in samples.items():
            if len(s["add_ms"]) == args.reps:
                total = [a + d for a, d in zip(s["add_ms"], s["del_ms"], strict=True)]
                res["sizes"].setdefault(str(n), {})[name] = {
                    "add": common.stats(s["add_ms"]),
                    "del": common.stats(s["del_ms"]),
                    "total": common.stats(total),
                    "raw": {**s, "total_ms": total},
                }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run": RUN,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
        "args": vars(args),
        "versions": {
            "containernetworking-plugins": common.pkg_version("containernetworking-plugins"),
            "iptables": common.run(["iptables", "--version"], check=False, env={"PATH": SYSTEM_PATH}).stdout.strip()
            if shutil.which("iptables", path=SYSTEM_PATH)
            else "",
        },
        "conflists": {},
        "plugin_versions": {},
        "grow": [],
        "sizes": {},
        "skipped": {},
        "notes": [],
    }
    lab = Lab()
    try:
        measure(args, lab, res)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not leave half of it behind
            signal.signal(sig, signal.SIG_IGN)
        log("cleaning up")
        res["cleanup"] = lab.cleanup()
    return res


# -- report --------------------------------------------------------------------------


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    sizes = res["sizes"]
    both = [n for n in sizes if {"chain", "qiao"} <= set(sizes[n])]
    out: list[dict[str, Any]] = []
    if both:
        ratios = {n: sizes[n]["qiao"]["total"]["median"] / sizes[n]["chain"]["total"]["median"] for n in both}
        out.append(
            {
                "target": f"qiao ADD+DEL <= {TARGET_RATIO}x the chain's, at every size",
                "pass": len(both) == len(res["args"]["sizes"]) and max(ratios.values()) <= TARGET_RATIO,
                "detail": ", ".join(f"N={n} {r:.2f}x" for n, r in ratios.items())
                + "".join(f", N={n} not measured" for n in res["args"]["sizes"] if str(n) not in both),
            }
        )
    else:
        out.append({"target": f"qiao ADD+DEL <= {TARGET_RATIO}x the chain's, at every size", "detail": "not measured (see skipped)"})
    flat = growth(res, "qiao")
    target = f"qiao at the largest size <= {TARGET_FLAT}x its figure at the smallest"
    if flat:
        lo, hi, r = flat
        out.append({"target": target, "pass": r <= TARGET_FLAT, "detail": f"N={hi} vs N={lo}: {r:.2f}x"})
    else:
        out.append({"target": target, "detail": "not measured (see skipped)"})
    return out


def growth(res: dict[str, Any], peer: str) -> tuple[int, int, float] | None:
    """(smallest N, largest N, median ADD+DEL at the largest over the smallest), if measured at two sizes."""
    have = sorted(int(n) for n, row in res["sizes"].items() if peer in row)
    if len(have) < 2:
        return None
    lo, hi = have[0], have[-1]
    return lo, hi, res["sizes"][str(hi)][peer]["total"]["median"] / res["sizes"][str(lo)][peer]["total"]["median"]


def report(res: dict[str, Any]) -> str:
    a, v = res["args"], res["versions"]
    lines = [
        f"bench/cni {res['run']}  {res['when']}  kernel {res['kernel']}  {res['cpus']} CPUs  load {res['loadavg_start']:.1f}",
        f"chain: containernetworking-plugins {v['containernetworking-plugins'] or '-'}, {v['iptables'] or 'no iptables'}",
        "",
        f"ADD + DEL of one more pod with one port mapping: median of {a['reps']} reps (+{a['warmup']} warm-up), ms",
        f"{'pods attached':>13}  {'chain ADD':>9} {'DEL':>7} {'ADD+DEL':>8} {'p90':>7}   "
        f"{'qiao ADD':>9} {'DEL':>7} {'ADD+DEL':>8} {'p90':>7}   qiao/chain",
    ]
    for n in a["sizes"]:
        row = res["sizes"].get(str(n), {})
        cells = []
        for peer in PEERS:
            r = row.get(peer)
            if r:
                cells.append(f"{r['add']['median']:9.1f} {r['del']['median']:7.1f} {r['total']['median']:8.1f} {r['total']['p90']:7.1f}")
            else:
                cells.append(f"{'-':>9} {'-':>7} {'-':>8} {'-':>7}")
        ratio = f"{row['qiao']['total']['median'] / row['chain']['total']['median']:.2f}x" if {"chain", "qiao"} <= set(row) else "-"
        lines.append(f"{n:13}  {cells[0]}   {cells[1]}   {ratio:>10}")
    lines.append("")
    for peer in PEERS:
        g = growth(res, peer)
        if g:
            lines.append(f"growth, {peer}: ADD+DEL at N={g[1]} / at N={g[0]} = {g[2]:.2f}x")
    for g in [x for x in res["grow"] if x["size"]]:
        rules = f"; {g['iptables_rules']} iptables rules in its namespace" if g.get("iptables_rules") is not None else ""
        lines.append(f"set-up, {g['peer']}: grown to {g['size']} pods in {g['seconds']:.1f} s{rules}")
    res["targets"] = targets(res)
    lines += common.verdict_lines(res["targets"], res["skipped"])
    c = res.get("cleanup") or {}
    if c:
        lines += ["", "clean-up:"]
        for peer, d in c["del"].items():
            untried = f", {d['untried']} not tried after 3 failures in a row" if d["untried"] else ""
            first = f" ({d['first_error']})" if d.get("first_error") else ""
            lines.append(f"  {peer}: DEL of the {d['pods']} pods it held, {d['failed']} failed{untried}{first}")
        for peer, left in c["left_after_del"].items():
            lines.append(f"  {peer}, after every DEL: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in left.items()))
        gone = c["namespaces_gone"]
        lines.append(
            "  peer namespaces deleted; none held by a process or mount (the kernel frees them, their rules with them)"
            if gone["ok"]
            else f"  NOT all gone: held {gone['held']}, still named {gone['still_named']}"
        )
        root = c["root_iptables_rules_naming_run"]
        if root is not None:
            lines.append(f"  the machine's own iptables: {root} rules naming this run")
    if res["notes"]:
        lines += ["", "notes:"] + [f"  - {n}" for n in res["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cni", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=common.int_list, default=[0, 100, 500], help="pods already attached (default 0,100,500)")
    p.add_argument("--reps", type=int, default=20, help="timed ADD+DEL per peer and size (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed ADD+DEL first, per peer and size (default 2)")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)} (default both)")
    p.add_argument("--out", default=str(RESULTS), help="JSON results (default bench/results/cni.json)")
    args = p.parse_args(argv)
    args.peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    if not args.sizes or args.sizes[0] < 0 or args.sizes[-1] > MAX_SIZE:
        p.error(f"--sizes: whole numbers between 0 and {MAX_SIZE}")
    if args.reps < 1 or args.warmup < 0:
        p.error("--reps must be >= 1 and --warmup >= 0")
    if not args.peers or set(args.peers) - set(PEERS):
        p.error(f"--peers: a comma-separated subset of {','.join(PEERS)}")
    if os.geteuid() != 0:
        print("bench.cni: needs root (network namespaces, iptables)", file=sys.stderr)
        return 1
    if not shutil.which("ip"):
        print("bench.cni: ip (iproute2) is missing (make setup)", file=sys.stderr)
        return 1
    try:
        return common.run_and_save("bench.cni", lambda: bench(args), report, args.out)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench.cni: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    with common.netns_run_dir_restored():
        sys.exit(main())
