"""bench/soak: nothing leaks, nothing outlives ``rm -f``.

``python -m bench.soak [--cycles 2000]`` (root): N cycles of

    qiao run -d -p PORT:80 -- sleep 300      (the real CLI, a published port)
    qiao rm -f ID

against one qiaod in a throw-away "host" namespace, reading qiaod's RSS,
open fds (by kind), threads, child processes and zombies at the start, the
middle and the end (and every N/20 cycles for the JSON).  The same host port
every cycle: a mapping that ``rm -f`` did not release would refuse the next
``run``.  After the last cycle: no container, sandbox file, veth, container
directory or nft map element may be left.

Targets (end against the start, taken after ``--warmup`` cycles, when lazy
imports and caches are in place): open fds and threads flat, RSS within
+10 MiB, no zombie.  A miss prints MISS, never a failing exit status.

Everything lives in one namespace ``qk<hex>-host`` and one temporary root;
all of it (containers, qiaod -- by PID --, mounts, the namespace, the
directory) is removed at the end, also after a failure, Ctrl-C, SIGTERM or
SIGHUP.  No traffic leaves that namespace.  Results: a table on stdout,
JSON in bench/results/soak.json.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

RUN = "qk" + secrets.token_hex(2)  # prefix of every object made here
BIN = Path(sys.executable).parent
QIAO, QIAOD = str(BIN / "qiao"), str(BIN / "qiaod")
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "soak.json"
RSS_BUDGET_MIB = 10.0


def log(msg: str) -> None:
    print(f"[bench.soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- what qiaod holds ------------------------------------------------------------


def _fd_kind(target: str, netlink: set[str]) -> str:
    if target.startswith("socket:["):
        return "netlink" if target[8:-1] in netlink else "socket"
    if target.startswith("anon_inode:"):
        return target[11:].strip("[]")
    if target.startswith("pipe:"):
        return "pipe"
    return "file"


def sample(pid: int, cycle: int) -> dict[str, Any]:
    """qiaod's RSS (KiB), open fds (by kind), threads, children and zombie children."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    netlink: set[str] = set()  # the inodes of netlink sockets in qiaod's namespace
    with contextlib.suppress(OSError):
        netlink = {line.split()[-1] for line in Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]}
    kinds: collections.Counter[str] = collections.Counter()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):  # closed meanwhile
            kinds[_fd_kind(os.readlink(f"{fd_dir}/{fd}"), netlink)] += 1
    children = zombies = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    children += 1
                    zombies += fields[0] == "Z"
    return {
        "cycle": cycle,
        "rss_kib": int(status["VmRSS"].split()[0]),
        "fds": sum(kinds.values()),
        "fd_kinds": dict(sorted(kinds.items())),
        "threads": int(status["Threads"]),
        "children": children,
        "zombies": zombies,
        "t": time.monotonic(),
    }


def settled(pid: int, cycle: int, timeout: float = 3.0) -> dict[str, Any]:
    """A sample once fds, threads and children hold still for three reads (the
    next spare shim starting, a veth being retired): what is held, not what is in flight."""
    deadline = time.monotonic() + timeout
    last, same = None, 0
    while True:
        s = sample(pid, cycle)
        key = (s["fds"], s["threads"], s["children"])
        same = same + 1 if key == last else 0
        last = key
        if same >= 2 or time.monotonic() > deadline:
            return s
        time.sleep(0.05)


# -- the host --------------------------------------------------------------------


