"""Containers: sandboxes (network, UTS and mount namespaces), their
endpoints, and the process that runs in them.

Modes, as Docker's: ``bridge`` or a user network (own network namespace
with an ``eth0`` endpoint), ``none`` (own namespace, ``lo`` only), ``host``
(no namespaces at all) and ``container:X`` (X's network and UTS
namespaces, X's /etc files).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import ipaddress
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Set
from dataclasses import dataclass, field
from typing import Any

from qiao.engine import attach, etcfiles, ids, ports, restart, signals
from qiao.engine.errors import Conflict, InvalidParameter, NotFound, QiaoError
from qiao.engine.eventlog import EventLog
from qiao.engine.models import Container, Endpoint, Network, from_dict, now, to_dict
from qiao.engine.names import random_name
from qiao.engine.networks import Networks
from qiao.engine.specs import ContainerSpec, EndpointSpec
from qiao.engine.steps import Fault, Steps, Teardown
from qiao.engine.store import Store
from qiao.images import config as image_config
from qiao.images import reference
from qiao.images.registry import Images
from qiao.kernel import linux, netns
from qiao.kernel.cgroup import Cgroups, NoCgroups
from qiao.kernel.firewall import PortMapping
from qiao.kernel.host import Host
from qiao.paths import Root
from qiao.proc import alive
from qiao.runtime import logfile, security
from qiao.runtime.supervisor import StartError, Supervisor, end_leftovers

log = logging.getLogger("qiao.containers")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_WAIT = 2.0  # seconds a SIGKILL's answer waits for the exit to be recorded (dockerd's Kill)


def _etc_mounts(files: dict[str, str]) -> list[list[str]]:
    """qiao's /etc/hosts, /etc/resolv.conf and /etc/hostname over the host's."""
    return [[files[name], "/etc/" + name] for name in ("hosts", "resolv.conf", "hostname")]


def _check_options(spec: ContainerSpec) -> restart.Policy:
    """The lifecycle and /etc options of a create, checked as dockerd checks them."""
    rule = restart.policy(spec.restart_policy, spec.restart_retries)
    if spec.auto_remove and not rule.none:
        raise InvalidParameter("can't create 'AutoRemove' container with restart policy")
    if spec.stop_signal:
        signals.parse(spec.stop_signal)
    if spec.stop_timeout is not None and spec.stop_timeout < -1:
        raise InvalidParameter(f"invalid stop timeout {spec.stop_timeout}: seconds, or -1 to wait for ever")
    if spec.domainname and not ids.DNS_NAME_RE.match(spec.domainname):
        raise InvalidParameter(f"invalid domainname {spec.domainname!r}: not a DNS name")
    for server in spec.dns:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidParameter(f"{server} is not an ip address (--dns)") from None
    for domain in spec.dns_search:
        if domain != "." and not ids.DNS_NAME_RE.match(domain.removesuffix(".")):
            raise InvalidParameter(f"{domain} is not a valid domain (--dns-search)")
    for option in spec.dns_options:
        if not option or any(c.isspace() for c in option) or "\0" in option:
            raise InvalidParameter(f"invalid DNS option {option!r} (--dns-option)")
    for entry in spec.extra_hosts:
        address, name = etcfiles.extra_host(entry, "0.0.0.0")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise InvalidParameter(f"invalid IP address in add-host: {address!r}") from None
        if not name or ":" in name or any(c.isspace() or c in "\0#" for c in name):  # one name per entry, as the CLI checks
            raise InvalidParameter(f"bad format for add-host: {entry!r}")
    return rule


def _seconds(stamp: str) -> float:
    """A stored timestamp (RFC 3339) as seconds since the epoch; 0 for Docker's zero time or garbage."""
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


@dataclass
class ContainerView:
    """A container with what its JSON shows: endpoints by network name, files, links."""

    container: Container
    endpoints: list[tuple[str, Endpoint]]
    files: dict[str, str]
    links: list[str]
    link_notes: dict[str, str] = field(default_factory=dict)  # endpoint id -> what happened to its link behind qiao's back
    network_names: dict[str, str] = field(default_factory=dict)  # network id -> name, of every network it is attached to


class StartFailed(QiaoError):
    """The command could not be started; carries the exit code Docker uses."""

    status = 400

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def gateway_network(nets: list[Network]) -> Network | None:
    """Of a container's networks, the one whose gateway is its default route:
    the first in the order of Docker's sandbox (libnetwork ``Endpoint.Less``):
    not internal, then dual stack before IPv4 only, then by name.  (Docker's
    ``--gw-priority`` comes first there and IPv6-only networks between the
    two; qiao has neither.)"""
    candidates = (n for n in nets if n.gateway and not n.internal)
    return min(candidates, key=lambda n: (not (n.enable_ipv6 and n.gateway6), n.name), default=None)


def _endpoint_spec(att: dict[str, Any]) -> EndpointSpec:
    """A container's stored settings for one network, as the registry takes them."""
    return EndpointSpec(tuple(att["aliases"]), att["ip"], att["ip6"], att["mac"])


def _carrying_route(ep: Endpoint, net: Network) -> Endpoint:
    return dataclasses.replace(ep, gateway=net.gateway or "", gateway6=(net.gateway6 or "") if ep.address6 else "")


