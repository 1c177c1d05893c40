"""HTTP/JSON over a unix socket, with Docker Engine API paths and bodies:
the route handlers.  The server itself (parsing, limits, workers) is in
``qiao.daemon.http``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from qiao import cni
from qiao.cni.service import CniService
from qiao.daemon import docker_json, wire
from qiao.daemon.explain_api import ExplainApi
from qiao.daemon.http import Request, route
from qiao.daemon.images_api import ImagesApi
from qiao.daemon.lifecycle_api import LifecycleRoutes, stop_signal, stop_timeout
from qiao.daemon.lists import ListRoutes
from qiao.daemon.observe_api import ObserveApi
from qiao.daemon.streams import StreamsApi
from qiao.daemon.system import SystemRoutes
from qiao.engine import signals
from qiao.engine.containers import StartFailed
from qiao.engine.engine import Engine
from qiao.engine.errors import InvalidParameter


class Api(SystemRoutes, ListRoutes, ObserveApi, ExplainApi, LifecycleRoutes, ImagesApi, StreamsApi):
    """The route handlers; each returns (status, body)."""

    def __init__(self, engine: Engine, shutdown: Callable[[], None]):
        self.engine = engine
        self.shutdown = shutdown
        self.cni_service = CniService(engine)

    @route("POST", "/qiao/shutdown")
    def stop_daemon(self, req: Request) -> tuple[int, Any]:
        req.after_reply = self.shutdown  # not before: the exiting daemon would cut this reply off
        return 200, {"Pid": os.getpid()}

    @route("POST", "/qiao/cni")
    def cni(self, req: Request) -> tuple[int, Any]:
        """The CNI plugin's requests (qiao.cni.plugin): a result or a CNI error object."""
        try:
            fd = req.received_fd()
        except InvalidParameter as exc:
            return 400, cni.error("", cni.INVALID_ENVIRONMENT, str(exc))
        try:
            return self.cni_service.handle(req.body, fd)
        finally:
            if fd is not None:
                os.close(fd)

    # -- containers ------------------------------------------------------

    @route("POST", "/containers/create")
    def container_create(self, req: Request) -> tuple[int, Any]:
        ctr = self.engine.containers.create(wire.container_spec(req.query.get("name"), req.body))
        return 201, {"Id": ctr.id, "Warnings": []}

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
        self.engine.containers.stop(ref, stop_timeout(req), stop_signal(req))
        return 204, None

    @route("POST", "/containers/(?P<ref>[^/]+)/kill")
    def container_kill(self, req: Request, ref: str) -> tuple[int, Any]:
        self.engine.containers.kill(ref, signals.parse(req.query.get("signal") or "SIGKILL"))
        return 204, None

    @route("DELETE", "/containers/(?P<ref>[^/]+)")
    def container_remove(self, req: Request, ref: str) -> tuple[int, Any]:
        self.engine.containers.remove(ref, req.flag("force"))
        return 204, None

    # -- networks --------------------------------------------------------

    def network_json(self, ref: str) -> dict[str, Any]:
        with self.engine.lock:
            net = self.engine.networks.get(ref)
            endpoints = self.engine.networks.endpoints_of(net.id)
            joined = {ep.owner for ep in endpoints}
            waiting = [  # created, never started: listed (dockerd lists none); see docker_json.network
                c
                for c in self.engine.containers.by_id.values()
                if c.status == "created" and c.id not in joined and any(a["network"] == net.id for a in c.attachments)
            ]
            return docker_json.network(net, endpoints, self.engine.containers.by_id, self.engine.attachments.shown_as(), waiting)

    @route("POST", "/networks/create")
    def network_create(self, req: Request) -> tuple[int, Any]:
        net = self.engine.networks.create(wire.network_spec(req.body))
        return 201, {"Id": net.id, "Warning": ""}

    @route("GET", "/networks/(?P<ref>[^/]+)")
    def network_inspect(self, req: Request, ref: str) -> tuple[int, Any]:
        return 200, self.network_json(ref)

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
