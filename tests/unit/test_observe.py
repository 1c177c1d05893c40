"""``qiao topology`` and ``qiao trace`` without root: the model built from fixed
records and a fixed kernel snapshot (drift, foreign objects, the overlay), its
pictures against golden files (text, SVG, DOT), the trace events' parser, the
rule renderer, and the reading of recorded traces into hops and Docker's
reasons.

``QIAO_UPDATE_GOLDEN=1 pytest tests/unit/test_observe.py`` rewrites the golden
files after an intended change of the pictures (look at the diff)."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import xml.dom.minidom
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from qiao.cli import netview
from qiao.cli.client import Client, DaemonError
from qiao.daemon.api import Api
from qiao.daemon.http import Server
from qiao.engine.errors import InvalidParameter
from qiao.engine.models import Container, Endpoint, Network
from qiao.kernel import nftrace
from qiao.kernel.firewall import BridgeRules
from qiao.kernel.inventory import Fdb, Firewall, Link, Neighbour, Route, Sandbox, Snapshot
from qiao.kernel.nftjson import rule_text
from qiao.kernel.nftrace import Match, Packet, TraceEvent
from qiao.kernel.tracing import Capture, StubTracing, StubWatch
from qiao.lab import trace as lab_trace
from qiao.observe import verdicts
from qiao.observe.topology import NetRecord, Records, build
from qiao.observe.tracer import parse_destination
from qiao.observe.verdicts import Intent, NetInfo, Where
from qiao.paths import Root

GOLDEN = Path(__file__).parent / "golden"
NS = "/var/lib/qiao/run/netns/"


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("QIAO_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file (QIAO_UPDATE_GOLDEN=1 rewrites it)"


# -- a fixed host: records and kernel side by side -------------------------------


def _net(id_: str, name: str, driver: str, subnet: str, gateway: str, **kw) -> Network:
    return Network(id=id_ * 64, name=name, driver=driver, created="2024-01-01T00:00:00Z", subnet=subnet, gateway=gateway, **kw)


def _ep(id_: str, net: Network, owner: str, veth: str, address: str, mac: str, gateway: str = "", ifname: str = "eth0") -> Endpoint:
    prefix = int((net.subnet or "0/24").split("/")[1])
    return Endpoint(id_ * 8, net.id, owner * 64, ifname, veth, address, prefix, gateway, mac)


def _ctr(id_: str, name: str, mode: str, eps: list[Endpoint], **kw) -> Container:
    sandbox = "" if mode == "host" or mode.startswith("container:") else NS + id_ * 12
    return Container(
        id=id_ * 64, name=name, created="", cmd=["sleep"], env=[], hostname=name, network_mode=mode, status="running",
        sandbox_key=sandbox, endpoint_ids=[e.id for e in eps], **kw,
    )  # fmt: skip


def fixed() -> tuple[Records, Snapshot]:
    bridge = _net("b", "bridge", "bridge", "172.17.0.0/16", "172.17.0.1")
    mynet = _net(
        "d", "mynet", "bridge", "10.88.0.0/24", "10.88.0.1", internal=True, options={"com.docker.network.bridge.enable_icc": "false"}
    )
    ov = _net("e", "ov", "overlay", "10.244.36.0/24", "10.244.36.1", scope="global", cluster_subnet="10.244.0.0/16")
    web_ep = _ep("1", bridge, "a", "veth1a2b3c4", "172.17.0.2", "02:42:ac:11:00:02", "172.17.0.1")
    app_ep = _ep("2", mynet, "c", "veth5d6e7f8", "10.88.0.2", "02:42:0a:58:00:02")
    gone_ep = _ep("3", mynet, "f", "veth9999999", "10.88.0.3", "02:42:0a:58:00:03")
    ova_ep = _ep("4", ov, "g", "vetha9b8c7d", "10.244.36.2", "02:42:0a:f4:24:02", "10.244.36.1")
    web = _ctr(
        "a",
        "web",
        "bridge",
        [web_ep],
        ports=[{"proto": "tcp", "host_ip": "0.0.0.0", "host_port": 8080, "container_ip": "172.17.0.2", "container_port": 80}],
    )
    side = _ctr("h", "side", "container:" + "a" * 64, [])
    app = _ctr("c", "app", "mynet", [app_ep])
    gone = _ctr("f", "gone", "mynet", [gone_ep])
    a = _ctr("g", "a", "ov", [ova_ep])
    hostc = _ctr("i", "hostc", "host", [])
    nonec = _ctr("j", "nonec", "none", [])
    vxlan = {"dev": "qv4242", "vni": 4242, "local": "10.250.0.11", "port": 8472, "underlay": "eth0"}
    vxlan["peers"] = [
        {"host": "10.250.0.12", "subnet": "10.244.47.0/24", "vtep": "10.244.47.0", "mac": "0e:92:0a:fa:00:0c"},
        {"host": "10.250.0.13", "subnet": "10.244.5.0/24", "vtep": "10.244.5.0", "mac": "0e:92:0a:fa:00:0d"},
    ]
    records = Records(
        networks=[
            NetRecord(bridge, {"bridge": "qiao0"}, BridgeRules("qiao0", "172.17.0.0/16")),
            NetRecord(
                mynet,
                {"bridge": "br-dddddddddddd"},
                BridgeRules("br-dddddddddddd", "10.88.0.0/24", masquerade=False, internal=True, icc=False),
            ),
            NetRecord(
                ov, {"bridge": "br-eeeeeeeeeeee", "vxlan": vxlan}, BridgeRules("br-eeeeeeeeeeee", "10.244.36.0/24", member_dev="qv4242")
            ),
            NetRecord(_net("k", "host", "host", "", ""), {}, None),
        ],
        endpoints=[web_ep, app_ep, gone_ep, ova_ep],
        containers=[web, side, app, gone, a, hostc, nonec],
    )
    links = [
        Link(1, "lo", up=True, addresses=("127.0.0.1/8",)),
        Link(2, "eth0", "veth", "02:00:0a:fa:00:0b", 1500, True, addresses=("10.250.0.11/24",)),
        Link(3, "qiao0", "bridge", "02:11:22:33:44:55", 1500, True, alias="qiao:net:" + "b" * 64, addresses=("172.17.0.1/16",)),
        Link(
            4,
            "br-dddddddddddd",
            "bridge",
            "02:11:22:33:44:66",
            1500,
            True,
            alias="qiao:net:" + "d" * 64,
            addresses=("10.88.0.1/24", "10.88.0.254/24"),
        ),
        Link(5, "br-eeeeeeeeeeee", "bridge", "02:11:22:33:44:77", 1450, True, alias="qiao:net:" + "e" * 64, addresses=("10.244.36.1/24",)),
        Link(6, "veth1a2b3c4", "veth", "aa:00:00:00:00:01", 1500, True, 3, "qiao:" + "1" * 8),
        Link(7, "veth5d6e7f8", "veth", "aa:00:00:00:00:02", 1500, True, 4, "qiao:" + "2" * 8, isolated=True),
        Link(8, "tap0", "tun", "aa:00:00:00:00:03", 1500, True, 4),
        Link(9, "vetha9b8c7d", "veth", "aa:00:00:00:00:04", 1450, True, 5, "qiao:" + "4" * 8),
        Link(
            10, "qv4242", "vxlan", "0e:92:0a:fa:00:0b", 1450, True, vni=4242, local="10.250.0.11", port=8472, addresses=("10.244.36.0/32",)
        ),
        Link(11, "veth0ld0ld0", "veth", "aa:00:00:00:00:05", 1500, False, alias="qiao:" + "9" * 64),
    ]
    snap = Snapshot(
        links=links,
        routes=[
            Route("0.0.0.0/0", "10.250.0.1", "eth0"),
            Route("10.244.47.0/24", "10.244.47.0", "qv4242"),
            Route("10.244.9.0/24", "10.244.9.0", "qv4242"),
        ],
        neighbours=[
            Neighbour("10.244.47.0", "0e:92:0a:fa:00:0c", "PERMANENT", "qv4242"),
            Neighbour("10.244.9.0", "0e:92:0a:fa:00:0e", "PERMANENT", "qv4242"),
        ],
        fdb=[Fdb("0e:92:0a:fa:00:0c", "10.250.0.12", "qv4242"), Fdb("0e:92:0a:fa:00:0e", "10.250.0.14", "qv4242")],
        firewall=Firewall(
            present=True,
            bridges={"qiao0", "br-dddddddddddd", "br-eeeeeeeeeeee"},
            chains={"fwd-in-qiao0", "fwd-in-br-eeeeeeeeeeee"},
            published=set(),
            tables=[("inet", "qiao"), ("bridge", "qiao"), ("ip", "filter")],
            drop_forward=["ip filter FORWARD"],
        ),
    )
    snap.sandboxes = {
        NS + "a" * 12: Sandbox(NS + "a" * 12, [Link(1, "lo"), Link(2, "eth0", "veth", "02:42:ac:11:00:02", addresses=("172.17.0.2/16",))]),
        NS + "c" * 12: Sandbox(NS + "c" * 12, [Link(1, "lo"), Link(2, "eth0", "veth", "02:42:0a:58:00:02", addresses=())]),
        NS + "f" * 12: Sandbox(NS + "f" * 12, [Link(1, "lo")]),
        NS + "g" * 12: Sandbox(NS + "g" * 12, [Link(1, "lo"), Link(2, "eth0", "veth", "02:42:0a:f4:24:02", addresses=("10.244.36.2/24",))]),
        NS + "j" * 12: Sandbox(NS + "j" * 12, [Link(1, "lo")]),
    }
    return records, snap


@pytest.fixture
def model() -> dict:
    records, snap = fixed()
    return build(records, snap, "host1")


def test_model_marks_drift_with_what_qiao_will_do(model: dict) -> None:
    nets = {n["name"]: n for n in model["networks"]}
    assert [n["name"] for n in model["networks"]] == ["bridge", "mynet", "ov"]  # the default bridge first; no bridge for "host"
    mynet = nets["mynet"]
    assert {
        "what": "chain fwd-in-br-dddddddddddd is missing from table inet qiao",
        "fix": "the firewall healer rebuilds qiao's table within milliseconds",
    } in mynet["drift"]
    assert mynet["flags"] == ["internal", "icc off"]
    ports = {p["owner"]: p for p in mynet["ports"]}
    assert ports["gone"]["drift"] == [{"what": "veth veth9999999 is missing", "fix": "the link repair plugs it again within 5 s"}]
    ctrs = {c["name"]: c for c in model["containers"]}
    app = ctrs["app"]["interfaces"][0]
    assert app["drift"] == [
        {"what": "10.88.0.2/24 is missing on eth0", "fix": "not repaired while it runs: restart the container (qiao stop, qiao start)"}
    ]
    assert ctrs["gone"]["interfaces"][0]["drift"][0]["what"] == "eth0 is missing in the namespace"
    assert ctrs["web"]["drift"] == [
        {
            "what": "published port 0.0.0.0:8080->80/tcp has no map element",
            "fix": "the firewall healer rebuilds qiao's table within milliseconds",
        }
    ]
    assert model["stale"] == [
        {"what": "veth veth0ld0ld0 tagged qiao:" + "9" * 12 + ": no record owns it", "fix": "deleted at qiaod's next start"}
    ]


def test_model_marks_foreign_objects_on_qiaos_bridges(model: dict) -> None:
    mynet = next(n for n in model["networks"] if n["name"] == "mynet")
    assert {(f["name"], f["kind"]) for f in mynet["foreign"]} == {("10.88.0.254/24", "address"), ("tap0", "tun")}
    assert model["firewall"]["foreign"] == [
        "ip filter FORWARD: hooks forward with policy drop (qiao keeps an accept pair per bridge in it)"
    ]
    bridge = model["networks"][0]
    assert bridge["foreign"] == [] and bridge["drift"] == []


def test_model_shows_the_overlay_peers_etcd_has_and_the_kernel_lacks(model: dict) -> None:
    vx = next(n for n in model["networks"] if n["name"] == "ov")["vxlan"]
    assert (vx["dev"], vx["vni"], vx["address"]) == ("qv4242", 4242, "10.244.36.0/32")
    peers = {p["subnet"]: p for p in vx["peers"]}
    assert peers["10.244.47.0/24"]["drift"] == []
    assert peers["10.244.5.0/24"]["drift"][0]["what"] == "route, neighbour, FDB entry for 10.244.5.0/24 (host 10.250.0.13) missing"
    assert peers["10.244.9.0/24"] == {
        "host": "10.250.0.14",
        "subnet": "10.244.9.0/24",
        "vtep": "10.244.9.0",
        "mac": "0e:92:0a:fa:00:0e",
        "drift": [
            {
                "what": "peer 10.244.9.0/24 is not in etcd's leases",
                "fix": "programmed again at the overlay's next change (or qiaod's next start)",
            }
        ],
    }


def test_model_shows_modes_sharers_and_ports(model: dict) -> None:
    ctrs = {c["name"]: c for c in model["containers"]}
    assert ctrs["web"]["sharers"] == ["side"] and ctrs["side"]["mode"] == "container:web"
    assert ctrs["web"]["ports"] == ["0.0.0.0:8080->80/tcp"]
    assert (ctrs["hostc"]["mode"], ctrs["hostc"]["namespace"]) == ("host", "host")
    assert (ctrs["nonec"]["mode"], ctrs["nonec"]["namespace"]) == ("none", "j" * 12)
    assert json.loads(json.dumps(model)) == model  # plain data


def test_topology_text_golden_and_80_columns(model: dict) -> None:
    text = netview.topology_text({"hosts": [model]})
    golden("topology.txt", text)
    assert max(len(line) for line in text.splitlines()) <= 80


def test_topology_text_stays_readable_with_50_containers() -> None:
    records, snap = fixed()
    base = len(netview.topology_text({"hosts": [build(records, snap, "host1")]}).splitlines())
    net = records.networks[0].net
    for i in range(50):
        ep = _ep(f"{i:02d}", net, f"{i:02d}", f"veth{i:07d}", f"172.17.1.{i}", f"02:42:ac:11:01:{i:02x}")
        records.endpoints.append(ep)
        records.containers.append(_ctr(f"{i:02d}", f"worker-with-a-long-name-{i}", "bridge", [ep]))
        snap.links.append(Link(100 + i, ep.host_ifname, "veth", up=True, master=3))
        snap.sandboxes[NS + f"{i:02d}" * 6] = Sandbox(NS + f"{i:02d}" * 6, [Link(2, "eth0", mac=ep.mac, addresses=(f"{ep.address}/16",))])
    text = netview.topology_text({"hosts": [build(records, snap, "host1")]})
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert sum(1 for line in lines if "══ eth0" in line) == 54  # one line per interface ...
    assert len(lines) == base + 50 * 2  # ... and one more for its details


def test_topology_svg_golden_and_well_formed(model: dict) -> None:
    svg = netview.topology_svg({"hosts": [model]})
    golden("topology.svg", svg)
    doc = xml.dom.minidom.parseString(svg)
    assert doc.documentElement.tagName == "svg"
    texts = " ".join(t.firstChild.data for t in doc.getElementsByTagName("text") if t.firstChild)
    for word in ("qiao0 172.17.0.1/16", "web", "VXLAN qv4242", "tap0", "! veth veth9999999 is"):
        assert word in texts, word
    drawn = [r.getAttribute("class") for r in doc.getElementsByTagName("rect")]
    assert "drift" in drawn and "foreign" in drawn


def test_lab_view_svg_and_text_show_the_underlay(model: dict) -> None:
    second = json.loads(json.dumps(model))
    model["label"], second["label"] = "host1", "host2"
    hosts = [{"label": "host1", "address": "10.250.0.11"}, {"label": "host2", "address": "10.250.0.12"}]
    underlay = {"lab": "0badcafe", "bridge": "ul0", "address": "10.250.0.1/24", "namespace": "qlab-0badcafe-ul", "etcd": "10.250.0.1:2379"}
    view = {"hosts": [model, second], "underlay": underlay | {"hosts": hosts}}
    text = netview.topology_text(view)
    first = "lab 0badcafe · underlay ul0 10.250.0.1/24 in qlab-0badcafe-ul\n"
    assert text.startswith(first + "etcd 10.250.0.1:2379 · hosts: host1 10.250.0.11, host2 10.250.0.12\n")
    assert "host host1 ·" in text and "host host2 ·" in text
    svg = netview.topology_svg(view)
    xml.dom.minidom.parseString(svg)
    assert svg.count('class="underlay"') >= 3  # the bar and a line to each host's uplink
    dot = netview.topology_dot(view)
    assert dot.count("underlay -> ") == 2


def test_topology_dot_golden(model: dict) -> None:
    golden("topology.dot", netview.topology_dot({"hosts": [model]}))


# -- trace events --------------------------------------------------------------------


def _nla(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def test_trace_messages_are_parsed_with_packet_verdict_and_jump_target() -> None:
    ip = bytes([0x45, 0, 0, 40, 0, 0, 0x40, 0, 63, 6, 0, 0, 10, 61, 1, 2, 10, 61, 2, 2])
    tcp = struct.pack("!HH", 41234, 7000) + b"\0" * 16
    verdict = _nla(1, struct.pack("!i", -3)) + _nla(2, b"fwd-in-br-x\0")
    attrs = (
        _nla(1, b"qiao\0") + _nla(2, b"forward\0") + _nla(3, struct.pack("!Q", 21)) + _nla(4, struct.pack("!I", 3))
        + _nla(5 | 0x8000, verdict) + _nla(6, struct.pack("!I", 0xABCD)) + _nla(8, ip) + _nla(9, tcp)
        + _nla(10, struct.pack("!I", 3)) + _nla(12, struct.pack("!I", 4))
    )  # fmt: skip
    body = struct.pack("=BBH", 1, 0, 0) + attrs
    msg = struct.pack("=LHHLL", 16 + len(body), (10 << 8) | 17, 0, 0, 0) + body
    (ev,) = nftrace.parse(msg)
    assert (ev.family, ev.table, ev.chain, ev.kind, ev.handle, ev.verdict, ev.target) == (
        "inet",
        "qiao",
        "forward",
        "rule",
        21,
        "jump",
        "fwd-in-br-x",
    )
    assert (ev.trace_id, ev.iif, ev.oif, ev.walk) == (0xABCD, 3, 4, True)
    assert ev.packet == Packet("10.61.1.2", "10.61.2.2", "tcp", 41234, 7000, ttl=63)


def test_the_marking_rule_matches_the_probe_only() -> None:
    assert Match("tcp", "10.0.0.2", "10.0.0.3", 40000, 80).nft() == (
        "ip saddr 10.0.0.2 ip daddr 10.0.0.3 tcp sport 40000 tcp dport 80 tcp flags & (syn | ack) == syn"
    )
    assert Match("icmp", daddr="10.0.0.3", ident=7).nft() == "ip daddr 10.0.0.3 icmp type echo-request icmp id 7"
    script = nftrace.arm_script("qiao_trace_01020304", Match("udp", sport=5, dport=53))
    assert script.count("meta nftrace set 1") == 4 and "priority -500" in script and "drop" not in script
    assert (
        nftrace.disarm_script("qiao_trace_01020304") == "delete table inet qiao_trace_01020304\ndelete table bridge qiao_trace_01020304\n"
    )
    assert nftrace.leftover_script([("inet", "qiao"), ("inet", "qiao_trace_aa"), ("bridge", "qiao_trace_aa"), ("ip", "filter")]) == (
        "delete table inet qiao_trace_aa\ndelete table bridge qiao_trace_aa\n"
    )


def test_rules_are_written_back_as_nft_text() -> None:
    expr = [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "br-x"}}, {"drop": None}]
    assert rule_text(expr) == 'iifname "br-x" drop'
    assert rule_text([{"vmap": {"key": {"meta": {"key": "oifname"}}, "data": "@fwd_in"}}]) == "oifname vmap @fwd_in"
    dnat = {
        "dnat": {
            "family": "ip",
            "addr": {
                "map": {
                    "key": {"concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]},
                    "data": "@published_any",
                }
            },
        }
    }
    assert rule_text([dnat]) == "dnat ip to meta l4proto . th dport map @published_any"
    established = [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": None}]
    assert rule_text(established) == "ct state established,related accept"
    saddr = {"payload": {"protocol": "ip", "field": "saddr"}}
    masq = [{"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "br-y"}},
            {"match": {"op": "==", "left": saddr, "right": {"prefix": {"addr": "10.2.0.0", "len": 24}}}},
            {"masquerade": None}]  # fmt: skip
    assert rule_text(masq) == 'oifname != "br-y" ip saddr 10.2.0.0/24 masquerade'
    assert rule_text(
        [
            {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
            {"jump": {"target": "publish"}},
        ]
    ) == ("fib daddr type local jump publish")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("web", ("web", 0, "icmp")),
        ("web:80", ("web", 80, "tcp")),
        ("10.0.0.2:53/udp", ("10.0.0.2", 53, "udp")),
        ("host:8080/tcp", ("host", 8080, "tcp")),
    ],
)
def test_destinations_parse(text: str, want: tuple) -> None:
    assert parse_destination(text) == want


@pytest.mark.parametrize("text", ["web:0", "web/udp", "web:80/sctp", "web:99999", "a:b", ""])
def test_bad_destinations_are_refused_in_one_sentence(text: str) -> None:
    with pytest.raises(InvalidParameter):
        parse_destination(text)


# -- reading recorded traces -----------------------------------------------------------

A, B = NetInfo("a", "br-a", "10.61.1.0/24"), NetInfo("b", "br-b", "10.61.2.0/24")
INT, NOICC = NetInfo("int", "br-int", "10.61.3.0/24", internal=True), NetInfo("noicc", "br-n", "10.61.4.0/24", icc=False)
WHERE = Where(
    networks={n.bridge: n for n in (A, B, INT, NOICC)},
    ports={
        "veth-a1": ("a1", "br-a"),
        "veth-a2": ("a2", "br-a"),
        "veth-b1": ("b1", "br-b"),
        "veth-n1": ("n1", "br-n"),
        "veth-n2": ("n2", "br-n"),
    },
    devices={"eth0": "the uplink"},
)
IFNAMES = {1: "eth0", 3: "br-a", 4: "br-b", 5: "veth-a1", 6: "veth-a2", 7: "br-int", 8: "br-n", 9: "veth-n1", 10: "veth-n2"}
RULES = {
    "inet qiao forward 21": {"text": "oifname vmap @fwd_in", "comment": ""},
    "inet qiao fwd-in-br-b 45": {"text": "drop", "comment": ""},
    "inet qiao fwd-in-br-a 36": {"text": 'iifname "br-a" accept', "comment": ""},
    "inet qiao fwd-in-br-a 35": {"text": "ct status dnat accept", "comment": "published ports"},
    "inet qiao fwd-in-br-int 50": {"text": "drop", "comment": ""},
    "inet qiao fwd-out-br-int 52": {"text": 'oifname != "br-int" drop', "comment": "internal network"},
    "inet qiao fwd-in-br-n 60": {"text": 'iifname "br-n" drop', "comment": "icc=false"},
    "inet qiao prerouting 18": {"text": "fib daddr type local jump publish", "comment": ""},
    "inet qiao publish 14": {"text": "dnat ip to meta l4proto . th dport map @published_any", "comment": ""},
    "bridge qiao guard 13": {"text": "drop", "comment": "spoofed source, or not IP/ARP"},
}


def ev(family: str, table: str, chain: str, kind: str = "rule", handle: int = 0, verdict: str = "continue", target: str = "",
       iif: int = 0, oif: int = 0, packet: Packet | None = None, walk: bool = False) -> TraceEvent:  # fmt: skip
    return TraceEvent(1, family, table, chain, kind, handle, verdict, target, iif, oif, 2, packet, walk)


P = Packet("10.61.1.2", "10.61.2.2", "tcp", 41234, 7000)


def routed_to(dst_bridge: int, handle: int, chain: str, verdict: str, packet: Packet = P, src_bridge: int = 3) -> list[TraceEvent]:
    T = "qiao_trace_01"
    return [
        ev("bridge", T, "mark-prerouting", handle=2, iif=5, packet=packet, walk=True),
        ev("bridge", "qiao", "prerouting", handle=6, verdict="jump", target="guard", iif=5, packet=packet, walk=True),
        ev("bridge", "qiao", "guard", handle=7, verdict="return", iif=5, packet=packet),
        ev("inet", T, "mark-prerouting", handle=2, iif=src_bridge, packet=packet, walk=True),
        ev("inet", "qiao", "raw", "policy", verdict="accept", iif=src_bridge, packet=packet, walk=True),
        ev("inet", "qiao", "forward", handle=21, verdict="jump", target=chain, iif=src_bridge, oif=dst_bridge, packet=packet, walk=True),
        ev("inet", "qiao", chain, handle=handle, verdict=verdict, iif=src_bridge, oif=dst_bridge, packet=packet),
    ]


def reading(events: list[TraceEvent], intent: Intent, outcome: str = "silent", lookups: dict | None = None) -> dict:
    capture = Capture(outcome, "", Match("tcp", sport=41234, dport=7000), events, dict(RULES), dict(IFNAMES), 12.0)
    return verdicts.read(capture, WHERE, intent, lookups)


def test_a_drop_between_two_networks_is_isolation() -> None:
    got = reading(routed_to(4, 45, "fwd-in-br-b", "drop"), Intent("a1", "b1", "tcp", 7000, True, src_networks=[A], dst_networks=[B]))
    assert (got["result"]["status"], got["result"]["reason"]) == ("dropped", verdicts.ISOLATED)
    texts = [h["text"] for h in got["hops"]]
    assert texts[0] == "enters bridge br-a from veth-a1 (a1's veth)"
    assert "routed from bridge br-a (network a) to bridge br-b (network b)" in texts
    assert got["hops"][-1] == {"at": "host", "kind": "rule", "text": "inet qiao fwd-in-br-b: drop", "verdict": "drop"}


def test_a_drop_into_or_out_of_an_internal_network_names_it() -> None:
    got = reading(routed_to(7, 50, "fwd-in-br-int", "drop"), Intent("a1", "i1", "tcp", 7000, True, src_networks=[A], dst_networks=[INT]))
    assert got["result"]["reason"] == verdicts.INTERNAL
    out = routed_to(1, 52, "fwd-out-br-int", "drop", src_bridge=7)
    assert reading(out, Intent("i1", "outside", "tcp", 80, src_networks=[INT]))["result"]["reason"] == verdicts.INTERNAL
    no_route = reading([], Intent("i1", "outside", "tcp", 80, src_networks=[INT]), outcome="no-route")
    assert (no_route["result"]["status"], no_route["result"]["reason"]) == ("dropped", verdicts.INTERNAL)


def test_icc_false_by_the_rule_or_by_bridge_port_isolation() -> None:
    p = Packet("10.61.4.2", "10.61.4.3", "tcp", 41234, 7000)
    by_rule = reading(
        routed_to(8, 60, "fwd-in-br-n", "drop", p, src_bridge=8), Intent("n1", "n2", "tcp", 7000, True, [], False, [NOICC], [NOICC])
    )
    assert (by_rule["result"]["reason"], by_rule["hops"][-1]["verdict"]) == (verdicts.ICC, "drop")
    entered = [ev("bridge", "qiao_trace_01", "mark-prerouting", handle=2, iif=9, packet=p, walk=True),
               ev("bridge", "qiao", "guard", handle=7, verdict="return", iif=9, packet=p)]  # fmt: skip
    isolated = reading(entered, Intent("n1", "n2", "tcp", 7000, True, src_networks=[NOICC], dst_networks=[NOICC]))
    assert (isolated["result"]["status"], isolated["result"]["reason"]) == ("dropped", verdicts.ICC)


def test_from_outside_a_published_port_is_dnated_and_an_unpublished_one_ends_at_the_host() -> None:
    T = "qiao_trace_01"
    out = Packet("198.51.100.2", "198.51.100.1", "tcp", 41234, 8080)
    dnated = Packet("198.51.100.2", "10.61.1.2", "tcp", 41234, 7000)
    events = [
        ev("inet", T, "mark-prerouting", handle=2, iif=1, packet=out, walk=True),
        ev("inet", "qiao", "prerouting", handle=18, verdict="jump", target="publish", iif=1, packet=out, walk=True),
        ev("inet", "qiao", "publish", handle=14, verdict="accept", iif=1, packet=out),
        ev("inet", "qiao", "forward", handle=21, verdict="jump", target="fwd-in-br-a", iif=1, oif=3, packet=dnated, walk=True),
        ev("inet", "qiao", "fwd-in-br-a", handle=35, verdict="accept", iif=1, oif=3, packet=dnated),
        ev("bridge", T, "seen-postrouting", "policy", verdict="accept", oif=5, packet=dnated, walk=True),
    ]
    got = reading(events, Intent("outside", "a1", "tcp", 7000, True, via_host=True), outcome="connected")
    assert got["result"]["status"] == "delivered"
    nat = next(h for h in got["hops"] if h["kind"] == "nat")
    assert nat["text"] == "DNAT 198.51.100.1:8080 -> 10.61.1.2:7000" and "publish" in nat["rule"]
    assert got["hops"][-1]["text"] == "over the veth pair into a1's namespace (its eth end)"
    ends_here = [*events[:2], ev("inet", T, "seen-input", "policy", verdict="accept", iif=1, packet=out, walk=True)]
    got = reading(ends_here, Intent("outside", "a1", "tcp", 7000, True, ["0.0.0.0:8080->80/tcp"], True), outcome="refused")
    assert (got["result"]["status"], got["result"]["reason"]) == ("dropped", verdicts.NOT_PUBLISHED)
    assert "publishes 0.0.0.0:8080->80/tcp" in got["result"]["detail"]


def test_unsolicited_traffic_from_outside_dropped_by_fwd_in_is_port_not_published() -> None:
    out = Packet("198.51.100.2", "10.61.2.2", "tcp", 41234, 7000)
    got = reading(routed_to(4, 45, "fwd-in-br-b", "drop", out, src_bridge=1)[3:], Intent("outside", "b1", "tcp", 7000, True))
    assert got["result"]["reason"] == verdicts.NOT_PUBLISHED


def test_a_spoofed_source_and_a_foreign_tables_drop() -> None:
    spoofed = [ev("bridge", "qiao", "guard", handle=13, verdict="drop", iif=5, packet=P, walk=True)]
    assert reading(spoofed, Intent("a1", "b1", "tcp", 7000))["result"]["reason"] == verdicts.SPOOFED
    foreign = [ev("ip", "filter", "FORWARD", "policy", verdict="drop", iif=3, oif=4, packet=P, walk=True)]
    got = reading(foreign, Intent("a1", "b1", "tcp", 7000))
    assert got["result"]["reason"] == verdicts.FOREIGN and "ip filter FORWARD" in got["result"]["detail"]
    assert got["hops"][0]["text"] == "table ip filter (not qiao's), chain FORWARD"


def test_a_listener_delivered_refused_and_no_route() -> None:
    bridged = [ev("bridge", "qiao_trace_01", "mark-prerouting", handle=2, iif=5, packet=P, walk=True),
               ev("bridge", "qiao_trace_01", "seen-forward", "policy", verdict="accept", iif=5, oif=6, packet=P, walk=True)]  # fmt: skip
    same = Intent("a1", "a2", "tcp", 7000, True, src_networks=[A], dst_networks=[A])
    assert reading(bridged, same, "connected")["result"]["status"] == "delivered"
    refused = reading(bridged, same, "refused")["result"]
    assert refused["status"] == "no listener" and "7000/tcp" in refused["detail"]
    assert reading([], Intent("a1", "10.9.9.9", "tcp", 80, src_networks=[A]), "no-route")["result"]["status"] == "no route"
    udp = reading(bridged, Intent("a1", "a2", "udp", 53, True, src_networks=[A], dst_networks=[A]))["result"]
    assert udp["status"] == "delivered"  # no ICMP error: a socket took it


def test_trace_text_fits_80_columns_and_names_the_reason() -> None:
    got = reading(routed_to(4, 45, "fwd-in-br-b", "drop"), Intent("a1", "b1", "tcp", 7000, True, src_networks=[A], dst_networks=[B]))
    result = {
        "source": {"label": "a1", "kind": "container"},
        "destination": {"label": "b1", "kind": "container", "address": "10.61.2.2", "port": 7000, "protocol": "tcp"},
        "hops": [{"at": "a1", "kind": "send", "text": "sends tcp 10.61.1.2:41234 -> 10.61.2.2:7000"}, *got["hops"]],
        "result": got["result"],
        "elapsed_ms": 12.0,
    }
    text = netview.trace_text(result)
    golden("trace.txt", text)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "result: dropped: isolated: different networks" in text


# -- the receiving host's watch, spoken to by the CLI's client ----------------------


class FakeTracer:
    """What the watch route needs of a Tracer: ``expect`` and ``received``, over StubTracing."""

    def __init__(self, events: list[TraceEvent]) -> None:
        self.tracing = StubTracing([Capture(events=events)])

    def expect(self, source: str, destination: str, probe_id: int) -> SimpleNamespace:
        name, port, proto = parse_destination(destination)
        return SimpleNamespace(match=Match(proto, sport=probe_id, dport=port), source=source)

    def received(self, expected: SimpleNamespace, capture: Capture) -> dict:
        return {"seen": bool(capture.events), "outcome": capture.outcome, "detail": capture.detail, "source": expected.source}


@pytest.fixture
def watched(tmp_path) -> Iterator[tuple[Client, FakeTracer]]:
    root = Root.resolve(str(tmp_path))
    os.makedirs(root.run)
    api = Api(SimpleNamespace(), lambda: None)  # type: ignore[arg-type]
    tracer = FakeTracer([ev("inet", "qiao_trace_01", "mark-prerouting", handle=2, iif=1, packet=P, walk=True)])
    api.observer = SimpleNamespace(tracer=tracer)  # type: ignore[assignment]
    server = Server(root.socket, api)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield Client(root, autostart=False), tracer
    finally:
        server.shutdown()
        server.server_close()


def test_a_watch_is_armed_told_how_the_probe_ended_and_answers_what_it_saw(watched) -> None:
    client, tracer = watched
    with client.converse("/qiao/trace/watch", {"Destination": "b:7000", "SourcePort": 40001, "Source": "a on host1"}) as conversation:
        assert conversation.receive() == {"Armed": True}
        assert tracer.tracing.watches[0].match == Match("tcp", sport=40001, dport=7000)
        conversation.send({"Outcome": "refused", "Detail": "connection refused"})
        got = conversation.receive()
    assert got == {"seen": True, "outcome": "refused", "detail": "connection refused", "source": "a on host1"}
    assert tracer.tracing.watches[0].closed  # before its answer: the reading is made of a closed watch


def closed_soon(watch: StubWatch) -> bool:
    """Whether the server side closes ``watch`` within 5 s (it does so after its last word)."""
    deadline = time.monotonic() + 5
    while not watch.closed and time.monotonic() < deadline:
        time.sleep(0.005)
    return watch.closed


def test_a_watch_goes_when_the_client_leaves_or_says_nonsense(watched) -> None:
    client, tracer = watched
    with client.converse("/qiao/trace/watch", {"Destination": "b:7000", "SourcePort": 40001}) as conversation:
        conversation.receive()
    assert closed_soon(tracer.tracing.watches[0]), "the watch outlived its connection"
    with client.converse("/qiao/trace/watch", {"Destination": "b:7000", "SourcePort": 40001}) as conversation:
        conversation.receive()
        conversation.send({"Outcome": "maybe"})
        with pytest.raises(DaemonError, match="invalid Outcome 'maybe'"):
            conversation.receive()
    assert closed_soon(tracer.tracing.watches[1])
    with pytest.raises(DaemonError, match="invalid port") as refused:
        client.converse("/qiao/trace/watch", {"Destination": "b:99999", "SourcePort": 40001})
    assert refused.value.status == 400 and len(tracer.tracing.watches) == 2  # refused before anything was armed


# -- qiao lab trace: the two halves joined ------------------------------------------------

SENT = {
    "source": {"label": "a", "kind": "container"},
    "destination": {"label": "b", "kind": "address", "address": "10.245.2.2", "port": 7000, "protocol": "tcp"},
    "hops": [
        {"at": "a", "kind": "send", "text": "sends tcp 10.245.1.2:40001 -> 10.245.2.2:7000"},
        {"at": "host", "kind": "hop", "text": "routed from bridge br-1 (network ov) to qv1 (VXLAN of overlay ov)"},
        {
            "at": "host",
            "kind": "out",
            "text": "into VXLAN qv1 (overlay ov): to host 10.250.0.12, UDP",
            "tunnel": {"dev": "qv1", "network": "ov", "remote": "10.250.0.12"},
        },
    ],  # fmt: skip
    "result": {"status": "no listener", "reason": "", "detail": "delivered to b, but nothing listens on 7000/tcp (connection refused)"},
    "socket": {"outcome": "refused", "detail": "connection refused"},
    "elapsed_ms": 40.0,
}
SEEN = {
    "hops": [
        {"at": "host", "kind": "hop", "text": "reaches the host's IP layer from qv1 (VXLAN of overlay ov)"},
        {"at": "host", "kind": "rule", "text": 'inet qiao fwd-in-br-1: iifname "qv1" accept', "verdict": "accept"},
        {"at": "host", "kind": "out", "text": "over the veth pair into b's namespace (its eth end)"},
    ],
    "result": {"status": "no listener", "reason": "", "detail": "delivered to b, but nothing listens on 7000/tcp (connection refused)"},
    "seen": True,
}


class FakeConversation:
    def __init__(self, host: FakeHost, seen: dict) -> None:
        self.host, self.seen, self.said, self.closed = host, seen, [], False

    def receive(self) -> dict:
        return {"Armed": True} if not self.said else self.seen

    def send(self, value: dict) -> None:
        self.said.append(value)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeConversation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeHost:
    """A lab host's qiaod: containers by name, a trace answer, a watch's reading."""

    def __init__(self, containers: dict[str, str], sent: dict | Exception | None = None, seen: dict | None = None) -> None:
        self.containers, self.sent, self.seen = containers, sent, seen
        self.requests: list[tuple[str, str, dict | None]] = []
        self.conversations: list[tuple[dict, FakeConversation]] = []

    def request(self, method: str, path: str, query: dict | None = None, body: dict | None = None) -> dict:
        self.requests.append((method, path, body))
        if path.startswith("/containers/") and path.endswith("/json"):
            name = path.split("/")[2]
            if name not in self.containers:
                raise DaemonError(404, f"No such container: {name}", {})
            return {"Name": "/" + name, "NetworkSettings": {"Networks": {"ov": {"IPAddress": self.containers[name]}}}}
        if isinstance(self.sent, Exception):
            raise self.sent
        return json.loads(json.dumps(self.sent))

    def converse(self, path: str, body: dict) -> FakeConversation:
        conversation = FakeConversation(self, json.loads(json.dumps(self.seen)))
        self.conversations.append((body, conversation))
        return conversation


def fake_lab(monkeypatch, **hosts: FakeHost) -> SimpleNamespace:
    state = {"hosts": [{"name": n, "address": f"10.250.0.{10 + i}", "root": f"/r/{n}"} for i, n in enumerate(hosts, 1)]}
    monkeypatch.setattr(lab_trace, "_client", lambda h: hosts[h["name"]])
    return SimpleNamespace(state=state, host=lambda name: next(h for h in state["hosts"] if h["name"] == name))


def test_a_lab_trace_joins_the_senders_hops_the_underlay_and_the_receivers(monkeypatch) -> None:
    host1, host2 = FakeHost({"a": "10.245.1.2"}, sent=SENT), FakeHost({"b": "10.245.2.2"}, seen=SEEN)
    got = lab_trace.trace(fake_lab(monkeypatch, host1=host1, host2=host2), "host1", "a", "b:7000")
    (watch, conversation), = host2.conversations  # fmt: skip
    trace_request = host1.requests[-1][2]
    assert watch == {"Destination": "b:7000", "SourcePort": trace_request["SourcePort"], "Source": "a on host1"}
    assert conversation.said == [{"Outcome": "refused", "Detail": "connection refused"}] and conversation.closed
    assert [h["at"] for h in got["hops"]] == ["a", "host1", "host1", "underlay", "host2", "host2", "host2"]
    assert got["hops"][3]["text"] == "10.250.0.11 (host1) -> 10.250.0.12 (host2) across bridge ul0: the packet inside VXLAN (qv1, UDP)"
    assert got["result"] == SEEN["result"]
    assert (got["source"]["label"], got["destination"]["label"], got["destination"]["host"]) == ("a on host1", "b on host2", "host2")
    text = netview.trace_text(got | {"elapsed_ms": 95.0})
    golden("lab-trace.txt", text)
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_lab_trace_the_receiver_never_saw_keeps_the_senders_result(monkeypatch) -> None:
    host1, host2 = (
        FakeHost({"a": "10.245.1.2"}, sent=SENT | {"result": {"status": "no answer"}}),
        FakeHost({"b": "10.245.2.2"}, seen={"seen": False}),
    )
    got = lab_trace.trace(fake_lab(monkeypatch, host1=host1, host2=host2), "host1", "a", "b:7000")
    assert got["hops"][-1] == {"at": "host2", "kind": "info", "text": "saw nothing of the probe"}
    assert got["result"] == {"status": "no answer"}


def test_a_lab_trace_on_one_host_is_a_plain_trace_and_a_name_the_sender_cannot_resolve_says_where_it_is(monkeypatch) -> None:
    host1, host2 = FakeHost({"a": "10.245.1.2", "b": "10.245.1.3"}, sent=SENT), FakeHost({"b": "10.245.2.2"})
    got = lab_trace.trace(fake_lab(monkeypatch, host1=host1, host2=host2), "host1", "a", "b:7000")
    assert host2.conversations == [] and got["hops"][1]["at"] == "host1" and got["result"] == SENT["result"]
    host1 = FakeHost({"d": "172.17.0.2"}, sent=DaemonError(404, "No such container: b", {}))
    host2 = FakeHost({"b": "10.245.2.2"}, seen=SEEN)
    with pytest.raises(lab_trace.LabTraceError, match=r"host1: No such container: b \(b is on host2 at 10.245.2.2: trace to its address\)"):
        lab_trace.trace(fake_lab(monkeypatch, host1=host1, host2=host2), "host1", "d", "b:7000")
    assert host2.conversations[0][1].closed  # the watch goes with the failed trace
    both = FakeHost({"b": "10.245.3.2"})
    with pytest.raises(lab_trace.LabTraceError, match="b is a container on host2 .*, host3 .*: trace to its address"):
        lab_trace.trace(fake_lab(monkeypatch, host1=FakeHost({}), host2=host2, host3=both), "host1", "x", "b:7000")
