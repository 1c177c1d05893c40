"""qiaod's HTTP server: requests over a unix socket, routed to ``Api``'s methods.

One request per connection, answered with HTTP/1.0 and closed (what the CLI
relies on; curl and Docker's client cope). No input can hurt the daemon:

* **Reading is not a thread's job.** One event loop (the thread in
  ``serve_forever``) accepts connections and reads every request's head and
  body without blocking. An idle or slow client costs an fd and a buffer,
  never a thread, and is answered 408 once ``read_timeout`` (10 s) has passed
  since it connected: that budget is for reading the request only.
* **A bounded worker pool runs the handlers.** A complete request goes to
  ``WorkerPool``: at most ``WORKERS`` (64) threads for ordinary requests;
  more requests wait in its queue. A handler that runs for longer than
  ``LONG_REQUEST`` (1 s; ``wait``, ``stop -t``, a foreground ``start``) stops
  counting against the 64, so such requests cannot starve ``ps``; they are
  bounded separately (``MAX_THREADS`` in all).
* **Limits, each answered.** Request line > 8 KiB: 414. Headers > 64 KiB or
  > 100 of them: 431. Body over the route's ``max_body`` (1 MiB by default):
  413. Chunked bodies: decoded for the routes that stream their body (image
  uploads: Docker's CLI sends them chunked), with the same cap and a bound on
  every size line and trailer; 411 elsewhere. Malformed request lines, headers,
  Content-Length, chunk framing, percent-encoding or UTF-8: 400. Unknown method: 501; known method on the
  wrong path: 405. A body cut short: 400. A reply to a mistake is followed by a
  short "lingering close" (what the client still sends is read and dropped),
  so the client reads the answer instead of a reset.
* A client's mistake or hang-up never leaves a traceback in the log (one line
  at debug level); a traceback means a bug in qiao (a 500).

``POST /containers/{id}/start`` with the header ``X-Qiao-Stdio: 1`` is
followed by one byte carrying the client's stdin, stdout and stderr
(SCM_RIGHTS): the container then writes straight to the caller's terminal,
with no copying through the daemon (qiao's equivalent of Docker's attach).
The event loop reads with ``recvmsg`` so those descriptors are never lost,
and waits for that byte as part of the request.

Long answers: a handler returns ``Streamed`` (a body written as produced,
in HTTP/1.1 chunks to an HTTP/1.1 client, as dockerd does: docker-py reads
a stream only so; ended by the close for HTTP/1.0: ``logs -f``, ``/events``) or
``Hijacked`` (the raw connection after ``101 UPGRADED``: Docker's attach and
exec). Both run in the handler's worker, which stops counting against
``WORKERS`` after ``LONG_REQUEST``.
"""

from __future__ import annotations

import array
import collections
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import select
import selectors
import socket
import struct
import termios
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from qiao import __version__
from qiao.engine.errors import InvalidParameter, QiaoError

log = logging.getLogger("qiao.api")
API_VERSION = "1.47"
MIN_API_VERSION = "1.24"  # as dockerd 25 and later: older clients are refused (400)

MAX_BODY = 1 << 20  # a route's default cap on its request body (JSON); a route may set its own
MAX_REQUEST_LINE = 8192  # 414 beyond
MAX_HEADER_BYTES = 64 << 10  # 431 beyond (the request line not counted)
MAX_HEADERS = 100  # 431 beyond
READ_TIMEOUT = 10.0  # seconds from accept to a complete request (head and body); 408 after
WRITE_TIMEOUT = 10.0  # seconds a reply may wait for a client that reads none of it
LINGER = 2.0  # after an early answer: read and drop what the client still sends, this long at most
HEAD_READ_WAIT = 0.5  # seconds an upgrade waits for the client to read its head (see _until_read)
WORKERS = 64  # handler threads for ordinary requests
LONG_REQUEST = 1.0  # a handler running longer than this no longer counts against WORKERS
MAX_THREADS = 1024  # handler threads in all, long requests included; further requests queue
MAX_CONNECTIONS = 4096  # open connections (at most a quarter of RLIMIT_NOFILE); beyond, the oldest unfinished one is dropped
BACKLOG = max(socket.SOMAXCONN, 4096)  # the kernel caps it at net.core.somaxconn
MAX_FDS = 16  # SCM_RIGHTS descriptors accepted per request (a start needs 3); the rest are closed
MAX_CHUNK_LINE = 4096  # a chunk's size line with its extensions; 400 beyond
MAX_TRAILERS = 100  # trailer fields after the last chunk; 400 beyond

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])\Z")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")  # visible ASCII: no controls, spaces or raw UTF-8
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DIGITS = re.compile(r"[0-9]+\Z")  # ASCII only: str.isdigit() would take "²" or "٣"
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")  # a chunk size (at most 2**64 - 1)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_VERSION_PREFIX = re.compile(r"^/v[0-9.]+(?=/)")
_ASKED_VERSION = re.compile(r"^/v([0-9.]+)/")

