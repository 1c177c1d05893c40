"""The /etc files a container sees: written by qiao under its root and
bind-mounted over the host's (which are never changed)."""

from __future__ import annotations

import ipaddress
import os

HOSTS_HEADER = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::\tip6-localnet
ff00::\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""

FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")


def hosts(address: str | None, hostname: str) -> str:
    """Docker's localhost lines, then ``IP HOSTNAME`` when there is an address."""
    return HOSTS_HEADER + (f"{address}\t{hostname}\n" if address else "")


def host_nameservers(resolv_conf: str = "/etc/resolv.conf") -> list[str]:
    servers = []
    try:
        with open(resolv_conf) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append(parts[1])
    except OSError:
        pass
    return servers


def resolv_conf(source: str = "/etc/resolv.conf") -> str:
    """The host's resolv.conf without loopback nameservers (unreachable from
    a container) nor IPv6 ones (sandboxes are IPv4-only), falling back to
    public resolvers as Docker does (moby's ``TransformForLegacyNw``)."""
    kept, dropped_all = [], True
    try:
        with open(source) as f:
            lines = f.readlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                server = ipaddress.ip_address(parts[1].split("%")[0])
                if server.is_loopback or server.version == 6:
                    continue
            except ValueError:
                continue
            dropped_all = False
        kept.append(line if line.endswith("\n") else line + "\n")
    if dropped_all:
        kept += [f"nameserver {ns}\n" for ns in FALLBACK_NAMESERVERS]
    return "".join(kept)


def write(directory: str, files: dict[str, str]) -> None:
    os.makedirs(directory, exist_ok=True)
    for name, text in files.items():
        tmp = os.path.join(directory, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(directory, name))
