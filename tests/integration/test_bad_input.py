"""No input can hurt the daemon: a real qiaod's socket, driven with raw bytes.

Every malformed request (HTTP-level malformations, and JSON bodies or query
parameters with wrong types, unknown values, out-of-range numbers, non-ASCII
digits, newlines in names) must get a 4xx answer (or the HTTP layer's 501 or
505 for an unknown method, transfer coding or HTTP version): never a 500, a
reset or a hang. The daemon's state (``GET /containers/json?all=1``, ``GET /networks``
and each container's inspect) is the same before and after, and its log (at
debug level) holds no traceback. Then: idle connections do not exhaust the
daemon, and many clients at once all get in.

The HTTP layer (``daemon/http.py``) judges the framing; the bodies are checked
against typed schemas (``daemon/wire.py``), and their meaning by the engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import QIAO, RUN, Host

NET = f"{RUN}-bi"
SUBNET = "10.123.0"
RUNNING = "bi-run"  # a running container (sleep): kill and stop are aimed at it
CREATED = "bi-idle"  # created, never started: start and connect are aimed at it
MIB = 1 << 20


# -- talking to the socket -----------------------------------------------------


def socket_path(host: Host) -> str:
    return os.path.join(host.root, "run", "qiao.sock")


def exchange(host: Host, data: bytes, shut: bool = True, fds: list[int] | None = None, timeout: float = 20) -> tuple[int, bytes]:
    """Send ``data`` (then the fds, then half-close) and read the answer to its end.
    A reset (ConnectionResetError) or a hang (TimeoutError) fails the test."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path(host))
        sock.sendall(data)
        if fds is not None:
            socket.send_fds(sock, [b"F"], fds)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep and raw.startswith(b"HTTP/1.0 "), f"not an HTTP answer: {raw[:200]!r}"
    return int(head.split(b" ", 2)[1]), body