Handler = Callable[..., Any]


@dataclass(frozen=True)
class Route:
    """One route: ``max_body`` caps its request body (413 beyond); with
    ``stream`` the handler gets the connection after the head and reads the
    body itself through ``Request.stream`` (for uploads larger than memory)."""

    method: str
    pattern: re.Pattern[str]
    name: str
    max_body: int = MAX_BODY
    stream: bool = False


def route(method: str, pattern: str, *, max_body: int = MAX_BODY, stream: bool = False) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        spec = Route(method, re.compile("^" + pattern + "$"), fn.__name__, max_body, stream)
        fn.__dict__.setdefault("_routes", []).append(spec)
        return fn

    return register


def routes_of(api: object) -> list[Route]:
    """The routes of ``api``'s class (and its bases), in the order they are defined."""
    found: list[Route] = []
    seen: set[str] = set()
    for klass in type(api).__mro__:
        for name, fn in vars(klass).items():
            if name not in seen:
                seen.add(name)
                found.extend(getattr(fn, "_routes", ()))
    return found


class Raw(bytes):
    """A response body sent as is (logs); ``headers`` are added to the answer's (``/_ping``'s)."""

    headers: dict[str, str]

    def __new__(cls, data: bytes = b"", headers: dict[str, str] | None = None) -> Raw:
        self = super().__new__(cls, data)
        self.headers = dict(headers or {})
        return self


@dataclass
class Streamed:
    """A body written as it is produced (``logs -f``, ``/events``, ``wait``):
    the head goes out at once, without a length, then each chunk as the
    iterator yields it (an HTTP/1.1 chunk each, for an HTTP/1.1 client); the
    iterator's end (and the connection's close) ends the body. If the client
    leaves, the iterator is closed (its ``finally`` runs), so a producer
    learns it at its next ``yield``."""

    chunks: Iterator[bytes]
    content_type: str = "application/json"


@dataclass
class Hijacked:
    """The raw connection for ``attach`` and ``exec start``: after the
    upgrade head (``101 UPGRADED``, ``Upgrade: tcp``, as dockerd sends; a
    client that asked for no upgrade gets ``200 OK``), ``run`` gets the socket
    (blocking, no timeout) and owns the conversation until it returns."""

    run: Callable[[socket.socket], None]
    content_type: str = "application/vnd.docker.raw-stream"


class HttpError(Exception):
    """A request the server refuses before any handler sees it."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class RequestTimeout(QiaoError):
    status = 408


class PayloadTooLarge(QiaoError):
    status = 413


# -- the request head ----------------------------------------------------------


@dataclass
class Head:
    method: str
    target: str
    version: tuple[int, int]
    headers: dict[str, str]  # lower-case names; repeated ones joined with ", "
    length: int = 0  # of the body (Content-Length; 0 without one)
    stdio: bool = False  # X-Qiao-Stdio: 1, a byte with three fds follows the body
    chunked: bool = False  # Transfer-Encoding: chunked (only routes with stream=True take it)


def parse_head(data: bytes) -> Head:
    """The request line and headers (``data`` without the blank line ending
    them); raises HttpError for anything malformed."""
    line, _, rest = data.partition(b"\n")
    line = line.removesuffix(b"\r")
    if len(line) > MAX_REQUEST_LINE:
        raise HttpError(414, f"request line longer than {MAX_REQUEST_LINE} bytes")
    parts = line.split(b" ")
    if len(parts) == 2 and parts[1].startswith(b"/"):
        raise HttpError(400, "HTTP/0.9 requests are not supported")
    if len(parts) != 3 or not all(parts):
        raise HttpError(400, "malformed request line: expected METHOD TARGET HTTP/1.x")
    raw_method, raw_target, raw_version = parts
    if not _TOKEN.match(raw_method):
        raise HttpError(400, "malformed request line: invalid method")
    version = _VERSION.match(raw_version)
    if not version:
        raise HttpError(400, "malformed request line: invalid HTTP version")
    if version.group(1) != b"1":
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    if not _TARGET.match(raw_target):
        raise HttpError(400, "the request target must be printable ASCII (percent-encode the rest)")
    headers: dict[str, str] = {}
    lines = rest.split(b"\n") if rest else []
    if len(lines) > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    lengths: list[str] = []
    for raw in lines:
        raw = raw.removesuffix(b"\r")
        if raw[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete header line folding")
        name, colon, value = raw.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise HttpError(400, f"malformed header line {raw[:60].decode('latin-1')!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise HttpError(400, f"control character in header {name.decode()}")
        key, text = name.decode().lower(), value.decode("latin-1")
        if key == "content-length":
            lengths.extend(v.strip(" \t") for v in text.split(","))
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    head = Head(raw_method.decode(), raw_target.decode(), (1, int(version.group(2))), headers)
    if "transfer-encoding" in headers:
        codings = [c.strip().lower() for c in headers["transfer-encoding"].split(",")]
        if codings != ["chunked"]:
            raise HttpError(501, f"Transfer-Encoding {headers['transfer-encoding']!r} is not supported")
        if head.version < (1, 1):  # RFC 9112 6.1: faulty framing
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        head.chunked = True
    if lengths:
        if not all(_DIGITS.match(v) for v in lengths):
            raise HttpError(400, f"invalid Content-Length {headers['content-length']!r}")
        if len(set(lengths)) != 1:
            raise HttpError(400, "conflicting Content-Length values")
        head.length = int(lengths[0]) if len(lengths[0]) < 19 else 1 << 62  # still 413, without a huge int
    head.stdio = headers.get("x-qiao-stdio") == "1"
    return head


def split_target(target: str) -> tuple[str, str]:
    """Path (with any ``/vN.NN`` prefix dropped, still percent-encoded) and query."""
    if target.startswith(("http://", "https://")):  # absolute form (proxies send it)
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    if not target.startswith("/"):
        raise HttpError(400, "the request target must be a path")
    if _BAD_PERCENT.search(target):
        raise HttpError(400, "invalid percent-encoding in the request target")
    path, _, query = target.partition("?")
    path = path.partition("#")[0]
    return _VERSION_PREFIX.sub("", path), query.partition("#")[0]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def check_version(path: str) -> None:
    """A ``/vX.Y/`` prefix below MIN_API_VERSION or above API_VERSION is refused, in dockerd's words."""
    m = _ASKED_VERSION.match(path)
    if not m:
        return
    try:
        asked = _version_tuple(m.group(1))
    except ValueError:
        raise HttpError(400, f"invalid API version {m.group(1)!r}") from None
    if asked < _version_tuple(MIN_API_VERSION):
        raise HttpError(
            400,
            f"client version {m.group(1)} is too old. Minimum supported API version is {MIN_API_VERSION}, "
            "please upgrade your client to a newer version",
        )
    if asked > _version_tuple(API_VERSION):
        raise HttpError(400, f"client version {m.group(1)} is too new. Maximum supported API version is {API_VERSION}")


