"""Docker Engine API JSON: key order and values."""

from __future__ import annotations

import dataclasses
import datetime
import json
import time

import pytest

from qiao.daemon import docker_json
from qiao.engine.containers import ContainerView
from qiao.engine.models import Container, Endpoint, Network
from qiao.units import human_duration

NET_ID = "n" * 64
CID = "c" * 64

# Docker's field order (moby api/types: network.Inspect, container.InspectResponse, ...).
DOCKER_NETWORK_KEYS = [
    "Name", "Id", "Created", "Scope", "Driver", "EnableIPv4", "EnableIPv6", "IPAM", "Internal", "Attachable", "Ingress",
    "ConfigFrom", "ConfigOnly", "Containers", "Options", "Labels", "Peers", "Services",
]  # fmt: skip
DOCKER_CONTAINER_KEYS = [
    "Id", "Created", "Path", "Args", "State", "Image", "ResolvConfPath", "HostnamePath", "HostsPath", "LogPath", "Node", "Name",
    "RestartCount", "Driver", "Platform", "ImageManifestDescriptor", "MountLabel", "ProcessLabel", "AppArmorProfile", "ExecIDs",
    "HostConfig", "GraphDriver", "SizeRw", "SizeRootFs", "Mounts", "Config", "NetworkSettings",
]  # fmt: skip
DOCKER_STATE_KEYS = [
    "Status", "Running", "Paused", "Restarting", "OOMKilled", "Dead", "Pid", "ExitCode", "Error", "StartedAt", "FinishedAt", "Health",
]  # fmt: skip
DOCKER_CONFIG_KEYS = [
    "Hostname", "Domainname", "User", "AttachStdin", "AttachStdout", "AttachStderr", "ExposedPorts", "Tty", "OpenStdin",
    "StdinOnce", "Env", "Cmd", "Healthcheck", "ArgsEscaped", "Image", "Volumes", "WorkingDir", "Entrypoint", "NetworkDisabled",
    "MacAddress", "OnBuild", "Labels", "StopSignal", "StopTimeout", "Shell",
]  # fmt: skip
DOCKER_HOSTCONFIG_KEYS = [
    "Binds", "ContainerIDFile", "LogConfig", "NetworkMode", "PortBindings", "RestartPolicy", "AutoRemove", "VolumeDriver",
    "VolumesFrom", "ConsoleSize", "Annotations", "CapAdd", "CapDrop", "CgroupnsMode", "Dns", "DnsOptions", "DnsSearch",
    "ExtraHosts", "GroupAdd", "IpcMode", "Cgroup", "Links", "OomScoreAdj", "PidMode", "Privileged", "PublishAllPorts",
    "ReadonlyRootfs", "SecurityOpt", "StorageOpt", "Tmpfs", "UTSMode", "UsernsMode", "ShmSize", "Sysctls", "Runtime", "Isolation",
    "CpuShares", "Memory", "NanoCpus", "CgroupParent", "BlkioWeight", "BlkioWeightDevice", "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps", "BlkioDeviceReadIOps", "BlkioDeviceWriteIOps", "CpuPeriod", "CpuQuota", "CpuRealtimePeriod",
    "CpuRealtimeRuntime", "CpusetCpus", "CpusetMems", "Devices", "DeviceCgroupRules", "DeviceRequests", "KernelMemoryTCP",
    "MemoryReservation", "MemorySwap", "MemorySwappiness", "OomKillDisable", "PidsLimit", "Ulimits", "CpuCount", "CpuPercent",
    "IOMaximumIOps", "IOMaximumBandwidth", "Mounts", "MaskedPaths", "ReadonlyPaths", "Init",
]  # fmt: skip
DOCKER_NETWORK_SETTINGS_KEYS = [
    "Bridge", "SandboxID", "SandboxKey", "Ports", "HairpinMode", "LinkLocalIPv6Address", "LinkLocalIPv6PrefixLen",
    "SecondaryIPAddresses", "SecondaryIPv6Addresses", "EndpointID", "Gateway", "GlobalIPv6Address", "GlobalIPv6PrefixLen",
    "IPAddress", "IPPrefixLen", "IPv6Gateway", "MacAddress", "Networks",
]  # fmt: skip
# moby types.DefaultNetworkSettings: the deprecated top-level copy of Networks["bridge"].
DEFAULT_NETWORK_KEYS = [
    "EndpointID", "Gateway", "GlobalIPv6Address", "GlobalIPv6PrefixLen", "IPAddress", "IPPrefixLen", "IPv6Gateway", "MacAddress",
]  # fmt: skip
EMPTY_DEFAULT_NETWORK = {k: 0 if k.endswith("PrefixLen") else "" for k in DEFAULT_NETWORK_KEYS}
DOCKER_ENDPOINT_SETTINGS_KEYS = [
    "IPAMConfig", "Links", "Aliases", "MacAddress", "DriverOpts", "GwPriority", "NetworkID", "EndpointID", "Gateway",
    "IPAddress", "IPPrefixLen", "IPv6Gateway", "GlobalIPv6Address", "GlobalIPv6PrefixLen", "DNSNames",
]  # fmt: skip
DOCKER_SUMMARY_KEYS = [
    "Id", "Names", "Image", "ImageID", "Command", "Created", "Ports", "SizeRw", "SizeRootFs", "Labels", "State", "Status",
    "HostConfig", "NetworkSettings", "Mounts",
]  # fmt: skip


