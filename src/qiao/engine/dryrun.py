"""The engine's own operations, run dry: what ``qiao explain`` shows.

A dry run is a second engine made of the same parts (the network registry,
the drivers, containers, attachments, published ports) wired so that nothing
can change: its kernel ports record each call instead of making it
(:mod:`qiao.kernel.recording`), its store reads the real one and writes
nowhere, it starts and signals no process, and it writes no file under
qiao's root.  So the recorded calls are, in order, what the real operation
would do; nothing describes the steps a second time.

**Fresh** (``qiao explain --from-scratch``): a host where qiao never ran.
The dry engine starts empty and does what a first start of qiaod does (its
two nft tables, the ``bridge`` network, this host's side of every cluster
network), then brings up what the operations build on, as this host has it:
the networks they name (the same records: ids, bridges, subnets) and the
running containers they name (started again), and then the operations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from qiao.drivers import Drivers
from qiao.engine.attachments import Attachments
from qiao.engine.containers import Containers
from qiao.engine.engine import Engine
from qiao.engine.errors import QiaoError
from qiao.engine.events import Events
from qiao.engine.models import Container, Endpoint, Network
from qiao.engine.networks import Networks
from qiao.engine.ports import PortRequest, PortReservations, Publisher
from qiao.engine.store import Store, Writer
from qiao.kernel.recording import Recorder
from qiao.paths import Root
from qiao.runtime.supervisor import Started, Supervisor

NO_SUCH_PID = 2**31 - 1  # above any pid_max: what a dry start reports as the command's pid


class DryStore(Store):
    """Reads the real store's rows (none for a fresh host); writes go nowhere."""

    def __init__(self, real: Store | None):  # no database of its own
        self._real = real

    def load(self, kind: str) -> list[dict[str, Any]]:
        return self._real.load(kind) if self._real is not None else []

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Writer]:
        yield _NoWrites()

    def close(self) -> None:
        pass


class _NoWrites(Writer):
    def __init__(self) -> None:
        pass

    def put(self, kind: str, obj: dict[str, Any]) -> None:
        pass

    def delete(self, kind: str, obj_id: str) -> None:
        pass


class _Claimed:
    """A host port a fresh host would give: nothing there holds it (stands in for the bound socket)."""

    def __init__(self, address: str, port: int):
        self._name = (address, port)

    def getsockname(self) -> tuple[str, int]:
        return self._name

    def close(self) -> None:
        pass


class DryReservations(PortReservations):
    """Host ports in a dry run.  Conflicts with the real reservations are found
    in a copy of their index; a port is tried as for real (bound, so a host
    process holding it is named) but closed at once, never held.  On a fresh
    host (no ``real``) nothing holds any port: only "any port" asks the kernel."""

    def __init__(self, real: PortReservations | None):
        super().__init__()
        self._fresh = real is None
        if real is not None:
            self._index = {key: list(owners) for key, owners in real._index.items()}

    def _bind(self, req: PortRequest, port: int) -> socket.socket:
        if self._fresh and port:
            claimed: Any = _Claimed(req.host_ip, port)
            return claimed
        return super()._bind(req, port)

    def _hold(self, owner: str, sock: socket.socket) -> None:
        sock.close()


class DryContainers(Containers):
    """Containers whose processes are not touched: a start records the command
    it would run, a removal kills nothing and finishes the container at once,
    as its exit would.  Their files go to the dry run's scratch directory."""

    def __init__(self, recorder: Recorder, *args: Any, **kw: Any):
        self._recorder = recorder
        super().__init__(*args, **kw)

    def _supervisor(self) -> Supervisor:
        nobody: Any = None  # a dry run starts nothing and watches nothing
        return nobody

    def _spawn(self, ctr: Container, spec: dict[str, Any], files: dict[str, str], stdio: tuple[int, int, int] | None) -> Any:
        self._recorder.record("process", "spawn", cmd=list(ctr.cmd), netns=spec.get("netns", ""), joined=bool(ctr.joined_to))
        return Started(NO_SUCH_PID, NO_SUCH_PID, 0)

    def _kill_now(self, pid: int) -> None:
        self._recorder.step("kill-process")
        self._recorder.record("process", "kill", pid=pid)

    def _kill_orphan_shim(self, ctr: Container) -> None:
        pass

    def _wait_exit(self, ctr: Container, timeout: float | None) -> None:
        if ctr.running:
            self._finish(ctr)  # the exit the supervisor would report

    def _write_etc(self, ctr: Container, endpoints: list[Endpoint]) -> None:
        pass


