"""HTTP/JSON over a unix socket, with Docker Engine API paths and bodies.

``POST /containers/{id}/start`` with the header ``X-Qiao-Stdio: 1`` is
followed by one byte carrying the client's stdin, stdout and stderr
(SCM_RIGHTS): the container then writes straight to the caller's terminal,
with no copying through the daemon (qiao's equivalent of Docker's attach).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import socketserver
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from qiao import __version__
from qiao.daemon import docker_json, wire
from qiao.engine.containers import StartFailed
from qiao.engine.engine import Engine
from qiao.engine.errors import InvalidParameter, QiaoError

log = logging.getLogger("qiao.api")
API_VERSION = "1.47"

Handler = Callable[..., Any]
ROUTES: list[tuple[str, re.Pattern[str], str]] = []


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ROUTES.append((method, re.compile("^" + pattern + "$"), fn.__name__))
        return fn

    return register


class Raw(bytes):
    """A response body sent as is (logs)."""


class Api:
    """The route handlers; each returns (status, body)."""

    def __init__(self, engine: Engine, shutdown: Callable[[], None]):
        self.engine = engine
        self.shutdown = shutdown

    @route("GET", "/_ping")
    def ping(self, req: Request) -> tuple[int, Any]:
        return 200, Raw(b"OK")

    @route("GET", "/version")
    def version(self, req: Request) -> tuple[int, Any]:
        return 200, {"Version": __version__, "ApiVersion": API_VERSION, "Os": "linux", "Arch": os.uname().machine}

    @route("GET", "/info")
    def info(self, req: Request) -> tuple[int, Any]:
        ctrs = self.engine.containers.by_id.values()
        return 200, {
            "ID": "qiaod",
            "Containers": len(ctrs),
            "ContainersRunning": sum(1 for c in ctrs if c.running),
            "Networks": len(self.engine.networks.by_id),
            "Pid": os.getpid(),
            "DataRoot": self.engine.root.data,
            "RunRoot": self.engine.root.run,
            "ServerVersion": __version__,
            "QiaoDrivers": {d.name: d.status() for d in self.engine.drivers},
        }

    @route("POST", "/qiao/shutdown")
    def stop_daemon(self, req: Request) -> tuple[int, Any]:
        req.after_reply = self.shutdown  # not before: the exiting daemon would cut this reply off
        return 200, {"Pid": os.getpid()}

    # -- containers ------------------------------------------------------

    @route("POST", "/containers/create")
    def container_create(self, req: Request) -> tuple[int, Any]:
        ctr = self.engine.containers.create(wire.container_spec(req.query.get("name"), req.body))
        return 201, {"Id": ctr.id, "Warnings": []}

    @route("GET", "/containers/json")
    def container_list(self, req: Request) -> tuple[int, Any]:
        return 200, [docker_json.container_summary(v) for v in self.engine.containers.views(req.flag("all"))]

    @route("GET", "/containers/(?P<ref>[^/]+)/json")
    def container_inspect(self, req: Request, ref: str) -> tuple[int, Any]:
        return 200, docker_json.container(self.engine.containers.inspect(ref))

    @route("POST", "/containers/(?P<ref>[^/]+)/start")
    def container_start(self, req: Request, ref: str) -> tuple[int, Any]:
        stdio = req.received_fds()
        try:
            self.engine.containers.start(ref, stdio)
        except StartFailed as exc:
            return exc.status, {"message": str(exc), "ExitCode": exc.exit_code}
        finally:
            for fd in stdio or ():
                os.close(fd)
        return 204, None

    @route("POST", "/containers/(?P<ref>[^/]+)/stop")
    def container_stop(self, req: Request, ref: str) -> tuple[int, Any]:
        self.engine.containers.stop(ref, req.number("t", 10))
        return 204, None

    @route("POST", "/containers/(?P<ref>[^/]+)/kill")
    def container_kill(self, req: Request, ref: str) -> tuple[int, Any]:
        name = req.query.get("signal", "SIGKILL").upper()
        try:
            sig = int(name) if name.isascii() and name.isdigit() else signal.Signals[name if name.startswith("SIG") else "SIG" + name]
        except KeyError:
            raise InvalidParameter(f"invalid signal: {name}") from None
        if not 0 < sig <= signal.SIGRTMAX:  # as Docker: no 0 (a no-op) and nothing the kernel would refuse
            raise InvalidParameter(f"invalid signal: {name}")
        self.engine.containers.kill(ref, sig)
        return 204, None

    @route("POST", "/containers/(?P<ref>[^/]+)/wait")
    def container_wait(self, req: Request, ref: str) -> tuple[int, Any]:
        return 200, {"StatusCode": self.engine.containers.wait(ref), "Error": None}

    @route("GET", "/containers/(?P<ref>[^/]+)/logs")
    def container_logs(self, req: Request, ref: str) -> tuple[int, Any]:
        return 200, Raw(self.engine.containers.logs(ref))

    @route("DELETE", "/containers/(?P<ref>[^/]+)")
    def container_remove(self, req: Request, ref: str) -> tuple[int, Any]:
        self.engine.containers.remove(ref, req.flag("force"))
        return 204, None

    # -- networks --------------------------------------------------------

    def _network_json(self, ref: str) -> dict[str, Any]:
        with self.engine.lock:
            net = self.engine.networks.get(ref)
            return docker_json.network(net, self.engine.networks.endpoints_of(net.id), self.engine.containers.by_id)

    @route("GET", "/networks")
    def network_list(self, req: Request) -> tuple[int, Any]:
        with self.engine.lock:
            nets = sorted(self.engine.networks.by_id.values(), key=lambda n: n.created)
            return 200, [self._network_json(n.id) for n in nets]

    @route("POST", "/networks/create")
    def network_create(self, req: Request) -> tuple[int, Any]:
        net = self.engine.networks.create(wire.network_spec(req.body))
        return 201, {"Id": net.id, "Warning": ""}

    @route("POST", "/networks/prune")
    def network_prune(self, req: Request) -> tuple[int, Any]:
        return 200, {"NetworksDeleted": self.engine.networks.prune()}

    @route("GET", "/networks/(?P<ref>[^/]+)")
    def network_inspect(self, req: Request, ref: str) -> tuple[int, Any]:
        return 200, self._network_json(ref)

    @route("DELETE", "/networks/(?P<ref>[^/]+)")
    def network_remove(self, req: Request, ref: str) -> tuple[int, Any]:
        self.engine.networks.remove(ref)
        return 204, None

    @route("POST", "/networks/(?P<ref>[^/]+)/connect")
    def network_connect(self, req: Request, ref: str) -> tuple[int, Any]:
        container, settings = wire.network_connect(req.body)
        self.engine.containers.connect(container, ref, settings)
        return 200, None

    @route("POST", "/networks/(?P<ref>[^/]+)/disconnect")
    def network_disconnect(self, req: Request, ref: str) -> tuple[int, Any]:
        container, force = wire.network_disconnect(req.body)
        self.engine.containers.disconnect(container, ref, force)
        return 200, None


class Request:
    def __init__(self, handler: RequestHandler, query: dict[str, str], body: bytes):
        self._handler = handler
        self.query = query
        self.body = body
        self.after_reply: Callable[[], None] | None = None

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body or b"{}")
        except ValueError:
            raise InvalidParameter("request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise InvalidParameter("request body must be a JSON object")
        return data

    def number(self, name: str, default: int) -> int:
        """A non-negative whole number in the query (ASCII digits only: ``int()`` would take any script's)."""
        text = self.query.get(name)
        if text is None or text == "":
            return default
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise InvalidParameter(f"invalid value for {name}: {text!r} is not a whole number of seconds")
        return int(text)

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("1", "true", "yes")

    def received_fds(self) -> tuple[int, int, int] | None:
        if self._handler.headers.get("X-Qiao-Stdio") != "1":
            return None
        _msg, fds, _flags, _addr = socket.recv_fds(self._handler.connection, 1, 3)
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            raise InvalidParameter("expected three file descriptors (stdin, stdout, stderr)")
        return fds[0], fds[1], fds[2]


class RequestHandler(BaseHTTPRequestHandler):
    rbufsize = 0  # unbuffered: the start request's SCM_RIGHTS byte must stay in the socket
    api: Api

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = re.sub(r"^/v[0-9.]+(?=/)", "", url.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self._read_body(length)
        status: int
        payload: Any
        req = Request(self, query, body)
        for verb, pattern, name in ROUTES:
            match = pattern.match(path)
            if verb == method and match:
                # Matched while still encoded, so a %2F stays inside its segment; then decoded.
                args = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items()}
                try:
                    status, payload = getattr(self.api, name)(req, **args)
                except QiaoError as exc:
                    status, payload = exc.status, {"message": str(exc)}
                except Exception as exc:
                    log.exception("%s %s failed", method, path)
                    status, payload = 500, {"message": f"internal error: {exc}"}
                break
        else:
            status, payload = 404, {"message": f"page not found: {method} {path}"}
        self._reply(status, payload)
        if req.after_reply:
            threading.Thread(target=req.after_reply, daemon=True).start()

    def _read_body(self, length: int) -> bytes:
        """All ``length`` bytes: ``rfile`` is unbuffered, so one read returns
        only what has arrived yet (a large ``-p`` range's body is cut short)."""
        body = bytearray()
        while len(body) < length:
            chunk = self.rfile.read(length - len(body))
            if not chunk:
                break
            body += chunk
        return bytes(body)

    def _reply(self, status: int, payload: Any) -> None:
        if isinstance(payload, Raw):
            data, ctype = bytes(payload), "text/plain; charset=utf-8"
        elif payload is None:
            data, ctype = b"", "application/json"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Api-Version", API_VERSION)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, api: Api):
        handler = type("BoundHandler", (RequestHandler,), {"api": api})
        super().__init__(path, handler)
