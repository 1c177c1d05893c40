"""Links and addresses of a network namespace, read with two raw rtnetlink dumps.

``qiao topology`` looks into every sandbox.  Through pyroute2 0.9 that costs
~4 ms a namespace (a socket with an asyncio loop of its own, and every
attribute of every message decoded), half a second for 100 containers;
these two dumps (``RTM_GETLINK``, ``RTM_GETADDR``) decode only the few
attributes the picture needs and take a fraction of a millisecond.  Reading
only, as :mod:`qiao.kernel.nftwatch`; everything that changes the kernel
goes through pyroute2.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

from qiao.kernel.nftwatch import _attrs

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR = 16, 18, 20, 22
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_LINK_NETNSID = 1, 3, 4, 5, 10, 18, 20, 37
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_DATA = 1, 2, 5
IFLA_BRPORT_ISOLATED = 33
IFLA_VXLAN_ID, IFLA_VXLAN_LOCAL, IFLA_VXLAN_PORT = 1, 4, 15
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP = 0x1

_HDR = struct.Struct("=LHHLL")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")


def _dump(sock: socket.socket, kind: int, body: bytes, seq: int) -> list[tuple[int, bytes]]:
    """(message type, payload) of every answer to one dump request."""
    sock.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
    out: list[tuple[int, bytes]] = []
    while True:
        data = sock.recv(1 << 16)
        off = 0
        while off + _HDR.size <= len(data):
            length, mtype, _flags, mseq, _pid = _HDR.unpack_from(data, off)
            if length < _HDR.size:
                return out
            payload = data[off + _HDR.size : off + length]
            off += (length + 3) & ~3
            if mseq != seq:
                continue
            if mtype == NLMSG_DONE:
                return out
            if mtype == NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                if code:
                    raise OSError(code, f"rtnetlink dump: error {code}")
                continue
            out.append((mtype, payload))


def _text(raw: bytes | None) -> str:
    return raw.rstrip(b"\0").decode(errors="replace") if raw else ""


def _u32(raw: bytes | None) -> int:
    return struct.unpack("=I", raw[:4])[0] if raw and len(raw) >= 4 else 0


def read() -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    """The links (dicts of :class:`qiao.kernel.inventory.Link`'s fields, without
    ``addresses``) and the addresses by link index ("a/len"; IPv6 link-local
    left out) of the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        sock.settimeout(5)
        links = [_link(p) for t, p in _dump(sock, RTM_GETLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0), 1) if t == RTM_NEWLINK]
        addresses: dict[int, list[str]] = {}
        for t, p in _dump(sock, RTM_GETADDR, _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0), 2):
            if t != RTM_NEWADDR or len(p) < _IFADDR.size:
                continue
            family, prefixlen, _flags, _scope, index = _IFADDR.unpack_from(p)
            attrs = _attrs(p[_IFADDR.size :])
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if not raw:
                continue
            address = ipaddress.ip_address(raw)
            if family == socket.AF_INET6 and address.is_link_local:
                continue
            addresses.setdefault(index, []).append(f"{address}/{prefixlen}")
        for index in addresses:  # IPv4 first, as pyroute2's two dumps gave them
            addresses[index].sort(key=lambda a: ":" in a)
        return links, addresses
    finally:
        sock.close()


def _link(payload: bytes) -> dict[str, Any]:
    _family, _type, index, flags, _change = _IFINFO.unpack_from(payload)
    attrs = _attrs(payload[_IFINFO.size :])
    info = _attrs(attrs.get(IFLA_LINKINFO, b""))
    kind = _text(info.get(IFLA_INFO_KIND))
    data = _attrs(info.get(IFLA_INFO_DATA, b"")) if kind == "vxlan" else {}
    port = _attrs(info.get(IFLA_INFO_SLAVE_DATA, b""))
    mac = attrs.get(IFLA_ADDRESS, b"")
    nsid = attrs.get(IFLA_LINK_NETNSID)
    local = data.get(IFLA_VXLAN_LOCAL)
    return {
        "index": index,
        "name": _text(attrs.get(IFLA_IFNAME)),
        "kind": kind,
        "mac": ":".join(f"{b:02x}" for b in mac) if len(mac) == 6 else "",
        "mtu": _u32(attrs.get(IFLA_MTU)),
        "up": bool(flags & IFF_UP),
        "master": _u32(attrs.get(IFLA_MASTER)),
        "alias": _text(attrs.get(IFLA_IFALIAS)),
        "peer_index": _u32(attrs.get(IFLA_LINK)) if kind == "veth" else 0,
        "peer_nsid": struct.unpack("=i", nsid[:4])[0] if nsid and len(nsid) >= 4 else -1,
        "isolated": bool(port.get(IFLA_BRPORT_ISOLATED, b"\0")[:1] != b"\0"),
        "vni": _u32(data.get(IFLA_VXLAN_ID)),
        "local": str(ipaddress.IPv4Address(local)) if local and len(local) == 4 else "",
        "port": struct.unpack("!H", data[IFLA_VXLAN_PORT][:2])[0] if IFLA_VXLAN_PORT in data else 0,
    }
