"""bench/observe: what ``qiao topology``, ``qiao trace`` (and ``qiao explain``) cost, at 0 and 100 containers.

``python -m bench.observe [--sizes 0,100] [--reps 10]`` (root; ~1 min).

Issue 14 asks that these commands answer "well under a second on a host
with 100 containers".  A qiaod of the bench's own runs in a throw-away host
namespace, with a neighbour machine ("outside") across its uplink, and two
containers the traces use: ``web`` (``-p 8080:7000``, a TCP listener on
7000) and ``client``, both on the default bridge.  At each size N, N more
containers (``sleep``) are added, mixed: a third on the default bridge, a
third on a user network, a third with a published port (on either).

Each command is timed as a user waits for it: the CLI process from start to
exit (``nsenter`` into the host namespace included, a few ms, so that a
CLI could never start a qiaod anywhere else); each repetition runs every
command once, in a random order.  For the commands that are one request,
the daemon's answer alone (the request from this process) is timed too,
without the CLI's start-up and drawing.  ``qiao explain run ...`` is timed
when the CLI has it (said skipped otherwise).  Target: every command's p90
at the largest N under 1 s.  Results: a table, the ratios largest/smallest N,
and bench/results/observe.json.

Everything lives in two namespaces (``qo<hex>-host``, ``qo<hex>-out``) and
one temporary directory; at the end, also after an error or Ctrl-C, the
containers are removed, qiaod stopped (by PID), container processes killed
by the PIDs of the bench's own store, the namespaces deleted (their links
and nft tables go with them) and the directory removed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

RUN = "qo" + secrets.token_hex(2)  # prefix of every object made here (interface names: <= 15 bytes)
BIN = Path(sys.executable).parent
QIAO, QIAOD = str(BIN / "qiao"), str(BIN / "qiaod")
RESULTS = Path(__file__).parent / "results" / "observe.json"
TARGET_S = 1.0
UPLINK = "198.51.100"  # host .1, outside .2
LISTENER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 7000)); s.listen(64)\n"
    "while True:\n    s.accept()[0].close()\n"
)

# (name, CLI arguments, the same as one API request for the daemon's part, or None)
COMMANDS: list[tuple[str, list[str], tuple[str, str, dict[str, Any] | None] | None]] = [
    ("topology", ["topology"], ("GET", "/qiao/topology", None)),
    ("topology --format svg", ["topology", "--format", "svg"], None),
    ("topology --format json", ["topology", "--format", "json"], None),
    ("trace client web:7000", ["trace", "client", "web:7000"], ("POST", "/qiao/trace", {"Source": "client", "Destination": "web:7000"})),
    ("trace outside web:7000", ["trace", "outside", "web:7000"], ("POST", "/qiao/trace", {"Source": "outside", "Destination": "web:7000"})),
]
EXPLAIN = ("explain run", ["explain", "run", "-d", "--name", "probe", "-p", "9090:80", "--network", "benchnet", "--", "sleep", "300"], None)


def nsrun(ns: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return common.run(["nsenter", f"--net=/run/netns/{ns}", "--", *args], check=check, timeout=timeout)


class Host:
    """The throw-away host: its namespace, the outside across its uplink, a qiao root and qiaod."""

    def __init__(self) -> None:
        from qiao.cli.client import Client
        from qiao.paths import Root

        self.namespaces: list[str] = []
        self.daemon: subprocess.Popen[bytes] | None = None
        self.root = tempfile.mkdtemp(prefix=f"{RUN}-")
        self.ns, out = self._netns("host"), self._netns("out")
        common.run(["ip", "link", "add", f"{RUN}h", "netns", self.ns, "type", "veth", "peer", "name", f"{RUN}o", "netns", out])
        for ns, dev, cidr in ((self.ns, f"{RUN}h", f"{UPLINK}.1/24"), (out, f"{RUN}o", f"{UPLINK}.2/24")):
            nsrun(ns, "ip", "addr", "add", cidr, "dev", dev)
            nsrun(ns, "ip", "link", "set", dev, "up")
        nsrun(self.ns, "ip", "route", "add", "default", "via", f"{UPLINK}.2")
        self.log_path = os.path.join(self.root, "qiaod.bench.log")
        self.daemon = common.start_qiaod(QIAOD, self.root, f"/run/netns/{self.ns}", self.log_path)
        self.api = Client(Root.resolve(self.root), autostart=False)
        self.made = 0

    def _netns(self, suffix: str) -> str:
        name = f"{RUN}-{suffix}"
        common.run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        nsrun(name, "ip", "link", "set", "lo", "up")
        return name

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return nsrun(self.ns, QIAO, "--root", self.root, *args, check=check)

    def fill(self, size: int) -> None:
        """Up to ``size`` background containers: default bridge, the user network, a published port."""
        while self.made < size:
            i = self.made
            opts = [[], ["--network", "benchnet"], ["-p", f"{20000 + i}:80"] + (["--network", "benchnet"] if i % 2 else [])][i % 3]
            self.cli("run", "-d", "--name", f"bg{i}", *opts, "--", "sleep", "3600")
            self.made += 1

    def cleanup(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            with contextlib.suppress(Exception):
                for row in self.api.request("GET", "/containers/json", {"all": 1}):
                    with contextlib.suppress(Exception):
                        self.api.request("DELETE", f"/containers/{row['Id']}", {"force": 1})
        if self.daemon is not None:
            common.stop(self.daemon, 20)
        common.kill_qiaod(self.root)
        common.kill_containers(self.root)
        for point in reversed(common.mounts_under(self.root)):
            common.run(["umount", "-l", point], check=False)
        for ns in reversed(self.namespaces):
            common.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def timed_cli(host: Host, args: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = host.cli(*args, check=False)
    return (time.perf_counter() - t0) * 1000, proc


def measure(host: Host, commands: list[Any], args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    cli: dict[str, list[float]] = {name: [] for name, _a, _r in commands}
    api: dict[str, list[float]] = {name: [] for name, _a, req in commands if req}
    first: dict[str, str] = {}
    failed: dict[str, str] = {}
    for rep in range(args.warmup + args.reps):
        order = list(commands)
        rng.shuffle(order)
        for name, argv, req in order:
            ms, proc = timed_cli(host, argv)
            if name.startswith("explain"):
                host.cli("rm", "-f", "probe", check=False)  # should explain have made it, it must not
            if proc.returncode != 0 and not (name.startswith("trace") and proc.returncode == 1):
                failed[name] = (proc.stderr or proc.stdout).strip()[-300:]
            first.setdefault(name, proc.stdout.splitlines()[0] if proc.stdout else "")
            if name.startswith("trace") and "result: delivered" not in proc.stdout:
                failed[name] = f"not delivered: {proc.stdout.strip()[-300:]}"
            if rep >= args.warmup:
                cli[name].append(ms)
            if req:
                t0 = time.perf_counter()
                host.api.request(req[0], req[1], body=req[2])
                if rep >= args.warmup:
                    api[name].append((time.perf_counter() - t0) * 1000)
    return {
        name: {
            "cli": common.stats(cli[name]),
            "api": common.stats(api.get(name, [])),
            "first_line": first.get(name, ""),
            "error": failed.get(name, ""),
        }
        for name, _a, _r in commands
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from qiao.cli.main import COMMANDS as CLI_COMMANDS

    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
        "args": {"sizes": args.sizes, "reps": args.reps, "warmup": args.warmup, "seed": args.seed},
        "notes": [],
        "skipped": {},
    }
    commands = list(COMMANDS)
    if "explain" in CLI_COMMANDS:
        commands.append(EXPLAIN)
    else:
        res["skipped"]["explain run"] = "this qiao has no `qiao explain` yet (it comes with another branch of issue 14)"
    firewall_before = common.machine_firewall()
    rng = random.Random(args.seed)
    host = None
    try:
        host = Host()
        host.cli("network", "create", "--subnet", "10.77.0.0/16", "benchnet")
        host.cli("run", "-d", "--name", "web", "-p", "8080:7000", "--", sys.executable, "-c", LISTENER)
        host.cli("run", "-d", "--name", "client", "--", "sleep", "3600")
        time.sleep(0.3)  # web's listener
        sizes = {}
        for size in args.sizes:
            t0 = time.monotonic()
            host.fill(size)
            print(f"N={size}: {size} background containers ({time.monotonic() - t0:.0f} s to add); timing ...", file=sys.stderr, flush=True)
            sizes[str(size)] = measure(host, commands, args, rng)
        res["sizes"] = sizes
    finally:
        inodes = {}
        if host is not None:
            for ns in host.namespaces:
                with contextlib.suppress(OSError):
                    inodes[ns] = os.stat(f"/run/netns/{ns}").st_ino
            host.cleanup()
        gone = common.namespaces_gone(inodes, RUN)
        if not gone["ok"]:
            res["notes"].append(f"left behind: {gone}")
        if common.machine_firewall() != firewall_before:
            res["notes"].append("the machine's own firewall or forwarding switches changed during the run (another program, or this bench)")
    last = str(args.sizes[-1])
    res["targets"] = [
        {
            "target": f"{name}: p90 at N={last} under {TARGET_S:g} s",
            "pass": not row["error"] and row["cli"]["p90"] < TARGET_S * 1000,
            "detail": f"median {row['cli']['median']:.0f} ms, p90 {row['cli']['p90']:.0f} ms"
            + (f"; failed: {row['error']}" if row["error"] else ""),
        }
        for name, row in res["sizes"][last].items()
    ]
    return res


def report(res: dict[str, Any]) -> str:
    sizes = list(res["sizes"])
    lo, hi = sizes[0], sizes[-1]
    lines = [f"bench/observe  {res['when']}  kernel {res['kernel']}  {res['cpus']} CPUs  load {res['loadavg_start']:.1f}", ""]
    head = f"{'command (CLI, start to exit)':32}" + "".join(f"{'N=' + s + ' median/p90':>20}" for s in sizes) + f"{'ratio':>8}"
    lines += [head, "-" * len(head)]
    for name in res["sizes"][lo]:
        cells = "".join(f"{res['sizes'][s][name]['cli']['median']:>11.0f} /{res['sizes'][s][name]['cli']['p90']:>5.0f} ms" for s in sizes)
        ratio = res["sizes"][hi][name]["cli"]["median"] / res["sizes"][lo][name]["cli"]["median"]
        lines.append(f"{name:32}{cells}{ratio:>7.2f}x")
    lines += ["", f"{'the daemon answer alone':32}" + "".join(f"{'N=' + s + ' median':>20}" for s in sizes) + f"{'ratio':>8}"]
    for name in res["sizes"][lo]:
        if res["sizes"][lo][name]["api"]["n"]:
            cells = "".join(f"{res['sizes'][s][name]['api']['median']:>17.0f} ms" for s in sizes)
            ratio = res["sizes"][hi][name]["api"]["median"] / res["sizes"][lo][name]["api"]["median"]
            lines.append(f"{name:32}{cells}{ratio:>7.2f}x")
    lines += common.verdict_lines(res["targets"], res["skipped"])
    if res["notes"]:
        lines += ["", "notes:"] + [f"  - {n}" for n in res["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.observe", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=common.int_list, default=[0, 100], help="background containers (default 0,100)")
    p.add_argument("--reps", type=int, default=10, help="timed runs of each command per size (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first, per size (default 1)")
    p.add_argument("--seed", type=int, default=secrets.randbelow(1 << 30), help="the order of the commands in each repetition")
    p.add_argument("--out", default=str(RESULTS), help="JSON results (default bench/results/observe.json)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.observe: needs root (namespaces, nftables)", file=sys.stderr)
        return 1
    return common.run_and_save("bench.observe", lambda: bench(args), report, args.out)


if __name__ == "__main__":
    with common.netns_run_dir_restored():
        sys.exit(main())
