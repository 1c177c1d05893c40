"""The supervisor and its spare shims, with real processes (no namespaces, no root)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from qiao.proc import alive, boot_id, exited, start_time
from qiao.runtime.supervisor import StartError, Supervisor, end_leftovers


class Exits:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, cid: str) -> None:
        with self.cond:
            self.seen.append(cid)
            self.cond.notify_all()

    def wait_for(self, cid: str, timeout: float = 10) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: cid in self.seen, timeout), f"no exit noticed for {cid}"


def spec(tmp_path: Path, name: str, cmd: list[str]) -> dict:
    return {
        "cmd": cmd,
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        "exit_file": str(tmp_path / f"{name}.exit"),
        "pid_file": str(tmp_path / f"{name}.pid"),
    }


def stdio(tmp_path: Path, name: str) -> tuple[int, int, int]:
    out = os.open(tmp_path / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return null, out, out


def wait_spare(sup: Supervisor, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while sup._spare is None:
        assert time.monotonic() < deadline, "no spare shim was started"
        time.sleep(0.01)


@pytest.fixture
def sup():
    exits = Exits()
    supervisor = Supervisor(exits, tag="/qiao/test-root")
    supervisor.exits = exits  # type: ignore[attr-defined]
    yield supervisor
    shim = supervisor._spare
    if shim is not None:  # an idle spare ends when its control socket closes
        shim.control.close()
        shim.proc.wait(10)


def test_a_container_runs_on_a_spare_and_a_new_spare_follows(sup, tmp_path) -> None:
    fds = stdio(tmp_path, "a")
    started = sup.spawn("a", spec(tmp_path, "a", ["sh", "-c", "echo hello; exit 3"]), fds)
    for fd in set(fds):
        os.close(fd)
    sup.exits.wait_for("a")
    assert (tmp_path / "a.exit").read_text() == "3"
    assert (tmp_path / "a.log").read_text() == "hello\n"
    assert not (tmp_path / "a.pid").exists()  # removed by a shim that leaves nothing running
    assert started.shim_pid != started.pid
    wait_spare(sup)
    spare = sup._spare
    assert spare is not None and spare.proc.pid != started.shim_pid
    assert b"/qiao/test-root" in Path(f"/proc/{spare.proc.pid}/cmdline").read_bytes()

    fds = stdio(tmp_path, "b")
    second = sup.spawn("b", spec(tmp_path, "b", ["true"]), fds)
    for fd in set(fds):
        os.close(fd)
    assert second.shim_pid == spare.proc.pid  # the spare took the container
    sup.exits.wait_for("b")


def test_a_missing_command_is_reported_and_recorded(sup, tmp_path) -> None:
    fds = stdio(tmp_path, "x")
    with pytest.raises(StartError) as err:
        sup.spawn("x", spec(tmp_path, "x", ["/no/such/command"]), fds)
    for fd in set(fds):
        os.close(fd)
    assert "executable file not found" in str(err.value) and err.value.exit_code == 127
    assert (tmp_path / "x.exit").read_text() == "127"


def test_a_spare_killed_while_idle_is_replaced(sup, tmp_path) -> None:
    sup._refill()
    wait_spare(sup)
    dead = sup._spare
    assert dead is not None
    os.kill(dead.proc.pid, signal.SIGKILL)
    dead.proc.wait(10)
    fds = stdio(tmp_path, "c")
    started = sup.spawn("c", spec(tmp_path, "c", ["true"]), fds)
    for fd in set(fds):
        os.close(fd)
    assert started.shim_pid != dead.proc.pid
    sup.exits.wait_for("c")
    assert not alive(started.shim_pid, started.shim_start)


# A command that forks a child, which leaves the session (setsid) and forks a grandchild;
# each writes its pid to the log, then they all sleep.
FORKER = (
    "import os, sys, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        print(os.getpid(), flush=True); time.sleep(600)\n"
    "    print(os.getpid(), flush=True); time.sleep(600)\n"
    "print(os.getpid(), flush=True); time.sleep(600)\n"
)


def logged_pids(tmp_path: Path, name: str, count: int) -> list[int]:
    deadline = time.monotonic() + 10
    while True:
        text = (tmp_path / f"{name}.log").read_text()
        if len(text.split()) >= count:
            return [int(p) for p in text.split()]
        assert time.monotonic() < deadline, text
        time.sleep(0.01)


def wait_gone(pids: list[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not all(exited(p) for p in pids):
        assert time.monotonic() < deadline, [p for p in pids if not exited(p)]
        time.sleep(0.01)


def test_the_pid_file_names_the_shim_the_command_and_its_mount_namespace(sup, tmp_path) -> None:
    fds = stdio(tmp_path, "p")
    started = sup.spawn("p", spec(tmp_path, "p", ["sleep", "600"]), fds)
    for fd in set(fds):
        os.close(fd)
    *fields, boot = (tmp_path / "p.pid").read_text().split()
    # No mount namespace of its own in this spec: no namespace to name (0), so none to sweep.
    assert [int(f) for f in fields] == [started.shim_pid, started.shim_start, started.pid, start_time(started.pid), 0]
    assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    os.kill(started.pid, signal.SIGKILL)
    sup.exits.wait_for("p")
    assert not (tmp_path / "p.pid").exists()


def test_when_the_command_exits_the_shim_ends_its_descendants(sup, tmp_path) -> None:
    """Even one that left the session: as a subreaper, the shim inherits the orphans."""
    fds = stdio(tmp_path, "d")
    started = sup.spawn("d", spec(tmp_path, "d", ["python3", "-c", FORKER]), fds)
    for fd in set(fds):
        os.close(fd)
    pids = logged_pids(tmp_path, "d", 3)
    assert started.pid in pids
    os.kill(started.pid, signal.SIGKILL)  # as `rm -f` does
    sup.exits.wait_for("d")
    wait_gone(pids)
    assert (tmp_path / "d.exit").read_text() == "137" and not (tmp_path / "d.pid").exists()


def test_end_leftovers_ends_a_killed_shims_command_and_descendants(sup, tmp_path) -> None:
    fds = stdio(tmp_path, "k")
    started = sup.spawn("k", spec(tmp_path, "k", ["python3", "-c", FORKER]), fds)
    for fd in set(fds):
        os.close(fd)
    pids = logged_pids(tmp_path, "k", 3)
    os.kill(started.shim_pid, signal.SIGKILL)  # the shim dies under its command: they go to PID 1
    sup.exits.wait_for("k")
    assert not any(exited(p) for p in pids)
    killed = end_leftovers(str(tmp_path / "k.pid"))
    wait_gone(pids)
    assert set(pids) <= set(killed) and not (tmp_path / "k.pid").exists()
    assert end_leftovers(str(tmp_path / "k.pid")) == []  # no file: nothing to do


def test_end_leftovers_spares_what_only_looks_like_a_shim(tmp_path) -> None:
    """A pid file from another boot, or one whose shim has another start time (the pid was
    reused) and has no session, ends nothing."""
    child = subprocess.Popen(["sleep", "600"], start_new_session=True)  # a session leader, as a shim
    try:
        start = start_time(child.pid)
        (tmp_path / "x.pid").write_text(f"{child.pid} {start} 0 0 0 not-this-boot")
        assert end_leftovers(str(tmp_path / "x.pid")) == [] and not (tmp_path / "x.pid").exists()
        (tmp_path / "x.pid").write_text(f"{child.pid} {start + 1} 0 0 0 {boot_id()}")  # started after it: not its session
        assert end_leftovers(str(tmp_path / "x.pid")) == [] and not (tmp_path / "x.pid").exists()
        assert child.poll() is None
        (tmp_path / "x.pid").write_text(f"{child.pid} {start} 0 0 0 {boot_id()}")  # not a shim, but its session
        assert end_leftovers(str(tmp_path / "x.pid")) == [child.pid]
    finally:
        child.kill()
        child.wait()
