"""Docker Engine API JSON for networks and containers, in Docker's key
order: the engine's models turned into the wire format, at the edge."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable
from typing import Any

from qiao.engine.containers import ContainerView
from qiao.engine.models import Container, Endpoint, Network
from qiao.images.reference import HOST_IMAGE
from qiao.units import human_duration


def network(
    net: Network,
    endpoints: list[Endpoint],
    containers: dict[str, Container],
    shown_as: dict[str, str] | None = None,
    waiting: Iterable[Container] = (),
) -> dict[str, Any]:
    """``shown_as``: other engines' container ids for endpoint owners (CNI, dockerd attachments).
    ``waiting``: created containers that will join the network when started: listed with
    empty addresses (dockerd lists endpoints only; qiao shows what keeps the network in use)."""
    config: list[dict[str, str]] = []
    if net.subnet:
        entry = {"Subnet": net.cluster_subnet or net.subnet}  # overlay: the range shared by all hosts
        if net.ip_range:
            entry["IPRange"] = net.ip_range
        entry["Gateway"] = net.gateway or ""
        config.append(entry)
    if net.subnet6:
        config.append({"Subnet": net.subnet6, "Gateway": net.gateway6 or ""})
    attached = {}
    for ep in endpoints:
        ctr = containers.get(ep.owner)
        attached[(shown_as or {}).get(ep.owner, ep.owner)] = {
            "Name": ctr.name if ctr else (ep.dns_names[0] if ep.dns_names else ""),  # else: a CNI pod's name
            "EndpointID": ep.id,
            "MacAddress": ep.mac,
            "IPv4Address": f"{ep.address}/{ep.prefixlen}",
            "IPv6Address": f"{ep.address6}/{ep.prefixlen6}" if ep.address6 else "",
        }
    for ctr in waiting:
        attached.setdefault(ctr.id, {"Name": ctr.name, "EndpointID": "", "MacAddress": "", "IPv4Address": "", "IPv6Address": ""})
    return {
        "Name": net.name,
        "Id": net.id,
        "Created": net.created,
        "Scope": net.scope,  # "global": Docker <= 19.03's cluster-store networks
        "Driver": net.driver,
        "EnableIPv4": True,  # qiao has no IPv6-only networks
        "EnableIPv6": net.enable_ipv6,
        "IPAM": {"Driver": "default", "Options": None if net.name == "bridge" else {}, "Config": config},
        "Internal": net.internal,
        "Attachable": net.attachable,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": attached,
        "Options": dict(net.options),
        "Labels": dict(net.labels),
    }


def _endpoint_settings(ep: Endpoint, ctr: Container | None = None, user_defined: bool = False) -> dict[str, Any]:
    att = next((a for a in ctr.attachments if a["network"] == ep.network_id), {}) if ctr else {}
    static = {k: v for k, v in (("IPv4Address", att.get("ip")), ("IPv6Address", att.get("ip6"))) if v}
    return {
        "IPAMConfig": static or None,
        "Links": None,
        "Aliases": list(ep.aliases) or None,
        "MacAddress": ep.mac,
        "DriverOpts": None,
        "NetworkID": ep.network_id,
        "EndpointID": ep.id,
        "Gateway": ep.gateway,
        "IPAddress": ep.address,
        "IPPrefixLen": ep.prefixlen,
        "IPv6Gateway": ep.gateway6,
        "GlobalIPv6Address": ep.address6,
        "GlobalIPv6PrefixLen": ep.prefixlen6,
        "DNSNames": list(ep.dns_names) if user_defined else None,
    }


def _idle_settings(att: dict[str, Any], network_id: str, user_defined: bool) -> dict[str, Any]:
    """A network the container is attached to but has no endpoint on (it is not running), as dockerd shows it."""
    static = {k: v for k, v in (("IPv4Address", att.get("ip")), ("IPv6Address", att.get("ip6"))) if v}
    return {
        "IPAMConfig": static or None,
        "Links": None,
        "Aliases": list(att.get("aliases", ())) or None,
        "MacAddress": att.get("mac", ""),
        "DriverOpts": None,
        "NetworkID": network_id,
        "EndpointID": "",
        "Gateway": "",
        "IPAddress": "",
        "IPPrefixLen": 0,
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "DNSNames": None,
    }


def networks_of(view: ContainerView) -> dict[str, Any]:
    """``NetworkSettings.Networks``: the endpoints, then the networks joined at the next start."""
    ctr = view.container
    out: dict[str, Any] = {name: _endpoint_settings(ep, ctr, name != "bridge") for name, ep in view.endpoints}
    joined = {ep.network_id for _n, ep in view.endpoints}
    for att in ctr.attachments:
        name = view.network_names.get(att["network"])
        if name and att["network"] not in joined:
            out[name] = _idle_settings(att, att["network"], name != "bridge")
    return out


def port_bindings(ctr: Container) -> dict[str, Any]:
    """``HostConfig.PortBindings``, as asked."""
    return {key: [{"HostIp": b["host_ip"], "HostPort": b["host_port"]} for b in entries] for key, entries in ctr.port_bindings.items()}


def _port_key(m: dict[str, Any]) -> str:
    return f"{m['container_port']}/{m['proto']}"


def ports(ctr: Container) -> dict[str, Any]:
    """``NetworkSettings.Ports``: every exposed port, with its host bindings or null."""
    if not ctr.running:
        return {}
    out: dict[str, Any] = dict.fromkeys(ctr.exposed_ports)
    for m in ctr.ports:
        out.setdefault(_port_key(m), None)
        out[_port_key(m)] = (out[_port_key(m)] or []) + [{"HostIp": m["host_ip"], "HostPort": str(m["host_port"])}]
    return out


def container(view: ContainerView) -> dict[str, Any]:
    """``GET /containers/{id}/json``."""
    ctr, endpoints, files, links = view.container, view.endpoints, view.files, view.links
    # Docker fills the deprecated top-level fields from the default "bridge" network only
    # (moby daemon/inspect.go getDefaultNetworkSettings); empty for every other network and mode.
    default = next((ep for name, ep in endpoints if name == "bridge"), None)
    networks = networks_of(view)
    for name, ep in endpoints:
        if ep.id in view.link_notes:  # qiao's own key: what happened to the link behind its back
            networks[name]["QiaoLink"] = view.link_notes[ep.id]
    if not networks and not ctr.joined_to:
        networks[ctr.network_mode] = {"NetworkID": "", "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "MacAddress": ""}
    # Docker's keys, with the values qiao has: a feature qiao lacks shows its zero value (wire refuses any other).
    return {
        "Id": ctr.id,
        "Created": ctr.created,
        "Path": ctr.argv[0] if ctr.argv else "",
        "Args": ctr.argv[1:],
        "State": {
            "Status": state(ctr),
            "Running": ctr.running or ctr.restarting,  # as dockerd: a restarting container counts as running
            "Paused": ctr.paused,
            "Restarting": ctr.restarting,
            "OOMKilled": False,
            "Dead": False,
            "Pid": ctr.pid if ctr.running else 0,
            "ExitCode": ctr.exit_code,
            "Error": ctr.error,
            "StartedAt": ctr.started_at,
            "FinishedAt": ctr.finished_at,
        },
        "Image": ctr.image_id,
        "ResolvConfPath": files.get("resolv.conf", ""),
        "HostnamePath": files.get("hostname", ""),
        "HostsPath": files.get("hosts", ""),
        "LogPath": files.get("log", ""),
        "Name": "/" + ctr.name,
        "RestartCount": ctr.restart_count,
        "Driver": "",  # no storage driver: the command sees the host's filesystem
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": _host_config(ctr, links),
        "GraphDriver": {"Data": None, "Name": ""},
        "Mounts": [],
        "Config": {
            "Hostname": ctr.hostname,
            "Domainname": ctr.domainname,
            "User": ctr.user,
            "AttachStdin": ctr.attach_stdin,
            "AttachStdout": ctr.attach_stdout,
            "AttachStderr": ctr.attach_stderr,
            **({"ExposedPorts": {key: {} for key in ctr.exposed_ports}} if ctr.exposed_ports else {}),  # omitempty, as dockerd
            "Tty": ctr.tty,
            "OpenStdin": ctr.open_stdin,
            "StdinOnce": ctr.stdin_once,
            "Env": list(ctr.env),
            "Cmd": list(ctr.cmd) or None,
            "Image": ctr.image,
            "Volumes": None,
            "WorkingDir": ctr.workdir,
            "Entrypoint": list(ctr.entrypoint) or None,
            "OnBuild": None,
            "Labels": dict(ctr.labels),
            **({"StopSignal": ctr.stop_signal} if ctr.stop_signal else {}),
            **({"StopTimeout": ctr.stop_timeout} if ctr.stop_timeout is not None else {}),
        },
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": ctr.id if ctr.sandbox_key else "",
            "SandboxKey": ctr.sandbox_key,
            "Ports": ports(ctr),
            "HairpinMode": False,  # never set by Docker (deprecated), nor the next four
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None,
            "EndpointID": default.id if default else "",
            "Gateway": default.gateway if default else "",
            "GlobalIPv6Address": default.address6 if default else "",
            "GlobalIPv6PrefixLen": default.prefixlen6 if default else 0,
            "IPAddress": default.address if default else "",
            "IPPrefixLen": default.prefixlen if default else 0,
            "IPv6Gateway": default.gateway6 if default else "",
            "MacAddress": default.mac if default else "",
            "Networks": networks,
        },
    }


def _host_config(ctr: Container, links: list[str]) -> dict[str, Any]:
    """``HostConfig``, every key of API 1.47 in its order but the ``omitempty`` ones qiao leaves empty."""
    return {
        "Binds": None,
        "ContainerIDFile": "",
        "LogConfig": {"Type": "json-file", "Config": {}},  # qiao's log (runtime/logfile) reads as json-file's (docker-py checks)
        "NetworkMode": ctr.network_mode,
        "PortBindings": port_bindings(ctr),
        "RestartPolicy": {"Name": ctr.restart_policy or "no", "MaximumRetryCount": ctr.restart_retries},
        "AutoRemove": ctr.auto_remove,
        "VolumeDriver": "",
        "VolumesFrom": None,
        "ConsoleSize": list(ctr.console_size) or [0, 0],
        "CapAdd": list(ctr.cap_add) or None,
        "CapDrop": list(ctr.cap_drop) or None,
        "CgroupnsMode": "host",  # no cgroup namespace of its own
        "Dns": list(ctr.dns) or None,
        "DnsOptions": list(ctr.dns_options) or None,
        "DnsSearch": list(ctr.dns_search) or None,
        "ExtraHosts": list(ctr.extra_hosts) or None,
        "GroupAdd": None,
        "IpcMode": "host",  # qiao makes network, UTS and mount namespaces only
        "Cgroup": "",
        "Links": links or None,
        "OomScoreAdj": 0,
        "PidMode": "host",
        "Privileged": ctr.privileged,
        "PublishAllPorts": ctr.publish_all,
        "ReadonlyRootfs": False,
        "SecurityOpt": None,
        "UTSMode": "",
        "UsernsMode": "",
        "ShmSize": 0,
        "Isolation": "",
        "CpuShares": 0,
        "Memory": 0,
        "NanoCpus": 0,
        "CgroupParent": "",
        "BlkioWeight": 0,
        "BlkioWeightDevice": None,
        "BlkioDeviceReadBps": None,
        "BlkioDeviceWriteBps": None,
        "BlkioDeviceReadIOps": None,
        "BlkioDeviceWriteIOps": None,
        "CpuPeriod": 0,
        "CpuQuota": 0,
        "CpuRealtimePeriod": 0,
        "CpuRealtimeRuntime": 0,
        "CpusetCpus": "",
        "CpusetMems": "",
        "Devices": None,
        "DeviceCgroupRules": None,
        "DeviceRequests": None,
        "MemoryReservation": 0,
        "MemorySwap": 0,
        "MemorySwappiness": None,
        "OomKillDisable": None,
        "PidsLimit": None,
        "Ulimits": None,
        "CpuCount": 0,
        "CpuPercent": 0,
        "IOMaximumIOps": 0,
        "IOMaximumBandwidth": 0,
        "MaskedPaths": None,
        "ReadonlyPaths": None,
    }


def _since(stamp: str) -> float:
    try:
        return time.time() - datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def state(ctr: Container) -> str:
    """Docker's one-word state: created, running, paused, restarting, exited."""
    return "paused" if ctr.running and ctr.paused else ctr.status


