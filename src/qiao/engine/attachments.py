"""Attachments: endpoints in sandboxes that another engine made.

A CNI runtime (containerd, Podman, a Kubernetes node) creates a pod's
network namespace and asks qiao to put an interface into it; later dockerd
will ask the same.  qiao owns only the endpoint, its address and its
published ports, never the sandbox or the process: the runtime keeps those.
Each attachment is keyed by the runtime's own identity for it (CNI's
network name, container id and interface name), so a repeated ADD is a
conflict and a repeated DEL a no-op.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading

from qiao.engine import ids, ports
from qiao.engine.errors import Conflict, InvalidParameter, NotFound
from qiao.engine.models import Attachment, Endpoint, Network, from_dict, now, to_dict
from qiao.engine.networks import Networks
from qiao.engine.specs import AttachmentSpec
from qiao.engine.steps import Fault, Steps, Teardown
from qiao.engine.store import Store
from qiao.kernel.firewall import PortMapping
from qiao.kernel.host import Host

IFNAME_MAX = 15  # IFNAMSIZ - 1
log = logging.getLogger("qiao.attachments")


def key(runtime: str, config: str, container_id: str, ifname: str) -> str:
    return f"{runtime}:{config}/{container_id}/{ifname}"


def check_ifname(ifname: str) -> None:
    """Linux's rules for an interface name (the CNI spec repeats them)."""
    if not ifname or ifname in (".", "..") or len(ifname.encode()) > IFNAME_MAX:
        raise InvalidParameter(f"invalid interface name {ifname!r}: 1 to {IFNAME_MAX} bytes, not '.' or '..'")
    if any(c in "/:" or c.isspace() for c in ifname) or not ifname.isprintable():
        raise InvalidParameter(f"invalid interface name {ifname!r}: no '/', ':', whitespace or control characters")


