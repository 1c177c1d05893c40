"""``qiao explain`` without root: the engine's operations run dry over the
kernel stubs, rendered as commands (golden text on fixed data), changing
nothing, failing as the real operations fail; the recording ports against
the real firewall's text; the route's schema; the CLI's requests and output.

Golden files are in tests/unit/golden/; ``QIAO_UPDATE_GOLDEN=1`` rewrites them.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import pathlib
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from qiao import explain
from qiao.cli import explain as cli_explain
from qiao.cli.client import Client, DaemonError
from qiao.cli.main import main
from qiao.daemon import wire
from qiao.daemon.api import Api
from qiao.daemon.explain_api import ExplainOp, Planned, StartRefused
from qiao.daemon.http import Server
from qiao.drivers.overlay import OverlayDriver
from qiao.drivers.overlay import manager as manager_module
from qiao.drivers.overlay import store as keys
from qiao.drivers.overlay.manager import OverlayManager, vtep_mac
from qiao.engine import containers as containers_module
from qiao.engine import etcfiles, ids
from qiao.engine.engine import Engine, builtin_drivers
from qiao.engine.errors import Conflict, InvalidParameter, NotFound, QiaoError
from qiao.engine.specs import NetworkSpec
from qiao.engine.store import KINDS
from qiao.kernel import recording
from qiao.kernel.firewall import BridgeRules, EndpointGuard, PortMapping, StubFirewall
from qiao.kernel.host import Iface, Peer, StubHost
from qiao.kernel.recording import Recorder
from qiao.kernel.vxlan import StubVxlan
from qiao.paths import Root
from tests.unit.test_cli import FakeDaemon
from tests.unit.test_containers import FakeSupervisor, body
from tests.unit.test_firewall import DROP_CHAIN, FakeNft
from tests.unit.test_overlay_manager import ME, OTHER, FakeEtcd

GOLDEN = pathlib.Path(__file__).parent / "golden"


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("QIAO_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"differs from {path} (QIAO_UPDATE_GOLDEN=1 rewrites it)"


class Fixed:
    """Ids, veth names and bridge MACs drawn from counters: the same output every run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        ids_, veths, macs = itertools.count(1), itertools.count(1), itertools.count(1)
        monkeypatch.setattr(ids, "new_id", lambda: f"{next(ids_):02x}" * 32)
        monkeypatch.setattr(ids, "veth_name", lambda: f"veth{next(veths):07x}")
        monkeypatch.setattr(recording, "bridge_mac", lambda: f"02:00:00:00:00:{next(macs):02x}")
        monkeypatch.setattr(manager_module.random, "sample", lambda seq, k: list(seq)[:k])
        monkeypatch.setattr(etcfiles, "host_nameservers", lambda *a: [])
        monkeypatch.setattr(containers_module, "Supervisor", FakeSupervisor)


