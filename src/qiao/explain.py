"""``qiao explain``: an operation's plan, as the commands a person would type.

The plan is not described here: the engine's own operation runs dry
(:mod:`qiao.engine.dryrun`) over recording kernel ports
(:mod:`qiao.kernel.recording`), and this module turns each recorded call
into its equivalent ``ip``, ``nft``, ``sysctl``, ``bridge`` or ``conntrack``
commands with one plain sentence, in the order the engine made the calls.
Named steps that made no kernel call (an address taken from the pool, the
store written) keep a sentence and no command.

The commands do what qiao's netlink and libnftables calls do, so that a
script of them (``--from-scratch``) builds the same kernel state (hence
``proto static`` on routes: what pyroute2 gives a route qiao adds).  One
liberty: a sandbox is made with ``ip netns add <id12>`` (a bind mount under
/run/netns) where qiao bind-mounts the same kind of namespace file under its
own root, because ``ip`` names namespaces only there.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from qiao.engine.dryrun import DryEngine
from qiao.engine.engine import Engine
from qiao.kernel.firewall import EndpointGuard, PortMapping
from qiao.kernel.host import Iface
from qiao.kernel.recording import Call, Recorder

Operation = Callable[[DryEngine], Any]

# Named steps that change nothing in the kernel, in plain words.
QUIET_STEPS = {
    "allocate-address": "qiaod takes the lowest free IPv4 address of the network's subnet from its pool (IPAM, in memory).",
    "allocate-address6": "qiaod takes the lowest free IPv6 address of the network's IPv6 subnet from its pool (IPAM, in memory).",
    "reserve-ports": "qiaod binds a socket on each published host port and holds it, so no other program can take the port; "
    "the traffic itself is forwarded by a map element, with no proxy process.",
    "write-etc-files": "Write the container's /etc/hosts, /etc/resolv.conf and /etc/hostname under qiao's root "
    "(bind-mounted over the host's inside the container).",
    "store": "Record the result in qiaod's store (SQLite) in one transaction, last: a failure before this leaves nothing behind.",
    "start-up": "qiaod's first start on this host.",
}

# Calls made outside the engine's named steps (by a driver's control loop), labelled by what they are.
OUTSIDE_STEPS = {
    ("vxlan", "set_peer"): "vxlan-peer",
    ("vxlan", "del_peer"): "vxlan-peer",
    ("process", "needs"): "start-up",
    **{("cluster", m): "etcd" for m in ("lease", "create", "replace_if", "put", "delete", "delete_prefix")},
}


def explain(engine: Engine, operations: Sequence[Operation], fresh: bool = False, networks: Iterable[str] = (),
            containers: Iterable[str] = ()) -> list[dict[str, Any]]:  # fmt: skip
    """Run ``operations`` dry against a copy of ``engine``'s state (or, ``fresh``,
    on an empty host that first gets the ``networks`` and ``containers`` named)
    and return the plan.  Raises what the real operations would raise."""
    with engine.lock:  # what a fresh host lacks: qiao's links (bridges, their member devices, veths) and subnets
        rules = engine.networks.firewall_rules()
        ours = {r.bridge for r in rules} | {r.member_dev for r in rules if r.member_dev}
        ours |= {ep.host_ifname for ep in engine.networks.endpoints.values() if ep.host_ifname}
        subnets = [n.subnet for n in engine.networks.by_id.values() if n.subnet]
    recorder = Recorder(engine.host, engine.networks.firewall, fresh, ours, subnets)
    with DryEngine(engine, recorder) as dry:
        if fresh:
            dry.start_fresh(networks, containers)
        for operation in operations:
            operation(dry)
    return steps(recorder.calls)


def steps(calls: Sequence[Call]) -> list[dict[str, Any]]:
    """The plan: ``{"step", "kind", "why", "commands"}`` per recorded call (a few
    calls give two entries), and per named step that made no call."""
    out: list[dict[str, Any]] = []
    for i, call in enumerate(calls):
        if call.port == "step":
            own = itertools.takewhile(lambda c: c.port != "step", calls[i + 1 :])
            if all((c.port, c.method) in OUTSIDE_STEPS for c in own):
                why = QUIET_STEPS.get(call.method, f"qiaod's own bookkeeping ({call.method}); no kernel change.")
                out.append(_entry(call.method, "qiaod", why, []))
            continue
        step = OUTSIDE_STEPS.get((call.port, call.method), call.step)
        for kind, why, commands in RENDER[(call.port, call.method)](call):
            if kind != "kernel" or commands:
                out.append(_entry(step, kind, why, commands))
    return out


def _entry(step: str, kind: str, why: str, commands: list[str]) -> dict[str, Any]:
    return {"step": step, "kind": kind, "why": why, "commands": commands}


Rendered = list[tuple[str, str, list[str]]]  # (kind, sentence, commands)


# -- helpers ------------------------------------------------------------------


def ns(path: str) -> str:
    """The name ``ip netns`` gives a sandbox: the file name qiao gives it."""
    return os.path.basename(path.rstrip("/"))


def sysctl(key: str, value: str, ignore_missing: bool = False) -> str:
    """``sysctl -w``; keys whose parts hold a dot (an interface name) in the slash form."""
    parts = key.split("|")
    name = "/".join(parts) if any("." in p for p in parts) else ".".join(parts)
    return f"sysctl -q{'e' if ignore_missing else ''}w {name}={value}"


def nft(script: str) -> list[str]:
    """One libnftables transaction: ``nft 'LINE'``, or ``nft -f -`` with a here-document."""
    text = script.strip("\n")
    if not text.strip():
        return []
    if "\n" not in text and "'" not in text:
        return [f"nft '{text}'"]
    return ["nft -f - <<'EOF'\n" + text + "\nEOF"]


def _ports(mappings: list[PortMapping]) -> str:
    return ", ".join(f"{m.host_ip}:{m.host_port}/{m.proto} -> {m.container_ip}:{m.container_port}" for m in mappings)


def _guards(guards: list[EndpointGuard]) -> str:
    return "; ".join(f"{g.port} may send from {' and '.join(g.addresses)} only" for g in guards)


# -- the host: links, addresses, routes, namespaces, sysctls ---------------------------


def _ensure_bridge(c: Call) -> Rendered:
    a = c.args
    name, cidr = a["name"], f"{a['address']}/{a['prefixlen']}"
    cmds = [f"ip link add {name} mtu {a['mtu']} address {a['mac']} type bridge"] if a["created"] else []
    if a["owner"]:
        cmds.append(f"ip link set {name} alias qiao:{a['owner']}")
    cmds.append(f"ip addr {'add' if a['created'] else 'replace'} {cidr} dev {name}")
    if a["v6"]:
        cmds.append(f"ip addr {'add' if a['created'] else 'replace'} {a['v6'][0]}/{a['v6'][1]} dev {name} nodad")
    cmds.append(f"ip link set {name} up")
    if a["created"]:
        why = (
            f"Create the bridge {name}, the network's switch (docker0 in Docker), with a random local MAC, "
            f"and give it the gateway address {cidr}; the kernel adds the route to the subnet."
        )
    else:
        why = f"The bridge {name} exists: make sure it has the gateway address {cidr} and is up."
    return [
        ("kernel", why, cmds),
        (
            "kernel",
            f"Two settings of {name}: no IPv6 router advertisements, and route_localnet, so that the host's "
            "127.0.0.1 can reach published ports through it.",
            [sysctl(f"net|ipv6|conf|{name}|accept_ra", "0", ignore_missing=True), sysctl(f"net|ipv4|conf|{name}|route_localnet", "1")],
        ),
    ]


def _delete_link(c: Call) -> Rendered:
    name = c.args["name"]
    whys = {
        "delete-veth": f"Delete the veth pair: its host end {name} (the end in the sandbox goes with it).",
        "delete-bridge": f"Delete the bridge {name}.",
        "delete-vxlan": f"Delete the VXLAN device {name}.",
    }
    why = whys.get(c.step, f"Delete {name}.")
    if c.method == "retire_link":
        why += " qiaod does it right after answering, off the request's path (the kernel takes ~17 ms)."
    return [("kernel", why, [f"ip link del {name}"])]


def _create_netns(c: Call) -> Rendered:
    path = c.args["path"]
    why = (
        f"Make the container's sandbox: a new network namespace, kept alive by a bind mount at {path} "
        "(`ip netns add` keeps its own the same way under /run/netns). It has only lo, down."
    )
    return [("kernel", why, [f"ip netns add {ns(path)}"])]


def _pin_netns(c: Call) -> Rendered:
    why = f"Pin the runtime's network namespace {c.args['source']} with a bind mount at {c.args['path']}."
    return [("kernel", why, [f"touch {c.args['path']}", f"mount --bind {c.args['source']} {c.args['path']}"])]


def _destroy_netns(c: Call) -> Rendered:
    why = f"Remove the sandbox's bind mount {c.args['path']}; the namespace goes when nothing uses it any more."
    return [("kernel", why, [f"ip netns del {ns(c.args['path'])}"])]


def _plug_veth(c: Call) -> Rendered:
    a = c.args
    host, peer = a["host_ifname"], a["ifname"]
    if a["netns"]:
        where = f"netns {ns(a['netns'])}"
        why = (
            f"Create the veth pair in one step: {host} on the host, plugged into {a['bridge']} and up, and its other end "
            f"inside the sandbox, already named {peer}, with MAC {a['mac']} (02:42 and the IPv4 address) and MTU {a['mtu']}."
        )
    else:
        where = ""
        why = (
            f"Create the veth pair: {host} plugged into {a['bridge']} and up, and {peer} with MAC {a['mac']}, "
            "left on the host for the runtime to move into its sandbox."
        )
    add = f"ip link add {host} mtu {a['mtu']} master {a['bridge']} up type veth peer name {peer} address {a['mac']} mtu {a['mtu']}"
    flags = "hairpin on" + (" isolated on" if a["isolated"] else "")
    tag = (
        f"Tag {host} with its endpoint (qiao finds its own links by this alias) and put the bridge port in hairpin mode, "
        "so a container can reach its own published port through the host."
    )
    if a["isolated"]:
        tag += " Port isolation: this network has icc disabled."
    port = f"ip link set {host} alias qiao:{a['owner']} type bridge_slave {flags}"
    return [("kernel", why, [f"{add} {where}".rstrip()]), ("kernel", tag, [port])]


def _configure_sandbox(c: Call) -> Rendered:
    name = ns(c.args["netns"])
    iface: Iface | None = c.args["iface"]
    if iface is None:
        return [("kernel", "Bring up lo in the sandbox: loopback is all this container gets.", [f"ip -n {name} link set lo up"])]
    cmds = [f"ip -n {name} link set lo up", f"ip -n {name} addr add {iface.address}/{iface.prefixlen} dev {iface.ifname}"]
    if iface.address6:
        cmds.append(f"ip -n {name} addr add {iface.address6}/{iface.prefixlen6} dev {iface.ifname} nodad")
    cmds.append(f"ip -n {name} link set {iface.ifname} up")
    out: Rendered = [
        ("kernel", f"Inside the sandbox: lo up, then {iface.ifname} gets its address {iface.address}/{iface.prefixlen} and goes up.", cmds)
    ]
    routes = []
    if iface.gateway:
        routes.append(f"ip -n {name} route add default via {iface.gateway} proto static")
    if iface.gateway6:
        routes.append(f"ip -n {name} -6 route add default via {iface.gateway6} proto static")
    if routes:
        gateways = " and ".join(g for g in (iface.gateway, iface.gateway6) if g)
        why = f"The container's default route: everything not on its own subnet goes to the gateway {gateways}, the bridge."
        out.append(("kernel", why, routes))
    return out


def _set_default_route(c: Call) -> Rendered:
    name, a = ns(c.args["netns"]), c.args
    cmds = [f"ip -n {name} route replace default via {a['gateway']} proto static"]
    if a["gateway6"]:
        cmds.append(f"ip -n {name} -6 route replace default via {a['gateway6']} proto static")
    why = f"Move the container's default route to {a['gateway']}: of its networks, this one comes first in Docker's order."
    return [("kernel", why, cmds)]


def _enable_forwarding(c: Call) -> Rendered:
    cmds = [sysctl("net|ipv4|ip_forward", "1")]
    if c.args["ipv6"]:
        cmds.append(sysctl("net|ipv6|conf|all|forwarding", "1"))
    return [("kernel", "Let the host route between its interfaces, the bridges included (IP forwarding).", cmds)]


def _flush_conntrack(c: Call) -> Rendered:
    a = c.args
    why = f"Forget the tracked flows to host port {a['port']}/{a['proto']}, so a long-lived UDP flow is NATed afresh."
    return [("kernel", why, [f"conntrack -D -p {a['proto']} --orig-port-dst {a['port']} || true"])]


# -- the firewall: one nft transaction per call --------------------------------


def _reset(c: Call) -> Rendered:
    why = (
        "Create qiao's two nftables tables, replacing any old ones, in one transaction: inet qiao (NAT, isolation between "
        "networks, published ports; per-network chains hang off verdict maps) and bridge qiao (anti-spoofing)."
    )
    return [("kernel", why, nft(c.args["script"]))]


def _add_network(c: Call) -> Rendered:
    r = c.args["rules"]
    parts = [f"NAT and isolation for {r.bridge}, in one transaction: a forward chain that lets in only replies, published ports"]
    parts.append(f" and traffic from {r.bridge} itself" if r.icc else f" and nothing from {r.bridge} itself (icc off)")
    if r.internal:
        parts.append(f"; nothing may leave {r.bridge} (an internal network)")
    elif r.masquerade:
        parts.append(f"; a masquerade rule for {r.subnet} leaving by another interface (NAT out)")
    if r.member_dev:
        parts.append(f"; traffic from {r.member_dev} (the other hosts) is let in too")
    parts.append(".")
    return [("kernel", "".join(parts), nft(c.args["script"]))]


def _del_network(c: Call) -> Rendered:
    return [("kernel", f"Remove the chains and map elements of {c.args['rules'].bridge}, in one transaction.", nft(c.args["script"]))]


def _add_ports(c: Call) -> Rendered:
    why = f"Publish the ports: one element per mapping in the DNAT maps ({_ports(c.args['mappings'])}); no proxy process."
    return [("kernel", why, nft(c.args["script"]))]


def _del_ports(c: Call) -> Rendered:
    return [("kernel", f"Unpublish the ports: delete their map elements ({_ports(c.args['mappings'])}).", nft(c.args["script"]))]


def _add_guards(c: Call) -> Rendered:
    why = (
        f"Anti-spoofing, before the veth exists so it never sends unguarded: {_guards(c.args['guards'])} "
        "(set elements in table bridge qiao, not rules)."
    )
    return [("kernel", why, nft(c.args["script"]))]


def _del_guards(c: Call) -> Rendered:
    ports = ", ".join(g.port for g in c.args["guards"])
    return [("kernel", f"Remove the anti-spoofing elements of {ports}.", nft(c.args["script"]))]


def _foreign_hooks(c: Call) -> Rendered:
    why = "Another table drops forwarded traffic by policy: accept the traffic of qiao's bridges there (two rules each)."
    return [("kernel", why, nft(c.args["script"]))]


# -- VXLAN: the overlay's data plane ------------------------------------------------


def _ensure_vxlan(c: Call) -> Rendered:
    a = c.args
    why = (
        f"Create the VXLAN device {a['name']} (VNI {a['vni']}, UDP port {a['port']} over {a['underlay']} from {a['local_ip']}, "
        f"learning off: every other host is programmed, nothing is flooded), with {a['address']}/32, this host's share's "
        "network address, which the other hosts route to."
    )
    cmds = [
        f"ip link add {a['name']} address {a['mac']} mtu {a['mtu']} type vxlan id {a['vni']} local {a['local_ip']} "
        f"dev {a['underlay']} dstport {a['port']} nolearning",
        f"ip addr add {a['address']}/32 dev {a['name']}",
        f"ip link set {a['name']} up",
    ]
    return [("kernel", why, cmds)]


def _set_peer(c: Call) -> Rendered:
    a = c.args
    why = (
        f"Reach the containers of the host {a['public_ip']} ({a['subnet']}): a permanent neighbour entry for its VTEP "
        f"{a['vtep_ip']}, a forwarding entry sending that MAC to {a['public_ip']}, and the route via it."
    )
    cmds = [
        f"ip neigh replace {a['vtep_ip']} lladdr {a['mac']} dev {a['dev']} nud permanent",
        f"bridge fdb append {a['mac']} dev {a['dev']} dst {a['public_ip']} permanent",
        f"ip route replace {a['subnet']} via {a['vtep_ip']} dev {a['dev']} onlink proto static",
    ]
    return [("kernel", why, cmds)]


def _del_peer(c: Call) -> Rendered:
    a = c.args
    cmds = [
        f"ip route del {a['subnet']} dev {a['dev']}",
        f"ip neigh del {a['vtep_ip']} dev {a['dev']}",
        f"bridge fdb del {a['mac']} dev {a['dev']}",
    ]
    return [("kernel", f"Forget the host behind {a['vtep_ip']} ({a['subnet']}): its route, neighbour and forwarding entries.", cmds)]


# -- the process and the cluster store: no kernel commands ----------------------------


def _spawn(c: Call) -> Rendered:
    cmd = shlex.join(c.args["cmd"])
    if not c.args["netns"]:
        why = f"Start `{cmd}` through qiao's shim in the host's own network namespace (mode host): the network needs nothing."
    else:
        whose = "the container it joins (mode container:)" if c.args["joined"] else "the sandbox"
        why = (
            f"Start the command through qiao's shim, in the network namespace of {whose}, with its own UTS and mount "
            f"namespaces; what it does to the network is `ip netns exec {ns(c.args['netns'])} {cmd}`."
        )
    return [("process", why, [])]


def _kill(c: Call) -> Rendered:
    return [("process", "Kill the container's process (SIGKILL) and wait for its exit; its network is released next.", [])]


def _needs(c: Call) -> Rendered:
    return [("process", f"The command needs the container {c.args['name']}: start it first, as it runs on this host.", [])]


def _cluster(c: Call) -> Rendered:
    a = c.args
    value = json.dumps(a.get("value"), sort_keys=True, separators=(",", ":"))
    whys = {
        "lease": f"Take a lease of {a.get('ttl')} s in etcd that qiaod keeps alive; this host's subnets and names hang on it.",
        "create": f"Create {a.get('key')} in etcd (only if it does not exist yet): {value}",
        "replace_if": f"Keep {a.get('key')} in etcd, under this daemon's lease: {value}",
        "put": f"Put {a.get('key')} in etcd: {value}",
        "delete": f"Delete {a.get('key')} from etcd.",
        "delete_prefix": f"Delete everything under {a.get('key')} from etcd.",
    }
    return [("cluster", whys[c.method], [])]


RENDER: dict[tuple[str, str], Callable[[Call], Rendered]] = {
    ("host", "ensure_bridge"): _ensure_bridge,
    ("host", "delete_link"): _delete_link,
    ("host", "retire_link"): _delete_link,
    ("host", "create_netns"): _create_netns,
    ("host", "pin_netns"): _pin_netns,
    ("host", "destroy_netns"): _destroy_netns,
    ("host", "plug_veth"): _plug_veth,
    ("host", "configure_sandbox"): _configure_sandbox,
    ("host", "set_default_route"): _set_default_route,
    ("host", "enable_forwarding"): _enable_forwarding,
    ("host", "flush_conntrack"): _flush_conntrack,
    ("firewall", "reset"): _reset,
    ("firewall", "add_network"): _add_network,
    ("firewall", "del_network"): _del_network,
    ("firewall", "add_ports"): _add_ports,
    ("firewall", "del_ports"): _del_ports,
    ("firewall", "add_guards"): _add_guards,
    ("firewall", "del_guards"): _del_guards,
    ("firewall", "ensure_foreign_hooks"): _foreign_hooks,
    ("vxlan", "ensure_vxlan"): _ensure_vxlan,
    ("vxlan", "set_peer"): _set_peer,
    ("vxlan", "del_peer"): _del_peer,
    ("process", "spawn"): _spawn,
    ("process", "kill"): _kill,
    ("process", "needs"): _needs,
    **{("cluster", m): _cluster for m in ("lease", "create", "replace_if", "put", "delete", "delete_prefix")},
}
