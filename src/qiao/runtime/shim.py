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

Its streams, one of two ways:

* **passed** (``qiao run`` in the foreground): the three descriptors that
  came with the spec are the command's 0, 1 and 2 (the caller's terminal or
  pipes); the shim only waits.
* **held** (the spec has ``console``: every other start): the shim makes
  pipes or a pseudo-terminal (:mod:`qiao.runtime.console`), logs what the
  command writes (:mod:`qiao.runtime.logfile`) and serves attach
  connections, the ones that came with the spec and those accepted on the
  container's ``attach.sock``, for as long as the command runs.

``exec`` in the spec makes it an exec's shim instead (Docker's ``exec``):
it joins the network, UTS and mount namespaces of the container's process,
runs the command with held streams (no log, no socket: its connection
came with the spec), kills it if the container's process ends first, and
exits with its exit code.
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
from qiao.runtime import console, logfile, rootfs, security

HIDE_FLAGS = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
MAX_FDS = 64  # descriptors that may come with a spec: 3 passed streams, or attach connections
# An exec joins these of the container's process; the PID namespace (an image's container has its
# own; joining one's own is a no-op) takes effect for the exec's command, forked after.
EXEC_NAMESPACES = (("net", linux.CLONE_NEWNET), ("uts", linux.CLONE_NEWUTS), ("pid", linux.CLONE_NEWPID), ("mnt", linux.CLONE_NEWNS))


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

    def done(self, code: int | None, socket_name: str | None = None) -> None:
        """Record the exit code (if any), then forget the attach socket and the
        pid file: nothing of ours runs any more."""
        if code is not None:
            self.write(self.exit_name, str(code))
        for name in (socket_name, self.pid_name):
            if name:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self.fd)


def _receive(control: socket.socket) -> tuple[dict, list[int]] | None:
    """The spec and the descriptors that came with it; None at end of file."""
    message, fds, _flags, _addr = socket.recv_fds(control, 1 << 20, MAX_FDS)
    for fd in fds:  # received without close-on-exec: no command may inherit them
        os.set_inheritable(fd, False)
    if not message:
        return None
    return json.loads(message), fds


def _take_stdio(fds: list[int]) -> None:
    """Passed streams: the caller's stdin, stdout and stderr become ours (and the command's) 0, 1 and 2."""
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)


def _answer(control: socket.socket, text: str) -> bool:
    """Send the answer; False when the daemon is gone."""
    try:
        control.send(text.encode())
        return True
    except OSError:
        return False


def _child(spec: dict, ready_w: int, cgroup_fd: int | None = None, held: console.Console | None = None) -> None:
    """In the forked child: become the container's process and exec the command
    (on the held streams' ends, a terminal as its controlling one)."""
    # Ignored by the shim, or by any Python (SIGPIPE, SIGXFSZ): ignored dispositions survive exec.
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    cmd = spec["cmd"]
    code = 126
    try:
        if cgroup_fd is not None:  # first, while we may still move ourselves: all we start is inside
            try:
                os.write(cgroup_fd, b"0")
            except OSError as exc:
                raise security.SecurityError(f"cannot join the container's cgroup: {exc.strerror}") from None
        if held is not None:
            for target, fd in enumerate(held.child_fds):
                os.dup2(fd, target)
            if held.tty:
                console.take_terminal(0)
        if spec.get("rootfs"):
            _enter_rootfs(spec)
        elif "user" in spec and "uid" not in spec:  # an exec in an image's container: already in its mount namespace
            _take_user(spec)
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
    _take_user(spec)
    cwd = spec.get("cwd") or "/"
    try:
        os.makedirs(cwd, 0o755, exist_ok=True)
    except OSError as exc:
        raise security.SecurityError(f'cannot make the working directory "{cwd}": {exc.strerror}') from None


