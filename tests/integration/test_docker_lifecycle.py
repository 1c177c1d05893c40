"""The Docker CLI (``/usr/local/bin/docker``, 28.2.2) against qiaod: restart,
rename, top, stats, pause/unpause, container prune, and the run options
--restart, --dns*, --add-host, --hostname/--domainname, --stop-signal,
--stop-timeout, -e/--env-file; qiao's own CLI for the same.  Containers use
``qiao/host`` (qiao's image-less mode) and run detached: foreground runs,
``logs`` and ``exec`` through the Docker CLI are other tests' business
(``qiao exec`` looks inside here)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qiao.kernel.cgroup import v2_mount
from tests.integration.conftest import RUN, Host, one_line_error, wait_for

DOCKER = "/usr/local/bin/docker"
if not os.access(DOCKER, os.X_OK):
    pytest.skip(f"no Docker CLI at {DOCKER}", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("clean")

Docker = Callable[..., subprocess.CompletedProcess[str]]
SLEEP = ["qiao/host", "sleep", "300"]


def docker_for(host: Host, config: Path) -> Docker:
    env = {**os.environ, "DOCKER_HOST": f"unix://{host.root}/run/qiao.sock", "DOCKER_CONFIG": str(config)}

    def docker(
        *args: str, check: bool = True, timeout: float = 60, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return host.sh(DOCKER, *args, check=check, timeout=timeout, env={**env, **(extra_env or {})})

    return docker


@pytest.fixture(scope="module")
def docker(host: Host, tmp_path_factory: pytest.TempPathFactory) -> Docker:
    return docker_for(host, tmp_path_factory.mktemp("docker-config"))


def state(docker: Docker, name: str) -> dict:
    return json.loads(docker("inspect", name).stdout)[0]


def wait_state(docker: Docker, name: str, check: Callable[[dict], bool], what: str, timeout: float = 15) -> dict:
    return wait_for(what, lambda: (lambda doc: doc if check(doc) else None)(state(docker, name)), timeout, interval=0.05)


def catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler for ``sig`` (it is ready for it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


# -- restart, rename -----------------------------------------------------------


def test_docker_restart_starts_a_new_process(docker, host):
    docker("run", "-d", "--name", "r1", *SLEEP)
    before = state(docker, "r1")["State"]
    assert "r1" in docker("restart", "-t", "1", "r1").stdout
    after = state(docker, "r1")
    assert after["State"]["Running"] and after["State"]["Pid"] != before["Pid"]
    assert after["State"]["StartedAt"] != before["StartedAt"] and after["RestartCount"] == 0
    docker("stop", "-t", "0", "r1")
    docker("restart", "r1")  # a stopped container is started
    assert state(docker, "r1")["State"]["Running"]


def test_docker_rename_moves_the_dns_name(docker, host):
    net = f"{RUN}-ren"
    docker("network", "create", net)
    try:
        docker("run", "-d", "--name", "old", "--network", net, *SLEEP)
        docker("run", "-d", "--name", "asker", "--network", net, *SLEEP)
        assert host.exec("asker", "getent", "hosts", "old").returncode == 0
        docker("rename", "old", "new")
        names = docker("ps", "--format", "{{.Names}}").stdout.split()
        assert "new" in names and "old" not in names
        assert state(docker, "new")["Name"] == "/new"
        assert host.exec("asker", "getent", "hosts", "new").returncode == 0
        assert host.exec("asker", "getent", "hosts", "old", check=False).returncode != 0
        assert "already in use" in one_line_error_of(docker("rename", "new", "asker", check=False))
    finally:
        host.remove_containers()
        docker("network", "rm", net, check=False)


def one_line_error_of(proc: subprocess.CompletedProcess[str]) -> str:
    """The Docker CLI's refusal: non-zero, no traceback, the daemon's message in its first line."""
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc.stderr.strip().splitlines()[0]


# -- top -----------------------------------------------------------------------


def test_docker_top_lists_the_processes_from_proc(docker, host):
    docker("run", "-d", "--name", "tp", "qiao/host", "sh", "-c", "sleep 301 & exec sleep 302")
    pid = state(docker, "tp")["State"]["Pid"]
    wait_for("the background sleep", lambda: len(host.qiao("top", "tp").stdout.splitlines()) == 3)
    lines = docker("top", "tp").stdout.splitlines()
    assert lines[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    rows = [line.split(None, 7) for line in lines[1:]]
    assert sorted(r[7] for r in rows) == ["sleep 301", "sleep 302"]
    assert {r[1] for r in rows} >= {str(pid)} and all(r[0] == "root" and r[5] == "?" for r in rows)
    aux = docker("top", "tp", "aux").stdout.splitlines()
    assert aux[0].split() == ["USER", "PID", "%CPU", "%MEM", "VSZ", "RSS", "TTY", "STAT", "START", "TIME", "COMMAND"]
    assert len(aux) == 3
    assert "-o pid" in one_line_error_of(docker("top", "tp", "-o", "pid", check=False))
    docker("stop", "-t", "0", "tp")
    assert "is not running" in one_line_error_of(docker("top", "tp", check=False))


# -- stats ---------------------------------------------------------------------

RECEIVER = (
    "import socket, time\n"
    "server = socket.create_server(('', 9000))\n"
    "conn, _ = server.accept()\n"
    "while conn.recv(65536): pass\n"
    "time.sleep(300)\n"
)
SENDER = "import socket, time\ns = socket.create_connection(('rx', 9000))\ns.sendall(b'x' * 3_000_000)\ns.close()\ntime.sleep(300)\n"


def _bytes(text: str) -> float:
    """A size as the Docker CLI prints NET I/O (``3.05MB``)."""
    units = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    number = text.rstrip("kMGB")
    return float(number) * units[text[len(number) :]]


def test_docker_stats_no_stream_shows_network_io(docker, host):
    net = f"{RUN}-st"
    docker("network", "create", net)
    try:
        docker("run", "-d", "--name", "rx", "--network", net, "qiao/host", "python3", "-c", RECEIVER)
        wait_for("the receiver to listen", lambda: "LISTEN" in host.exec("rx", "ss", "-ltn", check=False).stdout)
        docker("run", "-d", "--name", "tx", "--network", net, "qiao/host", "python3", "-c", SENDER)
        lines = docker("stats", "--no-stream", "--format", "{{json .}}", "rx", "tx").stdout.splitlines()
        rows = {row["Name"]: row for row in map(json.loads, lines)}
        rx_in, _rx_out = (_bytes(v) for v in rows["rx"]["NetIO"].split(" / "))
        _tx_in, tx_out = (_bytes(v) for v in rows["tx"]["NetIO"].split(" / "))
        assert rx_in >= 3e6 and tx_out >= 3e6, rows
        assert rows["rx"]["PIDs"] == "1" and rows["rx"]["MemUsage"].endswith("iB") and rows["rx"]["CPUPerc"].endswith("%")
        table = docker("stats", "--no-stream", "rx").stdout.splitlines()
        headers = ("CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS")
        assert [h for h in headers if h in table[0]] == list(headers) and table[1].split()[1] == "rx"
        # The API's own shape: Docker's keys, a counter per interface, CPU over a second (stream=false).
        doc = api(host, "GET", "/containers/rx/stats?stream=false")
        assert set(doc) >= {"read", "preread", "pids_stats", "cpu_stats", "precpu_stats", "memory_stats", "networks", "name", "id"}
        assert doc["networks"]["eth0"]["rx_bytes"] >= 3_000_000 and doc["precpu_stats"]["system_cpu_usage"] > 0
        assert doc["cpu_stats"]["online_cpus"] == os.sysconf("SC_NPROCESSORS_ONLN") and doc["pids_stats"]["current"] >= 1
        one = api(host, "GET", "/containers/rx/stats?stream=false&one-shot=true")
        assert one["preread"] == "0001-01-01T00:00:00Z" and "system_cpu_usage" not in one["precpu_stats"]
    finally:
        host.remove_containers()
        docker("network", "rm", net, check=False)


def test_stats_stream_sends_one_object_a_second(docker, host):
    docker("run", "-d", "--name", "sm", *SLEEP)
    sock = f"{host.root}/run/qiao.sock"
    proc = host.popen("curl", "-sN", "--unix-socket", sock, "http://qiaod/containers/sm/stats", stdout=subprocess.PIPE, text=True)
    try:
        first, second = json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    assert first["preread"] == "0001-01-01T00:00:00Z" and second["preread"] == first["read"]
    assert second["precpu_stats"]["cpu_usage"] == first["cpu_stats"]["cpu_usage"]


def api(host: Host, method: str, path: str) -> dict:
    out = host.sh("curl", "-sf", "-X", method, "--unix-socket", f"{host.root}/run/qiao.sock", f"http://qiaod{path}").stdout
    return json.loads(out)


# -- pause, unpause ------------------------------------------------------------


def cgroup_of(pid: int) -> Path:
    """The process's cgroup (v2) directory: the container's own, ``<mount>/qiao/<id>``."""
    relative = Path(f"/proc/{pid}/cgroup").read_text().splitlines()[-1].split("::", 1)[1]
    mount = v2_mount()
    assert mount and relative.startswith("/qiao/")
    return Path(mount + relative)


def frozen(pid: int) -> bool:
    """The kernel's word: the process's cgroup reports itself frozen."""
    return "frozen 1" in (cgroup_of(pid) / "cgroup.events").read_text()


@pytest.mark.skipif(v2_mount() is None, reason="no cgroup v2 hierarchy")
def test_docker_pause_freezes_and_unpause_thaws(docker, host):
    docker("run", "-d", "--name", "pz", "qiao/host", "sh", "-c", "sleep 300 & exec sleep 301")
    doc = state(docker, "pz")
    pid = doc["State"]["Pid"]
    cgroup = cgroup_of(pid)
    assert cgroup.name == doc["Id"] and len((cgroup / "cgroup.procs").read_text().split()) == 2  # both sleeps, not the shim
    docker("pause", "pz")
    doc = state(docker, "pz")["State"]
    assert (doc["Status"], doc["Paused"], doc["Running"]) == ("paused", True, True)
    assert frozen(pid)
    assert "(Paused)" in docker("ps", "--filter", "name=pz", "--format", "{{.Status}}").stdout
    assert "already paused" in one_line_error_of(docker("pause", "pz", check=False))
    docker("unpause", "pz")
    assert not frozen(pid) and state(docker, "pz")["State"]["Status"] == "running"
    assert "not paused" in one_line_error_of(docker("unpause", "pz", check=False))
    docker("pause", "pz")
    docker("stop", "-t", "5", "pz")  # the signal is delivered: the container is thawed for it
    doc = state(docker, "pz")["State"]
    assert (doc["Status"], doc["Paused"]) == ("exited", False)
    assert not cgroup.exists()  # removed with the container's end
    assert "is not running" in one_line_error_of(docker("pause", "pz", check=False))


# -- prune ---------------------------------------------------------------------


def test_docker_container_prune_removes_stopped_ones(docker, host):
    done = docker("run", "-d", "--name", "done", "qiao/host", "true").stdout.strip()
    made = docker("create", "--name", "made", "qiao/host", "true").stdout.strip()
    kept = docker("create", "--name", "kept", "--label", "keep=yes", "qiao/host", "true").stdout.strip()
    docker("run", "-d", "--name", "live", *SLEEP)
    wait_state(docker, "done", lambda d: d["State"]["Status"] == "exited", "done to exit")
    out = docker("container", "prune", "-f", "--filter", "label!=keep=yes").stdout
    assert out.startswith("Deleted Containers:\n") and "Total reclaimed space: 0B" in out
    assert sorted(out.split()[2:4]) == sorted([done, made])
    assert sorted(docker("ps", "-a", "--format", "{{.Names}}").stdout.split()) == ["kept", "live"]
    assert kept in docker("container", "prune", "-f").stdout
    assert docker("ps", "-a", "--format", "{{.Names}}").stdout.split() == ["live"]
    assert "invalid filter 'colour'" in one_line_error_of(docker("container", "prune", "-f", "--filter", "colour=red", check=False))


# -- --restart -----------------------------------------------------------------


def test_docker_run_restart_on_failure_counts_restarts(docker, host):
    docker("run", "-d", "--name", "rf", "--restart", "on-failure:2", "qiao/host", "sh", "-c", "exit 3")
    doc = wait_state(docker, "rf", lambda d: d["State"]["Status"] == "exited" and d["RestartCount"] == 2, "two restarts, then exited")
    assert doc["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert doc["State"]["ExitCode"] == 3
    time.sleep(0.5)  # backoff 0.1 s, 0.2 s: a third restart would have come by now
    assert state(docker, "rf")["RestartCount"] == 2
    docker("start", "rf")  # the user's start: RestartCount from 0 again
    wait_state(docker, "rf", lambda d: d["State"]["Status"] == "exited" and d["RestartCount"] == 2, "two restarts again")


def test_docker_stop_stops_restarting(docker, host):
    docker("run", "-d", "--name", "ra", "--restart", "always", "qiao/host", "sh", "-c", "sleep 0.3; exit 1")
    wait_state(docker, "ra", lambda d: d["RestartCount"] >= 2, "two restarts")
    docker("stop", "-t", "1", "ra")
    count = state(docker, "ra")["RestartCount"]
    time.sleep(2)  # longer than the next wait of its backoff: a restart would have happened
    doc = state(docker, "ra")
    assert (doc["State"]["Status"], doc["RestartCount"]) == ("exited", count)
    assert (
        "conflicting options" in one_line_error_of(docker("run", "--rm", "--restart", "always", "qiao/host", "true", check=False)).lower()
    )
    assert "unknown policy 'bogus'" in one_line_error_of(docker("run", "-d", "--restart", "bogus", "qiao/host", "true", check=False))


def test_docker_restart_always_survives_a_qiaod_restart(make_host, tmp_path):
    h = make_host("ra")
    docker = docker_for(h, tmp_path)
    docker("run", "-d", "--name", "keep", "--restart", "always", *SLEEP)
    first = state(docker, "keep")["State"]["Pid"]
    h.stop_daemon()
    os.kill(first, signal.SIGKILL)  # it exits while no daemon runs: the next one restarts it
    wait_for("the shim to record the exit", lambda: not Path(f"/proc/{first}").exists())
    h.start_daemon()
    doc = wait_state(docker, "keep", lambda d: d["State"]["Running"] and d["State"]["Pid"] not in (0, first), "the restart")
    assert doc["HostConfig"]["RestartPolicy"]["Name"] == "always"
    # A daemon restart while it runs changes nothing; its next exit is seen by the new daemon.
    h.stop_daemon()
    h.start_daemon()
    second = state(docker, "keep")["State"]["Pid"]
    assert second == doc["State"]["Pid"]
    os.kill(second, signal.SIGKILL)
    wait_state(docker, "keep", lambda d: d["State"]["Running"] and d["State"]["Pid"] not in (0, second), "a restart by the new daemon")


# -- the /etc files and the UTS namespace --------------------------------------


def test_docker_run_dns_add_host_hostname_visible_inside(docker, host):
    docker(
        "run", "-d", "--name", "etc", "--dns", "192.0.2.53", "--dns-search", "corp.test", "--dns-option", "ndots:2",
        "--add-host", "db.test:192.0.2.10", "--add-host", "gw:host-gateway", "--hostname", "box", "--domainname", "corp.test", *SLEEP,
    )  # fmt: skip
    resolv = host.exec("etc", "cat", "/etc/resolv.conf").stdout.splitlines()
    assert [line for line in resolv if line.split()[0] in ("nameserver", "search", "options")] == [
        "nameserver 192.0.2.53",
        "search corp.test",
        "options ndots:2",
    ]
    hosts = host.exec("etc", "cat", "/etc/hosts").stdout.splitlines()
    address = state(docker, "etc")["NetworkSettings"]["IPAddress"]
    assert "192.0.2.10\tdb.test" in hosts and "172.17.0.1\tgw" in hosts and f"{address}\tbox.corp.test box" in hosts
    assert hosts.index("192.0.2.10\tdb.test") < hosts.index(f"{address}\tbox.corp.test box")  # Docker's order
    assert host.exec("etc", "hostname").stdout.strip() == "box"
    assert host.exec("etc", "cat", "/proc/sys/kernel/domainname").stdout.strip() == "corp.test"
    doc = state(docker, "etc")
    assert doc["HostConfig"]["Dns"] == ["192.0.2.53"] and doc["HostConfig"]["ExtraHosts"] == ["db.test:192.0.2.10", "gw:host-gateway"]
    assert (doc["Config"]["Hostname"], doc["Config"]["Domainname"]) == ("box", "corp.test")


FAKE_DNS = (
    "import socket, sys\n"
    "from dnslib import A, QTYPE, RR, DNSRecord\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('127.0.0.3', 53))\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    data, peer = s.recvfrom(4096)\n"
    "    q = DNSRecord.parse(data)\n"
    "    r = q.reply()\n"
    "    if QTYPE[q.q.qtype] == 'A':\n"
    "        r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A('192.0.2.77'), ttl=60))\n"
    "    s.sendto(r.pack(), peer)\n"
)


@contextlib.contextmanager
def fake_dns(host: Host) -> Iterator[str]:
    """A resolver on 127.0.0.3 in the test host's namespace answering every A query with 192.0.2.77."""
    proc = host.popen(sys.executable, "-c", FAKE_DNS, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout and proc.stdout.readline().strip() == "ready"
        yield "127.0.0.3"
    finally:
        proc.kill()
        proc.wait()


def test_docker_run_dns_on_a_user_network_goes_through_qiaos_resolver(docker, host):
    net = f"{RUN}-dns"
    docker("network", "create", "--subnet", "10.77.0.0/24", net)
    try:
        with fake_dns(host) as server:
            docker("run", "-d", "--name", "ud", "--network", net, "--dns", server, *SLEEP)
            docker("run", "-d", "--name", "plain", "--network", net, *SLEEP)
            resolv = host.exec("ud", "cat", "/etc/resolv.conf").stdout.splitlines()
            assert resolv[0] == "nameserver 10.77.0.1" and f"# ExtServers: [{server}]" in resolv
            # The network's names still resolve; other names go to this container's --dns only.
            assert host.exec("ud", "getent", "hosts", "plain").stdout.split()[0].startswith("10.77.0.")
            assert host.exec("ud", "getent", "ahostsv4", "ext.example").stdout.split()[0] == "192.0.2.77"
            assert host.exec("plain", "getent", "ahostsv4", "ext.example", check=False).stdout.split()[:1] != ["192.0.2.77"]
    finally:
        host.remove_containers()
        docker("network", "rm", net, check=False)


# -- stop signal and timeout, environment --------------------------------------

ON_USR1 = "import signal, sys, time\nsignal.signal(signal.SIGUSR1, lambda *a: sys.exit(42))\ntime.sleep(300)\n"
IGNORE_TERM = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(300)\n"


def test_docker_stop_signal_and_stop_timeout(docker, host):
    docker("run", "-d", "--name", "sig", "--stop-signal", "USR1", "qiao/host", "python3", "-c", ON_USR1)
    pid = state(docker, "sig")["State"]["Pid"]
    wait_for("the USR1 handler", lambda: catches(pid, signal.SIGUSR1))
    docker("stop", "sig")
    doc = state(docker, "sig")
    assert (doc["State"]["ExitCode"], doc["Config"]["StopSignal"]) == (42, "USR1")
    docker("run", "-d", "--name", "slow", "--stop-timeout", "1", "qiao/host", "python3", "-c", IGNORE_TERM)
    pid = state(docker, "slow")["State"]["Pid"]
    wait_for("the ignored TERM", lambda: _ignores_term(pid))
    docker("stop", "slow", timeout=8)  # with the default 10 s, this would time out
    doc = state(docker, "slow")
    assert (doc["State"]["ExitCode"], doc["Config"]["StopTimeout"]) == (137, 1)


def _ignores_term(pid: int) -> bool:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("SigIgn:"))
    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


