"""Docker's multiplexed stream: frames of ``[kind, 0, 0, 0, size (big-endian
32 bits)]`` followed by ``size`` bytes (moby ``stdcopy``).

Docker's clients read a container's output in this shape when it has no
terminal (attach, exec, logs): kind 1 is stdout, 2 is stderr.  qiao uses
the same frames between qiaod and a container's shim (its attach socket,
see :mod:`qiao.runtime.console`), with a few kinds of its own for the
other direction and for control: the daemon only re-labels frames, and one
decoder serves both ends.

Standard library only: the shim imports it.
"""

from __future__ import annotations

import struct

STDIN, STDOUT, STDERR = 0, 1, 2  # Docker's stream numbers
# qiaod <-> shim only (never sent to a Docker client):
CLOSE_STDIN = 16  # daemon -> shim: close the process's stdin once what was sent is written
RESIZE = 17  # daemon -> shim: the terminal's size, payload ">HH" rows, columns
EXIT = 18  # shim -> daemon: the process ended (payload: its exit code, ASCII); the last frame

HEADER = struct.Struct(">BxxxL")
MAX_FRAME = 1 << 20  # the largest payload a decoder accepts (the shim sends at most 64 KiB)


def frame(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def resize(rows: int, columns: int) -> bytes:
    return frame(RESIZE, struct.pack(">HH", min(rows, 0xFFFF), min(columns, 0xFFFF)))


def size_of(payload: bytes) -> tuple[int, int]:
    """The (rows, columns) of a RESIZE frame's payload."""
    rows, columns = struct.unpack(">HH", payload[:4].ljust(4, b"\0"))
    return rows, columns


class BadFrame(ValueError):
    """A header announcing more than MAX_FRAME bytes: not this protocol."""


class Decoder:
    """Frames out of a byte stream that arrives in pieces: ``feed`` returns
    the complete ones, keeping the rest for the next call."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        start, size = 0, len(self._buf)
        while size - start >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buf, start)
            if length > self._max:
                raise BadFrame(f"a frame of {length} bytes")
            end = start + HEADER.size + length
            if end > size:
                break
            out.append((kind, bytes(self._buf[start + HEADER.size : end])))
            start = end
        del self._buf[:start]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)
