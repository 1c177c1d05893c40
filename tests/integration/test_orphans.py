"""No process outlives its container, whatever crashes.

The crash test SIGKILLs qiaod at random moments of ``qiao run -d`` and
``qiao rm -f`` (a CLI that finds no daemon autostarts one: that one is
SIGKILLed as well), restarts it, and at the end ``rm -f`` removes every
container: then no process whose command line carries the test's marker
may be left.  Each container's command forks: a child, and a grandchild
that left the session with ``setsid`` (a daemon), all carrying the marker.

``QIAO_CRASH_ROUNDS`` sets the number of rounds (default 25),
``QIAO_CRASH_SEED`` the random seed (printed on failure).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import QIAO, RUN, Host, wait_for

# A command that forks a child and a setsid'd grandchild; all three sleep with MARKER in argv.
FORKER = (
    "import os, sys, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        time.sleep(600)\n"
    "    time.sleep(600)\n"
    "else:\n"
    "    time.sleep(600)\n"
)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def marked(marker: str) -> list[int]:
    """Live processes whose command line carries ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and alive(int(entry)):
                found.append(int(entry))
    return found


def daemon_of(root: str) -> int | None:
    """A live qiaod of ``root`` (the harness's or one a CLI autostarted), by the pid file."""
    try:
        pid = int(Path(root, "run", "qiaod.pid").read_text().strip() or 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"qiao.daemon.main" in cmdline and root.encode() in cmdline and alive(pid) else None


def crash(h: Host) -> None:
    """SIGKILL whatever qiaod serves ``h`` now (the harness's, or one a CLI autostarted)."""
    if h.daemon is not None and h.daemon.poll() is None:
        h.daemon.kill()
        h.daemon.wait()
    h.daemon = None
    pid = daemon_of(h.root)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        wait_for("the autostarted qiaod to die", lambda: not alive(pid), timeout=20)


def test_sigkill_of_qiaod_during_run_and_rm_leaves_no_process(make_host) -> None:
    rounds = int(os.environ.get("QIAO_CRASH_ROUNDS", "25"))
    seed = int(os.environ.get("QIAO_CRASH_SEED", str(secrets.randbits(32))))
    rng = random.Random(seed)
    h = make_host("or")
    marker = f"{RUN}-orphan-{secrets.token_hex(3)}"
    cli: subprocess.Popen | None = None
    try:
        for _ in range(rounds):
            ids = h.qiao("ps", "-q").stdout.split()
            run = ["run", "-d", "--", "python3", "-c", FORKER, marker]
            args = ["rm", "-f", rng.choice(ids)] if ids and rng.random() < 0.4 else run
            cli = h.popen(QIAO, "--root", h.root, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.0, 0.15))
            crash(h)
            cli.wait(60)
            crash(h)  # the CLI may have autostarted one after the first crash
            h.start_daemon()
        h.remove_containers()
        assert h.qiao("ps", "-aq").stdout == ""
        left = wait_for_nothing(marker)
        assert left == [], f"seed {seed}: {len(left)} processes outlived their containers: {left}"
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
            cli.wait()
        for pid in marked(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_for_nothing(marker: str, timeout: float = 5) -> list[int]:
    """The marked processes still alive after ``timeout`` seconds (a kill takes a moment to land)."""
    deadline = time.monotonic() + timeout
    while (left := marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.parametrize("daemon", ["running", "down"])
def test_a_killed_shims_command_and_descendants_are_ended(make_host, daemon: str) -> None:
    """A shim SIGKILLed under its command: the daemon that notices the exit (or,
    when it was down, the next one) ends the command, its child and the
    grandchild that left the session; the exit has no code (255)."""
    h = make_host("ks")
    marker = f"{RUN}-shim-{secrets.token_hex(3)}"
    try:
        cid = h.run_d("--", "python3", "-c", FORKER, marker)
        wait_for("the command and its two descendants", lambda: len(marked(marker)) == 3)
        shim = int(Path(h.root, "lib", "containers", cid, "shim.pid").read_text().split()[0])
        if daemon == "down":
            crash(h)
        os.kill(shim, signal.SIGKILL)
        if daemon == "down":
            wait_for("the shim to die", lambda: not alive(shim))
            h.start_daemon()
        wait_for("every process of the container to be ended", lambda: not marked(marker))
        state = h.inspect(cid)["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 255)
        assert not Path(h.root, "lib", "containers", cid, "shim.pid").exists()
        h.qiao("rm", cid)
    finally:
        for pid in marked(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
