"""qiaod's HTTP layer (``qiao.daemon.http``) in-process, without an engine:
a fake API served on a temporary unix socket and spoken to with raw bytes.
Every limit and every malformation gets an HTTP answer (never a reset or a
hang), nothing a client does leaves a traceback in the log, and neither idle
clients nor long requests exhaust the workers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from qiao.cli.client import Client
from qiao.daemon import wire
from qiao.daemon.http import (
    MAX_BODY,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    Hijacked,
    Raw,
    Request,
    Server,
    Streamed,
    WorkerPool,
    parse_head,
    route,
)
from qiao.engine.errors import InvalidParameter, NotFound
from qiao.paths import Root

READ_TIMEOUT = 0.5


class FakeApi:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []
        self.fds_seen: list[int] = []

    @route("GET", "/_ping")
    def ping(self, req: Request) -> tuple[int, Any]:
        return 200, Raw(b"OK")

    @route("GET", "/things/(?P<ref>[^/]+)")
    def thing(self, req: Request, ref: str) -> tuple[int, Any]:
        if ref == "missing":
            raise NotFound(f"No such thing: {ref}")
        return 200, {"ref": ref, "query": req.query}

    @route("POST", "/echo")
    def echo(self, req: Request) -> tuple[int, Any]:
        return 200, wire.json_object(req.body)

    @route("POST", "/count")
    def count(self, req: Request) -> tuple[int, Any]:
        return 200, {"length": len(req.body)}

    @route("POST", "/big", max_body=4 << 20)
    def big(self, req: Request) -> tuple[int, Any]:
        return 200, {"length": len(req.body)}

    @route("POST", "/upload", max_body=64 << 20, stream=True)
    def upload(self, req: Request) -> tuple[int, Any]:
        total = 0
        while chunk := req.stream.read(1 << 16):
            total += len(chunk)
        return 200, {"length": total}

    @route("POST", "/digest", max_body=1 << 20, stream=True)
    def digest(self, req: Request) -> tuple[int, Any]:
        """A streamed body's length and SHA-256, and the query's repeated values."""
        h, total = hashlib.sha256(), 0
        while chunk := req.stream.read(int(req.query.get("n", "65536"))):
            h.update(chunk)
            total += len(chunk)
        return 200, {"length": total, "sha256": h.hexdigest(), "k": req.query_lists.get("k", [])}

    @route("POST", "/slow")
    def slow(self, req: Request) -> tuple[int, Any]:
        time.sleep(float(req.query.get("t", "1")))
        return 200, {"slept": True}

    @route("POST", "/block")
    def block(self, req: Request) -> tuple[int, Any]:
        self.started.append(req.query.get("n", ""))
        self.release.wait(30)
        return 200, {}

    @route("POST", "/things/(?P<ref>[^/]+)/start")
    def start(self, req: Request, ref: str) -> tuple[int, Any]:
        stdio = req.received_fds()
        if stdio:
            self.fds_seen = list(stdio)
            os.write(stdio[1], f"hello from {ref}\n".encode())
            for fd in stdio:
                os.close(fd)
        return 204, None

    @route("GET", "/bigreply")
    def bigreply(self, req: Request) -> tuple[int, Any]:
        return 200, Raw(b"x" * (4 << 20))

    @route("GET", "/ticks")
    def ticks(self, req: Request) -> tuple[int, Any]:
        def chunks() -> Iterator[bytes]:
            try:
                for n in range(int(req.query.get("n", "3"))):
                    yield f"tick {n}\n".encode()
                    time.sleep(float(req.query.get("pause", "0")))
            finally:
                self.started.append("ticks closed")

        return 200, Streamed(chunks(), "text/plain")

    @route("GET", "/quiet")
    def quiet(self, req: Request) -> tuple[int, Any]:
        def chunks() -> Iterator[bytes]:
            try:
                while True:
                    time.sleep(0.01)
                    yield b""  # nothing to say: the server looks whether the client is still there
            finally:
                self.started.append("quiet closed")

        return 200, Streamed(chunks(), "text/plain")

    @route("POST", "/greet-raw")
    def greet_raw(self, req: Request) -> tuple[int, Any]:
        return 101, Hijacked(lambda sock: sock.sendall(b"hi"))

    @route("POST", "/echo-raw")
    def echo_raw(self, req: Request) -> tuple[int, Any]:
        def run(sock: socket.socket) -> None:
            while data := sock.recv(4096):
                sock.sendall(data.upper())

        return 101, Hijacked(run)

    @route("GET", "/boom")
    def boom(self, req: Request) -> tuple[int, Any]:
        raise RuntimeError("a bug")

    @route("GET", "/refused")
    def refused(self, req: Request) -> tuple[int, Any]:
        raise InvalidParameter("no, thanks")


class Served:
    def __init__(self, root: Root, api: FakeApi, server: Server):
        self.root, self.api, self.server, self.path = root, api, server, root.socket

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.path)
        return sock

    def exchange(self, data: bytes, shut: bool = True) -> tuple[int, dict[str, str], bytes]:
        """Send ``data`` (then half-close), read to the end: status, headers, body.
        A reset or a hang fails the test."""
        with self.connect() as sock:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
            return read_answer(sock)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    raw = b""
    while chunk := sock.recv(65536):  # ConnectionResetError or TimeoutError would fail the test
        raw += chunk
    return parse_answer(raw)


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete answer: {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.0"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return int(status), headers, body


@pytest.fixture
def served(tmp_path, caplog) -> Iterator[Served]:
    caplog.set_level(logging.DEBUG, logger="qiao.api")
    root = Root.resolve(str(tmp_path))
    os.makedirs(root.run)
    api = FakeApi()
    server = Server(root.socket, api, workers=4, max_threads=8, long_request=60, read_timeout=READ_TIMEOUT, write_timeout=1)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Served(root, api, server)
    finally:
        api.release.set()
        server.shutdown()
        server.server_close()
    tracebacks = [r for r in caplog.records if r.exc_info and r.name.startswith("qiao")]
    assert not tracebacks or all("GET /boom" in r.getMessage() for r in tracebacks), tracebacks


def wait_until(what: str, check: Any, timeout: float = 5) -> None:
    """Poll ``check()`` until it is true (the machine may be busy with other tests)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def ping(served: Served) -> tuple[int, bytes]:
    status, _h, body = served.exchange(b"GET /_ping HTTP/1.0\r\n\r\n")
    return status, body


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.0\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