def in_docker_order(keys, docker_keys) -> bool:
    """``keys`` are known to Docker and appear in Docker's relative order."""
    assert set(keys) <= set(docker_keys), set(keys) - set(docker_keys)
    return [k for k in docker_keys if k in keys] == list(keys)


def stamp(seconds_ago: float) -> str:
    t = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return t.isoformat().replace("+00:00", "Z")


def bridge_net(name: str = "web", **kw) -> Network:
    return Network(
        id=NET_ID,
        name=name,
        driver="bridge",
        created="2024-05-01T10:00:00.000000Z",
        subnet="172.18.0.0/16",
        gateway="172.18.0.1",
        driver_state={"bridge": "br-nnnnnnnnnnnn"},
        options={"com.docker.network.bridge.name": "br-nnnnnnnnnnnn"},
        labels={"env": "test"},
        **kw,
    )


def endpoint(address: str = "172.18.0.2", owner: str = CID, eid: str = "e" * 64) -> Endpoint:
    return Endpoint(
        id=eid,
        network_id=NET_ID,
        owner=owner,
        ifname="eth0",
        host_ifname="veth1234567",
        address=address,
        prefixlen=16,
        gateway="172.18.0.1",
        mac="02:42:ac:12:00:02",
    )


def inspect(ctr: Container, endpoints: list[tuple[str, Endpoint]], files: dict[str, str], links: list[str] | None = None) -> dict:
    """``GET /containers/{id}/json`` of a container with these endpoints (by network name), files and links."""
    return docker_json.container(ContainerView(ctr, endpoints, files, links or []))


def summary(ctr: Container, endpoints: list[tuple[str, Endpoint]]) -> dict:
    """An element of ``GET /containers/json``."""
    return docker_json.container_summary(ContainerView(ctr, endpoints, {}, []))


def container(**kw) -> Container:
    defaults = dict(
        id=CID,
        name="box",
        created=stamp(10),
        cmd=["sleep", "60"],
        env=["A=1"],
        hostname="cccccccccccc",
        network_mode="web",
    )
    return Container(**{**defaults, **kw})


# -- networks ----------------------------------------------------------------


