"""Docker's attach on qiaod's side: a client's hijacked connection relayed
to a container's (or an exec's) shim.

The shim holds the process's streams (:mod:`qiao.runtime.console`) and
speaks :mod:`qiao.runtime.frames` on its attach socket; here each Docker
client gets its own connection to it, and :func:`relay` translates:

* output: a TTY's bytes as they are; otherwise Docker's multiplexed frames
  (stdout 1, stderr 2), each stream only if the client asked for it;
* input (when the client attached stdin and the process keeps it open):
  with a TTY, scanned for the detach keys (default Ctrl-P Ctrl-Q), which
  end the attach and are not passed on; the client's end of input either
  closes the process's stdin (Docker's ``StdinOnce`` without a TTY, and
  every exec) or ends the attach;
* the end: the process's exit (the shim's EXIT frame, after all output),
  the detach keys, or the client leaving; only the first ends anything but
  this one attach.

Clients that attach to a container that is not running wait for its next
start (:class:`Waiting`): ``docker run`` and ``start -a`` attach first, then
start, and the shim gets their connections with its spec so that they miss
no output.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from qiao.engine.errors import InvalidParameter
from qiao.runtime import frames

SOCKET = "attach.sock"  # in the container's directory (DATA/containers/<id>/), the shim's
DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p, ctrl-q
CLIENT_BACKLOG = 4 << 20  # bytes held for a side that does not take them; past it the other side is not read
_IN = select.POLLIN | select.POLLPRI
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL

T = TypeVar("T")

_CONTROL_KEYS = {f"ctrl-{chr(c)}": c - 96 for c in range(ord("a"), ord("z") + 1)} | {
    "ctrl-@": 0,
    "ctrl-[": 27,
    "ctrl-\\": 28,
    "ctrl-]": 29,
    "ctrl-^": 30,
    "ctrl-_": 31,
}


def detach_keys(text: str) -> bytes:
    """Docker's ``--detach-keys`` (``ctrl-p,ctrl-q``; a key is ``ctrl-X`` or one
    character), as bytes; the default for an empty text."""
    if not text:
        return DEFAULT_DETACH_KEYS
    keys = bytearray()
    for key in text.split(","):
        if len(key) == 1 and key.isascii():
            keys.append(ord(key))
        elif key.lower() in _CONTROL_KEYS:
            keys.append(_CONTROL_KEYS[key.lower()])
        else:
            raise InvalidParameter(f"Invalid detach keys ({text}) provided")
    return bytes(keys)


class EscapeScanner:
    """Finds the detach keys in a TTY's input (moby term's escape proxy): bytes
    that may begin the sequence are held back until it is clear whether they do."""

    def __init__(self, keys: bytes):
        self.keys = keys
        self.held = 0  # how many of ``keys`` the input ended with so far

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes to pass on, and whether the sequence is complete (the rest of ``data`` is dropped)."""
        if not self.held and self.keys[0] not in data:
            return data, False
        out = bytearray()
        for byte in data:
            if byte == self.keys[self.held]:
                self.held += 1
                if self.held == len(self.keys):
                    return bytes(out), True
                continue
            if self.held:
                out += self.keys[: self.held]
                self.held = 1 if byte == self.keys[0] else 0
                if self.held:
                    continue
            out.append(byte)
        return bytes(out), False


@dataclass(frozen=True)
class Options:
    """One client's attach: what it gets and sends, and how its input ends."""

    tty: bool
    stdin: bool  # its input goes to the process (it asked, and the process keeps stdin open)
    stdout: bool
    stderr: bool
    close_stdin: bool  # its end of input closes the process's stdin (else it ends the attach)
    keys: bytes = DEFAULT_DETACH_KEYS


