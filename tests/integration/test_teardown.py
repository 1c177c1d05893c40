"""Teardown is best effort and complete: what others broke behind qiao's back
(a firewall reload that deleted qiao's table, a bridge deleted by hand) does
not stop ``rm -f`` or ``network rm`` half way, nor does it block the next
operation."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import Host, wait_for

pytestmark = pytest.mark.usefixtures("clean")


def veths(host: Host) -> set[str]:
    return {link["ifname"] for link in json.loads(host.sh("ip", "-j", "link", "show", "type", "veth").stdout or "[]")}


def sandboxes(host: Host) -> list[str]:
    import os

    return sorted(os.listdir(os.path.join(host.root, "run", "netns")))


@pytest.mark.parametrize("breakage", [("nft", "delete", "table", "inet", "qiao"), ("nft", "flush", "ruleset")])
def test_rm_f_completes_when_the_firewall_table_is_gone(host: Host, breakage: tuple[str, ...]) -> None:
    host.qiao("network", "create", "--subnet", "10.77.0.0/24", "tdn")
    try:
        web = host.run_d("--name", "td-web", "--network", "tdn", "-p", "18080:80", "--", "sleep", "600")
        keep = host.run_d("--name", "td-keep", "--network", "tdn", "--", "sleep", "600")
        info = host.inspect(web)
        veth_before = veths(host)
        address = info["NetworkSettings"]["Networks"]["tdn"]["IPAddress"]
        host.sh(*breakage)
        host.qiao("rm", "-f", web, timeout=15)  # answered, not stuck
        assert host.ps_ids() == [keep[:12]], "the container's row is gone"
        assert len(sandboxes(host)) == 1, "its sandbox is gone"
        wait_for("its veth to go", lambda: len(veths(host)) == len(veth_before) - 1)
        again = host.run_d("--name", "td-again", "--network", "tdn", "--", "sleep", "600")
        assert host.inspect(again)["NetworkSettings"]["Networks"]["tdn"]["IPAddress"] == address, "its address was released"
        host.qiao("network", "create", "--subnet", "10.77.1.0/24", "tdn2")  # the next change works too
        host.qiao("network", "rm", "tdn2")
    finally:
        host.remove_containers()
        host.qiao("network", "rm", "tdn", check=False)


def test_network_rm_succeeds_after_the_bridge_was_deleted_by_hand(host: Host) -> None:
    net_id = host.qiao("network", "create", "--subnet", "10.77.2.0/24", "tdgone").stdout.strip()
    host.sh("ip", "link", "del", f"br-{net_id[:12]}")
    host.qiao("network", "rm", "tdgone", timeout=15)
    assert "tdgone" not in host.qiao("network", "ls").stdout
    host.qiao("network", "create", "--subnet", "10.77.2.0/24", "tdgone")  # nothing of it is left in the way
    host.qiao("network", "rm", "tdgone")


def test_a_veth_deleted_by_hand_is_plugged_again_and_shown(host: Host) -> None:
    """Docker shows nothing when a container's veth goes; qiao plugs it again
    (same name, address and MAC) within its 5 s resync and says so."""
    cid = host.run_d("--name", "td-veth", "--", "sleep", "600")
    info = host.inspect(cid)
    ep = info["NetworkSettings"]["Networks"]["bridge"]
    sandbox = info["NetworkSettings"]["SandboxKey"]
    veth = next(v for v in veths(host) if f"qiao:{ep['EndpointID']}" in host.sh("ip", "-d", "link", "show", v).stdout)
    host.sh("ip", "link", "del", veth)
    wait_for("the veth to be plugged again", lambda: "QiaoLink" in host.inspect(cid)["NetworkSettings"]["Networks"]["bridge"], timeout=12)
    assert veth in veths(host)
    inside = json.loads(host.sh("nsenter", f"--net={sandbox}", "ip", "-j", "addr", "show", "eth0").stdout)[0]
    assert inside["address"] == ep["MacAddress"]
    assert any(a["local"] == ep["IPAddress"] for a in inside["addr_info"])
    routes = json.loads(host.sh("nsenter", f"--net={sandbox}", "ip", "-j", "route", "show", "default").stdout)
    assert [r["gateway"] for r in routes] == [ep["Gateway"]]
    probe = f"import socket; socket.create_connection(('{ep['Gateway']}', 9), 2)"
    answer = host.sh("nsenter", f"--net={sandbox}", "python3", "-c", probe, check=False)
    assert "ConnectionRefused" in answer.stderr, answer.stderr  # refused: the gateway answered
    again = host.inspect(cid)["NetworkSettings"]["Networks"]["bridge"]
    assert again["QiaoLink"].startswith("replugged"), again
    assert "(link replugged)" in host.ps_json()[0]["Status"]
