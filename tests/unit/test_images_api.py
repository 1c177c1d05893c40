"""The image routes over a real unix socket: Docker's request and answer
shapes (chunked uploads, JSON message streams, ``filters``), on a real
image registry without the rest of an engine."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from qiao.cli.client import Client, DaemonError, quote
from qiao.daemon.api import Api
from qiao.daemon.http import Server
from qiao.engine.store import Store
from qiao.images.registry import Images
from qiao.paths import Root
from tests.unit.test_images import BASE, docker_archive, oci_archive


class FakeEngine:
    def __init__(self, images: Images):
        self.images = images


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Client, Images]]:
    root = Root.resolve(str(tmp_path))
    root.ensure()
    images = Images(root, Store(root.store), threading.RLock())
    images.load()
    server = Server(root.socket, Api(FakeEngine(images), lambda: None))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield Client(root, autostart=False), images
    finally:
        server.shutdown()
        server.server_close()


def exchange(client: Client, head: str, body: bytes, chunked: bool = True) -> tuple[int, str, bytes]:
    """A request as Docker's CLI sends an upload (HTTP/1.1, chunked); status, content type, body."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(client.root.socket)
    sock.settimeout(20)
    with sock:
        if chunked:
            framed = (
                b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 7000]), body[i : i + 7000]) for i in range(0, len(body), 7000)) + b"0\r\n\r\n"
            )
            sock.sendall(
                f"{head} HTTP/1.1\r\nHost: docker\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-tar\r\n\r\n".encode()
                + framed
            )
        else:
            sock.sendall(f"{head} HTTP/1.1\r\nHost: docker\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    top, _, payload = raw.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":  # a stream answered to an HTTP/1.1 client
        payload = dechunk(payload)
    return int(lines[0].split()[1]), headers["content-type"], payload


def dechunk(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body, data = body + data[:size], data[size + 2 :]
    return body


def messages(payload: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in payload.splitlines() if line.strip()]


def test_docker_import_chunked_with_changes(served):
    client, images = served
    status, ctype, payload = exchange(
        client,
        "POST /v1.47/images/create?fromSrc=-&repo=bb%3A1&tag=&message=m&changes=CMD+%5B%22sh%22%5D&changes=ENV+A%3D1",
        gzip.compress(BASE),
    )
    assert (status, ctype) == (200, "application/json"), payload
    [msg] = messages(payload)
    img = images.get("bb:1")
    assert msg == {"status": img.id} and img.parsed().config.Env == ["A=1"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "query, status, message",
    [
        ("fromSrc=http%3A%2F%2Fexample.com%2Fx.tar", 400, "does not download"),
        ("", 400, "fromImage or fromSrc"),
        ("fromSrc=-&platform=windows%2Famd64", 400, "platform"),
        ("fromSrc=-&changes=RUN+true", 400, "not a valid change command"),
        ("fromSrc=-&repo=Bad%20Name", 400, "invalid reference"),
        ("fromImage=busybox&tag=latest", 404, 'pull access denied for busybox: qiao pulls no images .*"docker load -i FILE"'),
    ],
)
def test_image_create_refusals(served, query, status, message):
    client, _ = served
    with pytest.raises(DaemonError, match=message) as info:
        client.request("POST", "/images/create?" + query)
    assert info.value.status == status


def test_pull_of_an_image_that_is_here_is_up_to_date(served):
    client, images = served
    images.import_tar(io.BytesIO(BASE), "busybox", "", [], "")
    assert messages(client.request("POST", "/images/create?fromImage=docker.io%2Flibrary%2Fbusybox&tag=latest", raw=True)) == [
        {"status": "Status: Image is up to date for busybox:latest"}
    ]


@pytest.mark.parametrize("layout", ["docker", "oci"])
def test_docker_load_both_layouts(served, layout):
    client, images = served
    data = docker_archive([BASE], {"Cmd": ["sh"]}, ["a:1", "b:2"]) if layout == "docker" else oci_archive([BASE], {}, name="")
    status, _ctype, payload = exchange(client, "POST /v1.47/images/load?quiet=0", data)
    assert status == 200, payload
    [img] = images.listing()
    expected = ["Loaded image: a:1\n", "Loaded image: b:2\n"] if layout == "docker" else [f"Loaded image ID: {img.id}\n"]
    assert [m["stream"] for m in messages(payload)] == expected


def test_load_errors_are_http_errors(served):
    client, _ = served
    status, _ctype, payload = exchange(client, "POST /images/load", b"not a tar" * 100)
    assert status == 400 and "invalid archive" in json.loads(payload)["message"]
    status, _ctype, payload = exchange(client, "POST /images/load", b"", chunked=False)
    assert status == 400


def test_list_inspect_tag_remove(served):
    client, images = served
    img = images.load_archive(io.BytesIO(oci_archive([BASE], {"Labels": {"x": "y"}, "Cmd": ["sh"]}, name="localhost/bb:1")))[0][0]
    dangling = images.import_tar(io.BytesIO(gzip.compress(b"\0" * 1024)), "", "", [], "")
    [summary, other] = client.request("GET", "/images/json")  # newest first
    assert summary["Id"] == dangling.id and other["Id"] == img.id
    assert other["RepoTags"] == ["localhost/bb:1"] and other["Labels"] == {"x": "y"} and other["Created"] == 1714979289
    assert set(other) == {"Containers", "Created", "Id", "Labels", "ParentId", "RepoDigests", "RepoTags", "SharedSize", "Size"}
    only = client.request("GET", "/images/json", {"filters": json.dumps({"dangling": {"true": True}})})
    assert [i["Id"] for i in only] == [dangling.id]
    only = client.request("GET", "/images/json", {"filters": json.dumps({"reference": ["localhost/*"]})})
    assert [i["Id"] for i in only] == [img.id]
    with pytest.raises(DaemonError, match="invalid filter 'label'"):
        client.request("GET", "/images/json", {"filters": json.dumps({"label": ["a"]})})
    doc = client.request("GET", f"/images/{quote('localhost/bb:1')}/json")
    assert client.request("GET", "/images/localhost/bb:1/json") == doc  # as Docker's CLI sends it: unencoded
    assert (doc["Id"], doc["Config"]["Cmd"], doc["Config"]["Labels"], doc["Os"]) == (img.id, ["sh"], {"x": "y"}, "linux")
    assert doc["RootFS"] == {"Type": "layers", "Layers": ["sha256:" + hashlib.sha256(BASE).hexdigest()]}
    assert client.request("POST", "/images/localhost/bb:1/tag", {"repo": "me/bb", "tag": "2"}) is None
    assert images.get("me/bb:2") is images.get(img.id)
    assert client.request("DELETE", "/images/me/bb:2") == [{"Untagged": "me/bb:2"}]
    assert client.request("DELETE", f"/images/{img.id}") == [{"Untagged": "localhost/bb:1"}, {"Deleted": img.id}]
    with pytest.raises(DaemonError, match="No such image") as info:
        client.request("GET", f"/images/{img.id}/json")
    assert info.value.status == 404 and not os.path.exists(images.rootfs(img.id))
