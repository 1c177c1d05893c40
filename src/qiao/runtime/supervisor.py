"""Daemon side of container processes: start shims, notice their exits.

One thread waits on pidfds of every shim (epoll), so noticing an exit costs
nothing per running container, and works for shims started by an earlier
daemon (pidfds do not need a parent-child relation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("qiao.supervisor")


class StartError(Exception):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Started:
    pid: int
    shim_pid: int
    shim_start: int


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat; 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return 0
    return int(data.rsplit(")", 1)[1].split()[19])


def alive(pid: int, start_time: int) -> bool:
    return pid > 0 and process_start_time(pid) == start_time


class Supervisor:
    def __init__(self, on_exit: Callable[[str], None]):
        self._on_exit = on_exit
        self._epoll = select.epoll()
        self._watched: dict[int, tuple[str, int, int]] = {}  # pidfd -> (container id, shim pid, is child)
        self._lock = threading.Lock()
        threading.Thread(target=self._loop, name="supervisor", daemon=True).start()

    def spawn(self, cid: str, spec: dict[str, Any], stdio: tuple[int, int, int]) -> Started:
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "qiao.runtime.shim", json.dumps({**spec, "status_fd": status_w})],
                stdin=stdio[0],
                stdout=stdio[1],
                stderr=stdio[2],
                pass_fds=(status_w,),
                start_new_session=True,
                env={"PYTHONPATH": os.pathsep.join(sys.path), "PATH": os.environ.get("PATH", "")},
                close_fds=True,
            )
        except BaseException:
            os.close(status_r)
            os.close(status_w)
            raise
        os.close(status_w)
        with os.fdopen(status_r) as status:
            line = status.readline().strip()
        if not line.startswith("ok "):
            code = proc.wait()
            raise StartError(line.removeprefix("error ") or "container process failed to start", 127 if code == 127 else 126)
        started = Started(int(line.split()[1]), proc.pid, process_start_time(proc.pid))
        self.watch(cid, proc.pid, child=True)
        return started

    def watch(self, cid: str, shim_pid: int, child: bool = False) -> None:
        try:
            pidfd = os.pidfd_open(shim_pid)
        except ProcessLookupError:
            self._on_exit(cid)
            return
        with self._lock:
            self._watched[pidfd] = (cid, shim_pid, int(child))
        self._epoll.register(pidfd, select.EPOLLIN)

    def _loop(self) -> None:
        while True:
            for pidfd, _ in self._epoll.poll():
                with self._lock:
                    cid, shim_pid, child = self._watched.pop(pidfd)
                self._epoll.unregister(pidfd)
                os.close(pidfd)
                if child:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(shim_pid, 0)
                try:
                    self._on_exit(cid)
                except Exception:
                    log.exception("handling the exit of %s failed", cid)
