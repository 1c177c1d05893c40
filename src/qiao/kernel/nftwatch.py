"""nftables change notifications and the ruleset generation, over raw netlink.

The kernel numbers the ruleset of a network namespace: every committed
nftables transaction bumps that *generation* by exactly one.  After each
commit it multicasts, on ``NETLINK_NETFILTER`` group ``NFNLGRP_NFTABLES``,
one message per object the transaction touched (table, chain, rule, set,
element, ...), then one ``NFT_MSG_NEWGEN`` carrying the new generation.  In
every object message, attribute 1 is the name of the object's table, and the
``nfgenmsg`` header gives its family; so a listener learns, per generation,
which tables changed, without listing anything.

:class:`GenQuery` asks for the current generation (``NFT_MSG_GETGEN``);
:class:`Watch` reads the notifications.  Both are plain sockets of the
network namespace of the thread that creates them, and need no library.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from dataclasses import dataclass

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NLMSG_ERROR = 2
NLM_F_REQUEST = 1

FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}

_HDR = struct.Struct("=LHHLL")  # struct nlmsghdr
_GEN = struct.Struct("=BBH")  # struct nfgenmsg (family, version, res_id)
_ATTR = struct.Struct("=HH")  # struct nlattr


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    i = 0
    while i + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, i)
        if length < _ATTR.size:
            break
        out.setdefault(kind & 0x3FFF, data[i + _ATTR.size : i + length])
        i += (length + 3) & ~3
    return out


def _messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, family, attributes) of each netlink message in ``data``."""
    out = []
    off = 0
    while off + _HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, off)
        if length < _HDR.size:
            break
        body = data[off + _HDR.size : off + length]
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
            if code:
                raise OSError(code, os.strerror(code))
        elif kind >> 8 == NFNL_SUBSYS_NFTABLES and len(body) >= _GEN.size:
            family = _GEN.unpack_from(body)[0]
            out.append((kind & 0xFF, family, body[_GEN.size :]))
        off += (length + 3) & ~3
    return out


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    sock.bind((0, 0))
    return sock


class GenQuery:
    """``NFT_MSG_GETGEN`` on a socket of its own (callers serialise)."""

    def __init__(self) -> None:
        self._sock = _socket()
        self._sock.settimeout(2)
        self._seq = 0

    def generation(self) -> int:
        self._seq += 1
        kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
        self._sock.send(_HDR.pack(_HDR.size + _GEN.size, kind, NLM_F_REQUEST, self._seq, 0) + _GEN.pack(socket.AF_UNSPEC, 0, 0))
        while True:
            data = self._sock.recv(65536)
            for kind, _family, attrs in _messages(data):
                gen = _attrs(attrs).get(NFTA_GEN_ID)
                if kind == NFT_MSG_NEWGEN and gen is not None and _HDR.unpack_from(data)[3] == self._seq:
                    return int(struct.unpack("!L", gen[:4])[0])

    def close(self) -> None:
        self._sock.close()


@dataclass(frozen=True)
class Event:
    """One notification: a generation (``gen``), an object of a table
    (``family``, ``table``), or ``lost`` (the socket overflowed)."""

    gen: int | None = None
    family: str = ""
    table: str = ""
    lost: bool = False


class Watch:
    """The nftables notifications of this network namespace."""

    def __init__(self, rcvbuf: int = 8 << 20) -> None:
        self._sock = _socket()
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (root): a whole reset's worth
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        self._sock.setblocking(False)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.closed = False

    def read(self, timeout: float | None) -> list[Event]:
        """What arrived, waiting up to ``timeout`` s for the first of it ([] on timeout or close)."""
        ready, _, _ = select.select([self._sock.fileno(), self._wake_r], [], [], timeout)
        if self.closed or self._sock.fileno() not in ready:
            return []
        events: list[Event] = []
        while True:
            try:
                data = self._sock.recv(1 << 17)  # one skb: notifications are batched up to a page or so
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                events.append(Event(lost=True))
                continue
            for kind, family, body in _messages(data):
                attrs = _attrs(body)
                if kind == NFT_MSG_NEWGEN:
                    gen = attrs.get(NFTA_GEN_ID)
                    if gen is not None:
                        events.append(Event(gen=int(struct.unpack("!L", gen[:4])[0])))
                elif 1 in attrs:  # every object message names its table in attribute 1
                    events.append(Event(family=FAMILIES.get(family, str(family)), table=attrs[1].rstrip(b"\0").decode(errors="replace")))

    def close(self) -> None:
        self.closed = True
        os.write(self._wake_w, b"x")

    def release(self) -> None:
        """Close the descriptors (after the reader has stopped)."""
        self._sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
