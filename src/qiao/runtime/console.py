"""A container's (or an exec's) standard streams, held by its shim, as
conmon holds them: pipes, or a pseudo-terminal when it has a TTY.

The shim reads what the process writes for as long as it runs, whoever
listens: each chunk goes to the log (:mod:`qiao.runtime.logfile`, with its
stream and time) and to every attached connection, so the process never
blocks on its output and no daemon needs to be up.  Connections are qiaod's,
one per Docker client attached (``attach``, ``exec start``): accepted on
the container's attach socket, or handed over already connected with the
spec (the clients that attached before the start, and an exec's client),
and they speak :mod:`qiao.runtime.frames`: output frames out, stdin,
"close stdin" and resize frames in, and a last EXIT frame with the exit
code.  A connection that falls more than ``OUT_LIMIT`` behind is dropped
rather than slowing the process; input waits (connections are not read)
while more than ``IN_LIMIT`` bytes are queued for a process that does not
read its stdin.

Standard library only: the shim imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import termios
import time

from qiao.runtime import frames

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from qiao.runtime.logfile import Writer

OUT_LIMIT = 4 << 20  # bytes queued for one connection before it is dropped
IN_LIMIT = 1 << 20  # bytes queued for the process's stdin before connections are no longer read
READ_SIZE = 1 << 16
DRAIN = 2.0  # seconds, after the process and its leftovers are gone, for the output they left in the pipes
FLUSH = 2.0  # seconds for the connections to take the last output and the EXIT frame

_IN = select.POLLIN | select.POLLPRI
_BROKEN = select.POLLHUP | select.POLLERR | select.POLLNVAL


def set_size(fd: int, rows: int, columns: int) -> None:
    """A terminal's window size (the kernel tells its foreground process group with SIGWINCH)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def take_terminal(fd: int) -> None:
    """In the child, before exec: a session of its own whose controlling
    terminal is ``fd`` (so Ctrl-C on it is a SIGINT, as under runc's console)."""
    os.setsid()
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


