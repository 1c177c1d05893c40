"""The images of one qiao root: records, tags, and their root filesystems.

Layout (under the data root, which only root may enter)::

    images/<hex>/rootfs    the image's files: every layer applied in order
    images/tmp/<random>/   an import or load in progress (renamed into place when complete)

The records (the config, the tags, the size) are rows of the store's
``images`` table.  An import or load unpacks without the engine lock (it
may take minutes); only recording the result takes it, so containers and
networks are never kept waiting.  The same image loaded twice is unpacked
twice and kept once.  A tag names one image: a load or tag that gives it to
another image takes it from the first, as Docker does.

Removing an image follows moby's ``ImageDelete`` (see :meth:`Images.remove`).
An image removed with ``--force`` while a stopped container still uses it
loses its record, but its files stay until the last such container is gone
(Docker keeps the layers a container references the same way).
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import hashlib
import logging
import os
import secrets
import shutil
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from qiao.engine.errors import Conflict, InvalidParameter, NotFound
from qiao.engine.models import from_dict, now, to_dict
from qiao.engine.store import Store
from qiao.images import archive, reference
from qiao.images import config as image_config
from qiao.images.unpack import Budget, Limits, Readable, TooLarge, apply_layer
from qiao.paths import Root

log = logging.getLogger("qiao.images")


@dataclass
class Image:
    id: str  # "sha256:<hex>": the SHA-256 of ``config``
    name: str  # the store's unique key: the id again
    config: str  # the image config JSON, exactly as received (its hash is the id)
    repo_tags: list[str] = field(default_factory=list)  # familiar references: "busybox:latest"
    size: int = 0  # bytes of file content, all layers
    created: str = ""  # from the config (when it was built); else when qiao got it
    tagged: str = ""  # when a tag last changed (Docker's Metadata.LastTagTime)

    @property
    def hex(self) -> str:
        return self.id.removeprefix("sha256:")

    def parsed(self) -> image_config.ImageConfig:
        return image_config.parse(self.config.encode())


Users = Callable[[str], list[tuple[str, bool]]]  # image id -> [(container id, running)]


class Images:
    def __init__(self, root: Root, store: Store, lock: threading.RLock, limits: Limits | None = None):
        self.dir = os.path.join(root.data, "images")
        self.tmp = os.path.join(self.dir, "tmp")
        self.store = store
        self.lock = lock
        self.limits = limits or Limits()
        self.by_id: dict[str, Image] = {}
        self.users: Users = lambda image_id: []  # the engine tells who uses an image (its containers)

    # -- start-up --------------------------------------------------------

    def load(self) -> None:
        """Read the records; drop what an interrupted import left and the files
        of images removed while a container used them, if none does any more."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)  # first: makedirs gives only the last directory its mode
        for row in self.store.load("images"):
            img = from_dict(Image, row)
            self.by_id[img.id] = img
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp, mode=0o700, exist_ok=True)
        for entry in os.listdir(self.dir):
            if entry != "tmp":
                self.release("sha256:" + entry)

    # -- lookup ----------------------------------------------------------

    def get(self, ref: str) -> Image:
        """By name (``busybox``, ``busybox:1``, ``localhost/x:y``) or by ID or a
        unique prefix of it (``sha256:`` optional); else Docker's 404."""
        with self.lock:
            found = self._find(ref)
        if found is None:
            with contextlib.suppress(InvalidParameter):
                ref = reference.familiar(ref)  # as Docker says it: "No such image: busybox:latest"
            raise NotFound(f"No such image: {ref}")
        return found

    def _find(self, ref: str) -> Image | None:
        """As moby's ``GetImage``: a full ID, then a name, then an ID prefix."""
        text = ref.strip()
        hex_ = text.removeprefix("sha256:")
        if "sha256:" + hex_ in self.by_id:
            return self.by_id["sha256:" + hex_]
        with contextlib.suppress(InvalidParameter):  # not a name: maybe an ID prefix
            tag = reference.familiar(text)
            found = next((img for img in self.by_id.values() if tag in img.repo_tags), None)
            if found:
                return found
        if reference.is_id_prefix(text):
            matches = [img for img in self.by_id.values() if img.hex.startswith(hex_)]
            if len(matches) > 1:
                raise InvalidParameter(f"multiple images found with provided prefix: {text}")
            if matches:
                return matches[0]
        return None

    def rootfs(self, image_id: str) -> str:
        return os.path.join(self.dir, image_id.removeprefix("sha256:"), "rootfs")

    def listing(self, dangling: bool | None = None, patterns: Iterable[str] = ()) -> list[Image]:
        """Newest first; ``dangling``: only untagged (True) or tagged (False)
        images; ``patterns``: ``reference`` filters (globs on the familiar name,
        with or without the tag)."""
        patterns = list(patterns)
        with self.lock:
            images = list(self.by_id.values())
        out = []
        for img in images:
            if dangling is not None and (not img.repo_tags) != dangling:
                continue
            if patterns and not any(_matches(tag, p) for tag in img.repo_tags for p in patterns):
                continue
            out.append(img)
        return sorted(out, key=lambda i: unix_time(i.created), reverse=True)

    # -- import and load -------------------------------------------------

    def import_tar(self, source: Readable, repo: str, tag: str, changes: list[str], message: str) -> Image:
        """``docker import``: ``source`` is one root filesystem tar (compressed or not)."""
        ref = reference.with_tag(repo, tag) if repo else None
        image_config.apply_changes(image_config.ProcessConfig(), changes)  # refuse a bad change before reading anything
        work = self._workdir()
        try:
            budget = Budget(self.limits)
            diff_id = apply_layer(_Capped(source, self.limits.archive), os.path.join(work, "rootfs"), budget)
            raw = image_config.import_config(diff_id, changes, message, image_config.goarch())
            return self._record(work, raw, [ref.familiar()] if ref else [], budget.content)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def load_archive(self, source: Readable) -> list[tuple[Image, list[str]]]:
        """``docker load``: every image of a docker-archive or OCI layout; with the tags each got."""
        spool = os.path.join(self.tmp, "upload-" + secrets.token_hex(8))
        try:
            with open(spool, "wb") as out:
                capped = _Capped(source, self.limits.archive)
                while chunk := capped.read(1 << 20):
                    out.write(chunk)
            with _open_tar(spool) as tar:
                return [self._load_one(src) for src in archive.read(tar, self.limits)]
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool)

    def _load_one(self, src: archive.ImageSource) -> tuple[Image, list[str]]:
        cfg = image_config.parse(src.config)
        if cfg.os not in ("", "linux"):
            raise InvalidParameter(f"cannot load an image for {cfg.os}: qiao runs linux images")
        diff_ids = cfg.rootfs.diff_ids
        if len(diff_ids) != len(src.layers):
            raise InvalidParameter(f"invalid archive: the config names {len(diff_ids)} layers, the manifest {len(src.layers)}")
        image_id = "sha256:" + hashlib.sha256(src.config).hexdigest()
        with self.lock:
            known = image_id in self.by_id and os.path.isdir(self.rootfs(image_id))
        if known:  # loaded before: only the tags are news
            return self._tag_loaded(image_id, src.tags), src.tags
        work = self._workdir()
        try:
            budget = Budget(self.limits)
            for n, (layer, expected) in enumerate(zip(src.layers, diff_ids, strict=True)):
                raw = layer.open()
                data: Any = archive.Verified(raw, layer.digest, layer.size, f"layer {n} ({layer.name})") if layer.digest else raw
                diff_id = apply_layer(data, os.path.join(work, "rootfs"), budget)
                if layer.digest:
                    data.finish()
                if diff_id != expected:
                    raise InvalidParameter(f"invalid archive: layer {n} ({layer.name}) does not match the config's diff id {expected}")
            return self._record(work, src.config, src.tags, budget.content), src.tags
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _workdir(self) -> str:
        work = os.path.join(self.tmp, secrets.token_hex(8))
        os.makedirs(os.path.join(work, "rootfs"), mode=0o700)
        os.chmod(os.path.join(work, "rootfs"), 0o755)  # the container's / (its parent stays 0700)
        return work

    def _record(self, work: str, raw: bytes, tags: list[str], size: int) -> Image:
        """Move the unpacked image into place and record it, then give it
        ``tags``.  Files already in place (another load got there first, or
        the image was removed while a container still uses them: they may be
        its lower layer right now) are kept, and ours dropped: the same ID is
        the same content."""
        cfg = image_config.parse(raw)
        image_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        stamp = now()
        with self.lock:
            target = os.path.dirname(self.rootfs(image_id))
            if not os.path.isdir(target):
                os.rename(work, target)
            if image_id not in self.by_id:
                img = Image(image_id, image_id, raw.decode(), [], size, cfg.created or stamp, stamp)
                self._put([img])
                self.by_id[image_id] = img
            return self._tag_loaded(image_id, tags)

    def _tag_loaded(self, image_id: str, tags: list[str]) -> Image:
        with self.lock:
            for tag in tags:
                self._give_tag(image_id, tag)
            return self.by_id[image_id]

    # -- tags ------------------------------------------------------------

    def tag(self, ref: str, repo: str, tag: str) -> str:
        """``docker tag``: the familiar reference given."""
        new = reference.with_tag(repo, tag).familiar()
        with self.lock:
            img = self.get(ref)
            self._give_tag(img.id, new)
        return new

    def _give_tag(self, image_id: str, tag: str) -> None:
        """Under the lock: ``tag`` now names ``image_id`` (and no other image)."""
        changed = []
        for other in self.by_id.values():
            if other.id != image_id and tag in other.repo_tags:
                other.repo_tags.remove(tag)
                changed.append(other)
        img = self.by_id[image_id]
        if tag not in img.repo_tags:
            img.repo_tags.append(tag)
            img.tagged = now()
            changed.append(img)
        self._put(changed)

    def _put(self, images: list[Image]) -> None:
        if images:
            with self.store.transaction() as tx:
                for img in images:
                    tx.put("images", to_dict(img))

    # -- remove ----------------------------------------------------------

    def remove(self, ref: str, force: bool = False) -> list[dict[str, str]]:
        """``docker rmi``, as moby's ``ImageDelete``: a name untags (refused, unless
        forced, when it is the image's last tag and a container uses the image);
        the image itself goes with its last tag, or when named by ID (refused while
        it has several tags or a stopped container uses it, unless forced, and
        always while a running one does).  [{"Untagged": ...}, {"Deleted": ...}]"""
        with self.lock:
            img = self.get(ref)
            users = self.users(img.id)
            records: list[dict[str, str]] = []
            tag = ""
            with contextlib.suppress(InvalidParameter):
                tag = reference.familiar(ref)
            if tag in img.repo_tags:  # named by a tag (not by an ID prefix that also parses as a name, as "beef")
                if not force and len(img.repo_tags) == 1 and users:
                    raise Conflict(
                        f'conflict: unable to remove repository reference "{ref}" (must force) - '
                        f"container {users[0][0][:12]} is using its referenced image {img.hex[:12]}"
                    )
                img.repo_tags.remove(tag)
                self._put([img])
                records.append({"Untagged": tag})
                if img.repo_tags:
                    return records
                if any(running for _c, running in users) or (users and not force):
                    return records  # quietly kept, untagged (Docker: the image stays dangling)
            else:
                running = next((c for c, up in users if up), None)
                why = f"conflict: unable to delete {img.hex[:12]}"
                if running:
                    raise Conflict(f"{why} (cannot be forced) - image is being used by running container {running[:12]}")
                if not force and len(img.repo_tags) > 1:
                    raise Conflict(f"{why} (must be forced) - image is referenced in multiple repositories")
                if not force and users:
                    raise Conflict(f"{why} (must be forced) - image is being used by stopped container {users[0][0][:12]}")
                records += [{"Untagged": t} for t in img.repo_tags]
            with self.store.transaction() as tx:
                tx.delete("images", img.id)
            del self.by_id[img.id]
            records.append({"Deleted": img.id})
            self.release(img.id)
            return records

    def release(self, image_id: str) -> None:
        """Delete an image's files once it has no record and no container uses
        them: moved aside under the lock (a load of the same image may put it
        back meanwhile), deleted without it."""
        with self.lock:
            if image_id in self.by_id or self.users(image_id):
                return
            doomed = os.path.join(self.tmp, "removed-" + secrets.token_hex(8))
            try:
                os.rename(os.path.dirname(self.rootfs(image_id)), doomed)
            except FileNotFoundError:
                return
        shutil.rmtree(doomed, ignore_errors=True)


