"""The image configuration: what an image says about the process to run.

The config is the JSON blob whose SHA-256 is the image's ID (Docker's and
OCI's ``application/vnd.oci.image.config.v1+json``).  Its ``config``
section (Env, Cmd, Entrypoint, WorkingDir, User, ExposedPorts, ...) is
merged into a container created from it as moby's ``merge`` does; ``docker
import --change`` builds one from Dockerfile instructions.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
from typing import Any

import msgspec

from qiao.engine.errors import InvalidParameter
from qiao.engine.specs import ContainerSpec

Strings = list[str]


class ProcessConfig(msgspec.Struct, omit_defaults=True):
    """The ``config`` section (Docker's container.Config, the OCI ImageConfig)."""

    User: str = ""
    Env: Strings | None = None
    Cmd: Strings | None = None
    Entrypoint: Strings | None = None
    WorkingDir: str = ""
    ExposedPorts: dict[str, Any] | None = None
    Volumes: dict[str, Any] | None = None
    Labels: dict[str, str] | None = None
    StopSignal: str = ""


class RootFS(msgspec.Struct):
    type: str = "layers"
    diff_ids: Strings = msgspec.field(default_factory=list)


class ImageConfig(msgspec.Struct):
    """What qiao reads of an image config (the rest is kept as is)."""

    architecture: str = ""
    os: str = ""
    created: str | None = None
    author: str = ""
    comment: str = ""
    config: ProcessConfig | None = None
    rootfs: RootFS = msgspec.field(default_factory=RootFS)


def parse(raw: bytes) -> ImageConfig:
    """An image config, checked (a 400 names what is wrong)."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidParameter("invalid image config: not JSON") from None
    if not isinstance(data, dict):
        raise InvalidParameter("invalid image config: not a JSON object")
    try:
        return msgspec.convert(_without_nulls(data), type=ImageConfig)
    except msgspec.ValidationError as exc:
        raise InvalidParameter(f"invalid image config: {exc}") from None


def _without_nulls(data: dict[str, Any]) -> dict[str, Any]:
    """``null`` means "not set", as Go reads it (``"Cmd": null``, ``"config": null``)."""
    out = {k: v for k, v in data.items() if v is not None}
    if isinstance(out.get("config"), dict):
        out["config"] = {k: v for k, v in out["config"].items() if v is not None}
    return out


def process(cfg: ImageConfig) -> ProcessConfig:
    return cfg.config or ProcessConfig()


# -- docker import --change ---------------------------------------------------------

# Dockerfile instructions ``docker import --change`` (and ``commit``) take: moby's validCommitCommands.
CHANGE_COMMANDS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")


def _json_list(args: str) -> list[str] | None:
    """``["a", "b"]``, or None for anything else."""
    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def _json_or_shell(args: str) -> list[str]:
    """``["a", "b"]`` (exec form) or ``a b`` (shell form: run by ``/bin/sh -c``)."""
    value = _json_list(args)
    return value if value is not None else ["/bin/sh", "-c", args.strip()]


def _pairs(args: str, what: str) -> dict[str, str]:
    """``k=v k2="v 2"`` (or the legacy ``k v`` for ENV)."""
    try:
        words = shlex.split(args)
    except ValueError as exc:
        raise InvalidParameter(f"invalid {what}: {exc}") from None
    if words and "=" not in words[0] and what == "ENV":
        return {words[0]: args.strip()[len(words[0]) :].strip()}
    out = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise InvalidParameter(f"invalid {what} {word!r}: expected KEY=VALUE")
        out[key] = value
    return out


def apply_changes(cfg: ProcessConfig, changes: list[str]) -> ProcessConfig:
    """Dockerfile instructions applied in order (``docker import -c 'CMD ["sh"]'``)."""
    for change in changes:
        for line in change.splitlines():  # one --change may hold several lines
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            word, _, args = line.strip().partition(" ")
            command = word.upper()
            if command not in CHANGE_COMMANDS:
                raise InvalidParameter(f"{word} is not a valid change command")
            if command == "ONBUILD":
                raise InvalidParameter("qiao does not support ONBUILD")
            if command == "CMD":
                cfg.Cmd = _json_or_shell(args)
            elif command == "ENTRYPOINT":
                cfg.Entrypoint = _json_or_shell(args)
            elif command == "ENV":
                env = dict(item.split("=", 1) for item in cfg.Env or [] if "=" in item)
                env.update(_pairs(args, "ENV"))
                cfg.Env = [f"{k}={v}" for k, v in env.items()]
            elif command == "LABEL":
                cfg.Labels = {**(cfg.Labels or {}), **_pairs(args, "LABEL")}
            elif command == "EXPOSE":
                ports = dict(cfg.ExposedPorts or {})
                for port in args.split():
                    ports[port if "/" in port else port + "/tcp"] = {}
                cfg.ExposedPorts = ports
            elif command == "VOLUME":
                paths = _json_list(args) or args.split()
                cfg.Volumes = {**(cfg.Volumes or {}), **{p: {} for p in paths}}
            elif command == "USER":
                cfg.User = args.strip()
            elif command == "WORKDIR":
                cfg.WorkingDir = args.strip()
            elif command == "STOPSIGNAL":
                cfg.StopSignal = args.strip()
    return cfg


def import_config(diff_id: str, changes: list[str], message: str, arch: str) -> bytes:
    """The config of a ``docker import``: one layer, the changes, the message as its comment."""
    created = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    cfg = apply_changes(ProcessConfig(), changes)
    body = {
        "architecture": arch,
        "os": "linux",
        "created": created,
        "comment": message,
        "config": msgspec.to_builtins(cfg),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "comment": message or "Imported from -"}],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def goarch() -> str:
    """This machine's architecture as Go names it (``amd64``, ``arm64``, ...)."""
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x"}.get(
        machine, machine
    )


# -- into a container ------------------------------------------------------------------


def merge(spec: ContainerSpec, image: ProcessConfig) -> ContainerSpec:
    """The container's settings completed from the image's, as moby's ``merge``:
    the user's User, WorkingDir, Cmd win; Env is the user's plus the image's
    variables the user did not set; ExposedPorts are joined; the image's
    Entrypoint counts unless the user gave one (``--entrypoint ""``, sent as
    ``[""]``, clears it), and its Cmd unless the user gave an Entrypoint or a Cmd."""
    user_keys = {item.partition("=")[0] for item in spec.env}
    env = (*spec.env, *(item for item in image.Env or [] if item.partition("=")[0] not in user_keys))
    exposed = tuple(dict.fromkeys([*spec.exposed_ports, *(image.ExposedPorts or {})]))
    entrypoint, cmd = spec.entrypoint, spec.cmd
    if not entrypoint:
        if not cmd:
            cmd = tuple(image.Cmd or ())
        if entrypoint is None:
            entrypoint = tuple(image.Entrypoint or ())
    if entrypoint == ("",):
        entrypoint = ()
    return dataclasses.replace(
        spec,
        user=spec.user or image.User,
        workdir=spec.workdir or image.WorkingDir,
        env=env,
        exposed_ports=exposed,
        entrypoint=entrypoint or (),
        cmd=cmd,
        stop_signal=spec.stop_signal or image.StopSignal or "",
    )
