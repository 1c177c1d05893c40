"""``qiao trace`` and ``qiao topology`` on real hosts.

* the isolation matrix of test_user_networks (networks a, b, --internal,
  enable_icc=false, a container on two networks, a neighbour machine
  "outside" across the host's uplink): every blocked pair is named with
  Docker's reason, every open pair is delivered; a published port from
  outside; an unpublished one; a name the resolver does not know;
* icc=false without br_netfilter (bridge port isolation, no rule drops it);
* a trace leaves no table behind, also when the CLI is interrupted, and a
  table a killed daemon left is removed at the next start;
* the picture: the text, the JSON, an SVG a browser can show, and what
  another program put on qiao's bridges (foreign) or took away (drift);
* across the overlay in a ``qiao lab`` of two hosts: a trace through the
  VXLAN device to the other host, from outside to a published port, and
  ``qiao lab topology`` with both hosts and the underlay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import xml.dom.minidom
from collections.abc import Iterator
from pathlib import Path

import pytest

from qiao.cli.client import Client
from qiao.paths import Root
from tests.integration.conftest import QIAO, RUN, Host, sh, wait_for
from tests.integration.test_overlay import RESTARTED
from tests.integration.test_user_networks import PY, SERVER, addresses, in_parallel, netns_of, probe


def trace(h: Host, src: str, dst: str) -> dict:
    return Client(Root.resolve(h.root), autostart=False).request("POST", "/qiao/trace", body={"Source": src, "Destination": dst})


def trace_tables(h: Host) -> list[str]:
    return [line for line in h.sh("nft", "list", "tables").stdout.splitlines() if "qiao_trace" in line]


MUTE = "import socket, time; u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 7001)); time.sleep(3600)"


@pytest.fixture(scope="module")
def iso() -> Iterator[Host]:
    """The isolation matrix's host, with a neighbour machine across its uplink (its default route)."""
    h = Host("ob" + RUN[-2:])
    try:
        h.add_outside()
        h.sh("ip", "route", "add", "default", "via", "198.51.100.2")
        nets = {"a": 1, "b": 2, "int": 3, "noicc": 4}
        extra = {"int": ["--internal"], "noicc": ["-o", "com.docker.network.bridge.enable_icc=false"]}
        for net, n in nets.items():
            h.qiao("network", "create", "--subnet", f"10.63.{n}.0/24", *extra.get(net, []), net)
        for name, *opts in (
            ("a1", "--network", "a"),
            ("a2", "--network", "a"),
            ("b1", "--network", "b"),
            ("ab", "--network", "a", "--network", "b"),
            ("i1", "--network", "int", "--cap-add", "NET_ADMIN"),
            ("i2", "--network", "int"),
            ("n1", "--network", "noicc"),
            ("n2", "--network", "noicc", "-p", "8000:7000"),
            ("web", "-p", "8080:7000", "-p", "8081:7001/udp"),
        ):
            h.run_d("--name", name, *opts, "--", PY, "-c", SERVER)
        up = in_parallel([(netns_of(h, n), probe, ("tcp", "127.0.0.1")) for n in ("a1", "a2", "b1", "ab", "i1", "i2", "n1", "n2", "web")])
        assert all(up), "a server did not come up"
        yield h
    finally:
        h.cleanup()


