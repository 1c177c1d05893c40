"""The ``qiao`` CNI plugin executable (installed as ``qiao-cni``; a runtime
finds it as ``qiao`` in its CNI bin directory).

It does no network work itself: it checks what only it can check (the
environment, that the configuration is JSON, that the namespace path exists
where the runtime sees it), sends the request to qiaod over its socket
(starting qiaod when none answers, as the CLI does) and prints qiaod's
answer: the result, or a spec-shaped error object and exit status 1.
Standard library only, so a runtime's ADD pays milliseconds of start-up.
"""

from __future__ import annotations

import json
import os
import sys

from qiao import cni
from qiao.cli.client import BadAnswer, Client, DaemonError, Unreachable
from qiao.cni import CniError
from qiao.paths import Root

# What each command needs from the environment (the spec's "required" parameters).
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "STATUS": (),
    "GC": (),
}


# How long qiaod may stay silent: STATUS is a readiness probe and must not
# hang; an ADD may wait for an overlay's first lease from etcd.
TIMEOUTS = {"STATUS": 5.0, "ADD": 120.0, "DEL": 120.0, "CHECK": 30.0, "GC": 120.0}


def _request(env: dict[str, str], raw: bytes) -> tuple[str, dict]:
    """The request for qiaod: (the configuration's cniVersion, body)."""
    command = env.get("CNI_COMMAND", "")
    if command not in cni.COMMANDS:
        raise CniError(cni.INVALID_ENVIRONMENT, f"CNI_COMMAND must be one of {', '.join(cni.COMMANDS)}, not {command!r}")
    try:
        conf = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CniError(cni.DECODE_FAILURE, "the network configuration on stdin is not valid JSON", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(cni.DECODE_FAILURE, "the network configuration on stdin must be a JSON object")
    version = conf["cniVersion"] if isinstance(conf.get("cniVersion"), str) else ""
    missing = [name for name in REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise CniError(cni.INVALID_ENVIRONMENT, f"{command} needs {', '.join(missing)} in the environment")
    netns = env.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK") and not os.path.exists(netns):
        raise CniError(cni.INVALID_ENVIRONMENT, f"CNI_NETNS {netns} does not exist")
    body = {
        "command": command,
        "containerID": env.get("CNI_CONTAINERID", ""),
        "netns": netns,
        "ifname": env.get("CNI_IFNAME", ""),
        "args": env.get("CNI_ARGS", ""),
        "config": conf,
    }
    return version, body


def run(env: dict[str, str], raw: bytes) -> tuple[int, dict | None]:
    """One invocation: (exit status, what to print on stdout)."""
    version = ""
    try:
        if env.get("CNI_COMMAND") == "VERSION":
            asked = _version_asked(raw)
            used = asked if asked in cni.SUPPORTED_VERSIONS else cni.LATEST
            return 0, {"cniVersion": used, "supportedVersions": list(cni.SUPPORTED_VERSIONS)}
        version, body = _request(env, raw)
        root = body["config"].get("qiaoRoot")
        # STATUS is a readiness probe: it may start qiaod too (else a node never becomes ready), but within seconds
        start = 4.0 if body["command"] == "STATUS" else 30.0
        client = Client(Root.resolve(root if isinstance(root, str) and root else None), start_timeout=start)
        fds = [_open_netns(body["netns"])] if body["command"] == "ADD" else []
        try:
            answer = client.request("POST", "/qiao/cni", body=body, fds=fds, timeout=TIMEOUTS.get(body["command"]))
        except DaemonError as exc:
            got = exc.body
            if isinstance(got.get("code"), int) and isinstance(got.get("msg"), str):
                return 1, cni.error(version, got["code"], got["msg"], str(got.get("details") or ""))
            return 1, cni.error(version, cni.INTERNAL, str(exc) or f"qiaod answered {exc.status}")
        except (Unreachable, BadAnswer) as exc:
            code = cni.NOT_READY if body["command"] == "STATUS" else cni.TRY_AGAIN_LATER
            return 1, cni.error(version, code, f"qiaod cannot serve: {exc}")
        finally:
            for fd in fds:
                os.close(fd)
        result = answer.get("result") if isinstance(answer, dict) else None
        return 0, result if isinstance(result, dict) else None
    except CniError as exc:
        return 1, cni.error(version, exc.code, exc.msg, exc.details)


def _open_netns(path: str) -> int:
    """The namespace, passed to qiaod with the request: qiaod may run in
    another mount namespace, where the runtime's bind mount at ``path`` is
    not seen (it then pins the namespace it was given)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # NONBLOCK: a FIFO must not hang the runtime
    except OSError as exc:
        raise CniError(cni.INVALID_ENVIRONMENT, f"CNI_NETNS {path} cannot be opened: {exc.strerror}") from None


def _version_asked(raw: bytes) -> str:
    try:
        conf = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        return ""
    return conf.get("cniVersion", "") if isinstance(conf, dict) and isinstance(conf.get("cniVersion"), str) else ""


def main() -> int:
    status, out = run(dict(os.environ), sys.stdin.buffer.read())
    if out is not None:
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
