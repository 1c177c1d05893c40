"""Tables and JSON lines as Docker's CLI prints them."""

from __future__ import annotations

import time

from qiao.units import human_duration

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up time)
if TYPE_CHECKING:
    from typing import Any


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers] + rows]
    return "\n".join(lines) + "\n"


def _ago(unix: int) -> str:
    return human_duration(time.time() - unix) + " ago"


def _command(cmd: str, width: int = 20) -> str:
    text = cmd if len(cmd) <= width else cmd[: width - 1] + "…"
    return f'"{text}"'


def ps_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["CONTAINER ID", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
        [
            [r["Id"][:12], _command(r["Command"]), _ago(r["Created"]), r["Status"], ports_text(r["Ports"]), r["Names"][0].lstrip("/")]
            for r in rows
        ],
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
        "Ports": ports_text(r["Ports"]),
        "RunningFor": _ago(r["Created"]),
        "Size": "0B",
        "State": r["State"],
        "Status": r["Status"],
    }


def network_table(nets: list[dict[str, Any]]) -> str:
    return _table(["NETWORK ID", "NAME", "DRIVER", "SCOPE"], [[n["Id"][:12], n["Name"], n["Driver"], n["Scope"]] for n in nets])


def by_name(nets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Docker's CLI lists networks by name, digit runs compared as numbers (``sortorder.NaturalLess``)."""

    def key(n: dict[str, Any]) -> list[tuple[str, int]]:
        items: list[tuple[str, int]] = []  # ("0", value) per run of digits, (char, -1) per other char
        for ch in n["Name"]:
            if not "0" <= ch <= "9":
                items.append((ch, -1))
            elif items and items[-1][1] >= 0:
                items[-1] = ("0", items[-1][1] * 10 + int(ch))
            else:
                items.append(("0", int(ch)))
        return items

    return sorted(nets, key=key)


def _go_time(stamp: str) -> str:
    """An RFC 3339 UTC time as Go's ``time.Time.String()`` prints it (``2024-05-01 10:00:00.123 +0000 UTC``)."""
    if not stamp.endswith("Z") or "T" not in stamp:
        return stamp
    date, _, clock = stamp[:-1].partition("T")
    whole, _, fraction = clock.partition(".")
    fraction = fraction.rstrip("0")
    return f"{date} {whole}{'.' + fraction if fraction else ''} +0000 UTC"


def network_json_line(n: dict[str, Any]) -> dict[str, Any]:
    """One line of ``docker network ls --format json``."""
    return {
        "CreatedAt": _go_time(n["Created"]),
        "Driver": n["Driver"],
        "ID": n["Id"][:12],
        "IPv4": "true" if n["IPAM"]["Config"] else "false",
        "IPv6": "true" if n["EnableIPv6"] else "false",
        "Internal": "true" if n["Internal"] else "false",
        "Labels": ",".join(f"{k}={v}" for k, v in n["Labels"].items()),
        "Name": n["Name"],
        "Scope": n["Scope"],
    }


def ports_text(ports: list[dict[str, Any]]) -> str:
    """``0.0.0.0:8080->80/tcp, 7000/tcp`` as in ``docker ps``."""
    out = []
    for p in ports:
        if "PublicPort" in p:
            out.append(f"{p['IP']}:{p['PublicPort']}->{p['PrivatePort']}/{p['Type']}")
        else:
            out.append(f"{p['PrivatePort']}/{p['Type']}")
    return ", ".join(out)


_PROTOS = ("tcp", "udp", "sctp")


def _range(text: str, what: str) -> tuple[int, int]:
    lo_text, _, hi_text = text.partition("-")
    try:
        lo, hi = int(lo_text), int(hi_text or lo_text)
    except ValueError:
        raise ValueError(f"invalid {what} {text!r}") from None
    if not (1 <= lo <= hi <= 65535):
        raise ValueError(f"invalid {what} {text!r}: ports are 1-65535, start <= end")
    return lo, hi


def parse_expose(spec: str) -> list[str]:
    """``--expose 7000-7002/udp`` -> ["7000/udp", "7001/udp", "7002/udp"]."""
    ports, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in _PROTOS:
        raise ValueError(f"invalid protocol {proto!r} in {spec!r}")
    lo, hi = _range(ports, "port")
    return [f"{p}/{proto}" for p in range(lo, hi + 1)]


def parse_publish(spec: str) -> list[tuple[str, dict[str, str]]]:
    """Docker's ``-p [IP:][HOSTPORT[-END]:]PORT[-END][/PROTO]`` -> PortBindings entries."""
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in _PROTOS:
        raise ValueError(f"invalid protocol {proto!r} in -p {spec}")
    if body.startswith("["):
        raise ValueError(f"invalid -p {spec}: IPv6 host addresses are not supported yet")
    parts = body.split(":")
    if len(parts) > 3 or not parts[-1]:
        raise ValueError(f"invalid -p {spec}: expected [IP:][HOSTPORT[-END]:]PORT[-END][/PROTO]")
    host_ip = parts[0] if len(parts) == 3 else ""
    host = parts[-2] if len(parts) >= 2 else ""
    c_lo, c_hi = _range(parts[-1], "container port")
    if not host:
        return [(f"{p}/{proto}", {"HostIp": host_ip, "HostPort": ""}) for p in range(c_lo, c_hi + 1)]
    h_lo, h_hi = _range(host, "host port")
    if c_lo == c_hi:  # one container port, a host port or a range to choose from
        return [(f"{c_lo}/{proto}", {"HostIp": host_ip, "HostPort": host})]
    if h_hi - h_lo != c_hi - c_lo:
        raise ValueError(f"invalid -p {spec}: the host and container port ranges differ in size")
    return [(f"{c_lo + i}/{proto}", {"HostIp": host_ip, "HostPort": str(h_lo + i)}) for i in range(c_hi - c_lo + 1)]


def ipam_config(subnets: list[str], gateways: list[str], ip_range: str | None) -> list[dict[str, Any]]:
    """``--subnet``/``--gateway`` pairs (IPv4 and IPv6) -> Docker's IPAM.Config."""
    if len(gateways) > len(subnets):
        raise ValueError("each --gateway needs a --subnet")
    out: list[dict[str, Any]] = []
    for i, subnet in enumerate(subnets):
        entry: dict[str, Any] = {"Subnet": subnet, "Gateway": gateways[i] if i < len(gateways) else None}
        if ip_range and ":" not in subnet:
            entry["IPRange"] = ip_range
        out.append(entry)
    if ip_range and not subnets:
        out.append({"IPRange": ip_range})
    return out
