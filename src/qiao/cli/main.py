"""``qiao``: Docker-like commands, each one request (or a few) to qiaod.

Standard library only and nothing heavy at import: a command costs an
interpreter start plus one round trip.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time

from qiao.cli import output
from qiao.cli.client import BadAnswer, Client, DaemonError, Unreachable, quote
from qiao.paths import Root
from qiao.proc import exited

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up time)
if TYPE_CHECKING:
    from typing import Any, NoReturn


class UsageError(Exception):
    pass


class Formatter(argparse.HelpFormatter):
    """argparse's formatter, told the width: left to itself it imports
    ``shutil`` (and with it bz2, lzma and zlib, ~2 ms) for every argument
    added, to measure a terminal that only ``--help`` needs."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(1).columns
        except (ValueError, OSError, AttributeError):
            columns = 80
        super().__init__(prog, width=columns - 2)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        raise UsageError(f"{self.prog}: {message}")


def _kv(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"qiao: invalid {what} {item!r}: expected KEY=VALUE")
        out[key] = value if sep else ""
    return out


def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="run a command in a new container", add_help=False)
    run.add_argument("--help", action="help")
    run.add_argument("-d", "--detach", action="store_true")
    run.add_argument("--name")
    run.add_argument("-h", "--hostname")
    run.add_argument("--rm", action="store_true")
    run.add_argument("-e", "--env", action="append", default=[])
    run.add_argument("--network", "--net", dest="network", action="append", default=[], help="a network (repeat to join several)")
    run.add_argument("--network-alias", action="append", default=[], help="a DNS alias on the (first) network")
    run.add_argument("--ip", default="", help="static IPv4 address on the (first) network")
    run.add_argument("--ip6", default="", help="static IPv6 address on the (first) network")
    run.add_argument("--mac-address", default="", help="static MAC address on the (first) network")
    run.add_argument("--link", action="append", default=[], help="NAME[:ALIAS] (default bridge only)")
    run.add_argument("-p", "--publish", action="append", default=[], help="[IP:][HOSTPORT[-END]:]PORT[-END][/PROTO]")
    run.add_argument("-P", "--publish-all", action="store_true", help="publish every exposed port to a random host port")
    run.add_argument("--expose", action="append", default=[], help="PORT[-END][/PROTO]")
    run.add_argument("-i", "--interactive", action="store_true", help="accepted for Docker compatibility: stdin is always passed")
    run.add_argument("-t", "--tty", action="store_true", help="accepted for Docker compatibility: the terminal is always passed")
    run.add_argument("-u", "--user", default="", help="USER[:GROUP] or UID[:GID] (from the host's /etc/passwd and /etc/group)")
    run.add_argument("-w", "--workdir", default="", help="working directory (absolute; it must exist)")
    run.add_argument("--cap-add", action="append", default=[], help="add a capability (NET_ADMIN, CAP_SYS_TIME, ALL, ...)")
    run.add_argument("--cap-drop", action="append", default=[], help="drop a capability (ALL too)")
    run.add_argument("--privileged", action="store_true", help="every capability, no no_new_privs (qiao's root stays hidden)")
    run.add_argument("--env-file", action="append", default=[], help="KEY=VALUE lines (# comments), before -e")
    run.add_argument("--domainname", default="", help="the container's NIS domain name")
    run.add_argument("--restart", default="", help="no, always, unless-stopped or on-failure[:N]: qiaod restarts it on exit")
    run.add_argument("--stop-signal", default="", help="what stop sends first (default SIGTERM)")
    run.add_argument("--stop-timeout", type=int, default=None, help="seconds stop waits before SIGKILL (default 10, -1: for ever)")
    run.add_argument("--dns", action="append", default=[], help="a nameserver (on user networks: where qiao's resolver forwards)")
    run.add_argument("--dns-search", action="append", default=[], help="a search domain ('.': none)")
    run.add_argument("--dns-option", action="append", default=[], help="a resolver option (ndots:2, ...)")
    run.add_argument("--add-host", action="append", default=[], help="NAME:IP in /etc/hosts (IP may be host-gateway)")
    run.add_argument("--image", default="", help="run in this image's root filesystem (qiao image ls); default: the host's")
    run.add_argument("--entrypoint", default=None, help='replace the image\'s entrypoint ("" clears it)')
    run.add_argument("cmd", nargs=argparse.REMAINDER)