def call(host: Host, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = b"" if body is None else json.dumps(body).encode()
    status, answer = exchange(host, f"{method} {path} HTTP/1.0\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    try:
        return status, json.loads(answer) if answer else None
    except ValueError:
        return status, answer


def state(host: Host) -> dict[str, Any]:
    """What a refused request must leave as it was (without the clock-driven ``Status`` texts)."""
    status, ctrs = call(host, "GET", "/containers/json?all=1")
    assert status == 200, (status, ctrs)
    status, nets = call(host, "GET", "/networks")
    assert status == 200, (status, nets)
    inspected = {}
    for ctr in ctrs:
        ctr.pop("Status", None)
        ctr.pop("Created", None)
        inspected[ctr["Id"]] = call(host, "GET", f"/containers/{ctr['Id']}/json")[1]
    return {"containers": ctrs, "networks": nets, "inspect": inspected}


def restore(host: Host, before: dict[str, Any], case: Case, status: int, answer: bytes) -> None:
    """Undo what an accepted bad request did, so the next case starts from the same state."""
    line = case.data.split(b"\r\n", 1)[0]
    if (status < 400 or status >= 500) and (b"/kill" in line or b"/stop" in line):
        time.sleep(0.5)  # a wrongly accepted kill or stop: let the container's exit land first
    if status < 300 and b"/connect " in line:
        call(host, "POST", f"/networks/{NET}/disconnect", {"Container": CREATED, "Force": True})
    with contextlib.suppress(ValueError, TypeError, KeyError):
        made = json.loads(answer)["Id"]  # by its id: a bad container may break GET /containers/json
        call(host, "DELETE", f"/containers/{made}?force=1")
        call(host, "DELETE", f"/networks/{made}")
    known = {c["Id"] for c in before["containers"]}
    _status, ctrs = call(host, "GET", "/containers/json?all=1")
    for ctr in ctrs if isinstance(ctrs, list) else []:
        if ctr["Id"] not in known:
            call(host, "DELETE", f"/containers/{ctr['Id']}?force=1")
    nets = {n["Id"] for n in before["networks"]}
    for net in call(host, "GET", "/networks")[1]:
        if net["Id"] not in nets:
            call(host, "DELETE", f"/networks/{net['Id']}")
    for cid, was in before["inspect"].items():
        now = call(host, "GET", f"/containers/{cid}/json")[1]
        for name in set(now["NetworkSettings"]["Networks"]) - set(was["NetworkSettings"]["Networks"]):
            call(host, "POST", f"/networks/{name}/disconnect", {"Container": cid, "Force": True})
        for name in set(was["NetworkSettings"]["Networks"]) - set(now["NetworkSettings"]["Networks"]):
            call(host, "POST", f"/networks/{name}/connect", {"Container": cid})
        if was["State"]["Running"] and not now["State"]["Running"]:
            call(host, "POST", f"/containers/{cid}/start")


class Log:
    """The new part of the daemon's log since the last look."""

    def __init__(self, host: Host):
        self.path = os.path.join(host.root, "qiaod.test.log")
        self.pos = os.path.getsize(self.path)

    def new(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            text = f.read().decode(errors="replace")
        self.pos += len(text.encode(errors="replace"))
        return text


# -- the world the cases run in -------------------------------------------------


@pytest.fixture(scope="module")
def world(host: Host) -> Iterator[Host]:
    host.stop_daemon()
    host.start_daemon(args=["--debug"])  # a hang-up must not leave a traceback even at debug level
    try:
        host.qiao("network", "create", "--subnet", f"{SUBNET}.0/24", NET)
        host.run_d("--name", RUNNING, "--network", NET, "--", "sleep", "600")
        status, answer = call(host, "POST", f"/containers/create?name={CREATED}", {"Cmd": ["sleep", "600"]})
        assert status == 201, answer
        yield host
    finally:
        host.remove_containers()
        host.qiao("network", "rm", NET, check=False)


# -- the cases -------------------------------------------------------------------


@dataclass
class Case:
    id: str
    data: bytes
    shut: bool = True  # half-close after sending (a client that closes its side keeps reading)
    fds: int | None = None  # send this many copies of /dev/null's fd with one byte after the data
    status: int | None = None  # the exact 4xx expected, when the HTTP layer decides it


def raw(id: str, data: bytes, status: int | None = None, **kw: Any) -> Case:
    return Case("http-" + id, data, status=status, **kw)


def post(id: str, path: str, body: Any, status: int | None = None) -> Case:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Case(
        id, f"POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data, status=status
    )


def req(id: str, method: str, path: str, status: int | None = None) -> Case:
    return Case(id, f"{method} {path} HTTP/1.0\r\n\r\n".encode(), status=status)


HTTP_CASES = [
    # request line
    raw("empty-lines-only", b"\r\n\r\n\r\n", 400),
    raw("http09", b"GET /_ping\r\n\r\n", 400),
    raw("method-only", b"GET\r\n\r\n", 400),
    raw("two-spaces", b"GET  /containers/json HTTP/1.0\r\n\r\n", 400),
    raw("trailing-word", b"GET /containers/json HTTP/1.0 please\r\n\r\n", 400),
    raw("leading-space", b" GET /_ping HTTP/1.0\r\n\r\n", 400),
    raw("bad-method-token", b"G(T /_ping HTTP/1.0\r\n\r\n", 400),
    raw("method-with-nul", b"GE\x00T /_ping HTTP/1.0\r\n\r\n", 400),
    raw("version-no-minor", b"GET /_ping HTTP/1\r\n\r\n", 400),
    raw("version-lowercase", b"GET /_ping http/1.0\r\n\r\n", 400),
    raw("version-other-proto", b"GET /_ping SPDY/1.0\r\n\r\n", 400),
    raw("version-2", b"GET /_ping HTTP/2.0\r\n\r\n", 505),
    raw("version-0.9", b"GET /_ping HTTP/0.9\r\n\r\n", 505),
    raw("version-garbage", b"GET /_ping HTTP/1.0x\r\n\r\n", 400),
    raw("nul-in-line", b"GET /_ping HTTP/1.0\x00\r\n\r\n", 400),
    raw("relative-target", b"GET containers/json HTTP/1.0\r\n\r\n", 400),
    raw("asterisk-target", b"OPTIONS * HTTP/1.0\r\n\r\n", 400),
    raw("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(32) + b"\r\n\r\n", 400),
    raw("binary-junk", bytes(range(256)) + b"\r\n\r\n", 400),
    raw("ssh-banner", b"SSH-2.0-OpenSSH_9.2\r\n\r\n", 400),
    raw("request-line-9k", b"GET /containers/" + b"a" * 9000 + b"/json HTTP/1.0\r\n\r\n", 414),
    raw("request-line-1m-no-newline", b"GET /" + b"a" * MIB, 414),
    raw("query-9k", b"GET /containers/json?all=" + b"1" * 9000 + b" HTTP/1.0\r\n\r\n", 414),
    # methods
    raw("lowercase-method", b"get /containers/json HTTP/1.0\r\n\r\n", 501),
    raw("unknown-method", b"BREW /containers/json HTTP/1.0\r\n\r\n", 501),
    raw("unknown-method-nowhere", b"BREW /teapot HTTP/1.0\r\n\r\n", 501),
    raw("put-on-get-route", b"PUT /containers/json HTTP/1.0\r\n\r\n", 405),
    raw("patch-container", b"PATCH /containers/bi-run HTTP/1.0\r\n\r\n", 405),
    raw("get-on-post-route", b"GET /containers/create HTTP/1.0\r\n\r\n", 405),
    raw("delete-on-post-route", b"DELETE /networks/create HTTP/1.0\r\n\r\n", None),  # a network named "create": 404
    raw("options", b"OPTIONS /containers/json HTTP/1.0\r\n\r\n", 405),
    raw("trace", b"TRACE /_ping HTTP/1.0\r\n\r\n", 405),
    raw("connect", b"CONNECT /_ping HTTP/1.0\r\n\r\n", 405),
    raw("unknown-path", b"GET /volumes HTTP/1.0\r\n\r\n", 404),
    raw("post-shutdown-as-get", b"GET /qiao/shutdown HTTP/1.0\r\n\r\n", 405),
    # the target's encoding
    raw("raw-0xff-in-path", b"GET /containers/\xff/json HTTP/1.0\r\n\r\n", 400),
    raw("raw-utf8-in-path", b"GET /containers/w\xc3\xa9b/json HTTP/1.0\r\n\r\n", 400),
    raw("pct-ff-in-path", b"GET /containers/%ff/json HTTP/1.0\r\n\r\n", 400),
    raw("pct-overlong-utf8", b"GET /containers/%c0%af/json HTTP/1.0\r\n\r\n", 400),
    raw("pct-surrogate-utf8", b"GET /containers/%ed%a0%80/json HTTP/1.0\r\n\r\n", 400),
    raw("pct-truncated-utf8", b"GET /networks/%e2%82 HTTP/1.0\r\n\r\n", 400),
    raw("pct-not-hex", b"GET /containers/%zz/json HTTP/1.0\r\n\r\n", 400),
    raw("pct-at-end", b"GET /networks/ab% HTTP/1.0\r\n\r\n", 400),
    raw("pct-ff-in-query", b"GET /containers/json?all=%ff HTTP/1.0\r\n\r\n", 400),
    raw("pct-ff-in-query-key", b"GET /containers/json?%ff=1 HTTP/1.0\r\n\r\n", 400),
    raw("pct-bad-in-query", b"POST /containers/create?name=%g0 HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}", 400),
    raw("many-query-params", b"GET /containers/json?" + b"&".join(b"k%d=1" % i for i in range(200)) + b" HTTP/1.0\r\n\r\n", 400),
    raw("tab-in-target", b"GET /containers/a\tb/json HTTP/1.0\r\n\r\n", 400),
    raw("del-in-target", b"GET /containers/a\x7fb/json HTTP/1.0\r\n\r\n", 400),
    # headers
    raw("header-no-colon", b"GET /_ping HTTP/1.0\r\nHost\r\n\r\n", 400),
    raw("header-space-before-colon", b"GET /_ping HTTP/1.0\r\nHost : qiaod\r\n\r\n", 400),
    raw("header-empty-name", b"GET /_ping HTTP/1.0\r\n: qiaod\r\n\r\n", 400),
    raw("header-folded", b"GET /_ping HTTP/1.0\r\nHost: a\r\n  b\r\n\r\n", 400),
    raw("header-ctl", b"GET /_ping HTTP/1.0\r\nX-A: a\x01b\r\n\r\n", 400),
    raw("header-cr", b"GET /_ping HTTP/1.0\r\nX-A: a\rb\r\n\r\n", 400),
    raw("header-nul", b"GET /_ping HTTP/1.0\r\nX-A: a\x00b\r\n\r\n", 400),
    raw("header-name-8bit", b"GET /_ping HTTP/1.0\r\nX\xffA: b\r\n\r\n", 400),
    raw("headers-too-many", b"GET /_ping HTTP/1.0\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n", 431),
    raw("header-70k", b"GET /_ping HTTP/1.0\r\nX-Big: " + b"y" * (70 << 10) + b"\r\n\r\n", 431),
    raw("headers-1m-never-ending", b"GET /_ping HTTP/1.0\r\n" + b"X-Y: z\r\n" * 1 + b"X-Big: " + b"y" * MIB, 431),
    raw("expect-unknown", b"GET /_ping HTTP/1.0\r\nExpect: magic\r\n\r\n", 417),
    # Content-Length and Transfer-Encoding
    raw("cl-negative", b"POST /containers/create HTTP/1.0\r\nContent-Length: -1\r\n\r\n", 400),
    raw("cl-word", b"POST /containers/create HTTP/1.0\r\nContent-Length: two\r\n\r\n{}", 400),
    raw("cl-float", b"POST /containers/create HTTP/1.0\r\nContent-Length: 2.0\r\n\r\n{}", 400),
    raw("cl-plus", b"POST /containers/create HTTP/1.0\r\nContent-Length: +2\r\n\r\n{}", 400),
    raw("cl-hex", b"POST /containers/create HTTP/1.0\r\nContent-Length: 0x2\r\n\r\n{}", 400),
    raw("cl-arabic-indic-digit", "POST /containers/create HTTP/1.0\r\nContent-Length: ٢\r\n\r\n{}".encode(), 400),
    raw("cl-superscript-latin1", b"POST /containers/create HTTP/1.0\r\nContent-Length: \xb2\r\n\r\n{}", 400),
    raw("cl-fullwidth", "POST /containers/create HTTP/1.0\r\nContent-Length: ２\r\n\r\n{}".encode(), 400),
    raw("cl-empty", b"POST /containers/create HTTP/1.0\r\nContent-Length:\r\n\r\n", 400),
    raw("cl-list-differs", b"POST /containers/create HTTP/1.0\r\nContent-Length: 2, 3\r\n\r\n{} ", 400),
    raw("cl-twice-differs", b"POST /containers/create HTTP/1.0\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{} ", 400),
    raw("cl-huge", b"POST /containers/create HTTP/1.0\r\nContent-Length: 99999999999999999999999999999\r\n\r\n", 413),
    raw("cl-over-cap", b"POST /containers/create HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % (MIB + 1), 413),
    raw("body-over-cap-sent", b"POST /networks/create HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % (2 * MIB) + b" " * (2 * MIB), 413),
    raw("body-over-cap-json", post("x", "/containers/create", {"Cmd": ["true"], "Env": ["A=" + "x" * MIB]}).data, 413),
    raw("chunked", b"POST /containers/create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411),
    raw("chunked-and-cl", b"POST /containers/create HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}", 411),
    raw("chunked-uppercase", b"POST /networks/create HTTP/1.1\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n", 411),
    raw("te-gzip", b"POST /containers/create HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    raw("body-truncated", b'POST /containers/create HTTP/1.0\r\nContent-Length: 100\r\n\r\n{"Cmd": ["true"]}', 400),
    raw("body-truncated-networks", b'POST /networks/create HTTP/1.0\r\nContent-Length: 50\r\n\r\n{"Name": "x"}', 400),
    raw("head-truncated", b"POST /containers/create HTTP/1.0\r\nContent-Len", 400),
    raw("line-truncated", b"GET /containers/js", 400),
    # JSON that is not a JSON object
    post("json-empty-object-string", "/containers/create", b"{", 400),
    post("json-array", "/containers/create", b'[{"Cmd": ["true"]}]', 400),
    post("json-null", "/containers/create", b"null", 400),
    post("json-string", "/networks/create", b'"bi-x"', 400),
    post("json-number", "/networks/create", b"1", 400),
    post("json-whitespace", "/networks/create", b"   ", 400),
    post("json-single-quotes", "/containers/create", b"{'Cmd': ['true']}", 400),
    post("json-trailing-comma", "/containers/create", b'{"Cmd": ["true"],}', 400),
    post("json-nan", "/containers/create", b'{"Cmd": ["true"], "StopTimeout": NaN}', 400),
    post("json-infinity", "/networks/create", b'{"Name": "bi-x", "Internal": Infinity}', 400),
    post("json-lone-surrogate", "/containers/create", b'{"Cmd": ["\\ud800"]}', 400),
    post("json-lone-surrogate-key", "/networks/create", b'{"Name": "bi-x", "Labels": {"\\udfff": "1"}}', 400),
    post("json-invalid-utf8", "/networks/create", b'{"Name": "bi-\xff"}', 400),
    post("json-latin1", "/networks/create", b'{"Name": "bi-\xe9"}', 400),
    post("json-deep", "/containers/create", b'{"Cmd": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", 400),
    post("json-huge-int", "/containers/create", b'{"Cmd": ["true"], "X": ' + b"9" * 10_000 + b"}", 400),
    post("json-garbage-after", "/networks/create", b'{"Name": "bi-x"} {}', 400),
    # fds (X-Qiao-Stdio) on start
    Case("stdio-byte-without-fds", b"POST /containers/bi-idle/start HTTP/1.0\r\nX-Qiao-Stdio: 1\r\nContent-Length: 0\r\n\r\nF", status=400),
    Case("stdio-one-fd", b"POST /containers/bi-idle/start HTTP/1.0\r\nX-Qiao-Stdio: 1\r\nContent-Length: 0\r\n\r\n", fds=1, status=400),
    Case("stdio-five-fds", b"POST /containers/bi-idle/start HTTP/1.0\r\nX-Qiao-Stdio: 1\r\nContent-Length: 0\r\n\r\n", fds=5, status=400),
    Case(
        "stdio-twenty-fds", b"POST /containers/bi-idle/start HTTP/1.0\r\nX-Qiao-Stdio: 1\r\nContent-Length: 0\r\n\r\n", fds=20, status=400
    ),
    Case("fds-on-create", b"POST /containers/create HTTP/1.0\r\nX-Qiao-Stdio: 1\r\nContent-Length: 2\r\n\r\n{}", fds=3, status=400),
]

C = "/containers/create"
N = "/networks/create"
CONNECT = f"/networks/{NET}/connect"


def create(id: str, patch: dict[str, Any], name: str = "bi-new") -> Case:
    return post("create-" + id, f"{C}?name={name}", {"Cmd": ["sleep", "1"], **patch})


def host_config(id: str, patch: dict[str, Any]) -> Case:
    return create("hostconfig-" + id, {"HostConfig": patch})


def net(id: str, patch: dict[str, Any]) -> Case:
    return post("network-" + id, N, {"Name": "bi-newnet", **patch})


def ipam(id: str, config: Any) -> Case:
    return net("ipam-" + id, {"IPAM": {"Driver": "default", "Config": config}})


def connect(id: str, body: Any) -> Case:
    return post("connect-" + id, CONNECT, body)


def endpoint(id: str, cfg: Any) -> Case:
    return connect("endpoint-" + id, {"Container": CREATED, "EndpointConfig": cfg})


CREATE_CASES = [
    create("cmd-ints", {"Cmd": [1, 2]}),
    create("cmd-int", {"Cmd": 5}),
    create("cmd-object", {"Cmd": {"a": 1}}),
    create("cmd-null-item", {"Cmd": [None]}),
    create("cmd-nested", {"Cmd": [["sleep", "1"]]}),
    create("cmd-bool", {"Cmd": True}),
    create("cmd-mixed", {"Cmd": ["sleep", 1]}),
    create("cmd-float", {"Cmd": ["sleep", 1.5]}),
    create("cmd-nul", {"Cmd": ["sleep\x00", "1"]}),
    create("env-string", {"Env": "A=1"}),
    create("env-object", {"Env": {"A": "1"}}),
    create("env-int-item", {"Env": [1]}),
    create("env-null-item", {"Env": [None]}),
    create("env-nested", {"Env": [["A=1"]]}),
    create("env-nul", {"Env": ["A=1\x00B=2"]}),
    create("hostname-int", {"Hostname": 5}),
    create("hostname-list", {"Hostname": ["bi"]}),
    create("hostname-newline", {"Hostname": "bi\nhost"}),
    create("hostname-trailing-newline", {"Hostname": "bihost\n"}),
    create("hostname-space", {"Hostname": "bi host"}),
    create("hostname-slash", {"Hostname": "bi/host"}),
    create("hostname-leading-dash", {"Hostname": "-bihost"}),
    create("hostname-300", {"Hostname": "h" * 300}),
    create("hostname-nul", {"Hostname": "bi\x00host"}),
    create("hostname-unicode", {"Hostname": "bï"}),
    create("name-newline", {}, name="bi%0Anew"),
    create("name-trailing-newline", {}, name="binew%0A"),
    create("name-slash", {}, name="bi%2Fnew"),
    create("name-space", {}, name="bi%20new"),
    create("name-dot", {}, name=".."),
    create("name-unicode", {}, name="b%C3%AF"),
    create("name-nul", {}, name="bi%00new"),
    create("name-taken", {}, name=RUNNING),
    create("exposed-list", {"ExposedPorts": [80]}),
    create("exposed-string", {"ExposedPorts": "80/tcp"}),
    create("exposed-word", {"ExposedPorts": {"http/tcp": {}}}),
    create("exposed-arabic-indic", {"ExposedPorts": {"٨٠/tcp": {}}}),
    create("exposed-fullwidth", {"ExposedPorts": {"８０/tcp": {}}}),
    create("exposed-devanagari", {"ExposedPorts": {"८०/tcp": {}}}),
    create("exposed-70000", {"ExposedPorts": {"70000/tcp": {}}}),
    create("exposed-zero", {"ExposedPorts": {"0/tcp": {}}}),
    create("exposed-negative", {"ExposedPorts": {"-80/tcp": {}}}),
    create("exposed-proto", {"ExposedPorts": {"80/icmp": {}}}),
    create("exposed-trailing-newline", {"ExposedPorts": {"80/tcp\n": {}}}),
    create("exposed-range-backwards", {"ExposedPorts": {"90-80/tcp": {}}}),
    create("networkingconfig-string", {"NetworkingConfig": "bridge"}),
    create("networkingconfig-list", {"NetworkingConfig": {"EndpointsConfig": ["bridge"]}}),
    create("endpointsconfig-string", {"NetworkingConfig": {"EndpointsConfig": {"bridge": "x"}}}),
    create("endpointsconfig-unknown-net", {"NetworkingConfig": {"EndpointsConfig": {"nosuchnet": {}}}}),
    create("aliases-string", {"HostConfig": {"NetworkMode": NET}, "NetworkingConfig": {"EndpointsConfig": {NET: {"Aliases": "web"}}}}),
    create("aliases-int", {"HostConfig": {"NetworkMode": NET}, "NetworkingConfig": {"EndpointsConfig": {NET: {"Aliases": [5]}}}}),
    create("aliases-newline", {"HostConfig": {"NetworkMode": NET}, "NetworkingConfig": {"EndpointsConfig": {NET: {"Aliases": ["a\nb"]}}}}),
    create(
        "ipv4-int",
        {"HostConfig": {"NetworkMode": NET}, "NetworkingConfig": {"EndpointsConfig": {NET: {"IPAMConfig": {"IPv4Address": 5}}}}},
    ),
    create(
        "ipv4-octet-999",
        {
            "HostConfig": {"NetworkMode": NET},
            "NetworkingConfig": {"EndpointsConfig": {NET: {"IPAMConfig": {"IPv4Address": f"{SUBNET}.999"}}}},
        },
    ),
    create(
        "ipv4-arabic-indic",
        {"HostConfig": {"NetworkMode": NET}, "NetworkingConfig": {"EndpointsConfig": {NET: {"IPAMConfig": {"IPv4Address": "١٠.١٢٣.٠.٥"}}}}},
    ),
    create(
        "ipv4-outside",
        {"HostConfig": {"NetworkMode": NET}, "NetworkingConfig": {"EndpointsConfig": {NET: {"IPAMConfig": {"IPv4Address": "10.9.9.9"}}}}},
    ),
    create("ipamconfig-string", {"HostConfig": {"NetworkMode": NET}, "NetworkingConfig": {"EndpointsConfig": {NET: {"IPAMConfig": "x"}}}}),
    create("mac-int", {"HostConfig": {"NetworkMode": NET}, "NetworkingConfig": {"EndpointsConfig": {NET: {"MacAddress": 5}}}}),
    create(
        "mac-bad", {"HostConfig": {"NetworkMode": NET}, "NetworkingConfig": {"EndpointsConfig": {NET: {"MacAddress": "zz:zz:zz:zz:zz:zz"}}}}
    ),
    create(
        "mac-newline",
        {"HostConfig": {"NetworkMode": NET}, "NetworkingConfig": {"EndpointsConfig": {NET: {"MacAddress": "02:42:ac:11:00:02\n"}}}},
    ),
    host_config("string", "bridge"),  # type: ignore[arg-type]
    host_config("list", []),  # type: ignore[arg-type]
    host_config("networkmode-int", {"NetworkMode": 5}),
    host_config("networkmode-list", {"NetworkMode": ["bridge"]}),
    host_config("networkmode-unknown", {"NetworkMode": "nosuchnet"}),
    host_config("networkmode-newline", {"NetworkMode": "host\n"}),
    host_config("networkmode-container-empty", {"NetworkMode": "container:"}),
    host_config("networkmode-container-unknown", {"NetworkMode": "container:nosuch"}),
    host_config("autoremove-string", {"AutoRemove": "yes"}),
    host_config("autoremove-int", {"AutoRemove": 2}),
    host_config("publishall-string", {"PublishAllPorts": "no"}),
    host_config("links-string", {"Links": "bi-run"}),
    host_config("links-int", {"Links": [5]}),
    host_config("links-unknown", {"Links": ["nosuch"]}),
    host_config("links-alias-newline", {"Links": [f"{RUNNING}:a\nb"]}),
    host_config("portbindings-string", {"PortBindings": "80:80"}),
    host_config("portbindings-list", {"PortBindings": [{"80/tcp": []}]}),
    host_config("portbindings-value-string", {"PortBindings": {"80/tcp": "8080"}}),
    host_config("portbindings-value-null-item", {"PortBindings": {"80/tcp": [None]}}),
    host_config("portbindings-value-list-item", {"PortBindings": {"80/tcp": [["8080"]]}}),
    host_config("hostport-arabic-indic", {"PortBindings": {"80/tcp": [{"HostPort": "٨٠٨٠"}]}}),
    host_config("hostport-fullwidth", {"PortBindings": {"80/tcp": [{"HostPort": "８０８０"}]}}),
    host_config("hostport-superscript", {"PortBindings": {"80/tcp": [{"HostPort": "²"}]}}),
    host_config("hostport-65536", {"PortBindings": {"80/tcp": [{"HostPort": "65536"}]}}),
    host_config("hostport-huge", {"PortBindings": {"80/tcp": [{"HostPort": "9" * 30}]}}),
    host_config("hostport-negative", {"PortBindings": {"80/tcp": [{"HostPort": "-1"}]}}),
    host_config("hostport-int-negative", {"PortBindings": {"80/tcp": [{"HostPort": -1}]}}),
    host_config("hostport-float", {"PortBindings": {"80/tcp": [{"HostPort": 80.5}]}}),
    host_config("hostport-exponent", {"PortBindings": {"80/tcp": [{"HostPort": "8e3"}]}}),
    host_config("hostport-space", {"PortBindings": {"80/tcp": [{"HostPort": " 8080"}]}}),
    host_config("hostport-newline", {"PortBindings": {"80/tcp": [{"HostPort": "8080\n"}]}}),
    host_config("hostport-range-backwards", {"PortBindings": {"80/tcp": [{"HostPort": "9000-8000"}]}}),
    host_config("hostip-bad", {"PortBindings": {"80/tcp": [{"HostIp": "999.1.1.1", "HostPort": "8080"}]}}),
    host_config("hostip-int", {"PortBindings": {"80/tcp": [{"HostIp": 5, "HostPort": "8080"}]}}),
    host_config("hostip-arabic-indic", {"PortBindings": {"80/tcp": [{"HostIp": "١٢٧.٠.٠.١", "HostPort": "8080"}]}}),
    host_config("hostip-newline", {"PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1\n", "HostPort": "8080"}]}}),
    host_config("containerport-arabic-indic", {"PortBindings": {"٨٠/tcp": [{"HostPort": "8080"}]}}),
    host_config("containerport-zero", {"PortBindings": {"0/tcp": [{"HostPort": "8080"}]}}),
    host_config("containerport-70000", {"PortBindings": {"70000/tcp": [{"HostPort": "8080"}]}}),
    host_config("containerport-proto", {"PortBindings": {"80/xdp": [{"HostPort": "8080"}]}}),
]

NETWORK_CASES = [
    net("name-int", {"Name": 5}),
    net("name-list", {"Name": ["bi"]}),
    net("name-null", {"Name": None}),
    net("name-empty", {"Name": ""}),
    net("name-newline", {"Name": "bi\nnet"}),
    net("name-trailing-newline", {"Name": "binet\n"}),
    net("name-slash", {"Name": "bi/net"}),
    net("name-space", {"Name": "bi net"}),
    net("name-nul", {"Name": "bi\x00net"}),
    net("name-300", {"Name": "n" * 300}),
    net("name-unicode", {"Name": "bï-net"}),
    net("name-taken", {"Name": NET}),
    net("name-predefined", {"Name": "bridge"}),
    net("driver-int", {"Driver": 5}),
    net("driver-unknown", {"Driver": "macvlan"}),
    net("driver-list", {"Driver": ["bridge"]}),
    net("driver-newline", {"Driver": "bridge\n"}),
    net("driver-host", {"Driver": "host"}),
    net("driver-overlay-without-store", {"Driver": "overlay"}),
    net("ipam-string", {"IPAM": "default"}),
    net("ipam-list", {"IPAM": ["default"]}),
    ipam("config-string", "10.124.0.0/24"),
    ipam("config-object", {"Subnet": "10.124.0.0/24"}),
    ipam("config-int-item", [5]),
    ipam("config-null-item", [None]),
    ipam("subnet-int", [{"Subnet": 5}]),
    ipam("subnet-word", [{"Subnet": "ten"}]),
    ipam("subnet-prefix-33", [{"Subnet": "10.124.0.0/33"}]),
    ipam("subnet-prefix-negative", [{"Subnet": "10.124.0.0/-1"}]),
    ipam("subnet-host-bits", [{"Subnet": "10.124.0.1/24"}]),
    ipam("subnet-octet-256", [{"Subnet": "10.124.256.0/24"}]),
    ipam("subnet-arabic-indic", [{"Subnet": "١٠.١٢٤.٠.٠/٢٤"}]),
    ipam("subnet-fullwidth-prefix", [{"Subnet": "10.124.0.0/２４"}]),
    ipam("subnet-newline", [{"Subnet": "10.124.0.0/24\n"}]),
    ipam("subnet-overlaps", [{"Subnet": f"{SUBNET}.0/24"}]),
    ipam("subnet-prefix-32", [{"Subnet": "10.124.0.0/32"}]),
    ipam("subnet-two-v4", [{"Subnet": "10.124.0.0/24"}, {"Subnet": "10.125.0.0/24"}]),
    ipam("gateway-int", [{"Subnet": "10.124.0.0/24", "Gateway": 1}]),
    ipam("gateway-outside", [{"Subnet": "10.124.0.0/24", "Gateway": "10.125.0.1"}]),
    ipam("gateway-word", [{"Subnet": "10.124.0.0/24", "Gateway": "gw"}]),
    ipam("gateway-broadcast", [{"Subnet": "10.124.0.0/24", "Gateway": "10.124.0.255"}]),
    ipam("gateway-arabic-indic", [{"Subnet": "10.124.0.0/24", "Gateway": "١٠.١٢٤.٠.١"}]),
    ipam("iprange-outside", [{"Subnet": "10.124.0.0/24", "IPRange": "10.125.0.0/25"}]),
    ipam("iprange-int", [{"Subnet": "10.124.0.0/24", "IPRange": 5}]),
    ipam("iprange-bigger", [{"Subnet": "10.124.0.0/24", "IPRange": "10.124.0.0/16"}]),
    net("options-string", {"Options": "mtu=1400"}),
    net("options-list", {"Options": ["a=b"]}),
    net("options-int-value", {"Options": {"com.docker.network.driver.mtu": 1400}}),
    net("mtu-word", {"Options": {"com.docker.network.driver.mtu": "big"}}),
    net("mtu-negative", {"Options": {"com.docker.network.driver.mtu": "-1"}}),
    net("mtu-huge", {"Options": {"com.docker.network.driver.mtu": "99999999"}}),
    net("mtu-arabic-indic", {"Options": {"com.docker.network.driver.mtu": "١٤٠٠"}}),
    net("mtu-tiny", {"Options": {"com.docker.network.driver.mtu": "10"}}),
    net("bridge-name-newline", {"Options": {"com.docker.network.bridge.name": "bi\nbr"}}),
    net("bridge-name-too-long", {"Options": {"com.docker.network.bridge.name": "b" * 20}}),
    net("bridge-name-slash", {"Options": {"com.docker.network.bridge.name": "bi/br"}}),
    net("bridge-name-int", {"Options": {"com.docker.network.bridge.name": 5}}),
    net("labels-string", {"Labels": "a=b"}),
    net("labels-list", {"Labels": ["a=b"]}),
    net("labels-int-value", {"Labels": {"a": 5}}),
    net("internal-string", {"Internal": "no"}),
    net("attachable-int", {"Attachable": 7}),
    net("enableipv6-string", {"EnableIPv6": "false"}),
    net("enableipv6-without-v6-subnet", {"EnableIPv6": True, "IPAM": {"Config": [{"Subnet": "10.124.0.0/24"}]}}),
    ipam("subnet6-bad", [{"Subnet": "fd00::/129"}]),
    ipam("subnet6-word", [{"Subnet": "fd00::zz/64"}]),
]

CONNECT_CASES = [
    connect("container-int", {"Container": 123456789}),  # not 5: as "5" it may be a prefix of some id
    connect("container-list", {"Container": [CREATED]}),
    connect("container-null", {"Container": None}),
    connect("container-unknown", {"Container": "nosuch"}),
    connect("container-newline", {"Container": CREATED + "\n"}),
    connect("body-list", [CREATED]),
    endpoint("string", "x"),
    endpoint("list", []),
    endpoint("int", 5),
    endpoint("aliases-string", {"Aliases": "web"}),
    endpoint("aliases-int", {"Aliases": 5}),
    endpoint("aliases-int-item", {"Aliases": [5]}),
    endpoint("aliases-newline", {"Aliases": ["we\nb"]}),
    endpoint("aliases-unicode", {"Aliases": ["wéb"]}),
    endpoint("ipamconfig-string", {"IPAMConfig": "x"}),
    endpoint("ipamconfig-list", {"IPAMConfig": []}),
    endpoint("ipv4-int", {"IPAMConfig": {"IPv4Address": 5}}),
    endpoint("ipv4-octet-999", {"IPAMConfig": {"IPv4Address": f"{SUBNET}.999"}}),
    endpoint("ipv4-outside", {"IPAMConfig": {"IPv4Address": "10.9.9.9"}}),
    endpoint("ipv4-arabic-indic", {"IPAMConfig": {"IPv4Address": "١٠.١٢٣.٠.٧"}}),
    endpoint("ipv4-newline", {"IPAMConfig": {"IPv4Address": f"{SUBNET}.7\n"}}),
    endpoint("ipv4-network-address", {"IPAMConfig": {"IPv4Address": f"{SUBNET}.0"}}),
    endpoint("ipv6-word", {"IPAMConfig": {"IPv6Address": "fd00::zz"}}),
    endpoint("mac-bad", {"MacAddress": "02:42"}),
    endpoint("mac-int", {"MacAddress": 2}),
    post("connect-unknown-network", "/networks/nosuchnet/connect", {"Container": CREATED}),
    post("connect-network-newline", "/networks/bi%0Anet/connect", {"Container": CREATED}),
    post("disconnect-not-connected", f"/networks/{NET}/disconnect", {"Container": CREATED}),
    post("disconnect-container-int", f"/networks/{NET}/disconnect", {"Container": 123456789}),
    post("disconnect-body-list", f"/networks/{NET}/disconnect", [CREATED]),
]

# Not "": an empty signal or t is Docker's default. Percent-encoded, as a client sends them.
KILL_SIGNALS = {
    "zero": "0",
    "negative": "-1",
    "past-sigrtmax": "65",
    "huge": "99999999999999999999",
    "unknown-name": "SIGFOO",
    "trailing-newline": "KILL%0A",
    "devanagari-9": "%E0%A5%AF",
    "arabic-indic-15": "%D9%A1%D9%A5",
    "superscript-2": "%C2%B2",
    "float": "9.0",
    "space": "SIG%20KILL",
    "nul": "%00",
}
STOP_TIMEOUTS = {
    "word": "abc",
    "float": "1.5",
    "nan": "nan",
    "inf": "inf",
    "minus-inf": "-inf",
    "float-overflow": "1e400",
    "arabic-indic-10": "%D9%A1%D9%A0",
    "fullwidth-1": "%EF%BC%91",
    "trailing-garbage": "10abc",
    "hex": "0x10",
    "huge": "99999999999999999999",
    "leading-newline": "%0A10",
}
QUERY_CASES = [
    *(req(f"kill-signal-{name}", "POST", f"/containers/{RUNNING}/kill?signal={value}") for name, value in KILL_SIGNALS.items()),
    *(req(f"stop-t-{name}", "POST", f"/containers/{RUNNING}/stop?t={value}") for name, value in STOP_TIMEOUTS.items()),
    req("kill-unknown-container", "POST", "/containers/nosuch/kill?signal=TERM"),
    req("kill-created-container", "POST", f"/containers/{CREATED}/kill"),
    req("rm-running-without-force", "DELETE", f"/containers/{RUNNING}?force=maybe"),
    req("rm-unknown", "DELETE", "/containers/nosuch"),
    req("rm-network-predefined", "DELETE", "/networks/bridge"),
    req("rm-network-in-use", "DELETE", f"/networks/{NET}"),
    req("inspect-unknown", "GET", "/containers/nosuch/json"),
    req("inspect-newline", "GET", "/containers/bi-run%0A/json"),
    req("logs-unknown", "GET", "/containers/nosuch/logs"),
    req("wait-unknown", "POST", "/containers/nosuch/wait"),
    req("start-unknown", "POST", "/containers/nosuch/start"),
    req("network-inspect-unknown", "GET", "/networks/nosuch"),
]

CASES = HTTP_CASES + CREATE_CASES + NETWORK_CASES + CONNECT_CASES + QUERY_CASES


def params() -> list[Any]:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids are unique"
    return [pytest.param(c, id=c.id) for c in CASES]


def test_there_are_enough_cases():
    assert len(CASES) >= 200


@pytest.mark.parametrize("case", params())
def test_malformed_request_is_refused(world: Host, case: Case):
    before = state(world)
    log = Log(world)
    fds = None
    try:
        if case.fds is not None:
            null = os.open(os.devnull, os.O_RDONLY)
            fds = [null] * case.fds
        status, answer = exchange(world, case.data, shut=case.shut, fds=fds)
    finally:
        if fds:
            os.close(fds[0])
    try:
        if case.status:
            assert status == case.status, answer
        # 4xx; or 501/505, the HTTP layer's deliberate answers to an unknown method, transfer coding or HTTP version
        assert 400 <= status < 500 or status in (501, 505), (status, answer)
        assert json.loads(answer)["message"], answer
        assert state(world) == before
    finally:
        restore(world, before, case, status, answer)
        text = log.new()
        assert "Traceback" not in text, text


def test_regression_cmd_of_numbers_is_refused(make_host):
    """``{"Cmd": [1, 2]}`` was accepted, and then ``ps -a`` failed for everyone, even after a restart."""
    host = make_host("cmd")
    status, answer = call(host, "POST", "/containers/create?name=numbers", {"Cmd": [1, 2]})
    try:
        assert status == 400, answer
        host.qiao("ps", "-a")
        host.stop_daemon()
        host.start_daemon()
        host.qiao("ps", "-a")
    finally:
        call(host, "DELETE", "/containers/numbers?force=1")


# -- slow and idle clients, many clients ---------------------------------------


def qiaod_pid(host: Host) -> int:
    return call(host, "GET", "/info")[1]["Pid"]


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_slow_clients_get_408_within_the_read_timeout(world: Host):
    """Nothing sent, half a head, half a body: each gets 408 after 10 s (all at once, in parallel)."""
    log = Log(world)
    partial = [b"", b"GET /containers/json HTTP/1.0\r\nHost: x", b'POST /containers/create HTTP/1.0\r\nContent-Length: 50\r\n\r\n{"Cmd"']
    results: list[tuple[bytes, int, float]] = []

    def one(data: bytes) -> None:
        start = time.monotonic()
        status, _ = exchange(world, data, shut=False, timeout=30)
        results.append((data, status, time.monotonic() - start))

    threads = [threading.Thread(target=one, args=(d,)) for d in partial]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert sorted(r[1] for r in results) == [408, 408, 408], results
    assert all(9 < r[2] < 13 for r in results), results
    assert "Traceback" not in log.new()


def test_long_requests_are_not_cut_by_the_read_timeout(world: Host):
    """``wait`` and ``stop -t`` run longer than the 10 s read timeout: they are answered, not 408."""
    made = []
    try:
        made.append(world.run_d("--", "sleep", "12"))
        start = time.monotonic()
        status, answer = call(world, "POST", f"/containers/{made[0]}/wait")
        assert (status, answer["StatusCode"]) == (200, 0)
        assert time.monotonic() - start > 10
        made.append(world.run_d("--", "sh", "-c", "trap '' TERM; sleep 60"))
        start = time.monotonic()
        assert call(world, "POST", f"/containers/{made[1]}/stop?t=11")[0] == 204
        assert time.monotonic() - start > 10.5
    finally:
        if made:
            world.qiao("rm", "-f", *made, check=False)


def test_a_client_hanging_up_is_one_debug_line(world: Host):
    log = Log(world)
    cid = world.run_d("--", "sleep", "1")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(socket_path(world))
            sock.sendall(f"POST /containers/{cid}/wait HTTP/1.0\r\n\r\n".encode())
        time.sleep(2)
        assert call(world, "GET", "/_ping")[0] == 200
        text = log.new()
        assert "Traceback" not in text
        assert [line for line in text.splitlines() if "went away" in line and "DEBUG" in line], text
    finally:
        world.qiao("rm", "-f", cid, check=False)


def test_idle_connections_do_not_exhaust_the_daemon(world: Host):
    """500 connections that send nothing: a normal request still answers within a second,
    and they hold no thread of qiaod's (only an fd each)."""
    pid = qiaod_pid(world)
    threads_before, fds_before = threads_of(pid), fds_of(pid)
    idle: list[socket.socket] = []
    try:
        for _ in range(500):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(socket_path(world))
            idle.append(sock)
        time.sleep(0.3)
        start = time.monotonic()
        assert call(world, "GET", "/containers/json?all=1")[0] == 200
        elapsed = time.monotonic() - start
        proc = world.qiao("ps", "-a", check=False)
        threads_held, fds_held = threads_of(pid) - threads_before, fds_of(pid) - fds_before
    finally:
        for sock in idle:
            sock.close()
    print(f"\n500 idle connections: {threads_held} more threads, {fds_held} more fds in qiaod; a request took {elapsed * 1000:.1f} ms")
    assert elapsed < 5  # not held up by them (the read timeout, 10 s, would be the first release)
    assert proc.returncode == 0, proc.stderr
    assert threads_held <= 4
    assert 500 <= fds_held <= 510


def test_fifty_concurrent_connects(world: Host):
    results: list[Any] = []

    def one() -> None:
        try:
            results.append(call(world, "GET", "/containers/json?all=1")[0])
        except OSError as exc:
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200] * 50


def test_parallel_cli_run_and_rm(world: Host):
    """Docker's bug report: 17 parallel ``rm -f`` gave 9 "Cannot connect" (a backlog of 5)."""
    names = [f"bi-par{i}" for i in range(17)]
    procs = [
        world.popen(
            QIAO, "--root", world.root, "run", "-d", "--name", n, "--", "sleep", "600", stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for n in names
    ]
    try:
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0] * 17, outs
        procs = [world.popen(QIAO, "--root", world.root, "rm", "-f", n, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in names]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0] * 17, outs
    finally:
        world.qiao("rm", "-f", *names, check=False)


def test_max_concurrent_connections(world: Host):
    """How many connections qiaod holds open at once (reported; at least 2000)."""
    pid = qiaod_pid(world)
    socks: list[socket.socket] = []
    try:
        for _ in range(2000):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5)
            sock.connect(socket_path(world))
            socks.append(sock)
        time.sleep(0.5)
        held = fds_of(pid)
        assert call(world, "GET", "/_ping")[0] == 200
    finally:
        for sock in socks:
            sock.close()
    print(f"\n2000 connections open at once; qiaod holds {held} fds")
