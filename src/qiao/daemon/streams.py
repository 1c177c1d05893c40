"""The routes of a container's streams, as Docker's clients use them:
attach (hijacked), wait (streamed), resize, logs (streamed, followed) and
exec (create, start hijacked, inspect, resize).

``docker run`` in the foreground goes: create, attach (upgraded to a raw
connection), ``wait?condition=next-exit`` (or ``removed`` with ``--rm``,
answered 200 at once, its body when the condition is met), start, resize;
its output ends when the container exits, and the exit code comes from the
wait.  qiao's own CLI keeps its fast path (``X-Qiao-Stdio``: the caller's
descriptors go to the container, see ``containers.start``).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

from qiao.daemon import wire
from qiao.daemon.http import Hijacked, Request, Streamed, route
from qiao.engine import attach, logs
from qiao.engine.containers import StartFailed
from qiao.engine.engine import Engine
from qiao.engine.errors import Conflict, InvalidParameter
from qiao.engine.execs import Exec
from qiao.runtime import console, frames

RAW = "application/vnd.docker.raw-stream"
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
WAIT_CONDITIONS = ("not-running", "next-exit", "removed")
WAIT_TICK = 1.0  # seconds between checks that a waiting client is still there


def _content_type(tty: bool) -> str:
    return RAW if tty else MULTIPLEXED


def _size(req: Request) -> tuple[int, int]:
    """``h`` and ``w`` of a resize (Docker requires both)."""
    values = []
    for name in ("h", "w"):
        text = req.query.get(name, "")
        if not (text.isascii() and text.isdigit() and len(text) <= 5) or int(text) > 0xFFFF:
            raise InvalidParameter(f"invalid value for {name}: {text!r} is not a number from 0 to 65535")
        values.append(int(text))
    return values[0], values[1]


class StreamsApi:
    """Mixed into ``daemon.api.Api`` (which sets ``engine``)."""

    engine: Engine

    # -- attach ----------------------------------------------------------

    @route("POST", "/containers/(?P<ref>[^/]+)/attach")
    def container_attach(self, req: Request, ref: str) -> tuple[int, Any]:
        keys = attach.detach_keys(req.query.get("detachKeys", ""))
        replay, stream = req.flag("logs"), req.flag("stream")
        containers = self.engine.containers
        with containers.lock:
            ctr = containers.get(ref)
            cid, tty, path = ctr.id, ctr.tty, containers.files(ctr)["log"]
            opts = attach.Options(
                tty, req.flag("stdin") and ctr.open_stdin, req.flag("stdout"), req.flag("stderr"), close_stdin=ctr.stdin_once, keys=keys
            )
            # Now, not once the client has the upgrade: `docker run` starts the container as soon as it has it.
            pending = containers.waiting.add(cid) if stream and not ctr.running else None

        def run(sock: socket.socket) -> None:
            if replay and (opts.stdout or opts.stderr):
                for chunk in logs.body(path, logs.Query(opts.stdout, opts.stderr), tty, lambda: False):
                    sock.sendall(chunk)
            if not stream:
                return
            channel = self._channel(cid, sock, pending)
            if channel is not None:
                attach.relay(sock, channel, opts)

        return 101, Hijacked(run, _content_type(tty))

    def _channel(self, cid: str, client: socket.socket, pending: attach.Pending | None) -> socket.socket | None:
        """A connection to the container's shim: now if it runs (``pending``
        None), else at its next start; None if it ends, is removed or the
        client leaves first."""
        containers = self.engine.containers
        if pending is None:
            try:
                return console.connect(containers.root.container_dir(cid), attach.SOCKET, timeout=5)
            except OSError:  # it has just ended, or it runs in qiao's foreground (its streams are its caller's)
                return None
        while True:
            channel = pending.wait(WAIT_TICK)
            if channel is not None:
                return channel
            if attach.client_gone(client) or cid not in containers.by_id:
                containers.waiting.discard(cid, pending)
                late = pending.abandon()
                if late is not None:
                    late.close()
                return None

    # -- wait, resize ----------------------------------------------------

    @route("POST", "/containers/(?P<ref>[^/]+)/wait")
    def container_wait(self, req: Request, ref: str) -> tuple[int, Any]:
        condition = req.query.get("condition") or "not-running"
        if condition not in WAIT_CONDITIONS:
            raise InvalidParameter(f"invalid condition: {condition!r} (expected one of {', '.join(WAIT_CONDITIONS)})")
        containers = self.engine.containers
        cid, ends = containers.wait_target(ref)

        def body() -> Iterator[bytes]:
            while True:
                code = containers.wait_until(cid, condition, ends, WAIT_TICK)
                if code is not None:
                    yield json.dumps({"StatusCode": code, "Error": None}).encode()
                    return
                yield b""  # the server checks that the client still waits

        return 200, Streamed(body())

    @route("POST", "/containers/(?P<ref>[^/]+)/resize")
    def container_resize(self, req: Request, ref: str) -> tuple[int, Any]:
        rows, columns = _size(req)
        containers = self.engine.containers
        with containers.lock:
            ctr = containers.get(ref)
            if not ctr.running:
                raise Conflict(f"Container {ctr.id} is not running")
            tty, directory = ctr.tty, containers.root.container_dir(ctr.id)
        if tty:
            try:
                with console.connect(directory, attach.SOCKET, timeout=5) as sock:
                    sock.sendall(frames.resize(rows, columns))
            except OSError:
                raise Conflict(f"Container {ctr.id} has no terminal qiao holds (started in qiao's foreground)") from None
        return 200, None

    # -- logs ------------------------------------------------------------

    @route("GET", "/containers/(?P<ref>[^/]+)/logs")
    def container_logs(self, req: Request, ref: str) -> tuple[int, Any]:
        query = logs.Query(
            stdout=req.flag("stdout"),
            stderr=req.flag("stderr"),
            timestamps=req.flag("timestamps"),
            tail=logs.parse_tail(req.query.get("tail", "")),
            since=logs.parse_time("since", req.query.get("since", "")),
            until=logs.parse_time("until", req.query.get("until", "")),
            follow=req.flag("follow"),
        )
        if not (query.stdout or query.stderr):
            raise InvalidParameter("Bad parameters: you must choose at least one stream")
        containers = self.engine.containers
        cid, path, tty = containers.log_of(ref)
        return 200, Streamed(logs.body(path, query, tty, lambda: containers.is_running(cid)), _content_type(tty))

    # -- exec ------------------------------------------------------------

    @route("POST", "/containers/(?P<ref>[^/]+)/exec")
    def exec_create(self, req: Request, ref: str) -> tuple[int, Any]:
        return 201, {"Id": self.engine.execs.create(ref, wire.exec_spec(req.body)).id}

    @route("POST", "/exec/(?P<eid>[^/]+)/start")
    def exec_start(self, req: Request, eid: str) -> tuple[int, Any]:
        detach, size = wire.exec_start(req.body)
        execs = self.engine.execs
        ex = execs.get(eid)
        try:
            channel = execs.start(eid, detach, size)
        except StartFailed as exc:
            if detach:
                raise
            message = f"{exc}\r\n".encode()  # as dockerd: the error in the stream, the exit code in the exec's record
            shown = message if ex.spec.tty else frames.frame(frames.STDERR, message)
            return 101, Hijacked(lambda sock: sock.sendall(shown), _content_type(ex.spec.tty))
        if channel is None:
            return 200, None

        def run(sock: socket.socket) -> None:
            inbox = attach.Inbox()
            execs.attached(ex, inbox)
            attach.relay(sock, channel, execs.options(ex), lambda code: execs.exited(ex, code), inbox)

        return 101, Hijacked(run, _content_type(ex.spec.tty))

    @route("GET", "/exec/(?P<eid>[^/]+)/json")
    def exec_inspect(self, req: Request, eid: str) -> tuple[int, Any]:
        return 200, exec_json(self.engine.execs.get(eid))

    @route("POST", "/exec/(?P<eid>[^/]+)/resize")
    def exec_resize(self, req: Request, eid: str) -> tuple[int, Any]:
        rows, columns = _size(req)
        self.engine.execs.resize(eid, rows, columns)
        return 200, None


def exec_json(ex: Exec) -> dict[str, Any]:
    """``GET /exec/{id}/json``, in Docker's key order (``ExitCode`` is null until it has exited)."""
    spec = ex.spec
    return {
        "CanRemove": False,
        "ContainerID": ex.container_id,
        "DetachKeys": spec.detach_keys,
        "ExitCode": ex.exit_code,
        "ID": ex.id,
        "OpenStderr": spec.attach_stderr,
        "OpenStdin": spec.attach_stdin,
        "OpenStdout": spec.attach_stdout,
        "ProcessConfig": {
            "arguments": list(spec.cmd[1:]),
            "entrypoint": spec.cmd[0],
            "privileged": spec.privileged,
            "tty": spec.tty,
            "user": spec.user or "",
        },
        "Running": ex.running,
        "Pid": ex.pid,
    }
