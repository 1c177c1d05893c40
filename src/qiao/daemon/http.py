"""qiaod's HTTP server: requests over a unix socket, routed to ``Api``'s methods.

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
import socket
import socketserver
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from qiao.engine.errors import InvalidParameter, QiaoError

if TYPE_CHECKING:
    from qiao.daemon.api import Api

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
