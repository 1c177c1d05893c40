"""Debian's dockerd 20.10 in a throw-away test host: the proof that the
``Dockerd`` harness in ``engines.py`` works, before a network plugin of qiao's
is pointed at it.

dockerd runs in the test host's network namespace and a private mount
namespace of its own; its data, exec root, API socket, containerd and cgroups
are the test's.  The machine's docker service, ``/var/run/docker.sock`` and
``/var/lib/docker`` are never used.  Docker's own bridge driver makes the user
networks here (``--bridge=none`` only drops the default ``docker0``); a tiny
remote network driver served from the test shows that a socket dropped into
the test's plugin dir reaches dockerd.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import os
import shutil
import signal
import socketserver
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import RUN, Namespace, wait_for
from tests.integration.engines import BUSYBOX, DOCKER, DOCKER_BUSYBOX_REF, Dockerd, _cgroup_tops

SUBNET = ipaddress.ip_network("10.78.0.0/24")
# What a dockerd writes by default on the machine; the harness keeps all of it in its own dirs.
MACHINE_PATHS = ("/run/docker", "/run/docker.pid", "/var/lib/docker", "/etc/docker/key.json", "/opt/containerd", "/run/containerd/s")

pytestmark = [
    pytest.mark.skipif(not shutil.which("dockerd"), reason="dockerd is not installed (scripts/setup.sh installs docker.io)"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason=f"no {DOCKER} (Debian's docker.io client)"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason=f"no {BUSYBOX} (busybox-static)"),
]


@dataclass
class Engine:
    docker: Dockerd
    host: Namespace
    plugins: Path  # dockerd's /run/docker/plugins


def machine_paths() -> dict[str, bool]:
    return {path: os.path.lexists(path) for path in MACHINE_PATHS}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    before = machine_paths()
    host = Namespace("dkr")
    tmp = Path(tempfile.mkdtemp(prefix=f"{RUN}-dkr-"))
    dockerd: Dockerd | None = None
    try:
        plugins = tmp / "plugins"
        plugins.mkdir()
        dockerd = Dockerd(host, tmp, plugin_dir=plugins)
        dockerd.import_busybox()
        yield Engine(dockerd, host, plugins)
    finally:
        if dockerd is not None:
            dockerd.close()
        host.delete()
        shutil.rmtree(tmp, ignore_errors=True)
    assert machine_paths() == before


@pytest.fixture
def clean(engine: Engine) -> Iterator[None]:
    """No container or user network outlives its test (the engine is shared by the module)."""
    yield
    engine.docker.remove_containers()
    engine.docker.docker("network", "prune", "-f", check=False)


@pytest.fixture
def make_dockerd() -> Iterator[Callable[..., Dockerd]]:
    """More dockerds, each in a test host of its own, closed after the test."""
    made: list[tuple[Dockerd | None, Namespace, Path]] = []

    def make(**kw) -> Dockerd:
        host = Namespace(f"dkr{len(made)}")
        tmp = Path(tempfile.mkdtemp(prefix=f"{RUN}-dkr{len(made)}-"))
        made.append((None, host, tmp))
        dockerd = Dockerd(host, tmp, **kw)
        made[-1] = (dockerd, host, tmp)
        dockerd.import_busybox()
        return dockerd

    yield make
    for dockerd, host, tmp in made:
        if dockerd is not None:
            dockerd.close()
        host.delete()
        shutil.rmtree(tmp, ignore_errors=True)


# -- a remote network driver, just enough to be found --------------------------


@dataclass
class FakeDriver:
    """Docker's remote network driver protocol (HTTP POST + JSON on a unix
    socket), answering every call with ``{}`` but ``Plugin.Activate`` and
    ``NetworkDriver.GetCapabilities``; records ``(path, body)`` per call."""

    socket: Path
    calls: list[tuple[str, dict]] = field(default_factory=list)
    server: socketserver.UnixStreamServer | None = None

    def serve(self) -> FakeDriver:
        calls = self.calls

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                calls.append((self.path, json.loads(raw) if raw.strip() else {}))
                answer: dict[str, object] = {}
                if self.path == "/Plugin.Activate":
                    answer = {"Implements": ["NetworkDriver"]}
                elif self.path == "/NetworkDriver.GetCapabilities":
                    answer = {"Scope": "local"}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(self.socket), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def paths(self) -> list[str]:
        return [path for path, _ in self.calls]

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


# -- the tests -------------------------------------------------------------------


def test_run_with_network_none(engine: Engine) -> None:
    d = engine.docker
    assert d.docker("run", "--rm", "--network", "none", DOCKER_BUSYBOX_REF, "echo", "hi").stdout == "hi\n"
    links = d.docker("run", "--rm", "--network", "none", DOCKER_BUSYBOX_REF, "ip", "-o", "link").stdout
    assert [line.split(": ")[1] for line in links.splitlines()] == ["lo"]
    assert d.containers() == []


def test_dockerd_is_private(engine: Engine) -> None:
    d = engine.docker
    info = d.api("GET", "/info")
    assert info["ServerVersion"].startswith("20.10"), info["ServerVersion"]
    assert info["DockerRootDir"] == str(d.data_root)
    assert (info["CgroupDriver"], info["Driver"], info["LiveRestoreEnabled"]) == ("cgroupfs", d.storage_driver, False)
    assert sorted(n["Name"] for n in d.api("GET", "/networks")) == ["host", "none"]  # --bridge=none: no docker0
    assert int(d.pidfile.read_text()) == d.pid
    # its own mount namespace (the holder's), its own netns (the test host's), its own containerd
    assert os.stat(f"/proc/{d.pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
    assert os.stat(f"/proc/{d.pid}/ns/mnt").st_ino == os.stat(f"/proc/{d.mounts.holder.pid}/ns/mnt").st_ino  # type: ignore[union-attr]
    assert os.stat(f"/proc/{d.pid}/ns/net").st_ino == os.stat(engine.host.path).st_ino
    [containerd] = d.containerd_pids()
    assert int(Path(f"/proc/{containerd}/stat").read_text().rpartition(")")[2].split()[1]) == d.pid
    # what it has on /run and /etc/docker is the test's
    assert (d.run_dir / "docker" / "plugins").is_dir() and (d.etc_dir / "key.json").exists()
    assert os.path.samefile(d.inside("/run/docker/plugins"), engine.plugins)


def test_bridge_network_and_embedded_dns(engine: Engine, clean: None) -> None:
    d = engine.docker
    net_id = d.docker("network", "create", "-d", "bridge", "--subnet", str(SUBNET), "n1").stdout.strip()
    bridge = f"br-{net_id[:12]}"
    assert f"{SUBNET[1]}/{SUBNET.prefixlen}" in engine.host.sh("ip", "-4", "-o", "addr", "show", "dev", bridge).stdout
    assert not os.path.exists(f"/sys/class/net/{bridge}")  # in the test host only

    httpd = ("httpd", "-f", "-p", "80", "-h", "/www")
    web = d.docker("run", "-d", "--name", "web", "--network", "n1", DOCKER_BUSYBOX_REF, *httpd).stdout.strip()
    address = d.api("GET", "/containers/web/json")["NetworkSettings"]["Networks"]["n1"]["IPAddress"]
    assert ipaddress.ip_address(address) in SUBNET
    page = d.docker("run", "--rm", "--network", "n1", DOCKER_BUSYBOX_REF, "timeout", "10", "wget", "-qO-", "http://web/").stdout
    assert page == "hello from busybox\n"
    resolv = d.docker("run", "--rm", "--network", "n1", DOCKER_BUSYBOX_REF, "cat", "/etc/resolv.conf").stdout
    assert "nameserver 127.0.0.11" in resolv
    assert engine.host.sh("nft", "list", "ruleset").stdout.strip() == ""  # --iptables=false: the host's firewall is untouched
    cgroups = [os.path.join(top, web) for top in _cgroup_tops(d.name)]
    assert any(os.path.isdir(c) for c in cgroups)  # the container's cgroup is under --cgroup-parent /NAME

    d.docker("rm", "-f", "web")
    d.docker("network", "rm", "n1")
    assert d.containers() == []
    assert engine.host.sh("ip", "link", "show", bridge, check=False).returncode != 0
    assert not any(os.path.exists(c) for c in cgroups)


def test_plugin_socket_in_plugin_dir(engine: Engine, clean: None) -> None:
    d = engine.docker
    name = "fakenet"
    driver = FakeDriver(d.plugin_socket(name)).serve()
    try:
        net_id = d.docker("network", "create", "-d", name, "pnet").stdout.strip()
        assert driver.paths() == ["/Plugin.Activate", "/NetworkDriver.GetCapabilities", "/NetworkDriver.CreateNetwork"]
        assert driver.calls[-1][1]["NetworkID"] == net_id
        d.docker("network", "rm", "pnet")
        assert driver.calls[-1] == ("/NetworkDriver.DeleteNetwork", {"NetworkID": net_id})
    finally:
        driver.close()


def test_plugin_served_late_is_found_on_retry(engine: Engine, clean: None) -> None:
    """dockerd looks a plugin up when a network names it, and retries a missing
    socket 1, 3, 7 and 15 s after the request (then: 'plugin "NAME" not found')."""
    d = engine.docker
    name = "latenet"
    driver = FakeDriver(d.plugin_socket(name))
    start = time.monotonic()
    create = d.docker_popen("network", "create", "-d", name, "lnet")
    try:
        time.sleep(0.3)
        assert create.poll() is None
        driver.serve()
        out, err = create.communicate(timeout=30)
        elapsed = time.monotonic() - start
        assert create.returncode == 0, err
        assert 0.9 < elapsed < 3, elapsed  # found on the first retry, 1 s after the request
        assert driver.paths()[0] == "/Plugin.Activate"
        d.docker("network", "rm", "lnet")
    finally:
        driver.close()


def test_restart(engine: Engine, clean: None) -> None:
    """Without live-restore, dockerd stops its containers on the way out
    (``--init``: tini passes SIGTERM on); they can be started again."""
    d = engine.docker
    d.docker("run", "-d", "--init", "--name", "r1", "--network", "none", DOCKER_BUSYBOX_REF, "sleep", "600")
    old = d.pid
    d.restart()
    assert d.pid != old and d.api("GET", "/_ping") == "OK"
    assert d.api("GET", "/containers/r1/json")["State"]["Status"] == "exited"
    d.docker("start", "r1")
    assert d.api("GET", "/containers/r1/json")["State"]["Running"]
    assert d.docker("run", "--rm", "--network", "none", DOCKER_BUSYBOX_REF, "echo", "hi").stdout == "hi\n"


def test_live_restore(make_dockerd: Callable[..., Dockerd]) -> None:
    """With --live-restore the containers keep running across a restart, and
    the new dockerd adopts them: same pid, exec, names by the embedded DNS."""
    d = make_dockerd(live_restore=True)
    assert d.api("GET", "/info")["LiveRestoreEnabled"] is True
    d.docker("network", "create", "--subnet", str(SUBNET), "n2")
    d.docker("run", "-d", "--name", "web", "--network", "n2", DOCKER_BUSYBOX_REF, "httpd", "-f", "-p", "80", "-h", "/www")
    pid = d.api("GET", "/containers/web/json")["State"]["Pid"]
    d.restart()
    state = d.api("GET", "/containers/web/json")["State"]
    assert (state["Running"], state["Pid"]) == (True, pid)
    assert d.docker("exec", "web", "hostname").stdout.strip() == d.api("GET", "/containers/web/json")["Config"]["Hostname"]
    page = d.docker("run", "--rm", "--network", "n2", DOCKER_BUSYBOX_REF, "timeout", "10", "wget", "-qO-", "http://web/").stdout
    assert page == "hello from busybox\n"


def test_close_leaves_nothing(make_dockerd: Callable[..., Dockerd]) -> None:
    """After a crash (dockerd SIGKILLed with a container running), ``close``
    still ends every process of ours and removes the cgroups, mounts and dirs."""
    d = make_dockerd()
    d.docker("network", "create", "--subnet", str(SUBNET), "n3")
    cid = d.docker("run", "-d", "--name", "victim", "--network", "n3", DOCKER_BUSYBOX_REF, "sleep", "600").stdout.strip()
    container = d.api("GET", f"/containers/{cid}/json")["State"]["Pid"]
    shims = d.shim_pids()
    assert shims and d.containerd_pids()
    os.kill(d.pid, signal.SIGKILL)
    d.daemon.wait()  # type: ignore[union-attr]
    # dockerd starts its containerd with a parent-death signal: it goes too; the shims and the container stay
    wait_for("dockerd's containerd to die with it", lambda: not d.containerd_pids())
    assert d.shim_pids() == shims and not _gone(container)

    d.close()
    d.close()  # twice is fine
    mine = str(d.dir).encode()
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(int(p), mine)]
    wait_for("the container and shims to end", lambda: all(_gone(pid) for pid in (container, *shims)))
    assert not any(os.path.exists(top) for top in _cgroup_tops(d.name))
    assert str(d.dir) not in Path("/proc/self/mountinfo").read_text()
    assert not d.dir.exists()


def _cmdline_has(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie (an orphaned shim waits for pid 1 to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True