# -- well-formed requests ------------------------------------------------------


def test_streamed_body_is_chunked_for_http11_and_ends_at_close_for_http10(served):
    for version, expected in (
        (b"1.1", b"7\r\ntick 0\n\r\n7\r\ntick 1\n\r\n7\r\ntick 2\n\r\n0\r\n\r\n"),
        (b"1.0", b"tick 0\ntick 1\ntick 2\n"),
    ):
        with served.connect() as sock:
            sock.sendall(b"GET /ticks?n=3 HTTP/" + version + b"\r\nHost: x\r\n\r\n")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/" + version + b" 200 ") and b"content-length" not in head.lower()
        assert (b"transfer-encoding: chunked" in head.lower()) == (version == b"1.1")
        assert body == expected
        wait_until("the producer closed", lambda: "ticks closed" in served.api.started)
        served.api.started.remove("ticks closed")


def test_streamed_producer_learns_that_the_client_left(served):
    with served.connect() as sock:
        sock.sendall(b"GET /ticks?n=100000&pause=0.01 HTTP/1.1\r\n\r\n")
        assert b"tick 0" in sock.recv(65536) + sock.recv(65536)
    wait_until("the producer closed", lambda: "ticks closed" in served.api.started)


def test_streamed_producer_with_nothing_to_say_learns_that_the_client_left(served):
    with served.connect() as sock:
        sock.sendall(b"GET /quiet HTTP/1.0\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.0 200 ")
    wait_until("the producer closed", lambda: "quiet closed" in served.api.started)


