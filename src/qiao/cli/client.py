"""A minimal HTTP/1.0 client over qiaod's unix socket.

Hand-written on purpose: ``http.client`` pulls in the ``email`` package and
costs more start-up time than the rest of the CLI together.  For the same
reason it uses ``_socket``, the C module under ``socket`` (whose Python layer
imports ``selectors`` and builds enums: ~2.5 ms of every command).
"""

from __future__ import annotations

import _socket
import fcntl
import json
import os
import stat
import sys
import time

from qiao.paths import Root

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up time)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-~")


def quote(text: str) -> str:
    """Percent-encoding for query values and path segments: everything but
    RFC 3986's unreserved characters, so a name with ``/``, ``?``, ``%``, ``#``
    or a space stays one segment (``urllib.parse`` costs ~2 ms to import)."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


class DaemonError(Exception):
    """The daemon answered with an error status."""

    def __init__(self, status: int, message: str, body: dict[str, Any]):
        super().__init__(message)
        self.status = status
        self.body = body


class Unreachable(Exception):
    """No answer from qiaod: nothing listens, or the connection ended before a complete answer."""


class BadAnswer(Exception):
    """qiaod answered something that is not a valid answer (not HTTP, not JSON)."""


class Client:
    def __init__(self, root: Root, autostart: bool = True, start_timeout: float = 30.0):
        self.root = root
        self.autostart = autostart
        self.start_timeout = start_timeout  # how long an autostarted qiaod may take to answer

    def _connect(self) -> _socket.socket:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(self.root.socket)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if not self.autostart:
                raise Unreachable(f"no qiaod is listening on {self.root.socket}") from None
            return self._start_daemon()
        return sock

    def _start_daemon(self) -> _socket.socket:
        if os.geteuid() != 0:
            raise Unreachable("qiaod is not running and only root can start it (run qiao as root)")
        self.root.ensure()
        import subprocess  # only here: it costs every other command start-up time

        args = [sys.executable, "-m", "qiao.daemon.main"] + (["--root", self.root.base] if self.root.base else [])
        log = os.open(self.root.daemon_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)  # root's alone
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        finally:
            os.close(log)
        # Concurrent CLIs may each start one; the pid-file lock lets one win and we all wait for it.
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            try:
                sock.connect(self.root.socket)
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
            if proc.poll() is not None and not self._daemon_alive():
                raise Unreachable(f"qiaod failed to start: {self._last_log_line()}")
            time.sleep(0.01)
        raise Unreachable(f"qiaod did not start; see {self.root.daemon_log}")

    def _daemon_alive(self) -> bool:
        """Whether some qiaod holds this root's pid-file lock."""
        try:
            fd = os.open(self.root.pidfile, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def _last_log_line(self) -> str:
        try:
            with open(self.root.daemon_log, errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
        except OSError:
            lines = []
        return lines[-1] if lines else f"see {self.root.daemon_log}"

    def _send(
        self, method: str, path: str, query: dict[str, Any] | None, body: Any, fds: list[int] | None, upload: int | None = None
    ) -> tuple[str, _socket.socket]:
        """Connect and send one request; the path as sent, and the connection to read the answer from.
        Query values may be lists (a parameter repeated)."""
        params = "&".join(
            f"{k}={quote(str(item))}" for k, v in (query or {}).items() if v is not None for item in (v if isinstance(v, list) else [v])
        )
        if params:
            path += "?" + params
        data = b"" if body is None else json.dumps(body).encode()
        size = None if upload is None else _file_size(upload)
        if upload is None:
            head = f"{method} {path} HTTP/1.0\r\nHost: qiaod\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        else:
            framing = "Transfer-Encoding: chunked" if size is None else f"Content-Length: {size}"
            head = f"{method} {path} HTTP/1.1\r\nHost: qiaod\r\nConnection: close\r\nContent-Type: application/x-tar\r\n{framing}\r\n"
        if fds:
            head += "X-Qiao-Stdio: 1\r\n"
        sock = self._connect()
        try:
            # MSG_NOSIGNAL: a daemon gone away is an error here, not a SIGPIPE (which means a closed stdout)
            sock.sendall(head.encode() + b"\r\n" + data, _socket.MSG_NOSIGNAL)
            if upload is not None:
                _send_body(sock, upload, chunked=size is None)
            if fds:
                ancillary = (_socket.SOL_SOCKET, _socket.SCM_RIGHTS, b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))
                sock.sendmsg([b"F"], [ancillary], _socket.MSG_NOSIGNAL)
        except (BrokenPipeError, ConnectionResetError):
            pass  # qiaod answered early (a refusal) and closed: its answer is still there to read
        except OSError as exc:
            sock.close()
            raise Unreachable(f"lost the connection to qiaod during {method} {path}: {exc.strerror or exc}") from None
        return path, sock

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        fds: list[int] | None = None,
        timeout: float | None = None,
        upload: int | None = None,
        raw: bool = False,
    ) -> Any:
        """One request and its decoded answer; ``timeout``: seconds without progress
        before giving up (None: wait as long as qiaod works).  ``upload``: a file
        descriptor whose content is the body (a file with its length, anything else
        chunked); ``raw``: the body undecoded (Docker's JSON message streams)."""
        path, sock = self._send(method, path, query, body, fds, upload)
        sock.settimeout(timeout)
        chunks = []
        try:
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:  # after a refusal; whatever it sent before is complete or not, below
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            raise Unreachable(f"qiaod did not answer {method} {path} within {timeout:g} s") from None
        except OSError as exc:
            raise Unreachable(f"lost the connection to qiaod during {method} {path}: {exc.strerror or exc}") from None
        finally:
            sock.close()
        return _answer(method, path, b"".join(chunks), raw)

    def stream(self, method: str, path: str, query: dict[str, Any] | None = None) -> tuple[str, Iterator[bytes]]:
        """A streamed answer (``logs -f``): its content type and its body's
        chunks as they arrive; an error status raises as ``request`` does."""
        path, sock = self._send(method, path, query, None, None)
        head, rest = _read_head(sock, method, path)
        ctype = ""
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-type":
                ctype = value.strip().decode("latin-1")
        return ctype, _chunks(sock, rest)

    def converse(self, path: str, body: Any) -> Conversation:
        """POST ``body`` to ``path`` and, once qiaod hands the connection over, a
        conversation of JSON lines on it (qiaod's refusal: DaemonError)."""
        path, sock = self._send("POST", path, None, body, None)
        _head, rest = _read_head(sock, "POST", path)
        return Conversation(sock, rest, f"POST {path}")