class Attachments:
    def __init__(
        self,
        store: Store,
        networks: Networks,
        host: Host,
        publisher: ports.Publisher,
        lock: threading.RLock,
        netns_dir: str,
        fault: Fault | None = None,
    ):
        self.store, self.networks, self.host, self.ports, self.lock, self.fault = store, networks, host, publisher, lock, fault
        self.netns_dir = netns_dir  # where qiao pins a namespace it cannot name otherwise
        self.by_name: dict[str, Attachment] = {}

    # -- start-up --------------------------------------------------------

    def load(self) -> None:
        for row in self.store.load("attachments"):
            att = from_dict(Attachment, row)
            self.by_name[att.name] = att

    def reconcile(self) -> None:
        """After a restart: an attachment whose namespace is gone (a reboot, a
        runtime that never sent DEL) is detached, so its address, host ports
        and names are free again; the others hold their host ports again (the
        kernel side was re-asserted with the rest)."""
        with self.lock:
            for att in list(self.by_name.values()):
                if att.sandbox_inode and self.host.namespace_id(att.sandbox) != att.sandbox_inode:  # 0: the runtime's own
                    log.info("attachment %s: its network namespace %s is gone; detached", att.name, att.sandbox)
                    self.detach(att.name)
                else:
                    self.ports.adopt(att.id, [PortMapping(**m) for m in att.ports])

    def endpoint_ids(self) -> set[str]:
        return {att.endpoint_id for att in self.by_name.values()}

    def pins(self) -> set[str]:
        """The namespace files qiao keeps for attachments (reconcile must not remove them)."""
        return {att.sandbox for att in self.by_name.values() if att.pinned}

    def published(self) -> list[PortMapping]:
        return [PortMapping(**m) for att in self.by_name.values() for m in att.ports]

    def sandbox_same(self, ep: Endpoint) -> bool:
        """Whether an endpoint's sandbox path still names the namespace it joined (True for endpoints not attached here)."""
        att = next((a for a in self.by_name.values() if a.id == ep.owner), None)
        return att is None or self.host.namespace_id(att.sandbox) == att.sandbox_inode

    def shown_as(self) -> dict[str, str]:
        """Endpoint owner (attachment id) -> the runtime's container id, for `network inspect`."""
        with self.lock:
            return {a.id: a.shown_as or a.container_id for a in self.by_name.values()}

    def describe(self, owner: str) -> str:
        att = next((a for a in self.by_name.values() if a.id == owner), None)
        return f"{att.runtime} attachment {att.container_id}/{att.ifname}" if att else ""

    # -- lookup ----------------------------------------------------------

    def get(self, name: str) -> tuple[Attachment, Endpoint, Network] | None:
        """The attachment, its endpoint and network (None: not attached)."""
        with self.lock:
            att = self.by_name.get(name)
            if att is None:
                return None
            ep = self.networks.endpoints.get(att.endpoint_id)
            net = self.networks.by_id.get(att.network_id)
            if ep is None or net is None:
                return None
            return dataclasses.replace(att), ep, net

    def of_config(self, runtime: str, config: str) -> list[Attachment]:
        with self.lock:
            return [dataclasses.replace(a) for a in self.by_name.values() if a.runtime == runtime and a.config == config]

    def of_runtime(self, runtime: str) -> list[Attachment]:
        with self.lock:
            return [dataclasses.replace(a) for a in self.by_name.values() if a.runtime == runtime]

    # -- attach / detach ---------------------------------------------------

    def attach(self, spec: AttachmentSpec) -> tuple[Attachment, Endpoint, Network]:
        """All or nothing: the endpoint in the sandbox, its ports, the record."""
        check_ifname(spec.ifname)
        inode = self.host.namespace_id(spec.sandbox) if spec.sandbox else 0
        namespace = self.host.namespace_id(spec.sandbox_source) if spec.sandbox_source else inode
        if spec.sandbox and not namespace:
            raise InvalidParameter(f"{spec.sandbox} is not a network namespace")
        for name in spec.dns_names:
            if not ids.DNS_NAME_RE.match(name):
                raise InvalidParameter(f"invalid DNS name {name!r} for the attachment")
        bindings = {ports.key(k): [dataclasses.asdict(b) for b in entries] for k, entries in spec.port_bindings.items()}
        wanted = ports.requests(bindings, list(bindings), False)
        name = key(spec.runtime, spec.config, spec.container_id, spec.ifname)
        with self.lock:
            if name in self.by_name:
                raise Conflict(f"container {spec.container_id} already has interface {spec.ifname} on {spec.config}")
            net = self.networks.get(spec.network)
            self.networks.check_endpoint(net, spec.endpoint)
            if wanted and net.internal:
                raise InvalidParameter(f"port publishing is not possible on internal network {net.name}")
            att_id = ids.new_id()
            pin = os.path.join(self.netns_dir, f"cni-{att_id[:12]}") if namespace != inode else ""
            att = Attachment(
                id=att_id,
                name=name,
                runtime=spec.runtime,
                config=spec.config,
                container_id=spec.container_id,
                ifname=spec.ifname,
                network_id=net.id,
                endpoint_id="",
                sandbox=pin or spec.sandbox,
                sandbox_inode=namespace,
                pinned=bool(pin),
                created=now(),
            )
            with Steps(self.fault) as steps:
                if pin:  # the runtime's path names another namespace here (its own mount namespace): pin the one it passed
                    steps.run("pin-sandbox", lambda: self.host.pin_netns(spec.sandbox_source, pin), lambda: self.host.destroy_netns(pin))
                ep = self.networks.join(steps, net, att.sandbox, spec.ifname, att.id, spec.endpoint, spec.default_route, spec.dns_names)
                mappings = self.ports.publish(steps, att.id, wanted, ep.address)
                att.endpoint_id, att.ports = ep.id, [dataclasses.asdict(m) for m in mappings]

                def commit() -> None:
                    with self.store.transaction() as tx:
                        tx.put("endpoints", to_dict(ep))
                        tx.put("attachments", to_dict(att))

                steps.run("store", commit)
            self.by_name[name] = att
            self.networks.adopt(ep)
            return dataclasses.replace(att), ep, net

    def detach(self, name: str) -> bool:
        """Best effort and complete; False when there was nothing (DEL is idempotent)."""
        with self.lock:
            att = self.by_name.get(name)
            if att is None:
                return False
            with self.store.transaction() as tx:  # first: if it fails, nothing was given back (a retried DEL finds it all)
                tx.delete("endpoints", att.endpoint_id)
                tx.delete("attachments", att.id)
            del self.by_name[name]
            teardown = Teardown(f"detaching {name}", self.fault)
            self.ports.unpublish(teardown, att.id, [PortMapping(**m) for m in att.ports])
            ep = self.networks.endpoints.get(att.endpoint_id)
            if ep is not None:
                self.networks.leave(ep, teardown)
            if att.pinned:
                teardown.run("unpin-sandbox", lambda: self.host.destroy_netns(att.sandbox))
            teardown.report()
            return True

    # -- for a runtime that moves the interface itself (dockerd) ---------------

    def publish(self, name: str, port_bindings: dict[str, list[dict[str, str]]]) -> list[PortMapping]:
        """Publish ports of an attachment (dockerd's ProgramExternalConnectivity), all or nothing; replaces what it had."""
        wanted = ports.requests({ports.key(k): v for k, v in port_bindings.items()}, list(port_bindings), False)
        with self.lock:
            att, ep = self._attached(name)
            self.unpublish(name)
            with Steps(self.fault) as steps:
                mappings = self.ports.publish(steps, att.id, wanted, ep.address)
                changed = dataclasses.replace(att, ports=[dataclasses.asdict(m) for m in mappings])
                steps.run("store", lambda: self._store(changed))
            self.by_name[name] = changed
            return mappings

    def unpublish(self, name: str) -> None:
        """Best effort (dockerd's RevokeExternalConnectivity)."""
        with self.lock:
            att, _ep = self._attached(name)
            if not att.ports:
                return
            teardown = Teardown(f"unpublishing {name}", self.fault)
            self.ports.unpublish(teardown, att.id, [PortMapping(**m) for m in att.ports])
            self.by_name[name] = changed = dataclasses.replace(att, ports=[])
            self._store(changed)
            teardown.report()

    def update(
        self,
        name: str,
        sandbox: str | None = None,
        dns_names: list[str] | None = None,
        aliases: list[str] | None = None,
        shown_as: str | None = None,
    ) -> None:
        """What the runtime told later: the sandbox it moved the interface into,
        the container's id and the names it gave it."""
        with self.lock:
            att, ep = self._attached(name)
            if sandbox is not None:
                att = dataclasses.replace(att, sandbox=sandbox)
            if shown_as is not None:
                att = dataclasses.replace(att, shown_as=shown_as)
            renamed = None
            if dns_names is not None or aliases is not None:
                renamed = dataclasses.replace(ep, dns_names=list(dns_names or ep.dns_names), aliases=list(aliases or ep.aliases))
            with self.store.transaction() as tx:
                tx.put("attachments", to_dict(att))
                if renamed is not None:
                    tx.put("endpoints", to_dict(renamed))
            self.by_name[name] = att
            if renamed is not None and (renamed.dns_names, renamed.aliases) != (ep.dns_names, ep.aliases):
                self.networks.adopt(renamed)  # the DNS zone (and an overlay's name records) follow; not for a sandbox alone

    def _attached(self, name: str) -> tuple[Attachment, Endpoint]:
        att = self.by_name.get(name)
        ep = self.networks.endpoints.get(att.endpoint_id) if att else None
        if att is None or ep is None:
            raise NotFound(f"no endpoint {name}")
        return att, ep

    def _store(self, att: Attachment) -> None:
        with self.store.transaction() as tx:
            tx.put("attachments", to_dict(att))

    def collect(self, runtime: str, config: str, keep: set[tuple[str, str]]) -> list[str]:
        """Detach every attachment of one configuration whose (container id, ifname) is not in ``keep`` (CNI's GC)."""
        gone = [a.name for a in self.of_config(runtime, config) if (a.container_id, a.ifname) not in keep]
        for name in gone:
            self.detach(name)
        return gone

    # -- check -------------------------------------------------------------

    def problems(self, name: str) -> list[str]:
        """What is wrong with an attachment in the kernel now (CNI's CHECK); empty when all is well."""
        got = self.get(name)
        if got is None:
            return [f"{name} is not attached"]
        att, ep, net = got
        found: list[str] = []
        if self.host.namespace_id(att.sandbox) != att.sandbox_inode:
            return [f"the network namespace {att.sandbox} is gone or is another one now"]
        if ep.host_ifname and not self.host.link_exists(ep.host_ifname):
            found.append(f"the host end {ep.host_ifname} of the veth pair is missing")
        inside = self.host.sandbox_link(att.sandbox, att.ifname)
        if inside is None:
            found.append(f"interface {att.ifname} is missing in {att.sandbox}")
        else:
            mac, addresses = inside
            if mac.lower() != ep.mac.lower():
                found.append(f"interface {att.ifname} has MAC {mac}, not {ep.mac}")
            for address, prefixlen in ((ep.address, ep.prefixlen), (ep.address6, ep.prefixlen6)):
                if address and f"{address}/{prefixlen}" not in addresses:
                    found.append(f"interface {att.ifname} lacks its address {address}/{prefixlen}")
        return found
