"""The overlay's kernel port: VXLAN devices and their per-peer entries.

Kept apart from :mod:`qiao.kernel.host` so that only the overlay driver
sees it; :class:`StubVxlan` records the same facts in a :class:`StubHost`'s
link table for tests without root.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from typing import Any, Protocol


class Vxlan(Protocol):
    def underlay(self, advertise: str | None) -> tuple[str, str, int]: ...
    def ensure_vxlan(self, name: str, vni: int, local_ip: str, port: int, mtu: int, mac: str, underlay: str, address: str) -> None: ...
    def set_peer(self, dev: str, subnet: str, vtep_ip: str, mac: str, public_ip: str) -> None: ...
    def del_peer(self, dev: str, subnet: str, vtep_ip: str, mac: str) -> None: ...
    def peers(self, dev: str) -> dict[str, tuple[str, str]]: ...


class LinuxVxlan:
    """The overlay data plane, as flannel's vxlan backend programs it: one
    VXLAN device per network (learning off), and per remote host a route
    ``subnet via vtep-ip dev vxlan onlink``, a permanent neighbour entry
    ``vtep-ip -> vtep-mac`` and an FDB entry ``vtep-mac -> public ip``:
    no flooding, no multicast, no miss callbacks."""

    def __init__(self, netlink: Any) -> None:
        """``netlink``: the host's rtnetlink socket (``LinuxHost.netlink``): one socket, one owner thread."""
        self._ipr = netlink

    def underlay(self, advertise: str | None) -> tuple[str, str, int]:
        """(interface, IPv4 address, MTU) to use for VXLAN: the interface or
        address given, else the one of the default route."""
        links = {link["index"]: link for link in self._ipr.get_links()}
        addrs = [(a["index"], a.get("address")) for a in self._ipr.get_addr(family=socket.AF_INET)]
        if advertise:
            for index, address in addrs:
                name = links[index].get("ifname")
                if advertise in (name, address):
                    return name, address, links[index].get("mtu")
            raise ValueError(f"--cluster-advertise {advertise}: no such interface or address here")
        for route in self._ipr.get_routes(family=socket.AF_INET, table=254):
            if route["dst_len"] == 0 and route.get("oif"):
                index = route.get("oif")
                address = next((a for i, a in addrs if i == index), None)
                if address:
                    return links[index].get("ifname"), address, links[index].get("mtu")
        for index, address in addrs:
            if links[index].get("ifname") != "lo":
                return links[index].get("ifname"), address, links[index].get("mtu")
        raise ValueError("no underlay interface with an IPv4 address: give --cluster-advertise")

    def ensure_vxlan(self, name: str, vni: int, local_ip: str, port: int, mtu: int, mac: str, underlay: str, address: str) -> None:
        found = self._ipr.link_lookup(ifname=name)
        if found:
            link = self._ipr.get_links(found[0])[0]
            info = link.get(("IFLA_LINKINFO", "IFLA_INFO_DATA")) or {}
            same = link.get("address") == mac and getattr(info, "get", lambda k: None)("IFLA_VXLAN_ID") in (vni, None)
            if not same:  # incompatible leftover (flannel's vxlanLinksIncompat): recreate
                self._ipr.link("del", index=found[0])
                found = []
        if not found:
            parent = self._ipr.link_lookup(ifname=underlay)[0]
            self._ipr.link(
                "add",
                ifname=name,
                kind="vxlan",
                vxlan_id=vni,
                vxlan_local=local_ip,
                vxlan_port=port,
                vxlan_learning=0,
                vxlan_link=parent,
                mtu=mtu,
                address=mac,
            )
        index = self._ipr.link_lookup(ifname=name)[0]
        have = {(a.get("address"), a["prefixlen"]) for a in self._ipr.get_addr(index=index, family=socket.AF_INET)}
        if (address, 32) not in have:
            self._ipr.addr("add", index=index, address=address, prefixlen=32)
        self._ipr.link("set", index=index, state="up")

    def set_peer(self, dev: str, subnet: str, vtep_ip: str, mac: str, public_ip: str) -> None:
        index = self._ipr.link_lookup(ifname=dev)[0]
        self._ipr.neigh("replace", ifindex=index, dst=vtep_ip, lladdr=mac, state=0x80)  # NUD_PERMANENT
        try:  # "append" as flannel ("replace" is not supported for VXLAN FDB entries); the MAC encodes the address
            self._ipr.fdb("append", ifindex=index, lladdr=mac, dst=public_ip, state=0x80)
        except Exception as exc:
            if getattr(exc, "code", None) != errno.EEXIST:
                raise
        self._ipr.route("replace", dst=subnet, gateway=vtep_ip, oif=index, flags=4)  # RTNH_F_ONLINK

    def del_peer(self, dev: str, subnet: str, vtep_ip: str, mac: str) -> None:
        found = self._ipr.link_lookup(ifname=dev)
        if not found:
            return
        for call in (
            lambda: self._ipr.route("del", dst=subnet, oif=found[0]),
            lambda: self._ipr.neigh("del", ifindex=found[0], dst=vtep_ip, lladdr=mac),
            lambda: self._ipr.fdb("del", ifindex=found[0], lladdr=mac),
        ):
            with contextlib.suppress(Exception):  # try all three, as flannel does
                call()

    def peers(self, dev: str) -> dict[str, tuple[str, str]]:
        """Remote subnets routed through ``dev``: subnet -> (vtep ip, vtep mac)."""
        found = self._ipr.link_lookup(ifname=dev)
        if not found:
            return {}
        macs = {n.get("dst"): n.get("lladdr") for n in self._ipr.get_neighbours(ifindex=found[0], family=socket.AF_INET)}
        out = {}
        for route in self._ipr.get_routes(family=socket.AF_INET, oif=found[0], table=254):
            gw = route.get("gateway")
            if gw and route["dst_len"]:
                out[f"{route.get('dst')}/{route['dst_len']}"] = (gw, macs.get(gw, ""))
        return out


class StubVxlan:
    """In memory, in the link table of a StubHost (``links``)."""

    def __init__(self, links: dict[str, dict[str, Any]]) -> None:
        self.links = links

    def underlay(self, advertise: str | None) -> tuple[str, str, int]:
        return ("eth0", advertise or "192.0.2.10", 1500)

    def ensure_vxlan(self, name: str, vni: int, local_ip: str, port: int, mtu: int, mac: str, underlay: str, address: str) -> None:
        self.links[name] = {"kind": "vxlan", "vni": vni, "local": local_ip, "mac": mac, "address": address, "peers": {}}

    def set_peer(self, dev: str, subnet: str, vtep_ip: str, mac: str, public_ip: str) -> None:
        self.links.setdefault(dev, {}).setdefault("peers", {})[subnet] = (vtep_ip, mac, public_ip)

    def del_peer(self, dev: str, subnet: str, vtep_ip: str, mac: str) -> None:
        self.links.get(dev, {}).get("peers", {}).pop(subnet, None)

    def peers(self, dev: str) -> dict[str, tuple[str, str]]:
        return {s: (p[0], p[1]) for s, p in self.links.get(dev, {}).get("peers", {}).items()}
