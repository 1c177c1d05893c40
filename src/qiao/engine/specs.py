"""What a caller asks the engine for, typed: the front doors (the Docker
API, later the CNI plugin and the dockerd plugin) translate their wire
format into these at the edge, and the engine never sees JSON.

Shapes are checked by the front door; meaning (is this subnet free, does
this driver take that option) is checked by the engine and its drivers.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    driver: str = "bridge"
    subnet: str = ""  # IPv4; empty: the driver chooses
    gateway: str = ""
    ip_range: str = ""
    enable_ipv6: bool = False
    subnet6: str = ""
    gateway6: str = ""
    internal: bool = False
    attachable: bool = False
    options: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointSpec:
    """One network's settings of an endpoint (Docker's EndpointSettings)."""

    aliases: tuple[str, ...] = ()
    ip: str = ""
    ip6: str = ""
    mac: str = ""


@dataclass(frozen=True)
class PortBinding:
    host_ip: str = ""
    host_port: str = ""  # "", "8080" or "8080-8090"


@dataclass(frozen=True)
class ContainerSpec:
    cmd: tuple[str, ...]
    name: str | None = None
    env: tuple[str, ...] = ()
    hostname: str = ""
    network_mode: str = "bridge"  # bridge | host | none | container:REF | a network
    networks: dict[str, EndpointSpec] = field(default_factory=dict)  # network ref -> settings
    auto_remove: bool = False
    port_bindings: dict[str, tuple[PortBinding, ...]] = field(default_factory=dict)  # "80/tcp" -> bindings
    exposed_ports: tuple[str, ...] = ()  # "80/tcp", ...
    publish_all: bool = False
    links: tuple[str, ...] = ()  # NAME[:ALIAS]
    # The process: who it runs as, where, with which capabilities (Docker's defaults unless changed).
    user: str = ""
    workdir: str = ""
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    # Its streams: a TTY, stdin kept open (and closed after the first client leaves), what a
    # client attaches (shown only), the TTY's first size (rows, columns).
    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False
    attach_stdin: bool = False
    attach_stdout: bool = False
    attach_stderr: bool = False
    console_size: tuple[int, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)  # Config.Labels
    # The image (qiao.images): its name as given ("" or "qiao/host": the host's filesystem),
    # and the entrypoint (None: not given, the image's counts; ``cmd`` follows it).
    image: str = ""
    entrypoint: tuple[str, ...] | None = None
    # Lifecycle (Docker's --restart, --stop-signal, --stop-timeout) and the /etc files
    # (--domainname, --dns, --dns-search, --dns-option, --add-host).
    restart_policy: str = ""  # "" | no | always | unless-stopped | on-failure
    restart_retries: int = 0  # on-failure's maximum, 0: no limit
    stop_signal: str = ""  # a signal name or number; "" is SIGTERM
    stop_timeout: int | None = None  # seconds; None is 10
    domainname: str = ""
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()  # NAME:IP (IP may be host-gateway)


@dataclass(frozen=True)
class ExecSpec:
    """Docker's exec create: a process started in a running container."""

    cmd: tuple[str, ...]
    env: tuple[str, ...] = ()
    user: str | None = None  # None: the container's
    workdir: str = ""  # "": the container's
    privileged: bool = False
    tty: bool = False
    attach_stdin: bool = False
    attach_stdout: bool = False
    attach_stderr: bool = False
    detach_keys: str = ""
    console_size: tuple[int, ...] = ()


@dataclass(frozen=True)
class AttachmentSpec:
    """An endpoint in a sandbox another engine made (a CNI runtime's pod
    namespace): keyed by the runtime, its network configuration's name, its
    container id and the interface name (CNI's primary key)."""

    runtime: str  # "cni"
    config: str  # the runtime's name for the network configuration (GC's scope)
    container_id: str
    ifname: str
    sandbox: str  # the network namespace's path, as the runtime names it
    network: str  # qiao network, by name or id
    endpoint: EndpointSpec = EndpointSpec()
    port_bindings: dict[str, tuple[PortBinding, ...]] = field(default_factory=dict)  # "80/tcp" -> bindings
    dns_names: tuple[str, ...] = ()
    default_route: bool = True
    # A path naming the same namespace that qiaod can open (``/proc/self/fd/N`` of a
    # descriptor the runtime's side passed): when ``sandbox`` names another namespace
    # here (the runtime runs in a mount namespace of its own), qiao pins this one.
    sandbox_source: str = ""