@contextlib.contextmanager
def _open_tar(path: str) -> Iterator[tarfile.TarFile]:
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 (closed below: the open itself may fail)
    except tarfile.TarError as exc:
        raise InvalidParameter(f"invalid archive: not a tar file ({exc})") from None
    with tar:
        yield tar


class _Capped:
    """An upload, cut off with a 413 past ``limit`` bytes."""

    def __init__(self, source: Readable, limit: int):
        self._source, self._limit, self._seen = source, limit, 0

    def read(self, n: int = 1 << 20) -> bytes:
        data = self._source.read(n)
        self._seen += len(data)
        if self._seen > self._limit:
            raise TooLarge(f"archive larger than qiao's limit of {self._limit} bytes")
        return data


def _matches(tag: str, pattern: str) -> bool:
    """Docker's ``reference`` filter: a glob on ``name:tag`` or on the name alone."""
    name = tag.rpartition(":")[0] if ":" in tag.rpartition("/")[2] else tag
    return fnmatch.fnmatchcase(tag, pattern) or fnmatch.fnmatchcase(name, pattern)


def unix_time(stamp: str) -> int:
    """An RFC 3339 time (Go writes nanoseconds) as seconds since the epoch; 0 when it does not parse."""
    text = stamp.strip().replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # keep the zone, drop the fraction: seconds are all a listing shows
        zone = next((rest[i:] for i, c in enumerate(rest) if c in "+-"), "")
        text = head + zone
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp())
