"""``GET /containers/json``, ``GET /networks`` and ``POST /networks/prune``
with Docker's query parameters and filters (moby ``daemon/list.go``,
``daemon/network/filter.go``, ``daemon/prune.go``).

Selection is done on a consistent snapshot taken under the engine lock;
the filters themselves are :mod:`qiao.daemon.filters`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from qiao.daemon import docker_json
from qiao.daemon.filters import CONTAINER_LIST_KEYS, NETWORK_LIST_KEYS, Filters, Prune
from qiao.daemon.http import Request, bool_value, route
from qiao.daemon.wire import HOST_IMAGE
from qiao.engine.containers import ContainerView
from qiao.engine.engine import Engine
from qiao.engine.errors import InvalidParameter, NotFound
from qiao.engine.models import Container, Network

STATES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")  # what Docker's status filter takes
HEALTH = ("starting", "healthy", "unhealthy", "none")
_UNSUPPORTED_CONTAINER_FILTERS = {
    "health": "containers have no health checks",
    "volume": "qiao has no volumes",
    "isolation": "qiao has no isolation modes",
    "is-task": "qiao has no swarm tasks",
}
_PORT = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?(?:/([a-z]+))?\Z")


def _ports(filters: Filters, key: str) -> set[str]:
    """``publish``/``expose`` values (``80``, ``80/udp``, ``8000-8010/tcp``) as "PORT/PROTO" keys."""
    out: set[str] = set()
    for value in filters.get(key):
        if ":" in value:
            raise InvalidParameter(f"filter for '{key}' should not contain ':': {value}")
        m = _PORT.match(value)
        if not m or int(m.group(1)) > 65535 or int(m.group(2) or m.group(1)) > 65535 or int(m.group(2) or m.group(1)) < int(m.group(1)):
            raise InvalidParameter(f"error while looking up for {key} {value}: invalid port or range")
        proto = m.group(3) or "tcp"
        out.update(f"{p}/{proto}" for p in range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return out


def _find(views: list[ContainerView], ref: str) -> Container:
    """A container of ``views`` by id, name or id prefix (the ``before``/``since`` filters)."""
    ref = ref.lstrip("/")
    for by in (lambda c: c.id == ref, lambda c: c.name == ref, lambda c: bool(ref) and c.id.startswith(ref)):
        found = [v.container for v in views if by(v.container)]
        if len(found) == 1:
            return found[0]
    raise NotFound(f"No such container: {ref}")


def _ancestor_matches(wanted: Iterable[str], ctr: Container) -> bool:
    """``ancestor``: the image as the container names it (with or without ``:latest``), or its id
    (``sha256:…`` or a prefix of 12 or more hex digits); image-less containers are ``qiao/host``'s."""
    image = ctr.image or HOST_IMAGE
    names = {image, image.removesuffix(":latest"), image if ":" in image.rpartition("/")[2] else image + ":latest"}
    hex_id = ctr.image_id.removeprefix("sha256:")
    return any(value in names or (hex_id and len(v := value.removeprefix("sha256:")) >= 12 and hex_id.startswith(v)) for value in wanted)


