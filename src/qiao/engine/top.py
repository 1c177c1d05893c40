"""``docker top``: a container's processes as ``ps`` would list them, built
from /proc (:mod:`qiao.engine.processes`), never by running ``ps`` and
parsing its text.

dockerd runs ``ps PS_ARGS`` (default ``-ef``) and keeps the container's
rows.  qiao knows ps's common formats and builds the same columns: the full
format (``-ef``, ``-f``), the default one (``-e``, ``-A``), the BSD user
format (``aux``) and the BSD default (``ax``).  Other arguments are refused,
naming them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from qiao.engine.errors import InvalidParameter
from qiao.engine.processes import CLOCK_TICKS, Proc

FORMATS = {
    "full": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
    "default": ["PID", "TTY", "TIME", "CMD"],
    "user": ["USER", "PID", "%CPU", "%MEM", "VSZ", "RSS", "TTY", "STAT", "START", "TIME", "COMMAND"],
    "bsd": ["PID", "TTY", "STAT", "TIME", "COMMAND"],
}
_SELECT_UNIX = set("eAaNd")  # which processes: qiao lists the container's anyway
_SELECT_BSD = set("axwg")


def ps_format(ps_args: str) -> str:
    """The format ``ps PS_ARGS`` prints (a key of FORMATS)."""
    unix: set[str] = set()
    bsd: set[str] = set()
    for token in ps_args.split():
        (unix if token.startswith("-") else bsd).update(token.lstrip("-"))
    if not (unix or bsd):
        return "full"  # dockerd's default: -ef
    if unix and not bsd and unix <= _SELECT_UNIX | {"f"}:
        return "full" if "f" in unix else "default"
    if bsd and not unix and bsd <= _SELECT_BSD | {"u"}:
        return "user" if "u" in bsd else "bsd"
    raise InvalidParameter(f"qiao's top takes ps's -ef, -f, -e or aux (ax) arguments, not {ps_args!r}")


@dataclass(frozen=True)
class Clock:
    """What the columns are relative to: now, the boot's uptime, the machine's memory."""

    now: float  # epoch seconds
    uptime: float  # seconds since boot
    memory: int  # bytes


def table(procs: list[Proc], ps_args: str, clock: Clock, users: dict[int, str]) -> tuple[list[str], list[list[str]]]:
    """Docker's ``Titles`` and ``Processes``."""
    fmt = ps_format(ps_args)
    return FORMATS[fmt], [_row(fmt, p, clock, users) for p in procs]


def _row(fmt: str, p: Proc, clock: Clock, users: dict[int, str]) -> list[str]:
    cpu_seconds = (p.utime + p.stime) / CLOCK_TICKS
    elapsed = max(clock.uptime - p.start / CLOCK_TICKS, 1e-9)
    cmd = " ".join(p.cmdline) if p.cmdline else f"[{p.comm}]"
    user = users.get(p.uid, str(p.uid))
    started = _start_time(clock.now - elapsed, clock.now)
    if fmt == "full":
        share = min(int(cpu_seconds * 100 / elapsed), 99)  # ps's C: whole percent over its life
        return [user, str(p.pid), str(p.ppid), str(share), started, tty(p.tty), clock_time(cpu_seconds), cmd]
    if fmt == "default":
        return [str(p.pid), tty(p.tty), clock_time(cpu_seconds), cmd]
    if fmt == "bsd":
        return [str(p.pid), tty(p.tty), stat(p), minutes_time(cpu_seconds), cmd]
    memory = f"{p.rss * 100 / clock.memory:.1f}" if clock.memory else "0.0"
    return [
        user, str(p.pid), f"{cpu_seconds * 100 / elapsed:.1f}", memory, str(p.vsize // 1024), str(p.rss // 1024),
        tty(p.tty), stat(p), started, minutes_time(cpu_seconds), cmd,
    ]  # fmt: skip


def tty(device: int) -> str:
    """A controlling terminal's name, as ps prints it; ``?`` for none."""
    major, minor = (device & 0xFFF00) >> 8, (device & 0xFF) | ((device >> 12) & 0xFFF00)  # the kernel's new_decode_dev
    if device == 0:
        return "?"
    if 136 <= major <= 143:
        return f"pts/{(major - 136) * 256 + minor}"
    if major == 4 and minor < 64:
        return f"tty{minor}"
    if major == 4:
        return f"ttyS{minor - 64}"
    return "?"


def stat(p: Proc) -> str:
    """ps's STAT: the state, then < (high priority), N (low), s (session leader), l (threads), + (foreground)."""
    flags = "<" if p.nice < 0 else "N" if p.nice > 0 else ""
    flags += "s" if p.session == p.pid else ""
    flags += "l" if p.threads > 1 else ""
    flags += "+" if p.tty and p.tpgid == p.pgrp else ""
    return p.state + flags


def clock_time(seconds: float) -> str:
    """``[DD-]HH:MM:SS`` (ps's TIME of the -f format)."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    text = f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}-{text}" if days else text


def minutes_time(seconds: float) -> str:
    """``M:SS`` (ps's TIME of the BSD formats)."""
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}"


def _start_time(started: float, now: float) -> str:
    """``HH:MM`` within a day, ``MonDD`` within a year, else the year (ps's STIME / START)."""
    local = time.localtime(started)
    if now - started < 24 * 3600:
        return time.strftime("%H:%M", local)
    if now - started < 365 * 24 * 3600:
        return time.strftime("%b%d", local)
    return time.strftime("%Y", local)
