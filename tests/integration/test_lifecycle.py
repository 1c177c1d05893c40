"""A container's life: run (foreground and -d), ps, inspect, exec, logs,
stop, kill, rm; names and id prefixes; nothing left behind by rm."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import QIAO, Host, one_line_error, wait_for

HEX64 = re.compile(r"[0-9a-f]{64}")
PS_JSON_KEYS = [
    "Command", "CreatedAt", "ID", "Image", "Labels", "LocalVolumes", "Mounts", "Names", "Networks", "Ports",
    "RunningFor", "Size", "State", "Status",
]  # fmt: skip
# A single process that ignores SIGTERM (no child that would outlive a SIGKILL).
IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"


pytestmark = pytest.mark.usefixtures("clean")  # every test starts with no containers on the shared host and leaves none


# -- helpers -------------------------------------------------------------------


def wait_exited(host: Host, name: str, timeout: float = 10) -> dict:
    """The container's ``State`` once it has exited."""

    def exited() -> dict | None:
        state = host.inspect(name)["State"]
        return state if state["Status"] == "exited" else None

    return wait_for(f"{name} to exit", exited, timeout)


def mounts_under(directory: str) -> list[str]:
    return [f for f in (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()) if f.startswith(directory + "/")]


def veth_of(host: Host, endpoint_id: str) -> str | None:
    """The host end of an endpoint's veth pair (tagged ``qiao:<endpoint id>``)."""
    for link in json.loads(host.sh("ip", "-j", "link", "show", "type", "veth").stdout or "[]"):
        if link.get("ifalias") == "qiao:" + endpoint_id:
            return link["ifname"]
    return None


# -- run -----------------------------------------------------------------------