def status_text(ctr: Container, link_notes: dict[str, str] | None = None) -> str:
    if ctr.running:
        notes = sorted({note.split(" ", 1)[0].rstrip(":") for note in (link_notes or {}).values()})
        paused = " (Paused)" if ctr.paused else ""
        return "Up " + human_duration(_since(ctr.started_at)) + paused + (f" (link {', '.join(notes)})" if notes else "")
    if ctr.restarting:
        return f"Restarting ({ctr.exit_code}) {human_duration(_since(ctr.finished_at))} ago"
    if ctr.status == "exited":
        return f"Exited ({ctr.exit_code}) {human_duration(_since(ctr.finished_at))} ago"
    return "Created"


def command_text(cmd: list[str]) -> str:
    """``Command`` of a list entry, as dockerd writes it: the arguments holding a space in single quotes."""
    return " ".join([*cmd[:1], *(f"'{arg}'" if " " in arg else arg for arg in cmd[1:])])


def container_summary(view: ContainerView, size: bool = False) -> dict[str, Any]:
    """An element of ``GET /containers/json`` (``size``: with ``SizeRw`` and ``SizeRootFs``,
    0 here: the command writes to the host's filesystem, nothing of the container's own)."""
    ctr = view.container
    return {
        "Id": ctr.id,
        "Names": ["/" + ctr.name],
        "Image": ctr.image or HOST_IMAGE,
        "ImageID": ctr.image_id,
        "Command": command_text(ctr.argv),
        "Created": int(time.time() - _since(ctr.created)),
        "Ports": _summary_ports(ctr),
        **({"SizeRw": 0, "SizeRootFs": 0} if size else {}),
        "Labels": dict(ctr.labels),
        "State": state(ctr),
        "Status": status_text(ctr, view.link_notes),
        "HostConfig": {"NetworkMode": ctr.network_mode},
        "NetworkSettings": {"Networks": networks_of(view)},
        "Mounts": [],
    }


def _summary_ports(ctr: Container) -> list[dict[str, Any]]:
    """``Ports`` of ``GET /containers/json``."""
    if not ctr.running:
        return []
    out = [{"IP": m["host_ip"], "PrivatePort": m["container_port"], "PublicPort": m["host_port"], "Type": m["proto"]} for m in ctr.ports]
    published = {_port_key(m) for m in ctr.ports}
    for key in ctr.exposed_ports:
        if key not in published:
            port, proto = key.split("/")
            out.append({"PrivatePort": int(port), "Type": proto})
    return out
