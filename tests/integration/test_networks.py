"""User-defined networks: create (options, default pools), ls, inspect,
run on them, rm, prune; and bad input that must be refused in one line
without changing anything."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import RUN, Host, one_line_error

HEX64 = re.compile(r"[0-9a-f]{64}")
INSPECT_KEYS = [
    "Name", "Id", "Created", "Scope", "Driver", "EnableIPv4", "EnableIPv6", "IPAM", "Internal", "Attachable",
    "Ingress", "ConfigFrom", "ConfigOnly", "Containers", "Options", "Labels",
]  # fmt: skip
LS_JSON_KEYS = ["CreatedAt", "Driver", "ID", "IPv4", "IPv6", "Internal", "Labels", "Name", "Scope"]
OPT_BRIDGE = "com.docker.network.bridge.name"
OPT_MTU = "com.docker.network.driver.mtu"


def net_inspect(host: Host, ref: str) -> dict:
    found = json.loads(host.qiao("network", "inspect", ref).stdout)
    assert len(found) == 1
    return found[0]


def ls_json(host: Host) -> list[dict]:
    return [json.loads(line) for line in host.qiao("network", "ls", "--format", "json").stdout.splitlines()]


def link(host: Host, name: str) -> dict | None:
    proc = host.sh("ip", "-j", "addr", "show", "dev", name, check=False)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def inet(link_json: dict) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in link_json["addr_info"] if a["family"] == "inet"]


@pytest.fixture
def clean(host: Host) -> Iterator[None]:
    """The test starts with no containers and only the built-in networks on the shared host, and leaves it so
    (conftest's ``clean``, which this replaces, and the networks)."""
    yield
    host.remove_containers()
    host.qiao("network", "prune", "-f", check=False)


# -- create / inspect / ls -------------------------------------------------------


@pytest.mark.usefixtures("clean")
def test_create_with_every_option_and_inspect_in_dockers_form(host: Host) -> None:
    bridge = f"{RUN}br7"
    nid = host.qiao(
        "network", "create", "--subnet", "10.77.0.0/16", "--gateway", "10.77.0.254", "--ip-range", "10.77.5.0/24",
        "-o", f"{OPT_BRIDGE}={bridge}", "-o", f"{OPT_MTU}=1400", "--label", "team=net", "--label", "tier=2", "mynet",
    ).stdout.strip()  # fmt: skip
    assert HEX64.fullmatch(nid)
    net = net_inspect(host, "mynet")
    assert list(net) == INSPECT_KEYS
    assert (net["Name"], net["Id"], net["Scope"], net["Driver"], net["EnableIPv6"]) == ("mynet", nid, "local", "bridge", False)
    datetime.datetime.fromisoformat(net["Created"].replace("Z", "+00:00"))
    config = [{"Subnet": "10.77.0.0/16", "IPRange": "10.77.5.0/24", "Gateway": "10.77.0.254"}]
    assert net["IPAM"] == {"Driver": "default", "Options": {}, "Config": config}
    assert list(net["IPAM"]["Config"][0]) == ["Subnet", "IPRange", "Gateway"]
    flags = {k: net[k] for k in ("Internal", "Attachable", "Ingress", "ConfigFrom", "ConfigOnly")}
    assert flags == {"Internal": False, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""}, "ConfigOnly": False}
    assert net["Containers"] == {}
    assert net["Options"] == {OPT_BRIDGE: bridge, OPT_MTU: "1400"}
    assert net["Labels"] == {"team": "net", "tier": "2"}
    assert net_inspect(host, nid[:12]) == net == net_inspect(host, nid)

    # The kernel side: the bridge, its gateway address, its MTU; a masquerade rule for the subnet.
    br = link(host, bridge)
    assert br is not None and inet(br) == ["10.77.0.254/16"] and br["mtu"] == 1400 and "UP" in br["flags"]
    assert f'oifname != "{bridge}" ip saddr 10.77.0.0/16 masquerade' in host.sh("nft", "list", "table", "inet", "qiao").stdout

    # A container on it: an address of the ip-range, the gateway, the MTU on eth0.
    cid = host.run_d("--name", "u1", "--network", "mynet", "--", "sleep", "300")
    ep = host.inspect("u1")["NetworkSettings"]["Networks"]["mynet"]
    assert ipaddress.IPv4Address(ep["IPAddress"]) in ipaddress.IPv4Network("10.77.5.0/24")
    assert (ep["Gateway"], ep["IPPrefixLen"]) == ("10.77.0.254", 16)
    eth0 = json.loads(host.exec("u1", "ip", "-j", "addr", "show", "eth0").stdout)[0]
    assert eth0["mtu"] == 1400 and inet(eth0) == [f"{ep['IPAddress']}/16"]
    routes = json.loads(host.exec("u1", "ip", "-j", "route").stdout)
    assert {"dst": "default", "gateway": "10.77.0.254"}.items() <= routes[0].items()
    veth = json.loads(host.sh("ip", "-j", "link", "show", "master", bridge).stdout)
    assert len(veth) == 1 and veth[0]["mtu"] == 1400
    assert cid in net_inspect(host, "mynet")["Containers"]


