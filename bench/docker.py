"""bench/docker: Docker's own bridge driver against qiao as dockerd's network plugin, in one run.

``python -m bench.docker [--sizes 0,100,500] [--reps 20] [--warmup 2] [--mem-ports 1000]`` (root).

Two sides, each a private Debian dockerd 20.10 (``tests.integration.engines.Dockerd``:
its own mount namespace, data root, containerd, cgroups and plugin directory) in a
throw-away network namespace of its own (``<run>-docker``, ``<run>-qiao``):

* ``docker`` -- dockerd with Docker's defaults for the firewall and the ports,
  ``--iptables=true --ip-forward=true --ip-masq=true --userland-proxy=true``
  (their iptables rules live in the side's namespace), and a network of its
  bridge driver: ``docker network create -d bridge --subnet 10.91.0.0/16 bnet``.
* ``qiao`` -- dockerd as the harness starts it (``--iptables=false``: qiao does
  the firewall) and a ``qiaod --root <tmp>`` of the run's own serving Docker's
  plugin protocol into dockerd's plugin directory (``ROOT/daemon.json``:
  ``docker-plugin``, ``docker-host``): ``docker network create -d qiao
  --ipam-driver qiao --subnet 10.90.0.0/16 qnet``.

Timed, per size N (containers already running, each publishing one port: made
through the API, untimed): ``docker run -d -p 18080:80 --network NET
busybox:local sleep 600`` and ``docker rm -f ID``, each the CLI process
(Debian's /usr/bin/docker) from start to exit, the sides interleaved rep by rep
(their order alternating).  qiao's own share: dockerd's ``qiao.sock`` is a
relay (``PluginTimer``) that times every plugin call on its way to qiaod
(``--no-plugin-times``: none).  Memory: ``--mem-ports`` published ports as
containers with ``-p A-B:A-B`` ranges of ``--range`` ports, then the RSS
(VmRSS) of dockerd plus its docker-proxy processes (Docker) against dockerd
plus qiaod (qiao).  Targets, PASS/FAIL, never a failing exit status: qiao's
run+rm <= Docker's at every size; qiao at the largest size <= 1.3x its own
figure at the smallest; the memory ratio is printed.

At the end, also after a failure, Ctrl-C, SIGTERM or SIGHUP (then ignored until
done): every container removed, both dockerds closed (before qiaod: a plugin
gone costs dockerd 15 s per call), qiaod stopped by its PID, the namespaces
deleted (Docker's iptables rules go with its side's), the temporary directory
removed; then it checks that no process of the run is left (dockerd,
containerd, shims, docker-proxy, qiaod) and that the machine's own firewall is
as it was.  Results: a table on stdout, JSON in bench/results/docker.json.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import common
from qiao.kernel import netns

if TYPE_CHECKING:
    from tests.integration.engines import Dockerd

RUN = "qd" + secrets.token_hex(2)  # prefix of every object made here
BIN = Path(sys.executable).parent
QIAOD = str(BIN / "qiaod")
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "docker.json"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SIDES = ("docker", "qiao")
NETWORKS = {
    "docker": ("bnet", ["-d", "bridge", "--subnet", "10.91.0.0/16"]),
    "qiao": ("qnet", ["-d", "qiao", "--ipam-driver", "qiao", "--subnet", "10.90.0.0/16"]),
}
# Docker's defaults, after the harness's --iptables=false etc. (dockerd: the last of a repeated flag wins).
DOCKER_DEFAULTS = ["--iptables=true", "--ip-forward=true", "--ip-masq=true", "--userland-proxy=true"]
MEASURED_PORT = 18080  # the timed container's host port
BACKGROUND_PORT = 30000  # the N running containers: 30000, 30001, ...
RANGE_PORT = 20000  # the memory phase's ranges: 20000-20099, 20100-20199, ...
MAX_SIZE, MAX_MEM_PORTS = 2000, 10000  # ports stay below 32768 (the namespaces' ephemeral range)
TARGET_FLAT = 1.3
BACKGROUND_CMD = ["sleep", "86400"]  # outlives any run (the timed ones: `sleep 600`, as asked)


def log(msg: str) -> None:
    print(f"[bench.docker {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def one_line(exc: BaseException) -> str:
    """An error on one line: the harness's AssertionErrors carry the client's stdout and stderr on several."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and line.strip() not in ("stdout:", "stderr:")]
    return " | ".join(lines)[:600] or type(exc).__name__


# -- one side: a dockerd in a namespace of its own --------------------------------


@dataclasses.dataclass
class Netns:
    name: str

    @property
    def path(self) -> str:  # what the Dockerd harness needs of a host
        return f"{netns.NETNS_RUN_DIR}/{self.name}"


