"""The CNM objects as stored: plain dataclasses, one row each in the store."""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field
from typing import Any

BUILTIN_NETWORKS = ("bridge", "host", "none")


@dataclass
class Network:
    id: str
    name: str
    driver: str  # a name in the driver registry (qiao.drivers)
    created: str
    subnet: str | None = None
    gateway: str | None = None
    ip_range: str | None = None
    mtu: int = 1500
    options: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    internal: bool = False
    attachable: bool = False
    enable_ipv6: bool = False
    subnet6: str | None = None
    gateway6: str | None = None
    scope: str = "local"  # "global": one network across the hosts of a cluster store
    # Global networks: ``subnet`` is this host's share of ``cluster_subnet``, the range of all hosts.
    cluster_subnet: str | None = None
    driver_state: dict[str, Any] = field(default_factory=dict)  # owned by the driver (an overlay's VNI, ...)

    @property
    def user_defined(self) -> bool:
        """User networks get DNS; the predefined ones keep Docker's legacy behaviour."""
        return not self.builtin

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_NETWORKS

    @property
    def prefixlen(self) -> int:
        assert self.subnet
        return int(self.subnet.split("/")[1])


@dataclass
class Endpoint:
    """An interface of one network in one sandbox.  It knows nothing of
    containers: ``owner`` is whoever asked (a qiao container's id today; a
    CNI runtime's container id and interface, a dockerd endpoint id later)."""

    id: str
    network_id: str
    owner: str
    ifname: str  # inside the sandbox: eth0, eth1, ...
    host_ifname: str  # veth + 7 hex
    address: str
    prefixlen: int
    gateway: str  # empty unless this endpoint carries the default route
    mac: str
    aliases: list[str] = field(default_factory=list)
    address6: str = ""
    prefixlen6: int = 0
    gateway6: str = ""
    sandbox: str = ""  # the network namespace's path
    dns_names: list[str] = field(default_factory=list)  # what the network's resolver answers with our addresses


@dataclass
class Container:
    id: str
    name: str
    created: str
    cmd: list[str]
    env: list[str]
    hostname: str
    network_mode: str  # bridge | host | none | container:<id> | <first network name>
    auto_remove: bool = False
    status: str = "created"  # created | running | exited
    pid: int = 0
    shim_pid: int = 0
    shim_start: int = 0  # /proc/<pid>/stat start time: guards against pid reuse
    exit_code: int = 0
    error: str = ""
    started_at: str = "0001-01-01T00:00:00Z"
    finished_at: str = "0001-01-01T00:00:00Z"
    sandbox_key: str = ""
    endpoint_ids: list[str] = field(default_factory=list)
    port_bindings: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # "80/tcp" -> [{host_ip, host_port}], as asked
    exposed_ports: list[str] = field(default_factory=list)  # "80/tcp", ...
    publish_all: bool = False  # -P
    ports: list[dict[str, Any]] = field(default_factory=list)  # PortMapping fields, while running
    # Networks to join at start, in order (the first one carries the default route):
    # {"network": id, "aliases": [...], "ip": "", "ip6": "", "mac": ""}; changed by connect/disconnect.
    attachments: list[dict[str, Any]] = field(default_factory=list)
    links: list[list[str]] = field(default_factory=list)  # [[container id, alias]] (--link)
    # What the process may do (qiao.runtime.security): Config.User and WorkingDir, HostConfig.CapAdd,
    # CapDrop (normalised: CAP_X or ALL) and Privileged.
    user: str = ""
    workdir: str = ""
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    privileged: bool = False
    # Its streams (qiao.runtime.console): Docker's Config.Tty, OpenStdin, StdinOnce, the
    # AttachStd* the client asked for (shown only) and HostConfig.ConsoleSize ([rows, columns]).
    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False
    attach_stdin: bool = False
    attach_stdout: bool = False
    attach_stderr: bool = False
    console_size: list[int] = field(default_factory=list)
    # What Docker's clients see of it: Config.Labels; its image (qiao.images): Config.Image as given
    # ("" or "qiao/host": the host's filesystem), the image's ID ("sha256:..."; "" without one) and
    # Config.Entrypoint (``cmd`` is Config.Cmd).
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""
    image_id: str = ""
    entrypoint: list[str] = field(default_factory=list)
    # Lifecycle: the restart policy (qiao.engine.restart), how `stop` ends it, and its
    # state: a restarting container waits for its next start; a paused one is frozen.
    restart_policy: str = ""
    restart_retries: int = 0
    restart_count: int = 0
    manually_stopped: bool = False  # by stop or kill: unless-stopped does not restart it
    stop_signal: str = ""
    stop_timeout: int | None = None
    paused: bool = False
    # What the container's /etc files and UTS namespace say beyond qiao's defaults.
    domainname: str = ""
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    extra_hosts: list[str] = field(default_factory=list)  # NAME:IP as asked (host-gateway resolved at start)

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def restarting(self) -> bool:
        """Exited, waiting for the restart its policy asks (Docker shows it as running)."""
        return self.status == "restarting"

    @property
    def argv(self) -> list[str]:
        """What runs: the entrypoint, then the command (Docker's Path and Args)."""
        return [*self.entrypoint, *self.cmd]

    @property
    def joined_to(self) -> str | None:
        """The container whose namespaces this one shares (``container:`` mode)."""
        return self.network_mode.split(":", 1)[1] if self.network_mode.startswith("container:") else None


@dataclass
class Attachment:
    """An endpoint qiao put into a sandbox another engine made (a CNI
    runtime's pod namespace).  ``name`` is the runtime's key for it, unique:
    ``cni:CONFIG/CONTAINERID/IFNAME`` (CNI's primary key)."""

    id: str
    name: str
    runtime: str  # "cni"
    config: str  # the runtime's network configuration name
    container_id: str
    ifname: str
    network_id: str
    endpoint_id: str
    sandbox: str  # the path qiao uses: the runtime's, or qiao's pin of it (``pinned``)
    sandbox_inode: int = 0  # the namespace the sandbox path named at ADD (/proc/PID/ns/net paths are reused)
    pinned: bool = False  # ``sandbox`` is ROOT/run/netns/cni-ID, bound by qiao: the runtime's path is not visible to qiaod
    shown_as: str = ""  # the runtime's id of the container, as `network inspect` lists it (dockerd's, once learned)
    ports: list[dict[str, Any]] = field(default_factory=list)  # PortMapping fields
    created: str = ""


def now() -> str:
    """A timestamp as Docker writes them (RFC 3339, UTC, ``Z``)."""
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