class Host:
    """A qiaod's engine over the kernel stubs (with the overlay on a fake etcd), and the operations as its API runs them."""

    def __init__(self, tmp_path: pathlib.Path):
        self.tmp = str(tmp_path)
        self.root = Root.resolve(str(tmp_path / "root"))
        resolv = tmp_path / "resolv.conf"
        resolv.write_text("nameserver 192.0.2.53\n")
        self.host, self.fw = StubHost(), StubFirewall()
        self.etcd = FakeEtcd()
        self.etcd.url = "etcd://192.0.2.1:2379"  # type: ignore[attr-defined]
        self.vxlan = StubVxlan(self.host.links)
        self.manager = OverlayManager(self.etcd, self.vxlan, ME)  # type: ignore[arg-type]
        self.manager.lease = self.etcd.lease(15)
        drivers = builtin_drivers(self.host, self.fw, str(resolv)) + [OverlayDriver(self.host, self.fw, self.vxlan, self.manager)]
        self.engine = Engine(self.root, self.host, self.fw, resolv_conf=str(resolv), drivers=drivers)
        self.manager.local = self.engine.networks
        self.engine.networks.load()
        self.engine.networks.ensure_builtin()

    def run(self, name: str | None, *networks: str, **kw: Any) -> str:
        ctr = self.engine.containers.create(wire.container_spec(name, json.dumps(run_op(name, *networks, **kw).body).encode()))
        self.engine.containers.start(ctr.id)
        return ctr.id

    def other_host_joins(self, net: str = "ov", subnet: str = "10.244.9.0/24") -> None:
        """Another host leases a share of ``net``: the manager sees it in the watch."""
        vni = self.manager.configs[net]["Backend"]["VNI"]
        record = {"PublicIP": OTHER, "BackendType": "vxlan", "BackendData": {"VNI": vni, "VtepMAC": vtep_mac(OTHER, vni)}}
        self.etcd.put(keys.subnet_key(net, subnet), record)
        with self.manager._lock:
            self.manager._apply(keys.subnet_key(net, subnet), record)

    def explain(self, *ops: ExplainOp, fresh: bool = False) -> list[dict[str, Any]]:
        planned = [Planned(op) for op in ops]
        networks = [r for p in planned for r in p.networks]
        containers = [r for p in planned for r in p.containers]
        return explain.explain(self.engine, planned, fresh, networks, containers)

    def text(self, argv: list[str], steps: list[dict[str, Any]], script: bool = False) -> str:
        steps = json.loads(json.dumps(steps).replace(self.tmp, "TMP"))  # before the lines are wrapped
        return cli_explain.script(argv, steps) if script else cli_explain.text(argv, steps, width=100)

    def snapshot(self) -> dict[str, Any]:
        """Everything an operation could change: the kernel stubs, the store, the engine's memory, files."""
        eng = self.engine
        files = sorted(str(p.relative_to(self.tmp)) for p in pathlib.Path(self.tmp).rglob("*") if "qiao.db" not in p.name)
        return copy.deepcopy(
            {
                "links": self.host.links,
                "namespaces": self.host.namespaces,
                "sandboxes": self.host.sandboxes,
                "routes": self.host.default_routes,
                "firewall": (self.fw.networks, self.fw.mappings, self.fw.guards),
                "store": {kind: sorted(json.dumps(r, sort_keys=True) for r in eng.store.load(kind)) for kind in KINDS},
                "networks": {n.id: repr(n) for n in eng.networks.by_id.values()},
                "endpoints": {e.id: repr(e) for e in eng.networks.endpoints.values()},
                "pools": {k: repr(vars(p)) for k, p in eng.networks.pools.items()},
                "containers": {c.id: repr(c) for c in eng.containers.by_id.values()},
                "ports": repr(eng.ports.reservations._index),
                "etcd": (sorted(self.etcd.kv), list(self.etcd.writes)),
                "cluster": (self.manager.configs, self.manager.leases, {n: s for n, (s, _lease) in self.manager._held.items()}),
                "files": files,
            }
        )


def run_op(name: str | None, *networks: str, ports: dict | None = None, cmd: list[str] | None = None, **first: Any) -> ExplainOp:
    doc = body(*networks, ports=ports, **first)
    doc["Cmd"] = ["python3", "-m", "http.server", "80"] if cmd is None else cmd
    return ExplainOp("run", name=name, body=doc)


def op(name: str, target: str = "", **kw: Any) -> ExplainOp:
    return ExplainOp(name, target=target, **kw)  # type: ignore[arg-type]


V6 = "fd00:1::/64"
PORT_8080 = {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}


@pytest.fixture
def q(tmp_path, monkeypatch) -> Iterator[Host]:
    Fixed(monkeypatch)
    h = Host(tmp_path)
    yield h
    h.engine.store.close()


@pytest.fixture
def real_ports(monkeypatch):
    """The engine's real reservations bind nothing here: port 8080 may be taken on the test machine."""

    def bind(self, req, port):
        return FakeSocket(req.host_ip, port or 49152)

    monkeypatch.setattr(containers_module.ports.PortReservations, "_bind", bind)


class FakeSocket:
    def __init__(self, ip: str, port: int):
        self.name = (ip, port)

    def getsockname(self) -> tuple[str, int]:
        return self.name

    def close(self) -> None:
        pass


# -- golden text: the plan of each command ---------------------------------------


def test_golden_run_on_a_user_network_with_a_port(q, real_ports):
    q.engine.networks.create(NetworkSpec("mynet", subnet="10.88.0.0/24"))
    argv = ["run", "-d", "--name", "web", "-p", "8080:80", "--network", "mynet", "--", "python3", "-m", "http.server", "80"]
    steps = q.explain(run_op("web", "mynet", ports=PORT_8080))
    golden("explain_run.txt", q.text(argv, steps))
    kernel = [s["step"] for s in steps if s["kind"] == "kernel"]
    # the order a reader of Docker's networking notes knows: sandbox, veth pair + eth0, address, route, port map
    assert kernel == ["create-sandbox", "add-guards", *["create-veth"] * 2, *["configure-sandbox"] * 2, "publish-ports"]