def test_network_key_order_and_values():
    doc = docker_json.network(bridge_net(), [endpoint()], {CID: container()})
    assert list(doc) == [
        "Name", "Id", "Created", "Scope", "Driver", "EnableIPv4", "EnableIPv6", "IPAM", "Internal", "Attachable", "Ingress",
        "ConfigFrom", "ConfigOnly", "Containers", "Options", "Labels",
    ]  # fmt: skip
    assert in_docker_order(doc, DOCKER_NETWORK_KEYS)
    assert doc["Name"] == "web" and doc["Id"] == NET_ID and doc["Created"] == "2024-05-01T10:00:00.000000Z"
    assert (doc["Scope"], doc["Driver"], doc["EnableIPv6"]) == ("local", "bridge", False)
    assert doc["IPAM"] == {"Driver": "default", "Options": {}, "Config": [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]}
    assert list(doc["IPAM"]) == ["Driver", "Options", "Config"]
    assert list(doc["IPAM"]["Config"][0]) == ["Subnet", "Gateway"]
    assert (doc["Internal"], doc["Attachable"], doc["Ingress"], doc["ConfigOnly"]) == (False, False, False, False)
    assert doc["ConfigFrom"] == {"Network": ""}
    assert doc["Containers"] == {
        CID: {
            "Name": "box",
            "EndpointID": "e" * 64,
            "MacAddress": "02:42:ac:12:00:02",
            "IPv4Address": "172.18.0.2/16",
            "IPv6Address": "",
        }
    }
    assert list(doc["Containers"][CID]) == ["Name", "EndpointID", "MacAddress", "IPv4Address", "IPv6Address"]
    assert doc["Options"] == {"com.docker.network.bridge.name": "br-nnnnnnnnnnnn"}
    assert doc["Labels"] == {"env": "test"}
    json.dumps(doc)


def test_network_ip_range_between_subnet_and_gateway():
    doc = docker_json.network(bridge_net(ip_range="172.18.5.0/24"), [], {})
    assert doc["IPAM"]["Config"] == [{"Subnet": "172.18.0.0/16", "IPRange": "172.18.5.0/24", "Gateway": "172.18.0.1"}]
    assert list(doc["IPAM"]["Config"][0]) == ["Subnet", "IPRange", "Gateway"]
    assert doc["Containers"] == {}


def test_global_network_shows_its_scope_and_the_cluster_range():
    net = bridge_net("o", scope="global", cluster_subnet="172.18.0.0/14")  # this host's share is 172.18.0.0/16
    doc = docker_json.network(dataclasses.replace(net, driver="overlay"), [], {})
    assert (doc["Scope"], doc["Driver"]) == ("global", "overlay")
    assert doc["IPAM"]["Config"] == [{"Subnet": "172.18.0.0/14", "Gateway": "172.18.0.1"}]


def test_default_bridge_ipam_options_null():
    assert docker_json.network(bridge_net("bridge"), [], {})["IPAM"]["Options"] is None


def test_host_and_none_networks_have_no_ipam_config():
    for name, driver in (("host", "host"), ("none", "null")):
        doc = docker_json.network(Network("h" * 64, name, driver, "2024-05-01T10:00:00Z"), [], {})
        assert doc["IPAM"]["Config"] == [] and doc["Driver"] == driver


def test_network_flags_and_unknown_container():
    doc = docker_json.network(bridge_net(internal=True, attachable=True), [endpoint(owner="x" * 64)], {})
    assert doc["Internal"] is True and doc["Attachable"] is True
    assert doc["Containers"]["x" * 64]["Name"] == ""


def test_network_several_endpoints():
    eps = [endpoint("172.18.0.2", "a" * 64, "1" * 64), endpoint("172.18.0.3", "b" * 64, "2" * 64)]
    doc = docker_json.network(bridge_net(), eps, {})
    assert [c["IPv4Address"] for c in doc["Containers"].values()] == ["172.18.0.2/16", "172.18.0.3/16"]


# -- containers --------------------------------------------------------------


