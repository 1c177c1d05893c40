"""Resilience: failures half way, many at once, a daemon that goes away.

* A fault injected at each named step of a container start or a network
  create (``QIAO_FAULT_STEP``) leaves nothing behind: no veth, no namespace
  file or mount, no endpoint, no process, no leaked address; no bridge, no
  firewall chain, no network.
  Failures without a fault hook (exec, port conflict) roll back in the
  live daemon too.
* Twenty concurrent ``run -d`` get distinct addresses and veths; five CLIs
  that find no daemon at once autostart exactly one.
* Containers outlive the daemon (graceful stop or ``kill -9``) and are
  adopted on restart; one that exits while the daemon is down is finished
  (exit code, veth, namespace file) by the next daemon, which also removes
  the tagged veths and namespace files a crash in mid-attach left.
  ``qiao daemon stop`` always gets its answer.
* The daemon autostarted by a CLI under ``ip netns exec`` (a private mount
  namespace) serves CLIs from other mount namespaces, and its successor
  adopts the running container.
* Two daemons with two roots in two namespaces do not see each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import QIAO, RUN, Host, Namespace, sh, wait_for

# A tiny HTTP server answering with the container's hostname (its short id), so
# a reply also tells *which* container answered.
SERVE = (
    "import http.server, socket\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = socket.gethostname().encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)\n"
    "    def log_message(self, *args): pass\n"
    "http.server.HTTPServer(('0.0.0.0', 80), H).serve_forever()\n"
)


# -- helpers -------------------------------------------------------------------


def links(ns: Namespace, *selector: str) -> dict[str, dict]:
    """Links of a namespace (``ip -d -j link show SELECTOR``) by name."""
    return {link["ifname"]: link for link in json.loads(ns.sh("ip", "-d", "-j", "link", "show", *selector).stdout or "[]")}


def veths(ns: Namespace) -> dict[str, str]:
    """Host ends of veth pairs in ``ns``: name -> ifalias (``qiao:<endpoint id>``)."""
    return {name: link.get("ifalias", "") for name, link in links(ns, "type", "veth").items()}


def no_veths(ns: Namespace) -> None:
    """Released endpoints' veths are gone: qiaod deletes them right after answering (~17 ms each)."""
    wait_for("every veth to be deleted", lambda: veths(ns) == {})


def netns_leftovers(host: Host) -> list[str]:
    """``file NAME`` for each file in ROOT/run/netns and ``mount NAME`` for each mount on one (in our
    mount namespace, which the harness's daemon shares)."""
    netns_dir = os.path.join(host.root, "run", "netns")
    files = [f"file {name}" for name in os.listdir(netns_dir)] if os.path.isdir(netns_dir) else []
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    mounts = [f"mount {os.path.basename(line.split()[4])}" for line in mountinfo if line.split()[4].startswith(netns_dir + "/")]
    return sorted(files + mounts)


def store_rows(host: Host, kind: str) -> list[dict]:
    with contextlib.closing(sqlite3.connect(os.path.join(host.root, "lib", "qiao.db"))) as db:
        return [json.loads(row[0]) for row in db.execute(f"SELECT body FROM {kind}")]


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def marked_pids(marker: str) -> list[int]:
    """Live processes whose command line or environment carries ``marker`` (shims and container commands)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            blob = Path(f"/proc/{entry}/cmdline").read_bytes() + Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob and running(int(entry)):
            found.append(int(entry))
    return found


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def http_get(ns: Namespace, address: str, timeout: float = 20) -> str:
    """GET http://ADDRESS/ from inside ``ns`` (retrying while the server starts); the body."""

    def attempt() -> str | None:
        r = ns.sh("curl", "-sS", "-m", "2", f"http://{address}/", check=False)
        return r.stdout if r.returncode == 0 else None

    return wait_for(f"http://{address}/ from {ns.name}", attempt, timeout=timeout, interval=0.05)