def test_golden_run_from_scratch_is_a_script(q, real_ports):
    argv = ["run", "-d", "-p", "8080:80", "--", "python3", "-m", "http.server", "80"]
    steps = q.explain(run_op(None, ports=PORT_8080), fresh=True)
    golden("explain_run_from_scratch.sh", q.text(argv, steps, script=True))
    order = [s["step"] for s in steps if s["kind"] == "kernel"]
    assert order[:5] == ["start-up", "create-bridge", "create-bridge", "enable-forwarding", "add-firewall"]  # table, bridge, NAT


def test_golden_network_create_connect_and_rm(q, real_ports):
    web = q.run("web", ports=PORT_8080)
    create = op("network-create", body={"Name": "mynet", "IPAM": {"Config": [{"Subnet": "10.88.0.0/24"}]}})
    out = q.text(["network", "create", "--subnet", "10.88.0.0/24", "mynet"], q.explain(create))
    q.engine.networks.create(NetworkSpec("mynet", subnet="10.88.0.0/24"))
    out += q.text(["network", "connect", "mynet", "web"], q.explain(op("network-connect", "mynet", body={"Container": "web"})))
    out += q.text(["rm", "-f", "web"], q.explain(op("rm", "web", force=True)))
    golden("explain_network_connect_rm.txt", out)
    assert web in q.engine.containers.by_id


def test_golden_overlay_create_and_a_fresh_host_joining(q, real_ports):
    create = op("network-create", body={"Name": "ov", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "10.244.0.0/16"}]}})
    out = q.text(["network", "create", "-d", "overlay", "--subnet", "10.244.0.0/16", "ov"], q.explain(create))
    q.engine.networks.create(NetworkSpec("ov", driver="overlay", subnet="10.244.0.0/16"))
    q.other_host_joins()
    steps = q.explain(run_op("a", "ov", cmd=["sleep", "600"]), fresh=True)
    out += q.text(["run", "-d", "--name", "a", "--network", "ov", "--", "sleep", "600"], steps, script=True)
    golden("explain_overlay.txt", out)
    assert any(s["step"] == "vxlan-peer" for s in steps)  # the other host, programmed
    assert any(s["step"] == "create-vxlan" for s in steps)


def test_golden_modes_host_none_and_container(q, real_ports):
    q.run("web")
    out = ""
    for argv, mode in (
        (["run", "--network", "host", "--", "sleep", "1"], "host"),
        (["run", "--network", "none", "--", "sleep", "1"], "none"),
        (["run", "--network", "container:web", "--", "sleep", "1"], "container:web"),
    ):
        doc = {"Cmd": argv[-2:], "HostConfig": {"NetworkMode": mode}}
        out += q.text(argv, q.explain(ExplainOp("run", body=doc)))
    out += q.text(["run", "--network", "container:web", "--", "sleep", "1"], q.explain(ExplainOp("run", body=doc), fresh=True), script=True)
    golden("explain_modes.txt", out)


def test_no_step_falls_back_to_the_generic_sentence(q, real_ports):
    """Every named step of a start, a connect, a removal and a create has its own sentence."""
    q.run("web", ports={"53/udp": [{"HostIp": "", "HostPort": "5353"}]})
    q.engine.networks.create(NetworkSpec("mynet", subnet="10.88.0.0/24"))
    steps = q.explain(
        run_op("x", "mynet", ports=PORT_8080),
        op("network-connect", "bridge", body={"Container": "x"}),
        op("network-disconnect", "mynet", body={"Container": "x", "Force": True}),
        op("rm", "web", force=True),
        op("network-create", body={"Name": "n2", "EnableIPv6": True, "IPAM": {"Config": [{"Subnet": "10.89.0.0/24"}, {"Subnet": V6}]}}),
        op("network-connect", "n2", body={"Container": "x"}),
        op("network-rm", "mynet"),
    )
    assert [s for s in steps if "bookkeeping" in s["why"]] == []
    assert {"move-default-route", "flush-conntrack", "delete-bridge", "del-firewall", "allocate-address6"} <= {s["step"] for s in steps}