def test_trace_isolation_matrix_names_every_reason(iso: Host) -> None:
    addr = {n: addresses(iso, n) for n in ("a1", "a2", "b1", "ab", "i1", "i2", "n1", "n2")}
    a, b = lambda n: addr[n]["a"][0], lambda n: addr[n]["b"][0]  # noqa: E731
    cases = [
        # (source, destination, status, reason)
        ("a1", f"{a('a2')}:7000", "delivered", ""),
        ("a2", "a1:7000", "delivered", ""),  # by name: the resolver of network a knows it
        ("a1", "a2:7001/udp", "delivered", ""),
        ("ab", f"{b('b1')}:7000", "delivered", ""),
        ("b1", f"{b('ab')}:7000", "delivered", ""),
        ("a1", f"{a('ab')}", "delivered", ""),
        ("i1", "i2:7000", "delivered", ""),
        ("a1", "a2:7999", "no listener", ""),
        ("a1", f"{b('b1')}:7000", "dropped", "isolated: different networks"),
        ("b1", f"{a('a1')}:7000", "dropped", "isolated: different networks"),
        ("a1", f"{b('ab')}:7000", "dropped", "isolated: different networks"),  # the other leg of a two-network container
        ("b1", f"{a('a1')}:7001/udp", "dropped", "isolated: different networks"),
        ("a1", f"{addr['i1']['int'][0]}:7000", "dropped", "internal network"),
        ("i1", f"{a('a1')}:7000", "dropped", "internal network"),
        ("i1", "outside:7000", "dropped", "internal network"),  # no default route at all
        ("a1", f"{addr['n1']['noicc'][0]}", "dropped", "isolated: different networks"),
        ("n1", "n2:7000", "dropped", "icc disabled"),
        ("n2", f"{addr['n1']['noicc'][0]}:7000", "dropped", "icc disabled"),
        ("a1", "b1:7000", "dropped", "name not found by the resolver"),
        ("outside", "web:7000", "delivered", ""),  # published: 8080 -> 7000
        ("outside", "web:7001/udp", "delivered", ""),
        ("outside", "n2:7000", "delivered", ""),  # icc=false does not stop a published port
        ("outside", "a1:7000", "dropped", "port not published"),
        ("outside", f"{addr['i1']['int'][0]}:7000", "no route", ""),  # outside has no route there
        ("host", "a1:7000", "delivered", ""),
        ("web", "a1:7000", "dropped", "isolated: different networks"),  # default bridge -> user network
    ]
    wrong = []
    for src, dst, status, reason in cases:
        got = trace(iso, src, dst)["result"]
        if (got["status"], got["reason"]) != (status, reason):
            wrong.append(f"{src} -> {dst}: expected {status} {reason!r}, got {got}")
    assert not wrong, "\n".join(wrong)
    assert trace_tables(iso) == []


def test_trace_shows_the_path_hop_by_hop(iso: Host) -> None:
    """The CLI's text: the source's route and neighbour, the bridge, each qiao chain and
    the rule that gave the verdict, the DNAT of a published port; exit status 0 only when delivered."""
    out = iso.qiao("trace", "a1", f"{addresses(iso, 'b1')['b'][0]}:7000", check=False)
    assert out.returncode == 1, out
    text = out.stdout
    flat = " ".join(text.split())  # the words, whatever the wrapping
    assert "route: default via 10.63.1.1 dev eth0; neighbour 10.63.1.1 is" in flat
    assert "enters bridge br-" in flat and "(a1's veth)" in flat
    assert "inet qiao forward: oifname vmap @fwd_in => jump fwd-in-br-" in flat
    assert "result: dropped: isolated: different networks" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    published = iso.qiao("trace", "outside", "web:7000")
    flat = " ".join(published.stdout.split())
    assert "DNAT 198.51.100.1:8080 -> 172.17.0.2:7000" in flat
    assert "inet qiao fwd-in-qiao0: ct status dnat accept => ACCEPT" in flat
    assert published.stdout.splitlines()[-3] == "result: delivered"
    as_json = json.loads(iso.qiao("trace", "--json", "outside", "web:7000").stdout)
    assert as_json["destination"] == {"label": "web", "kind": "container", "address": "198.51.100.1", "port": 8080, "protocol": "tcp"}
    bad = iso.qiao("trace", "a1", "nosuch:80", check=False)
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr
    assert "nosuch" in bad.stderr


def test_icc_false_by_bridge_port_isolation(make_host) -> None:
    """Without br_netfilter passing bridged frames to the inet hooks, no rule sees
    n1 -> n2: bridge port isolation stops it, and the trace says so."""
    h = make_host("obi")
    knob = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    if h.sh("cat", knob, check=False).returncode != 0:
        pytest.skip("br_netfilter is not loaded on this machine")
    h.sh("sh", "-c", f"echo 0 > {knob}")
    h.qiao("network", "create", "--subnet", "10.63.8.0/24", "-o", "com.docker.network.bridge.enable_icc=false", "noicc")
    for name in ("n1", "n2"):
        h.run_d("--name", name, "--network", "noicc", "--", PY, "-c", SERVER)
    got = trace(h, "n1", "n2:7000")
    assert (got["result"]["status"], got["result"]["reason"]) == ("dropped", "icc disabled"), got
    assert "bridge port isolation" in got["result"]["detail"]


