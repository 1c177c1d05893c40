# ruff: noqa: F811 - the fixture ``c`` comes from test_containers and is named by each test
"""The engine's side of a container's streams, over the kernel stubs: what
the shim is told (held streams, TTY, stdin), Docker's wait conditions, the
clients waiting for a start, and the request bodies of exec."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from qiao.daemon import wire
from qiao.engine import attach
from qiao.engine.containers import StartFailed
from qiao.engine.errors import InvalidParameter, NotFound
from tests.unit.test_containers import FakeSupervisor, body, c, create  # noqa: F401


def test_start_holds_the_streams_with_a_log_and_an_attach_socket(c):
    ctr = c.start(create(c, "held", {**body(), "Tty": True, "OpenStdin": True, "HostConfig": {"ConsoleSize": [24, 80]}}).id)
    spec = c.supervisor.specs[ctr.id]
    assert spec["console"] == {"tty": True, "stdin": True, "size": [24, 80], "log": "container.log", "socket": attach.SOCKET}
    assert spec["env"]["TERM"] == "xterm"  # as Docker's, for a TTY
    plain = c.start(create(c, "plain", body()).id)
    assert c.supervisor.specs[plain.id]["console"]["tty"] is False and "TERM" not in c.supervisor.specs[plain.id]["env"]


def test_inspect_shows_the_stream_settings(c):
    from qiao.daemon import docker_json

    doc = {**body(), "Tty": True, "OpenStdin": True, "StdinOnce": True, "AttachStdin": True, "AttachStdout": True}
    doc["HostConfig"]["ConsoleSize"] = [50, 132]
    shown = docker_json.container(c.inspect(create(c, "shown", doc).id))
    config = shown["Config"]
    flags = ("Tty", "OpenStdin", "StdinOnce", "AttachStdin", "AttachStderr")
    assert [config[k] for k in flags] == [True, True, True, True, False]
    assert shown["HostConfig"]["ConsoleSize"] == [50, 132] and shown["HostConfig"]["LogConfig"]["Type"] == "json-file"


@pytest.mark.parametrize("size", [[1], [1, 2, 3], [-1, 5], [70000, 1]])
def test_console_size_is_checked(c, size):
    with pytest.raises(InvalidParameter, match="ConsoleSize"):
        create(c, "bad", {**body(), "HostConfig": {"ConsoleSize": size}})


def test_clients_waiting_for_the_start_get_a_connection_to_the_shim(c, monkeypatch):
    ctr = create(c, "w", body())
    pending = c.waiting.add(ctr.id)
    handed: list[int] = []

    def spawn(cid, spec, fds):
        handed.extend(fds)
        with socket.socket(fileno=os.dup(fds[0])) as shim_end:
            shim_end.sendall(b"hello")
        return FakeSupervisor.spawn(c.supervisor, cid, spec, fds)

    monkeypatch.setattr(c.supervisor, "spawn", spawn)
    c.start(ctr.id)
    channel = pending.wait(1)
    assert len(handed) == 1 and channel is not None
    assert channel.recv(5) == b"hello"
    channel.close()


def test_waiting_clients_go_on_waiting_when_the_start_fails(c, monkeypatch):
    ctr = create(c, "f", body())
    pending = c.waiting.add(ctr.id)

    def fail(cid, spec, fds):
        from qiao.runtime.supervisor import StartError

        raise StartError("no such command", 127)

    monkeypatch.setattr(c.supervisor, "spawn", fail)
    with pytest.raises(StartFailed):
        c.start(ctr.id)
    assert pending.wait(0) is None
    monkeypatch.undo()
    c.start(ctr.id)
    assert pending.wait(1) is not None


def test_wait_conditions(c):
    c.start(create(c, "cond", body()).id)
    cid, ends = c.wait_target("cond")
    assert c.wait_until(cid, "not-running", ends, 0.01) is None
    assert c.wait_until(cid, "next-exit", ends, 0.01) is None
    c._on_exit(cid)  # no exitcode file: 255
    assert c.wait_until(cid, "not-running", ends, 0.01) == 255
    assert c.wait_until(cid, "next-exit", ends, 0.01) == 255
    _, ends = c.wait_target(cid)
    assert c.wait_until(cid, "not-running", ends, 0.01) == 255  # stopped now: at once
    assert c.wait_until(cid, "next-exit", ends, 0.01) is None  # the next one is still to come
    assert c.wait_until(cid, "removed", ends, 0.01) is None
    result: list[int | None] = []
    waiter = threading.Thread(target=lambda: result.append(c.wait_until(cid, "removed", ends, 10)))
    waiter.start()
    c.remove(cid)
    waiter.join(10)
    assert result == [255]
    assert c.wait_target(cid) == (cid, 0) and c.wait_until(cid, "next-exit", 0, 0.01) == 255  # a removed container meets them all
    with pytest.raises(NotFound):
        c.wait_target("cond")


def test_a_failed_start_is_a_next_exit_and_auto_remove_a_removal(c, monkeypatch):
    from qiao.runtime.supervisor import StartError

    def fail(cid, spec, fds):
        raise StartError("no such command", 127)

    monkeypatch.setattr(c.supervisor, "spawn", fail)
    ctr = create(c, "gone", {**body(), "HostConfig": {"AutoRemove": True}})
    cid, ends = c.wait_target(ctr.id)
    with pytest.raises(StartFailed):
        c.start(cid)
    assert c.wait_until(cid, "removed", ends, 0.01) == 127


def test_exec_bodies():
    spec = wire.exec_spec(b'{"Cmd": ["sh"], "Env": ["A=1"], "User": "nobody", "Tty": true, "AttachStdin": true, "ConsoleSize": [0, 0]}')
    assert (spec.cmd, spec.env, spec.user, spec.tty, spec.attach_stdin, spec.console_size) == (("sh",), ("A=1",), "nobody", True, True, ())
    assert wire.exec_spec(b'{"Cmd": ["true"], "User": ""}').user is None  # the container's
    assert wire.exec_start(b'{"Detach": true, "ConsoleSize": [24, 80]}') == (True, (24, 80))
    with pytest.raises(InvalidParameter, match="Cmd"):
        wire.exec_spec(b'{"Cmd": "not a list"}')


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({}, "No exec command specified"),
        ({"Cmd": ["true"], "Env": ["NOEQUALS"]}, "KEY=VALUE"),
        ({"Cmd": ["true"], "User": "no-such-user-here"}, "unable to find user"),
        ({"Cmd": ["true"], "WorkingDir": "relative"}, "absolute"),
        ({"Cmd": ["true"], "DetachKeys": "ctrl-"}, "Invalid detach keys"),
    ],
)
def test_exec_create_refuses_bad_input(c, doc, fragment):
    from qiao.engine.execs import Execs

    execs = Execs(c)
    ctr = c.start(create(c, "x", body()).id)
    with pytest.raises(InvalidParameter, match=fragment):
        execs.create(ctr.id, wire.exec_spec(json.dumps(doc).encode()))


def test_exec_needs_a_running_container_and_is_found_by_id(c):
    from qiao.engine.errors import Conflict
    from qiao.engine.execs import Execs

    execs = Execs(c)
    stopped = create(c, "stopped", body())
    with pytest.raises(Conflict, match="is not running"):
        execs.create(stopped.id, wire.exec_spec(b'{"Cmd": ["true"]}'))
    ctr = c.start(create(c, "running", body()).id)
    ex = execs.create(ctr.id, wire.exec_spec(b'{"Cmd": ["true"]}'))
    assert execs.get(ex.id) is ex
    c._on_exit(ctr.id)
    c.remove(ctr.id)
    with pytest.raises(NotFound, match="No such exec instance"):
        execs.get(ex.id)  # forgotten with its container


def test_exec_in_an_image_container_leaves_its_user_to_the_shim_and_waits_for_unpause(c, monkeypatch):
    """An image's users are the image's (the shim resolves them inside); a paused container takes no exec."""
    from qiao.engine.errors import Conflict
    from qiao.engine.execs import Execs
    from qiao.runtime import security

    execs = Execs(c)
    ctr = c.start(create(c, "img", body()).id)
    ctr.image_id = "sha256:" + "a" * 64  # as if made from an image
    ex = execs.create(ctr.id, wire.exec_spec(b'{"Cmd": ["id"], "User": "only-in-the-image"}'))  # no host lookup
    monkeypatch.setattr(security, "process_status", lambda pid: {"CapBnd": "0", "NoNewPrivs": "0"})
    spec = execs._shim_spec(ex, os.getpid(), True, ())
    assert spec["user"] == "only-in-the-image" and "uid" not in spec and "HOME" not in spec["env"]
    ctr.paused = True
    with pytest.raises(Conflict, match="is paused"):
        execs.create(ctr.id, wire.exec_spec(b'{"Cmd": ["true"]}'))
