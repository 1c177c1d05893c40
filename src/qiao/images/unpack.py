"""Applying layer tars to a directory, safely.

An image's layers come from whoever ran ``docker load``; the daemon that
unpacks them is root.  So every entry is placed without trusting the
archive:

* **No path escapes.**  Absolute names and ``..`` components are refused.
  Every path is walked one component at a time from a descriptor of the
  image's root with ``O_NOFOLLOW``, so a symbolic link the archive made
  earlier (``etc -> /etc``) is never followed: an entry that would go
  through one is refused.  (Docker follows such links inside a chroot; qiao
  refuses them, which no image built by Docker or BuildKit needs.)  Files are
  created with ``O_EXCL | O_NOFOLLOW``; a hard link's target is walked the
  same way, so it is inside the image too.
* **No device nodes.**  Character and block devices are skipped (a
  container gets its own minimal ``/dev``); FIFOs are kept.
* **Limits**: bytes of file content, number of entries and bytes of the
  decompressed stream, per image (:class:`Limits`); past one, the import
  fails with 413 and leaves nothing.
* **Owners and modes as archived**: numeric uid/gid (names are ignored, as
  Docker does), permission bits with setuid/setgid/sticky; the image lives
  under qiao's root, which only root can enter (0700), so a setuid file in
  an image is no way up for a user of the host.  Extended attributes (file
  capabilities) are not applied: qiao's containers run with no_new_privs.

Whiteouts (``.wh.NAME`` removes NAME of the layers below, ``.wh..wh..opq``
empties its directory of them) are applied, and layers may be gzip, bzip2
or xz compressed (told by their first bytes).  The diff ID (SHA-256 of the
uncompressed tar, every byte up to its end) is computed on the way, for the
image config's ``rootfs.diff_ids``.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import logging
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from qiao.engine.errors import InvalidParameter, QiaoError

log = logging.getLogger("qiao.images")

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_ID = (1 << 32) - 2  # uids and gids: 2**32 - 1 is the kernel's "no id"
COPY = 1 << 20


class Readable(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


@dataclass(frozen=True)
class Limits:
    """What one import or load may take (each past it is a 413)."""

    archive: int = 16 << 30  # bytes uploaded (``docker load``'s archive, ``docker import``'s tar)
    content: int = 32 << 30  # bytes of file content in one image, all layers together
    entries: int = 2_000_000  # tar entries in one image, all layers together
    config: int = 8 << 20  # bytes of an image config or manifest JSON

    @property
    def stream(self) -> int:
        """Decompressed bytes of one image's layers: the content, a few headers per
        entry and the padding; a bound on a zip bomb of zeros as much as of files."""
        return self.content + self.entries * 2048 + (1 << 20)


class UnsafeArchive(InvalidParameter):
    """An entry that would land outside the image, or an archive that is not one."""


class TooLarge(QiaoError):
    status = 413


class Budget:
    """What one image has used of its limits, across its layers."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.content = 0
        self.entries = 0
        self.stream = 0
        self.skipped_devices = 0

    def add_stream(self, n: int) -> None:
        self.stream += n
        if self.stream > self.limits.stream:
            raise TooLarge(f"image larger than qiao's limit: more than {self.limits.stream} bytes of uncompressed layers")

    def add_content(self, n: int) -> None:
        self.content += n
        if self.content > self.limits.content:
            raise TooLarge(f"image larger than qiao's limit: more than {self.limits.content} bytes of files")

    def add_entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.entries:
            raise TooLarge(f"image larger than qiao's limit: more than {self.limits.entries} entries")


# -- the stream: decompression, the diff ID, the budget ------------------------------


class _Raw(io.RawIOBase):
    """A ``read(n)`` source as a raw stream (so it can be buffered and peeked)."""

    def __init__(self, source: Readable):
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Digesting(io.RawIOBase):
    """The uncompressed layer: hashed and counted against the budget as read;
    a decompressor's complaint is the archive's fault (400)."""

    def __init__(self, source: BinaryIO, budget: Budget):
        self._source = source
        self._budget = budget
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._source.read(len(buffer))
        except (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
            raise UnsafeArchive(f"invalid compressed layer: {exc}") from None
        except OSError as exc:
            if isinstance(exc, QiaoError):
                raise
            raise UnsafeArchive(f"invalid compressed layer: {exc}") from None  # bz2 says "Invalid data stream" so
        self._budget.add_stream(len(data))
        self.sha256.update(data)
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read to the end: the diff ID covers the tar's padding too."""
        buf = bytearray(COPY)
        while self.readinto(buf):
            pass


def decompressed(source: Readable) -> BinaryIO:
    """``source`` uncompressed, whatever it is (gzip, bzip2, xz, or a plain tar)."""
    buffered = io.BufferedReader(_Raw(source), COPY)
    magic = buffered.peek(6)[:6]
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    if magic[:3] == b"BZh":
        return bz2.BZ2File(buffered)  # type: ignore[return-value]
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(buffered)  # type: ignore[return-value]
    if magic[:4] == b"\x28\xb5\x2f\xfd":
        raise UnsafeArchive("zstd-compressed layers are not supported: save the image with gzip or no compression")
    return buffered  # type: ignore[return-value]


# -- paths -------------------------------------------------------------------------------


def clean_path(name: str) -> list[str]:
    """An archive path as its components; absolute paths and ``..`` are refused."""
    if name.startswith("/"):
        raise UnsafeArchive(f"unsafe path in the archive: {name!r} is absolute")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"unsafe path in the archive: {name!r} leaves the image (..)")
    if "\0" in name:
        raise UnsafeArchive(f"unsafe path in the archive: {name!r} holds a NUL byte")
    return parts


