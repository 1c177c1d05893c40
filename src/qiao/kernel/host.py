"""The host-side kernel port: links, addresses, routes, namespaces, sysctls.

:class:`LinuxHost` does the work over netlink (pyroute2) with one long-lived
socket for the host namespace, owned by one thread (:class:`_Netlink`), and
a short-lived one opened *inside* a sandbox when its interfaces are
configured.  :class:`StubHost` keeps the same facts in memory for tests
without root.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import queue
import secrets
import socket
import threading
import types
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address
from typing import Any, Protocol

from qiao.kernel import netns

log = logging.getLogger("qiao.host")

ALIAS_PREFIX = "qiao:"
IPAddress = IPv4Address | IPv6Address
COUNTERS = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped", "tx_bytes", "tx_packets", "tx_errors", "tx_dropped")
IFA_F_NODAD = 0x02  # IPv6 addresses usable at once: qiao's IPAM already guarantees uniqueness


@dataclass(frozen=True)
class Iface:
    """How to configure one interface inside a sandbox."""

    ifname: str
    address: str
    prefixlen: int
    gateway: str = ""  # set on the interface that carries the default route
    address6: str = ""
    prefixlen6: int = 0
    gateway6: str = ""


@dataclass(frozen=True)
class Peer:
    """The sandbox end of a veth pair."""

    ifname: str
    mac: str
    mtu: int


class Host(Protocol):
    def ensure_bridge(
        self, name: str, address: str, prefixlen: int, mtu: int, v6: tuple[str, int] | None = None, owner: str = ""
    ) -> bool: ...
    def delete_link(self, name: str) -> None: ...
    def retire_link(self, name: str) -> None: ...
    def settle(self, timeout: float) -> None: ...
    def link_exists(self, name: str) -> bool: ...
    def link_kind(self, name: str) -> str | None: ...
    def link_mac(self, name: str) -> str | None: ...
    def sandbox_link(self, netns_path: str, ifname: str) -> tuple[str, list[str]] | None: ...
    def sandbox_counters(self, netns_path: str) -> dict[str, dict[str, int]]: ...
    def owned_links(self) -> dict[str, str]: ...
    def create_netns(self, path: str) -> None: ...
    def pin_netns(self, source: str, path: str) -> None: ...
    def namespace_id(self, path: str) -> int: ...
    def destroy_netns(self, path: str) -> None: ...
    def plug_veth(self, host_ifname: str, bridge: str, netns_path: str, peer: Peer, owner: str, isolated: bool = False) -> None: ...
    def bridge_netfilter(self) -> bool: ...
    def configure_sandbox(self, netns_path: str, iface: Iface | None) -> None: ...
    def set_default_route(self, netns_path: str, gateway: str, gateway6: str = "") -> None: ...
    def reserved_networks(self) -> list[IPv4Network]: ...
    def addresses(self) -> list[IPAddress]: ...
    def enable_forwarding(self, ipv6: bool = False) -> None: ...
    def flush_conntrack(self, proto: str, port: int) -> None: ...


def bridge_mac() -> str:
    """A random locally administered unicast MAC, as Docker gives docker0, so a
    bridge does not take its ports' addresses (and change with them)."""
    mac = bytearray(secrets.token_bytes(6))
    mac[0] = (mac[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in mac)


def _missing(exc: Exception) -> bool:
    return getattr(exc, "code", None) in (errno.ENODEV, errno.ENOENT, errno.ESRCH)


def drop_orphans(ipr: Any) -> None:
    """Drop the netlink messages a long-lived pyroute2 ``IPRoute`` read for no request.

    pyroute2 0.9 ends a ``get`` (``link_lookup(ifname=...)``, ``get_links(index)``)
    at its one reply and frees the sequence number; the kernel's ACK that follows
    (the request carries ``NLM_F_ACK``) is then filed under sequence 0, the queue of
    multicast events, which nothing reads: 36 bytes of heap per lookup, for the
    daemon's life.  With ``groups=0`` that queue holds nothing else.
    """
    with contextlib.suppress(AttributeError, KeyError):  # another pyroute2 layout: nothing to drop
        orphans = ipr.asyncore.local.msg_queue.queues[0]
        while not orphans.empty():
            orphans.get_nowait()
            orphans.task_done()


class _Netlink:
    """The host namespace's rtnetlink socket: one pyroute2 ``IPRoute``, used
    by one thread only, which runs every call for the other threads.

    pyroute2 0.9 keeps an ``IPRoute``'s socket per *thread*: a thread calling
    an ``IPRoute`` made by another opens a socket of its own (and a new asyncio
    loop for every call), and that socket stays open until ``IPRoute.close()``,
    long after the thread is gone.  qiaod serves each request on a new thread,
    so one ``IPRoute`` shared by them left a netlink socket behind per request
    that touched the host: one per container start.  Here the daemon has one
    socket whatever its threads do; a call costs one thread hand-off (~30 us).
    Calls are serialised, as the engine lock serialises changes anyway.
    """

    def __init__(self, factory: Callable[[], Any], name: str = "netlink") -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[Any], Any], Future[Any]]] = queue.SimpleQueue()
        opened: Future[Any] = Future()
        self._thread = threading.Thread(target=self._serve, args=(factory, opened), name=name, daemon=True)
        self._thread.start()
        self._ipr = opened.result()  # a failure to open raises here, in the constructor's caller

    def _serve(self, factory: Callable[[], Any], opened: Future[Any]) -> None:
        try:
            ipr = factory()  # on this thread, in the namespace the daemon started in: the socket's owner
        except BaseException as exc:
            opened.set_exception(exc)
            return
        opened.set_result(ipr)
        while True:
            call, result = self._calls.get()
            try:
                value = call(ipr)
                # A lazily read dump would be read on the caller's thread: read it here.
                result.set_result(tuple(value) if isinstance(value, types.GeneratorType) else value)
            except BaseException as exc:
                result.set_exception(exc)
            drop_orphans(ipr)

    def run(self, call: Callable[[Any], Any]) -> Any:
        """``call(ipr)`` on the owner thread; its result, or its exception raised here."""
        if threading.current_thread() is self._thread:
            return call(self._ipr)
        result: Future[Any] = Future()
        self._calls.put((call, result))
        return result.result()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        """``netlink.link(...)`` is ``ipr.link(...)``, run on the owner thread."""

        def method(*args: Any, **kwargs: Any) -> Any:
            return self.run(lambda ipr: getattr(ipr, name)(*args, **kwargs))

        return method