class Inbox:
    """Frames other threads send to a shim through a running relay (an exec's
    resize), which alone writes to its connection: frames are never interleaved."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: list[bytes] = []
        self.fd, self._wake = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def put(self, frame: bytes) -> None:
        with self._lock:
            if self._wake < 0:
                return  # the relay has ended
            self._frames.append(frame)
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake, b"x")

    def take(self) -> bytes:
        with contextlib.suppress(OSError):
            os.read(self.fd, 4096)
        with self._lock:
            taken, self._frames = b"".join(self._frames), []
        return taken

    def close(self) -> None:
        with self._lock:
            os.close(self.fd)
            os.close(self._wake)
            self.fd = self._wake = -1


def relay(
    client: socket.socket, channel: socket.socket, opts: Options, exited: Callable[[int], None] | None = None, inbox: Inbox | None = None
) -> str:
    """Copy between a Docker client and a shim until the attach ends; why it
    ended: ``exit`` (the process ended and its output is delivered),
    ``detach`` (the keys), ``client`` (the client left, or its input ended),
    ``shim`` (the shim dropped us).  ``exited`` gets the exit code first;
    ``inbox`` holds frames for the shim from other threads."""
    client.setblocking(False)
    channel.setblocking(False)
    to_client, to_shim = bytearray(), bytearray()
    decoder = frames.Decoder()
    scanner = EscapeScanner(opts.keys) if opts.tty and opts.stdin and opts.keys else None
    reading_client, shim_open, ended = True, True, "shim"
    poller = select.poll()
    cfd, sfd = client.fileno(), channel.fileno()
    if inbox is not None:
        poller.register(inbox.fd, _IN)
    try:
        while shim_open or to_client:
            taking = reading_client and len(to_shim) < CLIENT_BACKLOG  # input waits while the shim does not take it
            poller.register(cfd, (_IN if taking else 0) | (select.POLLOUT if to_client else 0))
            shim_mask = (_IN if shim_open and len(to_client) < CLIENT_BACKLOG else 0) | (select.POLLOUT if to_shim and shim_open else 0)
            if shim_open:
                poller.register(sfd, shim_mask)
            for fd, events in poller.poll():
                if inbox is not None and fd == inbox.fd:
                    to_shim += inbox.take()
                elif fd == cfd:
                    if events & select.POLLOUT:
                        del to_client[: client.send(to_client)]
                    if taking and events & (_IN | _GONE):
                        data = client.recv(65536)
                        if not data:
                            reading_client = False
                            if opts.stdin and (not opts.close_stdin or opts.tty):
                                return "client"  # moby: without StdinOnce, the end of input ends the attach
                            if opts.stdin:
                                to_shim += frames.frame(frames.CLOSE_STDIN)
                        elif opts.stdin:
                            detached = False
                            if scanner is not None:
                                data, detached = scanner.feed(data)
                            if data:
                                to_shim += frames.frame(frames.STDIN, data)
                            if detached:
                                _send_now(channel, to_shim)
                                return "detach"
                    elif events & _GONE:  # not reading it (its input ended, or waits): gone for good
                        return "client"
                elif fd == sfd:
                    if events & select.POLLOUT:
                        del to_shim[: channel.send(to_shim)]
                    if events & (_IN | _GONE):
                        data = channel.recv(65536)
                        if not data:
                            shim_open = False
                            poller.unregister(sfd)
                            continue
                        for kind, payload in decoder.feed(data):
                            if kind == frames.EXIT:
                                ended = "exit"
                                if exited is not None:
                                    exited(int(payload or b"0"))
                            elif (kind == frames.STDOUT and opts.stdout) or (kind == frames.STDERR and opts.stderr):
                                to_client += payload if opts.tty else frames.frame(kind, payload)
        return ended
    except (BlockingIOError, InterruptedError):  # poll said ready: cannot happen; treat as gone
        return "client"
    except OSError:  # the client reset its connection, or the shim's went away
        return "client"
    except frames.BadFrame:
        return "shim"
    finally:
        channel.close()
        if inbox is not None:
            inbox.close()
        with contextlib.suppress(OSError):
            client.setblocking(True)


def _send_now(channel: socket.socket, data: bytearray) -> None:
    """What is queued for the shim, before we leave (input typed just before the detach keys)."""
    with contextlib.suppress(OSError):
        channel.setblocking(True)
        channel.settimeout(1)
        channel.sendall(data)


def client_gone(sock: socket.socket) -> bool:
    """Whether a client closed its connection, not just its sending side (the
    CLI shuts that at once when it sends no input, and still reads)."""
    poller = select.poll()
    poller.register(sock.fileno(), 0)
    return any(events & _GONE for _fd, events in poller.poll(0))


class Pending:
    """A client waiting for its container's start: the start hands it its connection to the shim."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._channel: socket.socket | None = None
        self._abandoned = False

    def give(self, channel: socket.socket) -> None:
        with self._lock:
            if self._abandoned:
                channel.close()
                return
            self._channel = channel
        self._ready.set()

    def wait(self, timeout: float) -> socket.socket | None:
        self._ready.wait(timeout)
        return self._channel

    def abandon(self) -> socket.socket | None:
        """The client left: no channel wanted any more (one given meanwhile is returned, to close)."""
        with self._lock:
            self._abandoned = True
            channel, self._channel = self._channel, None
        return channel


class Waiting:
    """The clients attached to containers that are not running, by container id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_cid: dict[str, list[Pending]] = {}

    def add(self, cid: str) -> Pending:
        pending = Pending()
        with self._lock:
            self._by_cid.setdefault(cid, []).append(pending)
        return pending

    def discard(self, cid: str, pending: Pending) -> None:
        with self._lock:
            waiting = self._by_cid.get(cid, [])
            if pending in waiting:
                waiting.remove(pending)
            if not waiting:
                self._by_cid.pop(cid, None)

    def start(self, cid: str, spawn: Callable[[list[int]], T]) -> T:
        """Run ``spawn`` with one end of a new connection per waiting client
        (the shim's), then give each client the other end; if it fails, they
        go on waiting."""
        with self._lock:
            waiting = self._by_cid.pop(cid, [])
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in waiting]
        try:
            result = spawn([theirs.fileno() for _ours, theirs in pairs])
        except BaseException:
            for ours, theirs in pairs:
                ours.close()
                theirs.close()
            with self._lock:
                self._by_cid.setdefault(cid, [])[:0] = waiting
            raise
        for (ours, theirs), pending in zip(pairs, waiting, strict=True):
            theirs.close()
            pending.give(ours)
        return result