def _take_user(spec: dict) -> None:
    """``spec["user"]`` as the /etc/passwd and /etc/group we see now name it (the image's); HOME from there unless set."""
    who = security.resolve_user(spec.get("user") or "")
    spec.update(uid=who.uid, gid=who.gid, groups=who.groups)
    spec["env"].setdefault("HOME", who.home)


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
    received = _receive(control)
    if received is None:
        return 0
    spec, fds = received
    if "exec" in spec:
        return _exec(control, spec, fds)
    me, boot = f"{os.getpid()} {proc.start_time(os.getpid())}", proc.boot_id()
    files = _Dir(spec)
    files.write(files.pid_name, f"{me} 0 0 0 {boot}")  # first: a daemon that dies before storing us can still find us
    linux.set_child_subreaper()
    streams = spec.get("console")
    listener, log = None, None
    try:
        # The cgroup's member list, opened before the mount namespace hides /sys/fs/cgroup.
        cgroup_fd = os.open(os.path.join(spec["cgroup"], "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC) if spec.get("cgroup") else None
        if streams is None:
            _take_stdio(fds)
        else:  # the socket and the log before entering: the container's directory is hidden inside
            listener = console.bind_listener(files.fd, streams["socket"])
            log_fd = os.open(streams["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600, dir_fd=files.fd)
            log = logfile.Writer(log_fd)
        own_mounts = _enter(spec)
        held = None if streams is None else console.Console(streams["tty"], streams["stdin"], _size(streams))
    except OSError as exc:
        _answer(control, f"error cannot enter the container's namespaces or cgroup: {exc}")
        files.done(None)
        return 1
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        control.close()
        _child(spec, ready_w, cgroup_fd, held)
    os.close(ready_w)
    if cgroup_fd is not None:
        os.close(cgroup_fd)
    if held is not None:
        held.after_fork()
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
        files.done(code, streams and streams["socket"])
        _answer(control, f"error {failure}")
        return code
    if not _answer(control, f"ok {pid}"):  # the daemon died mid-start: nobody will own this container
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait(pid)
        _end_descendants()
        files.done(None, streams and streams["socket"])
        return 1
    control.close()
    if held is not None:
        status = held.serve(pid, listener, [socket.socket(fileno=fd) for fd in fds], log, end_rest=_end_descendants)
    else:
        status = _wait(pid)
        _end_descendants()  # as Docker: when the container's main process ends, the rest ends with it
    files.done(console.exit_code(status), streams and streams["socket"])
    return 0


def _size(streams: dict) -> tuple[int, int] | None:
    size = streams.get("size") or []
    return (int(size[0]), int(size[1])) if len(size) == 2 else None


def _exec(control: socket.socket, spec: dict, fds: list[int]) -> int:
    """An exec's shim: join the container's process, run the command, exit with its code."""
    target, start = int(spec["exec"]["pid"]), int(spec["exec"]["start"])
    linux.set_child_subreaper()
    try:
        container_fd = os.pidfd_open(target)
        namespaces = [os.open(f"/proc/{target}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind, _flag in EXEC_NAMESPACES]
    except OSError:
        _answer(control, "error the container is not running")
        return 126
    try:
        if proc.start_time(target) != start:  # the pid names another process now
            _answer(control, "error the container is not running")
            return 126
        # After joining an image's container, /proc is the container's (its PID namespace): its pids
        # are not ours to kill. Our command's orphans go to the container's own PID 1 there anyway.
        own_pids = os.stat(f"/proc/{target}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
        end_rest = None if own_pids else _end_descendants
        for fd, (_kind, flag) in zip(namespaces, EXEC_NAMESPACES, strict=True):
            linux.setns(fd, flag)
        streams = spec["console"]
        held = console.Console(streams["tty"], streams["stdin"], _size(streams))
    except OSError as exc:
        _answer(control, f"error cannot enter the container's namespaces: {exc}")
        return 126
    finally:
        for fd in namespaces:
            os.close(fd)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        control.close()
        os.close(container_fd)
        _child(spec, ready_w, held=held)
    os.close(ready_w)
    held.after_fork()
    failure = os.read(ready_r, 4096).decode()
    os.close(ready_r)
    if failure:
        code = os.waitstatus_to_exitcode(_wait(pid))
        _answer(control, f"error {failure}")
        return code
    if not _answer(control, f"ok {pid}"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait(pid)
        if end_rest is not None:
            end_rest()
        return 1
    control.close()
    status = held.serve(pid, None, [socket.socket(fileno=fd) for fd in fds], None, container_fd, end_rest)
    return console.exit_code(status)


if __name__ == "__main__":
    # No interpreter finalisation (it costs milliseconds): the exit file is
    # written and closed, and the daemon notices the exit by the process's end.
    os._exit(main())