def test_hijacked_output_waits_until_the_head_is_read(served):
    """docker-py reads the upgrade head through a buffered file, then the raw socket:
    bytes that came with the head would be lost to it."""
    with served.connect() as sock:
        sock.sendall(b"POST /greet-raw HTTP/1.1\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        time.sleep(0.2)
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 101 UPGRADED") and head.endswith(b"\r\n\r\n")
        assert sock.recv(65536) == b"hi"


@pytest.mark.parametrize("upgrade", [True, False])
def test_hijacked_connection_is_the_handlers(served, upgrade):
    with served.connect() as sock:
        extra = b"Connection: Upgrade\r\nUpgrade: tcp\r\n" if upgrade else b""
        sock.sendall(b"POST /echo-raw HTTP/1.1\r\nContent-Length: 0\r\n" + extra + b"\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += sock.recv(4096)
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 UPGRADED" if upgrade else b"HTTP/1.1 200 OK")
        assert (b"Upgrade: tcp" in head) == upgrade
        sock.sendall(b"hello")
        while len(rest) < 5:
            rest += sock.recv(4096)
        assert rest == b"HELLO"
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(4096) == b""


def test_ping_and_friends(served):
    assert ping(served) == (200, b"OK")
    with served.connect() as sock:
        sock.sendall(b"HEAD /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert raw.startswith(b"HTTP/1.0 200 OK\r\n") and raw.endswith(b"\r\n\r\n") and b"Content-Length: 2\r\n" in raw
    assert served.exchange(b"\r\n\r\nGET /_ping HTTP/1.0\r\n\r\n")[0] == 200  # empty lines first are ignored
    assert served.exchange(b"GET /_ping HTTP/1.0\n\n")[0] == 200  # bare LF
    assert served.exchange(b"GET /v1.47/_ping HTTP/1.1\r\nHost: x\r\nUser-Agent: curl\r\n\r\n")[0] == 200
    assert served.exchange(b"GET http://qiaod/_ping HTTP/1.1\r\n\r\n")[0] == 200  # absolute form
    status, headers, _ = served.exchange(b"GET /_ping HTTP/1.0\r\n\r\n")
    assert headers["connection"] == "close" and headers["api-version"] == "1.47"


def test_json_round_trip_and_path_decoding(served):
    status, _h, body = served.exchange(post("/echo", b'{"Name": "w\\u00e9b", "n": [1, 2]}'))
    assert (status, json.loads(body)) == (200, {"Name": "wéb", "n": [1, 2]})
    status, _h, body = served.exchange(b"GET /things/w%C3%A9b%2Fx?all=1&name=a%20b HTTP/1.0\r\n\r\n")
    assert (status, json.loads(body)) == (200, {"ref": "wéb/x", "query": {"all": "1", "name": "a b"}})
    assert served.exchange(b"GET /things/missing HTTP/1.0\r\n\r\n")[0] == 404


def test_the_cli_client_still_works(served):
    client = Client(served.root, autostart=False)
    assert client.request("GET", "/_ping") == b"OK"
    assert client.request("POST", "/echo", body={"a": "é"}) == {"a": "é"}
    assert client.request("POST", "/count", body="x" * 500_000) == {"length": 500_002}  # arrives in pieces


def test_expect_100_continue(served):
    with served.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        assert read_answer(sock)[0] == 200


def test_content_length_repeated_with_one_value(served):
    assert served.exchange(b"POST /count HTTP/1.0\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}")[0] == 200
    assert served.exchange(b"POST /count HTTP/1.0\r\nContent-Length: 2, 2\r\n\r\n{}")[0] == 200


# -- malformed requests: each gets its answer ---------------------------------

LONG_LINE = b"GET /" + b"a" * (MAX_REQUEST_LINE + 10) + b" HTTP/1.0\r\n\r\n"
MALFORMED = [
    # request line
    (b"GET /_ping\r\n\r\n", 400),  # HTTP/0.9
    (b"GET\r\n\r\n", 400),
    (b"GET  /_ping HTTP/1.0\r\n\r\n", 400),
    (b"GET /_ping HTTP/1.0 extra\r\n\r\n", 400),
    (b"GET /_ping  HTTP/1.0\r\n\r\n", 400),
    (b" GET /_ping HTTP/1.0\r\n\r\n", 400),
    (b"G(T /_ping HTTP/1.0\r\n\r\n", 400),
    (b"GET /_ping HTTP/1\r\n\r\n", 400),
    (b"GET /_ping http/1.0\r\n\r\n", 400),
    (b"GET /_ping FOO/1.0\r\n\r\n", 400),
    (b"GET /_ping HTTP/1.0\x00\r\n\r\n", 400),
    (b"GET /_ping HTTP/2.0\r\n\r\n", 505),
    (b"GET /_ping HTTP/0.9\r\n\r\n", 505),
    (b"GET _ping HTTP/1.0\r\n\r\n", 400),
    (b"GET * HTTP/1.0\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS hello
    (b"\xff\xfe\xfd\r\n\r\n", 400),
    (LONG_LINE, 414),
    # methods
    (b"get /_ping HTTP/1.0\r\n\r\n", 501),
    (b"BREW /_ping HTTP/1.0\r\n\r\n", 501),
    (b"PUT /_ping HTTP/1.0\r\n\r\n", 405),
    (b"DELETE /echo HTTP/1.0\r\n\r\n", 405),
    (b"OPTIONS /echo HTTP/1.0\r\n\r\n", 405),
    (b"PATCH /nowhere HTTP/1.0\r\n\r\n", 404),
    (b"BREW /nowhere HTTP/1.0\r\n\r\n", 501),
    # target
    (b"GET /things/\xff HTTP/1.0\r\n\r\n", 400),
    (b"GET /things/w\xc3\xa9b HTTP/1.0\r\n\r\n", 400),  # raw UTF-8: must be percent-encoded
    (b"GET /things/%ff HTTP/1.0\r\n\r\n", 400),
    (b"GET /things/%C3%28 HTTP/1.0\r\n\r\n", 400),
    (b"GET /things/%zz HTTP/1.0\r\n\r\n", 400),
    (b"GET /things/a% HTTP/1.0\r\n\r\n", 400),
    (b"GET /things/a?b=%ff HTTP/1.0\r\n\r\n", 400),
    (b"GET /things/a?" + b"&".join(b"k%d=1" % i for i in range(150)) + b" HTTP/1.0\r\n\r\n", 400),
    (b"GET /things/a\tb HTTP/1.0\r\n\r\n", 400),
    # headers
    (b"GET /_ping HTTP/1.0\r\nHost\r\n\r\n", 400),
    (b"GET /_ping HTTP/1.0\r\nHost : x\r\n\r\n", 400),
    (b"GET /_ping HTTP/1.0\r\n: x\r\n\r\n", 400),
    (b"GET /_ping HTTP/1.0\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET /_ping HTTP/1.0\r\nX-A: a\x01b\r\n\r\n", 400),
    (b"GET /_ping HTTP/1.0\r\nX-A: a\rb\r\n\r\n", 400),
    (b"GET /_ping HTTP/1.0\r\nX\xffA: b\r\n\r\n", 400),
    (b"GET /_ping HTTP/1.0\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n", 431),
    (b"GET /_ping HTTP/1.0\r\nX-Big: " + b"y" * (70 << 10) + b"\r\n\r\n", 431),
    (b"GET /_ping HTTP/1.0\r\nExpect: magic\r\n\r\n", 417),
    # Content-Length and bodies
    (b"POST /count HTTP/1.0\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /count HTTP/1.0\r\nContent-Length: abc\r\n\r\n", 400),
    (b"POST /count HTTP/1.0\r\nContent-Length: 1.5\r\n\r\n", 400),
    (b"POST /count HTTP/1.0\r\nContent-Length: +1\r\n\r\nx", 400),
    (b"POST /count HTTP/1.0\r\nContent-Length: 0x1\r\n\r\nx", 400),
    (b"POST /count HTTP/1.0\r\nContent-Length: \xd9\xa1\r\n\r\nx", 400),  # an Arabic-Indic 1
    (b"POST /count HTTP/1.0\r\nContent-Length: \xb2\r\n\r\nx", 400),  # latin-1 superscript 2
    (b"POST /count HTTP/1.0\r\nContent-Length:\r\n\r\n", 400),
    (b"POST /count HTTP/1.0\r\nContent-Length: 1, 2\r\n\r\nx", 400),
    (b"POST /count HTTP/1.0\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400),
    (b"POST /count HTTP/1.0\r\nContent-Length: 99999999999999999999999999\r\n\r\n", 413),
    (b"POST /count HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
    (b"POST /count HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411),
    (b"POST /count HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}", 411),
    (b"POST /count HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST /digest HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"POST /digest HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),  # chunked needs HTTP/1.1
    (b"POST /digest HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),  # smuggling
    (b"POST /count HTTP/1.0\r\nContent-Length: 10\r\n\r\n12345", 400),  # truncated body
    (b"GET /_ping HTTP/1.0\r\nHost: x\r\n", 400),  # truncated head
    (b"GET /_pi", 400),
    # JSON bodies
    (post("/echo", b"{"), 400),
    (post("/echo", b"[1, 2]"), 400),
    (post("/echo", b"null"), 400),
    (post("/echo", b'"x"'), 400),
    (post("/echo", b" "), 400),
    (post("/echo", b'{"a": NaN}'), 400),
    (post("/echo", b'{"a": Infinity}'), 400),
    (post("/echo", b'{"a": -Infinity}'), 400),
    (post("/echo", b'{"a": "\\ud800"}'), 400),
    (post("/echo", b'{"\\udfff": 1}'), 400),
    (post("/echo", b'{"a": "\xff"}'), 400),
    (post("/echo", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), 400),
    (post("/echo", b'{"a": ' + b"1" * 5000 + b"}"), 400),  # past Python's int digit limit
    (post("/echo", b"{'a': 1}"), 400),
    # handler refusals
    (b"GET /refused HTTP/1.0\r\n\r\n", 400),
    (b"POST /things/x/start HTTP/1.0\r\nX-Qiao-Stdio: 1\r\nContent-Length: 0\r\n\r\nF", 400),  # the byte without fds
]


@pytest.mark.parametrize("data, status", MALFORMED, ids=[f"{i}-{d[:24]!r}" for i, (d, _s) in enumerate(MALFORMED)])
def test_malformed_request_is_answered(served, caplog, data, status):
    got, headers, body = served.exchange(data)
    assert got == status, body
    assert headers["content-type"] == "application/json" and json.loads(body)["message"]
    if status == 405:
        assert "Allow" in body.decode() or headers["allow"]
    assert ping(served) == (200, b"OK")  # and the server is fine
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.mark.parametrize("data, status", [(d, s) for d, s in MALFORMED if s in (400, 413, 414, 431)][::5])
def test_malformed_request_answered_without_half_close(served, data, status):
    """A client that keeps its side open still gets the answer (and no reset)."""
    if data.endswith(b"\r\n\r\n") or status != 400:
        assert served.exchange(data, shut=False)[0] == status


def test_405_names_the_allowed_methods(served):
    status, headers, _ = served.exchange(b"PUT /_ping HTTP/1.0\r\n\r\n")
    assert (status, headers["allow"]) == (405, "GET, HEAD")


def test_body_over_the_cap_sent_in_full_gets_413_not_a_reset(served):
    """The client writes its whole 3 MiB before reading: the server drops it (lingering close) and the 413 arrives."""
    body = b"x" * (3 << 20)
    status, _h, msg = served.exchange(post("/count", body))
    assert status == 413 and b"1048576" in msg


def test_body_at_the_cap_is_fine(served):
    body = json.dumps({"a": "x" * (MAX_BODY - 9)}).encode()
    assert len(body) == MAX_BODY
    status, _h, answer = served.exchange(post("/count", body))
    assert (status, json.loads(answer)) == (200, {"length": MAX_BODY})


def test_cap_is_per_route(served):
    assert served.exchange(post("/big", b"x" * (3 << 20)))[0] == 200
    assert served.exchange(post("/big", b"x" * (5 << 20)))[0] == 413


def test_streamed_upload_under_its_own_cap(served):
    body = os.urandom(1 << 16) * 320  # 20 MiB, read by the handler as it arrives
    status, _h, answer = served.exchange(post("/upload", body))
    assert (status, json.loads(answer)) == (200, {"length": len(body)})
    assert served.exchange(post("/upload", b"").replace(b"Content-Length: 0", b"Content-Length: %d" % (65 << 20)))[0] == 413


def test_streamed_upload_cut_short_is_400(served):
    with served.connect() as sock:
        sock.sendall(b"POST /upload HTTP/1.0\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        sock.shutdown(socket.SHUT_WR)
        assert read_answer(sock)[0] == 400


def chunked(path: str, pieces: list[bytes], ext: bytes = b"", trailers: bytes = b"") -> bytes:
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces if p)
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + body + b"0\r\n" + trailers + b"\r\n"


@pytest.mark.parametrize("read_size", [1, 7, 65536])
def test_chunked_upload_is_decoded(served, read_size):
    """Docker's CLI sends image uploads chunked: chunks of any size, read in pieces of any size."""
    pieces = [os.urandom(n) for n in (1, 2, 15, 16, 255, 4096, 70_000, 3)]
    data = b"".join(pieces)
    status, _h, answer = served.exchange(chunked(f"/digest?n={read_size}&k=a&k=b", pieces))
    assert status == 200, answer
    assert json.loads(answer) == {"length": len(data), "sha256": hashlib.sha256(data).hexdigest(), "k": ["a", "b"]}


def test_chunked_upload_with_extensions_trailers_and_upper_case_hex(served):
    data = b"z" * 300
    raw = chunked("/digest", [data], ext=b" ;name=value;x", trailers=b"X-Sum: 1\r\nX-Other: 2\r\n").replace(b"12c", b"12C")
    status, _h, answer = served.exchange(raw)
    assert (status, json.loads(answer)["sha256"]) == (200, hashlib.sha256(data).hexdigest())
    assert served.exchange(chunked("/digest", []))[0] == 200  # an empty body: the last chunk only


def test_chunked_upload_sent_slowly_in_pieces(served):
    raw = chunked("/digest", [b"hello", b" world"])
    with served.connect() as sock:
        for i in range(0, len(raw), 3):
            sock.sendall(raw[i : i + 3])
            time.sleep(0.005)
        status, _h, answer = read_answer(sock)
    assert (status, json.loads(answer)["length"]) == (200, 11)


def test_chunked_upload_with_100_continue(served):
    with served.connect() as sock:
        sock.sendall(b"POST /digest HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"2\r\nhi\r\n0\r\n\r\n")
        assert read_answer(sock)[0] == 200


CHUNKED_MALFORMED = [
    (b"zz\r\nhi\r\n0\r\n\r\n", 400),  # not hex
    (b"\r\nhi\r\n0\r\n\r\n", 400),  # no size
    (b"-2\r\nhi\r\n0\r\n\r\n", 400),
    (b"0x2\r\nhi\r\n0\r\n\r\n", 400),
    (b"2\r\nhiXX0\r\n\r\n", 400),  # data not followed by CRLF
    (b"3\r\nhi\r\n0\r\n\r\n", 400),  # a chunk longer than said: its CRLF is off
    (b"1" * 17 + b"\r\n", 400),  # a size past 64 bits
    (b"2;" + b"e" * 5000 + b"\r\nhi\r\n0\r\n\r\n", 400),  # a size line past MAX_CHUNK_LINE
    (b"0\r\n" + b"X-T: 1\r\n" * 101 + b"\r\n", 400),  # too many trailers
    (b"100001\r\n" + b"x" * 10, 413),  # more than the route's cap, said up front
    (b"2\r\nhi\r\n", 400),  # the client closes before the last chunk
    (b"5\r\nhi", 400),  # ... or in the middle of one
]


@pytest.mark.parametrize("body, status", CHUNKED_MALFORMED, ids=[f"{i}-{b[:16]!r}" for i, (b, _s) in enumerate(CHUNKED_MALFORMED)])
def test_malformed_chunked_body_is_answered(served, caplog, body, status):
    raw = b"POST /digest HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    got, headers, answer = served.exchange(raw)
    assert got == status, answer
    assert json.loads(answer)["message"]
    assert ping(served) == (200, b"OK")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_chunked_upload_over_the_cap_in_many_chunks_is_413(served):
    pieces = [b"x" * 60_000] * 18  # 1.08 MB in chunks, over the route's 1 MiB
    assert served.exchange(chunked("/digest", pieces))[0] == 413


def test_chunked_upload_that_stalls_is_408(served):
    with served.connect() as sock:
        sock.sendall(b"POST /digest HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        status, _h, _b = read_answer(sock)
    assert status == 408


def test_client_that_connects_and_leaves_gets_nothing(served):
    sock = served.connect()
    sock.close()
    with served.connect() as sock:
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
    assert ping(served) == (200, b"OK")


# -- timeouts ------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"GET /_ping HTTP/1.0\r\n", b"POST /count HTTP/1.0\r\nContent-Length: 10\r\n\r\n12345"])
def test_slow_client_gets_408(served, data):
    start = time.monotonic()
    status, _h, _b = served.exchange(data, shut=False)
    assert status == 408
    assert READ_TIMEOUT <= time.monotonic() - start < READ_TIMEOUT + 2


def test_read_timeout_is_for_the_whole_request_not_each_read(served):
    """A byte every 0.1 s keeps each read short, but the request is still late."""
    start = time.monotonic()
    with served.connect() as sock:
        for byte in b"GET /_ping HTTP/1.0\r\nX-Slow: yes":
            try:
                sock.send(bytes([byte]))
            except BrokenPipeError:
                break
            time.sleep(0.1)
            if time.monotonic() - start > READ_TIMEOUT + 0.5:
                break
        assert read_answer(sock)[0] == 408
    assert time.monotonic() - start < READ_TIMEOUT + 1.5


def test_stdio_request_without_its_byte_times_out(served):
    status, _h, _b = served.exchange(b"POST /things/x/start HTTP/1.0\r\nX-Qiao-Stdio: 1\r\nContent-Length: 0\r\n\r\n", shut=False)
    assert status == 408


def test_long_handler_is_not_cut_by_the_read_timeout(served):
    status, _h, body = served.exchange(b"POST /slow?t=1.2 HTTP/1.0\r\nContent-Length: 0\r\n\r\n", shut=False)
    assert (status, json.loads(body)) == (200, {"slept": True})


def test_client_that_stops_reading_is_dropped_after_the_write_timeout(served, caplog):
    with served.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /bigreply HTTP/1.0\r\n\r\n")
        wait_until("the reply given up", lambda: [r for r in caplog.records if "went away" in r.getMessage()])
    assert [r.levelno for r in caplog.records if "went away" in r.getMessage()] == [logging.DEBUG]
    wait_until("the worker free", lambda: served.server.pool.stats()["busy"] == 0)
    assert ping(served) == (200, b"OK")


def test_slow_but_steady_reader_gets_the_whole_answer(served):
    """The write timeout is for a pause, not for the whole answer (4 MiB read over ~1 s)."""
    with served.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /bigreply HTTP/1.0\r\n\r\n")
        raw = b""
        start = time.monotonic()
        while chunk := sock.recv(64 << 10):
            raw += chunk
            time.sleep(0.025)
        assert time.monotonic() - start > 1  # longer than the server's write timeout
    status, _h, body = parse_answer(raw)
    assert (status, len(body)) == (200, 4 << 20)


# -- descriptors (X-Qiao-Stdio) ------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_stdio_fds_reach_the_handler(served):
    r, w = os.pipe()
    try:
        with served.connect() as sock:
            sock.sendall(b"POST /things/box/start HTTP/1.0\r\nX-Qiao-Stdio: 1\r\nContent-Length: 0\r\n\r\n")
            socket.send_fds(sock, [b"F"], [w, w, w])
            assert read_answer(sock)[0] == 204
        assert os.read(r, 100) == b"hello from box\n"
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("count, stdio", [(1, True), (5, True), (3, False), (16, False)])
def test_unexpected_fds_are_closed(served, count, stdio):
    r, w = os.pipe()
    before = open_fds()
    try:
        with served.connect() as sock:
            header = "X-Qiao-Stdio: 1\r\n" if stdio else ""
            sock.sendall(f"POST /things/box/start HTTP/1.0\r\n{header}Content-Length: {0 if stdio else 1}\r\n\r\n".encode())
            socket.send_fds(sock, [b"F"], [w] * count)
            status = read_answer(sock)[0]
        assert status == (400 if stdio else 204)
        os.close(w)
        w = -1
        assert os.read(r, 100) == b""  # every copy of the write end was closed by the server
        assert open_fds() == before - 1
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


# -- logging -------------------------------------------------------------------


def test_handler_errors_log_a_traceback_only_for_bugs(served, caplog):
    assert served.exchange(b"GET /refused HTTP/1.0\r\n\r\n")[0] == 400
    assert not [r for r in caplog.records if r.exc_info]
    status, _h, body = served.exchange(b"GET /boom HTTP/1.0\r\n\r\n")
    assert status == 500 and b"a bug" in body
    assert [r.getMessage() for r in caplog.records if r.exc_info] == ["GET /boom failed"]


def test_client_hanging_up_is_one_debug_line(served, caplog):
    with served.connect() as sock:
        sock.sendall(b"POST /slow?t=0.3 HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    wait_until("the hang-up noticed", lambda: [r for r in caplog.records if "went away" in r.getMessage()])
    assert ping(served)[0] == 200
    lines = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG and not lines[0].exc_info


# -- idle clients, the pool, the backlog --------------------------------------


def test_idle_connections_hold_no_threads(tmp_path):
    root = Root.resolve(str(tmp_path))
    os.makedirs(root.run)
    server = Server(root.socket, FakeApi(), read_timeout=30)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    idle = []
    try:
        for _ in range(500):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(root.socket)
            sock.send(b"GET /_pi")  # a head begun, never finished
            idle.append(sock)
        client = Client(root, autostart=False)
        assert client.request("GET", "/_ping") == b"OK"  # served while the 500 are held
        # The server's own threads (not the process's: other tests' threads may still be ending):
        assert server.stats()["threads"] <= 1  # the one worker that answered
        assert server.stats()["connections"] in (500, 501)  # the ping's, closed just now, may not be counted off yet
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()
        server.server_close()


def test_idle_clients_at_the_connection_cap_cannot_lock_others_out(tmp_path):
    """At the cap the oldest unfinished connection is dropped with a 503, so a new client is served."""
    root = Root.resolve(str(tmp_path))
    os.makedirs(root.run)
    server = Server(root.socket, FakeApi(), read_timeout=30, max_connections=50)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    idle = []
    try:
        for _ in range(60):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5)
            sock.connect(root.socket)
            sock.send(b"GET /_pi")
            idle.append(sock)
            time.sleep(0.002)  # each a little older than the next
        start = time.monotonic()
        assert Client(root, autostart=False).request("GET", "/_ping") == b"OK"
        assert time.monotonic() - start < 5  # served at once by eviction, not stuck behind the idle ones
        assert server.stats()["connections"] <= 50
        assert read_answer(idle[0])[0] == 503  # the oldest went first
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()
        server.server_close()


def test_pool_is_bounded_and_queues(served):
    socks = []
    try:
        for i in range(6):
            sock = served.connect()
            sock.sendall(f"POST /block?n={i} HTTP/1.0\r\nContent-Length: 0\r\n\r\n".encode())
            socks.append(sock)
        deadline = time.monotonic() + 5
        while served.server.pool.stats()["queued"] != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert served.server.pool.stats() == {"threads": 4, "idle": 0, "busy": 4, "queued": 2}
        assert len(served.api.started) == 4
        served.api.release.set()
        assert all(read_answer(sock)[0] == 200 for sock in socks)
        assert len(served.api.started) == 6
    finally:
        for sock in socks:
            sock.close()


def test_long_requests_do_not_starve_the_pool(tmp_path):
    """Four workers all in long requests (as `wait`): a fifth request still answers."""
    root = Root.resolve(str(tmp_path))
    os.makedirs(root.run)
    api = FakeApi()
    server = Server(root.socket, api, workers=4, max_threads=6, long_request=0.2)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    socks = []
    try:
        for i in range(4):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(root.socket)
            sock.sendall(f"POST /block?n={i} HTTP/1.0\r\nContent-Length: 0\r\n\r\n".encode())
            socks.append(sock)
        wait_until("four handlers running", lambda: len(api.started) == 4)
        time.sleep(0.3)  # now longer than long_request
        client = Client(root, autostart=False)
        start = time.monotonic()
        assert client.request("GET", "/_ping") == b"OK"
        assert time.monotonic() - start < 5  # by a new worker, not stuck until a blocked one ends
        for i in range(4, 10):  # beyond max_threads: they queue
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(root.socket)
            sock.sendall(f"POST /block?n={i} HTTP/1.0\r\nContent-Length: 0\r\n\r\n".encode())
            socks.append(sock)
        wait_until("six handlers running", lambda: len(api.started) == 6)
        time.sleep(0.3)  # and no seventh
        assert server.pool.stats()["threads"] == 6
        assert len(api.started) == 6
        api.release.set()
        for sock in socks:
            sock.settimeout(10)
            assert read_answer(sock)[0] == 200
        wait_until("the extra threads gone", lambda: server.pool.stats()["threads"] <= 4)  # once the queue is empty
    finally:
        api.release.set()
        for sock in socks:
            sock.close()
        server.shutdown()
        server.server_close()


def test_worker_pool_runs_every_job():
    pool = WorkerPool(size=3, max_threads=3, long_after=60)
    done: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> None:
        time.sleep(0.001)
        with lock:
            done.append(i)

    for i in range(200):
        pool.submit(lambda i=i: job(i))
    deadline = time.monotonic() + 10
    while len(done) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(done) == list(range(200))
    assert pool.stats()["threads"] <= 3
    pool.close()


def test_fifty_concurrent_clients(served):
    results: list[int] = []

    def one() -> None:
        results.append(served.exchange(b"GET /_ping HTTP/1.0\r\n\r\n", shut=False)[0])

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [200] * 50


def test_backlog_holds_many_connections_before_accept(tmp_path):
    """The listen backlog is at least SOMAXCONN (socketserver's was 5): 200
    connections made while nobody accepts all get in."""
    root = Root.resolve(str(tmp_path))
    os.makedirs(root.run)
    server = Server(root.socket, FakeApi())  # type: ignore[arg-type]
    socks = []
    try:
        for _ in range(200):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect(root.socket)  # BlockingIOError once the backlog is full
            socks.append(sock)
    finally:
        for sock in socks:
            sock.close()
        server.server_close()


# -- the head parser on its own ------------------------------------------------


def test_parse_head():
    head = parse_head(b"POST /x?y=1 HTTP/1.1\r\nContent-Length: 12\r\nX-Qiao-Stdio: 1\r\nA: 1\r\nA: 2")
    assert (head.method, head.target, head.version, head.length, head.stdio) == ("POST", "/x?y=1", (1, 1), 12, True)
    assert head.headers["a"] == "1, 2"
    assert parse_head(b"GET / HTTP/1.0").length == 0
