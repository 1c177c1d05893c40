"""Tables and JSON lines as Docker's CLI prints them."""

from __future__ import annotations

import time

from qiao.units import bytes_size, go_duration, human_duration, human_size

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
        ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
        [
            [
                r["Id"][:12],
                r.get("Image") or "",
                _command(r["Command"]),
                _ago(r["Created"]),
                r["Status"],
                ports_text(r["Ports"]),
                r["Names"][0].lstrip("/"),
            ]
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
        "Image": r.get("Image") or "",
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


def image_rows(images: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(repository, tag, image) per tag, as ``docker images`` lists them (``<none>`` for an untagged image)."""
    rows = []
    for img in images:
        for ref in img.get("RepoTags") or ["<none>:<none>"]:
            repo, _, tag = ref.rpartition(":")
            rows.append((repo, tag, img))
    return rows


def image_table(images: list[dict[str, Any]]) -> str:
    return _table(
        ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
        [
            [repo, tag, img["Id"].removeprefix("sha256:")[:12], _ago(img["Created"]), human_size(img["Size"])]
            for repo, tag, img in image_rows(images)
        ],
    )


def image_json_line(repo: str, tag: str, img: dict[str, Any]) -> dict[str, Any]:
    """One line of ``docker images --format json``."""
    created = time.gmtime(img["Created"])
    return {
        "Containers": "N/A",
        "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", created),
        "CreatedSince": _ago(img["Created"]),
        "Digest": "<none>",
        "ID": img["Id"].removeprefix("sha256:")[:12],
        "Repository": repo,
        "SharedSize": "N/A",
        "Size": human_size(img["Size"]),
        "Tag": tag,
        "UniqueSize": "N/A",
        "VirtualSize": human_size(img["Size"]),
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


def _v4(text: str) -> int:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise ValueError(text)
    return int.from_bytes(bytes(int(p) for p in parts), "big")


def _v6_words(text: str) -> list[int]:
    words: list[int] = []
    for part in text.split(":") if text else []:
        if "." in part:  # an embedded IPv4 tail, ::ffff:1.2.3.4
            v4 = _v4(part)
            words += [v4 >> 16, v4 & 0xFFFF]
        elif 1 <= len(part) <= 4 and all(c in "0123456789abcdefABCDEF" for c in part):
            words.append(int(part, 16))
        else:
            raise ValueError(text)
    return words


def _ip_order(ip: str) -> tuple[int, int, str]:
    """Go's ``netip.Addr.Less``: no address first, then IPv4 before IPv6, each by value; the zone last."""
    if not ip:
        return (0, 0, "")
    addr, _, zone = ip.partition("%")
    try:
        if ":" not in addr:
            return (32, _v4(addr), zone)
        head, gap, tail = addr.partition("::")
        words = _v6_words(head)
        if gap:
            rest = _v6_words(tail)
            words += [0] * (8 - len(words) - len(rest)) + rest
        if len(words) != 8:
            raise ValueError(ip)
    except ValueError:
        return (256, 0, ip)  # not an address: after all of them, as text
    value = 0
    for word in words:
        value = value << 16 | word
    return (128, value, zone)


def _host_port(ip: str, port: object) -> str:
    """Go's ``net.JoinHostPort``: an IPv6 address in brackets."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def ports_text(ports: list[dict[str, Any]]) -> str:
    """The PORTS column of ``docker ps`` (docker/cli's ``formatter.DisplayablePorts``).

    Ports are sorted by container port, host address, host port and protocol.
    Unpublished ports (``80/tcp``) and ports published on the same host port
    (``0.0.0.0:80->80/tcp``) are grouped per host address and protocol into runs
    of consecutive ports (``80-82/tcp``, ``0.0.0.0:80-82->80-82/tcp``); the
    groups come in the order each address and protocol first appears, a run cut
    short by a gap coming before them all. Ports published on another host port
    are never grouped: they follow, one each (``0.0.0.0:8000->80/tcp``).
    """

    def label(ip: str, proto: str, first: int, last: int) -> str:
        run = str(first) if first == last else f"{first}-{last}"
        return f"{_host_port(ip, run)}->{run}/{proto}" if ip else f"{run}/{proto}"

    ordered = sorted(ports, key=lambda p: (p["PrivatePort"], _ip_order(p.get("IP") or ""), p.get("PublicPort") or 0, p["Type"]))
    runs: dict[tuple[str, str], list[int]] = {}  # (host address, protocol) -> [first, last]; insertion order kept
    out: list[str] = []
    mapped: list[str] = []
    for p in ordered:
        port, ip, proto = p["PrivatePort"], p.get("IP") or "", p["Type"]
        if ip and (p.get("PublicPort") or 0) != port:
            mapped.append(f"{_host_port(ip, p.get('PublicPort') or 0)}->{port}/{proto}")
            continue
        run = runs.get((ip, proto))
        if run and port == run[1] + 1:
            run[1] = port
            continue
        if run:
            out.append(label(ip, proto, *run))
        runs[(ip, proto)] = [port, port]
    out += [label(ip, proto, *run) for (ip, proto), run in runs.items()]
    return ", ".join(out + mapped)


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


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A left-aligned table (``docker top`` prints its daemon's titles and rows so)."""
    return _table(headers, rows)


def cpu_percent(now: dict[str, Any], before: dict[str, Any] | None = None) -> float:
    """The Docker CLI's calculateCPUPercentUnix: the container's share of the machine
    between two samples (``before``, or the sample's own ``precpu_stats``), times the CPUs."""
    cpu = now.get("cpu_stats") or {}
    pre = (before or {}).get("cpu_stats") if before else now.get("precpu_stats")
    pre = pre or {}
    cpu_delta = cpu.get("cpu_usage", {}).get("total_usage", 0) - pre.get("cpu_usage", {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    if system_delta > 0 and cpu_delta > 0:
        return cpu_delta / system_delta * (cpu.get("online_cpus") or 1) * 100.0
    return 0.0


def memory_usage(stats: dict[str, Any]) -> int:
    """The Docker CLI's calculateMemUsageUnixNoCache: usage without the inactive page cache."""
    mem = stats.get("memory_stats") or {}
    usage, detail = mem.get("usage", 0), mem.get("stats") or {}
    for key in ("total_inactive_file", "inactive_file"):
        if key in detail and detail[key] < usage:
            return int(usage - detail[key])
    return int(usage)


def stats_row(stats: dict[str, Any], before: dict[str, Any] | None = None) -> list[str]:
    """One line of ``docker stats``."""
    mem = stats.get("memory_stats") or {}
    usage, limit = memory_usage(stats), mem.get("limit", 0)
    nets = (stats.get("networks") or {}).values()
    rx, tx = sum(n.get("rx_bytes", 0) for n in nets), sum(n.get("tx_bytes", 0) for n in nets)
    blkio = (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
    read = sum(e.get("value", 0) for e in blkio if e.get("op", "").lower() == "read")
    write = sum(e.get("value", 0) for e in blkio if e.get("op", "").lower() == "write")
    return [
        stats.get("id", "")[:12],
        stats.get("name", "").lstrip("/"),
        f"{cpu_percent(stats, before):.2f}%",
        f"{bytes_size(usage)} / {bytes_size(limit)}",
        f"{usage * 100.0 / limit if limit else 0.0:.2f}%",
        f"{human_size(rx)} / {human_size(tx)}",
        f"{human_size(read)} / {human_size(write)}",
        str((stats.get("pids_stats") or {}).get("current", 0)),
    ]


def stats_table(rows: list[list[str]]) -> str:
    return _table(["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS"], rows)


def restart_policy(text: str) -> dict[str, Any]:
    """``--restart no|always|unless-stopped|on-failure[:N]`` -> HostConfig.RestartPolicy (the daemon checks the name)."""
    name, sep, count = text.partition(":")
    if sep and not (count.isascii() and count.lstrip("-").isdigit()):
        raise ValueError(f"invalid restart policy {text!r}: maximum retry count must be an integer")
    return {"Name": name, "MaximumRetryCount": int(count) if sep else 0}


def env_items(items: list[str], environ: dict[str, str]) -> list[str]:
    """``-e KEY=VALUE`` as given; ``-e KEY`` takes the caller's value, or stays a bare KEY
    (which unsets it), as the Docker CLI's ValidateEnv."""
    out = []
    for item in items:
        if "=" not in item and item in environ:
            item = f"{item}={environ[item]}"
        out.append(item)
    return out


def env_file(text: str, environ: dict[str, str], path: str = "") -> list[str]:
    """An ``--env-file`` (the Docker CLI's ParseEnvFile): ``KEY=VALUE`` lines, ``#`` comments
    and blank lines skipped, a bare ``KEY`` takes the caller's value or is left out."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, _value = line.partition("=")
        if not key or any(c.isspace() for c in key):
            raise ValueError(f"invalid environment variable {key!r} in {path or 'the env file'} line {number}: it contains whitespace")
        if sep:
            out.append(line)
        elif key in environ:
            out.append(f"{key}={environ[key]}")
    return out


def unix_time(text: str, what: str, now: float | None = None) -> str:
    """Docker's ``--since``/``--until`` as the API takes them (``SECONDS.NANOSECONDS``):
    a UNIX time as is, a duration (Go's: ``1h30m``, ``42m``, ``10s``) back
    from now, or an RFC 3339 date (``2006-01-02T15:04:05Z``, or a date alone)."""
    if not text:
        return ""
    if text.replace(".", "", 1).isdigit():
        return text
    seconds = go_duration(text)
    if seconds is not None:
        return f"{(time.time() if now is None else now) - seconds:.9f}"
    import datetime

    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid value for {what}: {text!r} (a time, a UNIX time or a duration such as 42m)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return f"{stamp.timestamp():.9f}"