class LinuxHost:
    def __init__(self) -> None:
        from pyroute2 import IPRoute  # heavy: only the daemon pays for it

        # groups=0: no multicast. pyroute2 subscribes an IPRoute to link, address and route
        # events by default and queues every one it reads (sequence 0) for a reader that never
        # comes: on a long-lived socket, a few hundred bytes of heap per veth added or deleted.
        self._IPRoute = functools.partial(IPRoute, groups=0)
        # For any thread (the VXLAN port shares it); the sandbox and retirer sockets below are per call / per thread.
        self.netlink = self._ipr = _Netlink(self._IPRoute)
        self._bridges: dict[str, int] = {}  # bridge name -> ifindex
        self._retiring: list[int] = []  # ifindexes for the retirer thread to delete, oldest first
        self._retire_cond = threading.Condition()
        # Started here, in the daemon's own network namespace, which the thread keeps.
        threading.Thread(target=self._retire_loop, name="link-retirer", daemon=True).start()

    def _index(self, name: str) -> int | None:
        found = self._ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def link_exists(self, name: str) -> bool:
        return self._index(name) is not None

    def link_kind(self, name: str) -> str | None:
        """``bridge``, ``veth``, ...; "" for a link of no kind (lo, a NIC); None when there is no such link."""
        index = self._index(name)
        if index is None:
            return None
        info = self._ipr.get_links(index)[0].get_attr("IFLA_LINKINFO")
        return (info.get_attr("IFLA_INFO_KIND") if info else None) or ""

    def link_mac(self, name: str) -> str | None:
        index = self._index(name)
        return None if index is None else self._ipr.get_links(index)[0].get("address")

    def sandbox_link(self, netns_path: str, ifname: str) -> tuple[str, list[str]] | None:
        """One interface inside a sandbox: its MAC and its addresses (``a/len``); None when absent."""
        with netns.entered(netns_path):
            ipr = self._IPRoute()
        try:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                return None
            link = ipr.get_links(found[0])[0]
            addresses = [f"{a.get('address')}/{a['prefixlen']}" for a in ipr.get_addr(index=found[0])]
            return link.get("address") or "", addresses
        finally:
            ipr.close()

    def sandbox_counters(self, netns_path: str) -> dict[str, dict[str, int]]:
        """Traffic counters of every interface in a sandbox but ``lo`` (the kernel's 64-bit
        link statistics), by interface name, as ``docker stats`` reports them."""
        with netns.entered(netns_path):
            ipr = self._IPRoute()
        try:
            out = {}
            for link in ipr.get_links():
                name, stats = link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_STATS64")
                if name != "lo" and stats is not None:
                    out[name] = {key: int(stats[key]) for key in COUNTERS}
            return out
        finally:
            ipr.close()

    def ensure_bridge(self, name: str, address: str, prefixlen: int, mtu: int, v6: tuple[str, int] | None = None, owner: str = "") -> bool:
        index = self._index(name)
        created = index is None
        if created:
            self._ipr.link("add", ifname=name, kind="bridge", mtu=mtu, address=bridge_mac())
            index = self._index(name)
        if owner:  # so a restart after a crash mid-create can find and remove it; an adopted bridge is ours now
            self._ipr.link("set", index=index, ifalias=ALIAS_PREFIX + owner)
        have = {(a.get("address"), a["prefixlen"]) for a in self._ipr.get_addr(index=index, family=2)}
        if (address, prefixlen) not in have:
            self._ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        if v6:
            have6 = {(a.get("address"), a["prefixlen"]) for a in self._ipr.get_addr(index=index, family=socket.AF_INET6)}
            if v6 not in have6:
                self._ipr.addr("add", index=index, address=v6[0], prefixlen=v6[1], flags=IFA_F_NODAD)
        self._ipr.link("set", index=index, state="up")
        self._write_sysctl(f"/proc/sys/net/ipv6/conf/{name}/accept_ra", "0", missing_ok=True)
        # Lets the host reach published ports through 127.0.0.1: DNAT sends those
        # packets out of the bridge with a loopback source, then masquerade fixes it.
        self._write_sysctl(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "1")
        if index is not None:
            self._bridges[name] = index
        return created

    def delete_link(self, name: str) -> None:
        self._bridges.pop(name, None)
        try:
            self._ipr.link("del", ifname=name)  # by name: the kernel resolves it, no lookup round trip
        except Exception as exc:
            if not _missing(exc):
                raise

    def retire_link(self, name: str) -> None:
        """Delete a link off the caller's path.  Unregistering a device costs
        the kernel ~17 ms, mostly RCU grace periods, that ``rm`` or
        ``disconnect`` need not wait for: the link is resolved to its ifindex
        now (a name can be taken again at once, an ifindex is never reused)
        and deleted by the retirer thread.  A daemon killed before that leaves
        a tagged link of a forgotten endpoint, which the next start removes."""
        index = self._index(name)
        if index is None:
            return
        with self._retire_cond:
            self._retiring.append(index)
            self._retire_cond.notify_all()

    def settle(self, timeout: float) -> None:
        """Wait until every retired link is gone (a daemon's shutdown)."""
        with self._retire_cond:
            self._retire_cond.wait_for(lambda: not self._retiring, timeout)

    def _retire_loop(self) -> None:
        ipr = self._IPRoute()
        while True:
            with self._retire_cond:
                self._retire_cond.wait_for(lambda: bool(self._retiring))
                index = self._retiring[0]
            try:
                ipr.link("del", index=index)
            except Exception as exc:
                if not _missing(exc):
                    log.warning("deleting link %d failed: %s", index, exc)
            drop_orphans(ipr)
            with self._retire_cond:
                self._retiring.pop(0)
                self._retire_cond.notify_all()

    def owned_links(self) -> dict[str, str]:
        """Host links qiao made (tagged with an ``ifalias`` naming their owner)."""
        owned = {}
        for link in self._ipr.get_links():
            alias = link.get("ifalias") or ""
            if alias.startswith(ALIAS_PREFIX):
                owned[link.get("ifname")] = alias[len(ALIAS_PREFIX) :]
        return owned

    def create_netns(self, path: str) -> None:
        netns.create(path)

    def pin_netns(self, source: str, path: str) -> None:
        netns.pin(source, path)

    def namespace_id(self, path: str) -> int:
        return netns.identity(path)

    def destroy_netns(self, path: str) -> None:
        netns.destroy(path)

    def plug_veth(self, host_ifname: str, bridge: str, netns_path: str, peer: Peer, owner: str, isolated: bool = False) -> None:
        """A veth pair, its host end up on ``bridge`` and its peer inside the
        sandbox, in two netlink messages: the kernel takes the master and the
        up flag in the creating message, but the owner tag and the bridge
        port flags only once the port exists."""
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC) if netns_path else None  # "": the peer stays here
        try:
            try:
                self._add_veth(host_ifname, self._bridge_index(bridge), fd, peer)
            except Exception as exc:
                if getattr(exc, "code", None) not in (errno.EINVAL, errno.ENODEV):
                    raise
                self._bridges.pop(bridge, None)  # the bridge was recreated (or is gone): look it up again
                self._add_veth(host_ifname, self._bridge_index(bridge), fd, peer)
        finally:
            if fd is not None:
                os.close(fd)
        # Hairpin mode, as Docker without its userland proxy: with br_netfilter, a container's
        # packet to its own published port is bridged back out of the port it came in on.
        port_flags = {"mode": 1, **({"isolated": 1} if isolated else {})}
        self._ipr.link("set", ifname=host_ifname, ifalias=ALIAS_PREFIX + owner, kind="bridge_slave", **port_flags)

    def _add_veth(self, host_ifname: str, master: int, netns_fd: int | None, peer: Peer) -> None:
        sandbox_end = {"ifname": peer.ifname, "address": peer.mac, "mtu": peer.mtu}
        if netns_fd is not None:
            sandbox_end["net_ns_fd"] = netns_fd
        self._ipr.link("add", ifname=host_ifname, kind="veth", mtu=peer.mtu, master=master, state="up", peer=sandbox_end)

    def _bridge_index(self, name: str) -> int:
        """The bridge's ifindex, looked up once (ifindexes are not reused)."""
        if name not in self._bridges:
            index = self._index(name)
            if index is None:
                raise OSError(errno.ENODEV, f"no such device: {name}")
            self._bridges[name] = index
        return self._bridges[name]

    def bridge_netfilter(self) -> bool:
        """Whether bridged IPv4 traffic passes the netfilter hooks (br_netfilter)."""
        try:
            with open("/proc/sys/net/bridge/bridge-nf-call-iptables") as f:
                return f.read().strip() == "1"
        except OSError:
            return False

    def configure_sandbox(self, netns_path: str, iface: Iface | None) -> None:
        with netns.entered(netns_path):
            ipr = self._IPRoute()
        try:
            ipr.link("set", ifname="lo", state="up")
            if iface is None:
                return
            index = ipr.link_lookup(ifname=iface.ifname)[0]
            ipr.addr("add", index=index, address=iface.address, prefixlen=iface.prefixlen)
            if iface.address6:
                ipr.addr("add", index=index, address=iface.address6, prefixlen=iface.prefixlen6, flags=IFA_F_NODAD)
            ipr.link("set", index=index, state="up")
            if iface.gateway:
                ipr.route("add", dst="0.0.0.0/0", gateway=iface.gateway)
            if iface.gateway6:
                ipr.route("add", dst="::/0", gateway=iface.gateway6, family=socket.AF_INET6)
        finally:
            ipr.close()

    def set_default_route(self, netns_path: str, gateway: str, gateway6: str = "") -> None:
        """Point the sandbox's default route(s) at another network's gateway."""
        with netns.entered(netns_path):
            ipr = self._IPRoute()
        try:
            ipr.route("replace", dst="0.0.0.0/0", gateway=gateway)
            if gateway6:
                ipr.route("replace", dst="::/0", gateway=gateway6, family=socket.AF_INET6)
        finally:
            ipr.close()

    def reserved_networks(self) -> list[IPv4Network]:
        """On-link IPv4 routes and interface addresses of the host (Docker's
        ``InferReservedNetworks``); routes via a gateway (VPN splits such as
        0.0.0.0/1) are not reserved."""
        nets: list[IPv4Network] = []
        for route in self._ipr.get_routes(family=2, table=254):
            if route.get("gateway") is None and route.get("dst"):
                nets.append(IPv4Network(f"{route.get('dst')}/{route['dst_len']}", strict=False))
        for addr in self._ipr.get_addr(family=2):
            nets.append(IPv4Network(f"{addr.get('address')}/32"))
        return nets

    def addresses(self) -> list[IPAddress]:
        """The host's own addresses, except on links qiao made (its bridges' gateways)."""
        ours = {link["index"] for link in self._ipr.get_links() if (link.get("ifalias") or "").startswith(ALIAS_PREFIX)}
        return [ip_address(a.get("address")) for a in self._ipr.get_addr() if a["index"] not in ours and a.get("address")]

    def enable_forwarding(self, ipv6: bool = False) -> None:
        self._write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
        if ipv6:  # only with an IPv6 network, as Docker: it stops the host's own RA-based autoconfiguration
            self._write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")

    def flush_conntrack(self, proto: str, port: int) -> None:
        """Forget flows to a host port, so the next datagram of a long UDP flow
        is NATed afresh instead of following a dead mapping (moby #8795)."""
        from pyroute2 import Conntrack
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        number = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}[proto]
        with Conntrack() as ct:
            for entry in list(ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=number, dport=port))):
                with contextlib.suppress(Exception):
                    ct.delete(entry)

    @staticmethod
    def _write_sysctl(path: str, value: str, missing_ok: bool = False) -> None:
        try:
            with open(path) as f:
                if f.read().strip() == value:
                    return
            with open(path, "w") as f:
                f.write(value)
        except FileNotFoundError:
            if not missing_ok:
                raise