def _add_ps(sub: Any) -> None:
    ps = sub.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true")
    ps.add_argument("-q", "--quiet", action="store_true")
    ps.add_argument("--format", choices=["table", "json"], default="table")


def _add_inspect(sub: Any) -> None:
    sub.add_parser("inspect", help="show containers or networks as JSON").add_argument("names", nargs="+")


def _add_exec(sub: Any) -> None:
    ex = sub.add_parser("exec", help="run a command inside a running container", add_help=False)
    ex.add_argument("--help", action="help")
    ex.add_argument("-e", "--env", action="append", default=[])
    ex.add_argument("-i", "--interactive", action="store_true")
    ex.add_argument("-t", "--tty", action="store_true")
    ex.add_argument("-u", "--user", default=None, help="USER[:GROUP] or UID[:GID] (default: the container's)")
    ex.add_argument("-w", "--workdir", default=None, help="working directory (default: the container's)")
    ex.add_argument("container")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)


def _add_port(sub: Any) -> None:
    port = sub.add_parser("port", help="list a container's published ports")
    port.add_argument("container")
    port.add_argument("port", nargs="?", help="PORT[/PROTO]")


def _add_logs(sub: Any) -> None:
    logs = sub.add_parser("logs", help="print a container's output (stdout to stdout, stderr to stderr)")
    logs.add_argument("-f", "--follow", action="store_true", help="go on until the container stops")
    logs.add_argument("-n", "--tail", default="all", help='lines from the end (default "all")')
    logs.add_argument("-t", "--timestamps", action="store_true")
    logs.add_argument("--since", default="", help="a time (2006-01-02T15:04:05Z, a UNIX time) or a duration back (42m)")
    logs.add_argument("--until", default="", help="as --since")
    logs.add_argument("container")


def _add_stop(sub: Any) -> None:
    stop = sub.add_parser("stop", help="the stop signal (SIGTERM), then SIGKILL after a grace period")
    stop.add_argument("-t", "--time", "--timeout", type=int, default=None, help="seconds before SIGKILL (default: the container's, 10)")
    stop.add_argument("-s", "--signal", default=None, help="the signal to send first (default: the container's stop signal)")
    stop.add_argument("names", nargs="+")


def _add_restart(sub: Any) -> None:
    restart = sub.add_parser("restart", help="stop, then start containers")
    restart.add_argument("-t", "--time", "--timeout", type=int, default=None, help="seconds to wait before SIGKILL")
    restart.add_argument("-s", "--signal", default=None, help="the signal to stop with")
    restart.add_argument("names", nargs="+")


def _add_rename(sub: Any) -> None:
    rename = sub.add_parser("rename", help="rename a container")
    rename.add_argument("container")
    rename.add_argument("new_name")


def _add_top(sub: Any) -> None:
    top = sub.add_parser("top", help="a container's processes (ps -ef, or aux)")
    top.add_argument("container")
    top.add_argument("ps_args", nargs=argparse.REMAINDER, help="-ef (default), -e, aux or ax")


def _add_stats(sub: Any) -> None:
    stats = sub.add_parser("stats", help="CPU, memory, network I/O and processes of containers")
    stats.add_argument("-a", "--all", action="store_true", help="all containers (default: running)")
    stats.add_argument("--no-stream", action="store_true", help="one table, then exit")
    stats.add_argument("names", nargs="*")


def _add_pause(sub: Any) -> None:
    sub.add_parser("pause", help="freeze containers' processes (cgroup freezer)").add_argument("names", nargs="+")


def _add_unpause(sub: Any) -> None:
    sub.add_parser("unpause", help="thaw paused containers").add_argument("names", nargs="+")


def _add_container(sub: Any) -> None:
    ctr = sub.add_parser("container", help="manage containers: qiao container prune")
    csub = ctr.add_subparsers(dest="container_command", parser_class=Parser, required=True)
    csub.add_parser("prune", help="remove every stopped container").add_argument("-f", "--force", action="store_true")


def _add_start(sub: Any) -> None:
    sub.add_parser("start", help="start stopped containers").add_argument("names", nargs="+")


def _add_kill(sub: Any) -> None:
    kill = sub.add_parser("kill", help="send a signal to containers")
    kill.add_argument("-s", "--signal", default="SIGKILL")
    kill.add_argument("names", nargs="+")


def _add_rm(sub: Any) -> None:
    rm = sub.add_parser("rm", help="remove containers")
    rm.add_argument("-f", "--force", action="store_true")
    rm.add_argument("names", nargs="+")


