"""qiaod's options: the command line and a ``daemon.json``, as dockerd reads
its own (``/etc/docker/daemon.json``).

A daemon the CLI or the CNI plugin autostarts gets no command line, so what
it must know (a cluster store, the dockerd plugin socket) is in the file:
``/etc/qiao/daemon.json`` for the default root, ``ROOT/daemon.json`` under
``--root``/``QIAO_ROOT``, or ``--config-file``.  Its keys are the long option
names.  As dockerd does, an option given both on the command line and in the
file is an error, and so is an unknown key or a value of the wrong type: one
line at start, naming it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from qiao.paths import Root

DEFAULT_FILE = "/etc/qiao/daemon.json"

# key -> (argparse destination, type); the long option names of qiaod.
KEYS: dict[str, tuple[str, type]] = {
    "debug": ("debug", bool),
    "cluster-store": ("cluster_store", str),
    "cluster-advertise": ("cluster_advertise", str),
    "resolv-conf": ("resolv_conf", str),
    "docker-plugin": ("docker_plugin", str),
    "docker-host": ("docker_host", str),
}


class ConfigError(Exception):
    pass


def path_for(root: Root, given: str | None) -> str:
    if given:
        return given
    return os.path.join(root.base, "daemon.json") if root.base else DEFAULT_FILE


def load(path: str, required: bool = False) -> dict[str, Any]:
    """The file's options by argparse destination; {} when there is no file (unless ``required``)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such file") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of options")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown option {key!r} (known: {', '.join(sorted(KEYS))})")
        dest, kind = KEYS[key]
        if type(value) is not kind:
            raise ConfigError(f"{path}: option {key!r} must be a {'boolean' if kind is bool else 'string'}")
        out[dest] = value
    return out


def merge(args: Any, from_file: dict[str, Any], path: str) -> None:
    """Apply the file's options to ``args``; an option set in both places is an error (as dockerd)."""
    both = [dest for dest, value in from_file.items() if getattr(args, dest) not in (None, False) and value not in (None, False)]
    if both:
        flags = ", ".join("--" + dest.replace("_", "-") for dest in both)
        raise ConfigError(f"the following options are given both on the command line and in {path}: {flags}")
    for dest, value in from_file.items():
        setattr(args, dest, value)