# -- a dry run changes nothing ---------------------------------------------------------


def test_explaining_changes_nothing(q, real_ports):
    q.engine.networks.create(NetworkSpec("ov", driver="overlay", subnet="10.244.0.0/16"))
    q.other_host_joins()
    q.engine.networks.create(NetworkSpec("mynet", subnet="10.88.0.0/24"))
    q.run("web", ports=PORT_8080)
    before = q.snapshot()
    for fresh in (False, True):
        q.explain(run_op("x", "mynet", ports={"81/tcp": [{"HostIp": "", "HostPort": "8081"}]}), fresh=fresh)
        q.explain(run_op("y", "ov"), fresh=fresh)
        q.explain(op("network-connect", "mynet", body={"Container": "web"}), fresh=fresh)
        q.explain(op("rm", "web", force=True), fresh=fresh)
        q.explain(op("network-rm", "ov"), fresh=fresh)
        q.explain(op("network-create", body={"Name": "ov2", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "10.245.0.0/16"}]}}))
        q.explain(op("network-prune"))
    assert q.snapshot() == before


def test_the_dry_run_and_the_real_operation_agree(q, real_ports):
    """The same operations, run dry and then for real on the stubs: the kernel calls match."""
    q.engine.networks.create(NetworkSpec("mynet", subnet="10.88.0.0/24"))
    steps = q.explain(run_op("web", "mynet", ports=PORT_8080))
    q.run("web", "mynet", ports=PORT_8080)
    veth = next(name for name, link in q.host.links.items() if link.get("kind") == "veth")
    (plug,) = [c for s in steps for c in s["commands"] if c.startswith("ip link add veth")]
    assert "02:42:0a:58:00:02" in plug and "master br-" in plug and q.host.links[veth]["mac"] == "02:42:0a:58:00:02"
    assert [c for s in steps for c in s["commands"] if "published_any" in c] == [
        "nft 'add element inet qiao published_any { tcp . 8080 : 10.88.0.2 . 80 }'"
    ]
    assert q.fw.mappings == {PortMapping("tcp", "0.0.0.0", 8080, "10.88.0.2", 80)}


# -- failing as the real operation fails -------------------------------------------------


@pytest.mark.parametrize(
    "ask",
    [
        run_op("x", "nosuch"),
        run_op("web"),  # the name is taken
        run_op("x", "bridge", IPAMConfig={"IPv4Address": "172.17.0.9"}),  # a static address on the default bridge
        run_op("x", cmd=[]),
        op("rm", "web"),  # running, no -f
        op("rm", "nosuch"),
        op("start", "nosuch"),
        op("network-create", body={"Name": "bridge"}),
        op("network-create", body={"Name": "n", "IPAM": {"Config": [{"Subnet": "172.17.5.0/24"}]}}),  # overlaps
        op("network-create", body={"Name": "n", "Driver": "macvlan"}),
        op("network-create", body={"Name": "n", "Options": {"com.docker.network.bridge.mtu": "1"}}),
        op("network-rm", "bridge"),
        op("network-connect", "bridge", body={"Container": "web"}),  # already connected
        op("network-connect", "nosuch", body={"Container": "web"}),
        op("network-disconnect", "host", body={"Container": "web"}),
    ],
)
def test_refusals_are_the_real_ones(q, real_ports, ask):
    q.run("web")
    with pytest.raises(QiaoError) as dry:
        q.explain(ask)
    planned = Planned(ask)
    with pytest.raises(QiaoError) as real:
        planned(q.engine)  # type: ignore[arg-type]  # the engine has what a dry run has
    assert (type(dry.value), str(dry.value)) == (type(real.value), str(real.value))


def test_a_port_held_by_another_container_is_refused_by_name(q, real_ports):
    q.run("web", ports=PORT_8080)
    with pytest.raises(StartRefused) as info:  # the start of the run, as the real one
        q.explain(run_op("x", ports=PORT_8080))
    assert isinstance(info.value.error, Conflict)
    assert re.fullmatch(r"Bind for 0.0.0.0:8080/tcp failed: port is already allocated to container web \([0-9a-f]{12}\)", str(info.value))