class DryEngine:
    """The parts of :class:`~qiao.engine.engine.Engine` that operations use,
    over ``recorder``'s ports.  Use it as a context manager (its scratch
    directory goes at the end)."""

    def __init__(self, engine: Engine, recorder: Recorder):
        self.real, self.recorder = engine, recorder
        self.lock = threading.RLock()
        self.store = DryStore(None if recorder.fresh else engine.store)
        self.networks = Networks(self.store, Drivers([]), recorder.firewall, self.lock, Events(), recorder.step)
        # Outside the engine lock: a global driver copies its control loop's view under that loop's lock, which comes first.
        self.networks.drivers = Drivers([d.dry_run(recorder, self.networks) for d in engine.drivers])
        self.ports = Publisher(recorder.firewall, recorder.host, self._describe_owner)
        self._scratch = tempfile.TemporaryDirectory(prefix="dry-run-", dir=engine.root.run)  # under qiao's root, as every path qiao uses
        root = Root(self._scratch.name, engine.root.run)  # sandboxes where qiao keeps them; files in the scratch directory
        host, step, resolv = recorder.host, recorder.step, engine.containers.resolv_conf
        self.containers = DryContainers(recorder, root, self.store, self.networks, host, self.lock, step, resolv, self.ports)
        self.attachments = Attachments(self.store, self.networks, host, self.ports, self.lock, engine.root.netns_dir, step)
        if recorder.fresh:
            self.ports.reservations = DryReservations(None)
            return
        with engine.lock:  # one consistent view of the real state
            self.networks.load()
            for net_id, held in engine.networks.held.items():
                self.networks.held[net_id] = set(held)
                for address in held:
                    self.networks.pools[net_id].reserve(ipaddress.ip_address(address))
            self.containers.load()
            self.attachments.load()
            self.ports.reservations = DryReservations(engine.ports.reservations)

    def __enter__(self) -> DryEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self._scratch.cleanup()

    def _describe_owner(self, owner: str) -> str:
        return self.attachments.describe(owner) or self.containers.describe(owner)

    def start_fresh(self, network_refs: Iterable[str], container_refs: Iterable[str]) -> None:
        """A first start of qiaod on an empty host, then what the operations name, as this host has it."""
        nets, ctrs = self._needed(network_refs, container_refs)
        with self.lock:
            self.recorder.step("start-up")
            self.networks.restore_kernel([])  # the tables, empty
            for net in nets:
                self.networks.ensure(net)
            self.networks.ensure_builtin()
        for driver in self.networks.drivers:  # (outside the engine lock, as a daemon's control loop runs)
            driver.join_cluster()
        with self.lock:
            for ctr in ctrs:
                self.containers.by_id[ctr.id] = ctr
                if ctr.status == "running":
                    self.recorder.record("process", "needs", name=ctr.name)
                    ctr.status = "created"
                    self.containers.start(ctr.id)

    def _needed(self, network_refs: Iterable[str], container_refs: Iterable[str]) -> tuple[list[Network], list[Container]]:
        """Copies of this host's local networks and containers that the references
        name, with what those build on (a container's networks, the container whose
        namespace it joins, its links), dependencies first.  A reference that does
        not resolve is left for the operation to report."""
        real = self.real
        with real.lock:
            ctrs: dict[str, Container] = {}

            def add(ctr: Container) -> None:
                if ctr.id in ctrs:
                    return
                for dep in [ctr.joined_to or "", *(target for target, _alias in ctr.links)]:
                    if dep in real.containers.by_id:
                        add(real.containers.by_id[dep])
                ctrs[ctr.id] = dataclasses.replace(
                    ctr, pid=0, shim_pid=0, shim_start=0, sandbox_key="", endpoint_ids=[], ports=[], attachments=list(ctr.attachments)
                )

            for ref in container_refs:
                with contextlib.suppress(QiaoError):
                    add(real.containers.get(ref))
            wanted = ["bridge", *network_refs, *(att["network"] for c in ctrs.values() for att in c.attachments)]
            nets: dict[str, Network] = {}
            for ref in wanted:
                with contextlib.suppress(QiaoError):
                    net = real.networks.get(ref)
                    if net.scope == "local" and net.id not in nets:  # a cluster's networks come with join_cluster
                        nets[net.id] = dataclasses.replace(net, options=dict(net.options), driver_state=dict(net.driver_state))
        return list(nets.values()), list(ctrs.values())
