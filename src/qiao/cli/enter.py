"""``qiao exec``'s way into a container: never more than the container has.

The CLI process itself enters the container's network, UTS and mount
namespaces (so qiao's root is hidden from it too), takes the user
(``-u``, else the container's ``Config.User``), the working directory
(``-w``, else ``Config.WorkingDir``), the container process's bounding set
as its capabilities (none effective for a user other than root) and its
``no_new_privs``, then execs the command: no helper process, no ``nsenter``.
The user is resolved against the container's /etc/passwd: the host's for
a container without an image, the image's (once inside) for one with.  A container with an image
also has its own PID namespace; joining it takes effect for children only,
so there the CLI forks the command and waits for it (as ``nsenter`` does).
Standard library only (ctypes); imported only by ``exec``.
"""

from __future__ import annotations

import os
import signal
import sys

from qiao.kernel import linux
from qiao.proc import start_time
from qiao.runtime import security

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NAMESPACES = (("net", linux.CLONE_NEWNET), ("uts", linux.CLONE_NEWUTS), ("mnt", linux.CLONE_NEWNS))


def _fail(message: str) -> int:
    print(f"qiao: {message}", file=sys.stderr)
    return 126  # Docker's code for an exec that could not be set up


def enter_container(
    pid: str, info: dict[str, Any], user: str | None, workdir: str | None, cmd: list[str], env: dict[str, str], extra_env: dict[str, str]
) -> int:
    """Exec ``cmd`` inside the container whose process is ``pid``; returns only
    on failure, or (a container with its own PID namespace) with the command's exit status."""
    config = info.get("Config") or {}
    who = None
    if not info.get("Image"):  # the host's filesystem: its /etc/passwd is ours (checked before entering anything)
        try:
            who = security.resolve_user(config.get("User") or "" if user is None else user)
        except security.SecurityError as exc:
            return _fail(str(exc))
    started = start_time(int(pid))
    kinds = list(NAMESPACES)
    fds: list[int] = []
    try:
        status = security.process_status(pid)
        if os.stat(f"/proc/{pid}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino:
            kinds.append(("pid", linux.CLONE_NEWPID))  # a container with an image: its processes' namespace
        fds = [os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind, _flag in kinds]
    except OSError:
        for fd in fds:
            os.close(fd)
        return _fail(f"container {info['Id'][:12]} is not running")
    try:
        if not started or start_time(int(pid)) != started:  # the pid now names another process
            return _fail(f"container {info['Id'][:12]} is not running")
        for fd, (_kind, flag) in zip(fds, kinds, strict=True):
            linux.setns(fd, flag)
    except OSError as exc:
        return _fail(f"cannot enter the container's namespaces: {exc}")
    finally:
        for fd in fds:
            os.close(fd)
    if who is None:  # an image's container: its /etc/passwd, now that its files are ours, as runc reads it
        try:
            who = security.resolve_user(config.get("User") or "" if user is None else user)
        except security.SecurityError as exc:
            return _fail(str(exc))
    if user is not None:  # another user than the container's: its home, as runc sets it
        env["HOME"] = who.home
    env.update(extra_env)
    cwd = workdir if workdir is not None else config.get("WorkingDir") or "/"
    caps, no_new_privs = int(status.get("CapBnd", "0"), 16), status.get("NoNewPrivs") == "1"
    if len(kinds) == len(NAMESPACES):
        return _become(cwd, caps, who, no_new_privs, cmd, env)
    # setns into a PID namespace takes effect for children only: the command is one, and we wait for it.
    child = os.fork()
    if child == 0:
        os._exit(_become(cwd, caps, who, no_new_privs, cmd, env))
    return _wait(child)


def _become(cwd: str, caps: int, who: security.User, no_new_privs: bool, cmd: list[str], env: dict[str, str]) -> int:
    """Take the container's user, capabilities and working directory, then exec; returns only on failure."""
    try:
        security.enter(cwd, caps, who.uid, who.gid, who.groups, no_new_privs)
    except security.SecurityError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot set up the process: {exc}")
    try:
        os.execvpe(cmd[0], cmd, env)
    except FileNotFoundError:
        print(f'qiao: exec: "{cmd[0]}": executable file not found in $PATH', file=sys.stderr)
        return 127
    except OSError as exc:
        return _fail(f'exec: "{cmd[0]}": {exc.strerror}')


def _wait(child: int) -> int:
    """The command's exit status (128 + N when killed by signal N). A terminal's
    Ctrl-C and Ctrl-\\ reach it directly (same process group); SIGTERM and SIGHUP
    sent to us are passed on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: os.kill(child, signum))
    while True:
        try:
            _pid, status = os.waitpid(child, 0)
        except InterruptedError:
            continue
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code