class Side:
    def __init__(self, name: str, ns: Netns, dir: str):
        self.name = name
        self.ns = ns
        self.dir = dir
        self.net, self.create_args = NETWORKS[name]
        self.dockerd: Dockerd | None = None
        self.image = ""
        self.background = 0  # containers running with one published port each
        self.ports = itertools.count(BACKGROUND_PORT)
        self.error = ""

    @property
    def d(self) -> Dockerd:
        assert self.dockerd is not None
        return self.dockerd

    def env(self) -> dict[str, str]:
        """The client's environment: this side's dockerd, a client config of the harness's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        return {**env, "DOCKER_HOST": self.d.host_url, "DOCKER_CONFIG": str(self.d.client_config)}

    def cli(self, *args: str, timeout: float = 120) -> tuple[float, str]:
        """``docker ARGS`` (the client binary alone: it talks to dockerd's unix socket, from any
        namespace), timed from start to exit (ms); its stdout.  A failure raises, on one line."""
        t = time.perf_counter()
        proc = subprocess.run(
            [self.d.docker_bin, *args], env=self.env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        ms = (time.perf_counter() - t) * 1e3
        if proc.returncode != 0:
            err = " | ".join(line.strip() for line in (proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise RuntimeError(f"docker {' '.join(args[:2])} ... exited {proc.returncode}: {err[:500]}")
        return ms, proc.stdout

    def start_background(self, port: int) -> None:
        """One more container publishing ``port`` -> 80, through the API (what ``docker run -d -p`` asks for), untimed."""
        body = {
            "Image": self.image,
            "Cmd": BACKGROUND_CMD,
            "ExposedPorts": {"80/tcp": {}},
            "HostConfig": {"NetworkMode": self.net, "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": str(port)}]}},
        }
        cid = self.d.api("POST", "/containers/create", body, timeout=120)["Id"]
        self.d.api("POST", f"/containers/{cid}/start", timeout=120)
        self.background += 1

    def remove_all(self, workers: int) -> dict[str, Any]:
        """Every container of this dockerd, ``DELETE ?force=1`` in parallel; counts and seconds."""
        t = time.perf_counter()
        ids = self.d.containers()
        failed: list[str] = []

        def rm(cid: str) -> None:
            try:
                self.d.api("DELETE", f"/containers/{cid}?force=1&v=1", timeout=120)
            except Exception as exc:
                failed.append(one_line(exc))

        with concurrent.futures.ThreadPoolExecutor(workers) as ex:
            list(ex.map(rm, ids))
        self.background = 0
        out: dict[str, Any] = {"containers": len(ids), "failed": len(failed), "seconds": round(time.perf_counter() - t, 1)}
        if failed:
            out["first_error"] = failed[0]
        return out

    def proxies(self) -> list[int]:
        """dockerd's docker-proxy processes (its children of that name)."""
        return common.children(self.d.pid, "docker-proxy")


