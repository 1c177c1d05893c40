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


def hosts(entries: list[tuple[str, str]]) -> str:
    """Docker's localhost lines, then one ``IP NAMES`` line per entry (the
    ``--add-host`` entries, the container's own addresses, then its ``--link`` targets)."""
    return HOSTS_HEADER + "".join(f"{address}\t{names}\n" for address, names in entries)


def own_names(hostname: str, domainname: str = "") -> str:
    """The names on the line of the container's own address, as moby writes it:
    the full name, then the bare host name when the full one has a dot."""
    fqdn = f"{hostname}.{domainname}" if domainname else hostname
    short = fqdn.split(".", 1)[0]
    return fqdn if short == fqdn else f"{fqdn} {short}"


def extra_host(entry: str, host_gateway: str) -> tuple[str, str]:
    """One ``--add-host NAME:IP`` (Docker's CLI sends ``NAME:IP``; ``NAME=IP`` is
    accepted too) as ``(IP, NAME)``; ``host-gateway`` is the default bridge's gateway."""
    name, sep, address = entry.partition("=")
    if not sep:
        name, _, address = entry.partition(":")
    if address == "host-gateway":
        address = host_gateway
    return address.removeprefix("[").removesuffix("]"), name


SYSTEMD_RESOLVED = "/run/systemd/resolve/resolv.conf"


def default_resolv_conf(path: str = "/etc/resolv.conf") -> str:
    """The host's resolver configuration; behind systemd-resolved's stub
    (127.0.0.53) the real upstreams are in its own file, as Docker finds them."""
    servers = host_nameservers(path)
    if servers and all(s.startswith("127.0.0.53") for s in servers) and os.path.exists(SYSTEMD_RESOLVED):
        return SYSTEMD_RESOLVED
    return path


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


def resolv_conf(source: str = "/etc/resolv.conf", nameservers: list[str] | None = None) -> str:
    """The host's resolv.conf without loopback nameservers (unreachable from
    a container) nor IPv6 ones (sandboxes on the default bridge are IPv4-only),
    falling back to public resolvers as Docker does (moby's ``TransformForLegacyNw``).
    On user networks ``nameservers`` (qiao's resolvers) replace the host's."""
    if nameservers:
        try:
            with open(source) as f:
                rest = [line for line in f if line.split()[:1] != ["nameserver"]]
        except OSError:
            rest = []
        return "".join(f"nameserver {ns}\n" for ns in nameservers) + "".join(line if line.endswith("\n") else line + "\n" for line in rest)
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


def override(text: str, search: list[str], options: list[str], ext_servers: list[str]) -> str:
    """``--dns-search`` and ``--dns-option`` replace the host's ``search``
    (and ``domain``) and ``options`` lines (``--dns-search .``: no search
    domains at all); ``ext_servers`` (``--dns`` of a container whose resolver
    is qiao's, which forwards to them) are noted as Docker notes them."""
    if not (search or options or ext_servers):
        return text
    lines = text.splitlines()
    if search:
        lines = [line for line in lines if line.split()[:1] not in (["search"], ["domain"])]
    if options:
        lines = [line for line in lines if line.split()[:1] != ["options"]]
    servers = [line for line in lines if line.split()[:1] == ["nameserver"]]
    rest = [line for line in lines if line.split()[:1] != ["nameserver"]]
    domains = [d for d in search if d != "."]
    added = ([f"search {' '.join(domains)}"] if domains else []) + ([f"options {' '.join(options)}"] if options else [])
    notes = [f"# ExtServers: [{' '.join(ext_servers)}]"] if ext_servers else []
    return "".join(line + "\n" for line in servers + added + rest + notes)


def write(directory: str, files: dict[str, str]) -> None:
    """Write in place: the files are bind-mounted into running containers,
    and a bind mount follows the inode, not the name."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)
