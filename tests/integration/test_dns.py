"""The embedded DNS of user networks (a resolver on each user network's
gateway, port 53): container names, aliases and ids; forwarding to the
host's upstreams (a tiny DNS server of our own, in a namespace of its own,
named to qiaod with ``--resolv-conf``); changes seen within a second; no
answer for strangers; a daemon restart; the default bridge without DNS; and
upstream changes in the host's resolv.conf followed.

Queries are sent from inside the containers' network namespaces (a thread of
this process enters them, see ``test_user_networks``) or with ``getent`` in
the container, which goes through its /etc/resolv.conf.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import RUN, Host, Namespace
from tests.integration.test_user_networks import (
    Upstream,
    clean,
    dns_query,
    drop_host,
    in_netns,
    in_parallel,
    netns_of,
    poll_dns,
    user_host,
)

UP1_ANSWER, UP2_ANSWER = "100.64.0.1", "100.64.0.2"  # what each upstream answers for *.example.test (never contacted)


class Lab:
    def __init__(self, h: Host, ups: list[Upstream], resolv: str):
        self.h, self.resolv = h, resolv
        self.up1, self.up2 = ups


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """qiaod reads ``resolv.conf`` naming up1 (198.51.100.2); up2 (203.0.113.2) waits for the file to change."""
    h, ups, resolv = user_host("dns" + secrets.token_hex(1), [("up1", "198.51.100", UP1_ANSWER), ("up2", "203.0.113", UP2_ANSWER)])
    try:
        yield Lab(h, ups, resolv)
    finally:
        drop_host(h, ups)


@pytest.fixture
def h(lab: Lab) -> Iterator[Host]:
    try:
        yield lab.h
    finally:
        clean(lab.h)


def ip_of(h: Host, name: str, net: str) -> str:
    return h.inspect(name)["NetworkSettings"]["Networks"][net]["IPAddress"]


def sleeper(h: Host, name: str, *opts: str) -> str:
    return h.run_d("--name", name, *opts, "--", "sleep", "300")


def test_names_aliases_and_ids_resolve_other_networks_do_not(lab: Lab, h: Host) -> None:
    h.qiao("network", "create", "--subnet", "10.63.1.0/24", "red")
    h.qiao("network", "create", "--subnet", "10.63.2.0/24", "blue")
    r1 = sleeper(h, "r1", "--network", "red", "--network-alias", "svc")
    sleeper(h, "r2", "--network", "red", "--network-alias", "svc", "--network-alias", "only-r2")
    sleeper(h, "client", "--network", "red")
    sleeper(h, "b1", "--network", "blue", "--network-alias", "bluesvc")
    ip1, ip2 = ip_of(h, "r1", "red"), ip_of(h, "r2", "red")
    assert h.exec("client", "cat", "/etc/resolv.conf").stdout.splitlines() == ["nameserver 10.63.1.1"]

    ns, gw = netns_of(h, "client"), "10.63.1.1"
    questions = [
        ("r1", ("NOERROR", [ip1])),
        ("R1.", ("NOERROR", [ip1])),  # case-insensitive, absolute
        (r1[:12], ("NOERROR", [ip1])),  # the 12-hex id
        ("only-r2", ("NOERROR", [ip2])),
        ("svc", ("NOERROR", sorted([ip1, ip2]))),  # a shared alias: every address
        ("b1", ("NXDOMAIN", [])),  # another network's container: the upstream's NXDOMAIN
        ("bluesvc", ("NXDOMAIN", [])),
        ("www.example.test", ("NOERROR", [UP1_ANSWER])),  # anything else: forwarded
    ]
    got = in_parallel([(ns, dns_query, (gw, name)) for name, _ in questions])
    assert dict(zip([q for q, _ in questions], got, strict=True)) == dict(questions)
    asked = lab.up1.asked()
    assert "b1" in asked and "bluesvc" in asked and "www.example.test" in asked
    assert "r1" not in asked and "svc" not in asked  # local names never leave the host

    # Through the container's own resolv.conf (glibc), too.
    assert h.exec("client", "getent", "hosts", "r1").stdout.split()[:2] == [ip1, "r1"]
    assert h.exec("client", "getent", "hosts", r1[:12]).stdout.split()[0] == ip1
    assert {line.split()[0] for line in h.exec("client", "getent", "ahostsv4", "svc").stdout.splitlines()} == {ip1, ip2}
    assert h.exec("client", "getent", "hosts", "www.example.test").stdout.split()[0] == UP1_ANSWER
    assert h.exec("client", "getent", "hosts", "b1", check=False).returncode == 2  # not found


def test_run_rm_connect_disconnect_are_visible_within_one_second(h: Host) -> None:
    h.qiao("network", "create", "--subnet", "10.63.3.0/24", "green")
    h.qiao("network", "create", "--subnet", "10.63.4.0/24", "other")
    sleeper(h, "asker", "--network", "green")
    sleeper(h, "roamer", "--network", "other")
    ns, gw = netns_of(h, "asker"), "10.63.3.1"
    assert in_netns(ns, dns_query, gw, "late") == ("NXDOMAIN", [])

    sleeper(h, "late", "--network", "green", "--network-alias", "late-alias")
    since, ip = time.monotonic(), ip_of(h, "late", "green")
    for name in ("late", "late-alias"):
        assert poll_dns(ns, gw, name, ("NOERROR", [ip]), since=since) == ("NOERROR", [ip]), f"run: {name}"

    h.qiao("rm", "-f", "late")
    since = time.monotonic()
    for name in ("late", "late-alias"):
        assert poll_dns(ns, gw, name, ("NXDOMAIN", []), since=since) == ("NXDOMAIN", []), f"rm: {name}"

    h.qiao("network", "connect", "--alias", "wanderer", "green", "roamer")
    since, ip = time.monotonic(), ip_of(h, "roamer", "green")
    for name in ("roamer", "wanderer"):
        assert poll_dns(ns, gw, name, ("NOERROR", [ip]), since=since) == ("NOERROR", [ip]), f"connect: {name}"

    h.qiao("network", "disconnect", "green", "roamer")
    since = time.monotonic()
    for name in ("roamer", "wanderer"):
        assert poll_dns(ns, gw, name, ("NXDOMAIN", []), since=since) == ("NXDOMAIN", []), f"disconnect: {name}"

    # A stopped container is no longer a name either.
    sleeper(h, "brief", "--network", "green")
    assert poll_dns(ns, gw, "brief", ("NOERROR", [ip_of(h, "brief", "green")])) == ("NOERROR", [ip_of(h, "brief", "green")])
    h.qiao("stop", "-t", "0", "brief")
    assert poll_dns(ns, gw, "brief", ("NXDOMAIN", [])) == ("NXDOMAIN", [])


def test_clients_outside_the_network_get_no_answer(lab: Lab, h: Host) -> None:
    h.qiao("network", "create", "--subnet", "10.63.5.0/24", "inner")
    h.qiao("network", "create", "--subnet", "10.63.6.0/24", "outer")
    sleeper(h, "member", "--network", "inner")
    sleeper(h, "neighbour", "--network", "outer")  # reaches inner's gateway: it is a host address
    stranger = Namespace("strg")  # a machine beside the host, with a route to the network
    try:
        a, b = f"{RUN}strgh", f"{RUN}strgo"
        lab.h.sh("ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", stranger.name)
        lab.h.sh("ip", "addr", "add", "192.0.2.1/24", "dev", a)
        lab.h.sh("ip", "link", "set", a, "up")
        stranger.sh("ip", "addr", "add", "192.0.2.2/24", "dev", b)
        stranger.sh("ip", "link", "set", b, "up")
        stranger.sh("ip", "route", "add", "10.63.5.0/24", "via", "192.0.2.1")
        ip = ip_of(h, "member", "inner")
        member, neighbour = netns_of(h, "member"), netns_of(h, "neighbour")
        got = in_parallel(
            [
                (member, dns_query, ("10.63.5.1", "member")),  # control: a client of the network
                (neighbour, dns_query, ("10.63.5.1", "member")),
                (neighbour, dns_query, ("10.63.5.1", "www.example.test")),
                (neighbour, dns_query, ("10.63.5.1", "member", "A", 1.0, True)),  # TCP
                (stranger.path, dns_query, ("10.63.5.1", "member")),
                (stranger.path, dns_query, ("10.63.5.1", "www.example.test")),
                (stranger.path, dns_query, ("10.63.5.1", "member", "A", 1.0, True)),
            ]
        )
        assert got == [("NOERROR", [ip]), None, None, None, None, None, None]
    finally:
        stranger.delete()  # takes the veth pair with it


def test_resolution_works_again_within_one_second_after_a_daemon_restart(lab: Lab, h: Host) -> None:
    h.qiao("network", "create", "--subnet", "10.63.7.0/24", "steady")
    sleeper(h, "s1", "--network", "steady", "--network-alias", "s-alias")
    sleeper(h, "s2", "--network", "steady")
    ns, gw, ip = netns_of(h, "s2"), "10.63.7.1", ip_of(h, "s1", "steady")
    assert in_netns(ns, dns_query, gw, "s-alias") == ("NOERROR", [ip])
    h.stop_daemon()
    try:
        assert in_netns(ns, dns_query, gw, "s1", "A", 0.3) is None  # nobody answers while it is down
    finally:
        h.start_daemon(args=("--resolv-conf", lab.resolv))
    since = time.monotonic()
    for name in ("s1", "s-alias"):
        assert poll_dns(ns, gw, name, ("NOERROR", [ip]), since=since) == ("NOERROR", [ip])
    assert poll_dns(ns, gw, "www.example.test", ("NOERROR", [UP1_ANSWER]), since=since) == ("NOERROR", [UP1_ANSWER])
    assert h.inspect("s1")["State"]["Running"]


def test_default_bridge_has_no_dns_and_uses_the_hosts_resolv_conf(lab: Lab, h: Host) -> None:
    sleeper(h, "plain")
    sleeper(h, "plain2")
    with open(lab.resolv) as f:
        assert h.exec("plain", "cat", "/etc/resolv.conf").stdout == f.read()
    ns, gw = netns_of(h, "plain"), h.inspect("plain")["NetworkSettings"]["Gateway"]
    assert in_netns(ns, dns_query, gw, "plain2", "A", 0.5) is None  # nothing on the gateway's port 53
    # Names go straight to the host's upstream, which knows no container.
    assert h.exec("plain", "getent", "hosts", "www.example.test").stdout.split()[0] == UP1_ANSWER
    assert h.exec("plain", "getent", "hosts", "plain2", check=False).returncode == 2
    assert "plain2" in lab.up1.asked()


def test_host_resolv_conf_changes_are_followed(lab: Lab, h: Host) -> None:
    h.qiao("network", "create", "--subnet", "10.63.8.0/24", "follow")
    sleeper(h, "f1", "--network", "follow")
    ns, gw = netns_of(h, "f1"), "10.63.8.1"
    assert in_netns(ns, dns_query, gw, "www.example.test") == ("NOERROR", [UP1_ANSWER])
    with open(lab.resolv) as f:
        original = f.read()
    try:
        with open(lab.resolv, "w") as f:  # edited in place, as an editor or resolvconf would
            f.write(f"nameserver {lab.up2.address}\n")
        assert poll_dns(ns, gw, "www.example.test", ("NOERROR", [UP2_ANSWER]), within=3.0) == ("NOERROR", [UP2_ANSWER])
        assert "www.example.test" in lab.up2.asked()
        # The user network's containers keep their resolver; a new default-bridge container gets the new file.
        assert h.exec("f1", "cat", "/etc/resolv.conf").stdout == "nameserver 10.63.8.1\n"
        sleeper(h, "fresh")
        assert h.exec("fresh", "cat", "/etc/resolv.conf").stdout == f"nameserver {lab.up2.address}\n"
    finally:
        with open(lab.resolv, "w") as f:
            f.write(original)
    assert poll_dns(ns, gw, "www.example.test", ("NOERROR", [UP1_ANSWER]), within=3.0) == ("NOERROR", [UP1_ANSWER])
