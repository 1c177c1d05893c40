"""The Docker Engine API's image routes: import, load, list, inspect, tag,
remove, and a pull that explains why there is nothing to pull from.

Uploads (``docker import``, ``docker load``) are read as they arrive
(``stream=True``: Docker's CLI sends them chunked) and capped by the
image limits (:class:`qiao.images.unpack.Limits`).  Success is answered
as Docker answers it, a stream of JSON messages (``{"status": ID}`` for an
import, ``{"stream": "Loaded image: NAME\\n"}`` per image for a load); a
failure is an HTTP error status with one message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from qiao.daemon.filters import Filters
from qiao.daemon.http import Request, Streamed, route
from qiao.engine.engine import Engine
from qiao.engine.errors import InvalidParameter, NotFound
from qiao.images import reference
from qiao.images.registry import Image, unix_time
from qiao.images.unpack import Limits

MAX_UPLOAD = Limits().archive

PULL_HINT = (
    "qiao pulls no images (no registry is reachable, and pulling is not its job): "
    'load one with "docker load -i FILE" (an archive of "docker save") or "docker import FILE {name}" '
    '(a root filesystem tar); "qiao/host" runs a command on the host\'s filesystem'
)


def _messages(*items: dict[str, Any]) -> Streamed:
    """Docker's JSON message stream, one object per line."""

    def lines() -> Iterator[bytes]:
        for item in items:
            yield json.dumps(item).encode() + b"\r\n"

    return Streamed(lines(), "application/json")


def image_summary(img: Image) -> dict[str, Any]:
    """An element of ``GET /images/json``."""
    process = img.parsed().config
    return {
        "Containers": -1,
        "Created": unix_time(img.created),
        "Id": img.id,
        "Labels": dict(process.Labels) if process and process.Labels else None,
        "ParentId": "",
        "RepoDigests": [],
        "RepoTags": list(img.repo_tags),
        "SharedSize": -1,
        "Size": img.size,
    }


def image_inspect(img: Image, rootfs: str) -> dict[str, Any]:
    """``GET /images/{name}/json``."""
    raw = json.loads(img.config)
    parsed = img.parsed()
    section = raw.get("config") or {}
    config = {
        "Hostname": "",
        "Domainname": "",
        "User": "",
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Env": None,
        "Cmd": None,
        "Image": "",
        "Volumes": None,
        "WorkingDir": "",
        "Entrypoint": None,
        "OnBuild": None,
        "Labels": None,
        **section,
    }
    return {
        "Id": img.id,
        "RepoTags": list(img.repo_tags),
        "RepoDigests": [],
        "Parent": "",
        "Comment": parsed.comment,
        "Created": parsed.created or img.created,
        "DockerVersion": raw.get("docker_version", ""),
        "Author": parsed.author,
        "Config": config,
        "Architecture": parsed.architecture,
        **({"Variant": raw["variant"]} if raw.get("variant") else {}),
        "Os": parsed.os,
        "Size": img.size,
        "GraphDriver": {"Data": {"RootDir": rootfs}, "Name": "qiao"},
        "RootFS": {"Type": parsed.rootfs.type, "Layers": list(parsed.rootfs.diff_ids)},
        "Metadata": {"LastTagTime": img.tagged},
    }


class ImagesApi:
    """Mixed into ``daemon.api.Api`` (which sets ``engine``)."""

    engine: Engine

    @route("POST", "/images/create", max_body=MAX_UPLOAD, stream=True)
    def image_create(self, req: Request) -> tuple[int, Any]:
        """``docker import`` (``fromSrc=-``: the body is the tar) or ``docker pull`` (``fromImage``)."""
        platform = req.query.get("platform", "")
        if platform and platform.split("/")[0] != "linux":
            raise InvalidParameter(f'platform "{platform}" is not supported: qiao runs linux images')
        if req.query.get("fromImage"):
            return self._pull(req.query["fromImage"], req.query.get("tag", ""))
        source = req.query.get("fromSrc", "")
        if not source:
            raise InvalidParameter("fromImage or fromSrc is required")
        if source != "-":
            raise InvalidParameter("qiao does not download images: import a file (docker import FILE) or standard input (fromSrc=-)")
        q, changes = req.query, req.query_lists.get("changes", [])
        img = self.engine.images.import_tar(req.stream, q.get("repo", ""), q.get("tag", ""), changes, q.get("message", ""))
        return 200, _messages({"status": img.id})

    def _pull(self, name: str, tag: str) -> tuple[int, Any]:
        """What is here is "up to date"; anything else is Docker's not-found, with the way to get it."""
        ref = reference.with_tag(name, tag) if not tag.startswith("sha256:") else reference.parse(f"{name}@{tag}")
        wanted = ref.familiar()
        try:
            self.engine.images.get(wanted)
        except NotFound:
            raise NotFound(f"pull access denied for {ref.familiar_name}: {PULL_HINT.format(name=wanted)}") from None
        return 200, _messages({"status": f"Status: Image is up to date for {wanted}"})

    @route("POST", "/images/load", max_body=MAX_UPLOAD, stream=True)
    def image_load(self, req: Request) -> tuple[int, Any]:
        loaded = self.engine.images.load_archive(req.stream)
        lines = []
        for img, tags in loaded:
            lines += [f"Loaded image: {tag}\n" for tag in tags] or [f"Loaded image ID: {img.id}\n"]
        return 200, _messages(*({"stream": line} for line in lines))

    @route("GET", "/images/json")
    def image_list(self, req: Request) -> tuple[int, Any]:
        filters = Filters.parse(req.query.get("filters"), ("dangling", "reference"))
        images = self.engine.images.listing(filters.boolean("dangling"), sorted(filters.get("reference")))
        return 200, [image_summary(img) for img in images]

    @route("GET", "/images/(?P<ref>.+)/json")
    def image_inspect(self, req: Request, ref: str) -> tuple[int, Any]:
        img = self.engine.images.get(ref)
        return 200, image_inspect(img, self.engine.images.rootfs(img.id))

    @route("POST", "/images/(?P<ref>.+)/tag")
    def image_tag(self, req: Request, ref: str) -> tuple[int, Any]:
        repo = req.query.get("repo", "")
        if not repo:
            raise InvalidParameter("repository name (repo) is required")
        self.engine.images.tag(ref, repo, req.query.get("tag", ""))
        return 201, None

    @route("DELETE", "/images/(?P<ref>.+)")
    def image_remove(self, req: Request, ref: str) -> tuple[int, Any]:
        if not ref.strip():
            raise InvalidParameter("image name cannot be blank")
        return 200, self.engine.images.remove(ref, req.flag("force"))
