"""The container shim (``python -m qiao.runtime.shim FD [TAG]``), qiao's conmon.

The daemon starts it ahead of need (see :mod:`qiao.runtime.supervisor`): it
waits on the control socket FD for one message, the container's spec with
its stdin, stdout and stderr attached (SCM_RIGHTS); an end of file instead
means the daemon went away without needing it.  TAG only names the qiao root
on the command line.  Then it enters the sandbox (network namespace), makes the container's own UTS
and mount namespaces (hostname; /etc/hosts, /etc/resolv.conf and
/etc/hostname bind-mounted over the host's, which stay untouched; qiao's
root covered by an empty read-only tmpfs), forks the command and stays as
its parent to record the exit code in a file.  The child takes the
container's user, capabilities and working directory
(:mod:`qiao.runtime.security`) just before exec.  A container with an
image (spec key ``rootfs``) gets a PID namespace instead of the mount
namespace: its command is pid 1 there, and makes its own mount namespace
and root filesystem (:mod:`qiao.runtime.rootfs`), then resolves its user
against the image's /etc/passwd, as runc does.
Because the shim, not the daemon, waits for the command, containers and
their exit codes outlive a daemon restart.

No process outlives its container: the shim is a child subreaper (orphaned
descendants of the command become its children, not PID 1's), and when the
command exits it kills every descendant left, as the end of a PID
namespace's init does in Docker.  ``shim.pid`` names the shim (pid, start
time) from the moment it gets its spec, then also the command (pid, start
time) and the container's mount namespace ("SHIM_PID SHIM_START CMD_PID
CMD_START MNT_INODE BOOT_ID", zeros until known), so a daemon can end them
all after any crash; the shim removes it when it has nothing left running.

It answers ``ok <pid>`` or ``error <message>`` on the control socket; when
that answer cannot be delivered (the daemon died during the start), nobody
will own the container, so it kills the command and leaves.
The command joins the container's cgroup (``spec["cgroup"]``, made by the
daemon) in the child, before anything else: the shim itself stays outside,
so a paused (frozen) container's exit is still noticed and recorded.
Standard library only, so it starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time

from qiao import proc
from qiao.kernel import linux
from qiao.runtime import rootfs, security

HIDE_FLAGS = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC


def _enter(spec: dict) -> bool:
    """Join or make the container's namespaces; True when it has a mount namespace of its own."""
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
        if spec.get("domainname"):
            linux.setdomainname(spec["domainname"])
    if spec.get("rootfs"):
        linux.unshare(linux.CLONE_NEWPID)  # for the child: pid 1 of its own; it makes its mount namespace itself
        return False
    mounts, hide = spec.get("mounts"), spec.get("hide") or []
    if mounts is None and not hide:
        return False
    linux.unshare(linux.CLONE_NEWNS)
    # Slave: the host's later mounts still show inside, ours never leak out.
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
    for source, target in mounts or []:  # first: the sources are under the root hidden next
        linux.mount(source, target, None, linux.MS_BIND)
    if spec.get("netns"):
        # sysfs shows the namespace that mounted it (as `ip netns exec` does).
        try:
            linux.umount("/sys")
            linux.mount("sysfs", "/sys", "sysfs", 0)
        except OSError:
            pass
    for path in hide:
        with contextlib.suppress(FileNotFoundError):  # nothing there to hide
            linux.mount("tmpfs", path, "tmpfs", HIDE_FLAGS, "mode=0555,size=4k")
    return True


