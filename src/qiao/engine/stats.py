"""``docker stats``: one sample of a container's use of the machine.

CPU time comes from the container's cgroup (``cpu.stat``: exited processes
included) or, without one, from /proc: each live process's own and waited-for
children's time, plus what the shim collected from the processes it reaped.
Memory is ``memory.current`` when the memory controller is on, else the
resident size of the processes.  Network counters are read per interface
inside the container's network namespace (netlink, in the sandbox).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from qiao.engine import processes


@dataclass(frozen=True)
class Sample:
    read: str  # RFC 3339 with nanoseconds, as dockerd's
    cpu_total: int = 0  # nanoseconds
    cpu_user: int = 0
    cpu_system: int = 0
    system_cpu: int = 0  # the machine's, nanoseconds since boot
    online_cpus: int = 0
    memory_usage: int = 0  # bytes
    memory_stats: dict[str, int] = field(default_factory=dict)
    memory_limit: int = 0
    pids: int = 0  # tasks (threads), as the pids controller counts
    networks: dict[str, dict[str, int]] = field(default_factory=dict)  # ifname -> counters


def timestamp() -> str:
    """Now, as dockerd writes ``read`` (Go's RFC3339Nano)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Source:
    """Where one container's figures are: its cgroup's readings (None without one),
    its processes, its shim (whose children's times are the reaped ones)."""

    cpu: tuple[int, int, int] | None
    memory: tuple[int, dict[str, int]] | None
    tasks: int | None
    procs: list[processes.Proc]
    shim: processes.Proc | None
    networks: dict[str, dict[str, int]]


def sample(source: Source, online_cpus: int, system_cpu: int, memory_limit: int, read: str) -> Sample:
    if source.cpu is not None:
        total, user, system = source.cpu
    else:
        to_ns = 1_000_000_000 // processes.CLOCK_TICKS
        reaped = [source.shim] if source.shim else []
        user = sum(p.utime + p.cutime for p in source.procs) + sum(p.cutime for p in reaped)
        system = sum(p.stime + p.cstime for p in source.procs) + sum(p.cstime for p in reaped)
        user, system = user * to_ns, system * to_ns
        total = user + system
    if source.memory is not None:
        usage, memory_stats = source.memory
    else:
        usage, memory_stats = sum(p.rss for p in source.procs), {}
    tasks = source.tasks if source.tasks is not None else sum(p.threads for p in source.procs)
    return Sample(
        read=read,
        cpu_total=total,
        cpu_user=user,
        cpu_system=system,
        system_cpu=system_cpu,
        online_cpus=online_cpus,
        memory_usage=usage,
        memory_stats=memory_stats,
        memory_limit=memory_limit,
        pids=tasks,
        networks=source.networks,
    )
