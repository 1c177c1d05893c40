"""nftables tracing for one probe packet: a temporary table that marks it,
and the kernel's trace events, read over raw netlink.

``meta nftrace set 1`` on a packet makes every nftables chain it passes
afterwards, in this network namespace, report what it did: one message per
rule that matched (with the rule's handle and verdict), per ``return`` from
a regular chain and per base-chain policy.  The kernel multicasts them on
``NETLINK_NETFILTER`` group ``NFNLGRP_NFTRACE`` as ``NFT_MSG_TRACE``
(attributes ``NFTA_TRACE_*`` of ``linux/netfilter/nf_tables.h``); the first
message of each base chain the packet enters also carries the interfaces
and the network and transport headers as that hook saw them, so NAT shows
as headers that change between hooks.  pyroute2 knows the message number
but has no parser for it, and ``nft monitor trace`` prints text, so the
messages are parsed here, as :mod:`qiao.kernel.nftwatch` parses the
ruleset notifications.

The kernel clears the trace bit when a packet changes network namespace
(``skb_scrub_packet``), so the probe is marked in the namespace whose
chains are to be seen: :func:`arm_script` is one table per family
(``inet`` and ``bridge``) named ``qiao_trace_<id>``, added in one
transaction, with a marking rule on the probe's match at the first hooks a
packet can enter by (prerouting and output, priority -500: before qiao's
chains and conntrack) and empty *observer* chains on every other hook at
priority 500 (after qiao's chains and NAT), whose policy events say where
the packet went next.  Nothing in them changes a verdict.  The tables are
deleted in one transaction afterwards; a daemon killed meanwhile leaves
them, and the next start deletes every ``qiao_trace_*`` table
(:func:`leftover_script`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import select
import socket
import struct
from dataclasses import dataclass

from qiao.kernel import nftwatch

NFNLGRP_NFTRACE = 9
NFT_MSG_TRACE = 17
TABLE_PREFIX = "qiao_trace_"

# enum nft_trace_attributes
TRACE_TABLE, TRACE_CHAIN, TRACE_RULE_HANDLE, TRACE_TYPE, TRACE_VERDICT, TRACE_ID = 1, 2, 3, 4, 5, 6
TRACE_LL_HEADER, TRACE_NETWORK_HEADER, TRACE_TRANSPORT_HEADER = 7, 8, 9
TRACE_IIF, TRACE_OIF, TRACE_NFPROTO, TRACE_POLICY = 10, 12, 15, 16
TRACE_TYPES = {1: "policy", 2: "return", 3: "rule"}
VERDICT_CODE, VERDICT_CHAIN = 1, 2
VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "icmp": socket.IPPROTO_ICMP}

# The hooks a packet can enter a namespace by (marking) and the others (observing).
MARK_HOOKS = {"inet": ("prerouting", "output"), "bridge": ("prerouting", "output")}
SEEN_HOOKS = {"inet": ("input", "forward", "postrouting"), "bridge": ("input", "forward", "postrouting")}


@dataclass(frozen=True)
class Match:
    """What identifies the probe: its protocol, addresses and ports (``ident``: an ICMP echo's id).
    Empty addresses match any; a remote host's watch knows only the ports."""

    proto: str  # tcp | udp | icmp
    saddr: str = ""
    daddr: str = ""
    sport: int = 0
    dport: int = 0
    ident: int = 0

    def nft(self) -> str:
        """The match as nft expressions (valid in the inet and bridge families)."""
        parts = []
        if self.saddr:
            parts.append(f"ip saddr {ipaddress.IPv4Address(self.saddr)}")
        if self.daddr:
            parts.append(f"ip daddr {ipaddress.IPv4Address(self.daddr)}")
        if self.proto == "icmp":
            parts.append(f"icmp type echo-request icmp id {int(self.ident)}")
        else:
            parts.append(f"{self.proto} sport {int(self.sport)} {self.proto} dport {int(self.dport)}")
            if self.proto == "tcp":
                parts.append("tcp flags & (syn | ack) == syn")  # the first packet only, not the handshake's rest
        return " ".join(parts)

    def sees(self, packet: Packet | None) -> bool:
        """Whether a traced packet is this probe, before or after NAT (which keeps
        the source port, or the echo id, but may change anything else)."""
        if packet is None or packet.proto != self.proto:
            return False
        if self.proto == "icmp":
            return packet.ident == self.ident
        return packet.sport == self.sport


@dataclass(frozen=True)
class Packet:
    """The IPv4 and transport header fields of a traced packet."""

    saddr: str
    daddr: str
    proto: str
    sport: int = 0
    dport: int = 0
    ident: int = 0  # ICMP echo id
    ttl: int = 0


@dataclass(frozen=True)
class TraceEvent:
    """One ``NFT_MSG_TRACE``: a chain's rule, return or policy for a traced packet.

    ``packet``, ``iif`` and ``oif`` come with the first event of each base
    chain the packet enters (``walk``); the reader copies them to the events
    after it of the same trace id (one per packet)."""

    trace_id: int
    family: str  # of the table: inet, bridge, ip, ...
    table: str
    chain: str
    kind: str  # rule | return | policy
    handle: int = 0  # the rule's (kind "rule")
    verdict: str = ""  # accept, drop, continue, jump, goto, return, ...
    target: str = ""  # the chain of a jump or goto
    iif: int = 0
    oif: int = 0
    nfproto: int = 0
    packet: Packet | None = None
    walk: bool = False  # the first event of a base chain's walk (it carries the interfaces and headers)


def parse_packet(network: bytes, transport: bytes) -> Packet | None:
    """An IPv4 header and the start of its transport header (None for other protocols)."""
    if len(network) < 20 or network[0] >> 4 != 4:
        return None
    proto_number = network[9]
    saddr, daddr = str(ipaddress.IPv4Address(network[12:16])), str(ipaddress.IPv4Address(network[16:20]))
    names = {v: k for k, v in PROTOCOLS.items()}
    proto = names.get(proto_number, str(proto_number))
    if proto in ("tcp", "udp") and len(transport) >= 4:
        sport, dport = struct.unpack_from("!HH", transport)
        return Packet(saddr, daddr, proto, sport, dport, ttl=network[8])
    if proto == "icmp" and len(transport) >= 6:
        return Packet(saddr, daddr, proto, ident=struct.unpack_from("!H", transport, 4)[0], ttl=network[8])
    return Packet(saddr, daddr, proto, ttl=network[8])


def _u32(raw: bytes | None) -> int:
    return struct.unpack("!L", raw[:4])[0] if raw and len(raw) >= 4 else 0


def parse(data: bytes) -> list[TraceEvent]:
    """The trace events in one datagram (``data``), in order."""
    events = []
    for kind, family, body in nftwatch._messages(data):
        if kind != NFT_MSG_TRACE:
            continue
        attrs = nftwatch._attrs(body)
        verdict, target = "", ""
        if TRACE_VERDICT in attrs:
            nested = nftwatch._attrs(attrs[TRACE_VERDICT])
            code = struct.unpack("!l", nested[VERDICT_CODE][:4])[0] if VERDICT_CODE in nested else None
            verdict = VERDICTS.get(code, str(code)) if code is not None else ""
            target = nested.get(VERDICT_CHAIN, b"").rstrip(b"\0").decode(errors="replace")
        kind_name = TRACE_TYPES.get(_u32(attrs.get(TRACE_TYPE)), "unknown")
        if kind_name == "policy":
            verdict = VERDICTS.get(_u32(attrs.get(TRACE_POLICY)), "accept")
        packet = None
        if TRACE_NETWORK_HEADER in attrs:
            packet = parse_packet(attrs[TRACE_NETWORK_HEADER], attrs.get(TRACE_TRANSPORT_HEADER, b""))
        handle = attrs.get(TRACE_RULE_HANDLE)
        events.append(
            TraceEvent(
                trace_id=_u32(attrs.get(TRACE_ID)),
                family=nftwatch.FAMILIES.get(family, str(family)),
                table=attrs.get(TRACE_TABLE, b"").rstrip(b"\0").decode(errors="replace"),
                chain=attrs.get(TRACE_CHAIN, b"").rstrip(b"\0").decode(errors="replace"),
                kind=kind_name,
                handle=struct.unpack("!Q", handle[:8])[0] if handle and len(handle) >= 8 else 0,
                verdict=verdict,
                target=target,
                iif=_u32(attrs.get(TRACE_IIF)),
                oif=_u32(attrs.get(TRACE_OIF)),
                nfproto=_u32(attrs.get(TRACE_NFPROTO)),
                packet=packet,
                walk=any(a in attrs for a in (TRACE_LL_HEADER, TRACE_NETWORK_HEADER, TRACE_IIF, TRACE_OIF)),
            )
        )
    return events


class TraceReader:
    """The trace events of this network namespace (the one of the thread that makes it).

    Subscribing is what turns tracing on in the kernel (a static key, on while
    anyone listens), so a reader is opened before the probe is marked."""

    def __init__(self, rcvbuf: int = 4 << 20) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, nftwatch.NETLINK_NETFILTER)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (root)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._sock.bind((0, 0))
        self._sock.setsockopt(nftwatch.SOL_NETLINK, nftwatch.NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTRACE)
        self._sock.setblocking(False)
        self._last: dict[int, TraceEvent] = {}  # trace id -> its event that carried the packet
        self.lost = False  # the socket overflowed: events are missing

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, timeout: float) -> list[TraceEvent]:
        """What arrived, waiting up to ``timeout`` s for the first of it."""
        ready, _, _ = select.select([self._sock], [], [], max(0.0, timeout))
        if not ready:
            return []
        events: list[TraceEvent] = []
        while True:
            try:
                data = self._sock.recv(1 << 17)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno != 105:  # ENOBUFS
                    raise
                self.lost = True
                continue
            for ev in parse(data):
                events.append(self._fill(ev))

    def _fill(self, ev: TraceEvent) -> TraceEvent:
        """Interfaces and headers from the first event of the same chain walk."""
        if ev.walk:
            self._last[ev.trace_id] = ev
            return ev
        first = self._last.get(ev.trace_id)
        if first is None:
            return ev
        return dataclasses.replace(ev, iif=first.iif, oif=first.oif, packet=first.packet)

    def close(self) -> None:
        self._sock.close()