@pytest.mark.usefixtures("clean")
def test_without_a_subnet_the_next_free_default_pool_is_used(host: Host) -> None:
    first = host.qiao("network", "create", "auto1").stdout.strip()
    net = net_inspect(host, "auto1")
    assert net["IPAM"]["Config"] == [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]
    assert net["Options"] == {} and net["Labels"] == {}
    br = link(host, "br-" + first[:12])
    assert br is not None and inet(br) == ["172.18.0.1/16"]
    host.qiao("network", "create", "auto2")
    assert net_inspect(host, "auto2")["IPAM"]["Config"][0]["Subnet"] == "172.19.0.0/16"
    host.qiao("network", "rm", "auto1")
    assert link(host, "br-" + first[:12]) is None
    host.qiao("network", "create", "auto3")  # the freed pool is the lowest free one again
    assert net_inspect(host, "auto3")["IPAM"]["Config"][0]["Subnet"] == "172.18.0.0/16"


@pytest.mark.usefixtures("clean")
def test_ls_as_table_and_json(host: Host) -> None:
    nid = host.qiao("network", "create", "--label", "a=b", "--label", "c=d", "lsnet").stdout.strip()
    builtin = {n["Name"]: n["Id"] for n in (net_inspect(host, name) for name in ("bridge", "host", "none"))}
    ids = {**builtin, "lsnet": nid}
    drivers = {"bridge": "bridge", "host": "host", "none": "null", "lsnet": "bridge"}

    table = host.qiao("network", "ls").stdout.splitlines()
    assert table[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    rows = [line.split() for line in table[1:]]
    assert rows == [[ids[name][:12], name, drivers[name], "local"] for name in sorted(ids)]  # by name, as Docker's
    assert host.qiao("network", "ls", "-q").stdout.split() == [ids[name][:12] for name in sorted(ids)]

    lines = ls_json(host)
    assert [line["Name"] for line in lines] == sorted(ids)
    for line in lines:
        assert list(line) == LS_JSON_KEYS
        name = line["Name"]
        assert (line["ID"], line["Driver"], line["Scope"]) == (ids[name][:12], drivers[name], "local")
        assert (line["IPv6"], line["Internal"]) == ("false", "false")
        assert line["IPv4"] == ("true" if drivers[name] == "bridge" else "false")
        # Go's time.Time.String(), as docker's CLI prints it
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \+0000 UTC", line["CreatedAt"]), line["CreatedAt"]
    mine = next(line for line in lines if line["Name"] == "lsnet")
    assert sorted(mine["Labels"].split(",")) == ["a=b", "c=d"]
    assert json.loads(host.qiao("inspect", "lsnet").stdout) == [net_inspect(host, "lsnet")]  # `qiao inspect` finds networks too


@pytest.mark.usefixtures("clean")
def test_run_on_a_user_network_and_rm_refused_while_it_has_endpoints(host: Host) -> None:
    nid = host.qiao("network", "create", "--subnet", "10.78.0.0/24", "-o", f"{OPT_MTU}=1400", "netA").stdout.strip()
    bridge = "br-" + nid[:12]
    c1 = host.run_d("--name", "n1", "--network", "netA", "--", "sleep", "300")
    c2 = host.run_d("--name", "n2", "--network", nid[:12], "--", "sleep", "300")  # by id prefix too
    info = host.inspect("n1")
    assert info["HostConfig"]["NetworkMode"] == "netA"
    ns = info["NetworkSettings"]
    net_a = ns["Networks"]["netA"]
    assert (net_a["IPAddress"], net_a["IPPrefixLen"], net_a["Gateway"]) == ("10.78.0.2", 24, "10.78.0.1")
    assert (ns["IPAddress"], ns["IPPrefixLen"], ns["Gateway"], ns["EndpointID"]) == ("", 0, "", "")  # Docker: default bridge only
    assert list(ns["Networks"]) == ["netA"] and ns["Networks"]["netA"]["NetworkID"] == nid
    assert host.inspect("n2")["NetworkSettings"]["Networks"]["netA"]["IPAddress"] == "10.78.0.3"
    eth0 = json.loads(host.exec("n1", "ip", "-j", "addr", "show", "eth0").stdout)[0]
    assert eth0["mtu"] == 1400 and inet(eth0) == ["10.78.0.2/24"]
    assert len(json.loads(host.sh("ip", "-j", "link", "show", "master", bridge).stdout)) == 2
    assert json.loads(host.sh("ip", "-j", "link", "show", "master", "qiao0").stdout or "[]") == []

    net = net_inspect(host, "netA")
    assert list(net["Containers"]) == [c1, c2]
    entry = net["Containers"][c1]
    assert list(entry) == ["Name", "EndpointID", "MacAddress", "IPv4Address", "IPv6Address"]
    assert entry == {
        "Name": "n1",
        "EndpointID": ns["Networks"]["netA"]["EndpointID"],
        "MacAddress": "02:42:0a:4e:00:02",
        "IPv4Address": "10.78.0.2/24",
        "IPv6Address": "",
    }
    assert net_inspect(host, "bridge")["Containers"] == {}

    # No rm while endpoints exist; nothing changed by the refusal.
    line = one_line_error(host.qiao("network", "rm", "netA", check=False))
    assert "active endpoints" in line
    assert net_inspect(host, "netA")["Containers"].keys() == {c1, c2} and link(host, bridge) is not None
    host.qiao("rm", "-f", "n1")
    assert "active endpoints" in one_line_error(host.qiao("network", "rm", "netA", check=False))
    host.qiao("stop", "n2")  # an exited container holds no endpoint
    assert host.qiao("network", "rm", "netA").stdout == "netA\n"
    assert link(host, bridge) is None
    assert "bridge ip saddr 10.78.0.0/24" not in host.sh("nft", "list", "table", "inet", "qiao").stdout.replace(bridge, "bridge")
    assert host.qiao("network", "inspect", "netA", check=False).returncode != 0


@pytest.mark.usefixtures("clean")
def test_prune_removes_only_unused_user_networks(host: Host) -> None:
    ids = {name: host.qiao("network", "create", name).stdout.strip() for name in ("p1", "p2", "p3")}
    host.run_d("--name", "user", "--network", "p3", "--", "sleep", "300")
    out = host.qiao("network", "prune", "-f").stdout.splitlines()
    assert out[0] == "Deleted Networks:" and sorted(out[1:]) == ["p1", "p2"]
    assert sorted(n["Name"] for n in ls_json(host)) == ["bridge", "host", "none", "p3"]
    assert link(host, "br-" + ids["p1"][:12]) is None and link(host, "br-" + ids["p2"][:12]) is None
    assert link(host, "br-" + ids["p3"][:12]) is not None
    assert host.qiao("network", "prune", "-f").stdout == ""  # nothing left to prune


# -- bad input -------------------------------------------------------------------

TAKEN_BRIDGE = f"{RUN}tk"
OTHER_LINK = f"{RUN}va"  # a veth of the host's own, not qiao's
BAD_INPUT = [
    # network create: subnets
    ("subnet-not-an-address", ["network", "create", "--subnet", "10.0.0.300/24", "bad"]),
    ("subnet-garbage", ["network", "create", "--subnet", "not-a-subnet", "bad"]),
    ("subnet-host-bits-set", ["network", "create", "--subnet", "10.1.2.3/24", "bad"]),
    ("subnet-prefix-too-long", ["network", "create", "--subnet", "10.1.2.0/33", "bad"]),
    ("subnet-too-small", ["network", "create", "--subnet", "10.1.2.0/31", "bad"]),
    ("subnet-ipv6", ["network", "create", "--subnet", "fd00:1::/64", "bad"]),
    ("subnet-overlaps-a-network", ["network", "create", "--subnet", "10.88.1.0/24", "bad"]),
    ("subnet-contains-a-network", ["network", "create", "--subnet", "10.0.0.0/8", "bad"]),
    ("subnet-overlaps-default-bridge", ["network", "create", "--subnet", "172.17.128.0/17", "bad"]),
    # gateways and ip ranges
    ("gateway-outside-subnet", ["network", "create", "--subnet", "10.89.0.0/24", "--gateway", "10.90.0.1", "bad"]),
    ("gateway-is-network-address", ["network", "create", "--subnet", "10.89.0.0/24", "--gateway", "10.89.0.0", "bad"]),
    ("gateway-is-broadcast", ["network", "create", "--subnet", "10.89.0.0/24", "--gateway", "10.89.0.255", "bad"]),
    ("gateway-not-an-address", ["network", "create", "--subnet", "10.89.0.0/24", "--gateway", "gw", "bad"]),
    ("gateway-without-subnet", ["network", "create", "--gateway", "10.89.0.1", "bad"]),
    ("ip-range-outside-subnet", ["network", "create", "--subnet", "10.89.0.0/24", "--ip-range", "10.89.1.0/24", "bad"]),
    ("ip-range-larger-than-subnet", ["network", "create", "--subnet", "10.89.0.0/24", "--ip-range", "10.89.0.0/16", "bad"]),
    ("ip-range-garbage", ["network", "create", "--subnet", "10.89.0.0/24", "--ip-range", "x", "bad"]),
    ("ip-range-without-subnet", ["network", "create", "--ip-range", "10.89.0.0/25", "bad"]),
    # names, options, drivers
    ("duplicate-name", ["network", "create", "taken"]),
    ("network-name-empty", ["network", "create", ""]),
    ("network-name-invalid", ["network", "create", "bad/name"]),
    ("network-name-with-space", ["network", "create", "bad name"]),
    ("bridge-name-with-slash", ["network", "create", "-o", f"{OPT_BRIDGE}=a/b", "bad"]),
    ("bridge-name-16-chars", ["network", "create", "-o", f"{OPT_BRIDGE}=abcdefghijklmnop", "bad"]),
    ("bridge-name-with-space", ["network", "create", "-o", f"{OPT_BRIDGE}=a b", "bad"]),
    ("bridge-name-taken", ["network", "create", "-o", f"{OPT_BRIDGE}={TAKEN_BRIDGE}", "bad"]),
    ("bridge-name-is-loopback", ["network", "create", "-o", f"{OPT_BRIDGE}=lo", "bad"]),
    ("bridge-name-is-a-veth", ["network", "create", "-o", f"{OPT_BRIDGE}={OTHER_LINK}", "bad"]),
    ("mtu-not-a-number", ["network", "create", "-o", f"{OPT_MTU}=abc", "bad"]),
    ("mtu-empty", ["network", "create", "-o", f"{OPT_MTU}=", "bad"]),
    ("mtu-zero", ["network", "create", "-o", f"{OPT_MTU}=0", "bad"]),
    ("mtu-negative", ["network", "create", "-o", f"{OPT_MTU}=-1500", "bad"]),
    ("mtu-too-large", ["network", "create", "-o", f"{OPT_MTU}=70000", "bad"]),
    ("unknown-docker-option", ["network", "create", "-o", "com.docker.network.bridge.bogus=1", "bad"]),
    ("unknown-driver", ["network", "create", "-d", "overlay", "bad"]),
    # network rm / inspect
    ("network-rm-predefined", ["network", "rm", "bridge"]),
    ("network-rm-with-endpoints", ["network", "rm", "taken"]),
    ("network-rm-unknown", ["network", "rm", "nosuchnet"]),
    ("network-inspect-unknown", ["network", "inspect", "nosuchnet"]),
    # run
    ("run-unknown-network", ["run", "-d", "--network", "nosuchnet", "--", "sleep", "300"]),
    ("run-unknown-network-foreground", ["run", "--network", "nosuchnet", "--", "true"]),
    ("run-no-command", ["run"]),
    ("run-no-command-detached", ["run", "-d", "--name", "nocmd"]),
    ("run-no-command-after-dashes", ["run", "-d", "--"]),
    ("run-duplicate-name", ["run", "-d", "--name", "busy", "--", "sleep", "300"]),
    ("run-invalid-name", ["run", "-d", "--name", "a b", "--", "sleep", "300"]),
    ("run-invalid-env", ["run", "-d", "-e", "=x", "--", "sleep", "300"]),
    ("run-command-not-found", ["run", "-d", "--", "/no/such/command"]),
    ("run-hostname-too-long", ["run", "-d", "--hostname", "h" * 65, "--", "sleep", "300"]),
    ("run-container-mode-no-target", ["run", "-d", "--network", "container:", "--", "sleep", "300"]),
    ("run-container-mode-unknown", ["run", "-d", "--network", "container:nosuch", "--", "sleep", "300"]),
    # containers that do not exist, or refuse
    ("stop-unknown", ["stop", "nosuch"]),
    ("rm-unknown", ["rm", "nosuch"]),
    ("rm-force-unknown", ["rm", "-f", "nosuch"]),
    ("inspect-unknown", ["inspect", "nosuch"]),
    ("kill-unknown", ["kill", "nosuch"]),
    ("start-unknown", ["start", "nosuch"]),
    ("logs-unknown", ["logs", "nosuch"]),
    ("exec-unknown", ["exec", "nosuch", "true"]),
    ("rm-running-without-force", ["rm", "busy"]),
    ("kill-bad-signal", ["kill", "-s", "NOSUCHSIG", "busy"]),
    ("kill-signal-zero", ["kill", "-s", "0", "busy"]),
    ("kill-signal-out-of-range", ["kill", "-s", "99", "busy"]),
    ("exec-no-command", ["exec", "busy"]),
]


class BadHost(Host):
    """A host of its own holding a network ``taken`` (10.88.0.0/16, bridge
    ``TAKEN_BRIDGE``), a running container ``busy`` on it and a veth pair
    ``OTHER_LINK``; ``last`` is its state as the previous case left it."""

    last: dict


def state(host: Host) -> dict:
    """What bad input must not change: networks, containers, links, firewall."""
    containers = host.ps_json("-a")
    return {
        "networks": sorted((n["ID"], n["Name"]) for n in ls_json(host)),
        "containers": sorted((c["ID"], c["Names"], c["State"]) for c in containers),
        "links": sorted(line.split(": ")[1].split("@")[0] for line in host.sh("ip", "-o", "link", "show").stdout.splitlines()),
        "addresses": host.sh("ip", "-4", "-o", "addr", "show").stdout,
        "nft": host.sh("nft", "list", "ruleset").stdout,
        "netns files": sorted(os.listdir(os.path.join(host.root, "run", "netns"))),
        "mounts": sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines() if host.root in line),
    }


