"""bench.explain: how long ``qiao explain`` answers with 0 ... N containers running.

One throw-away host (a network namespace, its own qiao root and qiaod).  At
each size (containers on a user network, each publishing a port) it times
``POST /qiao/explain`` for ``run -p ... --network mynet`` as a dry run
(plain and ``--from-scratch``), and ``qiao explain`` end to end (the CLI's
start included).  The issue's target: well under a second at 100 containers.
Everything it made is removed at the end, also when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

RUN = "qx" + secrets.token_hex(2)  # prefix of every object made here
BIN = Path(sys.executable).parent
QIAO, QIAOD = str(BIN / "qiao"), str(BIN / "qiaod")
RESULTS = Path(__file__).parent / "results" / "explain.json"
TARGET_MS = 250  # "well under a second": the p90 of every kind at the largest size
RUN_BODY = {
    "Cmd": ["true"],
    "HostConfig": {"NetworkMode": "mynet", "PortBindings": {"80/tcp": [{"HostPort": "8080"}]}},
    "NetworkingConfig": {"EndpointsConfig": {"mynet": {}}},
}
CLI_ARGS = ["explain", "run", "-p", "8080:80", "--network", "mynet", "--", "true"]


def explain_times(api: Any, fresh: bool, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        started = time.perf_counter()
        api.request("POST", "/qiao/explain", body={"ops": [{"op": "run", "body": RUN_BODY}], "fresh": fresh})
        out.append((time.perf_counter() - started) * 1000)
    return out


def cli_times(ns: str, root: str, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        started = time.perf_counter()
        common.run(["nsenter", f"--net=/run/netns/{ns}", "--", QIAO, "--root", root, *CLI_ARGS])
        out.append((time.perf_counter() - started) * 1000)
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from qiao.cli.client import Client
    from qiao.paths import Root

    res: dict[str, Any] = {"sizes": {}, "notes": [], "loadavg_start": os.getloadavg()[0], "reps": args.reps}
    ns, root, made, daemon = f"{RUN}-host", tempfile.mkdtemp(prefix=f"{RUN}-"), False, None
    try:
        common.run(["ip", "netns", "add", ns])
        made = True
        common.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        daemon = common.start_qiaod(QIAOD, root, f"/run/netns/{ns}", os.path.join(root, "qiaod.bench.log"))
        api = Client(Root.resolve(root), autostart=False)
        api.request("POST", "/networks/create", body={"Name": "mynet", "IPAM": {"Config": [{"Subnet": "10.88.0.0/16"}]}})
        running = 0
        for size in args.sizes:
            while running < size:
                body = {**RUN_BODY, "Cmd": ["sleep", "3600"]}
                body["HostConfig"] = {**RUN_BODY["HostConfig"], "PortBindings": {"80/tcp": [{"HostPort": str(20000 + running)}]}}
                cid = api.request("POST", "/containers/create", body=body)["Id"]
                api.request("POST", f"/containers/{cid}/start")
                running += 1
            res["sizes"][size] = {
                "plain": common.stats(explain_times(api, False, args.reps)),
                "from scratch": common.stats(explain_times(api, True, args.reps)),
                "CLI end to end": common.stats(cli_times(ns, root, args.reps)),
            }
            print(f"{size} containers: done", file=sys.stderr)
    finally:
        if daemon is not None:
            with contextlib.suppress(Exception):
                api_ = Client(Root.resolve(root), autostart=False)
                for row in api_.request("GET", "/containers/json", {"all": 1}):
                    with contextlib.suppress(Exception):
                        api_.request("DELETE", f"/containers/{row['Id']}", {"force": 1})
            common.stop(daemon, 20)
        common.kill_qiaod(root)
        common.kill_containers(root)
        for point in reversed(common.mounts_under(root)):
            common.run(["umount", "-l", point], check=False)
        if made:
            common.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(root, ignore_errors=True)
    largest = res["sizes"][max(res["sizes"])] if res["sizes"] else {}
    res["pass"] = bool(largest) and all(s["p90"] < TARGET_MS for s in largest.values())
    return res


def report(res: dict[str, Any]) -> str:
    lines = [f"qiao explain: ms per answer ({res['reps']} repetitions; median / p90)", ""]
    kinds = ["plain", "from scratch", "CLI end to end"]
    lines.append(f"{'containers':>10}  " + "  ".join(f"{k:>18}" for k in kinds))
    for size, row in res["sizes"].items():
        lines.append(f"{size:>10}  " + "  ".join(f"{row[k]['median']:>8.1f} / {row[k]['p90']:>6.1f}" for k in kinds))
    lines.append("")
    lines.append(f"  {'PASS' if res['pass'] else 'MISS'}  every p90 at the largest size under {TARGET_MS} ms")
    lines += [f"note: {note}" for note in res["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.explain", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=common.int_list, default=[0, 100], help="containers running, comma-separated (default 0,100)")
    p.add_argument("--reps", type=int, default=20, help="repetitions per measurement (default 20)")
    p.add_argument("--out", default=str(RESULTS), help="JSON results (default bench/results/explain.json)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.explain: needs root (namespaces, nftables)", file=sys.stderr)
        return 1
    if not args.sizes or args.sizes[-1] > 1000 or args.reps < 1:
        print("bench.explain: --sizes between 0 and 1000, --reps >= 1", file=sys.stderr)
        return 2
    return common.run_and_save("bench.explain", lambda: bench(args), report, args.out)


if __name__ == "__main__":
    with common.netns_run_dir_restored():
        sys.exit(main())