class StubHost:
    """In-memory stand-in: records links, namespaces and configuration."""

    def __init__(self, reserved: list[IPv4Network] | None = None) -> None:
        self.links: dict[str, dict[str, Any]] = {}
        self.namespaces: set[str] = set()
        self.pins: dict[str, int] = {}  # pinned path -> the "namespace" (inode) it pins
        self.sandboxes: dict[str, dict[str, Any]] = {}
        self.default_routes: dict[str, tuple[str, str]] = {}  # sandbox -> (gateway, gateway6) after a move
        self.reserved = reserved or []
        self.host_addresses: list[IPAddress] = []
        self.forwarding = False
        self.forwarding6 = False
        self.flushed: list[tuple[str, int]] = []
        self.counters: dict[tuple[str, str], dict[str, int]] = {}  # (sandbox, ifname) -> traffic counters

    def ensure_bridge(self, name: str, address: str, prefixlen: int, mtu: int, v6: tuple[str, int] | None = None, owner: str = "") -> bool:
        created = name not in self.links
        self.links.setdefault(name, {"kind": "bridge", "address": f"{address}/{prefixlen}", "mtu": mtu})
        if created and owner:
            self.links[name]["owner"] = owner
        return created

    def delete_link(self, name: str) -> None:
        self.links.pop(name, None)

    def retire_link(self, name: str) -> None:
        self.links.pop(name, None)

    def settle(self, timeout: float) -> None:
        pass

    def link_exists(self, name: str) -> bool:
        return name in self.links

    def link_kind(self, name: str) -> str | None:
        return self.links[name].get("kind", "") if name in self.links else None

    def link_mac(self, name: str) -> str | None:
        return "02:00:00:00:00:01" if name in self.links else None

    def sandbox_link(self, netns_path: str, ifname: str) -> tuple[str, list[str]] | None:
        iface = self.sandboxes.get(netns_path, {}).get(ifname)
        if iface is None:
            return None
        veth = next((v for v in self.links.values() if v.get("netns") == netns_path and v.get("peer") == ifname), {})
        return veth.get("mac", ""), [f"{a}/{n}" for a, n in ((iface.address, iface.prefixlen), (iface.address6, iface.prefixlen6)) if a]

    def sandbox_counters(self, netns_path: str) -> dict[str, dict[str, int]]:
        """Every configured interface but lo, with the counters a test set in ``counters``."""
        names = [n for n in self.sandboxes.get(netns_path, {}) if n != "lo"]
        return {n: {k: self.counters.get((netns_path, n), {}).get(k, 0) for k in COUNTERS} for n in names}

    def owned_links(self) -> dict[str, str]:
        return {n: link["owner"] for n, link in self.links.items() if "owner" in link}

    def create_netns(self, path: str) -> None:
        if path in self.namespaces:
            raise FileExistsError(path)
        self.namespaces.add(path)

    def pin_netns(self, source: str, path: str) -> None:
        self.create_netns(path)
        self.pins[path] = os.stat(source).st_ino

    def namespace_id(self, path: str) -> int:
        """Any existing file stands for a namespace here (its inode); a pin, for the one it pins."""
        if path in self.pins:
            return self.pins[path] if path in self.namespaces else 0
        try:
            return os.stat(path).st_ino
        except OSError:
            return 0

    def destroy_netns(self, path: str) -> None:
        self.namespaces.discard(path)
        self.sandboxes.pop(path, None)

    def plug_veth(self, host_ifname: str, bridge: str, netns_path: str, peer: Peer, owner: str, isolated: bool = False) -> None:
        if host_ifname in self.links:
            raise OSError(errno.EEXIST, f"{host_ifname} exists")
        if bridge not in self.links:
            raise OSError(errno.ENODEV, f"no such device: {bridge}")
        link = {"kind": "veth", "netns": netns_path, "peer": peer.ifname, "mac": peer.mac, "owner": owner}
        self.links[host_ifname] = {**link, "master": bridge, "isolated": isolated}

    def bridge_netfilter(self) -> bool:
        return False

    def configure_sandbox(self, netns_path: str, iface: Iface | None) -> None:
        self.sandboxes.setdefault(netns_path, {})[iface.ifname if iface else "lo"] = iface

    def set_default_route(self, netns_path: str, gateway: str, gateway6: str = "") -> None:
        self.default_routes[netns_path] = (gateway, gateway6)

    def reserved_networks(self) -> list[IPv4Network]:
        return list(self.reserved)

    def addresses(self) -> list[IPAddress]:
        return list(self.host_addresses)

    def enable_forwarding(self, ipv6: bool = False) -> None:
        self.forwarding = True
        self.forwarding6 = self.forwarding6 or ipv6

    def flush_conntrack(self, proto: str, port: int) -> None:
        self.flushed.append((proto, port))
