"""Routes for a container's life beyond create/start/stop/kill/rm: restart,
rename, top, stats, pause/unpause and prune (:mod:`qiao.engine.lifecycle`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from qiao.daemon import docker_stats
from qiao.daemon.filters import Prune
from qiao.daemon.http import Request, Streamed, route
from qiao.engine import signals
from qiao.engine.containers import ContainerView
from qiao.engine.errors import InvalidParameter, NotFound
from qiao.engine.models import Container
from qiao.engine.stats import Sample

if TYPE_CHECKING:
    from qiao.engine.engine import Engine

STATS_INTERVAL = 1.0  # seconds between samples, as dockerd's collector


def stop_timeout(req: Request) -> int | None:
    """``t`` of stop and restart: seconds before SIGKILL, -1 to wait for ever; None: the container's own."""
    if req.query.get("t", "") == "":
        return None
    return -1 if req.query["t"] == "-1" else req.number("t", 10)


def stop_signal(req: Request) -> int | None:
    """``signal`` of stop and restart (API 1.42); None: the container's ``--stop-signal``."""
    text = req.query.get("signal", "")
    return signals.parse(text) if text else None


def prune_filter(text: str | None) -> Callable[[ContainerView], bool]:
    """The ``filters`` of ``POST /containers/prune`` (``until``, ``label``, ``label!``), as dockerd's."""
    rule = Prune.parse(text, time.time_ns())
    return lambda view: rule.matches(view.container.labels, view.container.created)


class LifecycleRoutes:
    """Mixed into ``qiao.daemon.api.Api``."""

    engine: Engine

    @route("POST", "/containers/(?P<ref>[^/]+)/restart")
    def container_restart(self, req: Request, ref: str) -> tuple[int, Any]:
        self.engine.lifecycle.restart(ref, stop_timeout(req), stop_signal(req))
        return 204, None

    @route("POST", "/containers/(?P<ref>[^/]+)/rename")
    def container_rename(self, req: Request, ref: str) -> tuple[int, Any]:
        if "name" not in req.query:
            raise InvalidParameter("missing the new name: POST /containers/{id}/rename?name=NAME")
        self.engine.lifecycle.rename(ref, req.query["name"])
        return 204, None

    @route("GET", "/containers/(?P<ref>[^/]+)/top")
    def container_top(self, req: Request, ref: str) -> tuple[int, Any]:
        titles, rows = self.engine.lifecycle.top(ref, req.query.get("ps_args", ""))
        return 200, {"Titles": titles, "Processes": rows}

    @route("POST", "/containers/(?P<ref>[^/]+)/pause")
    def container_pause(self, req: Request, ref: str) -> tuple[int, Any]:
        self.engine.lifecycle.pause(ref)
        return 204, None

    @route("POST", "/containers/(?P<ref>[^/]+)/unpause")
    def container_unpause(self, req: Request, ref: str) -> tuple[int, Any]:
        self.engine.lifecycle.unpause(ref)
        return 204, None

    @route("POST", "/containers/prune")
    def container_prune(self, req: Request) -> tuple[int, Any]:
        deleted = self.engine.lifecycle.prune(prune_filter(req.query.get("filters")))
        return 200, {"ContainersDeleted": deleted or None, "SpaceReclaimed": 0}

    @route("GET", "/containers/(?P<ref>[^/]+)/stats")
    def container_stats(self, req: Request, ref: str) -> tuple[int, Any]:
        """``stream=false``: one object, its CPU figures over a second (``one-shot``:
        at once, with no previous figures); else one object per second until the client leaves."""
        stream = req.flag("stream", default=True)
        one_shot = req.flag("one-shot")
        if stream and one_shot:
            raise InvalidParameter("cannot have stream=true and one-shot=true")
        ctr, first = self.engine.lifecycle.stats(ref)
        if stream:
            return 200, Streamed(self._stats_stream(ctr, first))
        if first is None or one_shot:
            return 200, docker_stats.stats(ctr, first)
        time.sleep(STATS_INTERVAL)
        ctr, second = self.engine.lifecycle.stats(ref)
        return 200, docker_stats.stats(ctr, second, first if second else None)

    def _stats_stream(self, ctr: Container, sample: Sample | None) -> Iterator[bytes]:
        previous = None
        while True:
            yield json.dumps(docker_stats.stats(ctr, sample, previous)).encode() + b"\n"
            previous = sample
            time.sleep(STATS_INTERVAL)
            try:
                ctr, sample = self.engine.lifecycle.stats(ctr.id)
            except NotFound:  # removed: the stream ends
                return
