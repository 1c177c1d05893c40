"""``qiao explain`` on real kernels, in throw-away hosts.

The heart of it: ``qiao explain --from-scratch COMMAND`` prints a script; run
with ``sh -e`` in a fresh host namespace that has the same links and routes
as a qiao host, it must give the kernel state qiao itself gives there when
it runs COMMAND: the container's namespace (eth0, address, MAC, routes), the
bridges and veth pairs, sysctls, the nft tables with the same map elements,
and for an overlay the VXLAN device with its peers' routes, neighbours and
forwarding entries.  Only generated names may differ (veth names, endpoint
ids in aliases, the bridges' random MACs).  A published port must then work
in the script's host for real.  Every mode: bridge, ``-p``, a user network,
host, none, ``container:``, overlay (in a ``qiao lab``).  Kernel state is
read with pyroute2 and libnftables' JSON, never from command output.

Also: a plain ``explain`` changes nothing, and refuses what the real command
refuses, with the same words and exit status.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qiao.kernel import netns
from tests.integration.conftest import RUN, Host, Namespace, sh, wait_for
from tests.integration.test_overlay import Lab, down_and_check, in_step, lab_up

IFF_UP, RTNH_F_ONLINK, NUD_PERMANENT = 0x1, 0x4, 0x80
VETH = re.compile(r"^veth[0-9a-f]{7}$")
GENERATED = re.compile(r"veth[0-9a-f]{7}")


# -- reading a namespace's kernel state (pyroute2, libnftables JSON) ------------------


def _name(name: str) -> str:
    """A name with the generated part dropped: veth names; the test's own uplinks (RUN...)."""
    if name.startswith(RUN):
        return "uplink"
    return GENERATED.sub("veth*", name)