class PluginTimer:
    """A relay between dockerd and qiaod's plugin socket that times every call.

    dockerd finds ``listen`` (``qiao.sock`` in its plugin directory) and talks to
    it as to the plugin; each HTTP request (Content-Length bodies, as dockerd's
    client and qiaod send them) is passed on to qiaod's socket ``target`` on a
    connection of its own, and ``calls`` records (start, ms, path): from the
    request handed to qiaod to its whole answer back, i.e. qiao's own time in a
    ``docker run`` or ``rm``.  The relay adds two local socket hops per call
    (~0.1 ms each), counted against qiao in the timed CLI calls."""

    def __init__(self, listen: str, target: str):
        self.listen, self.target = listen, target
        self.calls: list[tuple[float, float, str]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(listen)
        self.sock.listen(128)
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, name="plugin-timer", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._relay, args=(conn,), name="plugin-timer-conn", daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with self.lock:
            self.open |= {conn, up}
        try:
            up.connect(self.target)
            down_buf, up_buf = bytearray(), bytearray()
            while True:
                request = _http_message(conn, down_buf)
                if request is None:
                    return
                path = request.split(b" ", 2)[1].decode(errors="replace")
                t = time.perf_counter()
                up.sendall(request)
                answer = _http_message(up, up_buf)
                if answer is None:
                    return
                ms = (time.perf_counter() - t) * 1e3
                conn.sendall(answer)
                self.calls.append((t, ms, path))
        except (OSError, ValueError, IndexError):
            return
        finally:
            with self.lock:
                self.open -= {conn, up}
            conn.close()
            up.close()

    def between(self, t0: float, t1: float) -> list[tuple[float, float, str]]:
        """The calls that started between two ``time.perf_counter()`` readings."""
        return [c for c in self.calls[-200:] if t0 <= c[0] <= t1]

    def close(self) -> None:
        self.sock.close()
        with self.lock:
            for s in self.open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            os.unlink(self.listen)


def _http_message(sock: socket.socket, buf: bytearray) -> bytes | None:
    """One HTTP/1.1 message (head and Content-Length body) from ``sock``, ``buf`` holding
    what was read beyond the previous one; None at the end of the stream."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    length = 0
    for line in bytes(buf[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(buf) < end + length:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    message = bytes(buf[: end + length])
    del buf[: end + length]
    return message


class Lab:
    """Everything one run made, so that all of it can be removed."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix=f"{RUN}-")
        self.sides: list[Side] = []
        self.inodes: dict[str, int] = {}
        self.qiaod: subprocess.Popen[bytes] | None = None
        self.qiao_root = ""
        self.timer: PluginTimer | None = None

    def side(self, name: str) -> Side:
        ns = Netns(f"{RUN}-{name}")
        common.run(["ip", "netns", "add", ns.name])
        self.inodes[ns.name] = os.stat(ns.path).st_ino
        common.run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
        side = Side(name, ns, os.path.join(self.tmp, name))
        os.makedirs(side.dir)
        self.sides.append(side)
        return side

    def cleanup(self, workers: int) -> dict[str, Any]:
        """Remove everything, in order; what was found on the way."""
        from tests.integration.engines import _cgroup_tops

        out: dict[str, Any] = {"removed": {}}

        def remove(side: Side) -> None:
            try:
                out["removed"][side.name] = side.remove_all(workers)
            except Exception as exc:
                out["removed"][side.name] = {"error": one_line(exc)}

        # The containers first, both sides at once, each in parallel (the harness's close does it one by one).
        running = [s for s in self.sides if s.dockerd is not None and s.dockerd.daemon is not None and s.dockerd.daemon.poll() is None]
        if running:
            log(f"clean-up: removing the containers of {', '.join(s.name for s in running)}")
            threads = [threading.Thread(target=remove, args=(s,)) for s in running]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for side in self.sides:  # the dockerds before qiaod
            if side.dockerd is not None:
                side.dockerd.close()
        if self.timer is not None:
            self.timer.close()
        if self.qiaod is not None:
            common.stop(self.qiaod, 20)
        if self.qiao_root:
            common.kill_qiaod(self.qiao_root)
            common.kill_containers(self.qiao_root)
        for point in reversed(common.mounts_under(self.tmp)):
            common.run(["umount", "-l", point], check=False)
        names = os.listdir(netns.NETNS_RUN_DIR) if os.path.isdir(netns.NETNS_RUN_DIR) else []
        for name in names:
            if name.startswith(f"{RUN}-"):
                netns.destroy(f"{netns.NETNS_RUN_DIR}/{name}")
        out["namespaces_gone"] = common.namespaces_gone(self.inodes, f"{RUN}-")
        out["processes_left"] = processes_naming(self.tmp)
        out["cgroups_left"] = [
            top for side in self.sides if side.dockerd is not None for top in _cgroup_tops(side.dockerd.name) if os.path.exists(top)
        ]
        shutil.rmtree(self.tmp, ignore_errors=True)
        return out


def processes_naming(text: str) -> list[str]:
    """Processes whose command line names ``text`` (the run's directory: dockerd, containerd, its shims, qiaod)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes()
                if text.encode() in argv:
                    name = os.path.basename(argv.split(b"\0")[0]).decode(errors="replace")
                    found.append(f"{entry} {name}")
    return found


def machine_proxies() -> int:
    """docker-proxy processes on the whole machine."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                count += Path(f"/proc/{entry}/comm").read_text().strip() == "docker-proxy"
    return count


# -- setting the sides up --------------------------------------------------------


def setup_docker(lab: Lab, args: argparse.Namespace) -> Side:
    from tests.integration.engines import Dockerd

    side = lab.side("docker")
    side.dockerd = Dockerd(side.ns, side.dir, args=DOCKER_DEFAULTS, name=f"{side.ns.name}-dockerd", new_session=True)
    return side


def setup_qiao(lab: Lab, args: argparse.Namespace) -> Side:
    from tests.integration.engines import Dockerd

    side = lab.side("qiao")
    plugins = Path(lab.tmp, "plugins")
    plugins.mkdir()
    lab.qiao_root = os.path.join(lab.tmp, "qiao-root")
    os.makedirs(lab.qiao_root)
    docker_sock = Path(side.dir, "docker", "docker.sock")  # where the harness puts dockerd's API socket
    # With --plugin-times qiaod serves the plugin one directory away, and the relay takes its place.
    served = Path(lab.tmp, "qiaod-plugin", "qiao.sock") if args.plugin_times else plugins / "qiao.sock"
    served.parent.mkdir(exist_ok=True)
    config = {"docker-plugin": str(served), "docker-host": f"unix://{docker_sock}"}
    Path(lab.qiao_root, "daemon.json").write_text(json.dumps(config) + "\n")
    lab.qiaod = common.start_qiaod(QIAOD, lab.qiao_root, side.ns.path, os.path.join(lab.tmp, "qiaod.log"))
    if not served.exists():  # qiaod binds it before it answers its API
        raise RuntimeError(f"qiaod does not serve the plugin on {served} (daemon.json not read?)")
    if args.plugin_times:
        lab.timer = PluginTimer(str(plugins / "qiao.sock"), str(served))
    side.dockerd = Dockerd(side.ns, side.dir, plugin_dir=plugins, name=f"{side.ns.name}-dockerd", new_session=True)
    if side.d.host_url != config["docker-host"]:
        raise RuntimeError(f"dockerd listens on {side.d.host_url}, not where daemon.json says ({config['docker-host']})")
    return side


def finish_setup(side: Side) -> None:
    side.image = side.d.import_busybox()
    side.cli("network", "create", *side.create_args, side.net)


# -- measuring ------------------------------------------------------------------------


def fail(side: Side, exc: BaseException, res: dict[str, Any]) -> None:
    side.error = f"{type(exc).__name__}: {one_line(exc)}"
    res["skipped"][side.name] = f"failed: {side.error}"
    log(f"{side.name}: FAILED: {side.error}")


def grow(sides: list[Side], n: int, workers: int, res: dict[str, Any]) -> dict[str, float]:
    """Start background containers (API, ``workers`` at a time, both sides at once) until each
    side runs n; seconds per side."""
    lock = threading.Lock()
    t0 = time.perf_counter()
    took: dict[str, float] = {}
    jobs = []
    for side in sides:
        jobs += [(side, next(side.ports)) for _ in range(n - side.background)]
    jobs.sort(key=lambda job: job[1])  # the sides' jobs interleaved
    if not jobs:
        return {s.name: 0.0 for s in sides}

    def job(side: Side, port: int) -> None:
        if side.error:
            return
        try:
            side.start_background(port)
        except Exception as exc:
            with lock:
                if not side.error:
                    fail(side, exc, res)
            return
        with lock:
            if side.background == n:
                took[side.name] = time.perf_counter() - t0
            if side.background % 100 == 0:
                log(f"{side.name}: {side.background} containers running ({time.perf_counter() - t0:.0f} s)")

    ex = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        for f in [ex.submit(job, side, port) for side, port in jobs]:
            f.result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    return took


def side_state(side: Side) -> dict[str, Any]:
    """What the side's namespace holds: Docker's iptables rules and proxies, qiao's port map elements."""
    out: dict[str, Any] = {"docker_proxies": len(side.proxies())}
    nsenter = ["nsenter", f"--net={side.ns.path}", "--"]
    save = common.run([*nsenter, "iptables-save"], check=False, env={"PATH": SYSTEM_PATH}).stdout
    out["iptables_rules"] = sum(1 for line in save.splitlines() if line.startswith("-A "))
    table = common.run([*nsenter, "nft", "-j", "list", "table", "inet", "qiao"], check=False).stdout
    with contextlib.suppress(ValueError, KeyError):
        maps = [o["map"] for o in json.loads(table)["nftables"] if "map" in o]
        out["qiao_port_map_elements"] = sum(len(m.get("elem", [])) for m in maps if m["name"].startswith("published"))
    return out


def memory(side: Side, lab: Lab) -> dict[str, Any]:
    """RSS and PSS (KiB) of the processes the brief compares, and of the rest for reference."""
    d = side.d

    def one(pids: list[int]) -> dict[str, int]:
        mem = [common.rss_kib(p) for p in pids]
        return {"count": len(pids), "rss_kib": sum(m[0] for m in mem), "pss_kib": sum(m[1] for m in mem)}

    out = {
        "dockerd": one([d.pid]),
        "docker_proxy": one(side.proxies()),
        "containerd": one(d.containerd_pids()),
        "shims": one(d.shim_pids()),
    }
    if side.name == "qiao" and lab.qiaod is not None:
        out["qiaod"] = one([lab.qiaod.pid])
        with contextlib.suppress(OSError):
            out["qiaod"]["fds"] = len(os.listdir(f"/proc/{lab.qiaod.pid}/fd"))
    compared = ["dockerd", "docker_proxy"] if side.name == "docker" else ["dockerd", "qiaod"]
    out["compared"] = {k: sum(out[p][k] for p in compared) for k in ("rss_kib", "pss_kib")}
    return out


def measure_memory(args: argparse.Namespace, lab: Lab, live: list[Side], res: dict[str, Any]) -> None:
    """``--mem-ports`` published ports as ``-p A-B:A-B`` ranges on each side, then RSS; removed again."""
    k = -(-args.mem_ports // args.range)
    for side in live:
        if side.error:
            continue
        row: dict[str, Any] = {"idle": memory(side, lab), "run_ms": []}
        try:
            ids = []
            for i in range(k):
                lo = RANGE_PORT + i * args.range
                hi = min(lo + args.range, RANGE_PORT + args.mem_ports) - 1
                ms, out = side.cli(
                    "run", "-d", "--network", side.net, "-p", f"{lo}-{hi}:{lo}-{hi}", side.image, *BACKGROUND_CMD, timeout=300
                )
                ids.append(out.strip())
                row["run_ms"].append(ms)
            row["loaded"] = memory(side, lab)
            row["state"] = side_state(side)
            ms, _ = side.cli("rm", "-f", *ids, timeout=600)  # the client removes them in parallel
            row["rm_all_ms"] = ms
            row["after_rm"] = memory(side, lab)
        except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as exc:
            fail(side, exc, res)
            continue
        res["memory"][side.name] = row
        c = row["loaded"]
        log(
            f"{side.name}: {args.mem_ports} ports in {k} containers: dockerd {c['dockerd']['rss_kib'] / 1024:.0f} MiB, "
            f"{c['docker_proxy']['count']} docker-proxies {c['docker_proxy']['rss_kib'] / 1024:.0f} MiB"
            + (f", qiaod {c['qiaod']['rss_kib'] / 1024:.0f} MiB" if "qiaod" in c else "")
        )


def measure(args: argparse.Namespace, lab: Lab, res: dict[str, Any]) -> None:
    for name, setup in (("docker", setup_docker), ("qiao", setup_qiao)):
        try:
            side = setup(lab, args)
            finish_setup(side)
        except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as exc:
            res["skipped"][name] = f"set-up failed: {one_line(exc)}"
            log(f"{name}: set-up failed: {one_line(exc)}")
            for s in lab.sides:
                if s.name == name:
                    s.error = res["skipped"][name]
    live = [s for s in lab.sides if not s.error]
    for side in live:
        res["dockerd_argv"][side.name] = side.d.dockerd_argv()
    if args.mem_ports:
        measure_memory(args, lab, live, res)
    for n in args.sizes:
        took = grow([s for s in live if not s.error], n, args.grow_workers, res)
        for side in live:
            if side.error:
                continue
            state = side_state(side)
            res["grow"].append({"side": side.name, "size": n, "seconds": round(took.get(side.name, 0.0), 1), **state})
            log(f"{side.name}: {n} containers running (+{took.get(side.name, 0.0):.0f} s); {state}")
        samples: dict[str, dict[str, list[float]]] = {s.name: {"run_ms": [], "rm_ms": []} for s in live if not s.error}
        plugin: dict[str, list[Any]] = {"run_ms": [], "rm_ms": [], "run_calls": [], "rm_calls": []}  # qiao's own time, per rep
        t0 = time.perf_counter()
        for r in range(args.warmup + args.reps):
            order = live if r % 2 == 0 else live[::-1]  # neither always follows the other
            for side in order:
                if side.error:
                    continue
                try:
                    ta = time.perf_counter()
                    run_ms, out = side.cli("run", "-d", "-p", f"{MEASURED_PORT}:80", "--network", side.net, side.image, "sleep", "600")
                    tb = time.perf_counter()
                    rm_ms, _ = side.cli("rm", "-f", out.strip())
                    tc = time.perf_counter()
                except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as exc:
                    fail(side, exc, res)
                    continue
                if r >= args.warmup:
                    samples[side.name]["run_ms"].append(run_ms)
                    samples[side.name]["rm_ms"].append(rm_ms)
                    if side.name == "qiao" and lab.timer is not None:
                        for phase, a, b in (("run", ta, tb), ("rm", tb, tc)):
                            calls = lab.timer.between(a, b)
                            plugin[f"{phase}_ms"].append(sum(c[1] for c in calls))
                            plugin[f"{phase}_calls"].append([[c[2].lstrip("/"), round(c[1], 2)] for c in calls])
        log(f"N={n}: {args.reps} reps (+{args.warmup} warm-up) in {time.perf_counter() - t0:.1f} s")
        for name, got in samples.items():
            if len(got["run_ms"]) == args.reps:
                total = [a + b for a, b in zip(got["run_ms"], got["rm_ms"], strict=True)]
                res["sizes"].setdefault(str(n), {})[name] = {
                    "run": common.stats(got["run_ms"]),
                    "rm": common.stats(got["rm_ms"]),
                    "total": common.stats(total),
                    "raw": {**got, "total_ms": total},
                }
        if plugin["run_ms"] and "qiao" in res["sizes"].get(str(n), {}):
            both = [a + b for a, b in zip(plugin["run_ms"], plugin["rm_ms"], strict=True)]
            res["sizes"][str(n)]["qiao"]["plugin"] = {
                "run": common.stats(plugin["run_ms"]),
                "rm": common.stats(plugin["rm_ms"]),
                "total": common.stats(both),
                "raw": plugin,
            }


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={"PATH": SYSTEM_PATH})
            return (proc.stdout or proc.stderr).strip().splitlines()[0]
        return ""

    from tests.integration.engines import DOCKER

    head = common.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    return {
        "dockerd": first_line(["dockerd", "--version"]),
        "docker_client": f"{DOCKER}: {first_line([DOCKER, '--version'])}",
        "docker.io": common.pkg_version("docker.io"),
        "containerd": common.pkg_version("containerd"),
        "runc": common.pkg_version("runc"),
        "iptables": first_line(["iptables", "--version"]),
        "qiao": head,
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run": RUN,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
        "args": vars(args),
        "versions": versions(),
        "dockerd_argv": {},
        "memory": {},
        "grow": [],
        "sizes": {},
        "skipped": {},
        "notes": [],
    }
    firewall_before = common.machine_firewall()
    proxies_before = machine_proxies()
    lab = Lab()
    try:
        measure(args, lab, res)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not leave half of it behind
            signal.signal(sig, signal.SIG_IGN)
        log("cleaning up")
        res["cleanup"] = cleanup = lab.cleanup(args.grow_workers)
        after = common.machine_firewall()
        cleanup["machine_firewall_unchanged"] = after == firewall_before
        cleanup["machine_firewall_changed"] = {k: after[k] for k in after if after[k] != firewall_before.get(k)}
        cleanup["machine_docker_proxies"] = {"before": proxies_before, "after": machine_proxies()}
    return res


# -- report ------------------------------------------------------------------------------


def growth(res: dict[str, Any], side: str, part: str = "") -> tuple[int, int, float] | None:
    """(smallest N, largest N, median run+rm at the largest over the smallest), if measured at
    two sizes; ``part="plugin"``: the same of qiao's plugin calls in them."""

    def figure(n: int) -> float:
        row = res["sizes"][str(n)][side]
        return (row[part] if part else row)["total"]["median"]

    have = sorted(int(n) for n, row in res["sizes"].items() if side in row and (not part or part in row[side]))
    if len(have) < 2:
        return None
    lo, hi = have[0], have[-1]
    return lo, hi, figure(hi) / figure(lo)


def mem_ratio(res: dict[str, Any], key: str) -> float | None:
    m = res["memory"]
    if {"docker", "qiao"} <= set(m):
        return m["docker"]["loaded"]["compared"][key] / m["qiao"]["loaded"]["compared"][key]
    return None


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    sizes = res["sizes"]
    both = [n for n in sizes if {"docker", "qiao"} <= set(sizes[n])]
    out: list[dict[str, Any]] = []
    target = "qiao's run+rm <= Docker's, at every size"
    if both:
        ratios = {n: sizes[n]["qiao"]["total"]["median"] / sizes[n]["docker"]["total"]["median"] for n in both}
        out.append(
            {
                "target": target,
                "pass": len(both) == len(res["args"]["sizes"]) and max(ratios.values()) <= 1.0,
                "detail": ", ".join(f"N={n} {r:.2f}x" for n, r in ratios.items())
                + "".join(f", N={n} not measured" for n in res["args"]["sizes"] if str(n) not in both),
            }
        )
    else:
        out.append({"target": target, "detail": "not measured (see skipped)"})
    flat = growth(res, "qiao")
    target = f"qiao at the largest size <= {TARGET_FLAT}x its figure at the smallest"
    if flat:
        lo, hi, r = flat
        own = growth(res, "qiao", "plugin")
        detail = f"N={hi} vs N={lo}: {r:.2f}x"
        if own:
            detail += f" (its plugin calls alone: {own[2]:.2f}x"
            docker = growth(res, "docker")
            detail += f"; Docker's run+rm: {docker[2]:.2f}x)" if docker else ")"
        out.append({"target": target, "pass": r <= TARGET_FLAT, "detail": detail})
    else:
        out.append({"target": target, "detail": "not measured at two sizes"})
    rss, pss = mem_ratio(res, "rss_kib"), mem_ratio(res, "pss_kib")
    target = f"memory with {res['args']['mem_ports']} published ports, Docker (dockerd + docker-proxies) / qiao (dockerd + qiaod)"
    if rss is not None and pss is not None:
        out.append({"target": target, "detail": f"{rss:.1f}x RSS, {pss:.1f}x PSS"})
    else:
        out.append({"target": target, "detail": "not measured"})
    return out


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}" if kib < 10240 else f"{kib / 1024:.0f}"


