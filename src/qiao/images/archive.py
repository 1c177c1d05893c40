"""The archives ``docker load`` takes, read without unpacking them.

* **docker-archive** (``docker save`` up to Docker 24, and still alongside
  the OCI layout since 25): ``manifest.json`` lists, per image, its config
  file, its tags (``RepoTags``) and its layer tars in order.
* **OCI image layout**: ``index.json`` lists manifests (or nested indexes,
  of which the one for this machine's platform is taken) in
  ``blobs/sha256/<hex>``; a manifest names the config and the layers by
  digest; the image's name is the ``io.containerd.image.name`` annotation,
  or ``org.opencontainers.image.ref.name`` when that is a full reference.

``manifest.json`` wins when both are there, as in Docker's own loader.
Every blob an OCI manifest names is checked against its digest as it is
read, and every layer against the config's ``diff_ids`` once unpacked
(:mod:`qiao.images.registry`).  Paths inside the archive are looked up,
never extracted, so the archive's own layout cannot write anywhere.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from qiao.engine.errors import InvalidParameter
from qiao.images import reference
from qiao.images.config import goarch
from qiao.images.unpack import Limits, UnsafeArchive

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
_DIGEST = re.compile(r"sha256:([a-f0-9]{64})\Z")


@dataclass
class LayerSource:
    """One layer of an image in the archive: ``open`` gives its bytes (as stored:
    compressed or not); ``digest``: what they must hash to (OCI), if known."""

    name: str
    open: Callable[[], IO[bytes]]
    digest: str = ""
    size: int = -1


@dataclass
class ImageSource:
    config: bytes
    layers: list[LayerSource]
    tags: list[str] = field(default_factory=list)  # familiar references


class Verified:
    """A blob read through its digest: a mismatch at its end is a 400."""

    def __init__(self, raw: IO[bytes], digest: str, size: int, what: str):
        self._raw, self._digest, self._size, self._what = raw, digest, size, what
        self._sha = hashlib.sha256()
        self._seen = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._sha.update(data)
        self._seen += len(data)
        return data

    def finish(self) -> None:
        """Read what is left and check the digest (and the size, when the descriptor gave one)."""
        while self.read(1 << 20):
            pass
        if "sha256:" + self._sha.hexdigest() != self._digest or (self._size >= 0 and self._seen != self._size):
            raise InvalidParameter(f"invalid archive: {self._what} does not match its digest {self._digest}")


class Archive:
    """An uploaded archive, random access (a spooled file)."""

    def __init__(self, tar: tarfile.TarFile, limits: Limits):
        self.tar = tar
        self.limits = limits
        self.files: dict[str, tarfile.TarInfo] = {}
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError) as exc:
            raise UnsafeArchive(f"invalid archive: not a tar file ({exc})") from None
        for member in members:
            name = "/".join(p for p in member.name.split("/") if p not in ("", "."))
            if member.isreg():
                self.files[name] = member

    def has(self, name: str) -> bool:
        return name in self.files

    def opener(self, name: str) -> Callable[[], IO[bytes]]:
        member = self.files.get(name.lstrip("/").removeprefix("./"))
        if member is None:
            raise InvalidParameter(f"invalid archive: {name!r} is missing")

        def open_() -> IO[bytes]:
            data = self.tar.extractfile(member)
            assert data is not None  # a regular file
            return data

        return open_

    def small(self, name: str) -> bytes:
        """A JSON document of the archive (a manifest, an index, a config), size-capped."""
        member = self.files.get(name.lstrip("/").removeprefix("./"))
        if member is None:
            raise InvalidParameter(f"invalid archive: {name!r} is missing")
        if member.size > self.limits.config:
            raise InvalidParameter(f"invalid archive: {name!r} is larger than {self.limits.config} bytes")
        return self.opener(name)().read()

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.small(name))
        except (ValueError, RecursionError):
            raise InvalidParameter(f"invalid archive: {name!r} is not JSON") from None

    def blob(self, descriptor: Any, what: str) -> tuple[str, str, int]:
        """(path, digest, size) of a descriptor's blob."""
        if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
            raise InvalidParameter(f"invalid archive: {what} has no digest")
        match = _DIGEST.match(descriptor["digest"])
        if not match:
            raise InvalidParameter(f"invalid archive: {what} has an unsupported digest {descriptor['digest']!r}")
        size = descriptor.get("size", -1)
        return f"blobs/sha256/{match.group(1)}", descriptor["digest"], size if isinstance(size, int) else -1

    def verified_json(self, descriptor: Any, what: str) -> tuple[bytes, Any]:
        path, digest, _size = self.blob(descriptor, what)
        raw = self.small(path)
        if "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
            raise InvalidParameter(f"invalid archive: {what} does not match its digest {digest}")
        try:
            return raw, json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidParameter(f"invalid archive: {what} is not JSON") from None


