"""What the kernel has now, read for ``qiao topology`` and ``qiao trace``:
links, addresses, routes, the overlay's neighbour and FDB entries, the
interfaces inside sandboxes, and the facts of qiao's nftables table.

Reading only; nothing here changes the kernel.  :class:`LinuxInventory`
reads over netlink (pyroute2: one socket per call, opened and closed on the
calling thread, in the daemon's namespace or, for a sandbox, inside it) and
libnftables (JSON listings).  The result is plain data (:class:`Snapshot`),
so the pictures built from it are tested on fixed snapshots without root.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from qiao.kernel import netns, rtdump

NETNS_RUN_DIR = "/run/netns"
NUD_STATES = {
    0x01: "INCOMPLETE",
    0x02: "REACHABLE",
    0x04: "STALE",
    0x08: "DELAY",
    0x10: "PROBE",
    0x20: "FAILED",
    0x40: "NOARP",
    0x80: "PERMANENT",
}


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str = ""  # bridge, veth, vxlan, ...; "" for none (lo, a NIC)
    mac: str = ""
    mtu: int = 0
    up: bool = False
    master: int = 0  # the bridge's index, for a port
    alias: str = ""
    peer_index: int = 0  # a veth's other end: its index, in the namespace peer_nsid names (-1: this one)
    peer_nsid: int = -1
    isolated: bool = False  # a bridge port with port isolation on
    vni: int = 0  # vxlan: its id, local address and UDP port
    local: str = ""
    port: int = 0
    addresses: tuple[str, ...] = ()  # "a.b.c.d/len", IPv4 then IPv6


@dataclass(frozen=True)
class Route:
    dst: str  # "0.0.0.0/0" for the default route
    gateway: str = ""
    dev: str = ""
    prefsrc: str = ""


@dataclass(frozen=True)
class Neighbour:
    address: str
    mac: str
    state: str
    dev: str


@dataclass(frozen=True)
class Fdb:
    mac: str
    dst: str  # the remote VTEP's underlay address
    dev: str


@dataclass
class Sandbox:
    """The interfaces and routes inside one network namespace; ``error`` when it could not be read."""

    path: str
    links: list[Link] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    error: str = ""


@dataclass
class Firewall:
    """qiao's table as the kernel has it: present at all, its bridges, the
    networks' chains, the published elements ("tcp . 8080" or
    "tcp . 127.0.0.1 . 5432") and every table there is (family, name)."""

    present: bool = False
    bridges: set[str] = field(default_factory=set)
    chains: set[str] = field(default_factory=set)
    published: set[str] = field(default_factory=set)
    tables: list[tuple[str, str]] = field(default_factory=list)
    drop_forward: list[str] = field(default_factory=list)  # "ip filter FORWARD": other tables' forward hooks with policy drop


@dataclass
class Snapshot:
    links: list[Link] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)  # on VXLAN devices
    fdb: list[Fdb] = field(default_factory=list)  # on VXLAN devices
    sandboxes: dict[str, Sandbox] = field(default_factory=dict)
    firewall: Firewall = field(default_factory=Firewall)
    namespaces: dict[int, str] = field(default_factory=dict)  # nsid -> a named namespace's path (/run/netns/NAME)

    def link(self, name: str) -> Link | None:
        return next((link for link in self.links if link.name == name), None)

    def by_index(self, index: int) -> Link | None:
        return next((link for link in self.links if link.index == index), None)


@dataclass(frozen=True)
class Uplink:
    dev: str = ""
    address: str = ""
    outside: str = ""  # the namespace at the other end of the uplink's veth, when it has a name
    outside_address: str = ""


class Inventory(Protocol):
    def snapshot(self, sandboxes: list[str]) -> Snapshot: ...
    def sandbox(self, path: str) -> Sandbox: ...
    def uplink(self) -> Uplink: ...
    def route_get(self, path: str, dst: str, src: str = "", iif: str = "") -> dict[str, Any]: ...


def _links(path: str = "") -> list[Link]:
    """Every link of the namespace at ``path`` ("": the calling thread's), with its addresses."""
    with netns.entered(path) if path else contextlib.nullcontext():
        links, addresses = rtdump.read()
    return [Link(**fields, addresses=tuple(addresses.get(fields["index"], []))) for fields in links]


def _routes(ipr: Any, names: dict[int, str]) -> list[Route]:
    routes = []
    for r in ipr.get_routes(family=socket.AF_INET, table=254):
        dst = r.get_attr("RTA_DST") or "0.0.0.0"
        routes.append(
            Route(
                f"{dst}/{r['dst_len']}",
                r.get_attr("RTA_GATEWAY") or "",
                names.get(r.get_attr("RTA_OIF") or 0, ""),
                r.get_attr("RTA_PREFSRC") or "",
            )
        )
    return routes


def longest_match(routes: list[Route], address: str) -> Route | None:
    """The route the kernel's main table would use for ``address`` (longest prefix)."""
    try:
        addr = ipaddress.IPv4Address(address)
    except ValueError:
        return None
    best: Route | None = None
    for r in routes:
        net = ipaddress.IPv4Network(r.dst, strict=False)
        if addr in net and (best is None or net.prefixlen > ipaddress.IPv4Network(best.dst, strict=False).prefixlen):
            best = r
    return best


class LinuxInventory:
    def __init__(self) -> None:
        from pyroute2 import IPRoute

        self._IPRoute = IPRoute
        self._nft: Any = None
        self._nft_lock = threading.Lock()

    def _open(self, path: str = "") -> Any:
        if not path:
            return self._IPRoute(groups=0)
        with netns.entered(path):
            return self._IPRoute(groups=0)

    def snapshot(self, sandboxes: list[str]) -> Snapshot:
        links = _links()
        names = {link.index: link.name for link in links}
        snap = Snapshot(links=links)
        ipr = self._open()
        try:
            snap.routes = _routes(ipr, names)
            for vx in (link for link in links if link.kind == "vxlan"):
                for n in ipr.get_neighbours(ifindex=vx.index, family=socket.AF_INET):
                    state = NUD_STATES.get(n["state"], str(n["state"]))
                    snap.neighbours.append(Neighbour(n.get_attr("NDA_DST") or "", n.get_attr("NDA_LLADDR") or "", state, vx.name))
                for f in ipr.fdb("dump", ifindex=vx.index):
                    if f.get_attr("NDA_DST"):
                        snap.fdb.append(Fdb(f.get_attr("NDA_LLADDR") or "", f.get_attr("NDA_DST"), vx.name))
            snap.namespaces = self._named_namespaces(ipr)
        finally:
            ipr.close()
        snap.firewall = self.firewall()
        for path in sandboxes:
            snap.sandboxes[path] = self.sandbox(path)
        return snap

    def sandbox(self, path: str) -> Sandbox:
        try:
            return Sandbox(path, _links(path))
        except OSError as exc:
            return Sandbox(path, error=exc.strerror or str(exc))

    @staticmethod
    def _named_namespaces(ipr: Any) -> dict[int, str]:
        """The namespaces named under /run/netns, by the id this namespace knows them by."""
        out: dict[int, str] = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(os.listdir(NETNS_RUN_DIR)):
                path = os.path.join(NETNS_RUN_DIR, entry)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    found = ipr.get_netnsid(fd=fd)
                except Exception:
                    continue
                finally:
                    os.close(fd)
                nsid = (found or {}).get("nsid")
                if isinstance(nsid, int) and nsid >= 0:
                    out.setdefault(nsid, path)
        return out

    def _list(self, what: str) -> list[dict[str, Any]]:
        with self._nft_lock:
            if self._nft is None:
                import nftables

                self._nft = nftables.Nftables()
                self._nft.set_json_output(True)
            rc, out, _err = self._nft.cmd(f"list {what}")
        return json.loads(out).get("nftables", []) if rc == 0 and out else []

    def firewall(self) -> Firewall:
        fw = Firewall()
        fw.tables = [(t["table"]["family"], t["table"]["name"]) for t in self._list("tables") if "table" in t]
        fw.present = ("inet", "qiao") in fw.tables
        for obj in self._list("chains"):
            c = obj.get("chain")
            if c and c.get("hook") == "forward" and c.get("policy") == "drop" and (c["family"], c["table"]) != ("inet", "qiao"):
                fw.drop_forward.append(f"{c['family']} {c['table']} {c['name']}")
        if not fw.present:
            return fw
        for obj in self._list("table inet qiao"):
            if "chain" in obj:
                fw.chains.add(obj["chain"]["name"])
            for kind in ("set", "map"):
                s = obj.get(kind)
                if not s:
                    continue
                elems = [_element_key(e) for e in s.get("elem", [])]
                if s["name"] == "bridges":
                    fw.bridges.update(elems)
                elif s["name"] in ("published", "published_any"):
                    fw.published.update(elems)
        return fw

    def uplink(self) -> Uplink:
        """The interface of the default route, and, when it is a veth whose other
        end is in a named namespace (a lab's underlay, a test's "outside"
        machine), that namespace and its address there: the "outside"."""
        ipr = self._open()
        try:
            oif = next((r.get_attr("RTA_OIF") for r in ipr.get_routes(family=socket.AF_INET, table=254) if r["dst_len"] == 0), None)
            link = next((lk for lk in _links() if lk.index == oif), None) if oif else None
            if link is None:
                return Uplink()
            up = Uplink(link.name, next((a.split("/")[0] for a in link.addresses if ":" not in a), ""))
            if link.kind != "veth" or link.peer_nsid < 0:
                return up
            path = self._named_namespaces(ipr).get(link.peer_nsid, "")
        finally:
            ipr.close()
        if not path:
            return up
        peer = next((p for p in self.sandbox(path).links if p.index == link.peer_index), None)
        address = next((a.split("/")[0] for a in peer.addresses if ":" not in a), "") if peer else ""
        return Uplink(up.dev, up.address, path, address)

    def route_get(self, path: str, dst: str, src: str = "", iif: str = "") -> dict[str, Any]:
        """The route the kernel picks for ``dst`` in the namespace at ``path`` ("" the daemon's), from
        ``src`` coming in on ``iif``, and the neighbour entry of its next hop:
        ``{"dst", "gateway", "dev", "prefsrc", "route", "neighbour": {...}, "fdb": ...}`` or ``{"dst", "error"}``."""
        with netns.entered(path) if path else contextlib.nullcontext():
            ipr = self._IPRoute(groups=0)
            try:
                return self._route_get(ipr, dst, src, iif)
            finally:
                ipr.close()

    @staticmethod
    def _route_get(ipr: Any, dst: str, src: str, iif: str) -> dict[str, Any]:
        def name(index: int) -> str:
            try:
                return socket.if_indextoname(index)
            except OSError:
                return str(index)

        query: dict[str, Any] = {"dst": dst}
        if src:
            query["src"] = src
        if iif:
            with contextlib.suppress(OSError):
                query["iif"] = socket.if_nametoindex(iif)
        try:
            got = ipr.route("get", **query)[0]
        except Exception as exc:
            code = getattr(exc, "code", 0)
            return {"dst": dst, "error": os.strerror(code) if code else str(exc)}
        oif = got.get_attr("RTA_OIF") or 0
        gateway = got.get_attr("RTA_GATEWAY") or ""
        out: dict[str, Any] = {
            "dst": dst,
            "gateway": gateway,
            "dev": name(oif) if oif else "",
            "prefsrc": got.get_attr("RTA_PREFSRC") or "",
        }
        if got["type"] == 2:  # RTN_LOCAL
            out["local"] = True
            return out
        routes = [
            Route(f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}", r.get_attr("RTA_GATEWAY") or "", name(r.get_attr("RTA_OIF") or 0))
            for r in ipr.get_routes(family=socket.AF_INET, table=254)
        ]
        entry = longest_match(routes, dst)
        if entry is not None:
            out["route"] = entry.dst + (f" via {entry.gateway}" if entry.gateway else "") + f" dev {entry.dev}"
        hop = gateway or dst
        for n in ipr.get_neighbours(ifindex=oif, family=socket.AF_INET):
            if n.get_attr("NDA_DST") == hop:
                mac = n.get_attr("NDA_LLADDR") or ""
                out["neighbour"] = {"address": hop, "mac": mac, "state": NUD_STATES.get(n["state"], str(n["state"]))}
                for f in ipr.fdb("dump", ifindex=oif) if mac else ():
                    if f.get_attr("NDA_LLADDR") == mac and f.get_attr("NDA_DST"):
                        out["fdb"] = {"mac": mac, "dst": f.get_attr("NDA_DST")}
        return out


def _element_key(elem: Any) -> str:
    """An element of a set or map as text: its key, concatenations joined by " . "."""
    if isinstance(elem, list):  # a map element: [key, data]
        elem = elem[0]
    if isinstance(elem, dict):
        if "concat" in elem:
            return " . ".join(str(_element_key(e)) for e in elem["concat"])
        if "elem" in elem:
            return _element_key(elem["elem"]["val"])
        return json.dumps(elem, sort_keys=True)
    return str(elem)