def test_docker_run_env_and_env_file(docker, host, tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("# a comment\nFROM_FILE=one\n\nPASSED\nA=overridden later\n")
    docker(
        "run", "-d", "--name", "env", "--env-file", str(env_file), "-e", "A=1", "-e", "FROM_CLIENT", "-e", "NOT_SET", *SLEEP,
        extra_env={"PASSED": "p", "FROM_CLIENT": "c"},
    )  # fmt: skip
    pid = state(docker, "env")["State"]["Pid"]
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    assert (environ["FROM_FILE"], environ["PASSED"], environ["A"], environ["FROM_CLIENT"]) == ("one", "p", "1", "c")
    assert "NOT_SET" not in environ


def test_docker_run_refuses_what_qiao_does_not_do(docker, host):
    for args, option in ((["--init"], "--init"), (["--memory", "10m"], "--memory"), (["--pid", "host"], "--pid")):
        assert option in one_line_error_of(docker("run", "-d", *args, "qiao/host", "true", check=False))
    assert docker("ps", "-aq").stdout == ""


# -- qiao's own CLI ------------------------------------------------------------


def test_qiao_cli_lifecycle_commands(host):
    host.qiao("run", "-d", "--name", "q1", "--restart", "unless-stopped", "--dns", "192.0.2.53", "--add-host", "db:192.0.2.10",
              "--hostname", "qbox", "--stop-signal", "USR1", "--", "python3", "-c", ON_USR1)  # fmt: skip
    doc = host.inspect("q1")
    assert doc["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped" and doc["Config"]["StopSignal"] == "USR1"
    assert "192.0.2.10\tdb" in host.exec("q1", "cat", "/etc/hosts").stdout
    assert host.exec("q1", "hostname").stdout.strip() == "qbox"
    assert "CMD" in host.qiao("top", "q1").stdout.splitlines()[0]
    stats = host.qiao("stats", "--no-stream", "q1").stdout.splitlines()
    assert stats[0].startswith("CONTAINER ID") and stats[1].split()[1] == "q1"
    if v2_mount() is not None:
        host.qiao("pause", "q1")
        assert host.inspect("q1")["State"]["Status"] == "paused"
        host.qiao("unpause", "q1")
    wait_for("the USR1 handler", lambda: catches(host.inspect("q1")["State"]["Pid"], signal.SIGUSR1))
    host.qiao("rename", "q1", "q2")
    host.qiao("stop", "q2")  # the stop signal: exit 42, and unless-stopped does not restart it
    assert host.inspect("q2")["State"]["ExitCode"] == 42
    host.qiao("restart", "q2")
    assert host.inspect("q2")["State"]["Running"]
    host.qiao("kill", "q2")
    wait_for("q2 to exit", lambda: host.inspect("q2")["State"]["Status"] == "exited")
    out = host.qiao("container", "prune", "-f").stdout
    assert "Deleted Containers:" in out and host.ps_ids() == []
    assert "invalid restart policy" in one_line_error(host.qiao("run", "--restart", "sometimes", "--", "true", check=False))


def test_lifecycle_events_are_dockerds(docker, host):
    docker("run", "-d", "--name", "ev", *SLEEP)
    cid = state(docker, "ev")["Id"]
    docker("rename", "ev", "ev2")
    docker("top", "ev2")
    if v2_mount() is not None:
        docker("pause", "ev2")
        docker("unpause", "ev2")
    docker("restart", "-t", "5", "ev2")  # sleep ends on SIGTERM: one kill
    until = str(time.time() + 1)
    out = docker(
        "events", "--since", "0", "--until", until, "--filter", f"container={cid}", "--format", "{{.Action}} {{json .Actor.Attributes}}"
    )
    actions = [line.split(" ", 1)[0] for line in out.stdout.splitlines()]
    pause = ["pause", "unpause"] if v2_mount() is not None else []
    assert actions == ["create", "start", "rename", "top", *pause, "kill", "die", "stop", "start", "restart"], actions
    rename = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("rename")).split(" ", 1)[1])
    assert (rename["name"], rename["oldName"]) == ("ev2", "/ev")
