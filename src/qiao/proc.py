"""Reading /proc/PID/stat, shared by the daemon, the shim and the CLI.
Standard library only (the CLI imports it)."""

from __future__ import annotations

import os


def _stat(pid: int) -> list[str]:
    """The fields after the command name (state is [0], start time [19]); [] when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat: with the pid, it names a process for good; 0 when gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else 0


def parent(pid: int) -> int:
    """The parent PID; 0 when gone."""
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def alive(pid: int, start: int) -> bool:
    """Whether the process that had this start time still runs under ``pid``."""
    return pid > 0 and start_time(pid) == start


def exited(pid: int) -> bool:
    """Gone, or a zombie its parent has not reaped yet (it has stopped all the same)."""
    fields = _stat(pid)
    return not fields or fields[0] in ("Z", "X")


def table() -> dict[int, tuple[str, int, int, int]]:
    """Every process: pid -> (state, parent, session id, start time)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                out[int(entry)] = (fields[0], int(fields[1]), int(fields[3]), int(fields[19]))
    return out


def _children(pid: int) -> list[int] | None:
    """The children of ``pid`` (/proc/PID/task/*/children); None when the kernel
    cannot list them (no CONFIG_PROC_CHILDREN)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(child) for child in f.read().split())
        except FileNotFoundError:
            if os.path.isdir(f"/proc/{pid}/task/{tid}"):
                return None
        except OSError:
            pass
    return found


def descendants(pid: int, procs: dict[int, tuple[str, int, int, int]] | None = None) -> set[int]:
    """Every process below ``pid``, zombies included.  Without ``procs`` (a
    :func:`table`) it follows the children lists: a few reads, not a scan of /proc."""
    if procs is None:
        out: set[int] = set()
        todo = [pid]
        while todo:
            children = _children(todo.pop())
            if children is None:
                return descendants(pid, table())
            fresh = [c for c in children if c not in out]
            out.update(fresh)
            todo.extend(fresh)
        return out
    below: dict[int, list[int]] = {}
    for child, (_state, ppid, _sid, _start) in procs.items():
        below.setdefault(ppid, []).append(child)
    out, todo = set(), [pid]
    while todo:
        for child in below.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def boot_id() -> str:
    """This boot's id: start times and pids from another boot name nothing now."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()
