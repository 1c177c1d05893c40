"""Docker's exec: a process started in a running container (its network,
UTS and mount namespaces, its user, working directory and capabilities
unless the exec says otherwise), by a shim of its own (the ``exec`` spec of
:mod:`qiao.runtime.shim`).

As in dockerd, an exec is a record in memory: created, started once,
inspected for its exit code; it is forgotten with its container (and the
oldest finished ones beyond ``KEEP``).  An attached exec's streams come to
qiaod over one connection made at its start (:mod:`qiao.engine.attach`
relays them to the client); a detached one's go nowhere.  Its exit code is
the shim's exit status, and, for an attached exec, the shim's EXIT frame,
recorded before its client's stream ends (the CLI asks for it right then).
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from qiao.engine import attach, ids
from qiao.engine.containers import Containers, StartFailed
from qiao.engine.errors import Conflict, InvalidParameter, NotFound
from qiao.engine.specs import ExecSpec
from qiao.proc import start_time
from qiao.runtime import frames, security
from qiao.runtime.supervisor import StartError

KEEP = 1024  # finished execs remembered (the oldest go first)
RESIZE_WAIT = 10.0  # seconds a resize waits for its exec to start (the CLI sends one right after the start)


@dataclass
class Exec:
    id: str
    container_id: str
    spec: ExecSpec
    order: int
    running: bool = False
    exit_code: int | None = None
    pid: int = 0
    started: threading.Event = field(default_factory=threading.Event)
    inbox: attach.Inbox | None = None  # to its shim while a client is attached (resize)
    early_resize: bytes = b""  # a resize that came before the relay ran

    @property
    def done(self) -> bool:
        return self.exit_code is not None


class Execs:
    def __init__(self, containers: Containers):
        self.containers = containers
        self.lock = containers.lock
        self.by_id: dict[str, Exec] = {}
        self._order = itertools.count()

    def create(self, ref: str, spec: ExecSpec) -> Exec:
        if not spec.cmd:
            raise InvalidParameter("No exec command specified")
        if any("\0" in arg for arg in spec.cmd):
            raise InvalidParameter("invalid command: an argument holds a NUL byte")
        for item in spec.env:
            if "=" not in item or item.startswith("=") or "\0" in item:
                raise InvalidParameter(f"invalid environment variable {item!r}: expected KEY=VALUE")
        attach.detach_keys(spec.detach_keys)
        with self.lock:
            ctr = self.containers.get(ref)
            if not ctr.running:
                raise Conflict(f"container {ctr.id} is not running")
            if ctr.paused:
                raise Conflict(f"container {ctr.id} is paused, unpause the container before exec")
        try:
            if spec.user is not None and not ctr.image_id:  # an image's users are the image's: checked inside, at start
                security.resolve_user(spec.user)
            security.check_workdir(spec.workdir)
        except security.SecurityError as exc:
            raise InvalidParameter(str(exc)) from None
        with self.lock:
            self._prune()
            ex = Exec(ids.new_id(), ctr.id, spec, next(self._order))
            self.by_id[ex.id] = ex
            return ex

    def get(self, eid: str) -> Exec:
        with self.lock:
            ex = self.by_id.get(eid)
            if ex is None or ex.container_id not in self.containers.by_id:
                self.by_id.pop(eid, None)
                raise NotFound(f"No such exec instance: {eid}")
            return ex

    def _prune(self) -> None:
        for ex in [e for e in self.by_id.values() if e.container_id not in self.containers.by_id]:
            del self.by_id[ex.id]
        finished = sorted((e for e in self.by_id.values() if e.done), key=lambda e: e.order)
        for ex in finished[: max(0, len(finished) - KEEP)]:
            del self.by_id[ex.id]

    def start(self, eid: str, detach: bool, size: tuple[int, ...] = ()) -> socket.socket | None:
        """Start it; for an attached exec, qiaod's end of its connection (the
        shim holds the other); raises StartFailed (exit code recorded) when
        the command cannot be started."""
        with self.lock:
            ex = self.get(eid)
            if ex.done:
                raise Conflict(f"Error: Exec command {eid} has already run")
            if ex.started.is_set():
                raise Conflict(f"Error: Exec command {eid} is already running")
            ctr = self.containers.by_id[ex.container_id]
            if not ctr.running:
                raise Conflict(f"container {ctr.id} is not running")
            if ctr.paused:
                raise Conflict(f"container {ctr.id} is paused, unpause the container before exec")
            spec = self._shim_spec(ex, ctr.pid, detach, size or ex.spec.console_size)
            ours, theirs = socket.socketpair() if not detach else (None, None)
            try:
                started = self.containers.supervisor.spawn(
                    ctr.id, spec, [theirs.fileno()] if theirs else [], ended=lambda code: self._ended(ex, code)
                )
            except StartError as exc:
                if ours:
                    ours.close()
                ex.exit_code = exc.exit_code
                ex.started.set()
                raise StartFailed(str(exc), exc.exit_code) from None
            finally:
                if theirs:
                    theirs.close()
            ex.running, ex.pid = True, started.pid
            ex.started.set()
            return ours

    def attached(self, ex: Exec, inbox: attach.Inbox) -> None:
        """Its client's relay runs: resizes go through ``inbox``."""
        with self.lock:
            if ex.running:
                ex.inbox = inbox
                if ex.early_resize:
                    inbox.put(ex.early_resize)

    def _shim_spec(self, ex: Exec, pid: int, detach: bool, size: tuple[int, ...]) -> dict[str, Any]:
        """Who the exec's process is: the container's environment, user,
        working directory and capabilities, changed as the exec asks."""
        ctr = self.containers.by_id[ex.container_id]
        env = _initial_env(pid) or self.containers._env(ctr, False)
        if ex.spec.tty:
            env.setdefault("TERM", "xterm")
        user = ctr.user if ex.spec.user is None else ex.spec.user
        try:
            who = None if ctr.image_id else security.resolve_user(user)  # an image's users: resolved by the shim, inside
            status = security.process_status(pid)
        except security.SecurityError as exc:
            raise InvalidParameter(str(exc)) from None
        except OSError:
            raise Conflict(f"container {ctr.id} is not running") from None
        if ex.spec.user is not None:
            if who is not None:
                env["HOME"] = who.home
            else:
                env.pop("HOME", None)  # the shim sets the user's, from the image's /etc/passwd
        for item in ex.spec.env:
            key, _, value = item.partition("=")
            env[key] = value
        caps = security.CAPABILITIES if ex.spec.privileged else security.names(int(status.get("CapBnd", "0"), 16))
        return {
            "exec": {"pid": pid, "start": start_time(pid)},
            "cmd": list(ex.spec.cmd),
            "env": env,
            **({"uid": who.uid, "gid": who.gid, "groups": who.groups} if who is not None else {"user": user}),
            "cwd": ex.spec.workdir or ctr.workdir or "/",
            "caps": list(caps),
            "no_new_privs": not ex.spec.privileged and status.get("NoNewPrivs") == "1",
            "console": {"tty": ex.spec.tty, "stdin": ex.spec.attach_stdin and not detach, "size": list(size)},
        }

    def _ended(self, ex: Exec, code: int) -> None:
        with self.lock:
            if ex.exit_code is None:
                ex.exit_code = code
            ex.running, ex.inbox = False, None

    def exited(self, ex: Exec, code: int) -> None:
        """The EXIT frame of an attached exec: recorded before its client hears the end."""
        self._ended(ex, code)

    def resize(self, eid: str, rows: int, columns: int) -> None:
        ex = self.get(eid)
        if not ex.started.wait(RESIZE_WAIT):
            raise Conflict(f"exec {eid} did not start within {RESIZE_WAIT:g} s")
        if not ex.spec.tty:
            return
        with self.lock:
            if ex.inbox is not None:
                ex.inbox.put(frames.resize(rows, columns))
            elif ex.running:
                ex.early_resize = frames.resize(rows, columns)

    def options(self, ex: Exec) -> attach.Options:
        """How its client is attached (moby: an exec's end of input always closes its stdin)."""
        spec = ex.spec
        return attach.Options(
            spec.tty, spec.attach_stdin, spec.attach_stdout, spec.attach_stderr, close_stdin=True, keys=attach.detach_keys(spec.detach_keys)
        )


def _initial_env(pid: int) -> dict[str, str]:
    """The environment the container's command started with (``--link`` variables included), as Docker's exec gets."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            items = f.read().split(b"\0")
    except OSError:
        return {}
    return dict(os.fsdecode(item).split("=", 1) for item in items if b"=" in item)
