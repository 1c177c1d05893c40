"""The container shim (``python -m qiao.runtime.shim FD [TAG]``), qiao's conmon.

The daemon starts it ahead of need (see :mod:`qiao.runtime.supervisor`): it
waits on the control socket FD for one message, the container's spec with
its stdin, stdout and stderr attached (SCM_RIGHTS); an end of file instead
means the daemon went away without needing it.  TAG only names the qiao root
on the command line.  Then it enters the sandbox (network namespace), makes the container's own UTS
and mount namespaces (hostname; /etc/hosts, /etc/resolv.conf and
/etc/hostname bind-mounted over the host's, which stay untouched), forks
the command and stays as its parent to record the exit code in a file.
Because the shim, not the daemon, waits for the command, containers and
their exit codes outlive a daemon restart.

It answers ``ok <pid>`` or ``error <message>`` on the control socket.
Standard library only, so it starts in a few milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

from qiao.kernel import linux
from qiao.proc import start_time


def _enter(spec: dict) -> None:
    if spec.get("netns"):
        fd = os.open(spec["netns"], os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.setns(fd, linux.CLONE_NEWNET)
        finally:
            os.close(fd)
    if spec.get("join_uts_pid"):
        fd = os.open(f"/proc/{spec['join_uts_pid']}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.setns(fd, linux.CLONE_NEWUTS)
        finally:
            os.close(fd)
    elif spec.get("hostname"):
        linux.unshare(linux.CLONE_NEWUTS)
        linux.sethostname(spec["hostname"])
    mounts = spec.get("mounts")
    if mounts is not None:
        linux.unshare(linux.CLONE_NEWNS)
        # Slave: the host's later mounts still show inside, ours never leak out.
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
        for source, target in mounts:
            linux.mount(source, target, None, linux.MS_BIND)
        if spec.get("netns"):
            # sysfs shows the namespace that mounted it (as `ip netns exec` does).
            try:
                linux.umount("/sys")
                linux.mount("sysfs", "/sys", "sysfs", 0)
            except OSError:
                pass


def _write_exit(path: str, code: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(code))
    os.replace(tmp, path)


def _receive(control: socket.socket) -> dict | None:
    """The spec, with the container's stdio put on fds 0, 1 and 2; None at end of file."""
    message, fds, _flags, _addr = socket.recv_fds(control, 1 << 20, 3)
    if not message:
        return None
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        if fd > 2:
            os.close(fd)
    return json.loads(message)


def main() -> int:
    control = socket.socket(fileno=int(sys.argv[1]))
    control.set_inheritable(False)
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    spec = _receive(control)
    if spec is None:
        return 0
    with open(spec["pid_file"], "w") as f:  # first: a daemon that dies before storing us can still find us
        f.write(f"{os.getpid()} {start_time(os.getpid())}")
    try:
        _enter(spec)
    except OSError as exc:
        control.send(f"error cannot enter the container's namespaces: {exc}".encode())
        return 1
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        control.close()
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        cmd = spec["cmd"]
        try:
            os.execvpe(cmd[0], cmd, spec["env"])
        except FileNotFoundError:
            os.write(ready_w, f'exec: "{cmd[0]}": executable file not found in $PATH'.encode())
        except OSError as exc:
            os.write(ready_w, f'exec: "{cmd[0]}": {exc.strerror}'.encode())
        os._exit(127)
    os.close(ready_w)
    failure = os.read(ready_r, 4096).decode()  # empty once exec succeeded
    os.close(ready_r)
    if failure:
        os.waitpid(pid, 0)
        _write_exit(spec["exit_file"], 127)
        control.send(f"error {failure}".encode())
        return 127
    control.send(f"ok {pid}".encode())
    control.close()
    _, wstatus = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wstatus)
    _write_exit(spec["exit_file"], 128 - code if code < 0 else code)
    return 0


if __name__ == "__main__":
    # No interpreter finalisation (it costs milliseconds): the exit file is
    # written and closed, and the daemon notices the exit by the process's end.
    os._exit(main())
