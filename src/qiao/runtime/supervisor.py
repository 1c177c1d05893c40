"""Daemon side of container processes: start shims, notice their exits.

A shim is a fresh Python interpreter (~20 ms to start and import), so one
is always started ahead, idle on a control socket (a "spare", as Android's
zygote): starting a container hands the spare its spec and stdio, and a new
spare is started in the background.  One thread waits on pidfds of every
shim (epoll), so noticing an exit costs nothing per running container, and
works for shims started by an earlier daemon (pidfds do not need a
parent-child relation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qiao import proc
from qiao.proc import start_time

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


@dataclass
class _Shim:
    """A started shim waiting for its container: the process and our end of its control socket."""

    proc: subprocess.Popen[bytes]
    control: socket.socket


@dataclass
class _Watch:
    """A shim whose end we wait for: a container's (``on_exit(cid)``), or an
    exec's, our child, whose exit status is the exec's exit code (``ended(code)``)."""

    cid: str
    shim_pid: int
    child: bool
    proc: subprocess.Popen[bytes] | None = None
    ended: Callable[[int], None] | None = None


class Supervisor:
    def __init__(self, on_exit: Callable[[str], None], tag: str = ""):
        self._on_exit = on_exit
        self._tag = tag  # on every shim's command line (the qiao root), so a lab or a repair can find its own
        self._epoll = select.epoll()
        self._watched: dict[int, _Watch] = {}  # by pidfd
        self._lock = threading.Lock()
        self._spare: _Shim | None = None
        self._refilling = False
        threading.Thread(target=self._loop, name="supervisor", daemon=True).start()

    def spawn(self, cid: str, spec: dict[str, Any], fds: Sequence[int], ended: Callable[[int], None] | None = None) -> Started:
        """Hand ``spec`` and its descriptors (the container's stdio, or attach
        connections) to a waiting shim; its answer is ``ok <pid>`` once the
        command is exec'd, or ``error <message>``.  With ``ended`` (an exec),
        that is called with the exit code when the shim ends."""
        shim = self._take()
        try:
            try:
                _send(shim.control, json.dumps(spec).encode(), fds)
            except OSError:  # the spare died while idle (killed by someone): start one now
                shim.control.close()
                shim = self._launch()
                _send(shim.control, json.dumps(spec).encode(), fds)
            answer = shim.control.recv(4096).decode()
        finally:
            shim.control.close()
            self._refill()
        if not answer.startswith("ok "):
            code = shim.proc.wait()
            raise StartError(answer.removeprefix("error ") or "container process failed to start", 127 if code == 127 else 126)
        started = Started(int(answer.split()[1]), shim.proc.pid, start_time(shim.proc.pid))
        if ended is None:
            self.watch(cid, shim.proc.pid, child=True)
        else:
            self._add(_Watch(cid, shim.proc.pid, True, shim.proc, ended))
        return started

    def _take(self) -> _Shim:
        with self._lock:
            shim, self._spare = self._spare, None
        if shim is not None and shim.proc.poll() is None:
            return shim
        if shim is not None:
            shim.control.close()
        return self._launch()

    def _refill(self) -> None:
        """Start the next spare in the background (at most one at a time)."""
        with self._lock:
            if self._spare is not None or self._refilling:
                return
            self._refilling = True

        def launch() -> None:
            try:
                shim = self._launch()
            except Exception:
                log.exception("starting a spare container shim failed")
                shim = None
            with self._lock:
                self._refilling = False
                if self._spare is None:
                    self._spare, shim = shim, None
            if shim is not None:  # raced with another refill: not needed
                shim.control.close()

        threading.Thread(target=launch, name="spare-shim", daemon=True).start()

    def _launch(self) -> _Shim:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "qiao.runtime.shim", str(theirs.fileno()), self._tag],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                env={"PYTHONPATH": os.pathsep.join(sys.path), "PATH": os.environ.get("PATH", "")},
                close_fds=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return _Shim(proc, ours)

    def watch(self, cid: str, shim_pid: int, child: bool = False) -> None:
        self._add(_Watch(cid, shim_pid, child))

    def _add(self, watch: _Watch) -> None:
        try:
            pidfd = os.pidfd_open(watch.shim_pid)
        except ProcessLookupError:
            self._ended(watch)
            return
        with self._lock:
            self._watched[pidfd] = watch
        self._epoll.register(pidfd, select.EPOLLIN)

    def _loop(self) -> None:
        while True:
            for pidfd, _ in self._epoll.poll():
                with self._lock:
                    watch = self._watched.pop(pidfd)
                self._epoll.unregister(pidfd)
                os.close(pidfd)
                self._ended(watch)

    def _ended(self, watch: _Watch) -> None:
        try:
            if watch.proc is not None and watch.ended is not None:
                watch.ended(watch.proc.wait())  # the Popen reaps it: its status is not lost to another wait
                return
            if watch.child:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(watch.shim_pid, 0)
            self._on_exit(watch.cid)
        except Exception:
            log.exception("handling the exit of %s failed", watch.cid)


def _send(control: socket.socket, message: bytes, fds: Sequence[int]) -> None:
    if fds:
        socket.send_fds(control, [message], list(fds))
    else:
        control.send(message)


def end_leftovers(pid_file: str, timeout: float = 10) -> list[int]:
    """End every process of a container that a crash left behind, and remove
    its ``shim.pid``; the pids killed.

    The shim writes ``shim.pid`` as soon as it has a spec ("SHIM_PID
    SHIM_START 0 0 0 BOOT_ID"), adds the command and the container's mount
    namespace once it has forked it ("SHIM_PID SHIM_START CMD_PID CMD_START
    MNT_INODE BOOT_ID") and removes it when nothing of the container runs
    any more.  A file from an earlier boot names nothing.  A file still there once the
    shim is gone, or while the container is not recorded as running, means
    a crash: a daemon killed mid-start, a shim killed.  Then these are ended:
    the shim and its descendants (while it runs, every orphan of the
    container is re-parented to it), the command and its descendants, every
    process of the shim's session in the container's mount namespace (the
    command's children keep the session unless they called setsid), and,
    once one of those proves the namespace is still the container's (inode
    numbers are reused), every process in the container's mount namespace
    (which no process leaves without CAP_SYS_ADMIN).  A pid counts only with
    the start time it had, or (a session) a later one."""
    try:
        with open(pid_file) as f:
            text = f.read().split()
        fields = [int(field) for field in text[:5]]
    except (OSError, ValueError):
        return []
    killed: set[int] = set()
    if len(fields) == 5 and text[5:] == [proc.boot_id()] and fields[0] > 1:
        shim_pid, shim_start, command, mnt = fields[0], fields[1], (fields[2], fields[3]), fields[4]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            procs = proc.table()
            living = {p for p in _members(procs, shim_pid, shim_start, command, mnt) if procs[p][0] not in ("Z", "X")}
            if not living:
                break
            for pid in living:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed |= living
            time.sleep(0.005)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pid_file)
    if killed:
        log.warning("ended %d processes left by a crash: %s", len(killed), sorted(killed))
    return sorted(killed)


def _members(procs: dict[int, tuple[str, int, int, int]], shim_pid: int, shim_start: int, command: tuple[int, int], mnt: int) -> set[int]:
    """The processes of the container whose shim was (shim_pid, shim_start); see :func:`end_leftovers`."""
    found: set[int] = set()
    if procs.get(shim_pid, ("", 0, 0, 0))[3] == shim_start and _is_shim(shim_pid):
        found |= {shim_pid} | proc.descendants(shim_pid, procs)
    cmd_pid, cmd_start = command
    if cmd_pid > 1 and procs.get(cmd_pid, ("", 0, 0, 0))[3] == cmd_start:
        found |= {cmd_pid} | proc.descendants(cmd_pid, procs)
    session = {pid for pid, (_state, _ppid, sid, start) in procs.items() if sid == shim_pid and start >= shim_start}
    found |= {pid for pid in session if not mnt or _mount_ns(pid) == mnt}  # a reused pid is not the container's
    if mnt and any(_mount_ns(pid) == mnt for pid in found):
        found |= {pid for pid, (_state, _ppid, _sid, start) in procs.items() if start >= shim_start and _mount_ns(pid) == mnt}
    found.discard(os.getpid())
    return found


def _is_shim(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"qiao.runtime.shim" in f.read()
    except OSError:
        return False


def _mount_ns(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return 0