def test_from_scratch_leaves_the_hosts_containers_out_but_brings_what_the_command_names(q, real_ports):
    q.run("other")
    web = q.run("web")
    steps = q.explain(ExplainOp("run", body={"Cmd": ["true"], "HostConfig": {"NetworkMode": "container:web"}}), fresh=True)
    sandboxes = [c for s in steps for c in s["commands"] if c.startswith("ip netns add")]
    assert sandboxes == [f"ip netns add {web[:12]}"]  # web's again, not other's
    assert any(s["step"] == "start-up" and "needs the container web" in s["why"] for s in steps)
    with pytest.raises(NotFound, match="No such container: nosuch"):
        q.explain(op("rm", "nosuch"), fresh=True)


# -- the recording ports ------------------------------------------------------


def test_every_recorded_call_has_its_commands():
    rec = Recorder(StubHost(), StubFirewall())
    h, fw, vx = rec.host, rec.firewall, rec.vxlan(StubVxlan({}))
    rules = BridgeRules("br-x", "10.1.0.0/24", member_dev="qv1", cluster="10.1.0.0/16")
    guard, mapping = EndpointGuard("veth1", ("10.1.0.2",)), PortMapping("udp", "0.0.0.0", 53, "10.1.0.2", 53)
    h.ensure_bridge("br-x", "10.1.0.1", 24, 1500, ("fd00::1", 64), owner="net:1")
    h.create_netns("/r/netns/a")
    h.pin_netns("/proc/1/ns/net", "/r/netns/b")
    h.plug_veth("veth1", "br-x", "/r/netns/a", Peer("eth0", "02:42:0a:01:00:02", 1500), "ep", isolated=True)
    h.plug_veth("veth2", "br-x", "", Peer("eth0", "02:42:0a:01:00:03", 1500), "ep2")
    h.configure_sandbox("/r/netns/a", Iface("eth0", "10.1.0.2", 24, "10.1.0.1", "fd00::2", 64, "fd00::1"))
    h.configure_sandbox("/r/netns/c", None)
    h.set_default_route("/r/netns/a", "10.1.0.1", "fd00::1")
    h.enable_forwarding(ipv6=True)
    h.flush_conntrack("udp", 53)
    h.retire_link("veth1")
    h.delete_link("br-x")
    h.destroy_netns("/r/netns/a")
    fw.reset([rules], [mapping], [guard])
    fw.add_network(BridgeRules("br-i", "10.2.0.0/24", masquerade=False, internal=True, icc=False))
    fw.del_network(rules)
    fw.add_ports([mapping])
    fw.del_ports([mapping])
    fw.add_guards([guard])
    fw.del_guards([guard])
    fw.ensure_foreign_hooks(["br-x"])
    vx.ensure_vxlan("qv1", 1, "192.0.2.10", 8472, 1450, "0e:01:c0:00:02:0a", "eth0", "10.1.0.0")
    vx.set_peer("qv1", "10.1.9.0/24", "10.1.9.0", "0e:01:c0:00:02:0b", "192.0.2.11")
    vx.del_peer("qv1", "10.1.9.0/24", "10.1.9.0", "0e:01:c0:00:02:0b")
    methods = {(c.port, c.method) for c in rec.calls}
    recorders = {"host": type(h), "firewall": type(fw), "vxlan": type(vx)}
    for port, klass in recorders.items():  # every changing method of each port was called above
        changing = {m for m in vars(klass) if not m.startswith("_") and "record(" in _source(klass, m)}
        assert changing == {m for p, m in methods if p == port}
    steps = explain.steps(rec.calls)
    assert all(s["commands"] for s in steps if s["kind"] == "kernel")
    assert set(explain.RENDER) >= methods


def _source(klass: type, method: str) -> str:
    import inspect

    return inspect.getsource(getattr(klass, method))


def test_recorded_nft_text_is_what_the_firewall_applies():
    """The recorded transactions are NftFirewall's own, foreign FORWARD-drop pair included."""
    real = FakeNft({"chains": [DROP_CHAIN]})
    rec = Recorder(StubHost(), real)
    rules = BridgeRules("br-x", "10.1.0.0/24")
    guard, mapping = EndpointGuard("veth1", ("10.1.0.2", "fd00::2")), PortMapping("tcp", "127.0.0.1", 80, "10.1.0.2", 80)
    for fw in (real, rec.firewall):
        fw.reset([rules], [mapping], [guard])
        fw.add_network(rules)
        fw.add_ports([mapping])
        fw.del_ports([mapping])
        fw.add_guards([guard])
        fw.del_guards([guard])
        fw.del_network(rules)
    assert [c.args["script"] for c in rec.calls] == real.scripts
    assert 'accept comment "qiao:br-x"' in real.scripts[1]


