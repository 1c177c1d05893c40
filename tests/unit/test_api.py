"""qiaod's HTTP layer without an engine: routing and path decoding, spoken to
over a real unix socket by the CLI's client."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from qiao.cli.client import Client, DaemonError, quote
from qiao.daemon.api import Api
from qiao.daemon.http import Server
from qiao.engine.containers import ContainerView
from qiao.engine.errors import NotFound
from qiao.engine.models import Container
from qiao.engine.specs import EndpointSpec
from qiao.paths import Root


class FakeContainers:
    def __init__(self, names: set[str]):
        self.names = names
        self.calls: list[tuple[str, Any, ...]] = []

    def _find(self, ref: str) -> str:
        if ref not in self.names:
            raise NotFound(f"No such container: {ref}")
        return ref

    def inspect(self, ref: str) -> ContainerView:
        self.calls.append(("inspect", ref))
        ctr = Container(
            id="c" * 64, name=self._find(ref), created="2024-05-01T10:00:00Z", cmd=["true"], env=[], hostname="c", network_mode="none"
        )
        return ContainerView(ctr, [], {}, [])

    def remove(self, ref: str, force: bool) -> None:
        self.calls.append(("remove", ref, force))
        self._find(ref)

    def connect(self, ctr: str, net: str, config: EndpointSpec) -> None:
        assert config == EndpointSpec()
        self.calls.append(("connect", ctr, net))


class FakeEngine:
    def __init__(self, names: set[str]):
        self.containers = FakeContainers(names)


NAMES = ["web", "a/b", "a?b=c", "50%", "x#y", "a b", "wéb/ü", "a%2Fb", "/", ".."]


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Client, FakeEngine]]:
    root = Root.resolve(str(tmp_path))
    os.makedirs(root.run)
    engine = FakeEngine(set(NAMES))
    server = Server(root.socket, Api(engine, lambda: None))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield Client(root, autostart=False), engine
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("name", NAMES)
def test_encoded_ref_round_trips(served, name):
    client, engine = served
    assert client.request("GET", f"/containers/{quote(name)}/json")["Name"] == "/" + name
    assert client.request("GET", f"/v1.47/containers/{quote(name)}/json")["Name"] == "/" + name
    client.request("DELETE", f"/containers/{quote(name)}", {"force": 1})
    client.request("POST", f"/networks/{quote(name)}/connect", body={"Container": name})
    assert engine.containers.calls == [("inspect", name), ("inspect", name), ("remove", name, True), ("connect", name, name)]


@pytest.mark.parametrize("name", ["c/d", "c?d", "c d", "c#d", "100%"])
def test_unknown_strange_ref_is_no_such_container(served, name):
    client, _ = served
    with pytest.raises(DaemonError) as info:
        client.request("GET", f"/containers/{quote(name)}/json")
    assert (info.value.status, str(info.value)) == (404, f"No such container: {name}")


def test_unencoded_slash_is_another_route(served):
    """What the CLI sent before it encoded names: ``a/b`` made a path no route matches."""
    client, engine = served
    with pytest.raises(DaemonError, match="page not found: GET /containers/a/b/json"):
        client.request("GET", "/containers/a/b/json")
    assert engine.containers.calls == []