def exit_code(status: int) -> int:
    """Docker's exit code of a wait status: the code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class _Conn:
    __slots__ = ("sock", "fd", "out", "decoder")

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.sock, self.fd, self.out, self.decoder = sock, sock.fileno(), bytearray(), frames.Decoder()


class Console:
    """The streams of one process: made before the fork (``child_fds`` are
    its 0, 1 and 2), then served by :meth:`serve` until it has exited and
    its output is read."""

    def __init__(self, tty: bool, stdin: bool, size: tuple[int, int] | None = None):
        self.tty = tty
        self.outputs: dict[int, int] = {}  # our end -> stream
        self.stdin_fd: int | None = None  # where input goes (a pipe, or the terminal's master)
        self.pending = bytearray()  # input not yet written
        self.close_stdin = False  # asked for; done once ``pending`` is written
        self.master: int | None = None  # a terminal's
        if tty:
            master, slave = os.openpty()
            self.master = master
            if size and all(size):
                set_size(master, *size)
            self.child_fds = (slave, slave, slave)
            self.outputs[master] = frames.STDOUT
            self.stdin_fd = master if stdin else None
        else:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            if stdin:
                in_r, self.stdin_fd = os.pipe2(os.O_CLOEXEC)
            else:
                in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            self.child_fds = (in_r, out_w, err_w)
            self.outputs = {out_r: frames.STDOUT, err_r: frames.STDERR}
        for fd in [*self.outputs, *([self.stdin_fd] if self.stdin_fd is not None else [])]:
            os.set_blocking(fd, False)
        # A child's exit wakes the loop: SIGCHLD writes to this pipe (set before the fork).
        self._wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self.conns: dict[int, _Conn] = {}

    def after_fork(self) -> None:
        """In the parent: only the child holds its ends (so their end is seen)."""
        for fd in set(self.child_fds):
            os.close(fd)

    def serve(
        self,
        pid: int,
        listener: socket.socket | None,
        conns: list[socket.socket],
        log: Writer | None,
        container_fd: int = -1,
        end_rest: Callable[[], None] | None = None,
    ) -> int:
        """Copy streams until ``pid`` has exited (reaping the orphans
        re-parented to us meanwhile), ``end_rest`` has ended its leftovers and
        the output they left is read; then tell the connections the exit code
        and return ``pid``'s wait status.  ``container_fd`` (an exec's): a
        pidfd of the container's process, whose end kills ``pid``."""
        self.log = log
        for sock in conns:
            self._add(sock)
        status: int | None = None
        deadline = 0.0
        poller = select.poll()
        registered: dict[int, int] = {}
        while True:
            if status is None:
                status = self._reap(pid)
                if status is not None:
                    if end_rest is not None:
                        end_rest()
                    if listener is not None:
                        listener.close()
                        listener = None
                    deadline = time.monotonic() + DRAIN
            if status is not None and (not self.outputs or time.monotonic() >= deadline):
                break
            want = dict.fromkeys(self.outputs, _IN)
            if self.stdin_fd is not None and self.pending:
                want[self.stdin_fd] = want.get(self.stdin_fd, 0) | select.POLLOUT
            for conn in self.conns.values():
                want[conn.fd] = (_IN if len(self.pending) < IN_LIMIT else 0) | (select.POLLOUT if conn.out else 0)
            want[self._wake_r] = _IN
            if listener is not None:
                want[listener.fileno()] = _IN
            if container_fd >= 0:
                want[container_fd] = _IN
            for fd in [fd for fd in registered if fd not in want]:
                poller.unregister(fd)
                del registered[fd]
            for fd, mask in want.items():
                if registered.get(fd) != mask:
                    poller.register(fd, mask)
                    registered[fd] = mask
            timeout = None if status is None else max(0, int((deadline - time.monotonic()) * 1000))
            for fd, events in poller.poll(timeout):
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(fd, 4096)
                elif listener is not None and fd == listener.fileno():
                    self._accept(listener)
                elif fd == container_fd:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)  # as a PID namespace's end would: an exec dies with its container
                    container_fd = -1
                else:
                    if fd in self.outputs and events & (_IN | _BROKEN):
                        self._read_output(fd)
                    if fd == self.stdin_fd and events & (select.POLLOUT | select.POLLERR):
                        self._write_input()
                    attached = self.conns.get(fd)
                    if attached is not None:
                        self._serve_conn(attached, events)
        self._finish(exit_code(status))
        return status

    # -- the process's side --

    @staticmethod
    def _reap(pid: int) -> int | None:
        """Reap every child that has ended; ``pid``'s wait status once it has."""
        found = None
        while True:
            try:
                child, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return found
            if child == 0:
                return found
            if child == pid:
                found = status

    def _read_output(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:  # EIO: a terminal whose every slave is closed
            data = b""
        if not data:
            del self.outputs[fd]
            os.close(fd)
            if fd == self.stdin_fd:  # a terminal's master: no more input either
                self.stdin_fd = None
                self.pending.clear()
            return
        stream = self.outputs[fd]
        if self.log is not None:
            self.log.write(stream, data)
        self._broadcast(frames.frame(stream, data))

    def _write_input(self) -> None:
        assert self.stdin_fd is not None
        try:
            written = os.write(self.stdin_fd, self.pending[:READ_SIZE])
        except BlockingIOError:
            return
        except OSError:  # the process closed its stdin, or a terminal is gone: input is dropped
            self.pending.clear()
            self._close_input()
            return
        del self.pending[:written]
        if not self.pending and self.close_stdin:
            self._close_input()

    def _close_input(self) -> None:
        fd, self.stdin_fd = self.stdin_fd, None
        if fd is not None and fd not in self.outputs:  # a terminal's master stays open for its output
            os.close(fd)

    # -- the connections' side --

    def _accept(self, listener: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            sock, _addr = listener.accept()
            self._add(sock)

    def _add(self, sock: socket.socket) -> None:
        conn = _Conn(sock)
        self.conns[conn.fd] = conn

    def _drop(self, conn: _Conn) -> None:
        self.conns.pop(conn.fd, None)
        conn.sock.close()

    def _broadcast(self, data: bytes) -> None:
        for conn in list(self.conns.values()):
            conn.out += data
            if len(conn.out) > OUT_LIMIT:
                self._drop(conn)  # it does not keep up: the process must not wait for it
            else:
                self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        del conn.out[:sent]

    def _serve_conn(self, conn: _Conn, events: int) -> None:
        if events & select.POLLOUT:
            self._flush(conn)
        if conn.fd not in self.conns or not events & (_IN | _BROKEN):
            return
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the daemon left (its client detached): nothing else changes
            self._drop(conn)
            return
        try:
            received = conn.decoder.feed(data)
        except frames.BadFrame:
            self._drop(conn)
            return
        for kind, payload in received:
            if kind == frames.STDIN and self.stdin_fd is not None and not self.close_stdin:
                self.pending += payload
            elif kind == frames.CLOSE_STDIN and not self.tty:
                self.close_stdin = True
                if not self.pending:
                    self._close_input()
            elif kind == frames.RESIZE and self.master is not None and self.master in self.outputs:
                with contextlib.suppress(OSError):
                    set_size(self.master, *frames.size_of(payload))

    def _finish(self, code: int) -> None:
        """The EXIT frame to every connection, a last chance to send, then close."""
        for fd in {*self.outputs, *([self.stdin_fd] if self.stdin_fd is not None else [])}:
            os.close(fd)
        self.outputs.clear()
        self.stdin_fd = None
        self._broadcast(frames.frame(frames.EXIT, str(code).encode()))
        deadline = time.monotonic() + FLUSH
        while any(c.out for c in self.conns.values()) and time.monotonic() < deadline:
            waiting = [c for c in self.conns.values() if c.out]
            poller = select.poll()
            for conn in waiting:
                poller.register(conn.fd, select.POLLOUT)
            for fd, _events in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                if fd in self.conns:
                    self._flush(self.conns[fd])
        for conn in list(self.conns.values()):
            self._drop(conn)


def bind_listener(directory_fd: int, name: str) -> socket.socket:
    """A listening socket at ``name`` in the directory ``directory_fd`` (through
    /proc/self/fd, as conmon does: the full path may be longer than a socket
    address holds)."""
    path = f"/proc/self/fd/{directory_fd}/{name}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=directory_fd)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(name, 0o600, dir_fd=directory_fd)
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def connect(directory: str, name: str, timeout: float | None = None) -> socket.socket:
    """A connection to the socket ``name`` in ``directory`` (any path length)."""
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(f"/proc/self/fd/{fd}/{name}")
        except OSError:
            sock.close()
            raise
        return sock
    finally:
        os.close(fd)