class _Dir:
    """The container's directory, held open: it is hidden once we are inside the mount namespace."""

    def __init__(self, spec: dict):
        self.fd = os.open(os.path.dirname(spec["pid_file"]), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.pid_name = os.path.basename(spec["pid_file"])
        self.exit_name = os.path.basename(spec["exit_file"])

    def write(self, name: str, text: str) -> None:
        """Atomically (write, then rename); a removed directory is not an error."""
        with contextlib.suppress(OSError):
            fd = os.open(name + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=self.fd)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            os.replace(name + ".tmp", name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def done(self, code: int | None) -> None:
        """Record the exit code (if any), then forget the pid file: nothing of ours runs any more."""
        if code is not None:
            self.write(self.exit_name, str(code))
        with contextlib.suppress(OSError):
            os.unlink(self.pid_name, dir_fd=self.fd)


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


def _answer(control: socket.socket, text: str) -> bool:
    """Send the answer; False when the daemon is gone."""
    try:
        control.send(text.encode())
        return True
    except OSError:
        return False


def _child(spec: dict, ready_w: int, cgroup_fd: int | None) -> None:
    """In the forked child: become the container's process and exec the command."""
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    cmd = spec["cmd"]
    code = 126
    try:
        if cgroup_fd is not None:  # first, while we may still move ourselves: all we start is inside
            try:
                os.write(cgroup_fd, b"0")
            except OSError as exc:
                raise security.SecurityError(f"cannot join the container's cgroup: {exc.strerror}") from None
        if spec.get("rootfs"):
            _enter_rootfs(spec)
        if "caps" in spec:  # qiaod always sends it (a spec without it, as in the unit tests, keeps the shim's own)
            security.enter(
                spec.get("cwd") or "/",
                security.mask(spec["caps"]),
                int(spec.get("uid", 0)),
                int(spec.get("gid", 0)),
                [int(g) for g in spec.get("groups", [])],
                bool(spec.get("no_new_privs")),
            )
        code = 127
        os.execvpe(cmd[0], cmd, spec["env"])
    except (security.SecurityError, rootfs.RootfsError) as exc:
        message = str(exc)
    except FileNotFoundError:
        message = f'exec: "{cmd[0]}": executable file not found in $PATH'
    except OSError as exc:  # found but cannot be run (Docker's 126), or the set-up failed
        message = f'exec: "{cmd[0]}": {exc.strerror}' if code == 127 else f"cannot set up the process: {exc}"
        code = 126
    os.write(ready_w, message.encode())
    os._exit(code)


def _enter_rootfs(spec: dict) -> None:
    """An image's container: its root filesystem, then its user as the image's
    /etc/passwd and /etc/group name it (HOME from there unless set), and its
    working directory made if missing (as Docker makes it, root's, 0755)."""
    rootfs.enter(spec["rootfs"])
    who = security.resolve_user(spec.get("user") or "")
    spec.update(uid=who.uid, gid=who.gid, groups=who.groups)
    spec["env"].setdefault("HOME", who.home)
    cwd = spec.get("cwd") or "/"
    try:
        os.makedirs(cwd, 0o755, exist_ok=True)
    except OSError as exc:
        raise security.SecurityError(f'cannot make the working directory "{cwd}": {exc.strerror}') from None


def _wait(pid: int) -> int:
    """Wait for the command, reaping the orphans re-parented to us meanwhile; its wait status."""
    while True:
        try:
            child, status = os.waitpid(-1, 0)
        except ChildProcessError:  # cannot happen while the command runs; be safe
            return 0
        except InterruptedError:
            continue
        if child == pid:
            return status


def _end_descendants(deadline: float = 10) -> None:
    """Kill every process below us (the command's leftovers, re-parented to us
    as their subreaper) and reap them all."""
    me, stop = os.getpid(), time.monotonic() + deadline
    while time.monotonic() < stop:
        living = [p for p in proc.descendants(me) if not proc.exited(p)]
        if not living:
            break
        for pid in living:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap()
        time.sleep(0.002)
    _reap()


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def main() -> int:
    control = socket.socket(fileno=int(sys.argv[1]))
    control.set_inheritable(False)
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    spec = _receive(control)
    if spec is None:
        return 0
    me, boot = f"{os.getpid()} {proc.start_time(os.getpid())}", proc.boot_id()
    files = _Dir(spec)
    files.write(files.pid_name, f"{me} 0 0 0 {boot}")  # first: a daemon that dies before storing us can still find us
    linux.set_child_subreaper()
    try:
        # The cgroup's member list, opened before the mount namespace hides /sys/fs/cgroup.
        cgroup_fd = os.open(os.path.join(spec["cgroup"], "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC) if spec.get("cgroup") else None
        own_mounts = _enter(spec)
    except OSError as exc:
        _answer(control, f"error cannot enter the container's namespaces or cgroup: {exc}")
        files.done(None)
        return 1
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        control.close()
        _child(spec, ready_w, cgroup_fd)
    os.close(ready_w)
    if cgroup_fd is not None:
        os.close(cgroup_fd)
    mnt = os.stat("/proc/self/ns/mnt").st_ino if own_mounts else 0
    files.write(files.pid_name, f"{me} {pid} {proc.start_time(pid)} {mnt} {boot}")
    failure = os.read(ready_r, 4096).decode()  # empty once exec succeeded
    os.close(ready_r)
    if not failure and spec.get("rootfs"):  # the child made its own mount namespace: that one is the container's
        with contextlib.suppress(OSError):
            mnt = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            files.write(files.pid_name, f"{me} {pid} {proc.start_time(pid)} {mnt} {boot}")
    if failure:
        code = os.waitstatus_to_exitcode(_wait(pid))
        _end_descendants()
        files.done(code)
        _answer(control, f"error {failure}")
        return code
    if not _answer(control, f"ok {pid}"):  # the daemon died mid-start: nobody will own this container
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait(pid)
        _end_descendants()
        files.done(None)
        return 1
    control.close()
    code = os.waitstatus_to_exitcode(_wait(pid))
    _end_descendants()  # as Docker: when the container's main process ends, the rest ends with it
    files.done(128 - code if code < 0 else code)
    return 0


if __name__ == "__main__":
    # No interpreter finalisation (it costs milliseconds): the exit file is
    # written and closed, and the daemon notices the exit by the process's end.
    os._exit(main())
