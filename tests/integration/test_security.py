"""A container must not be able to take over its host.

An "attacker" container, in every network mode, finds qiao's root empty:
no API socket, no store, no other container's files, no namespace files,
not even through /proc/<qiaod>/root.  Capabilities are Docker's default set,
changed by --cap-add/--cap-drop/--privileged; --user and --workdir are
honoured; ``qiao exec`` gets no more than the container has.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qiao.runtime import security
from tests.integration.conftest import Host, one_line_error

pytestmark = pytest.mark.usefixtures("clean")  # every test starts with no containers on the shared host and leaves none

# Look for qiao's root from inside (argv: ROOT, qiaod's pid); print what was found as JSON.
ATTACK = """
import json, os, socket, sys
root, qiaod = sys.argv[1], sys.argv[2]
def attempt(what):
    try:
        return what()
    except OSError as exc:
        return "error: " + (exc.strerror or str(exc))
def connect():
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(root, "run", "qiao.sock"))
    s.sendall(b"GET /_ping HTTP/1.0\\r\\n\\r\\n")
    return s.recv(100).decode()
print(json.dumps({
    "root": attempt(lambda: sorted(os.listdir(root))),
    "socket": os.path.exists(os.path.join(root, "run", "qiao.sock")),
    "store": os.path.exists(os.path.join(root, "lib", "qiao.db")),
    "connect": attempt(connect),
    "via_proc": attempt(lambda: sorted(os.listdir("/proc/" + qiaod + "/root" + root))),
    "default_root": [attempt(lambda: sorted(os.listdir(d))) for d in ("/var/lib/qiao", "/run/qiao") if os.path.exists(d)],
    "write": attempt(lambda: open(os.path.join(root, "planted"), "w") and "written"),
    "hostname": open("/etc/hostname").read().strip(),
    "cwd": os.getcwd(),
}))
"""


def qiaod_pid(host: Host) -> str:
    return Path(host.root, "run", "qiaod.pid").read_text().strip()


def attack(host: Host, *args: str) -> dict:
    out = host.qiao("run", "--rm", *args, "--", "python3", "-c", ATTACK, host.root, qiaod_pid(host)).stdout
    return json.loads(out)


def status(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def caps(host: Host, *args: str) -> dict[str, str]:
    """/proc/self/status of a container run with ARGS."""
    return status(host.qiao("run", "--rm", *args, "--", "cat", "/proc/self/status").stdout)


def mask(hexa: str) -> int:
    return int(hexa, 16)


HELD = mask(security.process_status("self")["CapBnd"])  # what the test (and so qiaod) holds
DEFAULT = security.mask(list(security.DEFAULT_CAPS)) & HELD


def assert_blind(found: dict, root: str) -> None:
    assert found["root"] == [], found  # an empty tmpfs
    assert (found["socket"], found["store"]) == (False, False), found
    assert found["connect"] == "error: No such file or directory", found
    assert found["via_proc"] == "error: Permission denied", found  # qiaod holds more capabilities
    assert all(listing == [] for listing in found["default_root"]), found
    assert found["write"] == "error: Read-only file system", found
    assert not os.path.exists(os.path.join(root, "planted"))


# -- the root is hidden --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bridge", "none", "host"])
def test_a_container_cannot_see_qiaos_root(host: Host, mode: str) -> None:
    found = attack(host, "--network", mode, *(["-h", "spy"] if mode != "host" else []))
    assert_blind(found, host.root)
    if mode != "host":
        assert found["hostname"] == "spy"  # its own /etc files still show: bound before the root was hidden
    assert found["cwd"] == "/"  # never the daemon's directory, which might be inside the root


def test_a_joined_container_and_exec_cannot_see_qiaos_root(host: Host) -> None:
    host.run_d("--name", "target", "--", "sleep", "300")
    found = attack(host, "--network", "container:target")
    assert_blind(found, host.root)
    assert found["hostname"] == host.inspect("target")["Id"][:12]  # the target's /etc files
    found = json.loads(host.exec("target", "python3", "-c", ATTACK, host.root, qiaod_pid(host)).stdout)
    assert_blind(found, host.root)


def test_even_a_privileged_container_starts_with_the_root_hidden(host: Host) -> None:
    found = attack(host, "--privileged")
    assert found["root"] == [] and not found["socket"] and not found["store"]


# -- capabilities ------------------------------------------------------------------------------------


def test_the_default_set_is_dockers_with_no_new_privs(host: Host) -> None:
    st = caps(host)
    assert mask(st["CapBnd"]) == mask(st["CapEff"]) == mask(st["CapPrm"]) == DEFAULT
    assert mask(st["CapInh"]) == mask(st["CapAmb"]) == 0
    assert st["NoNewPrivs"] == "1"
    assert st["Uid"].split() == ["0"] * 4


def test_net_admin_must_be_added(host: Host) -> None:
    script = "ip addr add 10.99.0.1/32 dev lo && ip link add qx0 type veth peer name qx1 && echo done"
    r = host.qiao("run", "--rm", "--", "sh", "-c", script, check=False)
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r
    r = host.qiao("run", "--rm", "--", "ip", "link", "add", "qx0", "type", "veth", "peer", "name", "qx1", check=False)
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r
    assert host.qiao("run", "--rm", "--cap-add", "NET_ADMIN", "--", "sh", "-c", script).stdout == "done\n"
    assert host.qiao("run", "--rm", "--cap-add", "cap_net_admin", "--", "sh", "-c", script).stdout == "done\n"


def test_cap_drop_all_and_privileged(host: Host) -> None:
    st = caps(host, "--cap-drop", "ALL")
    assert mask(st["CapEff"]) == mask(st["CapBnd"]) == mask(st["CapPrm"]) == 0
    st = caps(host, "--cap-drop", "all", "--cap-add", "NET_RAW")
    assert mask(st["CapEff"]) == 1 << 13
    st = caps(host, "--privileged")
    assert mask(st["CapEff"]) == mask(st["CapBnd"]) == HELD  # all qiaod holds
    assert st["NoNewPrivs"] == "0"
    st = caps(host, "--cap-add", "ALL", "--cap-drop", "SYS_ADMIN")
    assert mask(st["CapEff"]) == HELD & ~(1 << 21) and st["NoNewPrivs"] == "1"


def test_unknown_capabilities_and_users_are_one_clear_error(host: Host) -> None:
    r = host.qiao("run", "--rm", "--cap-add", "NET_ADMINS", "--", "true", check=False)
    assert one_line_error(r) == 'qiao: Error response from daemon: unknown capability: "CAP_NET_ADMINS"' and r.returncode == 125
    r = host.qiao("run", "--rm", "-u", "no-such-user-here", "--", "true", check=False)
    assert "unable to find user no-such-user-here" in one_line_error(r) and r.returncode == 125
    r = host.qiao("run", "--rm", "-w", "relative", "--", "true", check=False)
    assert "needs to be an absolute path" in one_line_error(r) and r.returncode == 125
    assert host.qiao("ps", "-aq").stdout == ""


# -- user and working directory -------------------------------------------------------------------------


def test_user_and_workdir_are_honoured(host: Host) -> None:
    out = host.qiao("run", "--rm", "-u", "nobody", "-w", "/tmp", "--", "sh", "-c", "id -u; id -g; pwd; echo $HOME").stdout
    assert out.split() == ["65534", "65534", "/tmp", "/nonexistent"]
    st = caps(host, "-u", "nobody")
    assert mask(st["CapEff"]) == mask(st["CapPrm"]) == 0 and mask(st["CapBnd"]) == DEFAULT  # as Docker
    out = host.qiao("run", "--rm", "-u", "4242:4243", "--", "sh", "-c", "id -u; id -g; id -G").stdout
    assert out.split() == ["4242", "4243", "4243"]
    out = host.qiao("run", "--rm", "-u", "0:4243", "--", "sh", "-c", "id -u; id -g").stdout
    assert out.split() == ["0", "4243"]


def test_a_missing_workdir_is_a_clear_start_error(host: Host) -> None:
    r = host.qiao("run", "--rm", "-w", "/no/such/dir", "--", "true", check=False)
    line = one_line_error(r)
    assert 'the working directory "/no/such/dir" does not exist' in line and r.returncode == 126
    r = host.qiao("run", "--rm", "-w", os.path.join(host.root, "lib"), "--", "true", check=False)  # hidden: not there inside
    assert "does not exist" in one_line_error(r)
    assert host.qiao("ps", "-aq").stdout == ""


# -- exec ---------------------------------------------------------------------------------------------------


def test_exec_gets_no_more_than_the_container(host: Host) -> None:
    host.run_d("--name", "ex", "-u", "nobody", "-w", "/tmp", "--cap-add", "NET_ADMIN", "--", "sleep", "300")
    container = status(Path(f"/proc/{host.inspect('ex')['State']['Pid']}/status").read_text())
    st = status(host.exec("ex", "cat", "/proc/self/status").stdout)
    assert {k: st[k] for k in ("Uid", "CapBnd", "CapEff", "CapPrm", "NoNewPrivs")} == {
        k: container[k] for k in ("Uid", "CapBnd", "CapEff", "CapPrm", "NoNewPrivs")
    }
    assert mask(st["CapBnd"]) == DEFAULT | 1 << 12 and mask(st["CapEff"]) == 0
    assert host.exec("ex", "pwd").stdout == "/tmp\n"
    # exec -u root: the container's set, never more (no SYS_ADMIN to undo the hidden root).
    st = status(host.qiao("exec", "-u", "root", "ex", "cat", "/proc/self/status").stdout)
    assert mask(st["CapEff"]) == mask(st["CapBnd"]) == DEFAULT | 1 << 12 and st["NoNewPrivs"] == "1"
    out = host.qiao("exec", "-u", "root", "-w", "/", "ex", "sh", "-c", "id -u; pwd; echo $HOME").stdout
    assert out.split() == ["0", "/", "/root"]
    r = host.qiao("exec", "-u", "root", "ex", "umount", "-l", host.root, check=False)
    assert r.returncode != 0
    r = host.qiao("exec", "-w", "/no/such/dir", "ex", "true", check=False)
    assert "does not exist" in one_line_error(r) and r.returncode == 126
    r = host.qiao("exec", "-u", "no-such-user-here", "ex", "true", check=False)
    assert "unable to find user" in one_line_error(r) and r.returncode == 126
