"""Integration tests in real namespaces.

Each test module gets throw-away "hosts": a network namespace of its own
with its own qiao root and qiaod, so nothing touches the machine's real
interfaces or firewall, and several run side by side on one kernel.  Every
object carries the per-run prefix ``RUN``; the session ends by checking that
``ip netns``, ``ip link``, mounts and ``nft list ruleset`` are as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from qiao.kernel.netns import release_run_dir, run_dir_mounted

RUN = "q" + secrets.token_hex(2)  # short: interface names are at most 15 bytes
BIN = Path(sys.executable).parent
QIAO = str(BIN / "qiao")
QIAOD = str(BIN / "qiaod")

if os.geteuid() != 0:
    pytest.skip("integration tests need root", allow_module_level=True)


def sh(*args: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """A refusal: non-zero exit, exactly one line on stderr, no traceback."""
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), proc.stderr
    return lines[0]


class Namespace:
    """A bare network namespace made by the test (``ip netns add``)."""

    def __init__(self, name: str):
        self.name = f"{RUN}-{name}"
        self.path = f"/run/netns/{self.name}"
        sh("ip", "netns", "add", self.name)
        self.sh("ip", "link", "set", "lo", "up")

    def sh(self, *args: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
        return sh("nsenter", f"--net={self.path}", "--", *args, check=check, timeout=timeout, **kw)

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["nsenter", f"--net={self.path}", "--", *args], **kw)

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


class Host(Namespace):
    """A simulated host: namespace + qiao root + qiaod started by the test."""

    def __init__(self, name: str, env: dict[str, str] | None = None, start: bool = True):
        super().__init__(name)
        self.root = tempfile.mkdtemp(prefix=f"{RUN}-{name}-")
        self.daemon: subprocess.Popen | None = None
        self.links: list[Namespace] = []
        if start:
            self.start_daemon(env)

    # -- the daemon ------------------------------------------------------

    def start_daemon(self, env: dict[str, str] | None = None, args: Sequence[str] = ()) -> None:
        """Start qiaod (with ``env`` added to ours and extra command-line ``args``) and wait until it answers."""
        with open(os.path.join(self.root, "qiaod.test.log"), "ab") as log:  # the daemon keeps its own copy
            self.daemon = self.popen(QIAOD, "--root", self.root, *args, stdout=log, stderr=log, env={**os.environ, **(env or {})})
        sock = os.path.join(self.root, "run", "qiao.sock")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise AssertionError(f"qiaod exited {self.daemon.returncode}: {self.daemon_log()}")
            if os.path.exists(sock) and self.qiao("daemon", "status", check=False).returncode == 0:
                return
            time.sleep(0.02)
        raise AssertionError("qiaod did not come up: " + self.daemon_log())

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(sig)
            try:
                self.daemon.wait(15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None

    def daemon_log(self) -> str:
        path = os.path.join(self.root, "qiaod.test.log")
        return Path(path).read_text(errors="replace")[-3000:] if os.path.exists(path) else ""

    # -- the CLI ---------------------------------------------------------

    def qiao(self, *args: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
        return self.sh(QIAO, "--root", self.root, *args, check=check, timeout=timeout, **kw)

    def inspect(self, name: str) -> dict:
        return json.loads(self.qiao("inspect", name).stdout)[0]

    def run_d(self, *args: str) -> str:
        """``qiao run -d ARGS``; returns the container id."""
        return self.qiao("run", "-d", *args).stdout.strip()

    def exec(self, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.qiao("exec", name, *cmd, check=check)

    def ps_json(self, *flags: str) -> list[dict]:
        """``qiao ps --format json FLAGS``: one dict per container."""
        return [json.loads(line) for line in self.qiao("ps", "--format", "json", *flags).stdout.splitlines()]

    def ps_ids(self) -> list[str]:
        """The short ids of all containers (``ps -a``), sorted."""
        return sorted(row["ID"] for row in self.ps_json("-a"))

    def remove_containers(self) -> None:
        """``qiao rm -f`` every container (running or not); errors are ignored."""
        ids = self.qiao("ps", "-aq", check=False).stdout.split()
        if ids:
            self.qiao("rm", "-f", *ids, check=False)

    # -- neighbours ------------------------------------------------------

    def add_outside(self, name: str = "out", subnet: str = "198.51.100") -> Namespace:
        """Another machine on its own link to this host: host .1, outside .2."""
        out = Namespace(name)
        a, b = f"{RUN}{name[:4]}h", f"{RUN}{name[:4]}o"
        sh("ip", "link", "add", a, "netns", self.name, "type", "veth", "peer", "name", b, "netns", out.name)
        self.sh("ip", "addr", "add", f"{subnet}.1/24", "dev", a)
        self.sh("ip", "link", "set", a, "up")
        out.sh("ip", "addr", "add", f"{subnet}.2/24", "dev", b)
        out.sh("ip", "link", "set", b, "up")
        self.links.append(out)
        return out

    # -- teardown --------------------------------------------------------

    def cleanup(self) -> None:
        if self.daemon and self.daemon.poll() is None:
            with contextlib.suppress(Exception):
                self.remove_containers()
        self.stop_daemon()
        self._kill_leftovers()
        for out in self.links:
            out.delete()
        self.delete()
        netns_dir = os.path.join(self.root, "run", "netns")
        if os.path.isdir(netns_dir):
            for entry in os.listdir(netns_dir):
                sh("umount", "-l", os.path.join(netns_dir, entry), check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """Container processes this test started (found through our own store)."""
        db = os.path.join(self.root, "lib", "qiao.db")
        if not os.path.exists(db):
            return
        import sqlite3

        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = [json.loads(r[0]) for r in conn.execute("SELECT body FROM containers")]
        for ctr in rows:
            for pid in (ctr.get("pid"), ctr.get("shim_pid")):
                if pid and ctr.get("status") == "running":
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def make_host() -> Iterator:
    made: list[Host] = []

    def make(name: str = "host", **kw) -> Host:
        host = Host(f"{name}{len(made)}", **kw)
        made.append(host)
        return host

    yield make
    for host in made:
        host.cleanup()


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    """One host shared by a module's tests (cheaper; tests clean their containers)."""
    h = Host("m" + secrets.token_hex(1))
    try:
        yield h
    finally:
        h.cleanup()


@pytest.fixture
def clean(host: Host) -> Iterator[None]:
    """The test leaves no containers on the shared host (they are removed after it, even on failure).
    A module that wants it for every test says ``pytestmark = pytest.mark.usefixtures("clean")``."""
    yield
    host.remove_containers()


def _snapshot() -> dict[str, str]:
    """What this run may have left: its own namespaces, links and mounts (all
    carry RUN; other runs may share the kernel), and the initial namespace's
    nftables ruleset (tests never touch it: every qiao runs in a test host)."""
    links = sh("ip", "-o", "link", "show").stdout.splitlines()
    return {
        "netns": "\n".join(line for line in sh("ip", "netns", "list").stdout.splitlines() if RUN in line),
        "links": "\n".join(line.split(": ")[1] for line in links if RUN in line),
        "mounts": "\n".join(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines() if RUN in line),
        "nft": sh("nft", "list", "ruleset", check=False).stdout,
    }


@pytest.fixture(scope="session", autouse=True)
def leaves_no_trace() -> Iterator[None]:
    run_dir_was_mounted = run_dir_mounted()
    before = _snapshot()
    yield
    release_run_dir(run_dir_was_mounted)  # `ip netns add` bind-mounts /run/netns once and keeps it
    after = _snapshot()
    assert after == before, "the suite left kernel objects behind"
