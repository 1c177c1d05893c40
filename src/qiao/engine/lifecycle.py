"""What Docker does to a container besides create, start, stop, kill and rm:
``restart``, ``rename``, ``pause``/``unpause`` (the cgroup freezer),
``container prune``, ``top`` and ``stats``.  The restart *policy* lives with
the containers (:mod:`qiao.engine.restart`); this is what the user asks."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

from qiao.engine import processes, stats, top
from qiao.engine.containers import Containers, ContainerView
from qiao.engine.errors import Conflict, InvalidParameter
from qiao.engine.models import Container, to_dict
from qiao.kernel.host import Host
from qiao.proc import descendants


class Lifecycle:
    def __init__(self, containers: Containers, host: Host):
        self.containers = containers
        self.host = host
        self.lock = containers.lock

    # -- restart, rename -------------------------------------------------

    def restart(self, ref: str, timeout: int | None = None, sig: int | None = None) -> None:
        """Stop (if running), then start as the user's start (``RestartCount`` back to 0).
        An auto-remove container survives its own restart, as in dockerd."""
        with self.lock:
            ctr = self.containers.get(ref)
            auto_remove, ctr.auto_remove = ctr.auto_remove, False
        try:
            self.containers.stop(ctr.id, timeout, sig)
        finally:
            with self.lock:
                ctr.auto_remove = auto_remove
        self.containers.start(ctr.id)
        with self.lock:
            self.containers.tell(ctr, "restart")

    def rename(self, ref: str, name: str) -> None:
        """A new name; on user networks the DNS answers to it at once (and no longer to the old one)."""
        with self.lock:
            ctr = self.containers.get(ref)
            new = name.lstrip("/")
            if not new:
                raise InvalidParameter("Neither old nor new names may be empty")
            if new == ctr.name:
                raise InvalidParameter("Renaming a container with the same name as its current name")
            new = self.containers.new_name(new)  # valid and free, or the 400/409 of create
            old = ctr.name
            endpoints = [ep for _net, ep in self.containers.endpoints(ctr)]
            renamed = [dataclasses.replace(ep, dns_names=[new if n == old else n for n in ep.dns_names]) for ep in endpoints]
            with self.containers.store.transaction() as tx:
                tx.put("containers", to_dict(dataclasses.replace(ctr, name=new)))
                for ep in renamed:
                    tx.put("endpoints", to_dict(ep))
            ctr.name = new
            for ep in renamed:
                self.containers.networks.adopt(ep)  # the DNS zones (and an overlay's publisher) follow
            self.containers.tell(ctr, "rename", oldName="/" + old)

    # -- pause, unpause --------------------------------------------------

    def pause(self, ref: str) -> None:
        self._freeze(ref, True)

    def unpause(self, ref: str) -> None:
        self._freeze(ref, False)

    def _freeze(self, ref: str, frozen: bool) -> None:
        cgroups = self.containers.cgroups
        with self.lock:
            ctr = self.containers.get(ref)
            if ctr.restarting:
                raise Conflict(f"Container {ctr.id} is restarting, wait until the container is running")
            if not ctr.running:
                raise Conflict(f"Container {ctr.id} is not running")
            if frozen and ctr.paused:
                raise Conflict(f"Container {ctr.id} is already paused")
            if not frozen and not ctr.paused:
                raise Conflict(f"Container {ctr.id} is not paused")
            if not cgroups.available:
                raise Conflict(f"cannot pause container {ctr.name}: {cgroups.why}")
            if not cgroups.exists(ctr.id):
                raise Conflict(f"cannot pause container {ctr.name}: it runs without a cgroup of its own (it was started by an older qiao)")
            try:
                cgroups.freeze(ctr.id, frozen)
            except (OSError, TimeoutError) as exc:
                if frozen:  # all or nothing: not left half frozen
                    cgroups.freeze(ctr.id, False)
                raise Conflict(f"cannot {'pause' if frozen else 'unpause'} container {ctr.name}: {exc}") from None
            ctr.paused = frozen
            with self.containers.store.transaction() as tx:
                tx.put("containers", to_dict(ctr))
            self.containers.tell(ctr, "pause" if frozen else "unpause")

    # -- prune -----------------------------------------------------------

    def prune(self, wanted: Callable[[ContainerView], bool] = lambda _view: True) -> list[str]:
        """Remove every stopped container ``wanted`` says yes to (created or exited;
        not restarting); one that cannot be removed is left, as dockerd leaves it."""
        removed = []
        with self.lock:
            views = [v for v in self.containers.views(all_=True) if not (v.container.running or v.container.restarting)]
            for view in views:
                if not wanted(view):
                    continue
                try:
                    self.containers.remove(view.container.id)
                except Conflict:
                    continue
                removed.append(view.container.id)
            self.containers.eventlog.record("container", "prune", "", {"reclaimed": "0"})
        return removed

    # -- top, stats ------------------------------------------------------

    def _running(self, ref: str) -> Container:
        ctr = self.containers.get(ref)
        if ctr.restarting:
            raise Conflict(f"Container {ctr.id} is restarting, wait until the container is running")
        if not ctr.running:
            raise Conflict(f"Container {ctr.id} is not running")
        return ctr

    def _pids(self, ctr: Container) -> list[int]:
        """The container's processes: its cgroup's members, else what its shim
        (their subreaper) has below it."""
        if self.containers.cgroups.exists(ctr.id):
            return self.containers.cgroups.procs(ctr.id)
        return sorted(descendants(ctr.shim_pid)) if ctr.shim_pid else []

    def top(self, ref: str, ps_args: str = "") -> tuple[list[str], list[list[str]]]:
        top.ps_format(ps_args)  # bad arguments: a 400 before anything is read
        with self.lock:
            ctr = self._running(ref)
            pids = self._pids(ctr)
            self.containers.tell(ctr, "top")
        clock = top.Clock(time.time(), processes.uptime(), processes.memory_total())
        return top.table(processes.read_all(pids), ps_args, clock, processes.user_names())

    def stats(self, ref: str) -> tuple[Container, stats.Sample | None]:
        """The container (a copy) and a sample of it; no sample when it is not running."""
        cgroups = self.containers.cgroups
        with self.lock:
            ctr = dataclasses.replace(self.containers.get(ref))
            if not ctr.running:
                return ctr, None
            pids = self._pids(ctr)
        has_cgroup = cgroups.exists(ctr.id)
        procs = processes.read_all(pids)
        networks = {}
        if ctr.sandbox_key and os.path.exists(ctr.sandbox_key):
            try:
                networks = self.host.sandbox_counters(ctr.sandbox_key)
            except OSError:  # the container ended meanwhile
                networks = {}
        source = stats.Source(
            cpu=cgroups.cpu_usage(ctr.id) if has_cgroup else None,
            memory=cgroups.memory(ctr.id) if has_cgroup else None,
            tasks=cgroups.tasks(ctr.id) if has_cgroup else None,
            procs=procs,
            shim=processes.read(ctr.shim_pid) if ctr.shim_pid else None,
            networks=networks,
        )
        read = stats.timestamp()
        return ctr, stats.sample(source, os.sysconf("SC_NPROCESSORS_ONLN"), processes.system_cpu_ns(), processes.memory_total(), read)
