"""bench/plugin_calls: what qiao's own part of a ``docker run -p`` + ``docker rm -f`` costs, by network size.

``python -m bench.plugin_calls [--sizes 0,100,500] [--reps 20]`` (root).

``bench/docker`` times the whole path through a real dockerd, whose own time
grows with its container count and drowns qiao's share.  This one drives
qiao's dockerd plugin (``DockerPlugin``, the handler behind the plugin socket)
in-process, over the real kernel (``LinuxHost``, ``NftFirewall``, a real store
and resolver), with the calls dockerd 20.10 makes, in its order:
``CreateEndpoint`` (address given, as by qiao's IPAM), ``Join``, the names
dockerd's events bring (``Attachments.update``), ``ProgramExternalConnectivity``
(one port), then ``RevokeExternalConnectivity``, ``Leave``, ``DeleteEndpoint``.
N endpoints (each with a name and a port) are already on the network.

It runs in a network namespace of its own (``unshare --net``, re-executing
itself), so every link, nft table and socket it makes goes with that namespace;
the store lives in a temporary directory removed at the end.  Target: the cycle
at the largest size <= 1.3x the cycle at the smallest.  Results: a table, and
bench/results/plugin_calls.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import common

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "plugin_calls.json")
TARGET_FLAT = 1.3
NETWORK_ID = "b" * 64
CALLS = ("CreateEndpoint", "Join", "names", "ProgramExternalConnectivity", "RevokeExternalConnectivity", "Leave", "DeleteEndpoint")


class Cycle:
    """One dockerd-like plugin over a fresh engine; ``one()`` times a container's calls."""

    def __init__(self, root: str):
        from qiao.dns.resolver import Resolver
        from qiao.docker_plugin.service import DockerPlugin
        from qiao.engine.engine import Engine, builtin_drivers
        from qiao.kernel.firewall import NftFirewall
        from qiao.kernel.host import LinuxHost
        from qiao.paths import Root

        host, firewall = LinuxHost(), NftFirewall()
        resolv = "/etc/resolv.conf"
        self.engine = Engine(Root.resolve(root), host, firewall, None, Resolver(resolv), resolv, builtin_drivers(host, firewall, resolv))
        self.engine.start()
        self.plugin = DockerPlugin(self.engine)
        self.made = 0
        pool = {"Pool": "10.90.0.0/16", "Gateway": "10.90.0.1/16"}
        self.call("NetworkDriver.CreateNetwork", {"NetworkID": NETWORK_ID, "Options": {}, "IPv4Data": [pool]})

    def call(self, name: str, body: dict[str, Any]) -> None:
        status, answer = self.plugin.call(name, json.dumps(body).encode())
        if status != 200:
            raise RuntimeError(f"{name}: {answer}")

    def up(self, times: dict[str, float]) -> str:
        self.made += 1
        eid, n = secrets.token_hex(32), self.made
        ref = {"NetworkID": NETWORK_ID, "EndpointID": eid}
        address = f"10.90.{n // 250}.{n % 250 + 2}/16"
        self._timed(times, "CreateEndpoint", {**ref, "Interface": {"Address": address}, "Options": {}})
        self._timed(times, "Join", {**ref, "SandboxKey": "/var/run/docker/netns/bench", "Options": {}})
        t0 = time.perf_counter()
        key = self.plugin._key(NETWORK_ID, eid)
        self.engine.attachments.update(key, dns_names=[f"c{n}", eid[:12]], aliases=[], shown_as=eid)
        times["names"] = (time.perf_counter() - t0) * 1000
        portmap = [{"Proto": 6, "Port": 80, "HostPort": 20000 + n, "HostPortEnd": 20000 + n}]
        self._timed(times, "ProgramExternalConnectivity", {**ref, "Options": {"com.docker.network.portmap": portmap}})
        return eid

    def down(self, eid: str, times: dict[str, float]) -> None:
        ref = {"NetworkID": NETWORK_ID, "EndpointID": eid}
        for name in ("RevokeExternalConnectivity", "Leave", "DeleteEndpoint"):
            self._timed(times, name, ref)

    def _timed(self, times: dict[str, float], name: str, body: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        self.call(f"NetworkDriver.{name}", body)
        times[name] = (time.perf_counter() - t0) * 1000


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """In the bench's own network namespace: every size, ``--reps`` timed cycles each."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    root = tempfile.mkdtemp(prefix="qiao-bench-plugin-")
    try:
        cycle = Cycle(root)
        sizes: dict[str, Any] = {}
        for size in args.sizes:
            while cycle.made < size:
                cycle.up({})
            per: dict[str, list[float]] = {name: [] for name in CALLS}
            totals = []
            for _ in range(args.warmup + args.reps):
                times: dict[str, float] = {}
                eid = cycle.up(times)
                cycle.down(eid, times)
                cycle.made -= 1
                for name, ms in times.items():
                    per[name].append(ms)
                totals.append(sum(times.values()))
            skip = args.warmup
            sizes[str(size)] = {"cycle": common.stats(totals[skip:]), **{n: common.stats(v[skip:]) for n, v in per.items()}}
        return sizes
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.plugin_calls", "--inside", "--sizes", ",".join(map(str, args.sizes))]
    argv += ["--reps", str(args.reps), "--warmup", str(args.warmup)]
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
        "args": {"sizes": args.sizes, "reps": args.reps, "warmup": args.warmup},
        "notes": [],
    }
    out = common.run(["unshare", "--net", *argv], timeout=3600)
    res["sizes"] = json.loads(out.stdout)
    first, last = str(args.sizes[0]), str(args.sizes[-1])
    ratio = res["sizes"][last]["cycle"]["median"] / res["sizes"][first]["cycle"]["median"]
    res["targets"] = [
        {
            "target": f"qiao's plugin calls at the largest size <= {TARGET_FLAT}x its figure at the smallest",
            "pass": ratio <= TARGET_FLAT,
            "detail": f"N={last} vs N={first}: {ratio:.2f}x",
        }
    ]
    return res


def report(res: dict[str, Any]) -> str:
    lines = [f"bench/plugin_calls  {res['when']}  kernel {res['kernel']}  {res['cpus']} CPUs  load {res['loadavg_start']:.1f}", ""]
    lines.append(f"{'N':>6}  {'cycle':>7}  " + "  ".join(f"{n[:12]:>12}" for n in CALLS) + "   (medians, ms)")
    for size, row in res["sizes"].items():
        lines.append(f"{size:>6}  {row['cycle']['median']:7.2f}  " + "  ".join(f"{row[n]['median']:12.2f}" for n in CALLS))
    lines += common.verdict_lines(res["targets"], {})
    if res["notes"]:
        lines += ["", "notes:"] + [f"  - {n}" for n in res["notes"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plugin_calls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=common.int_list, default=[0, 100, 500])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)  # the re-executed run in the new namespace
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/plugin_calls: must run as root (it makes links and nft tables in a namespace of its own)", file=sys.stderr)
        return 2
    if args.inside:
        print(json.dumps(measure(args)))
        return 0
    return common.run_and_save("bench/plugin_calls", lambda: bench(args), report, args.out)


if __name__ == "__main__":
    sys.exit(main())
