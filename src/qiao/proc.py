"""Reading /proc/PID/stat, shared by the daemon, the shim and the CLI.
Standard library only (the CLI imports it)."""

from __future__ import annotations


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
