"""A cgroup per container on the cgroup v2 hierarchy: what ``pause`` freezes
and what ``stats`` and ``top`` count.

qiao sets no resource limits, so it needs no controller: the v2 core gives
every non-root cgroup ``cgroup.freeze`` (Linux 5.2), ``cgroup.kill`` (5.14),
``cpu.stat`` (usage, user and system time) and the member lists.  That works
on a pure v2 host and on a hybrid one, whose v2 hierarchy (often
``/sys/fs/cgroup/unified``) has no controllers.  When the parent offers the
``memory`` and ``pids`` controllers qiao turns them on for its containers,
for exact memory figures; without them ``stats`` adds up its processes.

Each container's cgroup is ``<v2 mount>/qiao/<container id>`` (ids are
unique across roots, so several qiao roots share the parent).  The daemon
makes it before the start; the shim's child joins it before it execs the
command (the shim stays outside: a frozen container's exit is still seen),
so everything the command starts is inside.  It is removed when the
container ends; what is still in it then is killed.

Without a writable v2 hierarchy (none mounted, a read-only one inside
another container) containers run without one: ``pause`` is refused,
naming why, and ``stats``/``top`` find the processes through the shim.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from typing import Protocol

PARENT = "qiao"


class Cgroups(Protocol):
    available: bool
    why: str  # when not available: the reason, for the refusal of `pause`

    def create(self, cid: str) -> str: ...
    def exists(self, cid: str) -> bool: ...
    def remove(self, cid: str) -> None: ...
    def freeze(self, cid: str, frozen: bool) -> None: ...
    def frozen(self, cid: str) -> bool: ...
    def procs(self, cid: str) -> list[int]: ...
    def cpu_usage(self, cid: str) -> tuple[int, int, int] | None: ...
    def memory(self, cid: str) -> tuple[int, dict[str, int]] | None: ...
    def tasks(self, cid: str) -> int | None: ...


def v2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (the first such mount), if anywhere."""
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4].replace("\\040", " ")
    except OSError:
        pass
    return None


def detect() -> Cgroups:
    """The host's cgroup v2 hierarchy, if qiao can make cgroups in it; else why not."""
    mount = v2_mount()
    if mount is None:
        return NoCgroups("no cgroup v2 hierarchy is mounted")
    parent = os.path.join(mount, PARENT)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        return NoCgroups(f"cannot make a cgroup under {mount}: {exc.strerror}")
    if not os.path.exists(os.path.join(parent, "cgroup.freeze")):
        return NoCgroups(f"the kernel's cgroup v2 has no freezer (cgroup.freeze, Linux 5.2) in {mount}")
    _enable_controllers(parent)
    return CgroupV2(parent)


def _enable_controllers(parent: str) -> None:
    """memory and pids for the containers, where the parent's parent offers them (best effort:
    a controller that is not offered, or a parent with processes of its own, refuses)."""
    try:
        with open(os.path.join(parent, "cgroup.controllers")) as f:
            offered = set(f.read().split())
    except OSError:
        return
    for name in ("memory", "pids"):
        if name in offered:
            with contextlib.suppress(OSError), open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
                f.write(f"+{name}")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _flat(text: str | None) -> dict[str, int]:
    """A flat-keyed cgroup file (``key value`` lines) as a dict."""
    out = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


