"""The engine: one lock, one store, the networks and the containers.

Start-up order follows moby's controller: load state, re-assert networks
in the kernel (idempotent), rebuild the firewall table from intent, then
reconcile containers against what is really running.
"""

from __future__ import annotations

import threading

from qiao.engine.containers import Containers
from qiao.engine.networks import Networks
from qiao.engine.steps import Fault
from qiao.engine.store import Store
from qiao.kernel.firewall import Firewall
from qiao.kernel.host import Host
from qiao.paths import Root


class Engine:
    def __init__(self, root: Root, host: Host, firewall: Firewall, fault: Fault | None = None):
        root.ensure()
        self.root = root
        self.lock = threading.RLock()
        self.store = Store(root.store)
        self.networks = Networks(self.store, host, firewall, self.lock, fault)
        self.containers = Containers(root, self.store, self.networks, self.lock, fault)

    def start(self) -> None:
        with self.lock:
            self.networks.load()
            self.containers.load()
            self.networks.restore_kernel(self.containers.published())
            self.networks.ensure_builtin()
            self.containers.reconcile()

    def network_json(self, ref: str) -> dict:
        with self.lock:
            return self.networks.describe(self.networks.get(ref), self.containers.by_id)

    def networks_json(self) -> list[dict]:
        with self.lock:
            nets = sorted(self.networks.by_id.values(), key=lambda n: n.created)
            return [self.networks.describe(n, self.containers.by_id) for n in nets]