def new_table_name() -> str:
    return TABLE_PREFIX + os.urandom(4).hex()


def arm_script(name: str, match: Match) -> str:
    """The tables that mark the probe and observe every hook, for one transaction."""
    lines = []
    for family in ("inet", "bridge"):
        lines.append(f"add table {family} {name}")
        for hook in MARK_HOOKS[family]:
            lines.append(f"add chain {family} {name} mark-{hook} {{ type filter hook {hook} priority -500; policy accept; }}")
            lines.append(f"add rule {family} {name} mark-{hook} {match.nft()} meta nftrace set 1")
        for hook in SEEN_HOOKS[family]:
            lines.append(f"add chain {family} {name} seen-{hook} {{ type filter hook {hook} priority 500; policy accept; }}")
    return "\n".join(lines) + "\n"


def disarm_script(name: str) -> str:
    return f"delete table inet {name}\ndelete table bridge {name}\n"


def leftover_script(tables: list[tuple[str, str]]) -> str:
    """Deletes the trace tables among ``tables`` ((family, name) of every table there is)."""
    return "".join(f"delete table {family} {name}\n" for family, name in tables if name.startswith(TABLE_PREFIX))


def is_trace_table(family: str, name: str) -> bool:
    return family in MARK_HOOKS and name.startswith(TABLE_PREFIX)