def parse_query_lists(query: str) -> dict[str, list[str]]:
    """Every value of every parameter (``changes=...&changes=...``)."""
    try:
        return urllib.parse.parse_qs(query, errors="strict", max_num_fields=100)
    except UnicodeDecodeError:
        raise HttpError(400, "the query string is not UTF-8") from None
    except ValueError:
        raise HttpError(400, "too many query parameters") from None


_FALSE = frozenset({"", "0", "no", "false", "none"})  # what dockerd's httputils.BoolValue reads as false
_TRUE = frozenset({"1", "true", "yes", "on"})


def bool_value(text: str, name: str) -> bool:
    """A boolean query parameter (``force``, ``all``, ``stream``...) in dockerd's spellings,
    any case. dockerd reads anything else as true; qiao refuses it (``force=maybe`` is a
    mistake, not a yes)."""
    value = text.strip().lower()
    if value in _FALSE or value in _TRUE:
        return value in _TRUE
    raise InvalidParameter(f"invalid value for {name}: {text!r} (expected true or false)")


def unquote(segment: str) -> str:
    try:
        return urllib.parse.unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(400, "the request path is not UTF-8") from None


# -- the request, as handlers see it -------------------------------------------


class Request:
    def __init__(
        self,
        query: dict[str, str],
        body: bytes,
        fds: list[int] | None = None,
        head: Head | None = None,
        stream: BodyStream | None = None,
        query_lists: dict[str, list[str]] | None = None,
    ):
        self.query = query
        self.query_lists = query_lists if query_lists is not None else {k: [v] for k, v in query.items()}
        self.body = body
        self.head = head
        self.headers = head.headers if head else {}
        self.after_reply: Callable[[], None] | None = None
        self._fds = list(fds or [])
        self._stdio = head.stdio if head else False
        self._stream = stream

    @property
    def stream(self) -> BodyStream:
        """The body of a ``stream=True`` route, read as it arrives."""
        if self._stream is None:
            raise RuntimeError("this route was not declared with stream=True")
        return self._stream

    def number(self, name: str, default: int) -> int:
        """A non-negative whole number in the query (ASCII digits only: ``int()`` would take any script's)."""
        text = self.query.get(name)
        if text is None or text == "":
            return default
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise InvalidParameter(f"invalid value for {name}: {text!r} is not a whole number of seconds")
        return int(text)

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean query parameter, read as dockerd reads one (``bool_value``); ``default`` when absent."""
        return bool_value(self.query[name], name) if name in self.query else default

    def received_fds(self) -> tuple[int, int, int] | None:
        """The caller's stdin, stdout and stderr (``X-Qiao-Stdio: 1``), now the
        handler's to close; None without that header."""
        if not self._stdio:
            return None
        fds, self._fds = self._fds, []
        if len(fds) != 3:
            close_all(fds)
            raise InvalidParameter("expected three file descriptors (stdin, stdout, stderr)")
        return fds[0], fds[1], fds[2]

    def received_fd(self) -> int | None:
        """One descriptor the caller passed (``X-Qiao-Stdio: 1`` with one fd:
        the CNI plugin's network namespace), now the handler's to close."""
        if not self._stdio:
            return None
        fds, self._fds = self._fds, []
        if len(fds) != 1:
            close_all(fds)
            raise InvalidParameter("expected one file descriptor")
        return fds[0]

    def close_fds(self) -> None:
        fds, self._fds = self._fds, []
        close_all(fds)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class BodyStream:
    """A streamed body: ``read(n)`` returns at most ``n`` bytes, b"" at its end.
    A pause longer than the read timeout is a 408, an early end a 400."""

    def read(self, n: int = 65536) -> bytes:
        raise NotImplementedError

    @property
    def complete(self) -> bool:
        """Whether the whole body has been read (else the rest is dropped by a lingering close)."""
        raise NotImplementedError