def test_foreground_run_passes_output_and_exit_code(host: Host) -> None:
    r = host.qiao("run", "--name", "fg", "--", "sh", "-c", "echo hi; echo oops >&2; exit 7", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (7, "hi\n", "oops\n")
    state = host.inspect("fg")["State"]
    assert (state["Status"], state["Running"], state["Pid"], state["ExitCode"]) == ("exited", False, 0, 7)
    assert host.qiao("run", "--rm", "--", "true").returncode == 0
    assert host.qiao("run", "--rm", "--", "tr", "a-z", "A-Z", input="piped in\n").stdout == "PIPED IN\n"  # stdin too
    assert host.qiao("run", "--rm", "--", "sh", "-c", "kill -USR1 $$", check=False).returncode == 128 + 10
    missing = host.qiao("run", "--rm", "--", "no-such-command-here", check=False)
    assert missing.returncode == 127 and "no-such-command-here" in one_line_error(missing)


def test_foreground_run_streams_before_the_command_ends(host: Host) -> None:
    proc = host.popen(
        QIAO, "--root", host.root, "run", "--name", "stream", "--", "sh", "-c", "echo first; exec sleep 300",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "no output while the command runs"
        assert proc.stdout.readline() == "first\n"
        assert host.inspect("stream")["State"]["Running"]
        proc.send_signal(signal.SIGTERM)  # the CLI passes it on to the container
        assert proc.wait(15) == 143
        assert host.inspect("stream")["State"]["ExitCode"] == 143
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_env_hostname_and_rm(host: Host) -> None:
    script = 'echo "$FOO|$EMPTY|$(hostname)|$HOSTNAME|$(cat /etc/hostname)"'
    r = host.qiao("run", "--rm", "--name", "tmp", "-e", "FOO=bar baz", "-e", "EMPTY=", "--hostname", "myhost", "--", "sh", "-c", script)
    assert r.stdout == "bar baz||myhost|myhost|myhost\n"
    assert host.qiao("inspect", "tmp", check=False).returncode != 0
    assert host.ps_ids() == []
    assert os.listdir(os.path.join(host.root, "lib", "containers")) == []

    # --rm -d: removed once the command exits on its own
    cid = host.run_d("--rm", "--name", "tmpd", "--", "sh", "-c", "exit 3")
    wait_for("tmpd to be removed", lambda: host.qiao("inspect", "tmpd", check=False).returncode != 0)
    assert not os.path.exists(os.path.join(host.root, "lib", "containers", cid))

    # --rm -d, stopped: removed by the stop
    host.run_d("--rm", "--name", "tmps", "--", "sleep", "300")
    host.qiao("stop", "tmps")
    assert host.qiao("inspect", "tmps", check=False).returncode != 0

    bad = host.qiao("run", "--rm", "-e", "=x", "--", "true", check=False)
    assert "environment" in one_line_error(bad)


def test_detach_prints_the_id_and_ps_lists_in_dockers_json(host: Host) -> None:
    cid = host.run_d("--name", "sleeper", "--", "sleep", "300")
    assert HEX64.fullmatch(cid)
    host.qiao("run", "--name", "done", "--", "sh", "-c", "exit 3", check=False)

    table = host.qiao("ps").stdout.splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    assert len(table) == 2 and table[1].startswith(cid[:12]) and table[1].endswith("sleeper")
    assert host.qiao("ps", "-q").stdout.split() == [cid[:12]]
    assert len(host.qiao("ps", "-aq").stdout.split()) == 2

    assert [row["Names"] for row in host.ps_json()] == ["sleeper"]
    rows = {row["Names"]: row for row in host.ps_json("-a")}
    assert list(rows) == ["done", "sleeper"]  # newest first
    for row in rows.values():
        assert list(row) == PS_JSON_KEYS
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} \w+", row["CreatedAt"]), row["CreatedAt"]
        assert row["RunningFor"].endswith(" ago") and row["Networks"] == "bridge"
    up = rows["sleeper"]
    assert (up["ID"], up["State"], up["Command"], up["Image"], up["Ports"]) == (cid[:12], "running", '"sleep 300"', "qiao/host", "")
    assert up["Status"].startswith("Up ")
    down = rows["done"]
    assert down["State"] == "exited" and re.fullmatch(r"Exited \(3\) .* ago", down["Status"]), down["Status"]


def test_inspect_shows_dockers_container_fields(host: Host) -> None:
    cid = host.run_d("--name", "insp", "-e", "A=1", "-e", "B=two", "--hostname", "hh", "--", "sleep", "300")
    info = host.inspect("insp")
    assert info["Id"] == cid and info["Name"] == "/insp"
    state = info["State"]
    assert (state["Status"], state["Running"], state["ExitCode"]) == ("running", True, 0)
    assert Path(f"/proc/{state['Pid']}/cmdline").read_bytes() == b"sleep\x00300\x00"
    assert (info["Config"]["Hostname"], info["Config"]["Env"], info["Config"]["Cmd"]) == ("hh", ["A=1", "B=two"], ["sleep", "300"])
    assert info["HostConfig"]["NetworkMode"] == "bridge"

    ns = info["NetworkSettings"]
    assert ns["SandboxKey"].startswith(os.path.join(host.root, "run", "netns") + "/") and ns["SandboxKey"] in mounts_under(host.root)
    assert ipaddress.IPv4Address(ns["IPAddress"]) in ipaddress.IPv4Network("172.17.0.0/16")
    assert (ns["IPPrefixLen"], ns["Gateway"]) == (16, "172.17.0.1")
    assert ns["MacAddress"] == "02:42:" + ":".join(f"{int(b):02x}" for b in ns["IPAddress"].split("."))
    assert list(ns["Networks"]) == ["bridge"]
    bridge = json.loads(host.qiao("network", "inspect", "bridge").stdout)[0]
    ep = ns["Networks"]["bridge"]
    assert ep["NetworkID"] == bridge["Id"] and HEX64.fullmatch(ep["EndpointID"])
    assert ep["EndpointID"] == bridge["Containers"][cid]["EndpointID"]
    assert {k: ep[k] for k in ("EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "MacAddress")} == {
        k: ns[k] for k in ("EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "MacAddress")
    }

    # The same object by full id, unique prefix and name; several at once.
    many = json.loads(host.qiao("inspect", cid, cid[:5], "insp").stdout)
    assert [c["Id"] for c in many] == [cid] * 3


def test_exec_enters_the_containers_net_uts_and_mount_namespaces(host: Host) -> None:
    host.run_d("--name", "ex", "--hostname", "exhost", "--", "sleep", "300")
    info = host.inspect("ex")
    pid = info["State"]["Pid"]
    script = "readlink /proc/self/ns/net /proc/self/ns/uts /proc/self/ns/mnt; hostname; cat /etc/hostname; echo $HOSTNAME"
    out = host.exec("ex", "sh", "-c", script)
    want = [os.readlink(f"/proc/{pid}/ns/{kind}") for kind in ("net", "uts", "mnt")] + ["exhost"] * 3
    assert out.stdout.splitlines() == want
    assert want[:3] != [os.readlink(f"/proc/self/ns/{kind}") for kind in ("net", "uts", "mnt")]
    addrs = json.loads(host.exec("ex", "ip", "-j", "addr", "show", "eth0").stdout)[0]["addr_info"]
    assert [a["local"] for a in addrs if a["family"] == "inet"] == [info["NetworkSettings"]["IPAddress"]]
    assert host.exec("ex", "sh", "-c", "exit 5", check=False).returncode == 5
    assert host.qiao("exec", "-e", "X=1", "ex", "sh", "-c", "echo $X").stdout == "1\n"

    host.qiao("stop", "ex")
    assert "not running" in one_line_error(host.exec("ex", "true", check=False))


def test_logs_hold_stdout_and_stderr(host: Host) -> None:
    host.run_d("--name", "lg", "--", "sh", "-c", "echo out; echo err >&2; echo done")
    assert wait_exited(host, "lg")["ExitCode"] == 0
    logs = host.qiao("logs", "lg")
    assert (logs.stdout, logs.stderr) == ("out\ndone\n", "err\n")  # each to its own stream
    host.run_d("--name", "lg2", "--", "sh", "-c", "echo ready; exec sleep 300")
    wait_for("lg2's output", lambda: host.qiao("logs", "lg2").stdout == "ready\n")


# -- stop / kill ---------------------------------------------------------------


def test_stop_sends_sigterm_then_sigkill_after_the_grace_time(host: Host) -> None:
    host.run_d("--name", "st", "--", "sleep", "300")
    ep = host.inspect("st")["NetworkSettings"]["Networks"]["bridge"]["EndpointID"]
    assert veth_of(host, ep)
    t0 = time.monotonic()
    assert host.qiao("stop", "st").stdout == "st\n"
    assert time.monotonic() - t0 < 5  # sleep dies of the SIGTERM: no grace time spent
    state = host.inspect("st")["State"]
    assert (state["Status"], state["Running"], state["Pid"], state["ExitCode"]) == ("exited", False, 0, 143)
    assert veth_of(host, ep) is None and host.inspect("st")["NetworkSettings"]["SandboxKey"] == ""
    assert host.qiao("stop", "st").returncode == 0  # stopping a stopped container is no error

    host.run_d("--name", "trap", "--", "python3", "-c", IGNORE_TERM)
    wait_for("the TERM handler", lambda: host.qiao("logs", "trap").stdout == "ready\n")
    t0 = time.monotonic()
    host.qiao("stop", "-t", "1", "trap")
    took = time.monotonic() - t0
    assert 0.9 <= took < 5, took
    assert host.inspect("trap")["State"]["ExitCode"] == 137


def test_kill_sends_a_signal_and_exit_codes_are_recorded(host: Host) -> None:
    host.run_d("--name", "k9", "--", "sleep", "300")
    host.run_d("--name", "usr1", "--", "sleep", "300")
    host.run_d("--name", "seven", "--", "sh", "-c", "exit 7")
    assert host.qiao("kill", "k9").stdout == "k9\n"
    host.qiao("kill", "-s", "USR1", "usr1")
    assert wait_exited(host, "k9")["ExitCode"] == 137
    assert wait_exited(host, "usr1")["ExitCode"] == 138
    assert wait_exited(host, "seven")["ExitCode"] == 7
    statuses = {row["Names"]: row["Status"] for row in host.ps_json("-a")}
    for name, code in (("k9", 137), ("usr1", 138), ("seven", 7)):
        assert re.fullmatch(rf"Exited \({code}\) .* ago", statuses[name]), statuses
    assert "not running" in one_line_error(host.qiao("kill", "k9", check=False))

    host.run_d("--name", "alive", "--", "sleep", "300")
    assert "signal" in one_line_error(host.qiao("kill", "-s", "NOSUCHSIG", "alive", check=False))
    assert host.inspect("alive")["State"]["Running"]


# -- names and ids -------------------------------------------------------------


def test_a_name_or_unique_id_prefix_works_everywhere(host: Host) -> None:
    cid = host.run_d("--name", "px", "--", "sh", "-c", "echo hello; exec sleep 300")
    for ref in (cid, cid[:7], "px"):
        assert host.inspect(ref)["Id"] == cid
        assert host.exec(ref, "hostname").stdout.strip() == cid[:12]
        wait_for("px's output", lambda ref=ref: host.qiao("logs", ref).stdout.startswith("hello\n"))
    # refs go percent-encoded into one path segment: Docker's "/px" form works, "px/x" is just not found
    assert host.inspect("/px")["Id"] == cid and one_line_error(host.qiao("stop", "px/x", check=False)).endswith("No such container: px/x")
    short = cid[:7]
    assert host.qiao("stop", short).stdout == f"{short}\n"
    assert host.inspect("px")["State"]["ExitCode"] == 143
    host.qiao("start", short)
    assert host.inspect("px")["State"]["Running"]
    host.qiao("kill", short)
    assert wait_exited(host, cid)["ExitCode"] == 137
    host.qiao("rm", short)
    assert host.qiao("inspect", "px", check=False).returncode != 0


def test_an_ambiguous_id_prefix_is_refused(host: Host) -> None:
    # Containers until two ids share their first digit (at most 17, by pigeonhole).
    by_first: dict[str, list[str]] = {}
    while not any(len(ids) > 1 for ids in by_first.values()):
        cid = host.run_d("--network", "host", "--", "true")
        by_first.setdefault(cid[0], []).append(cid)
    prefix, (a, b) = next((k, v) for k, v in by_first.items() if len(v) > 1)
    before = host.ps_ids()
    for args in (("inspect", prefix), ("rm", "-f", prefix), ("stop", prefix), ("kill", prefix), ("logs", prefix), ("start", prefix)):
        line = one_line_error(host.qiao(*args, check=False))
        assert "multiple" in line and prefix in line, (args, line)
    assert host.ps_ids() == before
    # One digit past the common part names exactly one of them.
    common = len(os.path.commonprefix([a, b]))
    assert host.inspect(a[: common + 1])["Id"] == a
    # A name comes before an id prefix (Docker's order: full id, name, prefix).
    named = host.run_d("--network", "host", "--name", prefix, "--", "true")
    assert host.inspect(prefix)["Id"] == named


# -- rm --------------------------------------------------------------------------


def test_rm_leaves_nothing_behind_and_frees_the_address(host: Host) -> None:
    cid = host.run_d("--name", "gone", "--", "sleep", "300")
    info = host.inspect("gone")
    ip = info["NetworkSettings"]["IPAddress"]
    sandbox = info["NetworkSettings"]["SandboxKey"]
    ep = info["NetworkSettings"]["Networks"]["bridge"]["EndpointID"]
    netns_dir = os.path.join(host.root, "run", "netns")
    ctr_dir = os.path.join(host.root, "lib", "containers", cid)
    veth = veth_of(host, ep)
    assert ip == "172.17.0.2"  # the lowest address of the bridge's subnet
    assert veth and os.path.exists(sandbox) and sandbox in mounts_under(host.root)
    assert os.path.isdir(ctr_dir) and os.path.exists(info["LogPath"])
    host.run_d("--name", "keeper", "--", "sleep", "300")  # holds the next address and a namespace of its own
    keeper = host.inspect("keeper")["NetworkSettings"]
    assert keeper["IPAddress"] == "172.17.0.3"

    refused = host.qiao("rm", "gone", check=False)
    assert "running" in one_line_error(refused) and host.inspect("gone")["State"]["Running"]

    assert host.qiao("rm", "-f", "gone").stdout == "gone\n"
    assert host.qiao("inspect", "gone", check=False).returncode != 0
    assert host.sh("ip", "link", "show", veth, check=False).returncode != 0
    assert veth_of(host, ep) is None
    assert not os.path.exists(sandbox) and os.listdir(netns_dir) == [os.path.basename(keeper["SandboxKey"])]
    assert mounts_under(netns_dir) == [keeper["SandboxKey"]]
    assert not os.path.exists(ctr_dir) and not os.path.exists(info["LogPath"])
    assert list(json.loads(host.qiao("network", "inspect", "bridge").stdout)[0]["Containers"]) == [host.inspect("keeper")["Id"]]
    with contextlib.suppress(OSError):  # gone (or the pid already reused by something else)
        assert Path(f"/proc/{info['State']['Pid']}/cmdline").read_bytes() != b"sleep\x00300\x00", "the process survived rm -f"

    # The name and the address are free again: the next container gets the lowest
    # free address, the one just freed; and an exited container is removed without -f,
    # just as completely.
    cid2 = host.run_d("--name", "gone", "--", "sleep", "300")
    info2 = host.inspect("gone")
    assert info2["NetworkSettings"]["IPAddress"] == ip
    host.qiao("stop", "gone")
    host.qiao("rm", "gone")
    assert os.listdir(netns_dir) == [os.path.basename(keeper["SandboxKey"])] and mounts_under(netns_dir) == [keeper["SandboxKey"]]
    assert not os.path.exists(os.path.join(host.root, "lib", "containers", cid2))
    assert veth_of(host, info2["NetworkSettings"]["Networks"]["bridge"]["EndpointID"]) is None
