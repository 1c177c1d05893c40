"""qiao as a CNI plugin: containerd, Podman, Kubernetes nodes and Nomad put
their containers on qiao's networks through the Container Network Interface.

Two halves, as flannel has a plugin and a daemon, but with all the work in
the daemon: :mod:`qiao.cni.plugin` is the executable a runtime starts (a
standard-library client, milliseconds to start: it reads the ``CNI_*``
environment and the configuration, asks qiaod, prints what qiaod answers);
:mod:`qiao.cni.service` is qiaod's side, which turns a CNI request into an
attachment of the engine core (:mod:`qiao.engine.attachments`) and the
attachment into a CNI result.  :mod:`qiao.cni.install` writes the conflist.

Standard library only: the plugin imports this.
"""

from __future__ import annotations

# The spec versions qiao speaks, oldest first (the result's shape follows the configuration's).
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]

# The spec's well-known error codes, and qiao's own (100 and up).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_READY = 50
CONFLICT = 100  # already attached, a host port taken
CHECK_FAILED = 101  # CHECK found the attachment broken
INTERNAL = 999  # a bug in qiao (logged by qiaod)

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")


class CniError(Exception):
    """A refusal with its CNI code (raised by the plugin and by qiaod's side)."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def at_least(version: str, oldest: str) -> bool:
    """Whether a supported spec version is ``oldest`` or later."""
    return SUPPORTED_VERSIONS.index(version) >= SUPPORTED_VERSIONS.index(oldest)


def error(version: str, code: int, msg: str, details: str = "") -> dict[str, object]:
    """A CNI error object, as the spec shapes it."""
    out: dict[str, object] = {"cniVersion": version if version in SUPPORTED_VERSIONS else LATEST, "code": code, "msg": msg}
    if details:
        out["details"] = details
    return out
