"""The embedded resolver: one UDP and one TCP socket per user network, bound
to the network's gateway address, port 53, in the host namespace (as
aardvark-dns does; containers' resolv.conf names the gateway).

Local names are answered from an in-memory table per network (``Zone``)
that the engine keeps current record by record: a run, rm, connect or
disconnect changes one endpoint's names, whatever the network's size, and a
query costs one dict lookup and no store access.  Other names go to the host's upstream
resolvers, all queried in parallel with a short timeout; the upstream list
follows changes to the host's resolv.conf.  A query from outside the
network's subnets gets no answer at all.

dnslib parses and builds the messages (a small, pure-Python, well-kept
library; writing DNS wire format by hand is where resolvers get bugs).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dnslib import AAAA, PTR, QTYPE, RCODE, RR, A, DNSRecord

from qiao.engine.etcfiles import host_nameservers

log = logging.getLogger("qiao.dns")
TTL = 600  # Docker's embedded DNS answers with 600 s
UPSTREAM_TIMEOUT = 2.0


Record = tuple[list[str], list[str]]  # (names, addresses) of one endpoint


@dataclass
class Zone:
    """What one network resolves: names -> addresses, and who may ask.

    Changed in place by the engine (``put``/``remove`` one endpoint's record,
    ``replace_group`` for a driver's remote names) while the resolver thread
    reads it: each name's list is replaced, never mutated, so a reader sees
    the old list or the new one."""

    gateways: list[str]
    subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    internal: bool = False
    names: dict[str, list[str]] = field(default_factory=dict)  # lower-case name -> addresses (v4 and v6)
    reverse: dict[str, str] = field(default_factory=dict)  # in-addr.arpa / ip6.arpa name -> name
    _records: dict[Hashable, tuple[list[str], list[tuple[str, str]], str]] = field(
        default_factory=dict, repr=False
    )  # key -> (names, (address, ptr), first name)
    _claims: dict[str, list[str]] = field(default_factory=dict, repr=False)  # ptr -> first names of its endpoints, oldest first
    _groups: dict[str, set[Hashable]] = field(default_factory=dict, repr=False)
    upstreams: dict[str, list[str]] = field(default_factory=dict)  # client address -> its own resolvers (--dns)
    _upstream_keys: dict[Hashable, list[str]] = field(default_factory=dict, repr=False)  # key -> the client addresses it set

    def upstreams_of(self, client: str) -> list[str] | None:
        """A container's ``--dns`` servers (Docker's embedded DNS forwards to them); None: the host's."""
        return self.upstreams.get(client.split("%")[0])

    def allows(self, client: str) -> bool:
        addr = ipaddress.ip_address(client.split("%")[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.subnets)

    def put(self, key: Hashable, names: list[str], addresses: list[str], upstreams: list[str] | None = None) -> None:
        """Set one endpoint's record (replacing what ``key`` had); ``upstreams``: where
        queries from its addresses for other names go (its container's ``--dns``)."""
        self.remove(key)
        if upstreams:
            self._upstream_keys[key] = list(addresses)
            self.upstreams.update({a: list(upstreams) for a in addresses})
        if not names:
            return
        lowered = [n.lower().rstrip(".") for n in names]
        pointers = [(a, ipaddress.ip_address(a).reverse_pointer) for a in addresses]
        self._records[key] = (lowered, pointers, names[0])
        for name in lowered:
            self.names[name] = [*self.names.get(name, ()), *addresses]
        for _address, ptr in pointers:
            claims = self._claims.setdefault(ptr, [])
            claims.append(names[0])
            self.reverse.setdefault(ptr, names[0])

    def remove(self, key: Hashable) -> None:
        for address in self._upstream_keys.pop(key, ()):
            self.upstreams.pop(address, None)
        record = self._records.pop(key, None)
        if record is None:
            return
        lowered, pointers, first = record
        for name in lowered:
            left = list(self.names.get(name, ()))
            for address, _ptr in pointers:
                with contextlib.suppress(ValueError):
                    left.remove(address)
            if left:
                self.names[name] = left
            else:
                self.names.pop(name, None)
        for _address, ptr in pointers:
            claims = self._claims.get(ptr, [])
            with contextlib.suppress(ValueError):
                claims.remove(first)
            if claims:
                self.reverse[ptr] = claims[0]
            else:
                self._claims.pop(ptr, None)
                self.reverse.pop(ptr, None)

    def replace_group(self, group: str, records: Iterable[Record]) -> None:
        """Set a group of records at once (a driver's names from other hosts):
        only the records that changed are touched."""
        wanted = {(group, tuple(names), tuple(addresses)): (names, addresses) for names, addresses in records}
        have = self._groups.get(group, set())
        for key in have - wanted.keys():
            self.remove(key)
        for key in wanted.keys() - have:
            self.put(key, *wanted[key])
        self._groups[group] = set(wanted)


def build_zone(gateways: list[str], subnets: list[str], internal: bool, records: Iterable[Record]) -> Zone:
    """``records``: (names, addresses) per endpoint; a name may map to several endpoints."""
    zone = Zone(gateways, [ipaddress.ip_network(s) for s in subnets], internal)
    for n, (names, addresses) in enumerate(records):
        zone.put(n, names, addresses)
    return zone


class Upstreams:
    """The host's nameservers, re-read when /etc/resolv.conf changes."""

    def __init__(self, path: str = "/etc/resolv.conf", exclude: set[str] | None = None):
        self.path = path
        self.exclude = exclude if exclude is not None else set()
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._servers: list[str] = []
        self._lock = threading.Lock()  # forwards run in parallel: none may see the list before its first read

    def servers(self) -> list[str]:
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= 1.0:
                self._checked = now
                try:
                    st = os.stat(self.path)
                    stamp = (st.st_mtime, st.st_ino)
                except OSError:
                    stamp = None
                if stamp != self._stamp:
                    self._stamp = stamp
                    self._servers = host_nameservers(self.path)[:3]
            servers = self._servers
        return [s for s in servers if s not in self.exclude]


class Resolver:
    def __init__(self, resolv_conf: str = "/etc/resolv.conf"):
        self.zones: dict[str, Zone] = {}  # network id -> zone
        self._by_fd: dict[int, tuple[socket.socket, str, str]] = {}  # fd -> (socket, network id, udp|tcp)
        self._socks: dict[tuple[str, str], list[socket.socket]] = {}  # (network id, gateway) -> sockets
        self._gateways: set[str] = set()
        self.upstreams = Upstreams(resolv_conf, self._gateways)
        self._poll = select.epoll()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="dns-forward")
        threading.Thread(target=self._loop, name="dns", daemon=True).start()

    # -- configuration (called by the engine under its lock) -------------

    def set_zone(self, network_id: str, zone: Zone) -> None:
        with self._lock:
            old = self.zones.get(network_id)
            self.zones[network_id] = zone
            for gw in set(old.gateways if old else []) - set(zone.gateways):
                self._close(network_id, gw)
            for gw in zone.gateways:
                if (network_id, gw) not in self._socks:
                    self._open(network_id, gw)

    def drop_zone(self, network_id: str) -> None:
        with self._lock:
            zone = self.zones.pop(network_id, None)
            for gw in zone.gateways if zone else []:
                self._close(network_id, gw)

    def _open(self, network_id: str, gateway: str) -> None:
        family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
        socks = []
        try:
            udp = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(udp)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            udp.bind((gateway, 53))
            tcp = socket.socket(family, socket.SOCK_STREAM)
            socks.append(tcp)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((gateway, 53))
            tcp.listen(64)
        except OSError as exc:
            for s in socks:
                s.close()
            log.error("DNS for network %s cannot listen on %s:53: %s", network_id[:12], gateway, exc)
            return
        for s, kind in zip(socks, ("udp", "tcp"), strict=True):
            s.setblocking(False)
            self._by_fd[s.fileno()] = (s, network_id, kind)
            self._poll.register(s.fileno(), select.EPOLLIN)
        self._socks[(network_id, gateway)] = socks
        self._gateways.add(gateway)

    def _close(self, network_id: str, gateway: str) -> None:
        for s in self._socks.pop((network_id, gateway), []):
            with contextlib.suppress(KeyError, OSError):
                self._poll.unregister(s.fileno())
            self._by_fd.pop(s.fileno(), None)
            s.close()
        self._gateways.discard(gateway)

    # -- serving ---------------------------------------------------------

    def _loop(self) -> None:
        while True:
            for fd, _ in self._poll.poll():
                entry = self._by_fd.get(fd)
                if entry is None:
                    continue
                sock, network_id, kind = entry
                try:
                    if kind == "udp":
                        self._udp(sock, network_id)
                    else:
                        conn, addr = sock.accept()
                        self._pool.submit(self._tcp, conn, addr, network_id)
                except (BlockingIOError, InterruptedError):
                    continue
                except Exception:
                    log.exception("DNS query handling failed")

    def _udp(self, sock: socket.socket, network_id: str) -> None:
        data, addr = sock.recvfrom(4096)
        zone = self.zones.get(network_id)
        if zone is None or not zone.allows(addr[0]):
            return  # not a client of this network: no answer at all
        reply = self.answer(zone, data)
        if reply is None:
            self._pool.submit(self._forward_udp, sock, addr, data, zone.upstreams_of(addr[0]))
        elif reply:
            sock.sendto(reply, addr)

    def _forward_udp(self, sock: socket.socket, addr: tuple, data: bytes, servers: list[str] | None) -> None:
        with contextlib.suppress(OSError):
            sock.sendto(self.forward(data, servers), addr)

    def _tcp(self, conn: socket.socket, addr: tuple, network_id: str) -> None:
        with conn:
            conn.settimeout(5)
            zone = self.zones.get(network_id)
            if zone is None or not zone.allows(addr[0]):
                return
            try:
                head = conn.recv(2, socket.MSG_WAITALL)
                if len(head) < 2:
                    return
                (length,) = struct.unpack("!H", head)
                data = conn.recv(length, socket.MSG_WAITALL)
                reply = self.answer(zone, data)
                if reply is None:
                    reply = self.forward(data, zone.upstreams_of(addr[0]))
                if reply:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                return

    def answer(self, zone: Zone, data: bytes) -> bytes | None:
        """The reply to a query about a local name, None to forward it, b"" to drop it."""
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return b""  # not DNS: drop it
        q = query.q
        name = str(q.qname).rstrip(".").lower()
        qtype = QTYPE[q.qtype]
        reply = query.reply()
        if qtype == "PTR" and name in zone.reverse:
            reply.add_answer(RR(q.qname, QTYPE.PTR, rdata=PTR(zone.reverse[name] + "."), ttl=TTL))
            return reply.pack()
        addresses = zone.names.get(name)
        if addresses is None:
            if zone.internal:  # no way out: nobody else can answer
                reply.header.rcode = RCODE.NXDOMAIN
                return reply.pack()
            return None
        for address in addresses:
            v6 = ":" in address
            if qtype in ("A", "ANY") and not v6:
                reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(address), ttl=TTL))
            elif qtype in ("AAAA", "ANY") and v6:
                reply.add_answer(RR(q.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=TTL))
        return reply.pack()  # no matching record type: NOERROR with no answer (NODATA)

    def forward(self, data: bytes, servers: list[str] | None = None) -> bytes:
        """Ask every upstream (the host's, or ``servers``) at once; the first answer wins (SERVFAIL after the timeout)."""
        servers = servers if servers is not None else self.upstreams.servers()
        socks = []
        try:
            for server in servers:
                family = socket.AF_INET6 if ":" in server else socket.AF_INET
                s = socket.socket(family, socket.SOCK_DGRAM)
                s.setblocking(False)
                socks.append(s)
                with contextlib.suppress(OSError):
                    s.sendto(data, (server, 53))
            deadline = time.monotonic() + UPSTREAM_TIMEOUT
            while socks and (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select(socks, [], [], left)
                for s in ready:
                    try:
                        reply = s.recv(65535)
                    except OSError:
                        socks.remove(s)
                        s.close()
                        continue
                    if reply[:2] == data[:2]:
                        return reply
        finally:
            for s in socks:
                s.close()
        try:
            failed = DNSRecord.parse(data).reply()
            failed.header.rcode = RCODE.SERVFAIL
            return failed.pack()
        except Exception:
            return b""
