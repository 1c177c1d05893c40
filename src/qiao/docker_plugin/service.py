"""dockerd's calls, translated into the engine core.

The remote driver contract (libnetwork ``drivers/remote/api``):
``CreateEndpoint`` makes the veth pair, its container end left in the host
namespace; ``Join`` names that end (``SrcName``) and the gateway, and dockerd
moves it into the sandbox, renames it ``eth0`` and sets the address, the
MAC and the route itself; ``Leave`` is dockerd moving it back;
``DeleteEndpoint`` deletes the pair.  Published ports arrive with
``ProgramExternalConnectivity`` and become map elements.

The IPAM half is stateless by design: a pool id is ``qiao/SUBNET`` and the
pool's addresses are the qiao network's own (``Networks.hold``), so an
address is never handed out twice, whoever asks (dockerd, a CNI runtime,
``qiao run``).  An answer with ``Err`` reports every refusal; an unknown
call is a 404, which dockerd reads as "not implemented".
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from qiao.drivers.overlay.manager import DRIVER as OVERLAY
from qiao.engine import attachments, ids
from qiao.engine.engine import Engine
from qiao.engine.errors import NotFound, QiaoError
from qiao.engine.ipam import choose_subnet
from qiao.engine.models import Network
from qiao.engine.specs import AttachmentSpec, EndpointSpec, NetworkSpec
from qiao.engine.store import Store

log = logging.getLogger("qiao.docker_plugin")
RUNTIME = "docker"
POOL_PREFIX = "qiao/"
GATEWAY_REQUEST = "com.docker.network.gateway"  # RequestAddress's Options["RequestAddressType"]
GENERIC = "com.docker.network.generic"  # CreateNetwork's Options: the user's -o options
PORTMAP = "com.docker.network.portmap"
PROTOS = {6: "tcp", 17: "udp", 132: "sctp"}
# -o options of qiao's own; the rest go to the qiao network's driver as they are.
OPT_OVERLAY = "qiao.overlay"  # "true": the network is qiao's overlay (etcd), shared by every host's dockerd
OPT_NAME = "qiao.name"  # the qiao network's name (default docker-<12 hex of Docker's id>; an overlay's: the same on every host)


class PluginError(Exception):
    """A refusal, answered as ``{"Err": ...}``."""


T = TypeVar("T")


def decode(body: bytes, kind: type[T]) -> T:
    """A call's request.  An empty body is refused, never read as ``{}``:
    dockerd's plugin client sends a call again without its body when the
    connection broke before the answer (qiaod killed or restarted in
    between), and ``{}`` can be another request (``RequestPool {}`` asks
    for a pool of qiao's choosing, whatever ``--subnet`` was given)."""
    if not body.strip():
        raise PluginError("empty request: dockerd sent the call again without its body after its connection to qiao broke; try again")
    return msgspec.json.decode(body, type=kind)


# -- requests ---------------------------------------------------------------------


class Struct(msgspec.Struct):
    pass


class IPAMData(Struct):
    AddressSpace: str = ""
    Pool: str = ""
    Gateway: str = ""
    AuxAddresses: dict[str, str] | None = None


class CreateNetwork(Struct):
    NetworkID: str
    Options: dict[str, Any] | None = None
    IPv4Data: list[IPAMData] | None = None
    IPv6Data: list[IPAMData] | None = None


class NetworkRef(Struct):
    NetworkID: str


class EndpointInterface(Struct):
    Address: str = ""
    AddressIPv6: str = ""
    MacAddress: str = ""


class CreateEndpoint(Struct):
    NetworkID: str
    EndpointID: str
    Interface: EndpointInterface | None = None
    Options: dict[str, Any] | None = None


class EndpointRef(Struct):
    NetworkID: str
    EndpointID: str


class Join(Struct):
    NetworkID: str
    EndpointID: str
    SandboxKey: str = ""
    Options: dict[str, Any] | None = None


class Connectivity(Struct):
    NetworkID: str
    EndpointID: str
    Options: dict[str, Any] | None = None


class PortBinding(Struct):
    Proto: int = 6
    IP: str = ""
    Port: int = 0
    HostIP: str = ""
    HostPort: int = 0
    HostPortEnd: int = 0


class RequestPool(Struct):
    AddressSpace: str = ""
    Pool: str = ""
    SubPool: str = ""
    Options: dict[str, str] | None = None
    V6: bool = False


class PoolRef(Struct):
    PoolID: str


class RequestAddress(Struct):
    PoolID: str
    Address: str = ""
    Options: dict[str, str] | None = None


class ReleaseAddress(Struct):
    PoolID: str
    Address: str = ""


# -- the service ------------------------------------------------------------------------


class DockerPlugin:
    """The calls of one dockerd (or several, on one qiaod: each Docker network id is mapped)."""

    def __init__(self, engine: Engine, docker_host: str = ""):
        self.engine = engine
        self.maps = NetworkMaps(engine.store)
        self.watch = DockerWatch(self, docker_host).start() if docker_host else None
        self.calls: dict[str, Callable[[bytes], dict[str, Any]]] = {
            "Plugin.Activate": lambda b: {"Implements": ["NetworkDriver", "IpamDriver"]},
            "NetworkDriver.GetCapabilities": lambda b: {"Scope": "local", "ConnectivityScope": "local"},
            "NetworkDriver.CreateNetwork": self.create_network,
            "NetworkDriver.DeleteNetwork": self.delete_network,
            "NetworkDriver.CreateEndpoint": self.create_endpoint,
            "NetworkDriver.EndpointOperInfo": self.endpoint_info,
            "NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "NetworkDriver.Join": self.join,
            "NetworkDriver.Leave": lambda b: {},
            "NetworkDriver.ProgramExternalConnectivity": self.program,
            "NetworkDriver.RevokeExternalConnectivity": self.revoke,
            "NetworkDriver.DiscoverNew": lambda b: {},
            "NetworkDriver.DiscoverDelete": lambda b: {},
            "IpamDriver.GetCapabilities": lambda b: {"RequiresMACAddress": False},
            "IpamDriver.GetDefaultAddressSpaces": lambda b: {"LocalDefaultAddressSpace": "qiao", "GlobalDefaultAddressSpace": "qiao"},
            "IpamDriver.RequestPool": self.request_pool,
            "IpamDriver.ReleasePool": lambda b: {},
            "IpamDriver.RequestAddress": self.request_address,
            "IpamDriver.ReleaseAddress": self.release_address,
            "IpamDriver.DiscoverNew": lambda b: {},
            "IpamDriver.DiscoverDelete": lambda b: {},
        }

    def call(self, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
        handler = self.calls.get(name)
        if handler is None:
            return 404, {"Err": f"{name} is not implemented by qiao"}
        try:
            return 200, handler(body)
        except msgspec.ValidationError as exc:
            return 400, {"Err": f"{name}: invalid request: {exc}"}
        except msgspec.DecodeError:
            return 400, {"Err": f"{name}: the request is not valid JSON"}
        except (PluginError, QiaoError) as exc:  # 400 with Err: dockerd shows the message (a 404 would read as "not implemented")
            return 400, {"Err": str(exc)}
        except Exception as exc:  # a bug in qiao: logged with its traceback, still answered in the protocol's shape
            log.exception("%s failed", name)
            return 500, {"Err": f"{name}: internal error: {exc}"}

    # -- networks ----------------------------------------------------------------

    def create_network(self, body: bytes) -> dict[str, Any]:
        req = decode(body, CreateNetwork)
        options = dict(req.Options or {})
        generic = {str(k): str(v) for k, v in (options.get(GENERIC) or {}).items()}
        v4 = (req.IPv4Data or [IPAMData()])[0]
        if not v4.Pool:
            raise PluginError("qiao needs an IPv4 pool: give --subnet, or --ipam-driver qiao")
        overlay = generic.pop(OPT_OVERLAY, "false").lower() in ("1", "true", "yes")
        name = generic.pop(OPT_NAME, "") or f"docker-{req.NetworkID[:12]}"
        subnet = str(ipaddress.ip_network(v4.Pool, strict=False))
        internal = bool(options.get("com.docker.network.internal")) or generic.pop("internal", "") == "true"
        gateway = "" if overlay or not v4.Gateway else v4.Gateway.split("/")[0]
        existing = self.engine.networks.named(name)
        if existing is not None and overlay and subnet in (existing.cluster_subnet, existing.subnet):
            net = existing  # another host's dockerd made it: this host's side is already here (the overlay's watch)
        else:
            driver = OVERLAY if overlay else "bridge"
            spec = NetworkSpec(name, driver, subnet, gateway=gateway, internal=internal, options=generic)
            net = self.engine.networks.create(spec)
        self.maps.put(req.NetworkID, net.id)
        return {}

    def delete_network(self, body: bytes) -> dict[str, Any]:
        req = decode(body, NetworkRef)
        net_id = self.maps.get(req.NetworkID)
        if net_id is None:
            return {}
        net = self.engine.networks.by_id.get(net_id)
        if net is not None and net.scope == "local":  # an overlay is the cluster's: `qiao network rm` removes it
            self.engine.networks.remove(net.id)
        self.maps.drop(req.NetworkID)
        return {}

    def _network(self, docker_id: str) -> Network:
        net_id = self.maps.get(docker_id)
        net = self.engine.networks.by_id.get(net_id or "")
        if net is None:
            raise NotFound(f"network {docker_id[:12]} is not a qiao network (was it created with -d qiao?)")
        return net

    # -- endpoints ----------------------------------------------------------------

    def create_endpoint(self, body: bytes) -> dict[str, Any]:
        req = decode(body, CreateEndpoint)
        net = self._network(req.NetworkID)
        iface = req.Interface or EndpointInterface()
        ip = iface.Address.split("/")[0] if iface.Address else ""
        ip6 = iface.AddressIPv6.split("/")[0] if iface.AddressIPv6 else ""
        spec = AttachmentSpec(
            runtime=RUNTIME,
            config=req.NetworkID,
            container_id=req.EndpointID,
            ifname="vq" + req.EndpointID[:13],  # dockerd renames it eth<N> when it moves it
            sandbox="",
            network=net.id,
            endpoint=EndpointSpec(ip=ip, ip6=ip6, mac=iface.MacAddress),
        )  # names: learned from dockerd after Join (DockerWatch)
        _att, ep, _net = self.engine.attachments.attach(spec)
        return {"Interface": {"MacAddress": ep.mac}} if not iface.MacAddress else {}

    def _key(self, network_id: str, endpoint_id: str) -> str:
        return attachments.key(RUNTIME, network_id, endpoint_id, "vq" + endpoint_id[:13])

    def delete_endpoint(self, body: bytes) -> dict[str, Any]:
        req = decode(body, EndpointRef)
        self.engine.attachments.detach(self._key(req.NetworkID, req.EndpointID))
        return {}

    def endpoint_info(self, body: bytes) -> dict[str, Any]:
        req = decode(body, EndpointRef)
        got = self.engine.attachments.get(self._key(req.NetworkID, req.EndpointID))
        if got is None:
            raise NotFound(f"no endpoint {req.EndpointID[:12]}")
        att, ep, net = got
        value: dict[str, Any] = {"qiao.network": net.name, "qiao.host-interface": ep.host_ifname}
        if att.ports:
            value[PORTMAP] = [
                {"Proto": next(k for k, v in PROTOS.items() if v == m["proto"]), "IP": ep.address, "Port": m["container_port"],
                 "HostIP": m["host_ip"], "HostPort": m["host_port"], "HostPortEnd": m["host_port"]}
                for m in att.ports
            ]  # fmt: skip
        return {"Value": value}

    def join(self, body: bytes) -> dict[str, Any]:
        req = decode(body, Join)
        key = self._key(req.NetworkID, req.EndpointID)
        got = self.engine.attachments.get(key)
        if got is None:
            raise NotFound(f"no endpoint {req.EndpointID[:12]}")
        _att, ep, net = got
        self.engine.attachments.update(key, sandbox=req.SandboxKey)
        answer: dict[str, Any] = {"InterfaceName": {"SrcName": ep.ifname, "DstPrefix": "eth"}}
        if net.internal or not net.gateway:
            answer["DisableGatewayService"] = True
        else:
            answer["Gateway"] = net.gateway
            if ep.address6 and net.gateway6:
                answer["GatewayIPv6"] = net.gateway6
        return answer

    def program(self, body: bytes) -> dict[str, Any]:
        req = decode(body, Connectivity)
        raw = (req.Options or {}).get(PORTMAP) or []
        bindings = msgspec.convert(raw, list[PortBinding])
        wanted: dict[str, list[dict[str, str]]] = {}
        for b in bindings:
            proto = PROTOS.get(b.Proto)
            if proto is None:
                raise PluginError(f"unknown protocol number {b.Proto} in the port map")
            ports = str(b.HostPort) if b.HostPort else ""
            if b.HostPortEnd and b.HostPortEnd != b.HostPort:
                ports = f"{b.HostPort}-{b.HostPortEnd}"
            wanted.setdefault(f"{b.Port}/{proto}", []).append({"host_ip": b.HostIP, "host_port": ports})
        if wanted:
            self.engine.attachments.publish(self._key(req.NetworkID, req.EndpointID), wanted)
        return {}

    def revoke(self, body: bytes) -> dict[str, Any]:
        req = decode(body, EndpointRef)
        key = self._key(req.NetworkID, req.EndpointID)
        if self.engine.attachments.get(key) is not None:
            self.engine.attachments.unpublish(key)
        return {}

    # -- IPAM ------------------------------------------------------------------------

    def request_pool(self, body: bytes) -> dict[str, Any]:
        req = decode(body, RequestPool)
        if req.V6 and not req.Pool:
            raise PluginError("qiao's IPAM needs an IPv6 --subnet; it does not choose IPv6 pools")
        if req.SubPool and not req.Pool:
            raise PluginError("an --ip-range needs a --subnet")
        if req.Pool:
            try:
                pool = ipaddress.ip_network(req.Pool, strict=False)
            except ValueError:
                raise PluginError(f"invalid pool {req.Pool!r}") from None
        else:
            with self.engine.lock:
                taken = [ipaddress.IPv4Network(n.subnet) for n in self.engine.networks.by_id.values() if n.subnet]
                pool = choose_subnet([*taken, *self.engine.host.reserved_networks()])
        with self.engine.lock:
            for other in self.engine.networks.by_id.values():
                for text in {other.cluster_subnet or other.subnet, other.subnet}:
                    if text and ipaddress.ip_network(text).overlaps(pool) and str(pool) not in (other.subnet, other.cluster_subnet):
                        raise PluginError(f"pool {pool} overlaps network {other.name} ({text})")
        pool_id = POOL_PREFIX + str(pool) + (f"/{req.SubPool}" if req.SubPool else "")
        return {"PoolID": pool_id, "Pool": str(pool), "Data": {}}

    def _pool(self, pool_id: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Network | None]:
        if not pool_id.startswith(POOL_PREFIX):
            raise PluginError(f"unknown pool {pool_id!r}")
        parts = pool_id[len(POOL_PREFIX) :].split("/")
        try:
            pool = ipaddress.ip_network("/".join(parts[:2]))
        except ValueError:
            raise PluginError(f"unknown pool {pool_id!r}") from None
        with self.engine.lock:
            net = next((n for n in self.engine.networks.by_id.values() if str(pool) in (n.subnet, n.cluster_subnet, n.subnet6)), None)
        return pool, net

    def request_address(self, body: bytes) -> dict[str, Any]:
        req = decode(body, RequestAddress)
        pool, net = self._pool(req.PoolID)
        if req.Address:
            try:
                if ipaddress.ip_address(req.Address) not in pool:
                    raise PluginError(f"address {req.Address} is not in pool {pool}")
            except ValueError:
                raise PluginError(f"invalid address {req.Address!r}") from None
        if (req.Options or {}).get("RequestAddressType") == GATEWAY_REQUEST or net is None:
            # before CreateNetwork: the gateway of a network to come (the network reserves it itself)
            address = req.Address or str(next(pool.hosts()))
            return {"Address": f"{address}/{pool.prefixlen}", "Data": {}}
        address = self.engine.networks.hold(net, req.Address)
        prefix = net.prefixlen if ipaddress.ip_address(address).version == 4 else pool.prefixlen
        return {"Address": f"{address}/{prefix}", "Data": {}}

    def release_address(self, body: bytes) -> dict[str, Any]:
        req = decode(body, ReleaseAddress)
        _pool, net = self._pool(req.PoolID)
        if net is not None and req.Address:
            self.engine.networks.unhold(net.id, req.Address.split("/")[0])
        return {}


class NetworkMaps:
    """Docker's network id -> the qiao network's (stored: they outlive restarts)."""

    def __init__(self, store: Store):
        self.store = store
        self.lock = threading.Lock()
        self.by_docker = {row["id"]: row["network_id"] for row in store.load("docker_networks")}

    def get(self, docker_id: str) -> str | None:
        with self.lock:
            return self.by_docker.get(docker_id)

    def put(self, docker_id: str, network_id: str) -> None:
        with self.lock:
            with self.store.transaction() as tx:
                tx.put("docker_networks", {"id": docker_id, "name": docker_id, "network_id": network_id})
            self.by_docker[docker_id] = network_id

    def drop(self, docker_id: str) -> None:
        with self.lock:
            with self.store.transaction() as tx:
                tx.delete("docker_networks", docker_id)
            self.by_docker.pop(docker_id, None)


class DockerWatch:
    """Follows dockerd through its own API, in a thread of its own, never
    inside a dockerd call (dockerd may hold its locks while it waits for the
    plugin):

    * **Names.** The remote driver protocol carries no container id, name or
      alias; ``network connect`` events in dockerd's event stream name the
      container, and one lookup of it gives them to ``network inspect``,
      qiao's resolver and an overlay's other hosts.  The cost per container
      does not grow with the network.  A lost stream is opened again, with
      ``since`` replaying what happened meanwhile.
    * **Endpoints dockerd never learned of.** qiaod killed after it made an
      endpoint but before dockerd read the answer leaves an endpoint (and its
      address) that dockerd will never delete.  Once per qiaod start, when
      dockerd first answers, every endpoint made before this start that
      dockerd does not list on its network is detached."""

    FILTERS = '{"type":["network"],"event":["connect"]}'

    def __init__(self, plugin: DockerPlugin, docker_host: str):
        self.plugin = plugin
        self.socket = docker_host.removeprefix("unix://")
        self.started = datetime.datetime.now(datetime.UTC)
        self.since = int(time.time()) - 1
        self.swept = False

    def start(self) -> DockerWatch:
        threading.Thread(target=self._follow, name="docker-watch", daemon=True).start()
        return self

    def _follow(self) -> None:
        import socket
        import urllib.parse

        while True:
            # since: dockerd replays what happened while the stream was not open (before it, or while dockerd restarted)
            path = f"/events?since={self.since}&filters=" + urllib.parse.quote(self.FILTERS)
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(self.socket)
                    s.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
                    stream = s.makefile("rb")
                    if b" 200 " not in stream.readline():
                        raise OSError("dockerd refused its event stream")
                    while stream.readline().strip():  # the rest of the head
                        pass
                    if not self.swept:
                        self.sweep()
                        self.swept = True
                    for line in stream:
                        if line.strip():
                            event = json.loads(line)
                            self.since = max(self.since, int(event.get("time", 0)))
                            self._connected(event)
            except Exception as exc:  # dockerd restarting or away: follow it again
                log.debug("dockerd's event stream: %s", exc)
            time.sleep(1)

    def sweep(self) -> list[str]:
        """Detach the endpoints made before this qiaod started that dockerd
        does not know (their networks' ``Containers``); returns their keys."""
        gone = []
        known: dict[str, set[str] | None] = {}  # Docker network id -> its endpoints (None: dockerd did not answer)
        for att in self.plugin.engine.attachments.of_runtime(RUNTIME):
            if not att.created or datetime.datetime.fromisoformat(att.created) >= self.started:
                continue  # made by this qiaod: dockerd may not have stored it yet
            if att.config not in known:
                net = self._get(f"/networks/{att.config}")
                known[att.config] = None if net is None else {str(c.get("EndpointID", "")) for c in (net.get("Containers") or {}).values()}
            endpoints = known[att.config]
            if endpoints is not None and att.container_id not in endpoints and self.plugin.engine.attachments.detach(att.name):
                log.warning(
                    "endpoint %s unknown to dockerd (qiaod stopped before dockerd read its answer): detached", att.container_id[:12]
                )
                gone.append(att.name)
        return gone

    def _connected(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        docker_net, cid = str(actor.get("ID", "")), str((actor.get("Attributes") or {}).get("container", ""))
        if not cid or self.plugin.maps.get(docker_net) is None:
            return
        container = self._get(f"/containers/{cid}/json") or {}
        name = str(container.get("Name", "")).lstrip("/")
        for settings in (container.get("NetworkSettings", {}).get("Networks") or {}).values():
            if settings.get("NetworkID") != docker_net or not settings.get("EndpointID"):
                continue
            aliases = [a for a in settings.get("Aliases") or [] if ids.DNS_NAME_RE.match(a) and a not in (name, cid[:12])]
            names = [n for n in (name, cid[:12]) if n and ids.DNS_NAME_RE.match(n)]
            key = self.plugin._key(docker_net, settings["EndpointID"])
            if self.plugin.engine.attachments.get(key) is not None:
                self.plugin.engine.attachments.update(key, dns_names=names + aliases, aliases=aliases, shown_as=cid)

    def _get(self, path: str) -> dict[str, Any] | None:
        """dockerd's answer to a GET: its JSON; {} for a 404 (no such object); None when it gave none."""
        import socket

        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(self.socket)
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
        except OSError:
            return None
        head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0]
        if b" 404 " in status:
            return {}
        if b" 200 " not in status:
            return None
        return json.loads(payload)  # type: ignore[no-any-return]
