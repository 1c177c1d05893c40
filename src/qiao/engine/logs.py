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


class Stamps:
    """RFC 3339 with nanoseconds, fixed width (Docker's ``RFC3339NanoFixed``), UTC;
    the seconds' part is formatted once per second (logs come in runs)."""

    def __init__(self) -> None:
        self._second, self._text = -1, b""

    def __call__(self, ns: int) -> bytes:
        second, fraction = divmod(ns, 10**9)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return self._text + b".%09dZ" % fraction


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
        stamp = Stamps()
        wanted = {s for s, on in ((frames.STDOUT, query.stdout), (frames.STDERR, query.stderr)) if on}
        while True:
            stopped = query.follow and not running()  # before reading: what it wrote before it stopped is there
            # Records of one stream in a row go out as one frame (a line each would cost a client a frame each).
            out: list[bytes] = []
            run: list[bytes] = []
            run_stream = size = 0
            for stream, ns, data, after in logfile.records(f, offset):
                offset = after
                if stream not in wanted or (query.since and ns < query.since) or (query.until and ns > query.until):
                    continue
                if query.timestamps:
                    if line_start[stream]:
                        data = stamp(ns) + b" " + data
                    line_start[stream] = data.endswith(b"\n")
                if stream != run_stream and run:
                    out.append(_frame(run_stream, run, tty))
                    run = []
                run_stream = stream
                run.append(data)
                size += len(data)
                if size >= CHUNK:
                    out.append(_frame(run_stream, run, tty))
                    yield b"".join(out)
                    out, run, size = [], [], 0
            if run:
                out.append(_frame(run_stream, run, tty))
            if out:
                yield b"".join(out)
            if not query.follow or stopped or (query.until and time.time_ns() > query.until):
                return
            time.sleep(FOLLOW_POLL)
            yield b""


def _frame(stream: int, parts: list[bytes], tty: bool) -> bytes:
    data = b"".join(parts)
    return data if tty else frames.frame(stream, data)