def links_and_routes(path: str, sandbox: bool) -> dict[str, Any]:
    from pyroute2 import IPRoute

    with netns.entered(path):
        ipr = IPRoute()
        sysctl = lambda key: Path(f"/proc/sys/net/{key}").read_text().strip()  # noqa: E731  # per namespace: read while inside
        forwarding = sysctl("ipv4/ip_forward")
        bridges = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links() if _kind(link) == "bridge"]
        per_bridge = {b: (sysctl(f"ipv4/conf/{b}/route_localnet"), sysctl(f"ipv6/conf/{b}/accept_ra")) for b in bridges}
    try:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        links = []
        for link in ipr.get_links():
            name, kind = link.get_attr("IFLA_IFNAME"), _kind(link)
            info = link.get_attr("IFLA_LINKINFO")
            entry: dict[str, Any] = {
                "name": _name(name),
                "kind": kind,
                "up": bool(link["flags"] & IFF_UP),
                "mtu": link.get_attr("IFLA_MTU"),
                "master": _name(names.get(link.get_attr("IFLA_MASTER"), "")),
                "alias": re.sub(r"^qiao:[0-9a-f]{64}$", "qiao:<endpoint>", link.get_attr("IFLA_IFALIAS") or ""),
            }
            if sandbox or kind == "vxlan":  # a bridge's and a host-side veth's MAC are random
                entry["mac"] = link.get_attr("IFLA_ADDRESS")
            slave = info.get_attr("IFLA_INFO_SLAVE_DATA") if info else None
            if slave is not None:
                entry["port"] = (slave.get_attr("IFLA_BRPORT_MODE"), slave.get_attr("IFLA_BRPORT_ISOLATED"))
            if kind == "vxlan":
                data = info.get_attr("IFLA_INFO_DATA")
                entry["vxlan"] = {k: data.get_attr(f"IFLA_VXLAN_{k}") for k in ("ID", "LOCAL", "PORT", "LEARNING")}
                entry["vxlan"]["LINK"] = names.get(data.get_attr("IFLA_VXLAN_LINK"))
            links.append(entry)
        addrs = sorted(
            (_name(names[a["index"]]), f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr()
            if not a.get_attr("IFA_ADDRESS").startswith("fe80:")
        )
        routes = sorted(
            (
                f"{r.get_attr('RTA_DST') or 'default'}/{r['dst_len']}",
                r.get_attr("RTA_GATEWAY"),
                _name(names.get(r.get_attr("RTA_OIF"), "")),
                bool(r["flags"] & RTNH_F_ONLINK),
                r["proto"],
                r["scope"],
            )
            for family in (socket.AF_INET, socket.AF_INET6)
            for r in ipr.get_routes(family=family, table=254)
            if not (r.get_attr("RTA_DST") or "").startswith("fe80:")
        )
        neigh = sorted(
            (_name(names[n["ifindex"]]), n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR"))
            for n in ipr.get_neighbours(family=socket.AF_INET)
            if n["state"] & NUD_PERMANENT
        )
        fdb = sorted(
            (_name(names[n["ifindex"]]), n.get_attr("NDA_LLADDR"), n.get_attr("NDA_DST"), n["state"])
            for n in ipr.get_neighbours(family=socket.AF_BRIDGE)
            if n.get_attr("NDA_DST")  # VXLAN forwarding entries (the others are the kernel's own)
        )
    finally:
        ipr.close()
    state = {"links": sorted(links, key=json.dumps), "addresses": addrs, "routes": routes, "neighbours": neigh, "fdb": fdb}
    if not sandbox:
        state["sysctl"] = {"ip_forward": forwarding, **{_name(b): v for b, v in per_bridge.items()}}
    return state


def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def nft_tables(path: str) -> dict[str, Any]:
    """qiao's two tables, from libnftables' JSON: chains with their rules in order, sets and maps with their elements."""
    import nftables

    with netns.entered(path):
        nft = nftables.Nftables()
        nft.set_json_output(True)
        rc, out, err = nft.cmd("list ruleset")
    assert rc == 0, err
    tables: dict[str, Any] = {}
    for obj in json.loads(out)["nftables"]:
        kind, body = next(iter(obj.items()))
        if kind == "metainfo" or body.get("table") != "qiao" and body.get("name") != "qiao":
            continue
        where = tables.setdefault(body["family"], {"chains": {}, "sets": {}, "rules": {}})
        clean = json.loads(GENERATED.sub("veth*", json.dumps({k: v for k, v in body.items() if k != "handle"})))
        if kind == "chain":
            where["chains"][clean["name"]] = clean
        elif kind in ("set", "map"):
            clean["elem"] = sorted(clean.get("elem", []), key=json.dumps)
            where["sets"][clean["name"]] = clean
        elif kind == "rule":
            where["rules"].setdefault(clean["chain"], []).append(clean["expr"])
    return tables


def state(host_ns: str, sandboxes: list[str]) -> dict[str, Any]:
    return {
        "host": links_and_routes(host_ns, sandbox=False),
        "nft": nft_tables(host_ns),
        "sandboxes": [links_and_routes(s, sandbox=True) for s in sandboxes],
    }


def differences(a: dict[str, Any], b: dict[str, Any], where: str = "") -> list[str]:
    """Where two states differ, readably (for the assertion's message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in differences(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: qiao {a!r}\n    script {b!r}"]


# -- the script's host -------------------------------------------------------------------


def namespaces_of(script: str) -> list[str]:
    """The sandboxes a script makes, in order (``ip netns add NAME``)."""
    return re.findall(r"^ip netns add (\S+)$", script, re.M)


@contextlib.contextmanager
def script_namespaces(script: str) -> Iterator[list[str]]:
    """The script's sandboxes (/run/netns names it makes), removed afterwards whatever happened."""
    names = namespaces_of(script)
    try:
        yield names
    finally:
        for name in names:
            sh("ip", "netns", "del", name, check=False)


def run_script(host: Namespace, script: str) -> None:
    """``sh -e`` in the host's network namespace (nsenter: no new mount namespace, so
    the sandboxes it makes under /run/netns stay after the script ends)."""
    host.sh("sh", "-e", "-c", script)


def published_port_works(sandbox: str, outside: Namespace, port: int, container_port: int = 80) -> None:
    """A server in the sandbox, asked from the outside machine through the host's published port."""
    server = subprocess.Popen(
        ["nsenter", f"--net={sandbox}", "--", sys.executable, "-m", "http.server", str(container_port), "--bind", "0.0.0.0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probe = f"import urllib.request as u; print(u.urlopen('http://198.51.100.1:{port}/', timeout=2).status)"
        wait_for("the published port", lambda: outside.sh(sys.executable, "-c", probe, check=False).stdout.strip() == "200", timeout=15)
    finally:
        server.kill()
        server.wait()


# -- every mode: the script builds what qiao builds ----------------------------------------------

# mode -> (set-up commands on the qiao host, the command explained and run, the host port to try for real)
MODES: dict[str, tuple[list[list[str]], list[str], int | None]] = {
    "bridge": ([], ["run", "-d", "--", "sleep", "600"], None),
    "publish": ([], ["run", "-d", "-p", "8080:80", "-p", "127.0.0.1:5353:53/udp", "--", "sleep", "600"], 8080),
    "user network": (
        [["network", "create", "--subnet", "10.88.0.0/24", "mynet"]],
        ["run", "-d", "--network", "mynet", "-p", "8081:80", "--", "sleep", "600"],
        8081,
    ),
    "internal, icc off": (
        [["network", "create", "--internal", "-o", "com.docker.network.bridge.enable_icc=false", "--subnet", "10.89.0.0/24", "inet"]],
        ["run", "-d", "--network", "inet", "--", "sleep", "600"],
        None,
    ),
    "host": ([], ["run", "-d", "--network", "host", "--", "sleep", "600"], None),
    "none": ([], ["run", "-d", "--network", "none", "--", "sleep", "600"], None),
    "container": (
        [["run", "-d", "--name", "web", "-p", "8083:80", "--", "sleep", "600"]],
        ["run", "-d", "--network", "container:web", "--", "sleep", "600"],
        8083,
    ),
    "network connect": (
        [["network", "create", "--subnet", "10.90.0.0/24", "other"], ["run", "-d", "--name", "app", "--", "sleep", "600"]],
        ["network", "connect", "other", "app"],
        None,
    ),
}


def sandboxes_of(host: Host) -> list[str]:
    """The qiao host's sandboxes, in the order their containers were made."""
    found = sorted((info["Created"], info["NetworkSettings"]["SandboxKey"]) for info in (host.inspect(r["ID"]) for r in host.ps_json("-a")))
    keys = [key for _created, key in found]
    return [k for i, k in enumerate(keys) if k and k not in keys[:i]]


@pytest.mark.parametrize("mode", list(MODES))
def test_from_scratch_script_builds_what_qiao_builds(make_host, mode: str) -> None:
    setup, command, port = MODES[mode]
    qiao = make_host("eq")
    qiao.add_outside("eqo")
    fresh = make_host("es", start=False)  # the same links and routes, no qiao
    outside = fresh.add_outside("eso")
    for args in setup:
        qiao.qiao(*args)
    script = qiao.qiao("explain", "--from-scratch", *command).stdout
    assert script.startswith("#!/bin/sh\n") and "\nset -e\n" in script
    with script_namespaces(script) as names:
        run_script(fresh, script)
        qiao.qiao(*command)
        ours, theirs = sandboxes_of(qiao), [f"/run/netns/{n}" for n in names]
        assert len(ours) == len(theirs)
        a, b = state(qiao.path, ours), state(fresh.path, theirs)
        assert a == b, "\n".join(differences(a, b))
        if port is not None:
            published_port_works(theirs[-1], outside, port)


def test_from_scratch_published_port_works_for_real(make_host) -> None:
    """The script's host serves a published port to an outside machine, as qiao's does."""
    qiao = make_host("pq")
    command = ["run", "-d", "-p", "8082:80", "--", "sleep", "600"]
    fresh = make_host("ps", start=False)
    outside = fresh.add_outside("pso")
    script = qiao.qiao("explain", "--from-scratch", *command).stdout
    with script_namespaces(script) as names:
        run_script(fresh, script)
        published_port_works(f"/run/netns/{names[0]}", outside, 8082)


# -- overlay: a fresh host joining, in a lab ----------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    root = tempfile.mkdtemp(prefix=f"{RUN}-xlab-")
    lab = Lab(root)
    try:
        lab = lab_up(root, 2)[0]
        yield lab
    finally:
        down_and_check(lab)


def test_overlay_from_scratch_is_a_host_joining(lab: Lab) -> None:
    lab.qiao("host1", "network", "create", "-d", "overlay", "--subnet", "10.244.0.0/16", "ov")
    wait_for("host2 joined ov", lambda: in_step(lab, ["host1", "host2"], "ov") and len(lab.leases("ov")) == 2, timeout=20)
    command = ["run", "-d", "--network", "ov", "--", "sleep", "600"]
    script = lab.qiao("host2", "explain", "--from-scratch", *command).stdout
    assert "# vxlan-peer: Reach the containers of the host 10.250.0.11" in script
    fresh, peer = Namespace("ovs"), Namespace("ovp")
    try:
        # host2's links and routes: eth0 10.250.0.12/24 on the underlay (here a cable to nowhere), default via 10.250.0.1
        sh("ip", "link", "add", "eth0", "netns", fresh.name, "type", "veth", "peer", "name", f"{RUN}ovp", "netns", peer.name)
        fresh.sh("ip", "addr", "add", "10.250.0.12/24", "dev", "eth0")
        fresh.sh("ip", "link", "set", "eth0", "up")
        peer.sh("ip", "link", "set", f"{RUN}ovp", "up")
        fresh.sh("ip", "route", "add", "default", "via", "10.250.0.1", "proto", "static")
        with script_namespaces(script) as names:
            run_script(fresh, script)
            lab.qiao("host2", *command)
            sandbox = json.loads(lab.qiao("host2", "ps", "--format", "json").stdout.splitlines()[0])["ID"]
            ours = [json.loads(lab.qiao("host2", "inspect", sandbox).stdout)[0]["NetworkSettings"]["SandboxKey"]]
            a, b = state(lab.ns("host2"), ours), state(fresh.path, [f"/run/netns/{n}" for n in names])
            assert a == b, "\n".join(differences(a, b))
            assert any(link["kind"] == "vxlan" for link in b["host"]["links"]) and b["host"]["fdb"] and b["host"]["neighbours"]
    finally:
        fresh.delete()
        peer.delete()


def test_overlay_create_changes_nothing_in_the_cluster(lab: Lab) -> None:
    out = lab.qiao("host1", "explain", "network", "create", "-d", "overlay", "--subnet", "10.245.0.0/16", "ov2").stdout
    assert "etcd: Create /qiao/overlay/ov2/config in etcd" in out and "create-vxlan: Create the VXLAN device" in out
    assert "ov2" not in lab.qiao("host1", "network", "ls").stdout
    assert not any(key.startswith("/qiao/overlay/ov2/") for key in lab.etcd()[1])
    lab.qiao("host1", "network", "create", "-d", "overlay", "--subnet", "10.245.0.0/16", "ov2")  # the name is still free
    wait_for("host2 has ov2", lambda: "ov2" in lab.qiao("host2", "network", "ls").stdout)
    refused = lab.qiao("host2", "explain", "network", "create", "-d", "overlay", "--subnet", "10.246.0.0/16", "ov2", check=False)
    assert refused.returncode == 1 and "ov2 already exists" in refused.stderr


# -- a plain explain: nothing changes, refusals are the real ones ---------------------------------


def kernel_and_store(host: Host) -> dict[str, Any]:
    ps = [{k: row.get(k) for k in ("ID", "Names", "Ports", "State", "Networks")} for row in host.ps_json("-a")]
    return {
        "state": state(host.path, sandboxes_of(host)),
        "ps": ps,
        "networks": host.qiao("network", "ls").stdout,
        "netns": sorted(os.listdir(os.path.join(host.root, "run", "netns"))),
        "sandbox names": sorted(n for n in os.listdir("/run/netns") if re.fullmatch("[0-9a-f]{12}", n)),  # what a script would make
    }


def test_explain_changes_nothing_and_answers_fast(make_host) -> None:
    host = make_host("en")
    host.qiao("network", "create", "--subnet", "10.88.0.0/24", "mynet")
    host.run_d("--name", "web", "-p", "8080:80", "--", "sleep", "600")
    before = kernel_and_store(host)
    started = time.monotonic()
    for args in (
        ["run", "-d", "--name", "x", "-p", "8081:80", "--network", "mynet", "--", "sleep", "1"],
        ["network", "connect", "mynet", "web"],
        ["rm", "-f", "web"],
        ["network", "create", "n2"],
        ["network", "rm", "mynet"],
        ["network", "prune", "-f"],
    ):
        out = host.qiao("explain", *args).stdout
        assert "would take these" in out and "Traceback" not in out
        host.qiao("explain", "--json", *args)
        host.qiao("explain", "--from-scratch", *args)
    took = time.monotonic() - started
    assert kernel_and_store(host) == before
    print(f"18 explains, CLI included: {took:.2f} s")


@pytest.mark.parametrize(
    "args, rc",
    [
        (["run", "--network", "nosuch", "--", "true"], 125),
        (["run", "--name", "web", "--", "true"], 125),
        (["run", "-p", "8080:80", "--", "true"], 125),
        (["run", "--ip", "172.17.0.9", "--", "true"], 125),
        (["rm", "web"], 1),
        (["network", "create", "--subnet", "172.17.0.0/24", "overlap"], 1),
        (["network", "rm", "bridge"], 1),
        (["run", "-p", "99999:80", "--", "true"], 2),
        (["run"], 2),
    ],
)
@pytest.mark.usefixtures("clean")
def test_refused_as_the_real_command_is(host: Host, args: list[str], rc: int) -> None:
    host.run_d("--name", "web", "-p", "8080:80", "--", "sleep", "600")
    real = host.qiao(*args, check=False)
    explained = host.qiao("explain", *args, check=False)
    assert (explained.returncode, explained.stderr, explained.stdout) == (real.returncode, real.stderr, "") == (rc, real.stderr, "")