def test_a_trace_leaves_no_table_when_interrupted_and_a_leftover_goes_at_the_next_start(make_host) -> None:
    h = make_host("obl")
    h.add_outside("ol")
    h.sh("ip", "route", "add", "default", "via", "198.51.100.2")
    h.run_d("--name", "c", "--", "sleep", "300")
    # outside drops it (no route back to the container): the probe waits for its whole timeout
    cli = h.popen(QIAO, "--root", h.root, "trace", "c", "203.0.113.9:9", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for("the trace table", lambda: trace_tables(h), timeout=5, interval=0.005)
    cli.send_signal(signal.SIGINT)
    cli.communicate(timeout=10)
    wait_for("no trace table", lambda: not trace_tables(h), timeout=5)
    # a daemon killed in mid-trace leaves its tables: the next start removes them
    h.stop_daemon(signal.SIGKILL)
    h.sh("nft", "add table inet qiao_trace_0badcafe; add table bridge qiao_trace_0badcafe")
    h.start_daemon()
    assert trace_tables(h) == []
    assert "removed leftover trace tables: inet qiao_trace_0badcafe, bridge qiao_trace_0badcafe" in h.daemon_log()


def test_topology_shows_the_live_picture_foreign_objects_and_drift(make_host, tmp_path) -> None:
    h = make_host("obt")
    h.add_outside("ot")
    h.sh("ip", "route", "add", "default", "via", "198.51.100.2")
    h.qiao("network", "create", "--subnet", "10.63.9.0/24", "-o", "com.docker.network.bridge.enable_icc=false", "mynet")
    h.run_d("--name", "web", "-p", "8080:80", "--", "sleep", "300")
    h.run_d("--name", "side", "--network", "container:web", "--", "sleep", "300")
    h.run_d("--name", "app", "--network", "mynet", "--", "sleep", "300")
    h.run_d("--name", "hostc", "--network", "host", "--", "sleep", "300")
    text = h.qiao("topology").stdout
    lines = text.splitlines()
    assert lines[0].startswith(f"host {os.uname().nodename} · uplink {RUN}oth 198.51.100.1/24 via 198.51.100.2 · table inet qiao")
    assert "├─ bridge qiao0 172.17.0.1/16 · network bridge" in lines
    assert any(line.endswith(" web  172.17.0.2/16") for line in lines)
    assert "0.0.0.0:8080->80/tcp" in text and "shared by side" in text
    assert any("network mynet · icc off" in line for line in lines)
    assert "host network (the host's own interfaces): hostc" in text
    assert "!" not in text and "foreign" not in text  # nothing foreign, no drift yet
    assert max(len(line) for line in lines) <= 80

    model = json.loads(h.qiao("topology", "--format", "json").stdout)
    app = next(c for c in model["containers"] if c["name"] == "app")
    bridge = next(n["bridge"] for n in model["networks"] if n["name"] == "mynet")
    # another program's veth on qiao's bridge, an address taken away inside a container, a stale tagged link
    h.sh("ip", "link", "add", f"{RUN}fx", "type", "veth", "peer", "name", f"{RUN}fy")
    h.sh("ip", "link", "set", f"{RUN}fx", "master", bridge)
    h.sh("nsenter", f"--net={h.root}/run/netns/{app['namespace']}", "ip", "addr", "del", app["interfaces"][0]["address"], "dev", "eth0")
    h.sh("ip", "link", "add", f"{RUN}st", "type", "veth", "peer", "name", f"{RUN}su")
    h.sh("ip", "link", "set", f"{RUN}st", "alias", "qiao:0badcafe0bad")
    model = json.loads(h.qiao("topology", "--format", "json").stdout)
    mynet = next(n for n in model["networks"] if n["name"] == "mynet")
    assert {(f["name"], f["kind"]) for f in mynet["foreign"]} == {(f"{RUN}fx", "veth")}
    app = next(c for c in model["containers"] if c["name"] == "app")
    assert app["interfaces"][0]["drift"][0]["what"] == f"{app['interfaces'][0]['address']} is missing on eth0"
    assert any(d["what"].startswith(f"veth {RUN}st tagged qiao:0badcafe0bad") for d in model["stale"])
    text = h.qiao("topology").stdout
    assert f"{RUN}fx (foreign veth: not qiao's)" in text and "is missing on eth0 -> not repaired" in text

    svg = h.qiao("topology", "--format", "svg").stdout
    doc = xml.dom.minidom.parseString(svg)
    assert doc.documentElement.getAttribute("xmlns") == "http://www.w3.org/2000/svg"
    assert 'class="drift"' in svg and 'class="foreign"' in svg and ">web<" in svg
    dot = h.qiao("topology", "--format", "dot").stdout
    assert dot.startswith("digraph qiao {") and "veth" in dot


# -- across the overlay, in a lab ------------------------------------------------------


@pytest.fixture(scope="module")
def lab2() -> Iterator:
    from tests.integration.test_overlay import down_and_check, lab_up

    root = tempfile.mkdtemp(prefix=f"{RUN}-obl-")
    lab = None
    try:
        lab, _lines, _took = lab_up(root, 2)
        yield lab
    finally:
        if lab is not None:
            down_and_check(lab)
        else:
            sh(QIAO, "lab", "--root", root, "down", check=False)
        for proc in RESTARTED:  # a qiaod a test started again: lab down ended it, we reap it
            proc.poll()


@pytest.fixture(scope="module")
def ov2(lab2):
    """Overlay ``ov`` on both hosts: ``a`` on host1 (-p 8080:7000), ``b`` on host2
    (-p 8081:7000), ``mute`` on host2 (UDP 7001 bound, never answering)."""
    from tests.integration.test_overlay import in_step

    lab = lab2
    lab.qiao("host1", "network", "create", "-d", "overlay", "--subnet", "10.245.0.0/16", "ov")
    wait_for("both hosts' peers programmed", lambda: len(lab.leases("ov")) == 2 and in_step(lab, ["host1", "host2"], "ov"), timeout=20)
    lab.qiao("host1", "run", "-d", "--name", "a", "--network", "ov", "-p", "8080:7000", "--", PY, "-c", SERVER)
    lab.qiao("host2", "run", "-d", "--name", "b", "--network", "ov", "-p", "8081:7000", "--", PY, "-c", SERVER)
    lab.qiao("host2", "run", "-d", "--name", "mute", "--network", "ov", "--", PY, "-c", MUTE)
    return lab


def test_trace_and_topology_across_the_overlay(ov2) -> None:
    lab = ov2

    def traced(host: str, *args: str) -> dict:
        return json.loads(lab.qiao(host, "trace", "--json", *args, check=False).stdout)

    got = wait_for("b reaches a across the overlay", lambda: (t := traced("host2", "b", "a:7000"))["result"]["status"] == "delivered" and t)
    texts = " | ".join(h["text"] for h in got["hops"])
    assert "resolver" in texts and "answers a -> 10.245." in texts
    assert "to VXLAN qv" in texts or "into VXLAN qv" in texts, texts
    assert f"to host {lab.address('host1')}" in texts, texts
    assert "FDB:" in texts  # the route lookup: neighbour -> VTEP MAC -> the other host's underlay address
    outside = traced("host1", "outside", "a:7000")
    assert outside["result"]["status"] == "delivered", outside
    assert any(h["text"].startswith(f"DNAT {lab.address('host1')}:8080 -> 10.245.") for h in outside["hops"]), outside["hops"]

    view = json.loads(lab.cli("topology", "--format", "json").stdout)
    assert [m["label"].split()[0] for m in view["hosts"]] == ["host1", "host2"]
    assert view["underlay"]["address"] == "10.250.0.1/24"
    text = lab.cli("topology").stdout
    assert text.startswith(f"lab {lab.state['id']} · underlay ul0 10.250.0.1/24")
    assert f"host host2 {lab.address('host2')}" in text and f"host host1 {lab.address('host1')}" in text  # each other's peers, by name
    assert "!" not in text
    xml.dom.minidom.parseString(lab.cli("topology", "--format", "svg").stdout)


# -- qiao lab trace: one probe, traced on both hosts ---------------------------------


def lab_trace_tables(lab, host: str) -> list[str]:
    return [line for line in lab.in_ns(host, "nft", "list", "tables").stdout.splitlines() if "qiao_trace" in line]


def lab_trace(lab, *args: str) -> tuple[int, dict]:
    out = lab.cli("trace", "--json", *args, check=False)
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def test_lab_trace_joins_the_sending_and_the_receiving_host(ov2) -> None:
    """host1's hops to the VXLAN device, the underlay to host2's address, host2's hops
    from the VXLAN device to b's veth, b's answer; the watch on host2 removed."""
    lab = ov2
    status, got = lab_trace(lab, "host1", "a", "b:7000")
    assert status == 0 and got["result"]["status"] == "delivered", got
    assert (got["source"]["label"], got["destination"]["label"]) == ("a on host1", "b on host2")
    ats = [h["at"] for h in got["hops"]]
    assert ats.index("underlay") > ats.index("host1") and ats.index("host2") > ats.index("underlay"), ats
    assert ats[ats.index("underlay") :].count("host1") == 0, ats  # one joined path: host1, the underlay, host2
    on = {at: " | ".join(h["text"] for h in got["hops"] if h["at"] == at) for at in ("host1", "underlay", "host2")}
    assert "into VXLAN qv" in on["host1"] and f"to host {lab.address('host2')}" in on["host1"], on["host1"]
    assert on["underlay"].startswith(f"{lab.address('host1')} (host1) -> {lab.address('host2')} (host2)"), on["underlay"]
    assert "inside VXLAN" in on["underlay"]
    assert "reaches the host's IP layer from qv" in on["host2"] and "(VXLAN of overlay ov)" in on["host2"], on["host2"]
    assert any(h["at"] == "host2" and h.get("comment") == "member device" for h in got["hops"]), got["hops"]
    assert on["host2"].endswith("over the veth pair into b's namespace (its eth end)"), on["host2"]
    assert got["result"]["detail"].startswith("b answered on 7000/tcp")

    text = lab.cli("trace", "host1", "a", "b:7000").stdout
    assert text.startswith("trace a on host1 -> b on host2: 10.245.")
    assert "\n  underlay  " in text and "\nresult: delivered\n" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    icmp = lab_trace(lab, "host1", "a", "b")[1]  # an echo: its id is what both hosts match
    assert icmp["result"]["status"] == "delivered" and any(h["at"] == "host2" for h in icmp["hops"]), icmp
    assert lab_trace_tables(lab, "host1") == [] and lab_trace_tables(lab, "host2") == []


def test_lab_trace_names_what_stops_the_probe_on_the_receiving_host(ov2) -> None:
    lab = ov2
    status, closed = lab_trace(lab, "host1", "a", "b:7999")  # b listens on 7000 only
    assert status == 1 and closed["result"]["status"] == "no listener", closed
    assert closed["result"]["detail"].startswith("delivered to b, but nothing listens on 7999/tcp")
    assert closed["hops"][-1] == {"at": "host2", "kind": "out", "text": "over the veth pair into b's namespace (its eth end)"}

    # host2's published port: host1 masquerades a to its own address, host2 DNATs to b
    status, published = lab_trace(lab, "host1", "a", "host2:8081")
    assert status == 0 and published["result"]["status"] == "delivered", published
    texts = [(h["at"], h["text"]) for h in published["hops"]]
    assert any(at == "host1" and t.startswith("SNAT 10.245.") and f"-> {lab.address('host1')}:" in t for at, t in texts), texts
    assert any(at == "host2" and t.startswith(f"DNAT {lab.address('host2')}:8081 -> 10.245.") for at, t in texts), texts
    assert any(at == "underlay" and t.endswith("routed as it is") for at, t in texts), texts

    # a port host2 does not publish: host2 itself gets it, and nothing listens there
    status, unpublished = lab_trace(lab, "host1", "a", "host2:7000")
    assert status == 1 and unpublished["result"]["status"] == "no listener", unpublished
    assert unpublished["result"]["detail"].startswith(f"delivered to {lab.address('host2')}, but nothing listens on 7000/tcp")
    assert (unpublished["hops"][-1]["at"], unpublished["hops"][-1]["text"]) == (
        "host2",
        f"delivered to the host itself ({lab.address('host2')})",
    )

    status, silent = lab_trace(lab, "host1", "a", "mute:7001/udp")  # bound, never answers
    assert silent["result"]["status"] == "delivered" and "no answer came back" in silent["result"]["detail"], silent

    bad = lab.cli("trace", "host1", "a", "nosuch:80", check=False)
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1 and "nosuch" in bad.stderr, bad
    assert lab_trace_tables(lab, "host1") == [] and lab_trace_tables(lab, "host2") == []


def test_a_name_the_resolver_answers_wins_over_an_id_prefix_here(ov2) -> None:
    """A container on host2 named like the start of a's id on host1: from a, the name is
    host2's container (a's resolver says so), not a itself by its id."""
    lab = ov2
    a_id = json.loads(lab.qiao("host1", "inspect", "a").stdout)[0]["Id"]
    twin = a_id[:10]
    lab.qiao("host2", "run", "-d", "--name", twin, "--network", "ov", "--", PY, "-c", SERVER)
    try:
        got = wait_for(
            "the twin's listener", lambda: (t := lab_trace(lab, "host1", "a", f"{twin}:7000")[1])["result"]["status"] == "delivered" and t
        )
        assert got["destination"]["label"] == f"{twin} on host2" and any(h["at"] == "host2" for h in got["hops"]), got
        plain = json.loads(lab.qiao("host1", "trace", "--json", "a", f"{twin}:7000", check=False).stdout)
        assert plain["result"]["status"] == "delivered" and plain["hops"][0]["kind"] == "dns", plain
        assert (
            plain["destination"]["address"]
            != json.loads(lab.qiao("host1", "inspect", "a").stdout)[0]["NetworkSettings"]["Networks"]["ov"]["IPAddress"]
        )
    finally:
        lab.qiao("host2", "rm", "-f", twin)


def test_a_lab_trace_watch_goes_when_the_lab_is_interrupted_and_after_a_killed_qiaod(ov2) -> None:
    from tests.integration.test_overlay import kill9, restart_qiaod

    lab = ov2
    # interrupted while host1's probe waits for an answer that never comes (0.8 s of silence at most: on a
    # busy machine the trace may end first, with 0, before the signal lands; then again): host2's watch goes
    codes = []
    while len(codes) < 5 and 130 not in codes:
        cli = subprocess.Popen(
            [QIAO, "lab", "--root", lab.root, "trace", "host1", "a", "mute:7001/udp"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a suite started in the background ignores it
        )
        try:
            wait_for("host2's watch", lambda: lab_trace_tables(lab, "host2"), timeout=5, interval=0.005)
            cli.send_signal(signal.SIGINT)
            codes.append(cli.wait(10))
        finally:
            if cli.poll() is None:
                cli.kill()
            cli.communicate()
    assert 130 in codes and set(codes) <= {0, 130}, codes
    wait_for("no watch left on host2", lambda: not lab_trace_tables(lab, "host2"), timeout=2, interval=0.02)
    wait_for("host1's trace done", lambda: not lab_trace_tables(lab, "host1"), timeout=5)

    # a qiaod killed with a watch on: its tables stay, and its next start removes them
    conversation = Client(Root.resolve(lab.host("host2")["root"]), autostart=False).converse(
        "/qiao/trace/watch", {"Destination": "b:7000", "SourcePort": 40001, "Source": "a on host1"}
    )
    try:
        assert conversation.receive() == {"Armed": True}
        cmdline = kill9(lab, "host2")
    finally:
        conversation.close()
    left = lab_trace_tables(lab, "host2")
    assert len(left) == 2, left
    restart_qiaod(lab, "host2", cmdline)
    assert lab_trace_tables(lab, "host2") == []
    log = Path(lab.host("host2")["root"], "qiaod.log").read_text()
    assert "removed leftover trace tables: " + ", ".join(t.removeprefix("table ") for t in left) in log, log[-2000:]