def test_a_fresh_host_has_none_of_qiaos_links_but_the_hosts_own():
    real = StubHost()
    real.links["qiao0"] = {"kind": "bridge", "owner": "net:1"}
    real.links["eth0"] = {"kind": ""}
    fresh = Recorder(real, StubFirewall(), fresh=True, ours={"qiao0"}).host
    assert (fresh.link_kind("qiao0"), fresh.link_kind("eth0"), fresh.owned_links()) == (None, "", {})
    assert fresh.ensure_bridge("qiao0", "172.17.0.1", 16, 1500) is True
    assert fresh.link_kind("qiao0") == "bridge"
    assert Recorder(real, StubFirewall()).host.ensure_bridge("qiao0", "172.17.0.1", 16, 1500) is False


# -- the route ----------------------------------------------------------------


@pytest.fixture
def served(q) -> Iterator[Client]:
    os.makedirs(q.root.run, exist_ok=True)
    server = Server(q.root.socket, Api(q.engine, lambda: None))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Client(q.root, autostart=False)
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "doc, status, fragment",
    [
        ({}, 400, "Object missing required field `ops`"),
        ({"ops": []}, 400, "no operation given"),
        ({"ops": [{"op": "ps"}]}, 400, "Invalid enum value 'ps' - at `$.ops[0].op`"),
        ({"ops": [{"op": "rm"}]}, 400, "rm needs a target"),
        ({"ops": [{"op": "run", "body": {"Cmd": 3}}]}, 400, "invalid request body"),
        ({"ops": [{"op": "run", "bogus": 1}]}, 400, "unknown field `bogus`"),
        ({"ops": [{"op": "run", "body": {"Cmd": ["true"], "Image": "busybox"}}]}, 404, "No such image: busybox"),  # as the real create
    ],
)
def test_route_refuses_bad_bodies(served, doc, status, fragment):
    with pytest.raises(DaemonError) as info:
        served.request("POST", "/qiao/explain", body=doc)
    assert info.value.status == status and fragment in str(info.value)


