"""Published ports: Docker's ``PortBindings``, host-port reservations, and
who holds a port when a binding fails.

A published host port is reserved by a bound socket that the daemon holds
for as long as the mapping exists (as Docker's port allocator does), so no
host process can take it later and the kernel itself checks conflicts with
host processes; the forwarding itself is an nftables map element, with no
proxy process.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from qiao.engine.errors import Conflict, InvalidParameter
from qiao.kernel.firewall import PortMapping

PROTOS = {
    "tcp": (socket.SOCK_STREAM, socket.IPPROTO_TCP),
    "udp": (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
    "sctp": (socket.SOCK_STREAM, 132),
}
_KEY = re.compile(r"^([0-9]{1,5})(?:/(tcp|udp|sctp))?\Z")  # [0-9], not \d: no other script's digits
_RANGE = re.compile(r"^([0-9]{1,5})(?:-([0-9]{1,5}))?\Z")


@dataclass(frozen=True)
class PortRequest:
    """One container port to publish; host port 0 means "any free port"."""

    proto: str
    container_port: int
    host_ip: str
    host_lo: int
    host_hi: int


def _port(text: str, what: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise InvalidParameter(f"invalid {what} {text}: must be between 1 and 65535")
    return value


def parse_key(key: str) -> tuple[int, str]:
    """``"80/tcp"`` -> (80, "tcp"); the protocol defaults to tcp."""
    m = _KEY.match(key.lower())
    if not m:
        raise InvalidParameter(f"invalid container port {key!r}: expected PORT[/tcp|udp|sctp]")
    return _port(m.group(1), "container port"), m.group(2) or "tcp"


def key(text: str) -> str:
    """A port key checked and in Docker's form: ``"80"`` -> ``"80/tcp"``."""
    port, proto = parse_key(text)
    return f"{port}/{proto}"


def requests(port_bindings: dict[str, list[dict[str, str]]] | None, exposed: Iterable[str] | None, publish_all: bool) -> list[PortRequest]:
    """Validate the bindings asked for ("80/tcp" -> [{host_ip, host_port}]), plus ``-P`` over the exposed ports."""
    out: list[PortRequest] = []
    bindings = dict(port_bindings or {})
    if publish_all:
        for key in exposed or ():
            bindings.setdefault(key, [{"host_ip": "", "host_port": ""}])
    for key, entries in bindings.items():
        cport, proto = parse_key(key)
        for entry in entries or [{}]:
            host_ip = entry.get("host_ip") or "0.0.0.0"
            try:
                if not isinstance(ipaddress.ip_address(host_ip), ipaddress.IPv4Address):
                    raise InvalidParameter(f"invalid host address {host_ip}: only IPv4 host addresses are supported")
            except ValueError:
                raise InvalidParameter(f"invalid host address {host_ip!r}") from None
            text = entry.get("host_port") or ""
            lo = hi = 0
            if text:
                m = _RANGE.match(text)
                if not m:
                    raise InvalidParameter(f"invalid host port {text!r}: expected PORT or START-END")
                lo = _port(m.group(1), "host port")
                hi = _port(m.group(2), "host port") if m.group(2) else lo
                if hi < lo:
                    raise InvalidParameter(f"invalid host port range {text}: end before start")
            out.append(PortRequest(proto, cport, host_ip, lo, hi))
    return out