class BodyReader(BodyStream):
    """A body of a known length (Content-Length)."""

    def __init__(self, sock: socket.socket, buffered: bytes, length: int, timeout: float):
        self._sock = sock
        self._buffered = buffered[:length]
        self.left = length
        self._timeout = timeout

    @property
    def complete(self) -> bool:
        return self.left <= 0

    def read(self, n: int = 65536) -> bytes:
        n = min(n, self.left)
        if n <= 0:
            return b""
        if self._buffered:
            data, self._buffered = self._buffered[:n], self._buffered[n:]
        else:
            data = _recv(self._sock, n, self._timeout)
            if not data:
                raise InvalidParameter(f"request body truncated: {self.left} bytes missing")
        self.left -= len(data)
        return data


def _recv(sock: socket.socket, n: int, timeout: float) -> bytes:
    """One ``recv`` for a body: a pause past ``timeout`` is a 408 (the socket's
    own timeout is the write timeout, restored after)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(n)
    except TimeoutError:
        raise RequestTimeout(f"no body data for {timeout:g} s") from None
    finally:
        sock.settimeout(WRITE_TIMEOUT)


class ChunkedReader(BodyStream):
    """A chunked body (RFC 9112 7.1) decoded as it arrives: chunk-size lines
    in hex with optional extensions (ignored), each chunk's data followed by
    CRLF, a last chunk of size 0, then trailer fields (read and dropped).
    More than ``limit`` decoded bytes is a 413; a size line longer than
    MAX_CHUNK_LINE, more than MAX_TRAILERS trailers or any other framing
    error is a 400."""

    def __init__(self, sock: socket.socket, buffered: bytes, limit: int, timeout: float):
        self._sock = sock
        self._buf = bytearray(buffered)
        self._limit = limit
        self._timeout = timeout
        self._chunk_left = 0  # data bytes of the current chunk not yet returned
        self.total = 0  # decoded bytes so far
        self._done = False

    @property
    def complete(self) -> bool:
        return self._done

    def read(self, n: int = 65536) -> bytes:
        if self._done or n <= 0:
            return b""
        if self._chunk_left == 0:
            size = self._size_line()
            if size == 0:
                self._trailers()
                self._done = True
                return b""
            self.total += size
            if self.total > self._limit:
                raise PayloadTooLarge(f"request body larger than {self._limit} bytes")
            self._chunk_left = size
        if not self._buf:
            self._fill()
        data = bytes(self._buf[: min(n, self._chunk_left)])
        del self._buf[: len(data)]
        self._chunk_left -= len(data)
        # Strict here: a lone LF accepted would make "3\r\nhi\r\n" a chunk.
        if self._chunk_left == 0 and self._line(2) != b"\r\n":
            raise InvalidParameter("malformed chunked body: chunk data not followed by CRLF")
        return data

    def _fill(self) -> None:
        data = _recv(self._sock, 65536, self._timeout)
        if not data:
            raise InvalidParameter("request body truncated: the chunked body did not end")
        self._buf += data

    def _line(self, limit: int) -> bytes:
        """The next line with its end (LF or CRLF), at most ``limit`` bytes."""
        while True:
            end = self._buf.find(b"\n", 0, limit)
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                return line
            if len(self._buf) >= limit:
                raise InvalidParameter("malformed chunked body: a line too long")
            self._fill()

    def _size_line(self) -> int:
        line = self._line(MAX_CHUNK_LINE).rstrip(b"\r\n")
        text = line.split(b";", 1)[0].strip(b" \t")
        if not _HEX.match(text):
            raise InvalidParameter(f"malformed chunked body: invalid chunk size {line[:40].decode('latin-1')!r}")
        return int(text, 16)

    def _trailers(self) -> None:
        for _ in range(MAX_TRAILERS + 1):
            if self._line(MAX_CHUNK_LINE) in (b"\r\n", b"\n"):
                return
        raise InvalidParameter(f"malformed chunked body: more than {MAX_TRAILERS} trailer fields")


# -- the worker pool -----------------------------------------------------------


class WorkerPool:
    """At most ``size`` threads for ordinary jobs, more jobs wait in a queue.
    A job running longer than ``long_after`` seconds no longer counts against
    ``size``: the pool may start another thread for the queue, up to
    ``max_threads`` in all. Threads start when needed and, beyond ``size``,
    end when the queue is empty."""

    def __init__(self, size: int = WORKERS, max_threads: int = MAX_THREADS, long_after: float = LONG_REQUEST):
        self.size = size
        self.max_threads = max(size, max_threads)
        self.long_after = long_after
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._cond = threading.Condition()
        self._threads = 0
        self._idle = 0
        self._busy: dict[int, float] = {}  # thread ident -> when its job started
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._cond:
            self._jobs.append(job)
            if self._idle:
                self._cond.notify()
            self._grow()

    def tick(self) -> None:
        """Start threads for jobs that wait behind long ones (called now and then)."""
        with self._cond:
            self._grow()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"threads": self._threads, "idle": self._idle, "busy": len(self._busy), "queued": len(self._jobs)}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._jobs.clear()
            self._cond.notify_all()

    def _grow(self) -> None:
        now = time.monotonic()
        while len(self._jobs) > self._idle and self._threads < self.max_threads and not self._closed:
            long_running = sum(1 for started in self._busy.values() if now - started > self.long_after)
            if self._threads - long_running >= self.size:
                return
            self._threads += 1
            threading.Thread(target=self._work, name=f"qiao-http-{self._threads}", daemon=True).start()
            self._idle += 1  # counted as idle until it takes a job: the loop starts one thread per waiting job

    def _work(self) -> None:
        me = threading.get_ident()
        with self._cond:
            self._idle -= 1
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                if self._closed:
                    self._threads -= 1
                    return
                job = self._jobs.popleft()
                self._busy[me] = time.monotonic()
            try:
                job()
            except Exception:
                log.exception("request worker failed")
            with self._cond:
                del self._busy[me]
                if self._threads > self.size and not self._jobs:
                    self._threads -= 1
                    return


# -- connections ---------------------------------------------------------------


@dataclass(eq=False)
class Conn:
    sock: socket.socket
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    fds: list[int] = field(default_factory=list)
    head: Head | None = None
    head_size: int = 0
    route: Route | None = None
    args: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    query_lists: dict[str, list[str]] = field(default_factory=dict)
    path: str = ""
    received: int = 0  # bytes read in all
    scanned: int = 0  # how far the search for the head's end has got (a byte-a-second client costs no rescans)
    lingering: bool = False

    def take_fds(self, ancdata: list[tuple[int, int, bytes]]) -> None:
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                keep = max(0, MAX_FDS - len(self.fds))
                self.fds.extend(fds[:keep])
                close_all(list(fds[keep:]))


_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


class Server:
    """The HTTP server on a unix socket; ``serve_forever``, ``shutdown`` and
    ``server_close`` as ``socketserver``'s."""

    def __init__(
        self,
        path: str,
        api: object,  # an object whose methods carry @route (daemon/api.Api, docker_plugin/api.PluginApi)
        *,
        workers: int = WORKERS,
        max_threads: int = MAX_THREADS,
        long_request: float = LONG_REQUEST,
        read_timeout: float = READ_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ):
        self.api = api
        self.routes = routes_of(api)
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_connections = min(max_connections, max(64, _open_files_limit() // 4))
        self.pool = WorkerPool(workers, max_threads, long_request)
        self.server_address = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.socket.bind(path)
            self.socket.listen(BACKLOG)
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._reading: dict[int, Conn] = {}  # fd -> connection the event loop reads (or lingers on)
        self._lock = threading.Lock()
        self._open = 0  # connections accepted and not yet closed (reading, in a worker, lingering)
        self._handed_back: list[Conn] = []  # from workers: connections to linger on
        self._accepting = False
        self._accept_paused_until = 0.0
        self._stop = False
        self._stopped = threading.Event()
        self._stopped.set()

    # -- socketserver's interface --

    def serve_forever(self, poll_interval: float = 0.25) -> None:
        self._stopped.clear()
        self._stop = False
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._set_accepting(True)
        try:
            while not self._stop:
                try:
                    self._loop_once(poll_interval)
                except Exception:  # a bug here must not stop the daemon from serving
                    log.exception("HTTP event loop failed")
                    time.sleep(0.01)
        finally:
            self._selector.unregister(self._wake_r)
            self._set_accepting(False)
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` and wait for it to return (call it from another thread)."""
        self._stop = True
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        self.pool.close()
        for conn in list(self._reading.values()):
            self._close(conn)
        self.socket.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"connections": self._open, "reading": len(self._reading), **self.pool.stats()}

    # -- the event loop --

    def _loop_once(self, poll_interval: float) -> None:
        now = time.monotonic()
        timeout = poll_interval
        if self._reading:
            timeout = max(0.0, min(timeout, min(c.deadline for c in self._reading.values()) - now))
        for key, _events in self._selector.select(timeout):
            if key.fileobj is self.socket:
                self._accept()
            elif key.fileobj is self._wake_r:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
            else:
                self._readable(key.data)
        with self._lock:
            handed, self._handed_back = self._handed_back, []
        for conn in handed:
            self._linger(conn)
        now = time.monotonic()
        for conn in [c for c in self._reading.values() if c.deadline <= now]:
            if conn.lingering:
                self._close(conn)
            else:
                self._refuse(conn, HttpError(408, f"request not complete within {self.read_timeout:g} s"))
        if not self._accepting and now >= self._accept_paused_until and self._open < self.max_connections:
            self._set_accepting(True)
        self.pool.tick()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _set_accepting(self, on: bool) -> None:
        if on and not self._accepting:
            self._selector.register(self.socket, selectors.EVENT_READ)
        elif not on and self._accepting:
            self._selector.unregister(self.socket)
        self._accepting = on

    def _accept(self) -> None:
        for _ in range(64):
            if self._open >= self.max_connections and not self._evict():
                self._set_accepting(False)  # every one is in a handler: the rest wait in the backlog
                return
            try:
                sock, _addr = self.socket.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept a connection: %s; pausing for 0.1 s", exc.strerror)
                    self._set_accepting(False)
                    self._accept_paused_until = time.monotonic() + 0.1
                    return
                log.warning("cannot accept a connection: %s", exc)
                return
            sock.setblocking(False)
            conn = Conn(sock, time.monotonic() + self.read_timeout)
            with self._lock:
                self._open += 1
            self._reading[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _evict(self) -> bool:
        """At the connection cap: drop the oldest connection still sending its
        request (a 503), so that idle clients cannot lock out the others."""
        if not self._reading:
            return False
        lingering = min(self._reading.values(), key=lambda c: (not c.lingering, c.deadline))
        if lingering.lingering:
            self._close(lingering)  # its answer is sent already
            return True
        oldest = min(self._reading.values(), key=lambda c: c.deadline)
        log.debug("%d connections open: dropping the oldest unfinished one", self._open)
        self._refuse(oldest, HttpError(503, "too many connections; try again"), linger=False)
        return True

    def _readable(self, conn: Conn) -> None:
        try:
            data, ancdata, _flags, _addr = conn.sock.recvmsg(65536, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("client connection failed while sending its request: %s", exc)
            self._close(conn)
            return
        conn.take_fds(ancdata)
        if conn.lingering:
            if not data:
                self._close(conn)
            return
        if not data:
            self._eof(conn)
            return
        conn.buf += data
        conn.received += len(data)
        try:
            self._advance(conn)
        except HttpError as exc:
            self._refuse(conn, exc)
        except Exception:  # a bug in qiao, not the client's doing: a traceback and a 500
            log.exception("reading a request failed")
            self._refuse(conn, HttpError(500, "internal error while reading the request"))

    def _eof(self, conn: Conn) -> None:
        if not conn.received:
            self._close(conn)  # connected and left without sending a byte: nothing to answer
            return
        where = "body" if conn.head else "head"
        self._refuse(conn, HttpError(400, f"request {where} truncated: the client closed its side early"), linger=False)

    def _advance(self, conn: Conn) -> None:
        """Parse what has arrived; hand a complete request to the workers."""
        if conn.head is None:
            while conn.buf[:1] in (b"\r", b"\n"):  # RFC 9112 2.2: ignore empty lines before the request line
                del conn.buf[:1]
            end = _HEAD_END.search(conn.buf, max(0, conn.scanned - 3))
            if end is None:
                conn.scanned = len(conn.buf)
                line_end = conn.buf.find(b"\n", 0, MAX_REQUEST_LINE + 2)
                if line_end < 0 and len(conn.buf) > MAX_REQUEST_LINE + 1:
                    raise HttpError(414, f"request line longer than {MAX_REQUEST_LINE} bytes")
                if line_end >= 0 and len(conn.buf) - line_end > MAX_HEADER_BYTES:
                    raise HttpError(431, f"request headers larger than {MAX_HEADER_BYTES} bytes")
                return
            head_bytes = bytes(conn.buf[: end.start()])
            line_len = head_bytes.find(b"\n")
            if line_len >= 0 and len(head_bytes) - line_len > MAX_HEADER_BYTES:
                raise HttpError(431, f"request headers larger than {MAX_HEADER_BYTES} bytes")
            head = parse_head(head_bytes)
            del conn.buf[: end.end()]
            self._route(conn, head)
            conn.head = head
            assert conn.route is not None
            if head.chunked and not conn.route.stream:
                raise HttpError(411, "chunked request bodies are not supported here: send Content-Length")
            if head.chunked and "content-length" in head.headers:  # RFC 9112 6.3: a smuggling attempt, or a broken client
                raise HttpError(400, "both Transfer-Encoding and Content-Length")
            if head.length > conn.route.max_body:
                raise HttpError(413, f"request body larger than {conn.route.max_body} bytes")
            has_body = head.length or head.chunked
            if head.version >= (1, 1) and head.headers.get("expect", "").lower() == "100-continue" and has_body:
                with contextlib.suppress(OSError):
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            elif "expect" in head.headers and head.headers["expect"].lower() != "100-continue":
                raise HttpError(417, f"unsupported expectation {head.headers['expect']!r}")
            if conn.route.stream:
                self._dispatch(conn)
                return
        head = conn.head
        if len(conn.buf) >= head.length + (1 if head.stdio else 0):
            self._dispatch(conn)

    def _route(self, conn: Conn, head: Head) -> None:
        path, query = split_target(head.target)
        conn.path = path
        method = "GET" if head.method == "HEAD" else head.method
        allowed = []
        for r in self.routes:
            match = r.pattern.match(path)
            if match:
                if r.method == method:
                    # Matched while still encoded, so a %2F stays inside its segment; then decoded.
                    conn.args = {k: unquote(v) for k, v in match.groupdict().items()}
                    conn.query_lists = parse_query_lists(query)
                    conn.query = {k: v[-1] for k, v in conn.query_lists.items()}
                    conn.route = r
                    check_version(head.target.partition("?")[0])
                    return
                allowed.append(r.method)
        if head.method not in METHODS:
            raise HttpError(501, f"method {head.method} is not implemented")
        if allowed:
            allow = ", ".join(sorted(set(allowed) | ({"HEAD"} if "GET" in allowed else set())))
            raise HttpError(405, f"method {head.method} is not allowed on {path} (allowed: {allow})", {"Allow": allow})
        raise HttpError(404, f"page not found: {head.method} {path}")

    def _dispatch(self, conn: Conn) -> None:
        del self._reading[conn.sock.fileno()]
        self._selector.unregister(conn.sock)
        conn.sock.settimeout(self.write_timeout)
        self.pool.submit(lambda: self._serve(conn))

    def _refuse(self, conn: Conn, exc: HttpError, linger: bool = True) -> None:
        """Answer a request the server refuses itself, from the event loop."""
        head = conn.head
        log.debug("refused %s: %d %s", f"{head.method} {head.target[:200]}" if head else "a request", exc.status, exc)
        close_all(conn.fds)
        conn.fds = []
        data = response(exc.status, {"message": str(exc)}, exc.headers)
        try:
            conn.sock.send(data)  # small: it fits the socket's buffer; a client that does not read gets less
        except OSError as err:
            log.debug("client went away before its %d answer: %s", exc.status, err)
            self._close(conn)
            return
        if linger:
            self._linger(conn)
        else:
            self._close(conn)

    def _linger(self, conn: Conn) -> None:
        """Half-close, then read and drop what the client still sends until it
        closes too (at most LINGER seconds): closing a unix socket with unread
        data would make the client's read fail with ECONNRESET instead of
        returning the answer."""
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        conn.lingering = True
        conn.deadline = time.monotonic() + LINGER
        conn.buf = bytearray()
        fd = conn.sock.fileno()
        if fd not in self._reading:
            conn.sock.setblocking(False)
            self._reading[fd] = conn
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _close(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        if self._reading.get(fd) is conn:
            del self._reading[fd]
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        close_all(conn.fds)
        conn.fds = []
        if fd >= 0:
            conn.sock.close()
            with self._lock:
                self._open -= 1

    # -- in a worker --

    def _serve(self, conn: Conn) -> None:
        head, route_ = conn.head, conn.route
        assert head is not None and route_ is not None
        stream: BodyStream | None = None
        if route_.stream:
            body = b""
            if head.chunked:
                stream = ChunkedReader(conn.sock, bytes(conn.buf), route_.max_body, self.read_timeout)
            else:
                stream = BodyReader(conn.sock, bytes(conn.buf), head.length, self.read_timeout)
        else:
            body = bytes(conn.buf[: head.length])
        req = Request(conn.query, body, conn.fds, head, stream, conn.query_lists)
        conn.fds = []
        status: int
        payload: Any
        try:
            status, payload = getattr(self.api, route_.name)(req, **conn.args)
        except QiaoError as exc:
            status, payload = exc.status, {"message": str(exc)}
        except Exception as exc:
            log.exception("%s %s failed", head.method, conn.path)
            status, payload = 500, {"message": f"internal error: {exc}"}
        finally:
            req.close_fds()
        log.debug("%s %s -> %d", head.method, head.target[:200], status)
        try:
            if isinstance(payload, Streamed):
                _send_stream(conn.sock, status, payload, chunked=head.version >= (1, 1))
            elif isinstance(payload, Hijacked):
                _hand_over(conn.sock, head, payload)
            else:
                send_all(conn.sock, response(status, payload, head_only=head.method == "HEAD"))
        except OSError as exc:  # BrokenPipeError, ConnectionResetError, TimeoutError: the client's doing
            log.debug("client went away before its answer to %s %s: %s", head.method, conn.path, exc)
        finally:
            self._finish(conn, unread=stream is not None and not stream.complete)
        if req.after_reply:
            threading.Thread(target=req.after_reply, daemon=True).start()

    def _finish(self, conn: Conn, unread: bool) -> None:
        """Close, or let the event loop linger if the client sent more than we read."""
        if not unread:
            conn.sock.setblocking(False)  # with a timeout, recv would first wait for data
            try:
                unread = bool(conn.sock.recv(1, socket.MSG_PEEK))
            except OSError:  # BlockingIOError: nothing more was sent, as it should be
                unread = False
        if unread:
            with self._lock:
                self._handed_back.append(conn)
            self._wake()
            return
        conn.sock.close()
        with self._lock:
            self._open -= 1
        if not self._accepting:
            self._wake()  # accepting may resume


def send_all(sock: socket.socket, data: bytes) -> None:
    """``sendall`` whose timeout (the socket's) is for each pause, not the
    whole answer: a client reading a large log slowly is not cut off; one that
    stops reading is, after WRITE_TIMEOUT."""
    view = memoryview(data)
    while view:
        view = view[sock.send(view[: 1 << 20]) :]


def _send_stream(sock: socket.socket, status: int, payload: Streamed, chunked: bool = False) -> None:
    """An empty chunk sends nothing: it is the producer's heartbeat, when the
    client's hang-up is noticed though there was nothing to write."""
    try:
        send_all(sock, _head(status, payload.content_type, None, {"Transfer-Encoding": "chunked"} if chunked else None, chunked))
        for chunk in payload.chunks:
            if chunk:
                send_all(sock, b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            elif _hung_up(sock):
                raise ConnectionResetError("the client closed the connection")
        if chunked:
            send_all(sock, b"0\r\n\r\n")
    finally:
        close = getattr(payload.chunks, "close", None)
        if close is not None:
            close()


def _hung_up(sock: socket.socket) -> bool:
    """Whether the client closed the connection (POLLHUP on a unix socket: both
    directions shut). A client that only half-closed after its request (its
    end of the body, as HTTP/1.0 clients may) still reads: not hung up."""
    poller = select.poll()
    poller.register(sock, 0)  # POLLHUP and POLLERR are reported whatever the mask
    return bool(poller.poll(0))


def _hand_over(sock: socket.socket, head: Head, payload: Hijacked) -> None:
    if head.headers.get("upgrade", "").lower() == "tcp":
        extra = {"Connection": "Upgrade", "Upgrade": "tcp"}
        first = "HTTP/1.1 101 UPGRADED"
    else:
        extra, first = {}, "HTTP/1.1 200 OK"
    lines = [first, f"Content-Type: {payload.content_type}", *(f"{k}: {v}" for k, v in extra.items()), f"Api-Version: {API_VERSION}"]
    send_all(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    _until_read(sock)
    sock.settimeout(None)
    payload.run(sock)


def _until_read(sock: socket.socket, limit: float = HEAD_READ_WAIT) -> None:
    """Wait (a little) until the client has read the upgrade head: docker-py
    reads it through a buffered file and then reads the raw socket, so bytes
    that arrived together with the head would be lost to it.  (dockerd's
    output comes later anyway: its exec and attach start after the head.)
    A unix socket's unread bytes are the sender's ``SIOCOUTQ``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            unread = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return
        if not unread:
            return
        time.sleep(0.001)


def _open_files_limit() -> int:
    """The soft RLIMIT_NOFILE: client connections may take a quarter of it (the
    daemon also holds a socket per published port, netlink sockets, files)."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def response(status: int, payload: Any, headers: dict[str, str] | None = None, head_only: bool = False) -> bytes:
    if isinstance(payload, Raw):
        data, ctype = bytes(payload), "text/plain; charset=utf-8"
        headers = {**payload.headers, **(headers or {})}
    elif payload is None:
        data, ctype = b"", "application/json"
    else:
        data, ctype = json.dumps(payload).encode(), "application/json"
    return _head(status, ctype, len(data), headers) + (b"" if head_only else data)


def _head(status: int, ctype: str, length: int | None, headers: dict[str, str] | None = None, http11: bool = False) -> bytes:
    """An HTTP/1.0 head (HTTP/1.1 for a chunked body); without ``length`` the body ends at the connection's close."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [
        f"HTTP/1.{1 if http11 else 0} {status} {reason}",
        f"Content-Type: {ctype}",
        *([f"Content-Length: {length}"] if length is not None else []),
        f"Api-Version: {API_VERSION}",
        "OSType: linux",
        "Docker-Experimental: false",
        f"Server: qiaod/{__version__}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
