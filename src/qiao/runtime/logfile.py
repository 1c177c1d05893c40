"""A container's log: what it wrote, which stream, and when.

The shim appends; qiaod reads (``docker logs``, ``qiao logs``, attach with
``logs=1``).  The file (``DATA/containers/<id>/container.log``, 0600) is
the 8-byte magic ``QIAOLOG1`` followed by records::

    length u32 | stream u8 | flags u8 | 0 u16 | time_ns i64 | data | length u32   (little-endian)

A record holds one line (its data ends with ``\\n``) or the part of a line
read so far (no ``\\n``: the rest follows in later records), so ``--tail``
counts lines, ``-t`` stamps each line and nothing a process writes waits
for its newline.  Bytes are kept as written (a terminal's output is not
UTF-8), unlike Docker's json-file.  The length at the end lets a reader
walk backwards from the end (``--tail N`` costs the tail, not the file).

One writer at a time (the container's shim).  A record goes out in one
``write``; one that fails half way (a full disk) is cut off again, and a
daemon repairs a file a killed shim left torn (:func:`repair`) before the
next start, so readers only ever meet an incomplete record at the very
end, where a follower waits for the rest.

Standard library only: the shim imports it.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time

MAGIC = b"QIAOLOG1"
HEAD = struct.Struct("<IBBHq")
TAIL = struct.Struct("<I")
OVERHEAD = HEAD.size + TAIL.size
READ_BLOCK = 1 << 20
BACK_BLOCK = 1 << 16

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO


def encode(stream: int, data: bytes, time_ns: int) -> bytes:
    """``data`` as records, one per line (the last without ``\\n`` if it is unfinished)."""
    parts = []
    start, size = 0, len(data)
    while start < size:
        newline = data.find(b"\n", start)
        end = size if newline < 0 else newline + 1
        length = end - start
        parts.append(HEAD.pack(length, stream, 0, 0, time_ns) + data[start:end] + TAIL.pack(length))
        start = end
    return b"".join(parts)


class Writer:
    """Appends records to an open log (the shim's side)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.size = os.fstat(fd).st_size
        if self.size == 0:
            self._append(MAGIC)

    def write(self, stream: int, data: bytes) -> None:
        if data:
            self._append(encode(stream, data, time.time_ns()))

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:  # a full disk: the output is lost, the log stays whole
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            return
        self.size += len(data)


# -- reading (qiaod's side) ----------------------------------------------------------


def records(f: BinaryIO, offset: int) -> Iterator[tuple[int, int, bytes, int]]:
    """``(stream, time_ns, data, next_offset)`` of each complete record from
    ``offset`` on; an incomplete record at the end ends it (a follower reads
    again from the last ``next_offset``)."""
    offset = max(offset, len(MAGIC))
    f.seek(offset)
    buf, pos, size = b"", 0, 0
    while True:
        if size - pos >= HEAD.size:
            length, stream, _flags, _zero, stamp = HEAD.unpack_from(buf, pos)
            end = pos + OVERHEAD + length
            if end <= size:
                if TAIL.unpack_from(buf, end - TAIL.size)[0] != length:
                    return  # not a record: never written so by a writer; stop rather than show garbage
                offset += end - pos
                yield stream, stamp, buf[pos + HEAD.size : end - TAIL.size], offset
                pos = end
                continue
        more = f.read(READ_BLOCK)
        if not more:
            return
        buf = buf[pos:] + more
        pos, size = 0, len(buf)


def tail_offset(f: BinaryIO, lines: int, since: int = 0, until: int = 0) -> int:
    """Where the last ``lines`` lines begin (records after ``until`` not
    counted; records before ``since`` end the search), walking back from the
    end; the whole file for a negative ``lines``."""
    end = f.seek(0, os.SEEK_END)
    if lines < 0 or end <= len(MAGIC):
        return len(MAGIC)
    back = _Backwards(f, end)
    pos, found = end, 0
    while pos > len(MAGIC):
        length = TAIL.unpack(back.read(pos - TAIL.size, pos))[0]
        start = pos - OVERHEAD - length
        if start < len(MAGIC):
            break  # not a record: show what follows it
        head = HEAD.unpack(back.read(start, start + HEAD.size))
        if head[0] != length:
            break
        stamp = head[4]
        if since and stamp < since:
            return pos
        last = back.read(pos - TAIL.size - 1, pos - TAIL.size) if length else b""
        if (not until or stamp <= until) and (last == b"\n" or pos == end):
            if found == lines:
                return pos
            found += 1
        pos = start
    return len(MAGIC)


class _Backwards:
    """Byte ranges of a file read in blocks from its end towards its start."""

    def __init__(self, f: BinaryIO, end: int):
        self.f, self.start, self.data = f, end, b""

    def read(self, a: int, b: int) -> bytes:
        if a < self.start:
            new = max(0, min(a, self.start - BACK_BLOCK))
            self.f.seek(new)
            self.data = self.f.read(self.start - new) + self.data
            self.start = new
        return self.data[a - self.start : b - self.start]


def is_log(f: BinaryIO) -> bool:
    f.seek(0)
    return f.read(len(MAGIC)) == MAGIC


def repair(path: str) -> None:
    """Before a shim appends again: cut off a record a killed shim left half
    written, and turn a log of an older qiao (raw bytes, stdout and stderr
    mixed) into one stdout record, so that the file is records only."""
    try:
        f = open(path, "r+b")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        if not is_log(f):
            f.seek(0)
            old = f.read()
            stamp = int(os.fstat(f.fileno()).st_mtime * 1e9)
            f.seek(0)
            f.write(MAGIC + encode(1, old, stamp))
            f.truncate()
            return
        good = len(MAGIC)
        for *_record, after in records(f, good):
            good = after
        if good != size:
            f.truncate(good)