class Containers:
    def __init__(
        self,
        root: Root,
        store: Store,
        networks: Networks,
        host: Host,
        lock: threading.RLock,
        fault: Fault | None = None,
        resolv_conf: str = "",
        publisher: ports.Publisher | None = None,
        eventlog: EventLog | None = None,
        cgroups: Cgroups | None = None,
        images: Images | None = None,
    ):
        self.root, self.store, self.networks, self.host, self.lock, self.fault = root, store, networks, host, lock, fault
        self.eventlog = eventlog or EventLog()  # what `docker events` shows
        self.cgroups = cgroups or NoCgroups("qiaod was started without cgroups")
        self.restarts = restart.Restarts(self._restart_due)
        self.images = images or Images(root, store, lock)
        self.firewall = networks.firewall
        self.ports = publisher or ports.Publisher(self.firewall, host, self.describe)
        self.resolv_conf = resolv_conf or etcfiles.default_resolv_conf()  # the host's resolvers (qiaod --resolv-conf)
        self.by_id: dict[str, Container] = {}
        self.changed = threading.Condition(lock)
        self.removed_exit_codes: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.exits: collections.Counter[str] = collections.Counter()  # ends (exits, failed starts) per container: `wait` next-exit
        self.waiting = attach.Waiting()  # clients attached before a start
        self.supervisor = self._supervisor()

    def _supervisor(self) -> Supervisor:
        return Supervisor(self._on_exit, tag=self.root.base or self.root.data)

    # -- start-up --------------------------------------------------------

    def load(self) -> None:
        for row in self.store.load("containers"):
            ctr = from_dict(Container, row)
            self.by_id[ctr.id] = ctr

    def reconcile(self, keep_endpoints: Set[str] = frozenset(), keep_sandboxes: Set[str] = frozenset()) -> None:
        """Repair what a crash (even ``kill -9``) left: adopt live containers,
        finish dead ones, remove kernel objects that no record owns
        (``keep_*``: the endpoints and namespace pins of CNI attachments)."""
        with self.lock:
            for ctr in list(self.by_id.values()):
                if not ctr.running:
                    continue
                if alive(ctr.shim_pid, ctr.shim_start):
                    if ctr.sandbox_key and not ctr.joined_to and not linux.is_netns_mount(ctr.sandbox_key):
                        with contextlib.suppress(OSError):  # the command is gone: its shim is about to exit
                            netns.adopt(ctr.sandbox_key, ctr.pid)  # we run in another mount namespace now
                    self.ports.adopt(ctr.id, [PortMapping(**m) for m in ctr.ports])
                    ctr.paused = self.cgroups.frozen(ctr.id)  # the kernel's word: the freezer outlives the daemon
                    self.supervisor.watch(ctr.id, ctr.shim_pid)
                else:
                    self._finish(ctr)
            live_endpoints = {e for c in self.by_id.values() if c.running for e in c.endpoint_ids} | keep_endpoints
            teardown = Teardown("removing endpoints of containers gone", self.fault)
            for ep in list(self.networks.endpoints.values()):
                if ep.id not in live_endpoints:
                    self.networks.leave(ep, teardown)
                    with self.store.transaction() as tx:
                        tx.delete("endpoints", ep.id)
            teardown.report()
            for name, owner in self.host.owned_links().items():
                # veths are tagged with their endpoint, bridges with "net:<network id>"
                known = owner[4:] in self.networks.by_id if owner.startswith("net:") else owner in self.networks.endpoints
                if not known:
                    self.host.delete_link(name)
            for ctr in self.by_id.values():
                if not ctr.running:
                    self._kill_orphan_shim(ctr)
                    with contextlib.suppress(OSError):  # made by a start that a crash cut short
                        self.cgroups.remove(ctr.id)
            self._restart_at_start()
            keys = {c.sandbox_key for c in self.by_id.values() if c.running and c.sandbox_key} | keep_sandboxes
            for entry in os.listdir(self.root.netns_dir):
                path = os.path.join(self.root.netns_dir, entry)
                if path not in keys:
                    self.host.destroy_netns(path)

    def _restart_at_start(self) -> None:
        """What dockerd restarts when it starts: every container, once started, that
        its policy would restart now (``always`` even when the user stopped it),
        and those that were waiting for a restart when the last daemon went away."""
        for ctr in self.by_id.values():
            if ctr.running or ctr.started_at.startswith("0001-"):
                continue
            rule = restart.Policy(ctr.restart_policy or "no", ctr.restart_retries)
            if ctr.restarting or restart.should_restart(rule, ctr.exit_code, ctr.manually_stopped, ctr.restart_count):
                ctr.status = "restarting"
                self.restarts.schedule(ctr.id)

    # -- lookup ----------------------------------------------------------

    def get(self, ref: str) -> Container:
        ref = ref.lstrip("/")
        if ref in self.by_id:
            return self.by_id[ref]
        for ctr in self.by_id.values():
            if ctr.name == ref:
                return ctr
        matches = [c for c in self.by_id.values() if c.id.startswith(ref)] if ref else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:  # not NotFound: `inspect` would go on to look for a network of that name
            raise InvalidParameter(f"multiple IDs found with provided prefix: {ref}")
        raise NotFound(f"No such container: {ref}")

    def endpoints(self, ctr: Container) -> list[tuple[str, Endpoint]]:
        out = []
        for eid in ctr.endpoint_ids:
            ep = self.networks.endpoints.get(eid)
            if ep:
                out.append((self.networks.by_id[ep.network_id].name, ep))
        return out

    def files(self, ctr: Container) -> dict[str, str]:
        d = self.root.container_dir(ctr.id)
        return {
            "hosts": os.path.join(d, "hosts"),
            "resolv.conf": os.path.join(d, "resolv.conf"),
            "hostname": os.path.join(d, "hostname"),
            "log": os.path.join(d, "container.log"),
            "exit": os.path.join(d, "exitcode"),
        }

    def view(self, ctr: Container) -> ContainerView:
        """What the API shows of a container (under the lock: a consistent snapshot)."""
        links = [f"/{self.by_id[t].name}:/{ctr.name}/{alias}" for t, alias in ctr.links if t in self.by_id]
        # As dockerd shows them: every network's own gateway, not only the one carrying the default route.
        endpoints = [(name, _carrying_route(ep, self.networks.by_id[ep.network_id])) for name, ep in self.endpoints(ctr)]
        notes = {ep.id: self.networks.link_notes[ep.id] for _n, ep in endpoints if ep.id in self.networks.link_notes}
        names = {a["network"]: self.networks.by_id[a["network"]].name for a in ctr.attachments if a["network"] in self.networks.by_id}
        return ContainerView(dataclasses.replace(ctr), endpoints, self.files(ctr), links, notes, names)

    def inspect(self, ref: str) -> ContainerView:
        with self.lock:
            return self.view(self.get(ref))

    def views(self, all_: bool) -> list[ContainerView]:
        with self.lock:
            ctrs = sorted(self.by_id.values(), key=lambda c: c.created, reverse=True)
            return [self.view(c) for c in ctrs if all_ or c.running or c.restarting]  # dockerd counts restarting as running

    # -- create ----------------------------------------------------------

    def create(self, spec: ContainerSpec) -> Container:
        image = None if reference.is_host(spec.image) else self.images.get(spec.image)
        spec = image_config.merge(spec, image_config.process(image.parsed()) if image else image_config.ProcessConfig())
        if not spec.entrypoint and not spec.cmd:
            raise InvalidParameter("no command specified")
        for item in spec.env:  # a bare KEY (a CLI's `-e KEY` of a variable it does not have) unsets it, as in dockerd
            if not item or item.startswith("=") or "\0" in item:
                raise InvalidParameter(f"invalid environment variable {item!r}: expected KEY=VALUE")
        if any("\0" in arg for arg in (*(spec.entrypoint or ()), *spec.cmd)):
            raise InvalidParameter("invalid command: an argument holds a NUL byte")
        if spec.hostname and not ids.DNS_NAME_RE.match(spec.hostname):
            raise InvalidParameter(f"invalid hostname {spec.hostname!r}: not a DNS name")
        bindings = {ports.key(key): [dataclasses.asdict(b) for b in entries] for key, entries in spec.port_bindings.items()}
        exposed = list(dict.fromkeys([ports.key(k) for k in spec.exposed_ports] + list(bindings)))  # Docker exposes what it publishes
        ports.requests(bindings, exposed, spec.publish_all)  # validate now: a bad -p changes nothing
        try:  # user (against the host's files; an image's own are read at start), working directory, capabilities
            process = security.check_process(
                spec.user, spec.workdir, list(spec.cap_add), list(spec.cap_drop), spec.privileged, check_user=image is None
            )
        except security.SecurityError as exc:
            raise InvalidParameter(str(exc)) from None
        _check_options(spec)
        mode, hostname = spec.network_mode or "bridge", spec.hostname
        with self.lock:
            name = self.new_name(spec.name)
            cid = ids.new_id()
            if mode.startswith("container:"):
                if hostname:
                    raise InvalidParameter("conflicting options: hostname and the network mode")
                if bindings or spec.publish_all:
                    raise InvalidParameter("conflicting options: port publishing and the container type network mode")
                if spec.dns or spec.dns_search or spec.dns_options:
                    raise InvalidParameter("conflicting options: dns and the network mode")
                if spec.extra_hosts:
                    raise InvalidParameter("conflicting options: custom host-to-IP mapping and the network mode")
                if spec.domainname:
                    raise InvalidParameter("conflicting options: domainname and the network mode")
                target = self.get(mode.split(":", 1)[1])
                mode = "container:" + target.id
                hostname = target.hostname
            elif mode == "host":
                if spec.domainname:
                    raise InvalidParameter("conflicting options: domainname and the network mode (host mode has the host's UTS namespace)")
                hostname = hostname or socket.gethostname()
            attachments: list[dict[str, Any]] = []
            links: list[list[str]] = []
            if mode not in ("host", "none") and not mode.startswith("container:"):
                first = self.networks.get(mode)
                mode = first.name
                # Keys may be names, ids or id prefixes (as --network takes them): resolve each one.
                wanted = {first.id: first}
                settings: dict[str, EndpointSpec] = {}
                for ref, cfg in spec.networks.items():
                    net = self.networks.get(ref)
                    wanted.setdefault(net.id, net)
                    settings.setdefault(net.id, cfg)
                for net in wanted.values():
                    attachments.append(self._attachment(net, settings.get(net.id, EndpointSpec())))
                if (bindings or spec.publish_all) and first.internal:
                    raise InvalidParameter(f"port publishing is not possible on internal network {first.name}")
                links = self._validate_links(list(spec.links), first.name)
            elif spec.links:
                raise InvalidParameter("--link needs the default bridge network")
            ctr = Container(
                id=cid,
                name=name,
                created=now(),
                cmd=list(spec.cmd),
                entrypoint=list(spec.entrypoint or ()),
                image=spec.image,
                image_id=image.id if image else "",
                env=list(spec.env),
                hostname=hostname or cid[:12],
                network_mode=mode,
                auto_remove=spec.auto_remove,
                port_bindings=bindings,
                exposed_ports=exposed,
                publish_all=spec.publish_all,
                attachments=attachments,
                links=links,
                labels=dict(spec.labels),
                restart_policy=spec.restart_policy if spec.restart_policy not in ("", "no") else "",
                restart_retries=spec.restart_retries,
                stop_signal=spec.stop_signal,
                stop_timeout=spec.stop_timeout,
                domainname=spec.domainname,
                dns=list(spec.dns),
                dns_search=list(spec.dns_search),
                dns_options=list(spec.dns_options),
                extra_hosts=list(spec.extra_hosts),
                **process,
                tty=spec.tty,
                open_stdin=spec.open_stdin,
                stdin_once=spec.stdin_once,
                attach_stdin=spec.attach_stdin,
                attach_stdout=spec.attach_stdout,
                attach_stderr=spec.attach_stderr,
                console_size=list(spec.console_size),
            )
            with self.store.transaction() as tx:
                tx.put("containers", to_dict(ctr))
            self.by_id[cid] = ctr
            self.tell(ctr, "create")
            return ctr

    def new_name(self, name: str | None) -> str:
        if name is None:
            return random_name({c.name for c in self.by_id.values()})
        name = name.lstrip("/")
        if not ids.NAME_RE.match(name):
            raise InvalidParameter(f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        for other in self.by_id.values():
            if other.name == name:
                raise Conflict(
                    f'Conflict. The container name "/{name}" is already in use by container "{other.id}". '
                    "You have to remove (or rename) that container to be able to reuse that name."
                )
        return name

    def _attachment(self, net: Network, spec: EndpointSpec) -> dict[str, Any]:
        """One network's endpoint settings, validated, as the container keeps them."""
        self.networks.check_endpoint(net, spec)
        return {"network": net.id, "aliases": list(spec.aliases), "ip": spec.ip, "ip6": spec.ip6, "mac": spec.mac.lower()}

    def _validate_links(self, specs: list[str], network: str) -> list[list[str]]:
        if specs and network != "bridge":
            raise InvalidParameter("--link is supported only on the default bridge network (user networks resolve names)")
        links = []
        for spec in specs:
            name, _, alias = spec.partition(":")
            target = self.get(name)
            if not target.running:
                raise Conflict(f"Cannot link to a non running container: /{target.name}")
            alias = alias or target.name
            if not ids.DNS_NAME_RE.match(alias):
                raise InvalidParameter(f"invalid link alias {alias!r}: not a DNS name")
            links.append([target.id, alias])
        return links

    # -- start -----------------------------------------------------------

    def start(self, ref: str, stdio: tuple[int, int, int] | None = None) -> Container:
        with self.lock:
            ctr = self.get(ref)
            if ctr.running:
                return ctr
            # A start by the user: a fresh restart manager, as dockerd's (RestartCount back to 0).
            self.restarts.reset(ctr.id)
            ctr.restart_count, ctr.manually_stopped = 0, False
            return self._start_or_record(ctr, stdio)

    def _restart_due(self, cid: str) -> None:
        """A restart policy's wait is over (on the timer's thread)."""
        with self.lock:
            ctr = self.by_id.get(cid)
            if ctr is None or not ctr.restarting:
                return  # stopped, killed, removed or started meanwhile
            try:
                self._start_or_record(ctr, None)
            except Exception as exc:  # as dockerd: a restart that fails leaves the container stopped
                log.warning("restarting container %s failed: %s", ctr.name, exc)
                if ctr.restarting:
                    ctr.status = "exited"
                    with self.store.transaction() as tx:
                        tx.put("containers", to_dict(ctr))
                    self.changed.notify_all()

    def _start_or_record(self, ctr: Container, stdio: tuple[int, int, int] | None) -> Container:
        with self.lock:
            try:
                return self._start(ctr, stdio)
            except StartFailed as exc:
                ctr.exit_code, ctr.error = exc.exit_code, str(exc)
                self.exits[ctr.id] += 1  # a `wait` for the next exit ends here too (the CLI has given up anyway)
                self.changed.notify_all()
                if ctr.auto_remove:
                    self._forget(ctr)
                else:
                    with self.store.transaction() as tx:
                        tx.put("containers", to_dict(ctr))
                raise
            except Exception as exc:  # as moby's containerStart: whatever failed (a port, a step), an auto-remove container goes
                if ctr.auto_remove and not ctr.running:
                    ctr.exit_code, ctr.error = ctr.exit_code or 255, str(exc)  # what a later wait on its id answers
                    self._forget(ctr)
                raise

    def _start(self, ctr: Container, stdio: tuple[int, int, int] | None) -> Container:
        files = self.files(ctr)
        os.makedirs(self.root.container_dir(ctr.id), mode=0o700, exist_ok=True)
        spec: dict[str, Any] = {
            "cmd": ctr.argv,
            "env": self._env(ctr, stdio is not None),
            "exit_file": files["exit"],
            "pid_file": os.path.join(self.root.container_dir(ctr.id), "shim.pid"),
        }
        if ctr.image_id:  # its own root filesystem: the shim resolves its user in there
            spec.update(security.process_spec(ctr.user, ctr.workdir, ctr.cap_add, ctr.cap_drop, ctr.privileged, in_image=True))
        else:
            try:  # who the process is and what it may do; what it must not see (qiao's root)
                process = security.process_spec(ctr.user, ctr.workdir, ctr.cap_add, ctr.cap_drop, ctr.privileged)
            except security.SecurityError as exc:
                raise StartFailed(str(exc), 126) from None
            home = process.pop("home")
            if not any(item.startswith("HOME=") for item in ctr.env):
                spec["env"]["HOME"] = home
            spec.update(process, hide=security.hidden_paths(self.root))
        endpoints: list[Endpoint] = []
        mappings: list[PortMapping] = []
        sandbox = ""
        with Steps(self.fault) as steps:
            if self.cgroups.available:  # else none (a dry run's containers have none either)
                cgroup = steps.run("create-cgroup", lambda: self.cgroups.create(ctr.id), lambda: self.cgroups.remove(ctr.id))
                spec.update(cgroup=cgroup)
            spec.update(domainname=ctr.domainname)
            target = None
            if ctr.joined_to:
                target = self.by_id.get(ctr.joined_to)
                if target is None or not target.running:
                    raise Conflict(f"cannot join network of a non running container: {ctr.joined_to[:12]}")
                sandbox = target.sandbox_key
                owner = target  # whose /etc files: a joined target has none of its own, it uses its own target's
                while owner.joined_to and owner.joined_to in self.by_id:
                    owner = self.by_id[owner.joined_to]
                mounts = None if owner.network_mode == "host" else _etc_mounts(self.files(owner))  # host mode: the host's
                spec.update(netns=sandbox, join_uts_pid=target.pid, mounts=mounts)
            elif ctr.network_mode == "host":
                if ctr.dns or ctr.dns_search or ctr.dns_options or ctr.extra_hosts:  # else the host's own files
                    steps.run("write-etc-files", lambda: self._write_host_mode_etc(ctr))
                    spec.update(mounts=_etc_mounts(files)[:2])
            else:
                sandbox = os.path.join(self.root.netns_dir, ctr.id[:12])
                steps.run("create-sandbox", lambda: self.host.create_netns(sandbox), lambda: self.host.destroy_netns(sandbox))
                if ctr.network_mode == "none":
                    steps.run("configure-sandbox", lambda: self.host.configure_sandbox(sandbox, None))
                nets = [self.networks.get(att["network"]) for att in ctr.attachments]
                gateway_net = gateway_network(nets)
                for index, (att, net) in enumerate(zip(ctr.attachments, nets, strict=True)):
                    ep = self.networks.join(
                        steps, net, sandbox, f"eth{index}", ctr.id, _endpoint_spec(att), net is gateway_net, self._dns_names(ctr, att)
                    )
                    endpoints.append(ep)
                if endpoints:
                    mappings = self._publish(steps, ctr, endpoints[0])
                link_env = self._link_env(ctr)
                spec["env"].update(link_env)
                steps.run("write-etc-files", lambda: self._write_etc(ctr, endpoints))
                spec.update(netns=sandbox, hostname=ctr.hostname, mounts=_etc_mounts(files))
            if ctr.image_id:
                self._image_rootfs(ctr, spec)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(files["exit"])
            started = steps.run("spawn-process", lambda: self._spawn(ctr, spec, files, stdio), lambda: self._kill_now(started.pid))
            ctr.status, ctr.pid, ctr.shim_pid, ctr.shim_start = "running", started.pid, started.shim_pid, started.shim_start
            ctr.exit_code, ctr.error, ctr.started_at = 0, "", now()
            ctr.sandbox_key = sandbox
            ctr.endpoint_ids = [e.id for e in endpoints]
            ctr.ports = [dataclasses.asdict(m) for m in mappings]

            def commit() -> None:
                with self.store.transaction() as tx:
                    for ep in endpoints:
                        tx.put("endpoints", to_dict(ep))
                    tx.put("containers", to_dict(ctr))

            try:
                steps.run("store", commit)
            except BaseException:
                ctr.status, ctr.pid, ctr.sandbox_key, ctr.endpoint_ids, ctr.ports = "created", 0, "", [], []
                raise
        for ep in endpoints:
            self.networks.adopt(ep)
            self._tell_network(ep.network_id, "connect", ctr.id)
        self.tell(ctr, "start")
        return ctr

    def _image_rootfs(self, ctr: Container, spec: dict[str, Any]) -> None:
        """The shim's ``rootfs`` key (qiao.runtime.rootfs): the image below, the
        container's layer above (``fs/upper``, kept across restarts), and the
        /etc files the image-less mode bind-mounts over the host's (in host mode,
        copies of the host's, written now: a container may not write the host's)."""
        lower = self.images.rootfs(ctr.image_id)
        if not os.path.isdir(lower):
            raise StartFailed(f"the files of image {ctr.image_id[7:19]} are gone", 126)
        layer = os.path.join(self.root.container_dir(ctr.id), "fs")
        for part in ("upper", "work", "root"):
            os.makedirs(os.path.join(layer, part), mode=0o755, exist_ok=True)
        mounts = spec.pop("mounts", None)
        if mounts is None:  # host mode (or joined to a host-mode container): copies of the host's files
            files = self.files(ctr)
            copies = {"hostname": ctr.hostname + "\n"}
            for name in ("hosts", "resolv.conf"):
                with contextlib.suppress(OSError), open("/etc/" + name) as f:
                    copies[name] = f.read()
            etcfiles.write(self.root.container_dir(ctr.id), {"hosts": "", "resolv.conf": "", **copies})
            mounts = _etc_mounts(files)
        spec["rootfs"] = {
            "lower": lower,
            "upper": os.path.join(layer, "upper"),
            "work": os.path.join(layer, "work"),
            "target": os.path.join(layer, "root"),
            "etc": mounts,
            "privileged": ctr.privileged,
        }
        if "PATH" not in {item.partition("=")[0] for item in ctr.env}:
            spec["env"]["PATH"] = DEFAULT_PATH  # not the daemon's: the image's directories

    @staticmethod
    def _dns_names(ctr: Container, att: dict[str, Any]) -> list[str]:
        """What a network's resolver answers for this container: name, short id, aliases (as Docker's DNSNames)."""
        return [ctr.name, ctr.id[:12], *att["aliases"]]

    def _extra_hosts(self, ctr: Container) -> list[tuple[str, str]]:
        """``--add-host`` lines; ``host-gateway`` is the default bridge's gateway, as dockerd's default."""
        bridge = next((n for n in self.networks.by_id.values() if n.name == "bridge"), None)
        return [etcfiles.extra_host(entry, (bridge.gateway if bridge else "") or "") for entry in ctr.extra_hosts]

    def _resolv_conf(self, ctr: Container, resolvers: list[str]) -> str:
        """On a user network qiao's resolver answers (and forwards to ``--dns``); else ``--dns`` or the host's."""
        text = etcfiles.resolv_conf(self.resolv_conf, nameservers=resolvers or ctr.dns)
        return etcfiles.override(text, ctr.dns_search, ctr.dns_options, ctr.dns if resolvers else [])

    def _write_host_mode_etc(self, ctr: Container) -> None:
        """Host mode with --dns or --add-host: the host's files with those changes (Docker copies them too)."""
        hosts = _read_text("/etc/hosts") or etcfiles.HOSTS_HEADER
        hosts = hosts.rstrip("\n") + "\n" + "".join(f"{a}\t{n}\n" for a, n in self._extra_hosts(ctr))
        resolv = _read_text(self.resolv_conf)
        if ctr.dns:  # host mode reaches the host's loopback resolvers: nothing else is filtered
            kept = [line + "\n" for line in resolv.splitlines() if line.split()[:1] != ["nameserver"]]
            resolv = "".join(f"nameserver {s}\n" for s in ctr.dns) + "".join(kept)
        resolv = etcfiles.override(resolv, ctr.dns_search, ctr.dns_options, [])
        etcfiles.write(self.root.container_dir(ctr.id), {"hosts": hosts, "resolv.conf": resolv})

    def _write_etc(self, ctr: Container, endpoints: list[Endpoint]) -> None:
        own = etcfiles.own_names(ctr.hostname, ctr.domainname)
        entries = self._extra_hosts(ctr) + [(a, own) for ep in endpoints for a in (ep.address, ep.address6) if a]
        for target_id, alias in ctr.links:
            target = self.by_id.get(target_id)
            address = next((ep.address for _n, ep in self.endpoints(target)), "") if target else ""
            if target and address:
                entries.append((address, f"{alias} {target.hostname}" + (f" {target.name}" if target.name != alias else "")))
        nets = [self.networks.by_id[ep.network_id] for ep in endpoints if ep.network_id in self.networks.by_id]
        resolvers = [n.gateway for n in nets if n.user_defined and n.gateway]
        etcfiles.write(
            self.root.container_dir(ctr.id),
            {
                "hosts": etcfiles.hosts(entries),
                "resolv.conf": self._resolv_conf(ctr, resolvers[:3]),
                "hostname": ctr.hostname + "\n",
            },
        )

    def _link_env(self, ctr: Container) -> dict[str, str]:
        """Docker's legacy link variables (ALIAS_PORT_80_TCP_ADDR, ALIAS_ENV_X, ...)."""
        env: dict[str, str] = {}
        for target_id, alias in ctr.links:
            target = self.by_id.get(target_id)
            if target is None or not target.running:
                raise Conflict(f"Cannot link to a non running container: {alias}")
            address = next((ep.address for _n, ep in self.endpoints(target)), "")
            prefix = alias.upper().replace("-", "_")  # as Docker: only '-' is replaced
            env[f"{prefix}_NAME"] = f"/{ctr.name}/{alias}"
            exposed = sorted((int(k.split("/")[0]), k.split("/")[1]) for k in target.exposed_ports)
            exposed.sort(key=lambda pp: (pp[1] != "tcp", pp[0]))  # Docker lists TCP first
            for number, (port, proto) in enumerate(exposed):
                url = f"{proto}://{address}:{port}"
                if number == 0:
                    env[f"{prefix}_PORT"] = url
                key = f"{prefix}_PORT_{port}_{proto.upper()}"
                env.update({key: url, f"{key}_ADDR": address, f"{key}_PORT": str(port), f"{key}_PROTO": proto})
            for item in target.env:
                k, sep, v = item.partition("=")
                if sep and k not in ("HOME", "PATH"):
                    env[f"{prefix}_ENV_{k}"] = v
        return env

    def _publish(self, steps: Steps, ctr: Container, ep: Endpoint) -> list[PortMapping]:
        """Reserve the host ports and add the DNAT map elements (one nft transaction)."""
        return self.ports.publish(steps, ctr.id, ports.requests(ctr.port_bindings, ctr.exposed_ports, ctr.publish_all), ep.address)

    def describe(self, cid: str) -> str:
        ctr = self.by_id.get(cid)
        return f"container {ctr.name} ({cid[:12]})" if ctr else f"container {cid[:12]}"

    def published(self) -> list[PortMapping]:
        """Every mapping of a running container (to rebuild the firewall table)."""
        return [PortMapping(**m) for c in self.by_id.values() if c.running for m in c.ports]

    def _env(self, ctr: Container, tty_maybe: bool) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "HOSTNAME": ctr.hostname}
        if tty_maybe and os.environ.get("TERM"):
            env["TERM"] = os.environ["TERM"]
        elif ctr.tty:
            env["TERM"] = "xterm"  # as Docker's, for a container with a TTY
        for item in ctr.env:
            key, sep, value = item.partition("=")
            if sep:
                env[key] = value
            else:  # `-e KEY` of a variable the client does not have: unset (dockerd's ReplaceOrAppendEnvValues)
                env.pop(key, None)
        if not ctr.image_id:  # an image's container: HOME from its /etc/passwd, by the shim
            env.setdefault("HOME", "/root")
        return env

    def _spawn(self, ctr: Container, spec: dict[str, Any], files: dict[str, str], stdio: tuple[int, int, int] | None) -> Any:
        """Passed streams (``qiao run`` in the foreground: the caller's), or streams
        the shim holds: logged, and served to the clients attached now and later."""
        try:
            if stdio is not None:
                return self.supervisor.spawn(ctr.id, spec, stdio)
            logfile.repair(files["log"])
            spec["console"] = {
                "tty": ctr.tty,
                "stdin": ctr.open_stdin,
                "size": ctr.console_size,
                "log": os.path.basename(files["log"]),
                "socket": attach.SOCKET,
            }
            return self.waiting.start(ctr.id, lambda fds: self.supervisor.spawn(ctr.id, spec, fds))
        except StartError as exc:
            raise StartFailed(str(exc), exc.exit_code) from None

    def _kill_now(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    # -- exit ------------------------------------------------------------

    def _kill_orphan_shim(self, ctr: Container) -> None:
        """End whatever of this container a crash left running: a daemon killed
        between starting a shim and storing it, a shim killed under its command.
        The shim's ``shim.pid`` names it, its command and their mount namespace;
        a clean exit removes the file (see ``supervisor.end_leftovers``)."""
        end_leftovers(os.path.join(self.root.container_dir(ctr.id), "shim.pid"))

    def _on_exit(self, cid: str) -> None:
        with self.lock:
            ctr = self.by_id.get(cid)
            if ctr is None or not ctr.running:
                return
            self._finish(ctr)

    def _finish(self, ctr: Container) -> None:
        """End what a killed shim left, release the network (best effort, complete),
        then record the exit, or auto-remove."""
        self._kill_orphan_shim(ctr)
        left = [ep.network_id for _n, ep in self.endpoints(ctr)]
        self._release(ctr)
        try:
            with open(self.files(ctr)["exit"]) as f:
                ctr.exit_code = int(f.read().strip())
        except (OSError, ValueError):
            ctr.exit_code, ctr.error = 255, "container shim exited without recording an exit code"
        ctr.status, ctr.pid, ctr.finished_at, ctr.paused = "exited", 0, now(), False
        self.exits[ctr.id] += 1
        self.tell(ctr, "die", exitCode=str(ctr.exit_code))
        for network_id in left:  # as dockerd: die, then each network's disconnect
            self._tell_network(network_id, "disconnect", ctr.id)
        rule = restart.Policy(ctr.restart_policy or "no", ctr.restart_retries)
        ran_for = _seconds(ctr.finished_at) - _seconds(ctr.started_at)
        if self.restarts.after_exit(ctr.id, rule, ctr.exit_code, ctr.manually_stopped, ctr.restart_count, ran_for):
            ctr.status = "restarting"
            ctr.restart_count += 1
            with self.store.transaction() as tx:
                tx.put("containers", to_dict(ctr))
        elif ctr.auto_remove:
            self._forget(ctr)
        else:
            with self.store.transaction() as tx:
                tx.put("containers", to_dict(ctr))
        self.changed.notify_all()

    def _release(self, ctr: Container) -> None:
        """Every step runs, whatever failed before it (a firewall table deleted by
        hand, a veth gone): ports, endpoints, sandbox; then the rows, in one
        transaction.  What failed is logged once; the firewall's resync and the
        next start repair the kernel side."""
        teardown = Teardown(f"releasing container {ctr.name}", self.fault)
        self.ports.unpublish(teardown, ctr.id, [PortMapping(**m) for m in ctr.ports])
        for _name, ep in self.endpoints(ctr):
            self.networks.leave(ep, teardown)
        if ctr.sandbox_key and not ctr.joined_to:
            sandbox = ctr.sandbox_key
            teardown.run("destroy-sandbox", lambda: self.host.destroy_netns(sandbox))
        if self.cgroups.available:
            teardown.run("remove-cgroup", lambda: self.cgroups.remove(ctr.id))
        endpoint_ids = ctr.endpoint_ids
        ctr.sandbox_key, ctr.endpoint_ids, ctr.ports = "", [], []
        with self.store.transaction() as tx:
            for eid in endpoint_ids:
                tx.delete("endpoints", eid)
            tx.put("containers", to_dict(ctr))
        teardown.report()

    def _forget(self, ctr: Container) -> None:
        with self.store.transaction() as tx:
            tx.delete("containers", ctr.id)
        self.by_id.pop(ctr.id, None)
        self.restarts.forget(ctr.id)
        self.tell(ctr, "destroy")
        shutil.rmtree(self.root.container_dir(ctr.id), ignore_errors=True)
        if ctr.image_id:
            self.images.release(ctr.image_id)  # its files, if the image was removed (forced) while this one used it
        self.removed_exit_codes[ctr.id] = ctr.exit_code
        while len(self.removed_exit_codes) > 1024:
            self.removed_exit_codes.popitem(last=False)
        self.exits.pop(ctr.id, None)
        self.changed.notify_all()  # `wait` for its removal

    # -- what `docker events` shows ----------------------------------------

    def tell(self, ctr: Container, action: str, **extra: str) -> None:
        """A container event, with the attributes dockerd gives it: ``extra``
        (exitCode, signal, oldName), the labels, ``image`` and ``name``."""
        attributes = {**ctr.labels, **extra, "name": ctr.name}
        if ctr.image:
            attributes["image"] = ctr.image
        self.eventlog.record("container", action, ctr.id, attributes)

    def _tell_network(self, network_id: str, action: str, container_id: str) -> None:
        net = self.networks.by_id.get(network_id)
        if net is not None:
            self.eventlog.record("network", action, net.id, {"container": container_id, "name": net.name, "type": net.driver})

    # -- stop / kill / wait / remove ------------------------------------

    def wait_target(self, ref: str) -> tuple[str, int]:
        """For a ``wait``: the container's id and its count of ends so far (a
        removed container's full id is still known, with its last exit code)."""
        with self.lock:
            if ref in self.removed_exit_codes:
                return ref, 0
            ctr = self.get(ref)
            return ctr.id, self.exits[ctr.id]

    def wait_until(self, cid: str, condition: str, ends: int, timeout: float) -> int | None:
        """Docker's wait conditions: ``not-running`` (now or when it stops),
        ``next-exit`` (an end after the ``ends`` counted when asked), ``removed``;
        the exit code once met (a removed container meets them all), None if
        ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                ctr = self.by_id.get(cid)
                if ctr is None:
                    return self.removed_exit_codes.get(cid, 0)
                if (condition == "not-running" and not (ctr.running or ctr.restarting)) or (
                    condition == "next-exit" and self.exits[cid] != ends
                ):
                    return ctr.exit_code
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)

    def kill(self, ref: str, sig: int = signal.SIGKILL) -> None:
        """As dockerd's kill: the user stopped it (``unless-stopped`` will not restart
        it); SIGKILL or the stop signal (any signal, without one) also cancels a
        restart and thaws a paused container, so that the signal arrives."""
        with self.lock:
            ctr = self.get(ref)
            if ctr.restarting:  # nothing runs to be signalled: the pending restart is what ends
                self._cancel_restart(ctr)
                return
            if not ctr.running:
                raise Conflict(f"container {ctr.id} is not running")
            final = sig == signal.SIGKILL or not ctr.stop_signal or sig == signals.parse(ctr.stop_signal)
            if final:
                self.restarts.cancel(ctr.id)
            self._mark_stopped(ctr)
            pid = ctr.pid
            self.tell(ctr, "kill", signal=str(int(sig)))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if final:
            self._thaw(ctr)
        if sig == signal.SIGKILL:  # as dockerd: a SIGKILL's answer waits (2 s at most) until the exit is recorded
            with self.lock:
                self._wait_exit(ctr, KILL_WAIT)

    def stop(self, ref: str, timeout: int | None = None, sig: int | None = None) -> None:
        """The stop signal (``--stop-signal``, default SIGTERM; ``sig`` overrides it), then
        SIGKILL after ``timeout`` seconds (``--stop-timeout``, default 10; -1: never)."""
        with self.lock:
            ctr = self.get(ref)
            if ctr.restarting:
                self._cancel_restart(ctr)
                return
            if not ctr.running:
                return
            if sig is None:
                sig = signals.parse(ctr.stop_signal) if ctr.stop_signal else signal.SIGTERM
            if timeout is None:
                timeout = ctr.stop_timeout if ctr.stop_timeout is not None else 10
            self.restarts.cancel(ctr.id)
            self._mark_stopped(ctr)
            pid = ctr.pid
            self.tell(ctr, "kill", signal=str(int(sig)))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        self._thaw(ctr)
        with self.lock:
            self._wait_exit(ctr, None if timeout < 0 else timeout)
            if ctr.running:
                self.tell(ctr, "kill", signal=str(int(signal.SIGKILL)))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_exit(ctr, 30)
            self.tell(ctr, "stop")

    def _mark_stopped(self, ctr: Container) -> None:
        if not ctr.manually_stopped:
            ctr.manually_stopped = True
            with self.store.transaction() as tx:
                tx.put("containers", to_dict(ctr))

    def _cancel_restart(self, ctr: Container) -> None:
        """A restarting container that is stopped, killed or removed stays exited."""
        self.restarts.cancel(ctr.id)
        ctr.status, ctr.manually_stopped = "exited", True
        with self.store.transaction() as tx:
            tx.put("containers", to_dict(ctr))
        self.changed.notify_all()

    def _thaw(self, ctr: Container) -> None:
        """Let a paused container's processes take the signal they were sent."""
        if ctr.paused:
            with contextlib.suppress(OSError):
                self.cgroups.freeze(ctr.id, False)
            with self.lock:
                if ctr.paused and ctr.id in self.by_id:
                    ctr.paused = False
                    with self.store.transaction() as tx:
                        tx.put("containers", to_dict(ctr))

    def _wait_exit(self, ctr: Container, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while ctr.running and (deadline is None or time.monotonic() < deadline):
            self.changed.wait(None if deadline is None else deadline - time.monotonic())

    def remove(self, ref: str, force: bool = False) -> None:
        with self.lock:
            ctr = self.get(ref)
            joined = [c.name for c in self.by_id.values() if c.joined_to == ctr.id and c.running]
            linked = [c.name for c in self.by_id.values() if c.running and any(t == ctr.id for t, _a in c.links)]
            if linked and not force:
                raise Conflict(
                    f"cannot remove container {ctr.name}: container {linked[0]} links to it (--link); stop that one first or use -f"
                )
            if joined and not force:
                raise Conflict(
                    f"cannot remove container {ctr.name}: container {joined[0]} shares its network namespace; stop it first or use -f"
                )
            if ctr.paused and not force:
                raise Conflict(f'cannot remove container "/{ctr.name}": container is paused and must be unpaused first')
            if (ctr.running or ctr.restarting) and not force:
                state = "running" if ctr.running else "restarting"
                raise Conflict(
                    f'cannot remove container "/{ctr.name}": container is {state}: stop the container before removing or force remove'
                )
            self.restarts.cancel(ctr.id)
            if ctr.running:
                self.tell(ctr, "kill", signal=str(int(signal.SIGKILL)))
                self._kill_now(ctr.pid)
                self._thaw(ctr)
                self._wait_exit(ctr, 30)
            if ctr.id in self.by_id:
                self._kill_orphan_shim(ctr)  # a start a crash cut short, a shim that outlived the wait
                self._release(ctr)
                self._forget(ctr)

    # -- connect / disconnect ---------------------------------------------

    def connect(self, ref: str, net_ref: str, cfg: EndpointSpec) -> None:
        """Docker's ``network connect``: a running container gets a new ethN at once."""
        with self.lock:
            ctr, net = self.get(ref), self.networks.get(net_ref)
            if not ctr.attachments:
                raise Conflict(f"container {ctr.name} uses network mode {ctr.network_mode.split(':')[0]}: it cannot join other networks")
            if any(att["network"] == net.id for att in ctr.attachments):
                raise Conflict(f"endpoint with name {ctr.name} already exists in network {net.name}")
            att = self._attachment(net, cfg)
            if not ctr.running:
                ctr.attachments.append(att)
                with self.store.transaction() as tx:
                    tx.put("containers", to_dict(ctr))
                return
            used = {int(ep.ifname[3:]) for _n, ep in self.endpoints(ctr)}
            ifname = f"eth{min(set(range(len(used) + 1)) - used)}"
            current = next((e for _n, e in self.endpoints(ctr) if e.gateway), None)
            takes_route = gateway_network([*(self.networks.by_id[e.network_id] for _n, e in self.endpoints(ctr)), net]) is net
            sandbox = ctr.sandbox_key
            with Steps(self.fault) as steps:
                ep = self.networks.join(steps, net, sandbox, ifname, ctr.id, _endpoint_spec(att), False, self._dns_names(ctr, att))
                demoted = None
                if takes_route:  # as Docker: the network first in its order carries the default route
                    ep = _carrying_route(ep, net)
                    steps.run(
                        "move-default-route",
                        lambda: self.host.set_default_route(sandbox, ep.gateway, ep.gateway6),
                        lambda: self.host.set_default_route(sandbox, current.gateway, current.gateway6) if current else None,
                    )
                    demoted = dataclasses.replace(current, gateway="", gateway6="") if current else None

                def commit() -> None:
                    with self.store.transaction() as tx:
                        tx.put("endpoints", to_dict(ep))
                        if demoted:
                            tx.put("endpoints", to_dict(demoted))
                        tx.put(
                            "containers",
                            to_dict(dataclasses.replace(ctr, attachments=[*ctr.attachments, att], endpoint_ids=[*ctr.endpoint_ids, ep.id])),
                        )

                steps.run("store", commit)
            ctr.attachments.append(att)
            ctr.endpoint_ids.append(ep.id)
            self.networks.adopt(ep)
            if demoted:
                self.networks.adopt(demoted)
            self._write_etc(ctr, [e for _n, e in self.endpoints(ctr)])
            self._tell_network(net.id, "connect", ctr.id)

    def disconnect(self, ref: str, net_ref: str, force: bool = False) -> None:
        with self.lock:
            ctr, net = self.get(ref), self.networks.get(net_ref)
            att = next((a for a in ctr.attachments if a["network"] == net.id), None)
            if att is None:
                raise Conflict(f"container {ctr.name} is not connected to network {net.name}")
            rest = [a for a in ctr.attachments if a is not att]
            if ctr.port_bindings or ctr.publish_all:
                if not rest:
                    raise Conflict(f"cannot disconnect {ctr.name} from {net.name}: it is its last network and it publishes ports")
                if ctr.running and ctr.attachments[0] is att and ctr.ports and not force:
                    raise Conflict(f"cannot disconnect {ctr.name} from {net.name}: its published ports forward to that network")
            ep = next((e for _n, e in self.endpoints(ctr) if e.network_id == net.id), None)
            heir = self._gateway_heir(ctr, ep) if ep and ep.gateway else None
            with Steps(self.fault) as steps:
                if heir and ep:  # first in the kernel, moved back if the store fails
                    sandbox, old = ctr.sandbox_key, ep
                    steps.run(
                        "move-default-route",
                        lambda: self.host.set_default_route(sandbox, heir.gateway, heir.gateway6),
                        lambda: self.host.set_default_route(sandbox, old.gateway, old.gateway6),
                    )

                def commit() -> None:
                    with self.store.transaction() as tx:
                        if ep:
                            tx.delete("endpoints", ep.id)
                        if heir:
                            tx.put("endpoints", to_dict(heir))
                        endpoint_ids = [e for e in ctr.endpoint_ids if not ep or e != ep.id]
                        tx.put("containers", to_dict(dataclasses.replace(ctr, attachments=rest, endpoint_ids=endpoint_ids)))

                steps.run("store", commit)
            ctr.attachments = rest
            if heir:
                self.networks.adopt(heir)
            if ep:
                ctr.endpoint_ids.remove(ep.id)
                teardown = Teardown(f"disconnecting {ctr.name} from {net.name}", self.fault)
                self.networks.leave(ep, teardown)
                teardown.report()
                self._write_etc(ctr, [e for _n, e in self.endpoints(ctr)])
            self._tell_network(net.id, "disconnect", ctr.id)  # as dockerd, also for a container not running

    def _gateway_heir(self, ctr: Container, leaving: Endpoint) -> Endpoint | None:
        """When the endpoint with the default route leaves, the route moves to
        the gateway of the network first in Docker's order among the others;
        the endpoint returned is a copy that carries it."""
        rest = {e.network_id: e for _n, e in self.endpoints(ctr) if e.id != leaving.id}
        net = gateway_network([self.networks.by_id[nid] for nid in rest])
        return _carrying_route(rest[net.id], net) if net else None

    def log_of(self, ref: str) -> tuple[str, str, bool]:
        """A container's id, log file and whether it has a TTY (its log is then one raw stream)."""
        with self.lock:
            ctr = self.get(ref)
            return ctr.id, self.files(ctr)["log"], ctr.tty

    def is_running(self, cid: str) -> bool:
        with self.lock:
            ctr = self.by_id.get(cid)
            return ctr is not None and ctr.running
