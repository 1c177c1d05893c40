"""What happened to containers and networks, as ``docker events`` shows it:
a bounded in-memory ring of records that readers follow.

Unlike :mod:`qiao.engine.events` (listeners called in line), recording here
only appends to the ring and wakes the readers; it takes the ring's own small
lock, never does I/O, and so is safe under the engine lock.  A reader (an
``/events`` stream) waits on that lock's condition in its own thread and
writes to its client with no lock held.  The ring keeps the last ``KEEP``
records (dockerd keeps 256) for ``since``/``until`` replays; a reader that
falls further behind than that loses the oldest, as with dockerd.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

KEEP = 1024


@dataclass(frozen=True)
class Record:
    """One event: ``type`` (container | network), ``action`` (create, start,
    die, connect, ...), the actor's id and attributes (Docker's names: name,
    image, exitCode, signal, container, type, and a container's labels)."""

    seq: int
    type: str
    action: str
    actor: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    time_ns: int = 0


class EventLog:
    def __init__(self, keep: int = KEEP):
        self._ring: collections.deque[Record] = collections.deque(maxlen=keep)
        self._changed = threading.Condition(threading.Lock())
        self._seq = 0
        self.readers = 0  # streams following the log now (`docker info`'s NEventsListener)

    def record(self, type: str, action: str, actor: str, attributes: Mapping[str, str] | None = None) -> Record:
        with self._changed:
            self._seq += 1
            rec = Record(self._seq, type, action, actor, dict(attributes or {}), time.time_ns())
            self._ring.append(rec)
            self._changed.notify_all()
            return rec

    def snapshot(self) -> tuple[list[Record], int]:
        """Every record kept, and the sequence number to follow from."""
        with self._changed:
            return list(self._ring), self._seq

    def after(self, seq: int, timeout: float) -> tuple[list[Record], int]:
        """The records after ``seq`` (waiting up to ``timeout`` s for one), and the new position."""
        with self._changed:
            if self._seq == seq:
                self._changed.wait(timeout)
            return [r for r in self._ring if r.seq > seq], self._seq

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Counts a reader in ``readers`` while it follows the log."""
        with self._changed:
            self.readers += 1
        try:
            yield
        finally:
            with self._changed:
                self.readers -= 1