def test_route_says_when_runs_start_fails(served, q, real_ports):
    """As the real run: a refused create is the daemon's error, a refused start is said as the start's."""
    q.run("web", ports=PORT_8080)
    ask = {"ops": [{"op": "run", "body": {"Cmd": ["true"], "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}}}]}
    with pytest.raises(DaemonError) as info:
        served.request("POST", "/qiao/explain", body=ask)
    assert info.value.status == 409 and info.value.body["Phase"] == "start" and "already allocated" in str(info.value)


def test_cli_reports_a_refused_start_as_run_does(daemon, capsys):
    daemon.reply("POST", "/qiao/explain", 400, {"message": "exec: nope: no such file", "Phase": "start", "ExitCode": 127})
    assert main(["--root", daemon.root, "explain", "run", "--", "nope"]) == 127
    assert capsys.readouterr().err == "qiao: exec: nope: no such file\n"


def test_route_answers_steps(served, real_ports):
    steps = served.request("POST", "/qiao/explain", body={"ops": [{"op": "run", "body": {"Cmd": ["true"]}}]})["steps"]
    assert [s["step"] for s in steps][:2] == ["create-sandbox", "allocate-address"]
    assert set(steps[0]) == {"step", "kind", "why", "commands"}


# -- the CLI --------------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path) -> Iterator[FakeDaemon]:
    root = Root.resolve(str(tmp_path / "cli"))
    os.makedirs(root.run)
    fake = FakeDaemon(root.socket)
    fake.root = root.base  # type: ignore[attr-defined]
    yield fake
    fake.close()


STEPS = [
    {"step": "create-sandbox", "kind": "kernel", "why": "Make the sandbox.", "commands": ["ip netns add 0123456789ab"]},
    {"step": "store", "kind": "qiaod", "why": "Record it.", "commands": []},
]


def test_cli_sends_what_the_real_command_sends(daemon, capsys):
    argv = ["run", "-d", "--name", "web", "-p", "8080:80", "--network", "mynet", "--", "python3", "-m", "http.server", "80"]
    daemon.reply("POST", "/containers/create", 201, {"Id": "c" * 64})
    daemon.reply("POST", f"/containers/{'c' * 64}/start", 204, b"")
    daemon.reply("POST", "/qiao/explain", 200, {"steps": STEPS})
    assert main(["--root", daemon.root, *argv]) == 0
    assert main(["--root", daemon.root, "explain", *argv]) == 0
    create, _start, ask = daemon.requests
    assert ask["body"] == {"ops": [{"op": "run", "name": "web", "body": create["body"]}], "fresh": False}
    out = capsys.readouterr().out
    assert "1. create-sandbox: Make the sandbox.\n      ip netns add 0123456789ab\n 2. store: Record it." in out


IPAM = {"IPv4Address": "10.0.0.5", "IPv6Address": ""}


@pytest.mark.parametrize(
    "argv, ops",
    [
        (["start", "a", "b"], [{"op": "start", "target": "a"}, {"op": "start", "target": "b"}]),
        (["rm", "-f", "a"], [{"op": "rm", "target": "a", "force": True}]),
        (["network", "rm", "n"], [{"op": "network-rm", "target": "n"}]),
        (["network", "prune", "-f"], [{"op": "network-prune"}]),
        (
            ["network", "disconnect", "-f", "n", "a"],
            [{"op": "network-disconnect", "target": "n", "body": {"Container": "a", "Force": True}}],
        ),
        (
            ["network", "connect", "--ip", "10.0.0.5", "n", "a"],
            [{"op": "network-connect", "target": "n", "body": {"Container": "a", "EndpointConfig": {"Aliases": [], "IPAMConfig": IPAM}}}],
        ),
    ],
)
def test_cli_operations(daemon, argv, ops):
    daemon.reply("POST", "/qiao/explain", 200, {"steps": STEPS})
    assert main(["--root", daemon.root, "explain", "--from-scratch", *argv]) == 0
    assert daemon.requests[-1]["body"] == {"ops": ops, "fresh": True}


def test_cli_json_and_script(daemon, capsys):
    daemon.reply("POST", "/qiao/explain", 200, {"steps": STEPS})
    assert main(["--root", daemon.root, "explain", "--json", "network", "create", "n"]) == 0
    assert json.loads(capsys.readouterr().out) == {"command": ["qiao", "network", "create", "n"], "fromScratch": False, "steps": STEPS}
    assert main(["--root", daemon.root, "explain", "--from-scratch", "network", "create", "n"]) == 0
    script = capsys.readouterr().out
    assert script.endswith("set -e\n\n# create-sandbox: Make the sandbox.\nip netns add 0123456789ab\n\n# store: Record it.\n")


@pytest.mark.parametrize(
    "argv, rc, fragment",
    [
        (["explain"], 2, "qiao explain: no command given"),
        (["explain", "run"], 2, "qiao run: no command given"),
        (["explain", "run", "--bogus", "true"], 2, "qiao: unrecognized arguments: --bogus"),
        (["explain", "run", "-p", "99999:80", "true"], 2, "invalid host port"),
        (["explain", "frobnicate"], 2, "invalid choice: 'frobnicate'"),
        (["explain", "ps"], 2, "`qiao ps` changes nothing to explain"),
        (["explain", "network", "ls"], 2, "`qiao network ls` changes nothing to explain"),
        (["explain", "run", "--", "true"], 125, "qiao: Error response from daemon: network nosuch not found"),
        (["explain", "rm", "x"], 1, "qiao: Error response from daemon: network nosuch not found"),
    ],
)
def test_cli_errors_are_the_real_commands(daemon, capsys, argv, rc, fragment):
    daemon.reply("POST", "/qiao/explain", 404, {"message": "network nosuch not found"})
    assert main(["--root", daemon.root, *argv]) == rc
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and fragment in err


def test_real_refusals_keep_their_kind():
    """The CLI's own checks (before any request) raise what the real command raises."""
    with pytest.raises(InvalidParameter):
        Planned(ExplainOp("network-connect", target="n", body={"Container": "a", "EndpointConfig": {"Links": ["x"]}}))
