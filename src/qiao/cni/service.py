"""qiaod's side of the CNI plugin: a request (the runtime's environment and
configuration, forwarded by :mod:`qiao.cni.plugin`) in, a CNI result or a
spec-shaped error out.  The wire format ends here; the engine core sees an
:class:`~qiao.engine.specs.AttachmentSpec` and the same networks, IPAM,
ports and DNS as qiao's own containers.

The configuration qiao reads (a conflist entry of ``"type": "qiao"``)::

    {"type": "qiao", "network": "qnet", "subnet": "10.89.0.0/24",
     "capabilities": {"portMappings": true, "ips": true, "mac": true}}

``network`` names the qiao network (default: the configuration's ``name``).
It is created on the first ADD when it does not exist and ``subnet`` is
given, as the bridge plugin creates its bridge: ``driver`` (``bridge`` or
``overlay``), ``gateway``, ``ipRange``, ``bridge`` (the Linux bridge's
name), ``mtu``, ``ipMasq``, ``internal`` and ``options`` (driver options)
shape it.  ``defaultRoute: false`` leaves the sandbox's default route alone
(for a second network).  ``qiaoRoot`` names the qiao root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import msgspec

from qiao import cni
from qiao.cni import CniError
from qiao.drivers.bridge import OPT_BRIDGE_NAME, OPT_MASQUERADE, OPT_MTU
from qiao.engine import attachments, ids
from qiao.engine.engine import Engine
from qiao.engine.errors import Conflict, InvalidParameter, NotFound, QiaoError
from qiao.engine.models import Endpoint, Network
from qiao.engine.specs import AttachmentSpec, EndpointSpec, NetworkSpec, PortBinding

log = logging.getLogger("qiao.cni")
RUNTIME = "cni"


# -- the wire format --------------------------------------------------------


class Struct(msgspec.Struct, omit_defaults=True):
    pass


class PortMappingArg(Struct):
    hostPort: int
    containerPort: int
    protocol: str = "tcp"
    hostIP: str = ""


class RuntimeConfig(Struct):
    portMappings: list[PortMappingArg] | None = None
    ips: list[str] | None = None
    mac: str = ""


class AttachmentRef(Struct):
    containerID: str
    ifname: str


class NetConf(Struct):
    """One plugin's configuration as the runtime passes it (unknown keys are ignored, as CNI plugins do)."""

    cniVersion: str = ""
    name: str = ""
    type: str = ""
    network: str = ""
    driver: str = "bridge"
    subnet: str = ""
    gateway: str = ""
    ipRange: str = ""
    bridge: str = ""
    mtu: int = 0
    ipMasq: bool = True
    internal: bool = False
    defaultRoute: bool = True
    options: dict[str, str] | None = None
    qiaoRoot: str = ""
    capabilities: dict[str, bool] | None = None
    runtimeConfig: RuntimeConfig | None = None
    prevResult: dict[str, Any] | None = None
    valid_attachments: list[AttachmentRef] | None = msgspec.field(default=None, name="cni.dev/valid-attachments")
    attachments: list[AttachmentRef] | None = msgspec.field(default=None, name="cni.dev/attachments")  # libcni sends both


class CniRequest(Struct):
    command: str
    config: NetConf
    containerID: str = ""
    netns: str = ""
    ifname: str = ""
    args: str = ""