def report(res: dict[str, Any]) -> str:
    a, v = res["args"], res["versions"]
    lines = [
        f"bench/docker {res['run']}  {res['when']}  kernel {res['kernel']}  {res['cpus']} CPUs  load {res['loadavg_start']:.1f}",
        f"{v['dockerd']} (docker.io {v['docker.io']}), client {v['docker_client']}, containerd {v['containerd']}, runc {v['runc']}",
        f"Docker side: dockerd {' '.join(DOCKER_DEFAULTS)}, its bridge driver",
        f"qiao side: dockerd --iptables=false, qiaod {v['qiao']} as its network + IPAM driver",
        "",
        f"docker run -d -p {MEASURED_PORT}:80 + docker rm -f (CLI, start to exit), with N containers running (one published port each):",
        f"median of {a['reps']} reps (+{a['warmup']} warm-up), ms",
        f"{'N':>5}  {'Docker run':>10} {'rm':>6} {'run+rm':>7} {'p90':>6}   {'qiao run':>9} {'rm':>6} {'run+rm':>7} {'p90':>6}"
        "   qiao/Docker",
    ]
    for n in a["sizes"]:
        row = res["sizes"].get(str(n), {})
        cells = []
        for side in SIDES:
            r = row.get(side)
            if r:
                cells.append(f"{r['run']['median']:6.0f} {r['rm']['median']:6.0f} {r['total']['median']:7.0f} {r['total']['p90']:6.0f}")
            else:
                cells.append(f"{'-':>6} {'-':>6} {'-':>7} {'-':>6}")
        ratio = f"{row['qiao']['total']['median'] / row['docker']['total']['median']:.2f}x" if {"docker", "qiao"} <= set(row) else "-"
        lines.append(f"{n:5}      {cells[0]}      {cells[1]}   {ratio:>10}")
    timed = [n for n in a["sizes"] if "plugin" in res["sizes"].get(str(n), {}).get("qiao", {})]
    if timed:
        lines += ["", "of which qiao's own time: its plugin calls as dockerd made them (relay-timed), median ms"]
        lines.append(f"{'N':>5}  {'in run':>7} {'in rm':>6} {'both':>6}   share of qiao's run+rm   calls (run + rm)")
        for n in timed:
            q = res["sizes"][str(n)]["qiao"]
            pl = q["plugin"]
            calls = len(pl["raw"]["run_calls"][0]) + len(pl["raw"]["rm_calls"][0])
            share = pl["total"]["median"] / q["total"]["median"]
            lines.append(
                f"{n:5}  {pl['run']['median']:7.1f} {pl['rm']['median']:6.1f} {pl['total']['median']:6.1f}   {share:22.1%}   {calls}"
            )
        last = res["sizes"][str(timed[-1])]["qiao"]["plugin"]["raw"]
        per_call: dict[str, list[float]] = {}
        for rep in last["run_calls"] + last["rm_calls"]:
            for path, ms in rep:
                per_call.setdefault(path, []).append(ms)
        lines.append(
            f"  per call at N={timed[-1]} (median ms): "
            + ", ".join(f"{path.replace('Driver.', '.')} {common.stats(v)['median']:.1f}" for path, v in per_call.items())
        )
    lines.append("")
    for side in SIDES:
        g = growth(res, side)
        if g:
            lines.append(f"growth, {side}: run+rm at N={g[1]} / at N={g[0]} = {g[2]:.2f}x")
    g = growth(res, "qiao", "plugin")
    if g:
        lines.append(f"growth, qiao's own time (its plugin calls): at N={g[1]} / at N={g[0]} = {g[2]:.2f}x")
    for g in [x for x in res["grow"] if x["size"]]:
        what = (
            f"{g['docker_proxies']} docker-proxies, {g['iptables_rules']} iptables rules in its namespace"
            if g["side"] == "docker"
            else f"{g.get('qiao_port_map_elements', '?')} port map elements, {g['docker_proxies']} docker-proxies"
        )
        lines.append(f"set-up, {g['side']}: {g['size']} containers running ({g['seconds']:.0f} s to start them); {what}")
    m = res["memory"]
    if m:
        k = -(-a["mem_ports"] // a["range"])
        lines += [
            "",
            f"memory with {a['mem_ports']} published ports ({k} containers, -p A-B:A-B of {a['range']} ports each), MiB:",
            f"{'':28} {'Docker RSS':>9} {'PSS':>7}   {'qiao RSS':>9} {'PSS':>7}",
        ]

        def cell(side: str, stage: str, proc: str) -> str:
            x = m.get(side, {}).get(stage, {}).get(proc)
            return f"{mib(x['rss_kib']):>9} {mib(x['pss_kib']):>7}" if x else f"{'-':>9} {'-':>7}"

        def count(side: str, proc: str) -> str:
            x = m.get(side, {}).get("loaded", {}).get(proc)
            return str(x["count"]) if x else "-"

        for label, stage, proc in (
            ("dockerd", "loaded", "dockerd"),
            (f"docker-proxy ({count('docker', 'docker_proxy')} / {count('qiao', 'docker_proxy')})", "loaded", "docker_proxy"),
            ("qiaod", "loaded", "qiaod"),
            ("compared: the sum", "loaded", "compared"),
            ("the same, idle (no ports)", "idle", "compared"),
            ("containerd", "loaded", "containerd"),
            (f"shims ({count('docker', 'shims')} / {count('qiao', 'shims')})", "loaded", "shims"),
        ):
            lines.append(f"  {label:26} {cell('docker', stage, proc)}   {cell('qiao', stage, proc)}")
        for side in SIDES:
            if side in m:
                run_ms = common.stats(m[side]["run_ms"])
                extra = f"; qiaod holds {m[side]['loaded']['qiaod'].get('fds', '?')} fds" if side == "qiao" else ""
                what = f"run -d with a {a['range']}-port range {run_ms['median']:.0f} ms (median)"
                what += f", rm -f of all {k} {m[side]['rm_all_ms']:.0f} ms"
                lines.append(f"  {side}: {what}{extra}")
    res["targets"] = targets(res)
    lines += common.verdict_lines(res["targets"], res["skipped"])
    c = res.get("cleanup") or {}
    if c:
        lines += ["", "clean-up:"]
        for side, r in c["removed"].items():
            if "error" in r:
                lines.append(f"  {side}: removing the containers failed: {r['error']}")
            else:
                first = f" ({r['first_error']})" if r.get("first_error") else ""
                lines.append(f"  {side}: {r['containers']} containers removed in {r['seconds']:.0f} s, {r['failed']} failed{first}")
        gone = c["namespaces_gone"]
        lines.append(
            "  namespaces deleted; none held by a process or mount (the kernel frees them, Docker's iptables rules with its own)"
            if gone["ok"]
            else f"  NOT all gone: held {gone['held']}, still named {gone['still_named']}"
        )
        left = c["processes_left"]
        lines.append(
            f"  processes naming the run's directory (dockerd, containerd, shims, qiaod): {len(left)}" + (f" {left[:5]}" if left else "")
        )
        lines.append(f"  containers' cgroups left: {len(c['cgroups_left'])}" + (f" {c['cgroups_left'][:3]}" if c["cgroups_left"] else ""))
        p = c["machine_docker_proxies"]
        lines.append(f"  docker-proxy processes on the machine: {p['before']} before the run, {p['after']} after")
        lines.append(
            "  the machine's own firewall (nft, iptables, ip6tables, legacy too) and forwarding switches: "
            + ("unchanged" if c["machine_firewall_unchanged"] else f"CHANGED: {sorted(c['machine_firewall_changed'])}")
        )
    if res["notes"]:
        lines += ["", "notes:"] + [f"  - {n}" for n in res["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.docker", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes", type=common.int_list, default=[0, 100, 500], help="containers already running, one port each (default 0,100,500)"
    )
    p.add_argument("--reps", type=int, default=20, help="timed run+rm per side and size (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed run+rm first, per side and size (default 2)")
    p.add_argument("--mem-ports", type=int, default=1000, help="published ports for the memory figure (default 1000; 0: skip)")
    p.add_argument("--range", type=int, default=100, help="ports per container in the memory phase (default 100)")
    p.add_argument(
        "--plugin-times",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time qiao's plugin calls through a relay on dockerd's plugin socket (default on)",
    )
    p.add_argument("--grow-workers", type=int, default=4, help="containers started at once while growing (default 4)")
    p.add_argument("--out", default=str(RESULTS), help="JSON results (default bench/results/docker.json)")
    args = p.parse_args(argv)
    if not args.sizes or args.sizes[0] < 0 or args.sizes[-1] > MAX_SIZE:
        p.error(f"--sizes: whole numbers between 0 and {MAX_SIZE}")
    if args.reps < 1 or args.warmup < 0 or args.grow_workers < 1:
        p.error("--reps and --grow-workers must be >= 1, --warmup >= 0")
    if not 0 <= args.mem_ports <= MAX_MEM_PORTS or args.range < 1:
        p.error(f"--mem-ports: 0 to {MAX_MEM_PORTS}; --range >= 1")
    if os.geteuid() != 0:
        print("bench.docker: needs root (network namespaces, dockerd)", file=sys.stderr)
        return 1
    from tests.integration.engines import BUSYBOX, DOCKER  # (imports need root: the integration conftest skips without)

    missing = [
        x for x in ("dockerd", "docker-proxy", "iptables", "containerd", "runc", "ip", "nsenter") if not shutil.which(x, path=SYSTEM_PATH)
    ]
    missing += [x for x in (DOCKER, BUSYBOX, QIAOD) if not os.access(x, os.X_OK)]
    if missing:
        print(f"bench.docker: missing {', '.join(missing)} (make setup: docker.io, busybox-static, iptables)", file=sys.stderr)
        return 1
    try:
        return common.run_and_save("bench.docker", lambda: bench(args), report, args.out)
    except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench.docker: {one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    with common.netns_run_dir_restored():
        sys.exit(main())