def select_containers(views: list[ContainerView], query: dict[str, str]) -> list[dict[str, Any]]:
    """The entries of ``GET /containers/json`` (``views``: every container, newest first)."""
    filters = Filters.parse(query.get("filters"), CONTAINER_LIST_KEYS)
    filters.refuse(_UNSUPPORTED_CONTAINER_FILTERS)
    show_all, size = bool_value(query.get("all", ""), "all"), bool_value(query.get("size", ""), "size")
    limit_text = query.get("limit", "")
    if limit_text and not re.fullmatch(r"-?[0-9]{1,9}", limit_text):
        raise InvalidParameter(f"invalid value for limit: {limit_text!r} is not a whole number")
    limit = int(limit_text) if limit_text else -1
    exited = set()
    for value in filters.get("exited"):
        if not re.fullmatch(r"-?[0-9]{1,9}", value):
            raise InvalidParameter(f"invalid filter 'exited={value}': not an exit code")
        exited.add(int(value))
    for value in filters.get("status"):
        if value not in STATES:
            raise InvalidParameter(f"invalid filter 'status={value}'")
        show_all = True
    before = _find(views, next(iter(filters.get("before")))) if "before" in filters else None
    since = _find(views, next(iter(filters.get("since")))) if "since" in filters else None
    publish, expose = _ports(filters, "publish"), _ports(filters, "expose")

    out: list[dict[str, Any]] = []
    for view in views:
        ctr = view.container
        if before is not None:  # everything up to and with the "before" container is left out
            if ctr.id == before.id:
                before = None
            continue
        if since is not None and ctr.id == since.id:
            break
        if not (ctr.running or ctr.restarting) and not show_all and limit <= 0:  # dockerd lists restarting ones as running
            continue
        if not (filters.match("name", ctr.name) or filters.match("name", "/" + ctr.name)):
            continue
        if not filters.match("id", ctr.id) or not filters.match_kv("label", ctr.labels):
            continue
        if 0 < limit == len(out):
            break
        if exited and not (not ctr.running and ctr.started_at[:4] != "0001" and ctr.exit_code in exited):
            continue
        if not filters.match("status", docker_json.state(ctr)):  # paused, restarting: as dockerd's State.Status
            continue
        if "ancestor" in filters and not _ancestor_matches(filters.get("ancestor"), ctr):
            continue
        if "network" in filters and not _on_network(filters.get("network"), view):
            continue
        entry = docker_json.container_summary(view, size)
        if publish or expose:
            ports = entry["Ports"]
            if not any(f"{p.get('PublicPort')}/{p['Type']}" in publish or f"{p['PrivatePort']}/{p['Type']}" in expose for p in ports):
                continue
        out.append(entry)
    return out


def _on_network(wanted: Iterable[str], view: ContainerView) -> bool:
    """A network by name, or by id prefix, among the container's."""
    nets = dict(view.network_names)
    nets.update({ep.network_id: name for name, ep in view.endpoints})
    return any(value in nets.values() or any(nid.startswith(value) for nid in nets) for value in wanted)


def select_networks(entries: list[dict[str, Any]], in_use: Callable[[str], bool], query: dict[str, str]) -> list[dict[str, Any]]:
    """The networks of ``GET /networks`` (``entries``: every network's JSON; ``in_use``: by id)."""
    filters = Filters.parse(query.get("filters"), NETWORK_LIST_KEYS)
    kinds = filters.get("type")
    for kind in kinds:
        if kind not in ("builtin", "custom"):
            raise InvalidParameter(f"invalid filter: 'type'='{kind}'")
    dangling = filters.boolean("dangling")
    out = []
    for net in entries:
        if not filters.exact("driver", net["Driver"]) or not filters.match("name", net["Name"]) or not filters.match("id", net["Id"]):
            continue
        if not filters.match_kv("label", net["Labels"]) or not filters.exact("scope", net["Scope"]):
            continue
        builtin = net["Name"] in ("bridge", "host", "none")
        if dangling is not None and dangling == (builtin or in_use(net["Id"])):
            continue
        if kinds and ("builtin" if builtin else "custom") not in kinds:
            continue
        out.append(net)
    return out


class ListRoutes:
    """Mixin of ``Api``: the list and prune routes with Docker's filters."""

    engine: Engine
    network_json: Callable[..., dict[str, Any]]

    @route("GET", "/containers/json")
    def container_list(self, req: Request) -> tuple[int, Any]:
        return 200, select_containers(self.engine.containers.views(True), req.query)

    def _networks_in_use(self) -> set[str]:
        """Networks with an endpoint or named by a container (running or not: its next start joins them). Under the lock."""
        used = {nid for nid, eps in self.engine.networks.by_network.items() if eps}
        return used | {att["network"] for c in self.engine.containers.by_id.values() for att in c.attachments}

    @route("GET", "/networks")
    def network_list(self, req: Request) -> tuple[int, Any]:
        with self.engine.lock:
            nets = sorted(self.engine.networks.by_id.values(), key=lambda n: n.created)
            used = self._networks_in_use()
            # As dockerd since API 1.28: a list entry names no containers (`network inspect` does).
            entries = [{**self.network_json(n.id), "Containers": {}} for n in nets]
        return 200, select_networks(entries, used.__contains__, req.query)

    @route("POST", "/networks/prune")
    def network_prune(self, req: Request) -> tuple[int, Any]:
        rule = Prune.parse(req.query.get("filters"), time.time_ns())
        with self.engine.lock:
            used = self._networks_in_use()

            def keep(net: Network) -> bool:
                return net.id in used or not rule.matches(net.labels, net.created)

            removed = self.engine.networks.prune(keep)
        return 200, {"NetworksDeleted": removed or None}  # null when none, as dockerd
