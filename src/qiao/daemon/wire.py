"""Docker Engine API request bodies: typed schemas, checked before any work,
and turned into the engine's specs (:mod:`qiao.engine.specs`).

msgspec (https://jcristharif.com/msgspec/) decodes and validates in one
pass, strictly (a string is not a number, a number is not a string), and
names the offending field in its error (``Expected `str`, got `int` - at
`$.Cmd[0]```); it is small, has no dependencies and is fast, so the check
costs the request path nothing measurable.  Fields a
client may send that qiao does not implement are listed here and refused
when set to anything but their zero value, so nothing is silently ignored;
fields qiao does not know at all are ignored, as dockerd ignores them.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Annotated, Any

import msgspec

from qiao.engine.errors import InvalidParameter
from qiao.engine.specs import ContainerSpec, EndpointSpec, ExecSpec, NetworkSpec, PortBinding
from qiao.images.reference import HOST_IMAGE as HOST_IMAGE  # the image-less mode's name for Docker's clients

Map = dict[str, str]


class Struct(msgspec.Struct, omit_defaults=True):
    pass


# -- networks -------------------------------------------------------------


class IPAMConfig(Struct):
    Subnet: str = ""
    IPRange: str = ""
    Gateway: str = ""
    AuxiliaryAddresses: Map | None = None


class IPAM(Struct):
    Driver: str = ""
    Config: list[IPAMConfig] | None = None
    Options: Map | None = None


class ConfigReference(Struct):
    Network: str = ""


class NetworkCreate(Struct):
    Name: str = ""
    Driver: str = ""
    Scope: str = ""
    CheckDuplicate: bool | None = None
    Internal: bool = False
    Attachable: bool = False
    Ingress: bool = False
    ConfigOnly: bool = False
    ConfigFrom: ConfigReference | None = None
    EnableIPv4: bool | None = None
    EnableIPv6: bool | None = None
    IPAM: IPAM | None = None
    Options: Map | None = None
    Labels: Map | None = None


class EndpointIPAM(Struct):
    IPv4Address: str = ""
    IPv6Address: str = ""
    LinkLocalIPs: list[str] | None = None


class EndpointSettings(Struct):
    IPAMConfig: EndpointIPAM | None = None
    Links: list[str] | None = None
    Aliases: list[str] | None = None
    MacAddress: str = ""
    DriverOpts: Map | None = None
    NetworkID: str = ""
    EndpointID: str = ""
    Gateway: str = ""
    IPAddress: str = ""
    IPPrefixLen: int = 0
    IPv6Gateway: str = ""
    GlobalIPv6Address: str = ""
    GlobalIPv6PrefixLen: int = 0
    DNSNames: list[str] | None = None


class NetworkConnect(Struct):
    Container: str = ""
    EndpointConfig: EndpointSettings | None = None


class NetworkDisconnect(Struct):
    Container: str = ""
    Force: bool = False


# -- containers -----------------------------------------------------------


class HostPort(Struct):
    HostIp: str = ""
    HostPort: str = ""


class RestartPolicy(Struct):
    Name: str = ""
    MaximumRetryCount: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] = 0


class HostConfig(Struct):
    NetworkMode: str = ""
    PortBindings: dict[str, list[HostPort] | None] | None = None
    PublishAllPorts: bool = False
    AutoRemove: bool = False
    Links: list[str] | None = None
    CapAdd: list[str] | None = None
    CapDrop: list[str] | None = None
    Privileged: bool = False
    Dns: list[str] | None = None
    DnsOptions: list[str] | None = None
    DnsSearch: list[str] | None = None
    ExtraHosts: list[str] | None = None
    RestartPolicy: RestartPolicy | None = None
    # Sent by clients, not implemented by qiao: refused unless zero (see _UNSUPPORTED).
    Binds: list[str] | None = None
    Mounts: list[Any] | None = None
    VolumesFrom: list[str] | None = None
    Memory: int = 0
    NanoCpus: int = 0
    CpuShares: int = 0
    PidMode: str = ""
    IpcMode: str = ""
    UTSMode: str = ""
    UsernsMode: str = ""
    ReadonlyRootfs: bool = False
    Sysctls: Map | None = None
    Tmpfs: Map | None = None
    Devices: list[Any] | None = None
    SecurityOpt: list[str] | None = None
    Init: bool | None = None
    Runtime: str = ""
    ConsoleSize: list[int] | None = None  # [rows, columns] of the TTY (qiao.runtime.console)


class NetworkingConfig(Struct):
    EndpointsConfig: dict[str, EndpointSettings | None] | None = None


class ContainerCreate(Struct):
    Cmd: list[str] | str | None = None
    Env: list[str] | None = None
    Hostname: str = ""
    Domainname: str = ""
    ExposedPorts: dict[str, dict[str, Any] | None] | None = None
    HostConfig: HostConfig | None = None
    NetworkingConfig: NetworkingConfig | None = None
    User: str = ""
    WorkingDir: str = ""
    Image: str = ""
    Tty: bool = False
    OpenStdin: bool = False
    StdinOnce: bool = False
    AttachStdin: bool = False
    AttachStdout: bool = False
    AttachStderr: bool = False
    Labels: Map | None = None
    StopSignal: str = ""
    StopTimeout: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] | None = None  # Go's int32 bounds
    Entrypoint: list[str] | str | None = None
    # Not implemented by qiao: refused unless zero.
    Volumes: dict[str, Any] | None = None
    Healthcheck: dict[str, Any] | None = None


# Attribute -> what the user typed, for the refusal's message.
_UNSUPPORTED_HOST = {
    "Binds": "volumes (-v)",
    "Mounts": "--mount",
    "VolumesFrom": "--volumes-from",
    "Memory": "--memory",
    "NanoCpus": "--cpus",
    "CpuShares": "--cpu-shares",
    "PidMode": "--pid",
    "IpcMode": "--ipc",
    "UTSMode": "--uts",
    "UsernsMode": "--userns",
    "ReadonlyRootfs": "--read-only",
    "Sysctls": "--sysctl",
    "Tmpfs": "--tmpfs",
    "Devices": "--device",
    "SecurityOpt": "--security-opt",
    "Init": "--init (containers share the host's PID namespace; the shim already reaps orphans)",
    "Runtime": "--runtime",
}
_UNSUPPORTED_CONFIG = {
    "Volumes": "volumes",
    "Healthcheck": "--health-cmd",
}


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def _shape(kind: Any, value: Any) -> Any:
    """Of a (union) type, the member a JSON value of this shape decodes into."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        for member in typing.get_args(kind):
            if _shape(member, value) is not None:
                return member
        return None
    container = typing.get_origin(kind) or kind
    if isinstance(value, dict):
        return kind if container is dict or (isinstance(kind, type) and issubclass(kind, msgspec.Struct)) else None
    if isinstance(value, list):
        return kind if container is list else None
    return kind