def _read_head(sock: _socket.socket, method: str, path: str) -> tuple[bytes, bytes]:
    """The head of an answer whose body is read as it comes, and what came after it;
    an error status (or no answer at all) raises as ``request`` does, ``sock`` closed."""
    raw = b""
    try:
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
        head, sep, rest = raw.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/") and head.count(b" ") >= 1 else b""
        if not sep or not status.isdigit() or int(status) >= 300:
            while chunk:
                chunk = sock.recv(65536)
                raw += chunk
            sock.close()
            _answer(method, path, raw)  # raises for what is not a good answer
            raise BadAnswer(f"qiaod's answer to {method} {path} is not a stream")
    except OSError as exc:
        sock.close()
        raise Unreachable(f"lost the connection to qiaod during {method} {path}: {exc.strerror or exc}") from None
    return head, rest


class Conversation:
    """JSON lines both ways on a connection qiaod handed over after its answer's head; a
    line ``{"message": ...}`` from qiaod is its refusal (DaemonError). Closing it is how the client leaves."""

    def __init__(self, sock: _socket.socket, buffered: bytes, what: str) -> None:
        self.sock, self._buffer, self.what = sock, buffered, what

    def send(self, value: Any) -> None:
        try:
            self.sock.sendall(json.dumps(value).encode() + b"\n", _socket.MSG_NOSIGNAL)
        except OSError as exc:
            raise Unreachable(f"lost the connection to qiaod during {self.what}: {exc.strerror or exc}") from None

    def receive(self) -> Any:
        try:
            while b"\n" not in self._buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise Unreachable(f"qiaod closed the connection during {self.what}")
                self._buffer += chunk
        except OSError as exc:
            raise Unreachable(f"lost the connection to qiaod during {self.what}: {exc.strerror or exc}") from None
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            value = json.loads(line)
        except ValueError:
            raise BadAnswer(f"qiaod's answer during {self.what} is not valid JSON") from None
        if isinstance(value, dict) and "message" in value:
            raise DaemonError(400, str(value["message"]), value)
        return value

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conversation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunks(sock: _socket.socket, first: bytes) -> Iterator[bytes]:
    try:
        if first:
            yield first
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            yield chunk
    finally:
        sock.close()