def one_clear_line(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """A failed command that said why in exactly one line of stderr."""
    assert proc.returncode != 0, proc
    assert proc.stdout == "", proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def stop_daemon_by_cli(host: Host) -> None:
    """``qiao daemon stop`` (graceful), and reap the process the harness started."""
    host.qiao("daemon", "stop")
    assert host.daemon is not None
    host.daemon.wait(15)
    host.daemon = None


# -- 1. fault injection ------------------------------------------------------------

CONTAINER_STEPS = [  # (step, network mode, publish a port)
    ("create-cgroup", "bridge", False),
    ("create-sandbox", "bridge", False),
    ("configure-sandbox", "none", False),
    ("allocate-address", "bridge", False),
    ("create-veth", "bridge", False),
    ("add-guards", "bridge", False),
    ("configure-sandbox", "bridge", False),
    ("reserve-ports", "bridge", True),
    ("publish-ports", "bridge", True),
    ("write-etc-files", "bridge", True),
    ("spawn-process", "bridge", True),
    ("store", "bridge", False),
    ("store", "bridge", True),
]
HOST_PORT = 8080
STARTUP_STEPS = {"create-bridge", "enable-forwarding", "add-firewall", "store"}  # a first start creates the default bridge


def fault_host(make_host: Callable[..., Host], name: str, step: str) -> Host:
    """A host whose daemon fails ``step``; a step the first start-up runs gets a clean first start."""
    if step not in STARTUP_STEPS:
        return make_host(name, env={"QIAO_FAULT_STEP": step})
    h = make_host(name)
    h.stop_daemon(signal.SIGKILL)  # quicker than SIGTERM; a stopping qiaod does no clean-up anyway
    h.start_daemon({"QIAO_FAULT_STEP": step})
    return h


def port_is_free(ns: Namespace, port: int) -> bool:
    """Whether a process in ``ns`` may bind TCP ``port`` (the daemon holds published ports with bound sockets)."""
    probe = "import socket,sys\ns=socket.socket()\ntry: s.bind(('0.0.0.0', int(sys.argv[1])))\nexcept OSError: sys.exit(1)\n"
    return ns.sh("python3", "-c", probe, str(port), check=False).returncode == 0


@pytest.mark.parametrize(
    ("step", "mode", "publish"), CONTAINER_STEPS, ids=[f"{s}-{m}{'-publish' if p else ''}" for s, m, p in CONTAINER_STEPS]
)
def test_fault_at_each_start_step_leaves_nothing_behind(make_host, step: str, mode: str, publish: bool) -> None:
    h = fault_host(make_host, "fs", step)
    marker = f"{RUN}-fault-{step}-{mode}-{publish}"
    ports = ["-p", f"{HOST_PORT}:80"] if publish else []
    try:
        name = f"{RUN}-failed"
        r = h.qiao(
            "run", "-d", "--name", name, "--network", mode, *ports, "-e", f"QIAO_TEST_MARK={marker}", "--", "sleep", "300", check=False
        )  # fmt: skip
        one_clear_line(r, f"step {step}")
        assert r.returncode == 125

        assert veths(h) == {}, "a veth was left on the host"
        assert list(links(h, "master", "qiao0")) == []
        assert netns_leftovers(h) == [], "a namespace file or mount was left"
        assert json.loads(h.qiao("network", "inspect", "bridge").stdout)[0]["Containers"] == {}
        assert store_rows(h, "endpoints") == []
        wait_for("the container's processes to be gone", lambda: not marked_pids(marker), timeout=20)
        # A run that could not start leaves no container behind (qiao's choice, unlike Docker's "Created").
        assert h.qiao("ps", "-aq").stdout == "" and store_rows(h, "containers") == []
        # The failing daemon still runs: the host port is not held, the firewall has no mapping.
        assert port_is_free(h, HOST_PORT), "the published host port is still held"
        assert str(HOST_PORT) not in h.sh("nft", "list", "table", "inet", "qiao").stdout
        assert "veth" not in h.sh("nft", "list", "table", "bridge", "qiao").stdout, "an anti-spoofing guard was left"

        # Without the fault: the address the failed start held is free again.
        h.stop_daemon(signal.SIGKILL)
        h.start_daemon()
        h.run_d("--name", f"{RUN}-next", *ports, "--", "sleep", "300")
        assert h.inspect(f"{RUN}-next")["NetworkSettings"]["IPAddress"] == "172.17.0.2"
        assert len(veths(h)) == 1
        h.qiao("rm", "-f", f"{RUN}-next")
        no_veths(h)
        assert netns_leftovers(h) == [] and port_is_free(h, HOST_PORT)
        h.stop_daemon(signal.SIGKILL)  # nothing is left to clean up: spare the teardown a graceful stop
    finally:
        kill_pids(marked_pids(marker))


def test_failed_starts_in_a_live_daemon_release_everything(make_host) -> None:
    """Failures that need no fault hook roll back in the running daemon's memory
    too (IPAM bitmap, held ports): the next container still gets the first address."""
    h = make_host("lf")
    listen = "import socket,time\ns=socket.socket(); s.bind(('0.0.0.0', 8081)); s.listen(); print('ready', flush=True); time.sleep(300)"
    holder = h.popen("python3", "-c", listen, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"  # EOF ("") if it could not listen
        r = h.qiao("run", "-d", "--", f"/nonexistent-{RUN}", check=False)  # spawn-process fails
        one_clear_line(r, "executable file not found")
        assert r.returncode == 127
        r = h.qiao("run", "-d", "-p", "8081:80", "--", "sleep", "300", check=False)  # reserve-ports fails
        one_clear_line(r, "8081")
        assert h.qiao("ps", "-aq").stdout == "" and veths(h) == {} and netns_leftovers(h) == []
        assert port_is_free(h, HOST_PORT)
        h.run_d("--name", "first", "--", "sleep", "300")
        assert h.inspect("first")["NetworkSettings"]["IPAddress"] == "172.17.0.2"
        h.qiao("rm", "-f", "first")
    finally:
        holder.kill()
        holder.communicate()


NETWORK_STEPS = ["create-bridge", "enable-forwarding", "add-firewall", "store"]


def firewall_chains(ns: Namespace) -> list[str]:
    return sorted(re.findall(r"^\s*chain (\S+) \{", ns.sh("nft", "list", "table", "inet", "qiao").stdout, re.M))


@pytest.mark.parametrize("step", NETWORK_STEPS)
def test_fault_at_each_network_create_step_leaves_nothing_behind(make_host, step: str) -> None:
    h = make_host("fn")
    builtin_chains = firewall_chains(h)
    assert "fwd-in-qiao0" in builtin_chains
    h.stop_daemon(signal.SIGKILL)
    h.start_daemon({"QIAO_FAULT_STEP": step})  # the default bridge exists: start-up creates no network
    net, bridge = f"{RUN}-net", f"{RUN}br"
    create = ("network", "create", "-o", f"com.docker.network.bridge.name={bridge}", net)
    one_clear_line(h.qiao(*create, check=False), f"step {step}")

    assert list(links(h, "type", "bridge")) == ["qiao0"], "a bridge was left"
    assert firewall_chains(h) == builtin_chains, "a firewall chain was left"
    assert bridge not in h.sh("nft", "list", "table", "inet", "qiao").stdout
    names = [n["Name"] for n in json.loads(h.qiao("network", "inspect", "bridge", "host", "none").stdout)]
    assert names == ["bridge", "host", "none"]
    assert h.qiao("network", "inspect", net, check=False).returncode != 0
    assert sorted(n["name"] for n in store_rows(h, "networks")) == ["bridge", "host", "none"]

    # Without the fault the same network can be made, with the next free pool.
    h.stop_daemon(signal.SIGKILL)
    h.start_daemon()
    h.qiao(*create)
    assert json.loads(h.qiao("network", "inspect", net).stdout)[0]["IPAM"]["Config"][0]["Subnet"] == "172.18.0.0/16"
    assert bridge in links(h, "type", "bridge")
    assert f"fwd-in-{bridge}" in firewall_chains(h)
    h.qiao("network", "rm", net)
    assert list(links(h, "type", "bridge")) == ["qiao0"] and firewall_chains(h) == builtin_chains
    h.stop_daemon(signal.SIGKILL)  # nothing is left to clean up: spare the teardown a graceful stop


# -- 2. concurrency ------------------------------------------------------------------


def test_twenty_concurrent_runs_get_distinct_addresses_and_veths(make_host) -> None:
    h = make_host("cc")
    marker = f"{RUN}-concurrent"
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(20):
            procs.append(
                h.popen(
                    QIAO, "--root", h.root, "run", "-d", "-e", f"QIAO_TEST_MARK={marker}", "--", "sleep", "300",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )
            )  # fmt: skip
        results = [(p.wait(60), *p.communicate()) for p in procs]
        assert [rc for rc, _out, _err in results] == [0] * 20, [err for _rc, _out, err in results if err]
        cids = [out.strip() for _rc, out, _err in results]
        assert len(set(cids)) == 20

        infos = json.loads(h.qiao("inspect", *cids).stdout)
        assert all(i["State"]["Running"] for i in infos)
        addresses = [i["NetworkSettings"]["IPAddress"] for i in infos]
        assert sorted(addresses, key=lambda a: int(a.rsplit(".", 1)[1])) == [f"172.17.0.{n}" for n in range(2, 22)]
        endpoint_ids = {i["NetworkSettings"]["Networks"]["bridge"]["EndpointID"] for i in infos}
        host_ends = veths(h)
        assert len(host_ends) == 20
        assert {alias.removeprefix("qiao:") for alias in host_ends.values()} == endpoint_ids
        assert set(links(h, "master", "qiao0")) == set(host_ends)

        removers = [
            h.popen(QIAO, "--root", h.root, "rm", "-f", cid, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cid in cids
        ]
        assert [p.wait(60) for p in removers] == [0] * 20, [p.communicate()[1] for p in removers]
        for p in removers:
            p.communicate()
        assert h.qiao("ps", "-aq").stdout == ""
        no_veths(h)
        assert netns_leftovers(h) == [] and store_rows(h, "endpoints") == []
        wait_for("every container process to be gone", lambda: not marked_pids(marker), timeout=20)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        kill_pids(marked_pids(marker))


# -- 3. daemon restart under running containers -------------------------------------------


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
def test_containers_outlive_the_daemon_and_are_adopted(make_host, request, how: str) -> None:
    h = make_host("rs")
    web = h.run_d("--name", "web", "--", "python3", "-c", SERVE)
    trigger = os.path.join(h.root + "-trigger", "exit-now")  # not under the root: containers do not see it
    os.makedirs(os.path.dirname(trigger))
    request.addfinalizer(lambda: shutil.rmtree(os.path.dirname(trigger), ignore_errors=True))
    h.run_d("--name", "quick", "--", "sh", "-c", f"while [ ! -e {trigger} ]; do sleep 0.02; done; exit 5")
    web_info, quick_info = h.inspect("web"), h.inspect("quick")
    address = web_info["NetworkSettings"]["IPAddress"]
    assert http_get(h, address) == web[:12]
    quick_ep = quick_info["NetworkSettings"]["Networks"]["bridge"]["EndpointID"]
    quick_veth = [name for name, alias in veths(h).items() if alias == "qiao:" + quick_ep]
    assert len(quick_veth) == 1
    quick_sandbox = quick_info["NetworkSettings"]["SandboxKey"]
    assert os.path.exists(quick_sandbox)

    if how == "graceful":
        stop_daemon_by_cli(h)
    else:
        h.stop_daemon(signal.SIGKILL)
    assert h.qiao("daemon", "status", check=False).returncode == 3

    # Daemon down: the container keeps running and serving.
    assert running(web_info["State"]["Pid"])
    assert http_get(h, address) == web[:12]
    # ... and the other one exits now, with nobody watching.
    Path(trigger).touch()
    wait_for("quick to exit", lambda: not running(quick_info["State"]["Pid"]), timeout=20)

    h.start_daemon()
    assert h.qiao("ps", "-q").stdout.split() == [web[:12]]
    assert h.inspect("web")["State"]["Running"] and h.inspect("web")["State"]["Pid"] == web_info["State"]["Pid"]
    assert http_get(h, address) == web[:12]

    state = wait_for("quick to be recorded as exited", lambda: (s := h.inspect("quick")["State"])["Status"] == "exited" and s, timeout=20)
    assert state["ExitCode"] == 5 and state["Pid"] == 0
    wait_for("the exited container's veth to go", lambda: quick_veth[0] not in veths(h))
    assert not os.path.exists(quick_sandbox), "the exited container's namespace file was left"
    web_sandbox = os.path.basename(web_info["NetworkSettings"]["SandboxKey"])
    assert netns_leftovers(h) == [f"file {web_sandbox}", f"mount {web_sandbox}"]
    assert h.inspect("quick")["NetworkSettings"]["IPAddress"] == ""

    # The adopted container is fully managed: stop records SIGTERM's 143 and releases its network.
    h.qiao("stop", "web")
    web_state = h.inspect("web")["State"]
    assert (web_state["Status"], web_state["ExitCode"]) == ("exited", 143)
    no_veths(h)
    assert netns_leftovers(h) == []
    # The addresses are free again: a new container gets the first one.
    h.run_d("--name", "again", "--", "sleep", "300")
    assert h.inspect("again")["NetworkSettings"]["IPAddress"] == "172.17.0.2"
    h.qiao("rm", "-f", "again", "web", "quick")


def test_daemon_stop_always_gets_its_answer(make_host) -> None:
    """``qiao daemon stop`` is answered before the daemon exits (it used to race the
    exiting process and fail about one time in three with a traceback)."""
    h = make_host("ds")
    for _ in range(5):
        r = h.qiao("daemon", "stop", check=False)
        assert (r.returncode, r.stderr) == (0, ""), r
        assert r.stdout.startswith("qiaod: stopped (pid ")
        assert h.daemon is not None
        h.daemon.wait(15)
        h.start_daemon()


def test_restart_removes_what_a_crash_in_mid_attach_left(make_host) -> None:
    """A daemon killed between two steps of an attach leaves a tagged veth and a
    namespace file that no record owns; the next daemon removes them, and
    nothing that is not its own."""
    h = make_host("cr")
    keep = h.run_d("--name", "keep", "--", "sleep", "300")
    keep_veths = veths(h)
    h.stop_daemon(signal.SIGKILL)
    stray_veth, foreign = f"{RUN}sv", f"{RUN}fv"
    h.sh("ip", "link", "add", stray_veth, "type", "veth", "peer", "name", stray_veth + "p")
    h.sh("ip", "link", "set", stray_veth, "alias", "qiao:" + "ab" * 32, "master", "qiao0", "up")
    h.sh("ip", "link", "add", foreign, "type", "veth", "peer", "name", foreign + "p")  # not qiao's: no alias
    stray_ns = os.path.join(h.root, "run", "netns", "0123456789ab")
    Path(stray_ns).touch()
    h.sh("unshare", f"--net={stray_ns}", "true")
    Path(h.root, "run", "netns", "ba9876543210").touch()  # a file whose mount is already gone
    assert "mount 0123456789ab" in netns_leftovers(h)

    h.start_daemon()
    assert set(veths(h)) == set(keep_veths) | {foreign, foreign + "p"}
    keep_sandbox = os.path.basename(h.inspect("keep")["NetworkSettings"]["SandboxKey"])
    assert netns_leftovers(h) == [f"file {keep_sandbox}", f"mount {keep_sandbox}"]
    assert h.inspect("keep")["State"]["Running"]
    assert h.exec("keep", "hostname").stdout.strip() == keep[:12]
    h.qiao("rm", "-f", "keep")
    h.sh("ip", "link", "del", foreign)


def test_concurrent_clis_autostart_one_daemon(make_host) -> None:
    """Five CLIs find no daemon at once: each starts one, the pid-file lock lets one win, all five succeed."""
    h = make_host("as", start=False)
    procs = [
        h.popen(QIAO, "--root", h.root, "run", "-d", "--", "sleep", "300", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(5)
    ]
    try:
        results = [(p.wait(60), *p.communicate()) for p in procs]
        assert [rc for rc, _out, _err in results] == [0] * 5, [err for _rc, _out, err in results]
        pid = _daemon_pid(h.root)
        assert pid is not None
        wait_for("the losing daemons to exit", lambda: daemons_of(h.root) == [pid], timeout=20)
        ids = [out.strip() for _rc, out, _err in results]
        addresses = {i["NetworkSettings"]["IPAddress"] for i in json.loads(h.qiao("inspect", *ids).stdout)}
        assert addresses == {f"172.17.0.{n}" for n in range(2, 7)}
        h.qiao("rm", "-f", *ids)
        h.qiao("daemon", "stop")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        stop_autostarted(h)


# -- 4. the `ip netns exec` path -----------------------------------------------------------------


def _daemon_pid(root: str) -> int | None:
    """The PID in ROOT/run/qiaod.pid, if that process is a live qiaod of this root."""
    try:
        pid = int(Path(root, "run", "qiaod.pid").read_text().strip() or 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"qiao.daemon.main" in cmdline and root.encode() in cmdline and running(pid) else None


def daemons_of(root: str) -> list[int]:
    """Live qiaod processes of ``root``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0") if entry.isdigit() else []
        except OSError:
            continue
        if b"qiao.daemon.main" in cmdline and root.encode() in cmdline and running(int(entry)):
            found.append(int(entry))
    return found


def stop_autostarted(h: Host) -> None:
    """Kill the daemon a CLI of this test autostarted (by the PID in its root's pid file), if it still runs."""
    pid = _daemon_pid(h.root)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        wait_for("the autostarted daemon to die", lambda: not running(pid), timeout=20)


def test_ip_netns_exec_autostarted_daemon_serves_other_mount_namespaces(make_host) -> None:
    h = make_host("ipn", start=False)

    def ipx(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", h.name, QIAO, "--root", h.root, *args, check=check)

    try:
        cid = ipx("run", "-d", "--name", "web", "--", "python3", "-c", SERVE).stdout.strip()
        first = _daemon_pid(h.root)
        assert first is not None, "the CLI did not autostart a daemon"
        assert os.readlink(f"/proc/{first}/ns/mnt") != os.readlink("/proc/self/ns/mnt"), "expected ip netns exec's own mount namespace"
        assert os.stat(f"/proc/{first}/ns/net").st_ino == os.stat(h.path).st_ino
        # The first command has ended: the container's network still works.
        assert http_get(h, "172.17.0.2") == cid[:12]

        # Another `ip netns exec` is another mount namespace: everything still works.
        assert ipx("ps", "-q").stdout.split() == [cid[:12]]
        assert ipx("exec", "web", "hostname").stdout.strip() == cid[:12]
        assert ipx("exec", "web", "ip", "-4", "-o", "addr", "show", "eth0").stdout.split()[3] == "172.17.0.2/16"
        r = ipx("run", "--rm", "--network", "container:web", "--", "curl", "-sS", "-m", "5", "http://127.0.0.1/")
        assert r.stdout == cid[:12]

        # Stop that daemon; one started by another `ip netns exec` adopts the container.
        ipx("daemon", "stop")
        wait_for("the first daemon to exit", lambda: not running(first), timeout=20)
        assert http_get(h, "172.17.0.2") == cid[:12]
        assert ipx("ps", "-q").stdout.split() == [cid[:12]]  # autostarts the second daemon
        second = _daemon_pid(h.root)
        assert second is not None and second != first
        assert os.readlink(f"/proc/{second}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert http_get(h, "172.17.0.2") == cid[:12]
        r = ipx("run", "--rm", "--network", "container:web", "--", "curl", "-sS", "-m", "5", "http://127.0.0.1/")
        assert r.stdout == cid[:12]
        ipx("stop", "web")
        assert json.loads(ipx("inspect", "web").stdout)[0]["State"]["ExitCode"] == 143
        no_veths(h)
        ipx("rm", "web")
        ipx("daemon", "stop")
        wait_for("the second daemon to exit", lambda: _daemon_pid(h.root) is None, timeout=20)
    finally:
        if _daemon_pid(h.root) is not None:
            with contextlib.suppress(Exception):
                ids = ipx("ps", "-aq", check=False).stdout.split()
                if ids:
                    ipx("rm", "-f", *ids, check=False)
            ipx("daemon", "stop", check=False)
        stop_autostarted(h)


# -- 5. two daemons side by side --------------------------------------------------------------


def test_two_daemons_two_roots_two_namespaces_do_not_interfere(make_host) -> None:
    a, b = make_host("twa"), make_host("twb")
    web_a = a.run_d("--name", "web", "--", "python3", "-c", SERVE)
    web_b = b.run_d("--name", "web", "--", "python3", "-c", SERVE)
    for h, cid in ((a, web_a), (b, web_b)):
        assert h.inspect("web")["NetworkSettings"]["IPAddress"] == "172.17.0.2"
        assert links(h, "type", "bridge")["qiao0"]["operstate"] == "UP"
        assert http_get(h, "172.17.0.2") == cid[:12]
    others, shared = {}, f"{RUN}-shared"  # the same network name in both
    for h in (a, b):
        h.qiao("network", "create", shared)
        others[h.name] = h.run_d("--name", "other", "--network", shared, "--", "sleep", "300")
    ruleset_b = b.sh("nft", "list", "table", "inet", "qiao").stdout

    # Remove everything in a, and stop its daemon.
    a.qiao("rm", "-f", "web", "other")
    a.qiao("network", "rm", shared)
    stop_daemon_by_cli(a)
    assert veths(a) == {} and netns_leftovers(a) == []

    # b is untouched.
    assert set(b.qiao("ps", "-q").stdout.split()) == {web_b[:12], others[b.name][:12]}
    assert http_get(b, "172.17.0.2") == web_b[:12]
    assert len(veths(b)) == 2 and len(netns_leftovers(b)) == 4  # two files, two mounts
    assert b.sh("nft", "list", "table", "inet", "qiao").stdout == ruleset_b
    assert json.loads(b.qiao("network", "inspect", shared).stdout)[0]["Containers"] != {}
    r = b.qiao("run", "--rm", "--", "curl", "-sS", "-m", "5", "http://172.17.0.2/")
    assert r.stdout == web_b[:12]
    b.qiao("rm", "-f", "web", "other")
    b.qiao("network", "rm", shared)
