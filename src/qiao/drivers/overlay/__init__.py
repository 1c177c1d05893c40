"""The overlay driver: one network across hosts, VXLAN between them, each
host's subnet leased from etcd, as flannel's vxlan backend does (see
docs/overlay.md).

On each host an overlay network is a bridge network (the bridge driver's
kernel side, on this host's lease of the range) plus one VXLAN device that
carries the traffic for the other hosts' subnets.  What is cluster-wide
(the definition, the leases, the names) is :mod:`.manager`'s, over the
etcd client in :mod:`.store`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from qiao.drivers import refuse_unknown_options, refuse_unsupported
from qiao.drivers.bridge import BridgeDriver
from qiao.drivers.overlay.manager import OverlayManager
from qiao.engine import ids
from qiao.engine.errors import Conflict, InvalidParameter
from qiao.engine.ipam import parse_subnet, refuse_reserved
from qiao.engine.models import Network, now
from qiao.engine.specs import NetworkSpec
from qiao.engine.steps import Steps, Teardown
from qiao.kernel.firewall import BridgeRules, Firewall
from qiao.kernel.host import Host
from qiao.kernel.vxlan import Vxlan

if TYPE_CHECKING:
    from qiao.drivers import NetworkDriver
    from qiao.engine.networks import Networks
    from qiao.kernel.recording import Recorder

OPT_SUBNET_LEN = "host_subnet_len"


class OverlayDriver(BridgeDriver):
    name: ClassVar[str] = "overlay"
    scope: ClassVar[str] = "global"

    def __init__(self, host: Host, firewall: Firewall, vxlan: Vxlan | None = None, manager: OverlayManager | None = None):
        """Without a cluster store (no ``manager``) the driver only refuses, and restores bridges it finds."""
        super().__init__(host, firewall)
        self.vxlan, self.manager = vxlan, manager

    def validate(self, spec: NetworkSpec, others: Sequence[Network]) -> Network:
        if self.manager is None:
            raise InvalidParameter("overlay networks need a cluster store: start qiaod with --cluster-store etcd://HOST:2379")
        refuse_unsupported(
            self.name,
            spec,
            {"internal": "--internal", "gateway": "--gateway", "ip_range": "--ip-range", "enable_ipv6": "--ipv6", "subnet6": "--ipv6"},
        )
        refuse_unknown_options(self.name, spec.options, (OPT_SUBNET_LEN,))
        if not spec.subnet:
            raise InvalidParameter("an overlay network needs --subnet (the range shared by all hosts, e.g. 10.244.0.0/16)")
        net_range = parse_subnet(spec.subnet)
        if not isinstance(net_range, ipaddress.IPv4Network):
            raise InvalidParameter(f"invalid subnet {spec.subnet}: an overlay's range is IPv4")
        for other in others:
            for taken in (other.subnet, other.cluster_subnet):
                if taken and net_range.overlaps(ipaddress.IPv4Network(taken)):
                    raise Conflict(
                        f"invalid pool request: Pool overlaps with other one on this address space ({taken}, network {other.name})"
                    )
        refuse_reserved(net_range, self.host.addresses())
        given = spec.options.get(OPT_SUBNET_LEN)
        if given is not None and not (given.isascii() and given.isdigit()):
            raise InvalidParameter(f"invalid host_subnet_len {given!r}: a prefix length such as 24")
        length = int(given) if given is not None else (24 if net_range.prefixlen <= 22 else net_range.prefixlen + 2)
        if not net_range.prefixlen < length <= 30:
            raise InvalidParameter(f"invalid host_subnet_len {length}: must be longer than /{net_range.prefixlen} and at most /30")
        net_id = ids.new_id()
        return Network(
            id=net_id,
            name=spec.name,
            driver=self.name,
            created=now(),
            scope=self.scope,
            options=dict(spec.options),
            labels=dict(spec.labels),
            attachable=True,
            cluster_subnet=str(net_range),
            driver_state={"subnet_len": length},
        )

    def publish(self, net: Network) -> Network:
        """Cluster-wide (etcd, no engine lock): the definition, then this host's side through ``ensure``."""
        assert self.manager is not None
        return self.manager.create_network(net, int(net.driver_state["subnet_len"]))

    def unpublish(self, net: Network) -> None:
        """Every host drops its side when it sees the definition go."""
        if self.manager is None:
            raise InvalidParameter(f"network {net.name} is an overlay: removing it needs the cluster store (qiaod --cluster-store)")
        self.manager.remove_network(net)

    def create(self, steps: Steps, net: Network) -> None:
        super().create(steps, net)
        dev = net.driver_state["vxlan"]
        steps.run("create-vxlan", lambda: self._ensure_vxlan(net), lambda: self.host.delete_link(dev))

    def delete(self, net: Network, teardown: Teardown) -> None:
        super().delete(net, teardown)
        teardown.run("delete-vxlan", lambda: self.host.delete_link(net.driver_state["vxlan"]))

    def restore(self, nets: Sequence[Network]) -> None:
        super().restore(nets)
        for net in nets if self.vxlan else ():
            self._ensure_vxlan(net)

    def _ensure_vxlan(self, net: Network) -> None:
        """The VXLAN device with the lease's network address (the peers' routes go via it)."""
        assert self.vxlan is not None
        st = net.driver_state
        lease = ipaddress.IPv4Network(net.subnet or "")
        address = str(lease.network_address)
        self.vxlan.ensure_vxlan(st["vxlan"], st["vni"], st["local_ip"], st["port"], net.mtu, st["vtep_mac"], st["underlay"], address)

    def firewall_rules(self, net: Network) -> BridgeRules:
        return dataclasses.replace(super().firewall_rules(net), member_dev=net.driver_state["vxlan"], cluster=net.cluster_subnet or "")

    def dns_records(self, net: Network) -> list[tuple[list[str], list[str]]]:
        return self.manager.records(net) if self.manager else []

    def layout(self, net: Network) -> dict[str, Any]:
        """The bridge, and the VXLAN device with the peers etcd's leases say it should have."""
        st = net.driver_state
        vxlan = {"dev": st["vxlan"], "vni": st["vni"], "local": st["local_ip"], "port": st["port"], "underlay": st["underlay"]}
        vxlan["peers"] = self.manager.peers(net) if self.manager else []
        return super().layout(net) | {"vxlan": vxlan}

    def status(self) -> dict[str, Any]:
        return self.manager.status() if self.manager else {"ClusterStore": None}

    def dry_run(self, recorder: Recorder, networks: Networks) -> NetworkDriver:
        """The twin's control loop has no threads and writes nothing to etcd: it
        works on a copy of what this host knows of the cluster (its leases, the
        other hosts'), so a dry run of a fresh host joins with this host's share."""
        vxlan = recorder.vxlan(self.vxlan) if self.vxlan else None
        manager = self.manager.dry_copy(recorder, vxlan) if self.manager and vxlan else None
        if manager is not None:
            manager.local = networks
        return OverlayDriver(recorder.host, recorder.firewall, vxlan, manager)

    def join_cluster(self) -> None:
        if self.manager is not None:
            self.manager.join()