def _add_image(sub: Any) -> None:
    image = sub.add_parser("image", help="manage images: import, load, ls, inspect, tag, rm")
    isub = image.add_subparsers(dest="image_command", parser_class=Parser, required=True)
    imp = isub.add_parser("import", help="a root filesystem tar (gzip, bzip2 or xz too) as an image")
    imp.add_argument("-c", "--change", action="append", default=[], help='a Dockerfile instruction: CMD ["sh"], ENV A=1, ...')
    imp.add_argument("-m", "--message", default="")
    imp.add_argument("file", help="the tar, or - for standard input")
    imp.add_argument("reference", nargs="?", default="", help="REPOSITORY[:TAG]")
    load = isub.add_parser("load", help="the images of a docker save archive or an OCI image layout")
    load.add_argument("-i", "--input", default="-", help="the archive (default: standard input)")
    load.add_argument("-q", "--quiet", action="store_true")
    ls = isub.add_parser("ls", help="list images")
    ls.add_argument("-q", "--quiet", action="store_true")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    isub.add_parser("inspect").add_argument("names", nargs="+")
    tag = isub.add_parser("tag", help="give an image another name")
    tag.add_argument("source")
    tag.add_argument("target")
    rm = isub.add_parser("rm", help="remove images")
    rm.add_argument("-f", "--force", action="store_true")
    rm.add_argument("names", nargs="+")


def _add_network(sub: Any) -> None:
    net = sub.add_parser("network", help="manage networks")
    nsub = net.add_subparsers(dest="network_command", parser_class=Parser, required=True)
    create = nsub.add_parser("create")
    create.add_argument("-d", "--driver", default="bridge")
    create.add_argument("--subnet", action="append", default=[], help="an IPv4 and, with --ipv6, an IPv6 subnet")
    create.add_argument("--gateway", action="append", default=[])
    create.add_argument("--ipv6", action="store_true", help="dual stack: give containers IPv6 addresses too")
    create.add_argument("--ip-range")
    create.add_argument("-o", "--opt", action="append", default=[])
    create.add_argument("--label", action="append", default=[])
    create.add_argument("--internal", action="store_true")
    create.add_argument("--attachable", action="store_true")
    create.add_argument("name")
    nls = nsub.add_parser("ls")
    nls.add_argument("-q", "--quiet", action="store_true")
    nls.add_argument("--format", choices=["table", "json"], default="table")
    nsub.add_parser("inspect").add_argument("names", nargs="+")
    nsub.add_parser("rm").add_argument("names", nargs="+")
    conn = nsub.add_parser("connect")
    conn.add_argument("--ip", default="")
    conn.add_argument("--ip6", default="")
    conn.add_argument("--alias", action="append", default=[])
    conn.add_argument("network")
    conn.add_argument("container")
    disc = nsub.add_parser("disconnect")
    disc.add_argument("-f", "--force", action="store_true")
    disc.add_argument("network")
    disc.add_argument("container")
    nsub.add_parser("prune").add_argument("-f", "--force", action="store_true")


def _add_topology(sub: Any) -> None:
    top = sub.add_parser("topology", help="draw the network as it is now: bridges, veth pairs, containers, overlay peers")
    top.add_argument("--format", choices=["text", "svg", "dot", "json"], default="text")


def _add_trace(sub: Any) -> None:
    tr = sub.add_parser("trace", help="send one traced packet and show its path hop by hop, and why it stops")
    tr.add_argument("--json", action="store_true", help="the hops and the result as JSON")
    tr.add_argument("source", help="a container (name or id), host, outside (across the uplink, in a lab) or an address")
    tr.add_argument("destination", help="DST[:PORT][/tcp|udp]: a container, host, outside or an address; no port: an ICMP echo")


def _add_lab(sub: Any) -> None:
    what = "simulated hosts on one kernel: qiao lab up|exec|status|topology|trace|down (see qiao lab --help)"
    sub.add_parser("lab", help=what, add_help=False)


def _add_cni(sub: Any) -> None:
    sub.add_parser("cni", help="qiao as a CNI plugin: qiao cni install|uninstall (see qiao cni --help)", add_help=False)


def _add_explain(sub: Any) -> None:
    ex = sub.add_parser("explain", help="what a command would do, as ip/nft/sysctl commands; changes nothing")
    ex.add_argument("--json", action="store_true", help="the steps as JSON")
    ex.add_argument("--from-scratch", action="store_true", help="as a shell script for a host where qiao never ran")
    ex.add_argument("explained", nargs=argparse.REMAINDER, metavar="COMMAND", help="run, start, rm or network create|rm|connect|...")