class _Tree:
    """The image's root directory, walked by descriptors without following links."""

    def __init__(self, root: str):
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._cached: tuple[tuple[str, ...], int] | None = None  # the last parent opened: entries come by directory

    def close(self) -> None:
        self.forget()
        os.close(self.fd)

    def forget(self) -> None:
        """Something was removed: a cached directory may be gone."""
        if self._cached:
            os.close(self._cached[1])
            self._cached = None

    def parent(self, parts: list[str], create: bool, what: str) -> int | None:
        """A descriptor of the directory holding ``parts[-1]`` (the tree's: do not
        close it); missing directories are made (mode 0755, root's) when ``create``,
        else None.  A link or a file on the way is refused."""
        key = tuple(parts[:-1])
        if self._cached and self._cached[0] == key:
            return self._cached[1]
        fd = os.dup(self.fd)
        try:
            for i, comp in enumerate(key):
                try:
                    nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError:  # ELOOP (a link) or ENOTDIR (a file)
                    link = stat.S_ISLNK(os.stat(comp, dir_fd=fd, follow_symlinks=False).st_mode)
                    where = "/".join(key[: i + 1])
                    if link:
                        raise UnsafeArchive(f"unsafe path in the archive: {what!r} goes through the symbolic link {where!r}") from None
                    raise UnsafeArchive(f"invalid archive: {what!r} is under {where!r}, which is not a directory") from None
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        self.forget()
        self._cached = (key, fd)
        return fd