@pytest.fixture(scope="module")
def bad_host() -> Iterator[BadHost]:
    h = BadHost("b" + secrets.token_hex(1))
    try:
        h.qiao("network", "create", "--subnet", "10.88.0.0/16", "-o", f"{OPT_BRIDGE}={TAKEN_BRIDGE}", "taken")
        h.run_d("--name", "busy", "--network", "taken", "--", "sleep", "300")
        h.sh("ip", "link", "add", OTHER_LINK, "type", "veth", "peer", "name", f"{RUN}vb")
        h.last = state(h)
        yield h
    finally:
        h.cleanup()


@pytest.mark.parametrize(("case", "args"), [pytest.param(case, args, id=case) for case, args in BAD_INPUT])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(bad_host: BadHost, case: str, args: list[str]) -> None:
    before = bad_host.last
    assert len(before["containers"]) == 1 and before["containers"][0][1:] == ("busy", "running")
    # A name of its own per case: a network wrongly made by one case cannot make another fail as a duplicate.
    proc = bad_host.qiao(*(f"bad-{case}" if arg == "bad" else arg for arg in args), check=False)
    after = state(bad_host)
    if after != before:  # remove what the case made, so that it fails alone and not every later case too
        made = set(after["containers"]) - set(before["containers"])
        if made:
            bad_host.qiao("rm", "-f", *(c[0] for c in made), check=False)
        for _, name in set(after["networks"]) - set(before["networks"]):
            bad_host.qiao("network", "rm", name, check=False)
        bad_host.last = state(bad_host)
    assert "internal error" not in one_line_error(proc)  # refused as bad input, not a daemon failure
    assert after == before
