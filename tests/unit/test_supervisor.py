"""The supervisor and its spare shims, with real processes (no namespaces, no root)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from qiao.proc import alive
from qiao.runtime.supervisor import StartError, Supervisor


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
    pid, start = (int(x) for x in (tmp_path / "a.pid").read_text().split())
    assert pid == started.shim_pid and start == started.shim_start
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
