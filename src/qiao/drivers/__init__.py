"""Network drivers: one module each, behind one interface.

The interface is the one libnetwork's and netavark's drivers converge on::

    validate(spec, others) -> Network      pure: a record to create, or a clear error; nothing changed yet
    create(steps, net)                     the kernel and firewall side; every step registers its undo
    join(steps, net, ep, sandbox)          plug an endpoint (addresses already chosen) into any sandbox
    leave(net, ep, teardown)               best effort: every step runs, failures are collected
    delete(net, teardown)                  best effort, as leave
    restore(nets)                          at daemon start: re-assert kernel state, idempotent
    dry_run(recorder, networks)            a twin for a dry run (``qiao explain``): recording kernel ports, no cluster writes
    join_cluster()                         a fresh host's first start: this host's side of every cluster network

The registry (:class:`Drivers`) dispatches by driver name; nothing outside
this package branches on a driver's name.  Adding a driver is one module,
one line in :func:`builtin`, and its tests (see docs/design.md, "Adding a
driver").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from qiao.engine.errors import InvalidParameter
from qiao.engine.models import Endpoint, Network
from qiao.engine.specs import NetworkSpec
from qiao.engine.steps import Steps, Teardown
from qiao.kernel.firewall import BridgeRules

if TYPE_CHECKING:
    from qiao.engine.networks import Networks
    from qiao.kernel.recording import Recorder


class NetworkDriver(Protocol):
    name: ClassVar[str]
    # Whether the driver's networks give a sandbox an interface (host and null do not).
    endpoints: ClassVar[bool]
    scope: ClassVar[str]  # "local", or "global": defined once for a cluster, each host creating its side

    def validate(self, spec: NetworkSpec, others: Sequence[Network]) -> Network: ...
    def publish(self, net: Network) -> Network: ...  # global drivers: cluster-wide create, outside the engine lock
    def unpublish(self, net: Network) -> None: ...
    def create(self, steps: Steps, net: Network) -> None: ...
    def delete(self, net: Network, teardown: Teardown) -> None: ...
    def join(self, steps: Steps, net: Network, ep: Endpoint, sandbox: str) -> None: ...  # sandbox "": peer left in the host
    def leave(self, net: Network, ep: Endpoint, teardown: Teardown) -> None: ...
    def restore(self, nets: Sequence[Network]) -> None: ...
    def firewall_rules(self, net: Network) -> BridgeRules | None: ...
    def dns_records(self, net: Network) -> list[tuple[list[str], list[str]]]: ...
    def layout(self, net: Network) -> dict[str, Any]: ...  # its kernel objects on this host, for `qiao topology`
    def status(self) -> dict[str, Any]: ...
    # A twin of the driver for a dry run: the same code over the recorder's kernel ports, registered in ``networks``.
    def dry_run(self, recorder: Recorder, networks: Networks) -> NetworkDriver: ...
    def join_cluster(self) -> None: ...  # dry runs of a fresh host: this host's side of every network of the cluster


class Base:
    """Defaults for drivers whose networks have no kernel side (host, null)."""

    name: ClassVar[str] = ""
    endpoints: ClassVar[bool] = False
    scope: ClassVar[str] = "local"

    def validate(self, spec: NetworkSpec, others: Sequence[Network]) -> Network:
        raise InvalidParameter(f'only one instance of "{self.name}" network is allowed')

    def publish(self, net: Network) -> Network:
        raise NotImplementedError("only global drivers publish")

    def unpublish(self, net: Network) -> None:
        raise NotImplementedError("only global drivers publish")

    def create(self, steps: Steps, net: Network) -> None:
        pass

    def delete(self, net: Network, teardown: Teardown) -> None:
        pass

    def join(self, steps: Steps, net: Network, ep: Endpoint, sandbox: str) -> None:
        raise InvalidParameter(f"network {net.name} (driver {self.name}) gives no interface to join")

    def leave(self, net: Network, ep: Endpoint, teardown: Teardown) -> None:
        pass

    def restore(self, nets: Sequence[Network]) -> None:
        pass

    def firewall_rules(self, net: Network) -> BridgeRules | None:
        return None

    def dns_records(self, net: Network) -> list[tuple[list[str], list[str]]]:
        """Names of endpoints this host does not hold (an overlay's other hosts)."""
        return []

    def layout(self, net: Network) -> dict[str, Any]:
        """The kernel objects the network has on this host (``qiao topology``):
        ``{"bridge": NAME}`` for a bridge, plus ``"vxlan"`` for a device that
        carries it to other hosts; {} for none."""
        return {}

    def status(self) -> dict[str, Any]:
        """What ``GET /info`` shows of the driver."""
        return {}

    def dry_run(self, recorder: Recorder, networks: Networks) -> NetworkDriver:
        return self  # no kernel side, no state

    def join_cluster(self) -> None:
        pass


def refuse_unknown_options(driver: str, options: dict[str, str], known: Sequence[str]) -> None:
    """Every option a driver does not implement is an error, named, before anything changes."""
    for key in sorted(options):
        if key not in known:
            raise InvalidParameter(f"driver {driver} does not support option {key}")


def refuse_unsupported(driver: str, spec: NetworkSpec, fields: dict[str, str]) -> None:
    """``fields``: spec attribute -> the flag a user typed; each set one is refused by name."""
    for attr, flag in fields.items():
        if getattr(spec, attr):
            raise InvalidParameter(f"driver {driver} does not support {flag}")


class Drivers:
    """The registry: driver name -> driver."""

    def __init__(self, drivers: Sequence[Any]):
        self._by_name: dict[str, NetworkDriver] = {d.name: d for d in drivers}

    def get(self, name: str) -> NetworkDriver:
        try:
            return self._by_name[name]
        except KeyError:
            raise InvalidParameter(f'plugin "{name}" not found') from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_name.values())