def _remove(parent: int, name: str) -> None:
    """Remove ``name`` (a tree, a file or a link) under the directory ``parent``."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent)  # fd-based: it does not follow links either
    else:
        os.unlink(name, dir_fd=parent)


# -- entries -------------------------------------------------------------------------------


class _Layer:
    """One layer applied to the tree: what it made (for an opaque directory)
    and its directories' times (set once their entries are in)."""

    def __init__(self, tree: _Tree, budget: Budget):
        self.tree = tree
        self.budget = budget
        self.made: set[tuple[str, ...]] = set()
        self.dir_times: list[tuple[list[str], float]] = []
        self.skipped: set[tuple[str, ...]] = set()

    def apply(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.budget.add_entry()
        parts = clean_path(member.name)
        if not parts:
            return  # the root itself: it stays as made (0755, root's)
        base = parts[-1]
        if base.startswith(WHITEOUT):
            self._whiteout(parts)
            return
        parent = self.tree.parent(parts, True, member.name)
        assert parent is not None
        if member.ischr() or member.isblk():
            self.budget.skipped_devices += 1
            self.skipped.add(tuple(parts))
            return
        uid, gid = member.uid, member.gid
        if not (0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):
            raise UnsafeArchive(f"invalid archive: {member.name!r} has owner {uid}:{gid}")
        mode = member.mode & 0o7777
        try:
            existing = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
            _remove(parent, base)
            self.tree.forget()
            parent = self.tree.parent(parts, True, member.name)
            assert parent is not None
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(base, 0o700, dir_fd=parent)
            self._owner_mode(parent, base, uid, gid, mode)
            self.dir_times.append((parts, member.mtime))
        elif member.isreg():
            self._file(tar, member, parent, base, uid, gid, mode)
        elif member.issym():
            if "\0" in member.linkname:
                raise UnsafeArchive(f"invalid archive: the link {member.name!r} holds a NUL byte")
            os.symlink(member.linkname, base, dir_fd=parent)  # its target is data: never followed here
            os.chown(base, uid, gid, dir_fd=parent, follow_symlinks=False)
            self._mtime(parent, base, member.mtime)
        elif member.islnk():
            self._hardlink(member, parent, base)
            parent = self.tree.parent(parts, True, member.name)  # the target's walk replaced the cached parent
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=parent)
            self._owner_mode(parent, base, uid, gid, mode)
            self._mtime(parent, base, member.mtime)
        else:
            log.debug("skipping %r: tar entry type %r", member.name, member.type)
            return
        self.made.add(tuple(parts))

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, base: str, uid: int, gid: int, mode: int) -> None:
        self.budget.add_content(member.size)
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            data = tar.extractfile(member)
            if data is not None:
                while chunk := data.read(COPY):
                    _write_all(fd, chunk)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)  # after chown, which clears setuid and setgid
        finally:
            os.close(fd)
        self._mtime(parent, base, member.mtime)

    def _hardlink(self, member: tarfile.TarInfo, parent: int, base: str) -> None:
        target = clean_path(member.linkname)
        if not target:
            raise UnsafeArchive(f"invalid archive: the hard link {member.name!r} has no target")
        if tuple(target) in self.skipped:
            self.skipped.add(tuple(clean_path(member.name)))
            return
        # The target's directory is walked like any path (no links followed): it is inside the image.
        link_dir = os.dup(parent)
        try:
            target_dir = self.tree.parent(target, False, member.linkname)
            if target_dir is None:
                raise UnsafeArchive(f"invalid archive: the hard link {member.name!r} points to {member.linkname!r}, which is not there")
            try:
                st = os.stat(target[-1], dir_fd=target_dir, follow_symlinks=False)
            except FileNotFoundError:
                raise UnsafeArchive(
                    f"invalid archive: the hard link {member.name!r} points to {member.linkname!r}, which is not there"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeArchive(f"invalid archive: the hard link {member.name!r} points to a directory")
            os.link(target[-1], base, src_dir_fd=target_dir, dst_dir_fd=link_dir, follow_symlinks=False)
        finally:
            os.close(link_dir)

    def _whiteout(self, parts: list[str]) -> None:
        base = parts[-1]
        parent = self.tree.parent(parts, False, "/".join(parts))
        if parent is None:
            return  # nothing below to hide
        if base == OPAQUE:
            prefix = tuple(parts[:-1])
            for name in os.listdir(parent):
                if prefix + (name,) not in self.made:
                    _remove(parent, name)
        elif base.startswith(WHITEOUT + WHITEOUT):
            return  # other aufs metadata (.wh..wh.plnk): nothing to apply
        else:
            victim = base[len(WHITEOUT) :]
            if victim in ("", ".", ".."):
                raise UnsafeArchive(f"invalid archive: whiteout {'/'.join(parts)!r} names no file")
            _remove(parent, victim)
        self.tree.forget()

    @staticmethod
    def _owner_mode(parent: int, base: str, uid: int, gid: int, mode: int) -> None:
        os.chown(base, uid, gid, dir_fd=parent, follow_symlinks=False)
        _chmod(parent, base, mode)  # after chown, which clears setuid and setgid

    @staticmethod
    def _mtime(parent: int, base: str, mtime: float) -> None:
        with contextlib.suppress(OverflowError, ValueError, OSError):  # an absurd time is not worth failing for
            os.utime(base, (mtime, mtime), dir_fd=parent, follow_symlinks=False)

    def finish(self) -> None:
        for parts, mtime in self.dir_times:
            with contextlib.suppress(UnsafeArchive, OSError):  # removed or replaced by a later entry: nothing to do
                parent = self.tree.parent(parts, False, "/".join(parts))
                if parent is not None:
                    self._mtime(parent, parts[-1], mtime)


def _chmod(parent: int, base: str, mode: int) -> None:
    """chmod of a directory or FIFO entry (never a link: they were made by us, so
    opening with O_NOFOLLOW cannot meet one)."""
    fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def apply_layer(source: Readable, root: str, budget: Budget) -> str:
    """Apply one layer (a tar, compressed or not, read from ``source``) to the
    directory ``root``; its diff ID (``sha256:...``)."""
    stream = _Digesting(decompressed(source), budget)
    tree = _Tree(root)
    layer = _Layer(tree, budget)
    try:
        try:
            tar = tarfile.open(fileobj=io.BufferedReader(stream, COPY), mode="r|")  # type: ignore[call-overload]  # noqa: SIM115
        except tarfile.ReadError as exc:
            raise UnsafeArchive(f"not a tar archive: {exc}") from None
        try:
            while (member := tar.next()) is not None:
                layer.apply(tar, member)
            layer.finish()
        except (tarfile.TarError, EOFError) as exc:  # bad headers, or an archive cut short
            raise UnsafeArchive(f"invalid tar archive: {exc}") from None
        finally:
            tar.close()
        stream.drain()
    finally:
        tree.close()
    return "sha256:" + stream.sha256.hexdigest()
