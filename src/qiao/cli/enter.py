"""``qiao exec``'s way into a container: never more than the container has.

The CLI process itself enters the container's network, UTS and mount
namespaces (so qiao's root is hidden from it too), takes the user
(``-u``, else the container's ``Config.User``), the working directory
(``-w``, else ``Config.WorkingDir``), the container process's bounding set
as its capabilities (none effective for a user other than root) and its
``no_new_privs``, then execs the command: no helper process, no ``nsenter``.
Standard library only (ctypes); imported only by ``exec``.
"""

from __future__ import annotations

import os
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
    """Exec ``cmd`` inside the container whose process is ``pid``; returns only on failure."""
    config = info.get("Config") or {}
    try:
        who = security.resolve_user(config.get("User") or "" if user is None else user)
    except security.SecurityError as exc:
        return _fail(str(exc))
    if user is not None:  # another user than the container's: its home, as runc sets it
        env["HOME"] = who.home
    env.update(extra_env)
    started = start_time(int(pid))
    try:
        status = security.process_status(pid)
        fds = [os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind, _flag in NAMESPACES]
    except OSError:
        return _fail(f"container {info['Id'][:12]} is not running")
    try:
        if not started or start_time(int(pid)) != started:  # the pid now names another process
            return _fail(f"container {info['Id'][:12]} is not running")
        for fd, (_kind, flag) in zip(fds, NAMESPACES, strict=True):
            linux.setns(fd, flag)
    except OSError as exc:
        return _fail(f"cannot enter the container's namespaces: {exc}")
    finally:
        for fd in fds:
            os.close(fd)
    cwd = workdir if workdir is not None else config.get("WorkingDir") or "/"
    try:
        security.enter(cwd, int(status.get("CapBnd", "0"), 16), who.uid, who.gid, who.groups, status.get("NoNewPrivs") == "1")
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
