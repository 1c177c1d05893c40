"""qiao's own routes for seeing the network: ``GET /qiao/topology`` (the
live picture as data), ``POST /qiao/trace`` (one traced probe), and the
watches a ``qiao lab trace`` puts on the other hosts of a lab
(``POST /qiao/trace/watches``, ``DELETE /qiao/trace/watches/{id}``).

A mixin of :class:`qiao.daemon.api.Api`; the kernel readers are made on
first use (``observer``), so a daemon that is never asked pays nothing.
"""

from __future__ import annotations

import threading
from typing import Any

from qiao.daemon.http import Request, route
from qiao.daemon.wire import Struct, decode
from qiao.engine.errors import InvalidParameter


class TraceRequest(Struct):
    Source: str = ""
    Destination: str = ""
    SourcePort: int = 0  # a lab trace chooses it, so the other hosts' watches know the probe


class WatchRequest(Struct):
    Protocol: str = "tcp"
    SourcePort: int = 0
    DestinationPort: int = 0
    Ident: int = 0
    Seconds: float = 5.0


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
        if not 0 <= body.SourcePort <= 65535:
            raise InvalidParameter(f"invalid SourcePort {body.SourcePort}")
        return 200, self._observer().tracer.trace(body.Source, body.Destination, body.SourcePort)

    @route("POST", "/qiao/trace/watches")
    def trace_watch(self, req: Request) -> tuple[int, Any]:
        body: WatchRequest = decode(req.body, WatchRequest)
        if body.Protocol not in ("tcp", "udp", "icmp"):
            raise InvalidParameter(f"invalid Protocol {body.Protocol!r}: tcp, udp or icmp")
        for name, value in (("SourcePort", body.SourcePort), ("DestinationPort", body.DestinationPort), ("Ident", body.Ident)):
            if not 0 <= value <= 65535:
                raise InvalidParameter(f"invalid {name} {value}")
        if not 0 < body.Seconds <= 30:
            raise InvalidParameter("Seconds must be more than 0 and at most 30")
        token = self._observer().tracer.watch(body.Protocol, body.SourcePort, body.DestinationPort, body.Ident, body.Seconds)
        return 201, {"Id": token}

    @route("DELETE", "/qiao/trace/watches/(?P<token>[0-9a-f]{1,64})")
    def trace_collect(self, req: Request, token: str) -> tuple[int, Any]:
        return 200, self._observer().tracer.collect(token)
