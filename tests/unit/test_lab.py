"""``qiao lab``'s naming and process handling, with real processes (no namespaces, no root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qiao.kernel import netns as qnetns
from qiao.lab import lab as qlab

# On SIGTERM: appends "term" to the shared log, takes 0.5 s as a qiaod revoking its lease does, appends "exit".
SLOW_EXIT = """
import os, signal, sys, time
def note(what):
    fd = os.open(os.environ["EVENTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, what.encode() + b"\\n")
    os.close(fd)
def stop(*_):
    note("term")
    time.sleep(0.5)
    note("exit")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_lab_ids_are_8_hex_digits_and_link_names_fit_ifnamsiz() -> None:
    ids = {qlab._new_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 8 and int(i, 16) >= 0 for i in ids)
    assert len(f"qlab{qlab._new_id()}h{qlab.MAX_HOSTS}".encode()) <= 15  # the underlay's veth names


def test_an_id_is_taken_when_any_namespace_of_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qnetns, "NETNS_RUN_DIR", str(tmp_path))
    (tmp_path / "qlab-0badcafe-host7").touch()
    (tmp_path / "qlab-0bad-ul").touch()  # a 4-digit id of an older lab: another name
    assert qlab._taken("0badcafe")
    assert not qlab._taken("0badcaff")
    assert not qlab._taken("0bad0000")  # an older lab's 4-digit names share no prefix with 8-digit ids
    monkeypatch.setattr(qnetns, "NETNS_RUN_DIR", str(tmp_path / "missing"))
    assert not qlab._taken("0badcafe")


def test_only_the_namespace_held_under_the_root_counts_as_the_labs(tmp_path: Path) -> None:
    stub = tmp_path / "stub"
    stub.touch()
    assert qlab._empty_file(str(stub))
    assert not qlab._same_namespace(str(stub), str(stub))  # a plain file is no namespace
    stub.write_text("x")
    assert not qlab._empty_file(str(stub))
    assert not qlab._empty_file(str(tmp_path / "missing"))


def _start(root: Path, *argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "EVENTS": str(root.parent / "events")}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXIT, *argv], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_down_finds_unrecorded_processes_and_stops_them_all_at_once(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    procs = [_start(root, "--root", str(root / "hosts" / f"host{i}")) for i in (1, 2, 3)]
    procs.append(_start(root, "--name", "lab", "--data-dir", str(root / "etcd")))
    other = _start(root, "--root", str(tmp_path / "lab2" / "hosts" / "host1"))  # another lab's: not found, not stopped
    try:
        assert qlab._alive(procs[1].pid, str(root)) and not qlab._alive(other.pid, str(root))  # ROOT/.. vs ROOT2/..
        recorded = {"host1": procs[0].pid, "etcd": procs[3].pid}  # up killed before recording host2 and host3
        daemons, etcd = qlab._lab_processes(str(root), recorded)
        assert sorted(daemons) == sorted([("host1", procs[0].pid), ("host2", procs[1].pid), ("host3", procs[2].pid)])
        assert etcd == [("etcd", procs[3].pid)]
        stopped = qlab._stop_all(daemons, str(root))
        assert sorted(stopped) == sorted(daemons)
        assert [p.wait(10) for p in procs[:3]] == [0, 0, 0]  # ended by SIGTERM, all of them (maybe still exiting)
        # All at once, not one after the other: every daemon had its SIGTERM before the first one exited.
        assert (tmp_path / "events").read_text().split() == ["term"] * 3 + ["exit"] * 3
        assert procs[3].poll() is None and other.poll() is None
        assert qlab._stop_all([("gone", procs[0].pid)], str(root)) == []  # not alive any more: not signalled
    finally:
        for p in [*procs, other]:
            if p.poll() is None:
                p.kill()
            p.wait()
            assert p.stdout is not None
            p.stdout.close()


def test_up_refused_leaves_an_existing_lab_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused `up` (a lab exists, a bad --hosts) must not run the clean-up of a failed one."""
    root = tmp_path / "lab"
    root.mkdir()
    state = {"id": "deadbeef", "underlay": "qlab-deadbeef-ul", "namespaces": [], "hosts": [], "pids": {}}
    (root / "lab.json").write_text(json.dumps(state))
    monkeypatch.setattr(qlab.os, "geteuid", lambda: 0)
    monkeypatch.setattr(qlab.Lab, "down", lambda self: pytest.fail("down() ran"))
    with pytest.raises(SystemExit, match="a lab already exists"):
        qlab.main(["--root", str(root), "up", "--hosts", "2"])
    assert json.loads((root / "lab.json").read_text()) == state
    (root / "lab.json").unlink()
    with pytest.raises(SystemExit, match="--hosts must be between"):
        qlab.main(["--root", str(root), "up", "--hosts", "0"])