def test_container_key_order_and_values():
    ctr = container(
        status="running",
        pid=4242,
        started_at=stamp(5),
        sandbox_key="/run/qiao/netns/" + CID,
        exposed_ports=["80/tcp"],
        port_bindings={"80/tcp": [{"host_ip": "", "host_port": "8080"}]},
        ports=[{"proto": "tcp", "host_ip": "0.0.0.0", "host_port": 8080, "container_ip": "172.18.0.2", "container_port": 80}],
    )
    files = {"resolv.conf": "/d/resolv.conf", "hostname": "/d/hostname", "hosts": "/d/hosts", "log": "/d/log"}
    doc = inspect(ctr, [("web", endpoint())], files)
    assert in_docker_order(doc, DOCKER_CONTAINER_KEYS)
    assert in_docker_order(doc["State"], DOCKER_STATE_KEYS)
    assert in_docker_order(doc["Config"], DOCKER_CONFIG_KEYS)
    assert in_docker_order(doc["HostConfig"], DOCKER_HOSTCONFIG_KEYS)
    assert in_docker_order(doc["NetworkSettings"], DOCKER_NETWORK_SETTINGS_KEYS)
    assert in_docker_order(doc["NetworkSettings"]["Networks"]["web"], DOCKER_ENDPOINT_SETTINGS_KEYS)

    assert doc["Id"] == CID and doc["Name"] == "/box"
    assert (doc["Path"], doc["Args"]) == ("sleep", ["60"])
    assert doc["State"]["Status"] == "running" and doc["State"]["Running"] is True and doc["State"]["Pid"] == 4242
    assert (doc["ResolvConfPath"], doc["HostnamePath"], doc["HostsPath"], doc["LogPath"]) == (
        "/d/resolv.conf",
        "/d/hostname",
        "/d/hosts",
        "/d/log",
    )
    assert doc["Config"]["Hostname"] == "cccccccccccc" and doc["Config"]["Env"] == ["A=1"] and doc["Config"]["Cmd"] == ["sleep", "60"]
    assert doc["Config"]["ExposedPorts"] == {"80/tcp": {}}
    host = doc["HostConfig"]
    assert {k: host[k] for k in ("NetworkMode", "PortBindings", "AutoRemove", "CapAdd", "CapDrop", "Links", "Privileged")} == {
        "NetworkMode": "web",
        "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
        "AutoRemove": False,
        "CapAdd": None,
        "CapDrop": None,
        "Links": None,
        "Privileged": False,
    }
    assert host["PublishAllPorts"] is False and host["LogConfig"] == {"Type": "json-file", "Config": {}}
    assert host["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert (doc["Mounts"], doc["Config"]["Labels"], doc["Config"]["Tty"], doc["Config"]["Image"]) == ([], {}, False, "")
    assert (doc["Config"]["User"], doc["Config"]["WorkingDir"]) == ("", "")
    ns = doc["NetworkSettings"]
    assert ns["SandboxID"] == CID and ns["SandboxKey"] == "/run/qiao/netns/" + CID
    assert (ns["HairpinMode"], ns["LinkLocalIPv6Address"], ns["LinkLocalIPv6PrefixLen"]) == (False, "", 0)
    assert (ns["SecondaryIPAddresses"], ns["SecondaryIPv6Addresses"]) == (None, None)
    assert {k: ns[k] for k in DEFAULT_NETWORK_KEYS} == EMPTY_DEFAULT_NETWORK  # web is not the default bridge
    assert ns["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
    web = ns["Networks"]["web"]
    assert (web["NetworkID"], web["EndpointID"], web["IPAddress"], web["IPPrefixLen"], web["Gateway"]) == (
        NET_ID,
        "e" * 64,
        "172.18.0.2",
        16,
        "172.18.0.1",
    )
    json.dumps(doc)


def test_container_not_running_hides_pid_and_ports():
    ctr = container(status="exited", pid=4242, exit_code=3, exposed_ports=["80/tcp"], finished_at=stamp(3))
    doc = inspect(ctr, [], {})
    assert doc["State"]["Running"] is False and doc["State"]["Pid"] == 0 and doc["State"]["ExitCode"] == 3
    assert doc["NetworkSettings"]["Ports"] == {}
    assert doc["NetworkSettings"]["SandboxID"] == "" and doc["NetworkSettings"]["IPAddress"] == ""
    assert doc["ResolvConfPath"] == ""


def test_container_none_mode_lists_none_network():
    doc = inspect(container(network_mode="none"), [], {})
    assert list(doc["NetworkSettings"]["Networks"]) == ["none"]
    assert doc["NetworkSettings"]["Networks"]["none"]["IPAddress"] == ""


def test_container_joined_mode_lists_no_network():
    doc = inspect(container(network_mode="container:" + "d" * 64), [], {})
    assert doc["NetworkSettings"]["Networks"] == {}


def test_container_exposed_port_without_binding_is_null():
    ctr = container(status="running", exposed_ports=["53/udp", "80/tcp"])
    assert docker_json.ports(ctr) == {"53/udp": None, "80/tcp": None}
    assert inspect(ctr, [], {})["Config"]["ExposedPorts"] == {"53/udp": {}, "80/tcp": {}}
    assert "ExposedPorts" not in inspect(container(), [], {})["Config"]  # omitempty, as dockerd


def test_container_summary():
    ctr = container(
        status="running",
        started_at=stamp(120),
        exposed_ports=["7000/udp"],
        ports=[{"proto": "tcp", "host_ip": "0.0.0.0", "host_port": 8080, "container_ip": "172.18.0.2", "container_port": 80}],
    )
    doc = summary(ctr, [("web", endpoint())])
    assert in_docker_order(doc, DOCKER_SUMMARY_KEYS)
    assert doc["Names"] == ["/box"] and doc["Command"] == "sleep 60" and doc["State"] == "running"
    assert abs(doc["Created"] - (time.time() - 10)) <= 2
    assert doc["Status"] == "Up 2 minutes"
    assert doc["Ports"] == [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}, {"PrivatePort": 7000, "Type": "udp"}]
    assert list(doc["NetworkSettings"]["Networks"]) == ["web"]


# -- durations and status ----------------------------------------------------

MIN, HOUR, DAY = 60, 3600, 86400


@pytest.mark.parametrize(
    "seconds, text",
    [
        (-5, "Less than a second"),
        (0, "Less than a second"),
        (0.9, "Less than a second"),
        (1, "1 second"),
        (1.5, "1 second"),
        (2, "2 seconds"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (120, "2 minutes"),
        (59 * MIN + 59, "59 minutes"),
        (60 * MIN, "About an hour"),
        (89 * MIN, "About an hour"),
        (90 * MIN, "2 hours"),  # Go rounds d.Hours() + 0.5 down: 1.5 h -> 2
        (150 * MIN, "3 hours"),  # 2.5 h -> 3 (not banker's rounding to 2)
        (47 * HOUR, "47 hours"),
        (48 * HOUR, "2 days"),
        (13 * DAY, "13 days"),
        (14 * DAY, "2 weeks"),
        (59 * DAY, "8 weeks"),
        (60 * DAY, "2 months"),
        (729 * DAY, "24 months"),
        (730 * DAY, "2 years"),
        (3 * 365 * DAY, "3 years"),
    ],
)
def test_human_duration_matches_go_units(seconds, text):
    assert human_duration(seconds) == text


def test_status_text():
    assert docker_json.status_text(container()) == "Created"
    assert docker_json.status_text(container(status="running", started_at=stamp(3.5))) == "Up 3 seconds"
    assert docker_json.status_text(container(status="running", started_at=stamp(0))) == "Up Less than a second"
    assert docker_json.status_text(container(status="exited", exit_code=137, finished_at=stamp(7200))) == "Exited (137) 2 hours ago"
    assert docker_json.status_text(container(status="exited", exit_code=0, finished_at=stamp(30.5))) == "Exited (0) 30 seconds ago"


def test_status_text_bad_stamp_is_zero():
    assert docker_json.status_text(container(status="running", started_at="garbage")) == "Up Less than a second"


# -- user networks: IPv6, static settings, aliases, links ----------------------


def dual_endpoint(**kw) -> Endpoint:
    return Endpoint(
        **{
            **dict(
                id="e" * 64,
                network_id=NET_ID,
                owner=CID,
                ifname="eth0",
                host_ifname="veth1234567",
                address="172.18.0.5",
                prefixlen=16,
                gateway="172.18.0.1",
                mac="02:42:ac:12:00:05",
                aliases=["db", "store"],
                address6="fd00:1::5",
                prefixlen6=64,
                gateway6="fd00:1::1",
                dns_names=["box", CID[:12], "db", "store"],  # the container's name, short id and aliases
            ),
            **kw,
        }
    )


def test_network_ipv6_config_and_addresses():
    net = bridge_net(enable_ipv6=True, subnet6="fd00:1::/64", gateway6="fd00:1::1", ip_range="172.18.5.0/24")
    doc = docker_json.network(net, [dual_endpoint()], {CID: container()})
    assert doc["EnableIPv6"] is True
    assert doc["IPAM"]["Config"] == [
        {"Subnet": "172.18.0.0/16", "IPRange": "172.18.5.0/24", "Gateway": "172.18.0.1"},
        {"Subnet": "fd00:1::/64", "Gateway": "fd00:1::1"},
    ]
    assert list(doc["IPAM"]["Config"][1]) == ["Subnet", "Gateway"]
    assert doc["Containers"][CID]["IPv6Address"] == "fd00:1::5/64"
    assert doc["Containers"][CID]["IPv4Address"] == "172.18.0.5/16"


def test_endpoint_settings_on_a_user_network():
    ctr = container(attachments=[{"network": NET_ID, "aliases": ["db", "store"], "ip": "172.18.0.5", "ip6": "fd00:1::5", "mac": ""}])
    web = inspect(ctr, [("web", dual_endpoint())], {})["NetworkSettings"]["Networks"]["web"]
    assert in_docker_order(web, DOCKER_ENDPOINT_SETTINGS_KEYS)
    assert web["IPAMConfig"] == {"IPv4Address": "172.18.0.5", "IPv6Address": "fd00:1::5"}
    assert web["Aliases"] == ["db", "store"]
    assert web["DNSNames"] == ["box", CID[:12], "db", "store"]
    assert (web["GlobalIPv6Address"], web["GlobalIPv6PrefixLen"], web["IPv6Gateway"]) == ("fd00:1::5", 64, "fd00:1::1")
    assert web["Links"] is None


def test_endpoint_settings_only_given_static_addresses():
    ctr = container(attachments=[{"network": NET_ID, "aliases": [], "ip": "", "ip6": "fd00:1::5", "mac": ""}])
    web = inspect(ctr, [("web", dual_endpoint(aliases=[], dns_names=["box", CID[:12]]))], {})["NetworkSettings"]["Networks"]["web"]
    assert web["IPAMConfig"] == {"IPv6Address": "fd00:1::5"}
    assert web["Aliases"] is None
    assert web["DNSNames"] == ["box", CID[:12]]


def test_endpoint_settings_on_the_default_bridge_have_no_dns_names():
    ctr = container(network_mode="bridge", attachments=[{"network": NET_ID, "aliases": [], "ip": "", "ip6": "", "mac": ""}])
    settings = inspect(ctr, [("bridge", endpoint())], {})["NetworkSettings"]["Networks"]["bridge"]
    assert (settings["IPAMConfig"], settings["Aliases"], settings["DNSNames"]) == (None, None, None)
    assert (settings["GlobalIPv6Address"], settings["GlobalIPv6PrefixLen"], settings["IPv6Gateway"]) == ("", 0, "")


def test_container_ipv6_default_bridge_and_second_network():
    second = dual_endpoint(id="f" * 64, network_id="m" * 64, ifname="eth1", address="10.8.0.2", gateway="", gateway6="", address6="")
    doc = inspect(container(network_mode="bridge"), [("bridge", dual_endpoint()), ("other", second)], {})
    ns = doc["NetworkSettings"]
    assert in_docker_order(ns, DOCKER_NETWORK_SETTINGS_KEYS)
    assert (ns["GlobalIPv6Address"], ns["GlobalIPv6PrefixLen"], ns["IPv6Gateway"]) == ("fd00:1::5", 64, "fd00:1::1")
    assert (ns["IPAddress"], ns["Gateway"]) == ("172.18.0.5", "172.18.0.1")  # the default bridge's
    assert list(ns["Networks"]) == ["bridge", "other"]
    assert ns["Networks"]["other"]["Gateway"] == "" and ns["Networks"]["other"]["IPAMConfig"] is None


def bridge_endpoint(**kw) -> Endpoint:
    ep = endpoint("172.17.0.2", eid="d" * 64)
    return dataclasses.replace(ep, **{"network_id": "b" * 64, "gateway": "172.17.0.1", "mac": "02:42:ac:11:00:02", **kw})


def default_network(ns: dict) -> dict:
    return {k: ns[k] for k in DEFAULT_NETWORK_KEYS}


def test_deprecated_top_level_fields_come_from_the_default_bridge_only():
    """Docker fills EndpointID ... MacAddress from ``Networks["bridge"]``; empty for any other network (moby getDefaultNetworkSettings)."""
    on_bridge = dict(EndpointID="d" * 64, Gateway="172.17.0.1", GlobalIPv6Address="", GlobalIPv6PrefixLen=0)
    on_bridge |= dict(IPAddress="172.17.0.2", IPPrefixLen=16, IPv6Gateway="", MacAddress="02:42:ac:11:00:02")
    user = dataclasses.replace(endpoint(), ifname="eth1")  # network web, 172.18.0.2

    ns = inspect(container(network_mode="bridge"), [("bridge", bridge_endpoint())], {})["NetworkSettings"]
    assert default_network(ns) == on_bridge
    assert {k: ns["Networks"]["bridge"][k] for k in DEFAULT_NETWORK_KEYS} == on_bridge  # the same information

    ns = inspect(container(), [("web", user)], {})["NetworkSettings"]
    assert default_network(ns) == EMPTY_DEFAULT_NETWORK and ns["Networks"]["web"]["IPAddress"] == "172.18.0.2"

    # bridge + a user network, whichever comes first: the bridge's values (its own Gateway, even when empty)
    bridge_no_route = bridge_endpoint(gateway="", ifname="eth1")
    cases = [([("bridge", bridge_endpoint()), ("web", user)], "172.17.0.1"), ([("web", user), ("bridge", bridge_no_route)], "")]
    for endpoints, gateway in cases:
        ns = inspect(container(), endpoints, {})["NetworkSettings"]
        assert default_network(ns) == on_bridge | {"Gateway": gateway}
        assert in_docker_order(ns, DOCKER_NETWORK_SETTINGS_KEYS)


@pytest.mark.parametrize("mode", ["none", "host", "container:" + "d" * 64])
def test_deprecated_top_level_fields_are_empty_without_an_endpoint(mode):
    ns = inspect(container(network_mode=mode, status="running", sandbox_key="/k"), [], {})["NetworkSettings"]
    assert default_network(ns) == EMPTY_DEFAULT_NETWORK
    assert list(ns) == DOCKER_NETWORK_SETTINGS_KEYS  # every key of API 1.47, in its order


def test_container_links():
    doc = inspect(container(network_mode="bridge"), [("bridge", endpoint())], {}, ["/db:/box/data"])
    assert doc["HostConfig"]["Links"] == ["/db:/box/data"]
    assert in_docker_order(doc["HostConfig"], DOCKER_HOSTCONFIG_KEYS)
    assert inspect(container(), [], {}, [])["HostConfig"]["Links"] is None


def test_container_without_network_has_no_ipv6():
    ns = inspect(container(network_mode="none"), [], {})["NetworkSettings"]
    assert (ns["GlobalIPv6Address"], ns["GlobalIPv6PrefixLen"], ns["IPv6Gateway"]) == ("", 0, "")


def test_summary_networks_carry_endpoint_settings():
    ctr = container(status="running", started_at=stamp(1))
    doc = summary(ctr, [("web", dual_endpoint())])
    assert doc["NetworkSettings"]["Networks"]["web"]["DNSNames"] == ["box", CID[:12], "db", "store"]
