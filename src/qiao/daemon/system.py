"""The system routes as dockerd answers them: ``/_ping`` (with the headers
Docker's CLI reads), ``/version``, ``/info``, ``/system/df`` and ``/events``
(a stream of container and network events, Docker's ``events.Message``,
with ``since``/``until`` replayed from the engine's ring and Docker's filters).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from qiao import __version__
from qiao.daemon import docker_json
from qiao.daemon.filters import EVENT_KEYS, Filters, unix_nanos
from qiao.daemon.http import API_VERSION, MIN_API_VERSION, Raw, Request, Streamed, route
from qiao.engine.engine import Engine
from qiao.engine.errors import InvalidParameter
from qiao.engine.eventlog import Record

HEARTBEAT = 1.0  # s: how often an idle /events stream checks its client is still there
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x"}
_TYPE_KEYS = ("container", "network", "daemon", "plugin", "volume", "service", "node", "secret", "config")
_FUZZY_EVENTS = {"health_status", "exec_create", "exec_start"}


# -- /events -----------------------------------------------------------------------


def message(rec: Record) -> dict[str, Any]:
    """One record as dockerd writes it; container events keep the legacy status/id/from."""
    attributes = dict(sorted(rec.attributes.items()))  # Go writes a map's keys sorted
    legacy: dict[str, Any] = {}
    if rec.type == "container":
        legacy = {"status": rec.action, "id": rec.actor, **({"from": attributes["image"]} if "image" in attributes else {})}
    return {
        **legacy,
        "Type": rec.type,
        "Action": rec.action,
        "Actor": {"ID": rec.actor, "Attributes": attributes},
        "scope": "local",
        "time": rec.time_ns // 1_000_000_000,
        "timeNano": rec.time_ns,
    }


def _strip_tag(image: str) -> str:
    last = image.rpartition("/")[2]
    return image[: len(image) - len(last)] + last.partition(":")[0].partition("@")[0]


def included(filters: Filters, rec: Record) -> bool:
    """moby ``daemon/events.Filter.Include``: every key given must hold."""
    if filters.get("event") & _FUZZY_EVENTS:
        if not filters.fuzzy("event", rec.action):
            return False
    elif not filters.exact("event", rec.action):
        return False
    if not filters.exact("type", rec.type) or not filters.exact("scope", "local"):
        return False
    name = rec.attributes.get("name", "")
    if not all(filters.fuzzy(key, rec.actor) or filters.fuzzy(key, name) for key in _TYPE_KEYS):
        return False
    image = rec.attributes.get("image", "")
    if "image" in filters and not any(filters.exact("image", v) for v in (rec.actor, image, _strip_tag(rec.actor), _strip_tag(image))):
        return False
    return filters.match_kv("label", rec.attributes)


def _encode(rec: Record) -> bytes:
    return json.dumps(message(rec)).encode() + b"\n"


# -- /info -------------------------------------------------------------------------


def _os_release() -> dict[str, str]:
    try:
        with open("/etc/os-release") as f:
            pairs = (line.rstrip("\n").partition("=") for line in f if "=" in line)
            return {k: v.strip('"') for k, _, v in pairs}
    except OSError:
        return {}


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _ip_forwarding() -> bool:
    try:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


class SystemRoutes:
    """Mixin of ``Api``: ping, version, info, disk usage and the event stream."""

    engine: Engine

    @route("GET", "/_ping")
    def ping(self, req: Request) -> tuple[int, Any]:
        # HEAD /_ping too (the server answers HEAD with GET's head): Docker's CLI reads API-Version and OSType from it.
        return 200, Raw(b"OK", {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache", "Swarm": "inactive"})

    @route("GET", "/version")
    def version(self, req: Request) -> tuple[int, Any]:
        arch, kernel = _GOARCH.get(os.uname().machine, os.uname().machine), os.uname().release
        runtime = f"python{platform.python_version()}"  # in dockerd's GoVersion: what the engine runs on
        details = {
            "ApiVersion": API_VERSION,
            "Arch": arch,
            "BuildTime": "",
            "Experimental": "false",
            "GitCommit": "",
            "GoVersion": runtime,
            "KernelVersion": kernel,
            "MinAPIVersion": MIN_API_VERSION,
            "Os": "linux",
        }
        return 200, {
            "Platform": {"Name": "qiao"},
            "Components": [{"Name": "Engine", "Version": __version__, "Details": details}],
            "Version": __version__,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": runtime,
            "Os": "linux",
            "Arch": arch,
            "KernelVersion": kernel,
            "BuildTime": "",
        }

    @route("GET", "/info")
    def info(self, req: Request) -> tuple[int, Any]:
        with self.engine.lock:
            ctrs = list(self.engine.containers.by_id.values())
            networks = len(self.engine.networks.by_id)
        running = sum(1 for c in ctrs if c.running)
        release = _os_release()
        return 200, {
            "ID": "qiaod",
            "Containers": len(ctrs),
            "ContainersRunning": running,
            "ContainersPaused": 0,
            "ContainersStopped": len(ctrs) - running,
            "Images": 0,
            "Driver": "",
            "DriverStatus": [],
            "Plugins": {"Volume": [], "Network": sorted(d.name for d in self.engine.drivers), "Authorization": None, "Log": ["json-file"]},
            "MemoryLimit": False,
            "SwapLimit": False,
            "CpuCfsPeriod": False,
            "CpuCfsQuota": False,
            "CPUShares": False,
            "CPUSet": False,
            "PidsLimit": False,
            "IPv4Forwarding": _ip_forwarding(),
            "BridgeNfIptables": False,
            "BridgeNfIp6tables": False,
            "Debug": False,
            "NFd": len(os.listdir("/proc/self/fd")),
            "OomKillDisable": False,
            "NGoroutines": threading.active_count(),  # threads, the nearest thing qiaod has
            "SystemTime": datetime.datetime.now().astimezone().isoformat(),
            "LoggingDriver": "json-file",
            "CgroupDriver": "none",
            "CgroupVersion": "",
            "NEventsListener": self.engine.eventlog.readers,
            "KernelVersion": os.uname().release,
            "OperatingSystem": release.get("PRETTY_NAME", "Linux"),
            "OSVersion": release.get("VERSION_ID", ""),
            "OSType": "linux",
            "Architecture": os.uname().machine,
            "IndexServerAddress": "",
            "RegistryConfig": None,
            "NCPU": os.cpu_count() or 1,
            "MemTotal": _mem_total(),
            "GenericResources": None,
            "DockerRootDir": self.engine.root.data,
            "HttpProxy": "",
            "HttpsProxy": "",
            "NoProxy": "",
            "Name": socket.gethostname(),
            "Labels": [],
            "ExperimentalBuild": False,
            "ServerVersion": __version__,
            "Runtimes": {},
            "DefaultRuntime": "",
            "Swarm": {
                "NodeID": "",
                "NodeAddr": "",
                "LocalNodeState": "inactive",
                "ControlAvailable": False,
                "Error": "",
                "RemoteManagers": None,
            },
            "LiveRestoreEnabled": True,  # containers outlive qiaod; the next one adopts them
            "Isolation": "",
            "InitBinary": "",
            "ContainerdCommit": {"ID": ""},
            "RuncCommit": {"ID": ""},
            "InitCommit": {"ID": ""},
            "SecurityOptions": [],
            "Warnings": None,
            # qiao's own
            "Networks": networks,
            "Pid": os.getpid(),
            "DataRoot": self.engine.root.data,
            "RunRoot": self.engine.root.run,
            "QiaoDrivers": {d.name: d.status() for d in self.engine.drivers},
        }

    @route("GET", "/system/df")
    def disk_usage(self, req: Request) -> tuple[int, Any]:
        """Containers write to the host's filesystem: nothing of their own to count."""
        views = self.engine.containers.views(True)
        return 200, {
            "LayersSize": 0,
            "Images": [],
            "Containers": [docker_json.container_summary(v, size=True) for v in views],
            "Volumes": [],
            "BuildCache": [],
        }

    @route("GET", "/events")
    def events(self, req: Request) -> tuple[int, Any]:
        since = unix_nanos(req.query["since"], "since") if req.query.get("since") else None
        until = unix_nanos(req.query["until"], "until") if req.query.get("until") else None
        if since is not None and until is not None and until < since:
            raise InvalidParameter(f"`since` time ({req.query['since']}) cannot be after `until` time ({req.query['until']})")
        filters = Filters.parse(req.query.get("filters"), EVENT_KEYS)
        kept, position = self.engine.eventlog.snapshot()
        replay: list[Record] = []
        if since is not None or until is not None:  # as dockerd: the ring is replayed only when a time is given
            replay = [r for r in kept if r.time_ns >= (since or 0) and (until is None or r.time_ns <= until) and included(filters, r)]
        return 200, Streamed(self._follow(replay, position, until, filters))

    def _follow(self, replay: list[Record], position: int, until: int | None, filters: Filters) -> Iterator[bytes]:
        with self.engine.eventlog.reading():
            for rec in replay:
                yield _encode(rec)
            while until is None or time.time_ns() < until:
                wait = HEARTBEAT if until is None else min(HEARTBEAT, (until - time.time_ns()) / 1e9)
                new, position = self.engine.eventlog.after(position, max(wait, 0))
                chunk = b"".join(_encode(r) for r in new if (until is None or r.time_ns <= until) and included(filters, r))
                yield chunk  # empty: a heartbeat, to notice a client that left
