"""``docker logs``: a container's log file (:mod:`qiao.runtime.logfile`) as
Docker's body, raw for a container with a TTY, multiplexed frames
otherwise; ``follow`` goes on until the container stops."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from qiao.engine.errors import InvalidParameter
from qiao.runtime import frames, logfile

FOLLOW_POLL = 0.1  # seconds between looks at a followed log that has nothing new
CHUNK = 1 << 16  # bytes gathered into one write


@dataclass(frozen=True)
class Query:
    stdout: bool
    stderr: bool
    timestamps: bool = False
    tail: int = -1  # lines; -1: all
    since: int = 0  # ns since the epoch; 0: no bound
    until: int = 0
    follow: bool = False


def parse_time(name: str, text: str) -> int:
    """Docker's ``since``/``until``: ``SECONDS[.FRACTION]`` since the epoch, in ns (0: none)."""
    if not text:
        return 0
    seconds, dot, fraction = text.partition(".")
    if not (seconds.isascii() and seconds.isdigit() and len(seconds) < 12) or (dot and not (fraction.isascii() and fraction.isdigit())):
        raise InvalidParameter(f"invalid value for {name}: {text!r} is not a UNIX timestamp (SECONDS[.NANOSECONDS])")
    return int(seconds) * 10**9 + int((fraction + "000000000")[:9] or "0")


def parse_tail(text: str) -> int:
    """Docker's ``tail``: ``all`` (or empty, or negative) or a number of lines."""
    if text in ("", "all") or (text.startswith("-") and text[1:].isdigit()):
        return -1
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise InvalidParameter(f"invalid value for tail: {text!r} is not a number of lines or 'all'")
    return int(text)


def stamp(ns: int) -> bytes:
    """RFC 3339 with nanoseconds, fixed width (Docker's ``RFC3339NanoFixed``), UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)).encode() + b".%09dZ" % (ns % 10**9)


def body(path: str, query: Query, tty: bool, running: Callable[[], bool]) -> Iterator[bytes]:
    """The log as Docker sends it; while following, an empty chunk now and then
    (the server checks that the client is still there)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:  # never started, or only in the foreground (its output went to the caller)
        return
    with f:
        if not logfile.is_log(f):
            return
        offset = logfile.tail_offset(f, query.tail, query.since, query.until)
        line_start = {frames.STDOUT: True, frames.STDERR: True}
        wanted = {s for s, on in ((frames.STDOUT, query.stdout), (frames.STDERR, query.stderr)) if on}
        while True:
            stopped = query.follow and not running()  # before reading: what it wrote before it stopped is there
            out: list[bytes] = []
            size = 0
            for stream, ns, data, after in logfile.records(f, offset):
                offset = after
                if stream not in wanted or (query.since and ns < query.since) or (query.until and ns > query.until):
                    continue
                if query.timestamps:
                    if line_start[stream]:
                        data = stamp(ns) + b" " + data
                    line_start[stream] = data.endswith(b"\n")
                out.append(data if tty else frames.frame(stream, data))
                size += len(out[-1])
                if size >= CHUNK:
                    yield b"".join(out)
                    out, size = [], 0
            if out:
                yield b"".join(out)
            if not query.follow or stopped or (query.until and time.time_ns() > query.until):
                return
            time.sleep(FOLLOW_POLL)
            yield b""