class Host:
    """A throw-away namespace with its own qiao root and a qiaod this benchmark started."""

    def __init__(self) -> None:
        self.ns = f"{RUN}-host"
        self.root = ""
        self.made = False  # the namespace: deleted at the end only if this run made it
        self.daemon: subprocess.Popen[bytes] | None = None
        self.api: Any = None
        self.pid = 0

    def start(self) -> None:
        from qiao.cli.client import Client
        from qiao.paths import Root

        common.run(["ip", "netns", "add", self.ns])
        self.made = True
        self.nsrun("ip", "link", "set", "lo", "up")
        self.root = tempfile.mkdtemp(prefix=f"{RUN}-")
        self.log_path = os.path.join(self.root, "qiaod.bench.log")
        with open(self.log_path, "ab") as logf:
            self.daemon = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.ns}", "--", QIAOD, "--root", self.root],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        self.api = Client(Root.resolve(self.root), autostart=False)
        common.wait_for_qiaod(self.daemon, lambda: self.api.request("GET", "/info"), self.log_tail)
        self.pid = int(self.api.request("GET", "/info")["Pid"])  # nsenter exec()s: the same process as self.daemon

    def nsrun(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return common.run(["nsenter", f"--net=/run/netns/{self.ns}", "--", *args], check=check, timeout=timeout)

    def qiao(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.nsrun(QIAO, "--root", self.root, *args, check=check)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self.log_path).read_text(errors="replace")[-2000:]
        return ""

    def leftovers(self) -> dict[str, Any]:
        """What a clean qiaod holds after every container is gone: nothing but qiao0 and lo."""
        links = [line.split(": ")[1].split("@")[0] for line in self.nsrun("ip", "-o", "link", "show").stdout.splitlines()]
        table = self.nsrun("nft", "-j", "list", "map", "inet", "qiao", "published", check=False).stdout
        elements = 0
        with contextlib.suppress(ValueError, KeyError, IndexError):
            elements = len(next(i["map"] for i in json.loads(table)["nftables"] if "map" in i).get("elem", []))
        containers_dir = os.path.join(self.root, "lib", "containers")
        return {
            "containers": len(self.api.request("GET", "/containers/json", {"all": 1})),
            "sandboxes": len(os.listdir(os.path.join(self.root, "run", "netns"))),
            "container_dirs": len(os.listdir(containers_dir)) if os.path.isdir(containers_dir) else 0,
            "links": sorted(n for n in links if n not in ("lo", "qiao0")),
            "published_elements": elements,
        }

    def cleanup(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None and self.api is not None:
            with contextlib.suppress(Exception):
                for row in self.api.request("GET", "/containers/json", {"all": 1}):
                    with contextlib.suppress(Exception):
                        self.api.request("DELETE", f"/containers/{row['Id']}", {"force": 1})
        if self.daemon is not None:
            common.stop(self.daemon, 20)
        if self.root:
            common.kill_containers(self.root)
            for point in reversed(common.mounts_under(self.root)):  # sandbox files left by a qiaod that died
                common.run(["umount", "-l", point], check=False)
        if self.made:
            common.run(["ip", "netns", "del", self.ns], check=False)  # its links and nft table go with it
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)


# -- the run -----------------------------------------------------------------------


def soak(args: argparse.Namespace) -> dict[str, Any]:
    cycles = args.cycles
    warmup = args.warmup if args.warmup < cycles else cycles // 10
    every = max(1, cycles // 20)
    points = {warmup: "start", warmup + (cycles - warmup) // 2: "middle", cycles: "end"}  # "end" wins a tie
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
        "args": vars(args),
        "samples": [],
        "cycle_ms": [],
        "notes": [],
    }
    host = Host()
    try:
        host.start()
        pid = host.pid
        log(f"qiaod {pid} in {host.ns}: {cycles} cycles of run -d -p {args.port}:80 + rm -f (warm-up {warmup})")
        res["samples"].append({"point": "fresh", **settled(pid, 0)})
        run_args = ["run", "-d", "-p", f"{args.port}:80", "--", "sleep", "300"]
        for i in range(1, cycles + 1):
            t = time.perf_counter()
            cid = host.qiao(*run_args).stdout.strip()
            host.qiao("rm", "-f", cid)
            res["cycle_ms"].append(round((time.perf_counter() - t) * 1e3, 2))
            point = points.get(i, "")
            if point or i % every == 0:
                res["samples"].append({"point": point, **settled(pid, i)})
                s = res["samples"][-1]
                log(f"{i:6}: rss {s['rss_kib'] / 1024:6.1f} MiB, fds {s['fds']}, threads {s['threads']}, zombies {s['zombies']}")
        res["leftovers"] = host.leftovers()
        res["daemon_alive"] = host.daemon is not None and host.daemon.poll() is None
    finally:
        log("cleaning up")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not leave half of it behind
            signal.signal(sig, signal.SIG_IGN)
        host.cleanup()
    return res


def verdicts(res: dict[str, Any]) -> list[dict[str, Any]]:
    by = {s["point"]: s for s in res["samples"] if s["point"]}
    start, end = by.get("start") or by["fresh"], by["end"]
    rss = (end["rss_kib"] - start["rss_kib"]) / 1024
    left = res["leftovers"]
    clean = not (left["containers"] or left["sandboxes"] or left["container_dirs"] or left["links"] or left["published_elements"])
    zombies = max(s["zombies"] for s in res["samples"])
    return [
        {"target": "open fds flat (end - start <= 0)", "pass": end["fds"] <= start["fds"], "detail": f"{start['fds']} -> {end['fds']}"},
        {"target": "threads flat", "pass": end["threads"] <= start["threads"], "detail": f"{start['threads']} -> {end['threads']}"},
        {"target": f"RSS within +{RSS_BUDGET_MIB:g} MiB", "pass": rss <= RSS_BUDGET_MIB, "detail": f"{rss:+.1f} MiB"},
        {"target": "no zombie under qiaod, at any sample", "pass": zombies == 0, "detail": f"at most {zombies}"},
        {"target": "nothing left after the last rm -f", "pass": clean, "detail": json.dumps(left)},
    ]


def report(res: dict[str, Any]) -> str:
    cycles = res["args"]["cycles"]
    lines = [
        f"bench.soak: {cycles} cycles of `qiao run -d -p {res['args']['port']}:80 -- sleep 300` + `qiao rm -f`, one qiaod",
        f"kernel {res['kernel']}, {res['cpus']} cpus, load average {res['loadavg_start']:.2f} at the start",
        "",
        "| point | cycle | RSS MiB | open fds | of which netlink | threads | children | zombies |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in res["samples"]:
        if s["point"]:
            lines.append(
                f"| {s['point']} | {s['cycle']} | {s['rss_kib'] / 1024:.1f} | {s['fds']} | {s['fd_kinds'].get('netlink', 0)} "
                f"| {s['threads']} | {s['children']} | {s['zombies']} |"
            )
    ms = sorted(res["cycle_ms"])
    if ms:
        p90 = ms[int(0.9 * (len(ms) - 1))]
        lines += ["", f"one cycle (two CLI processes): median {statistics.median(ms):.1f} ms, p90 {p90:.1f} ms, max {ms[-1]:.0f} ms"]
    lines += ["", "targets (end against start):"]
    res["targets"] = verdicts(res)
    for v in res["targets"]:
        lines.append(f"  {'PASS' if v['pass'] else 'MISS'}  {v['target']}: {v['detail']}")
    for note in res["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=2000, help="run + rm cycles (default 2000; ~60 ms each)")
    p.add_argument("--warmup", type=int, default=50, help="cycles before the 'start' sample (default 50)")
    p.add_argument("--port", type=int, default=18080, help="the host port published every cycle (default 18080)")
    p.add_argument("--out", default=str(RESULTS), help="JSON results (default bench/results/soak.json)")
    args = p.parse_args(argv)
    if args.cycles < 2 or args.warmup < 0 or not 1 <= args.port <= 65535:
        print("bench.soak: --cycles must be >= 2, --warmup >= 0 and --port between 1 and 65535", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench.soak: needs root (namespaces, nftables)", file=sys.stderr)
        return 1
    return common.run_and_save("bench.soak", lambda: soak(args), report, args.out)


if __name__ == "__main__":
    with common.netns_run_dir_restored():
        sys.exit(main())