def _file_size(fd: int) -> int | None:
    """What is left of a regular file; None for a pipe or a terminal (sent chunked)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size - os.lseek(fd, 0, os.SEEK_CUR)


def _send_body(sock: _socket.socket, fd: int, chunked: bool) -> None:
    """The body from ``fd``: as is, or in chunks of what each read returns."""
    while data := os.read(fd, 1 << 20):
        sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data, _socket.MSG_NOSIGNAL)
    if chunked:
        sock.sendall(b"0\r\n\r\n", _socket.MSG_NOSIGNAL)


def _dechunk(data: bytes, what: str) -> bytes:
    body: list[bytes] = []
    at = 0
    while True:
        end = data.find(b"\r\n", at)
        size_text = data[at:end].split(b";")[0].strip() if end >= 0 else b""
        try:
            size = int(size_text, 16)
        except ValueError:
            raise Unreachable(f"qiaod's answer to {what} ended in the middle of a chunk") from None
        if size == 0:
            return b"".join(body)
        body.append(data[end + 2 : end + 2 + size])
        at = end + 2 + size + 2


def _answer(method: str, path: str, raw: bytes, undecoded: bool = False) -> Any:
    """The decoded body of qiaod's answer; raises DaemonError for an error
    status, Unreachable when the connection ended before a complete answer
    and BadAnswer when the answer makes no sense."""
    what = f"{method} {path}"
    header, sep, payload = raw.partition(b"\r\n\r\n")
    if not raw:
        raise Unreachable(f"qiaod closed the connection without answering {what}")
    if not raw.startswith(b"HTTP/"[: len(raw)]):
        raise BadAnswer(f"qiaod's answer to {what} is not HTTP")
    if not sep:
        raise Unreachable(f"qiaod closed the connection before its answer to {what} was complete")
    lines = header.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[1].isdigit() or len(status_line[1]) != 3:
        raise BadAnswer(f"qiaod's answer to {what} has an invalid status line")
    status = int(status_line[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        headers[key.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":  # a stream answered to an HTTP/1.1 request (an upload)
        payload = _dechunk(payload, what)
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit():
            raise BadAnswer(f"qiaod's answer to {what} has an invalid Content-Length")
        if len(payload) < int(length):
            raise Unreachable(
                f"qiaod closed the connection before its answer to {what} was complete ({len(payload)} of {int(length)} bytes)"
            )
        payload = payload[: int(length)]
    is_json = b"application/json" in headers.get(b"content-type", b"").lower() and not (undecoded and status < 400)
    decoded: Any = payload if not is_json else None
    if is_json and payload:
        try:
            decoded = json.loads(payload)
        except (ValueError, RecursionError):
            raise BadAnswer(f"qiaod's answer to {what} is not valid JSON") from None
    if status >= 400:
        if isinstance(decoded, dict):
            message = str(decoded.get("message", ""))
        else:  # a plain-text (or empty) error body: its text, not the repr of bytes
            message = decoded.decode(errors="replace").strip() if isinstance(decoded, bytes) else ""
        raise DaemonError(status, message, decoded if isinstance(decoded, dict) else {})
    return decoded