def _drop_nulls(value: Any, kind: Any) -> Any:
    """``null`` for a field means "not given", as dockerd's Go decoder reads it
    (the field keeps its zero value); in a map it stays a value
    (``EndpointsConfig: {"net": null}`` still joins ``net``)."""
    kind = _shape(kind, value)
    if isinstance(value, dict) and isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        hints = _hints(kind)
        return {k: _drop_nulls(v, hints.get(k, Any)) for k, v in value.items() if v is not None}
    if isinstance(value, dict) and typing.get_origin(kind) is dict:
        of = typing.get_args(kind)[1]
        return {k: v if v is None else _drop_nulls(v, of) for k, v in value.items()}
    if isinstance(value, list) and typing.get_origin(kind) is list:
        of = typing.get_args(kind)[0]
        return [_drop_nulls(v, of) for v in value]
    return value


def json_object(body: bytes) -> dict[str, Any]:
    """A body as a JSON object; anything else (not JSON, NaN, a lone surrogate, nesting past
    the interpreter's stack, a number past its digit limit, an array) is the client's mistake."""
    try:
        data = msgspec.json.decode(body or b"{}")
    except (msgspec.DecodeError, ValueError):
        raise InvalidParameter("request body is not valid JSON") from None
    except RecursionError:
        raise InvalidParameter("request body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidParameter("request body must be a JSON object")
    return data


def decode(body: bytes, kind: type[Any]) -> Any:
    """A body checked against a schema (``null`` for a field: not given, as dockerd reads it)."""
    data = json_object(body)
    try:
        return msgspec.convert(_drop_nulls(data, kind), type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidParameter(f"invalid request body: {exc}") from None


def _refuse(obj: Any, fields: dict[str, str]) -> None:
    for attr, what in fields.items():
        if getattr(obj, attr):
            raise InvalidParameter(f"qiao does not support {what}")


def endpoint_spec(settings: EndpointSettings | None) -> EndpointSpec:
    if settings is None:
        return EndpointSpec()
    if settings.Links or settings.DriverOpts or settings.IPAMConfig and settings.IPAMConfig.LinkLocalIPs:
        raise InvalidParameter("qiao does not support per-network links, driver options or link-local addresses")
    ipam = settings.IPAMConfig or EndpointIPAM()
    return EndpointSpec(tuple(settings.Aliases or ()), ipam.IPv4Address, ipam.IPv6Address, settings.MacAddress)


def container_spec(name: str | None, body: bytes) -> ContainerSpec:
    req: ContainerCreate = decode(body, ContainerCreate)
    host = req.HostConfig or HostConfig()
    _refuse(req, _UNSUPPORTED_CONFIG)
    _refuse(host, _UNSUPPORTED_HOST)
    restart = host.RestartPolicy or RestartPolicy()
    cmd = [req.Cmd] if isinstance(req.Cmd, str) else list(req.Cmd or [])
    entrypoint = [req.Entrypoint] if isinstance(req.Entrypoint, str) else req.Entrypoint  # None: not given
    mode = host.NetworkMode or "default"
    bindings = {
        key: tuple(PortBinding(b.HostIp, b.HostPort) for b in entries or [HostPort()]) for key, entries in (host.PortBindings or {}).items()
    }
    endpoints = (req.NetworkingConfig.EndpointsConfig if req.NetworkingConfig else None) or {}
    return ContainerSpec(
        cmd=tuple(cmd),
        name=name,
        env=tuple(req.Env or ()),
        hostname=req.Hostname,
        network_mode="bridge" if mode == "default" else mode,
        networks={("bridge" if ref == "default" else ref): endpoint_spec(cfg) for ref, cfg in endpoints.items()},
        auto_remove=host.AutoRemove,
        port_bindings=bindings,
        exposed_ports=tuple(req.ExposedPorts or ()),
        publish_all=host.PublishAllPorts,
        links=tuple(host.Links or ()),
        user=req.User,
        workdir=req.WorkingDir,
        cap_add=tuple(host.CapAdd or ()),
        cap_drop=tuple(host.CapDrop or ()),
        privileged=host.Privileged,
        tty=req.Tty,
        open_stdin=req.OpenStdin,
        stdin_once=req.StdinOnce,
        attach_stdin=req.AttachStdin,
        attach_stdout=req.AttachStdout,
        attach_stderr=req.AttachStderr,
        console_size=console_size(host.ConsoleSize),
        labels=dict(req.Labels or {}),
        image=req.Image,
        entrypoint=None if entrypoint is None else tuple(entrypoint),
        restart_policy=restart.Name,
        restart_retries=restart.MaximumRetryCount,
        stop_signal=req.StopSignal,
        stop_timeout=req.StopTimeout,
        domainname=req.Domainname,
        dns=tuple(host.Dns or ()),
        dns_search=tuple(host.DnsSearch or ()),
        dns_options=tuple(host.DnsOptions or ()),
        extra_hosts=tuple(host.ExtraHosts or ()),
    )


def console_size(size: list[int] | None) -> tuple[int, ...]:
    """Docker's ``ConsoleSize`` ([rows, columns]; [0, 0] or none: unknown)."""
    if not size or not any(size):
        return ()
    if len(size) != 2 or not all(0 <= n <= 0xFFFF for n in size):
        raise InvalidParameter("invalid ConsoleSize: expected [rows, columns], each 0-65535")
    return (size[0], size[1])


# -- exec -------------------------------------------------------------------


class ExecCreate(Struct):
    Cmd: list[str] | None = None
    Env: list[str] | None = None
    User: str = ""
    WorkingDir: str = ""
    Privileged: bool = False
    Tty: bool = False
    AttachStdin: bool = False
    AttachStdout: bool = False
    AttachStderr: bool = False
    DetachKeys: str = ""
    ConsoleSize: list[int] | None = None


class ExecStart(Struct):
    Detach: bool = False
    Tty: bool = False
    ConsoleSize: list[int] | None = None


def exec_spec(body: bytes) -> ExecSpec:
    req: ExecCreate = decode(body, ExecCreate)
    return ExecSpec(
        cmd=tuple(req.Cmd or ()),
        env=tuple(req.Env or ()),
        user=req.User or None,
        workdir=req.WorkingDir,
        privileged=req.Privileged,
        tty=req.Tty,
        attach_stdin=req.AttachStdin,
        attach_stdout=req.AttachStdout,
        attach_stderr=req.AttachStderr,
        detach_keys=req.DetachKeys,
        console_size=console_size(req.ConsoleSize),
    )


def exec_start(body: bytes) -> tuple[bool, tuple[int, ...]]:
    """Detach, and the TTY's size."""
    req: ExecStart = decode(body, ExecStart)
    return req.Detach, console_size(req.ConsoleSize)


def network_spec(body: bytes) -> NetworkSpec:
    req: NetworkCreate = decode(body, NetworkCreate)
    if req.Ingress or req.ConfigOnly or (req.ConfigFrom and req.ConfigFrom.Network):
        raise InvalidParameter("qiao does not support ingress, config-only or config-from networks")
    if req.EnableIPv4 is False:
        raise InvalidParameter("qiao does not support IPv6-only networks (--ipv4=false)")
    ipam = req.IPAM or IPAM()
    if ipam.Driver not in ("", "default"):
        raise InvalidParameter(f'IPAM driver "{ipam.Driver}" not found: qiao has only the default one')
    if ipam.Options:
        raise InvalidParameter("qiao does not support IPAM options")
    configs = ipam.Config or []
    if any(c.AuxiliaryAddresses for c in configs):
        raise InvalidParameter("qiao does not support --aux-address")
    v4 = [c for c in configs if ":" not in c.Subnet]
    v6 = [c for c in configs if ":" in c.Subnet]
    if len(v4) > 1 or len(v6) > 1:
        raise InvalidParameter("at most one IPv4 and one IPv6 subnet per network are supported")
    c4, c6 = (v4 or [IPAMConfig()])[0], (v6 or [IPAMConfig()])[0]
    if c6.IPRange:
        raise InvalidParameter("qiao does not support an IPv6 --ip-range")
    return NetworkSpec(
        name=req.Name,
        driver=req.Driver or "bridge",
        subnet=c4.Subnet,
        gateway=c4.Gateway,
        ip_range=c4.IPRange,
        enable_ipv6=bool(req.EnableIPv6),
        subnet6=c6.Subnet,
        gateway6=c6.Gateway,
        internal=req.Internal,
        attachable=req.Attachable,
        options=dict(req.Options or {}),
        labels=dict(req.Labels or {}),
    )


def network_connect(body: bytes) -> tuple[str, EndpointSpec]:
    req: NetworkConnect = decode(body, NetworkConnect)
    return req.Container, endpoint_spec(req.EndpointConfig)


def network_disconnect(body: bytes) -> tuple[str, bool]:
    req: NetworkDisconnect = decode(body, NetworkDisconnect)
    return req.Container, req.Force
