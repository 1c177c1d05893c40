"""A container's processes as /proc describes them, for ``top`` and ``stats``
(read from the files, never from ``ps`` output)."""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    uid: int
    state: str  # R, S, D, Z, T, ...
    comm: str
    cmdline: list[str]
    utime: int  # clock ticks
    stime: int
    cutime: int  # of children it has waited for
    cstime: int
    nice: int
    threads: int
    start: int  # clock ticks after boot
    vsize: int  # bytes
    rss: int  # bytes
    tty: int  # device number, 0: none
    session: int
    pgrp: int
    tpgid: int  # the foreground process group of its terminal


def read(pid: int) -> Proc | None:
    """One process; None when it is gone (or went while being read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()  # fields[0] is field 3 of proc(5), the state
    return Proc(
        pid=pid,
        ppid=int(fields[1]),
        uid=uid,
        state=fields[0],
        comm=comm,
        cmdline=cmdline,
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
        nice=int(fields[16]),
        threads=int(fields[17]),
        start=int(fields[19]),
        vsize=int(fields[20]),
        rss=int(fields[21]) * PAGE_SIZE,
        tty=int(fields[4]),
        session=int(fields[3]),
        pgrp=int(fields[2]),
        tpgid=int(fields[5]),
    )


def read_all(pids: list[int]) -> list[Proc]:
    """The processes still there, by pid."""
    return sorted((p for p in map(read, pids) if p is not None), key=lambda p: p.pid)


def uptime() -> float:
    """Seconds since boot (the clock of ``Proc.start``)."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def memory_total() -> int:
    """The machine's memory in bytes (what a container without a limit may use)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def system_cpu_ns() -> int:
    """The machine's CPU time since boot, all CPUs, in nanoseconds: what dockerd
    reports as ``system_cpu_usage`` (the first seven fields of /proc/stat's cpu line)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:8]
    return sum(int(v) for v in fields) * 1_000_000_000 // CLOCK_TICKS


def user_names() -> dict[int, str]:
    """uid -> name, from the host's /etc/passwd (ps shows names)."""
    names: dict[int, str] = {}
    try:
        with open("/etc/passwd") as f:
            for line in f:
                parts = line.split(":")
                if len(parts) > 2 and parts[2].isdigit():
                    names.setdefault(int(parts[2]), parts[0])
    except OSError:
        pass
    return names
