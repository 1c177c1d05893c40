"""What the benchmarks share: running a command, waiting for and stopping a
process they started, and removing what a qiaod of their own left behind.

Standard library and qiao's stdlib-only ``qiao.proc`` (its netns helper is
imported lazily, for the end of a run): the benchmarks' workers import
this, and nothing here is on a measured path.  A process is only ever ended by the
PID of a ``Popen`` the benchmark made itself, or -- for containers -- by the
PIDs in the benchmark's own store, checked first against the shim's start
time and the command's parent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from qiao.proc import alive, parent

T = TypeVar("T")


@contextlib.contextmanager
def netns_run_dir_restored() -> Iterator[None]:
    """``ip netns add`` bind-mounts /run/netns onto itself the first time and never
    undoes it: when this run caused that mount, undo it at the end (once empty)."""
    from qiao.kernel import netns

    was_mounted = netns.run_dir_mounted()
    try:
        yield
    finally:
        netns.release_run_dir(was_mounted)


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated whole numbers, sorted, without repeats."""
    try:
        return sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, not {text!r}") from None


def run(args: Sequence[str], *, check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` with text output captured; a failure (``check``) raises with the end of its output."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)[:200]} -> {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc


def stats(samples: list[float]) -> dict[str, Any]:
    """n, median, p90, min and max of ``samples`` (linear interpolation between ranks); ``{"n": 0}`` when empty."""
    if not samples:
        return {"n": 0}
    s = sorted(samples)

    def q(p: float) -> float:
        k = (len(s) - 1) * p
        lo = int(k)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {"n": len(s), "median": q(0.5), "p90": q(0.9), "min": s[0], "max": s[-1]}


def pkg_version(name: str) -> str:
    """The installed version of a Debian package (without its ``+ds`` suffix), "" when it is not installed."""
    with contextlib.suppress(OSError):
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout.split("+")[0]
    return ""


def wait_for_qiaod(
    daemon: subprocess.Popen[Any], ready: Callable[[], object], detail: Callable[[], str], timeout: float = 30, interval: float = 0.05
) -> None:
    """Call ``ready()`` until it neither raises nor returns False (a request that
    succeeds is enough); raise with ``detail()`` (where to look: a log's tail or
    path) should ``daemon`` exit or ``timeout`` pass first."""
    deadline = time.monotonic() + timeout
    while True:
        if daemon.poll() is not None:
            raise RuntimeError(f"qiaod exited {daemon.returncode}: {detail()}")
        with contextlib.suppress(Exception):
            if ready() is not False:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"qiaod did not come up in {timeout:g} s: {detail()}")
        time.sleep(interval)


def stop(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM to a process this benchmark started (by its PID), SIGKILL after ``timeout`` s; reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def interruptible(name: str, bench: Callable[[], T]) -> T | None:
    """``bench()`` with SIGINT, SIGTERM and SIGHUP raising KeyboardInterrupt (SIGINT
    too: a background job starts with it ignored), so that its ``finally`` removes
    what it made; None, said on stderr, when it was interrupted."""

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    try:
        return bench()
    except KeyboardInterrupt:
        print(f"{name}: interrupted; everything it made was removed", file=sys.stderr)
        return None


def run_and_save(name: str, bench: Callable[[], dict[str, Any]], report: Callable[[dict[str, Any]], str], out: str) -> int:
    """The end every benchmark shares: run ``bench`` (interruptibly), note a busy
    machine, print ``report(res)``, write the JSON; the exit status."""
    t0 = time.monotonic()
    res = interruptible(name, bench)
    if res is None:
        return 130
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["loadavg_end"] = os.getloadavg()[0]
    if max(res["loadavg_start"], res["loadavg_end"]) > 1.5:
        res["notes"].append(
            f"the machine was busy with other work (load average {res['loadavg_start']:.1f} at the start, "
            f"{res['loadavg_end']:.1f} at the end): times are noisier than on an idle machine"
        )
    print(report(res))
    print(f"\n(total {res['seconds']:.0f} s)")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"results: {path}")
    return 0


# -- /proc ---------------------------------------------------------------------


def mounts_under(directory: str) -> list[str]:
    """The mount points below ``directory`` (not itself), in /proc/self/mountinfo order."""
    prefix = directory.rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
            if point.startswith(prefix):
                out.append(point)
    return out


def rss_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB (VmRSS of /proc/PID/status, Pss of smaps_rollup); 0 for a process gone."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def children(pid: int, comm: str | None = None) -> list[int]:
    """The processes whose parent is ``pid`` (those named ``comm`` only, when given)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                name, _, rest = stat.partition(" (")[2].rpartition(")")
                if int(rest.split()[1]) == pid and (comm is None or name == comm):
                    out.append(int(entry))
    return out


def namespaces_gone(inodes: dict[str, int], prefix: str) -> dict[str, Any]:
    """Once a run's namespace files (``inodes``: name -> inode) are deleted: whether any
    process or mount still holds one of them (if none does, the kernel frees it, and its
    iptables and nftables rules with it), and the names in /run/netns still starting with ``prefix``."""
    from qiao.kernel import netns

    held: dict[str, list[str]] = {}
    wanted = {f"net:[{ino}]": ns for ns, ino in inodes.items()}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                ns = wanted.get(os.readlink(f"/proc/{entry}/ns/net"))
                if ns:
                    held.setdefault(ns, []).append(f"pid {entry}")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            ns = wanted.get(fields[3])
            if ns:
                held.setdefault(ns, []).append(f"mount {fields[4]}")
    run_dir = netns.NETNS_RUN_DIR
    named = [n for n in os.listdir(run_dir) if n.startswith(prefix)] if os.path.isdir(run_dir) else []
    return {"ok": not held and not named, "held": held, "still_named": named}


def machine_firewall() -> dict[str, str]:
    """The firewall and forwarding switches of this thread's network namespace (the
    machine's own, at a benchmark's start and end): ``nft list ruleset``, the
    ``*-save`` of iptables and ip6tables (nft and legacy back-ends; without the
    comment lines, which carry the time, nor the chains' packet counters), ``ip_forward`` and the bridge's netfilter switch.
    Equal snapshots before and after a run: the run changed none of it."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    out: dict[str, str] = {}
    for name, argv in (
        ("nft", ["nft", "list", "ruleset"]),
        ("iptables", ["iptables-save"]),
        ("ip6tables", ["ip6tables-save"]),
        ("iptables-legacy", ["iptables-legacy-save"]),
        ("ip6tables-legacy", ["ip6tables-legacy-save"]),
    ):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
            lines = (line.split(" [")[0] if line.startswith(":") else line for line in proc.stdout.splitlines())  # no counters
            out[name] = "\n".join(line for line in lines if not line.startswith("#"))
        except (OSError, subprocess.SubprocessError) as exc:
            out[name] = f"({type(exc).__name__})"
    for key in ("ipv4/ip_forward", "bridge/bridge-nf-call-iptables"):
        try:
            out[key] = Path(f"/proc/sys/net/{key}").read_text().strip()
        except OSError:
            out[key] = "(none)"
    return out


# -- a qiao root of the benchmark's own ------------------------------------------


def start_qiaod(qiaod: str, root: str, ns_path: str, log_path: str) -> subprocess.Popen[bytes]:
    """Start ``qiaod --root ROOT`` in the network namespace ``ns_path``, in a session of
    its own (a Ctrl-C reaches the benchmark, which stops qiaod in order), its output
    appended to ``log_path``; return once it answers on its API socket."""
    from qiao.cli.client import Client
    from qiao.kernel import netns
    from qiao.paths import Root

    def tail() -> str:
        with contextlib.suppress(OSError):
            return Path(log_path).read_text(errors="replace")[-1500:]
        return ""

    with open(log_path, "ab") as logf, netns.entered(ns_path):
        daemon = subprocess.Popen([qiaod, "--root", root], stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
    api = Client(Root.resolve(root), autostart=False)
    try:
        wait_for_qiaod(daemon, lambda: api.request("GET", "/_ping"), tail)
    except BaseException:
        stop(daemon, 10)
        raise
    return daemon


def kill_qiaod(root: str) -> None:
    """SIGKILL the qiaod of the qiao root ``root`` by the PID in its pid file, if that
    process's command line still names ``root`` (one a client auto-started, or one
    ``stop`` could not end)."""
    from qiao.paths import Root

    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(Path(Root.resolve(root).pidfile).read_text().split()[0])
        if root.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


def kill_containers(root: str) -> None:
    """SIGKILL the containers still running from the qiao root ``root`` (qiaod died, or
    ``rm -f`` failed): each shim whose start time is the one in the store, and its
    command if the shim is still its parent."""
    db = os.path.join(root, "lib", "qiao.db")
    if not os.path.exists(db):
        return
    import sqlite3

    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(db)) as conn:
        rows = [json.loads(r[0]) for r in conn.execute("SELECT body FROM containers")]
        for ctr in rows:
            shim, pid = ctr.get("shim_pid") or 0, ctr.get("pid") or 0
            if not alive(shim, ctr.get("shim_start") or 0):
                continue  # gone, or the PID now belongs to someone else
            if pid > 0 and parent(pid) == shim:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(shim, signal.SIGKILL)


def verdict_lines(targets: list[dict[str, Any]], skipped: dict[str, str]) -> list[str]:
    """A benchmark's targets (PASS, FAIL, or ---- when not judged) and what it skipped, as report lines."""
    lines = ["", "targets:"]
    for t in targets:
        mark = "PASS" if t.get("pass") is True else "FAIL" if t.get("pass") is False else "----"
        lines.append(f"  {mark}  {t['target']}: {t['detail']}")
    if skipped:
        lines += ["", "skipped:"] + [f"  {k}: {v}" for k, v in skipped.items()]
    return lines
