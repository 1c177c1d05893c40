"""The container shim (``python -m qiao.runtime.shim SPEC``), qiao's conmon.

It enters the sandbox (network namespace), makes the container's own UTS
and mount namespaces (hostname; /etc/hosts, /etc/resolv.conf and
/etc/hostname bind-mounted over the host's, which stay untouched), forks
the command and stays as its parent to record the exit code in a file.
Because the shim, not the daemon, waits for the command, containers and
their exit codes outlive a daemon restart.

It reports ``ok <pid>`` or ``error <message>`` on the status pipe.  Standard library
only, so it starts in a few milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from qiao.kernel import linux


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


def main() -> int:
    spec = json.loads(sys.argv[1])
    status = os.fdopen(spec["status_fd"], "w")
    with open(spec["pid_file"], "w") as f:  # first: a daemon that dies before storing us can still find us
        f.write(str(os.getpid()))
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    try:
        _enter(spec)
    except OSError as exc:
        status.write(f"error cannot enter the container's namespaces: {exc}\n")
        return 1
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        status.close()
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
        status.write(f"error {failure}\n")
        return 127
    status.write(f"ok {pid}\n")
    status.close()
    _, wstatus = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wstatus)
    _write_exit(spec["exit_file"], 128 - code if code < 0 else code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