def holder(proto: str, port: int) -> str:
    """Name the host process bound to (proto, port), as ``pid N (comm)``."""
    inodes = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    if not inodes:
        return "another process"
    targets = {f"socket:[{i}]" for i in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                        with open(f"/proc/{pid}/comm") as c:
                            return f"process {pid} ({c.read().strip()})"
    return "another process"


class PortReservations:
    """Bound sockets holding published host ports, by owner (container id)."""

    def __init__(self) -> None:
        self._held: dict[str, list[socket.socket]] = {}
        self._index: dict[tuple[str, int], list[tuple[str, str]]] = {}  # (proto, port) -> [(host ip, owner)]
        self._keys: dict[str, list[tuple[str, int]]] = {}  # owner -> its index keys

    def owner_of(self, proto: str, host_ip: str, port: int) -> str | None:
        for ip, owner in self._index.get((proto, port), []):
            if ip == host_ip or "0.0.0.0" in (ip, host_ip):
                return owner
        return None

    def reserve(self, owner: str, req: PortRequest, describe: Any = str) -> int:
        """Bind the requested (or any free) host port for ``owner``; returns the port."""
        candidates = range(req.host_lo, req.host_hi + 1) if req.host_lo else [0]
        failure = ""
        for port in candidates:
            other = self.owner_of(req.proto, req.host_ip, port) if port else None
            if other is not None:
                failure = f"port is already allocated to {describe(other)}"
                continue
            try:
                sock = self._bind(req, port)
            except OSError as exc:
                if exc.errno == 99:  # EADDRNOTAVAIL
                    raise InvalidParameter(f"Bind for {req.host_ip}:{port} failed: {req.host_ip} is not an address of this host") from None
                failure = f"port is already in use by {holder(req.proto, port)}"
                continue
            bound = sock.getsockname()[1]
            self._hold(owner, sock)
            self._index.setdefault((req.proto, bound), []).append((req.host_ip, owner))
            self._keys.setdefault(owner, []).append((req.proto, bound))
            return bound
        where = f"{req.host_lo}-{req.host_hi}" if req.host_hi != req.host_lo else str(req.host_lo)
        raise Conflict(f"Bind for {req.host_ip}:{where}/{req.proto} failed: {failure}")

    def _bind(self, req: PortRequest, port: int) -> socket.socket:
        """A socket bound to the host port (0: any free one); OSError when that fails."""
        kind, number = PROTOS[req.proto]
        sock = socket.socket(socket.AF_INET, kind, number)
        try:
            sock.bind((req.host_ip, port))
        except OSError:
            sock.close()
            raise
        return sock

    def _hold(self, owner: str, sock: socket.socket) -> None:
        """Keep the bound socket: the port stays ours until :meth:`release`."""
        self._held.setdefault(owner, []).append(sock)

    def adopt(self, owner: str, mapping: PortMapping) -> None:
        """Re-reserve a mapping of a container that survived a daemon restart."""
        with contextlib.suppress(Conflict):
            self.reserve(owner, PortRequest(mapping.proto, mapping.container_port, mapping.host_ip, mapping.host_port, mapping.host_port))

    def release(self, owner: str) -> None:
        for sock in self._held.pop(owner, []):
            sock.close()
        for key in self._keys.pop(owner, []):
            left = [(ip, o) for ip, o in self._index.get(key, []) if o != owner]
            if left:
                self._index[key] = left
            else:
                self._index.pop(key, None)


class Publisher:
    """Publishing an endpoint's ports, for any owner (a container, a CNI
    attachment): reserve the host ports, add the DNAT map elements in one
    nft transaction, flush stale UDP flows; and the reverse.  One instance
    per engine, so two owners never get the same host port."""

    def __init__(self, firewall: Any, host: Any, describe: Any = str):
        self.firewall, self.host = firewall, host
        self.reservations = PortReservations()
        self.describe = describe  # owner -> how a conflict names it ("container web (0123456789ab)")

    def publish(self, steps: Any, owner: str, wanted: list[PortRequest], address: str) -> list[PortMapping]:
        if not wanted:
            return []

        def reserve() -> list[PortMapping]:
            try:
                return [
                    PortMapping(r.proto, r.host_ip, self.reservations.reserve(owner, r, self.describe), address, r.container_port)
                    for r in wanted
                ]
            except BaseException:  # a failing step registers no undo: give back the ports reserved before it
                self.reservations.release(owner)
                raise

        mappings: list[PortMapping] = steps.run("reserve-ports", reserve, lambda: self.reservations.release(owner))
        steps.run("publish-ports", lambda: self.firewall.add_ports(mappings), lambda: self.firewall.del_ports(mappings))
        for m in mappings:
            if m.proto == "udp":
                self.host.flush_conntrack(m.proto, m.host_port)
        return mappings

    def unpublish(self, teardown: Any, owner: str, mappings: list[PortMapping]) -> None:
        """Best effort and complete (each step runs; failures go to ``teardown``)."""
        if mappings:
            teardown.run("unpublish-ports", lambda: self.firewall.del_ports(mappings))
        self.reservations.release(owner)
        for m in mappings:
            if m.proto == "udp":
                teardown.run("flush-conntrack", lambda m=m: self.host.flush_conntrack(m.proto, m.host_port))

    def adopt(self, owner: str, mappings: list[PortMapping]) -> None:
        """Re-reserve the mappings of an owner that survived a daemon restart."""
        for m in mappings:
            self.reservations.adopt(owner, m)
