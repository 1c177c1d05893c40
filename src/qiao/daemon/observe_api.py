"""qiao's own routes for seeing the network: ``GET /qiao/topology`` (the
live picture as data), ``POST /qiao/trace`` (one traced probe), and
``POST /qiao/trace/watch``, the receiving host's side of a ``qiao lab trace``.

A mixin of :class:`qiao.daemon.api.Api`; the kernel readers are made on
first use (``observer``), so a daemon that is never asked pays nothing.

**The watch.** The kernel clears a packet's trace mark when it changes
namespace, so a probe another lab host sends is traced here only if this
host marks it too.  The watch is a conversation of JSON lines on the
connection qiaod hands over after the answer's head (``Hijacked``, as for
Docker's attach), and lives exactly as long as it::

    qiaod -> lab   {"Armed": true}                      the marking tables are in
    lab -> qiaod   {"Outcome": "...", "Detail": "..."}  the sender's trace is done: how its socket ended
    qiaod -> lab   {"hops": [...], "result": {...}, "seen": true}

The lab leaving at any point (done, interrupted, killed: the kernel closes
its socket) removes the tables at once, as does a lab that says nothing for
``WATCH_WAIT`` seconds; a qiaod killed meanwhile leaves them to its next
start, which deletes every ``qiao_trace_*`` table.  A connection, not a
watch id with an expiry: nothing to forget, nothing to time out but a
silent client.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from typing import Annotated, Any

import msgspec

from qiao.daemon.http import Hijacked, Request, route
from qiao.daemon.wire import Struct, decode
from qiao.engine.errors import InvalidParameter

log = logging.getLogger("qiao.trace")

WATCH_WAIT = 10.0  # s: the longest a watch waits for the lab to say how its probe ended
OUTCOMES = ("connected", "answered", "refused", "unreachable", "no-route", "silent", "error")


Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class TraceRequest(Struct):
    Source: str = ""
    Destination: str = ""
    SourcePort: Port = 0  # the probe's source port or echo id: a lab trace chooses it, so the receiving host's watch knows the probe


class WatchRequest(Struct):
    Destination: str = ""  # DST[:PORT][/tcp|udp], as the sending host's trace is given it
    SourcePort: Port = 0  # the probe's source port, or its echo id
    Source: str = ""  # how the sender is named in the result ("a on host1")


class SenderOutcome(Struct):
    Outcome: str = ""
    Detail: str = ""


class Observer:
    """The topology builder and the tracer, over the kernel's readers."""

    def __init__(self, engine: Any, tracing: Any = None, inventory: Any = None) -> None:
        from qiao.observe.topology import Topology
        from qiao.observe.tracer import Tracer

        if inventory is None:
            from qiao.kernel.inventory import LinuxInventory

            inventory = LinuxInventory()
        if tracing is None:
            from qiao.kernel.tracing import LinuxTracing

            tracing = LinuxTracing()
        self.tracer = Tracer(engine, tracing, inventory)
        self.topology = Topology(engine, inventory)


class ObserveApi:
    engine: Any
    observer: Observer | None = None
    _observer_lock = threading.Lock()

    def _observer(self) -> Observer:
        with self._observer_lock:
            if self.observer is None:
                self.observer = Observer(self.engine)
            return self.observer

    @route("GET", "/qiao/topology")
    def topology(self, req: Request) -> tuple[int, Any]:
        return 200, self._observer().topology.model()

    @route("POST", "/qiao/trace")
    def trace(self, req: Request) -> tuple[int, Any]:
        body: TraceRequest = decode(req.body, TraceRequest)
        if not body.Source or not body.Destination:
            raise InvalidParameter("a trace needs a Source and a Destination")
        return 200, self._observer().tracer.trace(body.Source, body.Destination, body.SourcePort)

    @route("POST", "/qiao/trace/watch")
    def trace_watch(self, req: Request) -> tuple[int, Any]:
        body: WatchRequest = decode(req.body, WatchRequest)
        if not body.Destination:
            raise InvalidParameter("a watch needs a Destination")
        observer = self._observer()
        expected = observer.tracer.expect(body.Source or "another host", body.Destination, body.SourcePort)
        return 101, Hijacked(lambda sock: watch(sock, observer.tracer, expected), "application/json")


def watch(sock: socket.socket, tracer: Any, expected: Any) -> None:
    """The watch's conversation (see the module's docstring), on the hijacked connection."""
    try:
        armed = tracer.tracing.watch(expected.match)
    except Exception as exc:
        log.warning("a trace watch could not be armed: %s", exc)
        _say(sock, {"message": f"cannot watch for the probe here: {exc}"})
        return
    said: SenderOutcome | None = None
    try:
        _say(sock, {"Armed": True})
        said = _hear(sock, armed, time.monotonic() + WATCH_WAIT)
        if said is not None:
            armed.read(0.03)  # events still in flight
    finally:
        armed.close()
    if said is not None:
        _say(sock, tracer.received(expected, tracer.tracing.seen(armed, said.Outcome, said.Detail)))


def _say(sock: socket.socket, value: Any) -> None:
    sock.sendall(json.dumps(value).encode() + b"\n")


def _hear(sock: socket.socket, armed: Any, deadline: float) -> SenderOutcome | None:
    """The lab's one line, reading the watch's events meanwhile (so that none
    overflow); None when the lab leaves, stays silent or says nonsense."""
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([sock, armed], [], [], left)
        if armed in ready:
            armed.read(0)
        if sock in ready:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
    try:
        said = msgspec.json.decode(data.split(b"\n", 1)[0], type=SenderOutcome)
    except msgspec.ValidationError as exc:
        _say(sock, {"message": f"invalid outcome: {exc}"})
        return None
    except msgspec.DecodeError:
        _say(sock, {"message": "invalid outcome: not JSON"})
        return None
    if said.Outcome not in OUTCOMES:
        _say(sock, {"message": f"invalid Outcome {said.Outcome!r}: one of {', '.join(OUTCOMES)}"})
        return None
    return said