class CgroupV2:
    available = True
    why = ""

    def __init__(self, parent: str):
        self.parent = parent

    def path(self, cid: str) -> str:
        return os.path.join(self.parent, cid)

    def create(self, cid: str) -> str:
        path = self.path(cid)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755)
        return path

    def exists(self, cid: str) -> bool:
        return os.path.isdir(self.path(cid))

    def remove(self, cid: str, timeout: float = 5.0) -> None:
        """Remove the cgroup, killing (and thawing) whatever is still in it."""
        path = self.path(cid)
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
            self._kill_all(cid)
            time.sleep(0.01)

    def _kill_all(self, cid: str) -> None:
        path = self.path(cid)
        with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.freeze"), "w") as f:
            f.write("0")
        try:
            with open(os.path.join(path, "cgroup.kill"), "w") as f:
                f.write("1")
        except OSError:  # before Linux 5.14: one by one
            for pid in self.procs(cid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)

    def freeze(self, cid: str, frozen: bool, timeout: float = 5.0) -> None:
        """Freeze or thaw, and wait until the kernel says it is done."""
        path = self.path(cid)
        with open(os.path.join(path, "cgroup.freeze"), "w") as f:
            f.write("1" if frozen else "0")
        deadline = time.monotonic() + timeout
        while self.frozen(cid) != frozen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cgroup of {cid[:12]} did not {'freeze' if frozen else 'thaw'} within {timeout:g} s")
            time.sleep(0.005)

    def frozen(self, cid: str) -> bool:
        return _flat(_read(os.path.join(self.path(cid), "cgroup.events"))).get("frozen") == 1

    def procs(self, cid: str) -> list[int]:
        text = _read(os.path.join(self.path(cid), "cgroup.procs"))
        return [int(p) for p in (text or "").split()]

    def cpu_usage(self, cid: str) -> tuple[int, int, int] | None:
        """Total, user and system CPU time in nanoseconds, exited processes included."""
        stat = _flat(_read(os.path.join(self.path(cid), "cpu.stat")))
        if "usage_usec" not in stat:
            return None
        return stat["usage_usec"] * 1000, stat.get("user_usec", 0) * 1000, stat.get("system_usec", 0) * 1000

    def memory(self, cid: str) -> tuple[int, dict[str, int]] | None:
        """``memory.current`` and ``memory.stat``, when the memory controller is on."""
        current = _read(os.path.join(self.path(cid), "memory.current"))
        if current is None or not current.strip().isdigit():
            return None
        return int(current), _flat(_read(os.path.join(self.path(cid), "memory.stat")))

    def tasks(self, cid: str) -> int | None:
        """Threads in the cgroup (what the pids controller counts)."""
        text = _read(os.path.join(self.path(cid), "cgroup.threads"))
        return None if text is None else len(text.split())


class NoCgroups:
    """No usable cgroup v2 hierarchy: containers run without a cgroup of their own."""

    available = False

    def __init__(self, why: str):
        self.why = why

    def create(self, cid: str) -> str:
        return ""

    def exists(self, cid: str) -> bool:
        return False

    def remove(self, cid: str) -> None:
        pass

    def freeze(self, cid: str, frozen: bool) -> None:
        raise OSError(errno.ENOTSUP, self.why)

    def frozen(self, cid: str) -> bool:
        return False

    def procs(self, cid: str) -> list[int]:
        return []

    def cpu_usage(self, cid: str) -> tuple[int, int, int] | None:
        return None

    def memory(self, cid: str) -> tuple[int, dict[str, int]] | None:
        return None

    def tasks(self, cid: str) -> int | None:
        return None


class StubCgroups:
    """In memory, for tests without root: cgroups are names with a frozen flag."""

    available = True
    why = ""

    def __init__(self) -> None:
        self.groups: dict[str, bool] = {}  # cid -> frozen

    def create(self, cid: str) -> str:
        self.groups.setdefault(cid, False)
        return f"/stub/{cid}"

    def exists(self, cid: str) -> bool:
        return cid in self.groups

    def remove(self, cid: str) -> None:
        self.groups.pop(cid, None)

    def freeze(self, cid: str, frozen: bool) -> None:
        if cid not in self.groups:
            raise FileNotFoundError(errno.ENOENT, f"no cgroup for {cid}")
        self.groups[cid] = frozen

    def frozen(self, cid: str) -> bool:
        return self.groups.get(cid, False)

    def procs(self, cid: str) -> list[int]:
        return []

    def cpu_usage(self, cid: str) -> tuple[int, int, int] | None:
        return (0, 0, 0) if cid in self.groups else None

    def memory(self, cid: str) -> tuple[int, dict[str, int]] | None:
        return None

    def tasks(self, cid: str) -> int | None:
        return 0 if cid in self.groups else None
