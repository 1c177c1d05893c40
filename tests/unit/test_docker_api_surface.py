"""The Docker API surface without an engine's kernel side: list selection with
Docker's filters, the event log and its stream, /_ping's headers and the API
version limits, over a real unix socket where the server is involved."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from qiao.daemon.api import Api
from qiao.daemon.filters import EVENT_KEYS, Filters
from qiao.daemon.http import Server
from qiao.daemon.lists import select_containers, select_networks
from qiao.daemon.system import included, message
from qiao.engine.containers import ContainerView
from qiao.engine.errors import InvalidParameter, NotFound
from qiao.engine.eventlog import EventLog, Record
from qiao.engine.models import Container, Endpoint
from qiao.paths import Root

NET = "n" * 64


def ctr(name: str, n: int, **kw: Any) -> Container:
    """The n-th container created (ids and times in that order)."""
    defaults: dict[str, Any] = dict(
        id=f"{n:x}" * 64,
        name=name,
        created=f"2024-05-01T10:00:{n:02d}Z",
        cmd=["sleep", "60"],
        env=[],
        hostname=name,
        network_mode="web",
        attachments=[{"network": NET, "aliases": [], "ip": "", "ip6": "", "mac": ""}],
    )
    return Container(**{**defaults, **kw})


def view(c: Container) -> ContainerView:
    endpoints = []
    if c.running and c.attachments:
        ep = Endpoint("e" * 64, NET, c.id, "eth0", "veth0", "10.0.0.2", 24, "10.0.0.1", "02:42:0a:00:00:02")
        endpoints.append(("web", ep))
    return ContainerView(c, endpoints, {}, [], network_names={NET: "web"} if c.attachments else {})


@pytest.fixture
def views() -> list[ContainerView]:
    ran = dict(started_at="2024-05-01T10:01:00Z", finished_at="2024-05-01T10:02:00Z")
    made = [
        ctr("created", 1, labels={"tier": "db"}),
        ctr("ok", 2, status="exited", exit_code=0, **ran),
        ctr("failed", 3, status="exited", exit_code=3, labels={"tier": "web", "x": "1"}, **ran),
        ctr(
            "web1",
            4,
            status="running",
            labels={"tier": "web"},
            exposed_ports=["80/tcp"],
            ports=[{"proto": "tcp", "host_ip": "0.0.0.0", "host_port": 8080, "container_ip": "10.0.0.2", "container_port": 80}],
        ),  # fmt: skip
        ctr("web2", 5, status="running", image="qiao/host", network_mode="host", attachments=[]),
    ]
    return [view(c) for c in reversed(made)]  # newest first, as Containers.views gives them


def names(views: list[ContainerView], **query: Any) -> list[str]:
    q = {k: (json.dumps(v) if k == "filters" else str(v)) for k, v in query.items()}
    return [entry["Names"][0][1:] for entry in select_containers(views, q)]


def test_all_limit_and_status(views):
    assert names(views) == ["web2", "web1"]
    assert names(views, all=1) == ["web2", "web1", "failed", "ok", "created"]
    assert names(views, limit=3) == ["web2", "web1", "failed"]  # a limit lists stopped ones too
    assert names(views, filters={"status": ["exited"]}) == ["failed", "ok"]  # status implies all
    assert names(views, filters={"status": ["created", "running"]}) == ["web2", "web1", "created"]
    assert names(views, filters={"exited": ["3"]}, all=1) == ["failed"]
    assert names(views, filters={"exited": ["0"]}, all=1) == ["ok"]  # never started: no exit code to match


def test_name_id_label_network_ancestor(views):
    assert names(views, filters={"name": ["web"]}) == ["web2", "web1"]  # a regular expression, unanchored
    assert names(views, filters={"name": ["^/web1$"]}) == ["web1"]
    assert names(views, filters={"id": ["4444"]}) == ["web1"]
    assert names(views, all=1, filters={"label": ["tier=web"]}) == ["web1", "failed"]
    assert names(views, all=1, filters={"label": ["tier=web", "x"]}) == ["failed"]
    assert names(views, all=1, filters={"label": ["tier"]}) == ["web1", "failed", "created"]
    assert names(views, all=1, filters={"network": ["web"]}) == ["web1", "failed", "ok", "created"]
    assert names(views, all=1, filters={"network": ["nnn"]}) == ["web1", "failed", "ok", "created"]  # an id prefix
    assert names(views, filters={"ancestor": ["qiao/host:latest"]}) == ["web2", "web1"]  # image-less: qiao/host's
    assert names(views, filters={"ancestor": ["busybox"]}) == []


def test_ancestor_is_an_images_name_or_id():
    image_id = "sha256:" + "ab12" * 16
    made = [view(ctr("box", 1, image="busybox", image_id=image_id)), view(ctr("bare", 2))]
    for wanted in ("busybox", "busybox:latest", image_id, "ab12ab12ab12", "sha256:ab12ab12ab12ab12"):
        assert names(made, all=1, filters={"ancestor": [wanted]}) == ["box"], wanted
    assert names(made, all=1, filters={"ancestor": ["ab12ab"]}) == []  # a prefix shorter than 12 is no id


def test_before_since_publish_expose(views):
    assert names(views, all=1, filters={"before": ["web1"]}) == ["failed", "ok", "created"]
    assert names(views, all=1, filters={"since": ["ok"]}) == ["web2", "web1", "failed"]
    assert names(views, filters={"publish": ["8080"]}) == ["web1"]
    assert names(views, filters={"publish": ["8000-8100/tcp"]}) == ["web1"]
    assert names(views, filters={"expose": ["80/tcp"]}) == ["web1"] and names(views, filters={"expose": ["80/udp"]}) == []
    with pytest.raises(NotFound, match="No such container: nosuch"):
        names(views, filters={"before": ["nosuch"]})


@pytest.mark.parametrize(
    "query, message",
    [
        ({"filters": {"status": ["bogus"]}}, "invalid filter 'status=bogus'"),
        ({"filters": {"exited": ["x"]}}, "invalid filter 'exited=x'"),
        ({"filters": {"publish": ["80:80"]}}, "should not contain ':'"),
        ({"filters": {"publish": ["99999"]}}, "invalid port"),
        ({"filters": {"health": ["healthy"]}}, "qiao does not support the filter 'health'"),
        ({"filters": {"volume": ["/data"]}}, "qiao does not support the filter 'volume'"),
        ({"filters": {"colour": ["red"]}}, "invalid filter 'colour'"),
        ({"limit": "x"}, "invalid value for limit"),
    ],
)
def test_container_list_refusals(views, query, message):
    with pytest.raises(InvalidParameter, match=message):
        names(views, **query)


def nets(**filters: Any) -> list[str]:
    entries = [
        {"Name": n, "Id": i * 64, "Driver": d, "Scope": "local", "Labels": lab}
        for n, i, d, lab in [("bridge", "a", "bridge", {}), ("host", "b", "host", {}), ("none", "c", "null", {}),
                             ("front", "d", "bridge", {"env": "prod"}), ("back", "e", "bridge", {"env": "dev"})]
    ]  # fmt: skip
    in_use = {"a" * 64, "e" * 64}.__contains__  # back is used (by a container not running, say)
    return [n["Name"] for n in select_networks(entries, in_use, {"filters": json.dumps(filters)} if filters else {})]


def test_network_filters():
    assert nets() == ["bridge", "host", "none", "front", "back"]
    assert nets(driver=["bridge"]) == ["bridge", "front", "back"]
    assert nets(name=["o"]) == ["host", "none", "front"]
    assert nets(id=["d"]) == ["front"]
    assert nets(label=["env=prod"]) == ["front"] and nets(label=["env"]) == ["front", "back"]
    assert nets(scope=["local"]) == nets() and nets(scope=["swarm"]) == []
    assert nets(type=["custom"]) == ["front", "back"] and nets(type=["builtin"]) == ["bridge", "host", "none"]
    assert nets(dangling=["true"]) == ["front"] and nets(dangling=["false"]) == ["bridge", "host", "none", "back"]
    with pytest.raises(InvalidParameter, match="invalid filter: 'type'='x'"):
        nets(type=["x"])
    with pytest.raises(InvalidParameter, match="invalid filter 'colour'"):
        nets(colour=["red"])


# -- events ----------------------------------------------------------------------------------


def rec(type_: str, action: str, actor: str, **attributes: str) -> Record:
    return Record(1, type_, action, actor, attributes, 1_700_000_000_123_456_789)


def test_message_shapes():
    start = message(rec("container", "start", "c" * 64, name="box", image="qiao/host", tier="db"))
    assert start == {
        "status": "start", "id": "c" * 64, "from": "qiao/host", "Type": "container", "Action": "start",
        "Actor": {"ID": "c" * 64, "Attributes": {"image": "qiao/host", "name": "box", "tier": "db"}},
        "scope": "local", "time": 1_700_000_000, "timeNano": 1_700_000_000_123_456_789,
    }  # fmt: skip
    assert list(start["Actor"]["Attributes"]) == ["image", "name", "tier"]  # sorted, as Go writes a map
    connect = message(rec("network", "connect", "n" * 64, container="c" * 64, name="web", type="bridge"))
    assert list(connect) == ["Type", "Action", "Actor", "scope", "time", "timeNano"]  # no legacy fields for networks
    assert "from" not in message(rec("container", "start", "c" * 64, name="box"))


def test_event_filters():
    start = rec("container", "start", "c" * 64, name="box", image="qiao/host:latest", tier="db")
    connect = rec("network", "connect", "n" * 64, container="c" * 64, name="web", type="bridge")

    def inc(r: Record, **f: list[str]) -> bool:
        return included(Filters.parse(json.dumps(f), EVENT_KEYS), r)

    assert inc(start) and inc(connect)
    assert inc(start, type=["container"]) and not inc(connect, type=["container"])
    assert inc(start, event=["start", "die"]) and not inc(start, event=["stop"])
    assert inc(start, container=["box"]) and inc(start, container=["ccc"]) and not inc(start, container=["other"])
    assert not inc(connect, container=["box"])  # as dockerd: a container filter leaves network events out
    assert inc(connect, network=["web"]) and not inc(start, network=["web"])
    assert inc(start, label=["tier=db"]) and not inc(start, label=["tier=web"])
    assert inc(start, image=["qiao/host"]) and inc(start, image=["qiao/host:latest"]) and not inc(start, image=["busybox"])
    assert inc(rec("container", "exec_start: sh", "c" * 64), event=["exec_start"])  # prefix, as dockerd for these three


def test_event_log_ring_and_following():
    log = EventLog(keep=3)
    for n in range(5):
        log.record("container", "create", str(n))
    kept, position = log.snapshot()
    assert [r.actor for r in kept] == ["2", "3", "4"] and position == 5
    assert log.after(position, 0.01) == ([], 5)
    threading.Timer(0.05, lambda: log.record("network", "create", "n")).start()
    new, position = log.after(position, 5)
    assert [r.actor for r in new] == ["n"] and position == 6
    assert new[0].time_ns > 0


# -- over the socket ------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, EventLog]]:
    root = Root.resolve(str(tmp_path))
    os.makedirs(root.run)
    log = EventLog()
    server = Server(root.socket, Api(SimpleNamespace(eventlog=log), lambda: None))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield root.socket, log
    finally:
        server.shutdown()
        server.server_close()


def raw(path: str, request: str, timeout: float = 10) -> tuple[str, bytes]:
    """The head and the body (chunks joined) of one answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(request.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b"Transfer-Encoding: chunked" in head:
        joined = b""
        while body:
            size, _, rest = body.partition(b"\r\n")
            joined, body = joined + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
        body = joined
    return head.decode(), body


def test_ping_head_has_the_headers_dockers_cli_reads(served):
    sock, _ = served
    head, body = raw(sock, "HEAD /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith("HTTP/1.0 200") and body == b""
    for header in ("Api-Version: 1.47", "OSType: linux", "Cache-Control: no-cache, no-store, must-revalidate", "Pragma: no-cache"):
        assert header in head.split("\r\n")
    assert raw(sock, "GET /v1.24/_ping HTTP/1.1\r\n\r\n")[1] == b"OK"


@pytest.mark.parametrize(
    "version, message",
    [
        ("1.23", "client version 1.23 is too old. Minimum supported API version is 1.24, please upgrade your client to a newer version"),
        ("1.99", "client version 1.99 is too new. Maximum supported API version is 1.47"),
    ],
)
def test_api_versions_out_of_range_are_refused_as_dockerd_does(served, version, message):
    head, body = raw(served[0], f"GET /v{version}/_ping HTTP/1.1\r\n\r\n")
    assert head.startswith("HTTP/1.0 400") and json.loads(body) == {"message": message}


def test_events_replay_until_ends_the_stream(served):
    sock, log = served
    log.record("container", "create", "a", {"name": "a"})
    log.record("network", "create", "n", {"name": "web", "type": "bridge"})
    now = time.time()
    head, body = raw(sock, f"GET /events?since={int(now) - 5}&until={now:.9f} HTTP/1.1\r\n\r\n")
    assert head.startswith("HTTP/1.1 200") and "Content-Type: application/json" in head
    assert [json.loads(line)["Action"] for line in body.splitlines()] == ["create", "create"]
    filters = urllib.parse.quote(json.dumps({"type": ["network"]}))
    head, body = raw(sock, f"GET /events?since={int(now) - 5}&until={now:.9f}&filters={filters} HTTP/1.1\r\n\r\n")
    assert [json.loads(line)["Type"] for line in body.splitlines()] == ["network"]
    head, body = raw(sock, f"GET /events?since={now + 9}&until={now} HTTP/1.1\r\n\r\n")
    assert head.startswith("HTTP/1.0 400") and "cannot be after" in json.loads(body)["message"]


def test_events_stream_live_until_a_time_to_come(served):
    sock, log = served
    threading.Timer(0.3, lambda: log.record("container", "start", "b", {"name": "b"})).start()
    started = time.monotonic()
    head, body = raw(sock, f"GET /events?until={time.time() + 1.5:.9f} HTTP/1.1\r\n\r\n")
    assert [json.loads(line)["status"] for line in body.splitlines()] == ["start"]  # nothing replayed: no since
    assert 1.0 < time.monotonic() - started < 5


def test_a_client_leaving_an_idle_stream_ends_it(served):
    sock, log = served
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(b"GET /events HTTP/1.1\r\n\r\n")
        s.settimeout(5)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 5
        while log.readers != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.readers == 1
    deadline = time.monotonic() + 10
    while log.readers and time.monotonic() < deadline:  # noticed at the next heartbeat
        time.sleep(0.05)
    assert log.readers == 0