def _add_daemon(sub: Any) -> None:
    sub.add_parser("daemon", help="show or stop qiaod").add_argument("action", choices=["status", "stop"])


COMMANDS = {
    "run": _add_run,
    "ps": _add_ps,
    "inspect": _add_inspect,
    "exec": _add_exec,
    "port": _add_port,
    "logs": _add_logs,
    "stop": _add_stop,
    "restart": _add_restart,
    "rename": _add_rename,
    "top": _add_top,
    "stats": _add_stats,
    "pause": _add_pause,
    "unpause": _add_unpause,
    "container": _add_container,
    "start": _add_start,
    "kill": _add_kill,
    "rm": _add_rm,
    "image": _add_image,
    "network": _add_network,
    "topology": _add_topology,
    "trace": _add_trace,
    "lab": _add_lab,
    "cni": _add_cni,
    "daemon": _add_daemon,
    "explain": _add_explain,
}


def _root_option(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--root DIR`` (or ``--root=DIR``) before the subcommand, and the rest."""
    if argv[:1] == ["--root"] and len(argv) > 1:
        return argv[1], argv[2:]
    if argv[:1] and argv[0].startswith("--root="):
        return argv[0].split("=", 1)[1], argv[1:]
    return None, argv


def _command_word(argv: list[str]) -> str | None:
    """The subcommand named on the command line, if any (after ``--root DIR``)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--root":
            i += 2
        elif arg.startswith("-"):
            return None  # --help, --root=DIR or a mistake: let the full parser judge
        else:
            return arg
    return None


def build_parser(argv: list[str] | None = None) -> Parser:
    """The parser; given the command line, only its subcommand's part is built
    (all twenty sub-parsers would cost a command ~5 ms of its start-up)."""
    p = Parser(prog="qiao", description="Docker's container networking on the kernel's own parts")
    p.add_argument("--root", help="state root (env QIAO_ROOT; default /var/lib/qiao and /run/qiao)")
    sub = p.add_subparsers(dest="command", parser_class=Parser, required=True)
    word = _command_word(argv) if argv is not None else None
    for name, add in COMMANDS.items():
        if word not in COMMANDS or name == word:
            add(sub)
    return p


# -- commands ---------------------------------------------------------------


def _discard(c: Client, cid: str) -> None:
    """Remove (``rm -f``) the container a failed ``run`` created; best effort: the
    engine may have removed it already (``--rm``), or no daemon may answer."""
    with contextlib.suppress(DaemonError, Unreachable, OSError, KeyboardInterrupt):
        c.request("DELETE", f"/containers/{quote(cid)}", {"force": 1})


def run_body(a: argparse.Namespace) -> dict[str, Any]:
    """``run``'s ``POST /containers/create`` body (its usage errors raised here)."""
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd and not a.image:  # an image may bring its own
        raise UsageError("qiao run: no command given (qiao run [OPTIONS] -- COMMAND [ARG...])")
    bindings: dict[str, list[dict[str, str]]] = {}
    for spec in a.publish:
        for key, binding in output.parse_publish(spec):
            bindings.setdefault(key, []).append(binding)
    exposed: dict[str, dict[str, str]] = {key: {} for spec in a.expose for key in output.parse_expose(spec)}
    networks = a.network or ["bridge"]
    for i, net in enumerate(networks):
        if net in networks[:i]:  # as Docker's CLI: a second mention would drop the first one's settings
            raise UsageError(f'qiao run: network "{net}" is specified multiple times')
    first = {
        "Aliases": a.network_alias,
        "IPAMConfig": {"IPv4Address": a.ip, "IPv6Address": a.ip6},
        "MacAddress": a.mac_address,
    }
    env = []
    for path in a.env_file:
        with open(path) as f:
            env += output.env_file(f.read(), dict(os.environ), path)
    return {
        "Hostname": a.hostname or "",
        "Domainname": a.domainname,
        "Env": env + output.env_items(a.env, dict(os.environ)),
        "Cmd": cmd,
        "StopSignal": a.stop_signal,
        "StopTimeout": a.stop_timeout,
        "Image": a.image,
        **({} if a.entrypoint is None else {"Entrypoint": [a.entrypoint]}),
        "ExposedPorts": exposed,
        "User": a.user,
        "WorkingDir": a.workdir,
        "HostConfig": {
            "NetworkMode": networks[0],
            "AutoRemove": a.rm,
            "PortBindings": bindings,
            "PublishAllPorts": a.publish_all,
            "Links": a.link,
            "CapAdd": a.cap_add,
            "CapDrop": a.cap_drop,
            "Privileged": a.privileged,
            "RestartPolicy": output.restart_policy(a.restart),
            "Dns": a.dns,
            "DnsSearch": a.dns_search,
            "DnsOptions": a.dns_option,
            "ExtraHosts": a.add_host,
        },
        "NetworkingConfig": {"EndpointsConfig": {net: (first if i == 0 else {}) for i, net in enumerate(networks)}},
    }


def cmd_run(c: Client, a: argparse.Namespace) -> int:
    body = run_body(a)
    # Until the start has answered, SIGTERM and SIGHUP end the run as Ctrl-C does:
    # through the clean-up below, not with a "Created" container left behind.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    cid = c.request("POST", "/containers/create", {"name": a.name}, body)["Id"]
    try:
        c.request("POST", f"/containers/{quote(cid)}/start", fds=None if a.detach else [0, 1, 2])
    except DaemonError as exc:
        # Unlike Docker, a run that could not start leaves no "Created" container behind.
        _discard(c, cid)
        print(f"qiao: {exc}", file=sys.stderr)
        return int(exc.body.get("ExitCode", 125))
    except BaseException:
        # No answer (qiaod died, or the connection broke) or interrupted: the start may or
        # may not have happened, and nobody will remove what this run created but us.
        _discard(c, cid)
        raise
    if a.detach:
        print(cid)
        return 0

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(DaemonError, Unreachable, BadAnswer):
            c.request("POST", f"/containers/{quote(cid)}/kill", {"signal": signal.Signals(signum).name})

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    return int(c.request("POST", f"/containers/{quote(cid)}/wait")["StatusCode"])


def cmd_ps(c: Client, a: argparse.Namespace) -> int:
    rows = c.request("GET", "/containers/json", {"all": 1 if a.all else None})
    if a.quiet:
        for r in rows:
            print(r["Id"][:12])
    elif a.format == "json":
        for r in rows:
            print(json.dumps(output.ps_json(r), ensure_ascii=False))
    else:
        print(output.ps_table(rows), end="")
    return 0


def cmd_inspect(c: Client, a: argparse.Namespace) -> int:
    found, status = [], 0
    for name in a.names:
        for path in (f"/containers/{quote(name)}/json", f"/networks/{quote(name)}", f"/images/{quote(name)}/json"):
            try:
                found.append(c.request("GET", path))
                break
            except DaemonError as exc:
                if exc.status != 404:
                    raise
        else:
            print(f"qiao: Error: No such object: {name}", file=sys.stderr)
            status = 1
    print(json.dumps(found, indent=4))
    return status


def _process_env(pid: str) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            items = f.read().split(b"\0")
    except OSError:
        return {}
    return dict(item.decode(errors="surrogateescape").split("=", 1) for item in items if b"=" in item)


def cmd_exec(c: Client, a: argparse.Namespace) -> int:
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        raise UsageError("qiao exec: no command given")
    info = c.request("GET", f"/containers/{quote(a.container)}/json")
    if not info["State"]["Running"]:
        raise DaemonError(409, f"container {info['Id']} is not running", {})  # as dockerd answers an exec
    pid = str(info["State"]["Pid"])
    # As Docker's exec: the container's own environment, --link variables included (the
    # command's initial environment is exactly that); Config.Env if it cannot be read.
    env = _process_env(pid) or dict(item.split("=", 1) for item in info["Config"]["Env"] if "=" in item)
    env.setdefault("PATH", os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"))
    env["HOSTNAME"] = info["Config"]["Hostname"]
    from qiao.cli.enter import enter_container  # ctypes: only exec needs it

    return enter_container(pid, info, a.user, a.workdir, cmd, env, _kv(a.env, "environment variable"))


def cmd_port(c: Client, a: argparse.Namespace) -> int:
    info = c.request("GET", f"/containers/{quote(a.container)}/json")
    published = {k: v for k, v in info["NetworkSettings"]["Ports"].items() if v}
    if a.port is None:
        for key, bindings in published.items():
            for b in bindings:
                print(f"{key} -> {b['HostIp']}:{b['HostPort']}")
        return 0
    key = a.port if "/" in a.port else a.port + "/tcp"
    if key not in published:
        raise UsageError(f"qiao: Error: No public port '{key}' published for {a.container}")
    for b in published[key]:
        print(f"{b['HostIp']}:{b['HostPort']}")
    return 0


def cmd_logs(c: Client, a: argparse.Namespace) -> int:
    query = {
        "stdout": 1,
        "stderr": 1,
        "follow": 1 if a.follow else None,
        "tail": None if a.tail == "all" else a.tail,
        "timestamps": 1 if a.timestamps else None,
        "since": output.unix_time(a.since, "--since") or None,
        "until": output.unix_time(a.until, "--until") or None,
    }
    ctype, body = c.stream("GET", f"/containers/{quote(a.container)}/logs", query)
    out = sys.stdout.buffer
    if ctype != "application/vnd.docker.multiplexed-stream":  # a container with a TTY: one raw stream
        for chunk in body:
            out.write(chunk)
            out.flush()
        return 0
    from qiao.runtime.frames import STDERR, Decoder  # only here: struct

    decoder, err = Decoder(), sys.stderr.buffer
    for chunk in body:
        for stream, data in decoder.feed(chunk):
            (err if stream == STDERR else out).write(data)
        out.flush()
        err.flush()
    return 0


def _inspect_each(c: Client, names: list[str], path: str) -> int:
    """``inspect`` of networks or images: one JSON array of what was found, an error line for each that was not."""
    found, status = [], 0
    for name in names:
        try:
            found.append(c.request("GET", path.format(quote(name))))
        except DaemonError as exc:
            print(f"qiao: Error response from daemon: {exc}", file=sys.stderr)
            status = 1
    print(json.dumps(found, indent=4))
    return status


def _each(c: Client, names: list[str], method: str, path: str, query: dict[str, Any] | None = None) -> int:
    status = 0
    for name in names:
        try:
            c.request(method, path.format(quote(name)), query)
            print(name)
        except DaemonError as exc:
            print(f"qiao: Error response from daemon: {exc}", file=sys.stderr)
            status = 1
    return status


def network_create_body(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "Name": a.name,
        "Driver": a.driver,
        "Options": _kv(a.opt, "option"),
        "Labels": _kv(a.label, "label"),
        "Internal": a.internal,
        "Attachable": a.attachable,
        "EnableIPv6": a.ipv6,
        "IPAM": {"Driver": "default", "Config": output.ipam_config(a.subnet, a.gateway, a.ip_range)},
    }


def connect_body(a: argparse.Namespace) -> dict[str, Any]:
    cfg = {"Aliases": a.alias, "IPAMConfig": {"IPv4Address": a.ip, "IPv6Address": a.ip6}}
    return {"Container": a.container, "EndpointConfig": cfg}


def disconnect_body(a: argparse.Namespace) -> dict[str, Any]:
    return {"Container": a.container, "Force": a.force}


def cmd_network(c: Client, a: argparse.Namespace) -> int:
    sub = a.network_command
    if sub == "create":
        print(c.request("POST", "/networks/create", body=network_create_body(a))["Id"])
    elif sub == "ls":
        nets = output.by_name(c.request("GET", "/networks"))
        if a.quiet:
            for n in nets:
                print(n["Id"][:12])
        elif a.format == "json":
            for n in nets:
                print(json.dumps(output.network_json_line(n)))
        else:
            print(output.network_table(nets), end="")
    elif sub == "inspect":
        return _inspect_each(c, a.names, "/networks/{}")
    elif sub == "connect":
        c.request("POST", f"/networks/{quote(a.network)}/connect", body=connect_body(a))
    elif sub == "disconnect":
        c.request("POST", f"/networks/{quote(a.network)}/disconnect", body=disconnect_body(a))
    elif sub == "rm":
        return _each(c, a.names, "DELETE", "/networks/{}")
    elif sub == "prune":
        deleted = c.request("POST", "/networks/prune")["NetworksDeleted"] or []
        if deleted:
            print("Deleted Networks:\n" + "\n".join(deleted))
    return 0


def cmd_top(c: Client, a: argparse.Namespace) -> int:
    found = c.request("GET", f"/containers/{quote(a.container)}/top", {"ps_args": " ".join(a.ps_args) or None})
    print(output.table(found["Titles"], found["Processes"] or []), end="")
    return 0


def cmd_stats(c: Client, a: argparse.Namespace) -> int:
    """Docker's table: one sample of each container, another a second later, CPU %
    from the pair (one-shot samples: one second in all, however many containers)."""
    names = a.names or [r["Id"] for r in c.request("GET", "/containers/json", {"all": 1 if a.all else None})]

    def sample() -> list[dict[str, Any]]:
        return [c.request("GET", f"/containers/{quote(n)}/stats", {"stream": 0, "one-shot": 1}) for n in names]

    before = sample()
    while True:
        time.sleep(1)
        now = sample()
        text = output.stats_table([output.stats_row(n, b) for n, b in zip(now, before, strict=True)])
        if a.no_stream:
            print(text, end="")
            return 0
        if sys.stdout.isatty():
            print("\033[2J\033[H", end="")  # as docker stats: redraw in place
        print(text, end="", flush=True)
        before = now


def cmd_container(c: Client, a: argparse.Namespace) -> int:
    deleted = c.request("POST", "/containers/prune")["ContainersDeleted"] or []
    if deleted:
        print("Deleted Containers:\n" + "\n".join(deleted) + "\n")
    print("Total reclaimed space: 0B")
    return 0


def cmd_topology(c: Client, a: argparse.Namespace) -> int:
    from qiao.cli import netview

    model = c.request("GET", "/qiao/topology")
    if a.format == "json":
        print(json.dumps(model, indent=2))
        return 0
    view = {"hosts": [model]}
    draw = {"svg": netview.topology_svg, "dot": netview.topology_dot}.get(a.format)
    sys.stdout.write(draw(view) if draw else netview.topology_text(view, color=sys.stdout.isatty()))
    return 0


def cmd_trace(c: Client, a: argparse.Namespace) -> int:
    """Exit status 0 when the probe was delivered, 1 when not (as ping)."""
    from qiao.cli import netview

    result = c.request("POST", "/qiao/trace", body={"Source": a.source, "Destination": a.destination})
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(netview.trace_text(result, color=sys.stdout.isatty()))
    return 0 if result["result"]["status"] == "delivered" else 1


def _messages(raw: bytes) -> list[dict[str, Any]]:
    """Docker's JSON message stream (one object per line)."""
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def _upload(path: str) -> int:
    """A file's descriptor, or standard input's for ``-``."""
    return 0 if path == "-" else os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def cmd_image(c: Client, a: argparse.Namespace) -> int:
    sub = a.image_command
    if sub == "import":
        query = {"fromSrc": "-", "repo": a.reference or None, "message": a.message or None, "changes": a.change}
        for msg in _messages(c.request("POST", "/images/create", query, upload=_upload(a.file), raw=True)):
            print(msg.get("status", ""))
    elif sub == "load":
        for msg in _messages(c.request("POST", "/images/load", {"quiet": 1 if a.quiet else 0}, upload=_upload(a.input), raw=True)):
            print(msg.get("stream", "").rstrip("\n"))
    elif sub == "ls":
        images = c.request("GET", "/images/json")
        if a.quiet:
            for img in images:
                print(img["Id"].removeprefix("sha256:")[:12])
        elif a.format == "json":
            for repo, tag, img in output.image_rows(images):
                print(json.dumps(output.image_json_line(repo, tag, img)))
        else:
            print(output.image_table(images), end="")
    elif sub == "inspect":
        return _inspect_each(c, a.names, "/images/{}/json")
    elif sub == "tag":
        repo, tag = a.target, ""
        if ":" in a.target.rpartition("/")[2]:
            repo, _, tag = a.target.rpartition(":")
        c.request("POST", f"/images/{quote(a.source)}/tag", {"repo": repo, "tag": tag or None})
    elif sub == "rm":
        status = 0
        for name in a.names:
            try:
                for record in c.request("DELETE", f"/images/{quote(name)}", {"force": 1 if a.force else None}):
                    for key, value in record.items():
                        print(f"{key}: {value}")
            except DaemonError as exc:
                print(f"qiao: Error response from daemon: {exc}", file=sys.stderr)
                status = 1
        return status
    return 0


def cmd_daemon(c: Client, a: argparse.Namespace) -> int:
    c.autostart = False
    try:
        info = c.request("GET", "/info")
    except Unreachable:
        print(f"qiaod: not running (socket {c.root.socket})")
        return 3 if a.action == "status" else 0
    if a.action == "status":
        print(f"qiaod: running, pid {info['Pid']}, {info['ContainersRunning']} of {info['Containers']} containers running")
        print(f"  data {info['DataRoot']}  run {info['RunRoot']}  socket {c.root.socket}")
        return 0
    pid = c.request("POST", "/qiao/shutdown")["Pid"]
    deadline = time.monotonic() + 10
    while not exited(pid):
        if time.monotonic() > deadline:
            print(f"qiao: qiaod (pid {pid}) did not stop within 10 s", file=sys.stderr)
            return 1
        time.sleep(0.02)
    print(f"qiaod: stopped (pid {pid}); containers keep running")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The entry point. Whatever goes wrong ends in one line on stderr and a
    non-zero exit, never a traceback (``QIAO_DEBUG=1`` shows one for a bug);
    a closed stdout (``qiao ps | head -1``) ends quietly, as other tools."""
    # A closed stdout is noted from SIGPIPE too: a large write that the reader
    # leaves half done returns a short count, and Python's buffered writer then
    # drops the rest without an error. (The client's sockets use MSG_NOSIGNAL.)
    _closed_pipe.seen = False
    previous = signal.signal(signal.SIGPIPE, _closed_pipe)
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, not at exit: a reader that went away is seen now
        if _closed_pipe.seen:
            raise BrokenPipeError
        return status
    except BrokenPipeError:
        with contextlib.suppress(OSError):  # the interpreter's last flush must not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # the status of a tool killed by SIGPIPE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("QIAO_DEBUG"):
            raise
        with contextlib.suppress(OSError):
            print(f"qiao: internal error: {type(exc).__name__}: {exc} (QIAO_DEBUG=1 shows where)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGPIPE, previous)


class _ClosedPipe:
    seen = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.seen = True


_closed_pipe = _ClosedPipe()


def _main(argv: list[str] | None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["lab"]:  # its own parser; imports pyroute2 only for lab commands
        from qiao.lab.lab import main as lab_main

        return lab_main(args[1:])
    root, rest = _root_option(args)
    if rest[:1] == ["cni"]:  # its own parser: writes files, asks no daemon
        from qiao.cni.install import main as cni_main

        return cni_main(rest[1:], Root.resolve(root))
    failing_run = False  # Docker's `run` exits 125 when the daemon refuses
    try:
        a = build_parser(args).parse_args(args)
        failing_run = a.command == "run"
        c = Client(Root.resolve(a.root))
        cmd = a.command
        if cmd == "run":
            return cmd_run(c, a)
        if cmd == "ps":
            return cmd_ps(c, a)
        if cmd == "inspect":
            return cmd_inspect(c, a)
        if cmd == "exec":
            return cmd_exec(c, a)
        if cmd == "port":
            return cmd_port(c, a)
        if cmd == "logs":
            return cmd_logs(c, a)
        if cmd == "stop":
            return _each(c, a.names, "POST", "/containers/{}/stop", {"t": a.time, "signal": a.signal})
        if cmd == "restart":
            return _each(c, a.names, "POST", "/containers/{}/restart", {"t": a.time, "signal": a.signal})
        if cmd == "rename":
            c.request("POST", f"/containers/{quote(a.container)}/rename", {"name": a.new_name})
            return 0
        if cmd == "top":
            return cmd_top(c, a)
        if cmd == "stats":
            return cmd_stats(c, a)
        if cmd in ("pause", "unpause"):
            return _each(c, a.names, "POST", "/containers/{}/" + cmd)
        if cmd == "container":
            return cmd_container(c, a)
        if cmd == "start":
            return _each(c, a.names, "POST", "/containers/{}/start")
        if cmd == "kill":
            return _each(c, a.names, "POST", "/containers/{}/kill", {"signal": a.signal})
        if cmd == "rm":
            return _each(c, a.names, "DELETE", "/containers/{}", {"force": 1 if a.force else None})
        if cmd == "network":
            return cmd_network(c, a)
        if cmd == "topology":
            return cmd_topology(c, a)
        if cmd == "trace":
            return cmd_trace(c, a)
        if cmd == "image":
            return cmd_image(c, a)
        if cmd == "daemon":
            return cmd_daemon(c, a)
        if cmd == "explain":
            from qiao.cli.explain import cmd_explain

            return cmd_explain(c, a)
        raise UsageError(f"unknown command {cmd}")
    except ValueError as exc:  # a -p / --expose that does not parse
        print(f"qiao: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except DaemonError as exc:
        print(f"qiao: Error response from daemon: {exc}", file=sys.stderr)
        return 125 if failing_run else 1
    except (Unreachable, BadAnswer) as exc:
        print(f"qiao: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"qiao: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 127
    except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:  # a local file the command names (--env-file)
        print(f"qiao: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
