"""Where qiao keeps things: every path hangs off one root, so several qiao
"hosts" can share one kernel (``--root DIR`` or ``QIAO_ROOT``).

Standard library only (imported by the CLI).
"""

from __future__ import annotations

import os

DEFAULT_DATA = "/var/lib/qiao"
DEFAULT_RUN = "/run/qiao"


class Root:
    """The directories of one qiao "host".  (A plain class: ``dataclasses``
    would cost the CLI several milliseconds of start-up.)"""

    __slots__ = ("data", "run", "base")

    def __init__(self, data: str, run: str, base: str | None = None):
        self.data = data  # persistent: store, per-container files, logs
        self.run = run  # volatile: socket, pid file, namespace files
        self.base = base  # the --root directory, when one was given

    @classmethod
    def resolve(cls, root: str | None = None) -> Root:
        root = root or os.environ.get("QIAO_ROOT") or None
        if root is None:
            return cls(DEFAULT_DATA, DEFAULT_RUN)
        root = os.path.abspath(root)
        return cls(os.path.join(root, "lib"), os.path.join(root, "run"), root)

    @property
    def socket(self) -> str:
        return os.path.join(self.run, "qiao.sock")

    @property
    def pidfile(self) -> str:
        return os.path.join(self.run, "qiaod.pid")

    @property
    def daemon_log(self) -> str:
        return os.path.join(self.data, "qiaod.log")

    @property
    def store(self) -> str:
        return os.path.join(self.data, "qiao.db")

    @property
    def netns_dir(self) -> str:
        return os.path.join(self.run, "netns")

    def container_dir(self, cid: str) -> str:
        return os.path.join(self.data, "containers", cid)

    def ensure(self) -> None:
        """The directories, root's alone (0700): the store and the logs hold
        containers' environments, the socket is the daemon's front door."""
        for d in (self.data, self.run, self.netns_dir, os.path.join(self.data, "containers")):
            os.makedirs(d, mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)