def read(tar: tarfile.TarFile, limits: Limits) -> list[ImageSource]:
    """The images in an uploaded archive (docker-archive or OCI layout)."""
    archive = Archive(tar, limits)
    if archive.has("manifest.json"):
        return list(_docker_archive(archive))
    if archive.has("index.json"):
        return list(_oci_layout(archive))
    raise InvalidParameter("invalid archive: neither a docker save archive (manifest.json) nor an OCI image layout (index.json)")


def _docker_archive(archive: Archive) -> Iterator[ImageSource]:
    manifest = archive.json("manifest.json")
    if not isinstance(manifest, list):
        raise InvalidParameter("invalid archive: manifest.json is not a list")
    for n, entry in enumerate(manifest):
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or not isinstance(entry.get("Layers"), list):
            raise InvalidParameter(f"invalid archive: manifest.json entry {n} lacks Config or Layers")
        layers = []
        for layer in entry["Layers"]:
            if not isinstance(layer, str):
                raise InvalidParameter(f"invalid archive: manifest.json entry {n} has a layer that is not a path")
            layers.append(LayerSource(layer, archive.opener(layer)))
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidParameter(f"invalid archive: manifest.json entry {n} has invalid RepoTags")
        yield ImageSource(archive.small(entry["Config"]), layers, [reference.familiar(t) for t in tags])


def _oci_layout(archive: Archive) -> Iterator[ImageSource]:
    index = archive.json("index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise InvalidParameter("invalid archive: index.json has no manifests")
    for n, descriptor in enumerate(index["manifests"]):
        what = f"index.json manifest {n}"
        name = _oci_name(descriptor)
        manifest = _platform_manifest(archive, descriptor, what)
        config_raw, _config = archive.verified_json(manifest.get("config"), f"{what}: the config")
        layers = []
        for i, layer in enumerate(manifest.get("layers") or []):
            path, digest, size = archive.blob(layer, f"{what}: layer {i}")
            media = str(layer.get("mediaType", ""))
            if media and "layer" not in media and "rootfs.diff" not in media:
                raise InvalidParameter(f"invalid archive: {what}: layer {i} has media type {media!r}")
            layers.append(LayerSource(path, archive.opener(path), digest, size))
        yield ImageSource(config_raw, layers, [name] if name else [])


def _platform_manifest(archive: Archive, descriptor: Any, what: str, depth: int = 0) -> dict[str, Any]:
    """The image manifest a descriptor leads to; an index is followed to its
    entry for linux on this machine's architecture (else its only or first entry)."""
    _raw, doc = archive.verified_json(descriptor, what)
    if not isinstance(doc, dict):
        raise InvalidParameter(f"invalid archive: {what} is not a JSON object")
    media = doc.get("mediaType") or (descriptor.get("mediaType") if isinstance(descriptor, dict) else "")
    if media in INDEX_TYPES or ("manifests" in doc and "layers" not in doc):
        if depth > 4:
            raise InvalidParameter(f"invalid archive: {what}: indexes nested too deeply")
        entries = [m for m in doc.get("manifests") or [] if isinstance(m, dict)]
        if not entries:
            raise InvalidParameter(f"invalid archive: {what}: an empty index")

        def fits(m: dict[str, Any]) -> bool:
            platform = m.get("platform") or {}
            return platform.get("os") == "linux" and platform.get("architecture") == goarch()

        chosen = next((m for m in entries if fits(m)), entries[0])
        return _platform_manifest(archive, chosen, what, depth + 1)
    if not isinstance(doc.get("config"), dict):
        raise InvalidParameter(f"invalid archive: {what} has no config")
    return doc


def _oci_name(descriptor: Any) -> str:
    """The familiar name an OCI index entry gives its image, or ""."""
    annotations = descriptor.get("annotations") if isinstance(descriptor, dict) else None
    if not isinstance(annotations, dict):
        return ""
    for key in (NAME_ANNOTATION, REF_ANNOTATION):
        text = annotations.get(key)
        if isinstance(text, str) and text and (key == NAME_ANNOTATION or "/" in text or ":" in text):
            try:
                return reference.familiar(text)
            except InvalidParameter:
                continue
    return ""