def _decode(body: bytes) -> CniRequest:
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError):
        raise CniError(cni.DECODE_FAILURE, "the request is not valid JSON") from None
    version = raw.get("config", {}).get("cniVersion", "") if isinstance(raw, dict) and isinstance(raw.get("config"), dict) else ""
    if not isinstance(version, str) or version not in cni.SUPPORTED_VERSIONS:
        supported = ", ".join(cni.SUPPORTED_VERSIONS)
        raise CniError(cni.INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported", f"qiao supports {supported}")
    try:
        return msgspec.convert(raw, CniRequest)
    except msgspec.ValidationError as exc:
        raise CniError(cni.INVALID_CONFIG, f"invalid network configuration: {exc}".replace("$.config.", "$.")) from None


def parse_args(text: str) -> dict[str, str]:
    """CNI_ARGS: ``K=V;K2=V2`` (unknown keys are ignored, as with IgnoreUnknown)."""
    out = {}
    for item in text.split(";"):
        key, sep, value = item.partition("=")
        if not item:
            continue
        if not sep or not key:
            raise CniError(cni.INVALID_ENVIRONMENT, f"invalid CNI_ARGS item {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


# -- the service ---------------------------------------------------------------


class CniService:
    def __init__(self, engine: Engine):
        self.engine = engine

    def handle(self, body: bytes, netns_fd: int | None = None) -> tuple[int, dict[str, Any]]:
        """One request: (HTTP status, the answer: ``{"result": ...}`` or a CNI
        error object).  ``netns_fd``: the namespace the plugin opened (ADD)."""
        version = ""
        try:
            req = _decode(body)
            version = req.config.cniVersion
            handlers: dict[str, Callable[[CniRequest], dict[str, Any] | None]] = {
                "ADD": lambda r: self.add(r, netns_fd),
                "DEL": self.delete,
                "CHECK": self.check,
                "STATUS": self.status,
                "GC": self.gc,
            }
            handler = handlers.get(req.command)
            if handler is None:
                raise CniError(cni.INVALID_ENVIRONMENT, f"unknown CNI_COMMAND {req.command!r}")
            if req.command in ("STATUS", "GC") and not cni.at_least(version, "1.1.0"):
                raise CniError(cni.INCOMPATIBLE_VERSION, f"{req.command} needs cniVersion 1.1.0 or later, not {version}")
            if req.command != "STATUS" and not _VALID_NAME.match(req.config.name):
                raise CniError(cni.INVALID_CONFIG, f"invalid network name {req.config.name!r}: [a-zA-Z0-9][a-zA-Z0-9_.-]* expected")
            if req.command in ("ADD", "DEL", "CHECK") and not _VALID_NAME.match(req.containerID):
                raise CniError(cni.INVALID_ENVIRONMENT, f"invalid CNI_CONTAINERID {req.containerID!r}: [a-zA-Z0-9][a-zA-Z0-9_.-]* expected")
            result = handler(req)
            return 200, ({"result": result} if result is not None else {})
        except CniError as exc:
            return 400, _error(version, exc.code, exc.msg, exc.details)
        except Conflict as exc:
            return 409, _error(version, cni.CONFLICT, str(exc))
        except (InvalidParameter, NotFound) as exc:
            return 400, _error(version, cni.INVALID_CONFIG, str(exc))
        except QiaoError as exc:
            return exc.status, _error(version, cni.INTERNAL, str(exc))
        except Exception as exc:  # a bug in qiao: logged with its traceback, answered as a CNI error
            log.exception("CNI request failed")
            return 500, _error(version, cni.INTERNAL, f"internal error: {exc}")

    # -- the commands --------------------------------------------------------

    def add(self, req: CniRequest, netns_fd: int | None = None) -> dict[str, Any]:
        """Check everything that needs no network, then find or create the
        network and attach.  A bridge network made for this ADD is made and
        used under one hold of the engine lock, and goes again if the attach
        fails; a cluster-wide (overlay) network is never taken back."""
        conf = req.config
        source = f"/proc/self/fd/{netns_fd}" if netns_fd is not None else ""  # the namespace the plugin passed
        if not self.engine.host.namespace_id(source or req.netns):
            raise CniError(cni.INVALID_ENVIRONMENT, f"CNI_NETNS {req.netns} is not a network namespace (or does not exist)")
        try:
            attachments.check_ifname(req.ifname)
        except InvalidParameter as exc:
            raise CniError(cni.INVALID_ENVIRONMENT, f"CNI_IFNAME: {exc}") from None
        args = parse_args(req.args)
        names = _dns_names(req.containerID, args)
        endpoint = _endpoint_spec(conf, args, names[1:])
        bindings = _port_bindings(conf)
        try:
            scope = self.engine.drivers.get(conf.driver).scope
        except NotFound:
            raise CniError(cni.INVALID_CONFIG, f"unknown driver {conf.driver!r}") from None
        if scope != "local":  # created cluster-wide outside the engine lock (etcd may be slow)
            net, _created = self._network(conf)
            return self._attach(req, net, endpoint, bindings, names, source)
        with self.engine.lock:
            net, created = self._network(conf)
            try:
                return self._attach(req, net, endpoint, bindings, names, source)
            except BaseException:
                if created:
                    with contextlib.suppress(QiaoError):
                        self.engine.networks.remove(net.id)
                raise

    def _attach(
        self,
        req: CniRequest,
        net: Network,
        endpoint: EndpointSpec,
        bindings: dict[str, tuple[PortBinding, ...]],
        names: list[str],
        source: str,
    ) -> dict[str, Any]:
        conf = req.config
        if not net.user_defined:  # the default bridge has no DNS: no aliases there
            endpoint = dataclasses.replace(endpoint, aliases=())
        spec = AttachmentSpec(
            runtime=RUNTIME,
            config=conf.name,
            container_id=req.containerID,
            ifname=req.ifname,
            sandbox=req.netns,
            network=net.id,
            endpoint=endpoint,
            port_bindings=bindings,
            dns_names=tuple(names),
            default_route=conf.defaultRoute,
            sandbox_source=source,
        )
        _att, ep, net = self.engine.attachments.attach(spec)
        return self._result(conf, req.netns, ep, net)

    def delete(self, req: CniRequest) -> None:
        self.engine.attachments.detach(attachments.key(RUNTIME, req.config.name, req.containerID, req.ifname))

    def check(self, req: CniRequest) -> None:
        conf = req.config
        if not cni.at_least(conf.cniVersion, "0.4.0"):
            raise CniError(cni.INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or later, not {conf.cniVersion}")
        if conf.prevResult is None:
            raise CniError(cni.INVALID_CONFIG, "CHECK needs prevResult (the result of the ADD)")
        name = attachments.key(RUNTIME, conf.name, req.containerID, req.ifname)
        got = self.engine.attachments.get(name)
        if got is None:
            raise CniError(cni.UNKNOWN_CONTAINER, f"container {req.containerID} has no interface {req.ifname} on {conf.name}")
        _att, ep, _net = got
        listed = {str(ip.get("address", "")) for ip in conf.prevResult.get("ips") or [] if isinstance(ip, dict)}
        problems = [f"prevResult lacks {a}" for a in _cidrs(ep) if a not in listed]
        problems += self.engine.attachments.problems(name)
        if problems:
            raise CniError(cni.CHECK_FAILED, f"{req.ifname} of {req.containerID}: " + "; ".join(problems))

    def status(self, req: CniRequest) -> None:
        """Ready when qiaod serves (it answers this) and the network exists or can be made."""
        conf = req.config
        name = conf.network or conf.name
        if self.engine.networks.named(name) is not None:
            return
        if not conf.subnet:
            raise CniError(cni.NOT_READY, f"network {name} does not exist and the configuration has no subnet")
        try:  # the driver's own check, which changes nothing: would the first ADD's create succeed?
            with self.engine.lock:
                self.engine.drivers.get(conf.driver).validate(_network_spec(conf, name), list(self.engine.networks.by_id.values()))
        except QiaoError as exc:
            raise CniError(cni.NOT_READY, f"network {name} cannot be created: {exc}") from None

    def gc(self, req: CniRequest) -> None:
        conf = req.config
        valid = conf.valid_attachments if conf.valid_attachments is not None else conf.attachments
        if valid is None:  # not "none are valid": a GC without its list must not empty the node
            raise CniError(cni.INVALID_CONFIG, "GC needs cni.dev/valid-attachments (an empty list removes every attachment)")
        keep = {(a.containerID, a.ifname) for a in valid}
        gone = self.engine.attachments.collect(RUNTIME, conf.name, keep)
        if gone:
            log.info("CNI GC of %s removed %d attachment(s): %s", conf.name, len(gone), ", ".join(gone))

    # -- helpers ---------------------------------------------------------------

    def _network(self, conf: NetConf) -> tuple[Network, bool]:
        """The configuration's qiao network, by its exact name (not an id
        prefix), created on first use when the configuration says how; and
        whether this call created it.  An existing network must be the one the
        configuration describes."""
        name = conf.network or conf.name
        net = self.engine.networks.named(name)
        if net is not None:
            _same(conf, net, _network_spec(conf, name))
            return net, False
        if not conf.subnet:
            raise CniError(cni.INVALID_CONFIG, f"network {name} not found, and the configuration has no subnet to create it")
        try:
            return self.engine.networks.create(_network_spec(conf, name)), True
        except Conflict:
            net = self.engine.networks.named(name)
            if net is None:  # not a race with another ADD: the conflict itself (a pool overlap, a bridge name taken)
                raise
            _same(conf, net, _network_spec(conf, name))
            return net, False

    def _result(self, conf: NetConf, sandbox: str, ep: Endpoint, net: Network) -> dict[str, Any]:
        """The CNI result, in the shape of the configuration's version; after a
        chained plugin's ``prevResult``, that result with ours added to it."""
        version = conf.cniVersion
        old = not cni.at_least(version, "1.0.0")
        prev = conf.prevResult or {}
        before = [i for i in prev.get("interfaces") or [] if isinstance(i, dict)]
        host_end: dict[str, Any] = {"name": ep.host_ifname, "mac": self.engine.host.link_mac(ep.host_ifname) or ""}
        inside: dict[str, Any] = {"name": ep.ifname, "mac": ep.mac, "sandbox": sandbox}
        if version == "1.1.0":
            host_end["mtu"] = inside["mtu"] = net.mtu
        ips, routes = [], []
        for address, prefixlen, gateway, default in (
            (ep.address, ep.prefixlen, net.gateway, ("0.0.0.0/0", ep.gateway)),
            (ep.address6, ep.prefixlen6, net.gateway6, ("::/0", ep.gateway6)),
        ):
            if not address:
                continue
            ip: dict[str, Any] = {"address": f"{address}/{prefixlen}", "interface": len(before) + 1}
            if gateway:
                ip["gateway"] = gateway
            if old:
                ip["version"] = "4" if ":" not in address else "6"
            ips.append(ip)
            if default[1]:
                routes.append({"dst": default[0], "gw": default[1]})
        result: dict[str, Any] = {
            "cniVersion": version,
            "interfaces": [*before, host_end, inside],
            "ips": [*(prev.get("ips") or []), *ips],
            "routes": [*(prev.get("routes") or []), *routes],
        }
        if net.user_defined and net.gateway:
            result["dns"] = {"nameservers": [net.gateway]}  # qiao's resolver for the network answers there
        elif prev.get("dns"):
            result["dns"] = prev["dns"]
        return result


_VALID_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*\Z")  # the spec's network names and container ids


def _network_spec(conf: NetConf, name: str) -> NetworkSpec:
    options = dict(conf.options or {})
    if conf.bridge:
        options[OPT_BRIDGE_NAME] = conf.bridge
    if conf.mtu:
        options[OPT_MTU] = str(conf.mtu)
    if not conf.ipMasq:
        options[OPT_MASQUERADE] = "false"
    return NetworkSpec(name, conf.driver, conf.subnet, gateway=conf.gateway, ip_range=conf.ipRange, internal=conf.internal, options=options)


def _same(conf: NetConf, net: Network, spec: NetworkSpec) -> None:
    """An existing network must be what the configuration says (else code 7, naming the difference)."""
    differ = []
    if net.driver != spec.driver:
        differ.append(f"driver {net.driver}, not {spec.driver}")
    wanted = _normal(spec.subnet)
    if wanted and wanted not in (net.subnet, net.cluster_subnet):
        differ.append(f"subnet {net.cluster_subnet or net.subnet}, not {spec.subnet}")
    if spec.gateway and spec.gateway != net.gateway and not net.cluster_subnet:
        differ.append(f"gateway {net.gateway}, not {spec.gateway}")
    if net.internal != spec.internal:
        differ.append(f"internal {str(net.internal).lower()}, not {str(spec.internal).lower()}")
    for key, value in spec.options.items():
        have = str(net.mtu) if key == OPT_MTU else net.options.get(key, "(unset)")
        if have != value:
            differ.append(f"option {key}={have}, not {value}")
    if differ:
        raise CniError(cni.INVALID_CONFIG, f"network {net.name} exists with " + "; ".join(differ))


def _error(version: str, code: int, msg: str, details: str = "") -> dict[str, Any]:
    out = cni.error(version, code, msg, details)
    out["message"] = msg  # what a Docker-API client reads
    return out


def _normal(subnet: str) -> str:
    """A subnet as qiao stores it ("10.89.0.5/24" -> "10.89.0.0/24"); unparsable text as it is (create refuses it)."""
    try:
        return str(ipaddress.ip_network(subnet, strict=False)) if subnet else ""
    except ValueError:
        return subnet


def _cidrs(ep: Endpoint) -> list[str]:
    return [f"{a}/{n}" for a, n in ((ep.address, ep.prefixlen), (ep.address6, ep.prefixlen6)) if a]


def _dns_names(container_id: str, args: dict[str, str]) -> list[str]:
    """What the network's resolver answers with the attachment's address:
    a pod's name and ``name.namespace`` (Kubernetes, Podman), else the
    runtime's container id and its 12-character prefix (as Docker's short id)."""
    pod, namespace = args.get("K8S_POD_NAME", ""), args.get("K8S_POD_NAMESPACE", "")
    candidates = [pod, f"{pod}.{namespace}" if namespace else ""] if pod else [container_id, container_id[:12]]
    return list(dict.fromkeys(n for n in candidates if n and ids.DNS_NAME_RE.match(n)))


def _endpoint_spec(conf: NetConf, args: dict[str, str], aliases: list[str]) -> EndpointSpec:
    """Static values: the runtime's ``ips`` and ``mac`` capabilities, or CNI_ARGS ``IP`` and ``MAC``."""
    rc = conf.runtimeConfig or RuntimeConfig()
    ip = ip6 = ""
    for text in [*(rc.ips or []), *([args["IP"]] if args.get("IP") else [])]:
        try:
            address = ipaddress.ip_interface(text).ip
        except ValueError:
            raise CniError(cni.INVALID_CONFIG, f"invalid static IP {text!r}") from None
        if address.version == 4 and not ip:
            ip = str(address)
        elif address.version == 6 and not ip6:
            ip6 = str(address)
    return EndpointSpec(aliases=tuple(aliases), ip=ip, ip6=ip6, mac=rc.mac or args.get("MAC", ""))


def _port_bindings(conf: NetConf) -> dict[str, tuple[PortBinding, ...]]:
    out: dict[str, list[PortBinding]] = {}
    for m in (conf.runtimeConfig or RuntimeConfig()).portMappings or []:
        out.setdefault(f"{m.containerPort}/{m.protocol.lower()}", []).append(PortBinding(m.hostIP, str(m.hostPort)))
    return {k: tuple(v) for k, v in out.items()}
