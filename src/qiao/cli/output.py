"""Tables and JSON lines as Docker's CLI prints them."""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up time)
if TYPE_CHECKING:
    from typing import Any


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers] + rows]
    return "\n".join(lines) + "\n"


def _ago(unix: int) -> str:
    s = max(0, int(time.time() - unix))
    if s < 60:
        return f"{s} seconds ago" if s != 1 else "1 second ago"
    if s < 3600:
        m = s // 60
        return "About a minute ago" if m == 1 else f"{m} minutes ago"
    h = s // 3600
    return "About an hour ago" if h == 1 else (f"{h} hours ago" if h < 48 else f"{h // 24} days ago")


def _command(cmd: str, width: int = 20) -> str:
    text = cmd if len(cmd) <= width else cmd[: width - 1] + "…"
    return f'"{text}"'


def ps_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["CONTAINER ID", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
        [[r["Id"][:12], _command(r["Command"]), _ago(r["Created"]), r["Status"], "", r["Names"][0].lstrip("/")] for r in rows],
    )


def ps_json(r: dict[str, Any]) -> dict[str, Any]:
    """One line of ``docker ps --format json``."""
    created = time.gmtime(r["Created"])
    return {
        "Command": _command(r["Command"]),
        "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", created),
        "ID": r["Id"][:12],
        "Image": "",
        "Labels": "",
        "LocalVolumes": "0",
        "Mounts": "",
        "Names": r["Names"][0].lstrip("/"),
        "Networks": ",".join(r["NetworkSettings"]["Networks"]) or r["HostConfig"]["NetworkMode"],
        "Ports": "",
        "RunningFor": _ago(r["Created"]),
        "Size": "0B",
        "State": r["State"],
        "Status": r["Status"],
    }


def network_table(nets: list[dict[str, Any]]) -> str:
    return _table(["NETWORK ID", "NAME", "DRIVER", "SCOPE"], [[n["Id"][:12], n["Name"], n["Driver"], n["Scope"]] for n in nets])


def network_json_line(n: dict[str, Any]) -> dict[str, Any]:
    """One line of ``docker network ls --format json``."""
    return {
        "CreatedAt": n["Created"],
        "Driver": n["Driver"],
        "ID": n["Id"][:12],
        "IPv4": "true" if n["IPAM"]["Config"] else "false",
        "IPv6": "true" if n["EnableIPv6"] else "false",
        "Internal": "true" if n["Internal"] else "false",
        "Labels": ",".join(f"{k}={v}" for k, v in n["Labels"].items()),
        "Name": n["Name"],
        "Scope": n["Scope"],
    }
