"""Drawing what qiaod answers for ``qiao topology`` and ``qiao trace``.

Standard library only (the CLI and ``qiao lab`` import it); the daemon
computes the models (:mod:`qiao.observe`), this only lays them out:

* :func:`topology_text`: a tree per host, one or two lines per container,
  within 80 columns; foreign objects marked ``(foreign ...)``, drift on
  lines that start with ``!`` (red on a terminal) saying what qiao will do;
* :func:`topology_svg`: the same as a picture a browser shows (hosts,
  uplinks, bridges with their veth pairs down to the containers'
  namespaces, VXLAN devices and their remote hosts, and for a lab the
  underlay between the hosts), drift in red, foreign objects dashed grey;
* :func:`topology_dot`: Graphviz, for tools;
* :func:`trace_text`: a trace's hops and result.

A *view* is ``{"hosts": [model, ...], "underlay": {...} or absent}``: one
host for ``qiao topology``, every host of a lab for ``qiao lab topology``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up time)
if TYPE_CHECKING:
    from typing import Any

WIDTH = 80
RED, GREY, RESET = "\033[31m", "\033[2m", "\033[0m"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _words(text: str, first: str, rest: str, width: int = WIDTH) -> list[str]:
    """``text`` wrapped at spaces on lines that start with ``first`` (then ``rest``)."""
    return _wrap(text.split(" "), first, rest, width, sep=" ")


def _wrap(items: list[str], first: str, rest: str, width: int = WIDTH, sep: str = " · ") -> list[str]:
    """``items`` joined by ``sep`` on lines that start with ``first`` (then ``rest``), within ``width``."""
    lines: list[str] = []
    line = first
    for item in items:
        candidate = line + (sep if line not in (first, rest) else "") + item
        if len(candidate) > width and line not in (first, rest):
            lines.append(line)
            line = rest + item
        else:
            line = candidate
    if line not in (first, rest):
        lines.append(line)
    return [_fit(x, width) for x in lines]


# -- text -----------------------------------------------------------------------


class _Text:
    def __init__(self, color: bool) -> None:
        self.lines: list[str] = []
        self.color = color

    def add(self, line: str, kind: str = "") -> None:
        line = _fit(line, WIDTH)
        if self.color and kind == "drift":
            line = RED + line + RESET
        elif self.color and kind == "foreign":
            line = GREY + line + RESET
        self.lines.append(line)

    def drift(self, prefix: str, items: list[dict[str, str]]) -> None:
        for d in items:
            for line in _words(f"{d['what']} -> {d['fix']}", prefix + "! ", prefix + "    "):
                self.add(line, "drift")


def _uplink_text(host: dict[str, Any]) -> str:
    up = host.get("uplink")
    if not up:
        return "no default route"
    addrs = " ".join(a for a in up["addresses"] if ":" not in a) or "no address"
    via = f" via {up['gateway']}" if up.get("gateway") else ""
    return f"uplink {up['dev']} {addrs}{via}"


def _by_owner(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in model["containers"]}


def _host_text(out: _Text, model: dict[str, Any], label: str = "") -> None:
    host = model["host"]
    out.add(f"host {label or host['name']} · {_uplink_text(host)} · table {model['firewall']['table']}")
    out.drift("", model["firewall"]["drift"])
    for note in model["firewall"]["foreign"]:
        for line in _words(note, "  (foreign) ", "      "):
            out.add(line, "foreign")
    containers = _by_owner(model)
    sections: list[tuple[str, Any]] = [("net", n) for n in model["networks"]]
    hosted = [c for c in model["containers"] if c["mode"] == "host"]
    isolated = [c for c in model["containers"] if c["mode"] == "none"]
    if hosted:
        sections.append(("host", hosted))
    if isolated:
        sections.append(("none", isolated))
    if not sections:
        out.add("└─ no networks")
    for i, (kind, item) in enumerate(sections):
        last = i == len(sections) - 1
        head, pipe = ("└─ ", "   ") if last else ("├─ ", "│  ")
        if kind == "net":
            _network_text(out, item, containers, head, pipe)
        elif kind == "host":
            out.add(head + "host network (the host's own interfaces): " + ", ".join(c["name"] for c in item))
        else:
            for line in _wrap(
                [f"{c['name']} (ns {c['namespace']})" for c in item], head + "network none (lo only): ", pipe + "   ", sep=", "
            ):
                out.add(line)
    for d in model.get("stale", []):
        out.drift("", [d])


def _network_text(out: _Text, net: dict[str, Any], containers: dict[str, dict[str, Any]], head: str, pipe: str) -> None:
    flags = (" · " + ", ".join(net["flags"])) if net["flags"] else ""
    if net.get("vxlan"):
        title = f"overlay {net['name']} · bridge {net['bridge']} {net['address']}"
        if net.get("cluster_subnet"):
            title += f" of {net['cluster_subnet']}"
    else:
        title = f"bridge {net['bridge']} {net['address']} · network {net['name']}"
    out.add(head + title + flags, "drift" if net["drift"] else "")
    out.drift(pipe, net["drift"])
    children: list[tuple[str, Any]] = []
    if net.get("vxlan"):
        children.append(("vxlan", net["vxlan"]))
    children += [("foreign", f) for f in net["foreign"]]
    children += [("port", p) for p in net["ports"]]
    if not children:
        out.add(pipe + "└─ (no containers)")
    for i, (kind, item) in enumerate(children):
        last = i == len(children) - 1
        branch, cont = (pipe + "└─ ", pipe + "   ") if last else (pipe + "├─ ", pipe + "│  ")
        if kind == "vxlan":
            _vxlan_text(out, item, branch, cont)
        elif kind == "foreign":
            out.add(f"{branch}{item['name']} (foreign {item['kind']}: not qiao's)", "foreign")
        else:
            _port_text(out, item, containers.get(item["owner"]), branch, cont)


def _vxlan_text(out: _Text, vx: dict[str, Any], branch: str, cont: str) -> None:
    addr = f" {vx['address']}" if vx.get("address") else ""
    out.add(
        f"{branch}VXLAN {vx['dev']}{addr} · VNI {vx['vni']} · {vx['local']}:{vx['port']} over {vx['underlay']}",
        "drift" if vx["drift"] else "",
    )
    out.drift(cont, vx["drift"])
    peers = vx["peers"]
    if not peers:
        out.add(cont + "└─ no remote hosts yet")
    for i, p in enumerate(peers):
        last = i == len(peers) - 1
        b, c = (cont + "└─ ", cont + "   ") if last else (cont + "├─ ", cont + "│  ")
        out.add(f"{b}host {p['host'] or '?'} ── {p['subnet']} via {p['vtep']} ({p['mac'] or '?'})", "drift" if p["drift"] else "")
        out.drift(c, p["drift"])


def _port_text(out: _Text, port: dict[str, Any], ctr: dict[str, Any] | None, branch: str, cont: str) -> None:
    """Two lines: the veth pair with the container's end (name, address), then its MAC, namespace, ports, sharers."""
    head = f"{branch}{port['veth']} ══ {port['ifname']} "
    tail = f"  {port['address']}"
    out.add(head + _fit(port["owner"], WIDTH - len(head) - len(tail)) + tail, "drift" if port["drift"] else "")
    out.drift(cont, port["drift"])
    details = [port["mac"]]
    iface = None
    if ctr is not None:
        iface = next((i for i in ctr["interfaces"] if i["veth"] == port["veth"]), None)
        details += [f"ns {ctr['namespace']}"] if ctr["namespace"] else []
        if iface and iface.get("address6"):
            details.append(iface["address6"])
        first = not iface or iface is ctr["interfaces"][0]
        details += [p for p in ctr["ports"] if first]
        if ctr["sharers"]:
            details.append("shared by " + ", ".join(ctr["sharers"]))
    for line in _wrap(details, cont + "     ", cont + "     "):
        out.add(line)
    if ctr is not None:
        first = not iface or iface is ctr["interfaces"][0]
        out.drift(cont + "     ", (iface["drift"] if iface else []) + (ctr["drift"] if first else []))


def topology_text(view: dict[str, Any], color: bool = False) -> str:
    out = _Text(color)
    underlay = view.get("underlay")
    if underlay:
        out.add(f"lab {underlay['lab']} · underlay {underlay['bridge']} {underlay['address']} in {underlay['namespace']}")
        out.add(f"etcd {underlay['etcd']} · hosts: " + ", ".join(f"{h['label']} {h['address']}" for h in underlay.get("hosts", [])))
        out.add("")
    for i, model in enumerate(view["hosts"]):
        if i:
            out.add("")
        _host_text(out, model, model.get("label", ""))
    return "\n".join(out.lines) + "\n"


# -- SVG -------------------------------------------------------------------------

COL_W = 290
BOX_W = 250
LINE_H = 15
PAD = 20
FONT = "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace"
CHARS = 34  # characters that fit a box line at 12px


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


class _Svg:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def rect(self, x: float, y: float, w: float, h: float, cls: str, rx: int = 6) -> None:
        self.parts.append(f'<rect class="{cls}" x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="{h:.0f}" rx="{rx}"/>')

    def line(self, x1: float, y1: float, x2: float, y2: float, cls: str = "wire") -> None:
        self.parts.append(f'<line class="{cls}" x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}"/>')

    def text(self, x: float, y: float, text: str, cls: str = "t") -> None:
        self.parts.append(f'<text class="{cls}" x="{x:.0f}" y="{y:.0f}">{_esc(text)}</text>')

    def box(self, x: float, y: float, lines: list[tuple[str, str]], cls: str, w: float = BOX_W) -> float:
        """A box of text lines ((text, class)); returns its height."""
        h = 10 + LINE_H * len(lines)
        self.rect(x, y, w, h, cls)
        for i, (text, tcls) in enumerate(lines):
            self.text(x + 8, y + 17 + i * LINE_H, _fit(text, int((w - 16) / 7.3)), tcls)
        return h


def _drift_lines(items: list[dict[str, str]], width: float = BOX_W - 30) -> list[tuple[str, str]]:
    """Drift notes as box lines, wrapped to the box's width."""
    chars = int((width - 16) / 7.3)
    return [(line, "drift") for d in items for line in _words(f"! {d['what']} -> {d['fix']}", "", "  ", chars)]


def _port_lines(port: dict[str, Any], ctr: dict[str, Any] | None) -> list[tuple[str, str]]:
    lines = [(port["owner"], "name"), (f"{port['ifname']} {port['address']}", "t"), (port["mac"], "dim")]
    if ctr is not None:
        iface = next((i for i in ctr["interfaces"] if i["veth"] == port["veth"]), None)
        if ctr["namespace"]:
            lines.append((f"netns {ctr['namespace']}", "dim"))
        if iface and iface.get("gateway"):
            lines.append((f"default via {iface['gateway']}", "dim"))
        first = not iface or iface is ctr["interfaces"][0]
        lines += [(f"-p {p}", "t") for p in ctr["ports"] if first]
        if ctr["sharers"]:
            lines.append(("container: " + ", ".join(ctr["sharers"]), "t"))
        lines += _drift_lines((iface["drift"] if iface else []) + (ctr["drift"] if first else []))
    lines += _drift_lines(port["drift"])
    return lines


def _host_svg(svg: _Svg, model: dict[str, Any], x0: float, y0: float, label: str) -> tuple[float, float, float]:
    """One host at (x0, y0); returns (width, height, x of its uplink's centre)."""
    containers = _by_owner(model)
    columns: list[tuple[str, Any]] = [("net", n) for n in model["networks"]]
    hosted = [c for c in model["containers"] if c["mode"] == "host"]
    isolated = [c for c in model["containers"] if c["mode"] == "none"]
    if hosted:
        columns.append(("host", hosted))
    if isolated:
        columns.append(("none", isolated))
    width = max(1, len(columns)) * COL_W + PAD
    wide = max(1, len(columns)) * COL_W - 20
    extra = [*_drift_lines(model["firewall"]["drift"], wide), *[(f"(foreign) {n}", "foreign") for n in model["firewall"]["foreign"]]]
    extra += _drift_lines(model.get("stale", []), wide)
    top = 92 + LINE_H * len(extra)  # the title, the uplink, the notes
    inner = _Svg()  # the columns first, to know the host's height before its box is drawn under them
    bottom = y0 + top + 40
    for i, (kind, item) in enumerate(columns):
        cx, cy = x0 + PAD + i * COL_W, y0 + top + 4
        if kind == "net":
            bottom = max(bottom, _network_svg(inner, item, containers, cx, cy))
            continue
        title = "host network" if kind == "host" else "network none (lo only)"
        cy += inner.box(cx, cy, [(title, "name")], "bridge") + 20
        for c in item:
            lines = [(c["name"], "name"), (f"netns {c['namespace']}", "dim"), *_drift_lines(c["drift"], BOX_W)]
            cy += inner.box(cx, cy, lines, "drift" if c["drift"] else "ns") + 10
        bottom = max(bottom, cy)
    height = bottom - y0 + PAD
    svg.rect(x0, y0, width, height, "host", 10)
    svg.text(x0 + 12, y0 + 22, f"host {label or model['host']['name']} · table {model['firewall']['table']}", "title")
    for i, (text, cls) in enumerate(extra):
        svg.text(x0 + 12, y0 + 56 + i * LINE_H, text, cls)
    up = model["host"].get("uplink")
    up_x = x0 + width - 120  # at the right: the title is at the left
    if up:
        up_lines = [(f"{up['dev']} (uplink)", "name"), (" ".join(a for a in up["addresses"] if ":" not in a) or "no address", "t")]
    else:
        up_lines = [("no default route", "dim")]
    svg.box(up_x - 100, y0 + 26 - LINE_H * len(up_lines), up_lines, "uplink", 200)
    bus_y = y0 + top - 12
    if columns:
        last_col = x0 + PAD + (len(columns) - 1) * COL_W + BOX_W / 2
        svg.line(x0 + PAD + BOX_W / 2, bus_y, max(last_col, up_x), bus_y, "route")
        svg.line(up_x, y0 + 36, up_x, bus_y, "route")
        svg.text(up_x - 160, bus_y - 4, "routed (ip_forward=1)", "dim")
    for i in range(len(columns)):
        cx = x0 + PAD + i * COL_W
        svg.line(cx + BOX_W / 2, bus_y, cx + BOX_W / 2, y0 + top + 4, "route")
    svg.parts += inner.parts
    return width, height, up_x


def _network_svg(svg: _Svg, net: dict[str, Any], containers: dict[str, dict[str, Any]], x: float, y: float) -> float:
    """One network's column from (x, y) down; returns where it ends."""
    kind = f"overlay {net['name']}" if net.get("vxlan") else f"network {net['name']}"
    lines = [
        (f"{net['bridge']} {net['address']}", "name"),
        (kind + (" of " + net["cluster_subnet"] if net.get("cluster_subnet") else ""), "t"),
    ]
    lines.append((", ".join(net["flags"]) or "bridge", "dim"))
    lines += _drift_lines(net["drift"], BOX_W)
    h = svg.box(x, y, lines, "drift" if net["drift"] else "bridge")
    bus_x, bus_top = x + 14, y + h
    y += h + 16
    vx = net.get("vxlan")
    if vx:
        svg.line(x + BOX_W - 20, y - 16, x + BOX_W - 20, y, "route")
        vlines = [
            (f"VXLAN {vx['dev']}", "name"),
            (f"{vx.get('address', '')} VNI {vx['vni']}", "dim"),
            (f"{vx['local']}:{vx['port']}", "dim"),
        ]
        vlines += _drift_lines(vx["drift"])
        for p in vx["peers"]:
            vlines.append((f"-> {p['host'] or '?'}", "drift" if p["drift"] else "t"))
            vlines.append((f"   {p['subnet']}", "drift" if p["drift"] else "dim"))
            vlines += _drift_lines(p["drift"])
        if not vx["peers"]:
            vlines.append(("no remote hosts yet", "dim"))
        y += svg.box(x + 30, y, vlines, "drift" if vx["drift"] else "vxlan", BOX_W - 30) + 16
    last = bus_top
    for f in net["foreign"]:
        h = svg.box(x + 30, y, [(f["name"], "name"), (f"foreign {f['kind']}: not qiao's", "foreign")], "foreign", BOX_W - 30)
        svg.line(bus_x, y + h / 2, x + 30, y + h / 2, "foreign-wire")
        last = y + h / 2
        y += h + 16
    for p in net["ports"]:
        plines = _port_lines(p, containers.get(p["owner"]))
        h = 10 + LINE_H * len(plines)
        bad = bool(p["drift"]) or any(cls == "drift" for _t, cls in plines)
        svg.line(bus_x, y + 14, x + 30, y + 14, "drift-wire" if p["drift"] else "wire")
        svg.text(bus_x + 4, y + 10, p["veth"], "veth")
        svg.box(x + 30, y + 16, plines, "drift" if bad else "ns", BOX_W - 30)
        last = y + 14
        y += 16 + h + 16
    if last > bus_top:
        svg.line(bus_x, bus_top, bus_x, last, "wire")
    return y


STYLE = """<style>
  text { font-family: FONT; font-size: 12px; fill: #1d2733; }
  .title { font-size: 14px; font-weight: bold; }
  .name { font-weight: bold; }
  .dim { fill: #5b6b7a; }
  .veth { font-size: 10px; fill: #5b6b7a; }
  .drift { fill: #c62828; }
  text.drift { fill: #c62828; }
  .foreign { fill: #7a7a7a; }
  rect.host { fill: #f7f9fb; stroke: #8796a5; stroke-width: 1.5; }
  rect.uplink { fill: #fff3d6; stroke: #b8860b; }
  rect.bridge { fill: #dcecfb; stroke: #3b7dc4; }
  rect.vxlan { fill: #e8e0f7; stroke: #6a4fb3; }
  rect.ns { fill: #ffffff; stroke: #6f8193; }
  rect.drift { fill: #fdecea; stroke: #c62828; stroke-width: 2; }
  rect.foreign { fill: #f0f0f0; stroke: #9e9e9e; stroke-dasharray: 5 3; }
  rect.underlay { fill: #eef5e9; stroke: #4f8a3c; }
  line.wire { stroke: #3b7dc4; stroke-width: 2; }
  line.route { stroke: #b8860b; stroke-width: 1.5; stroke-dasharray: 6 3; }
  line.drift-wire { stroke: #c62828; stroke-width: 2; stroke-dasharray: 4 3; }
  line.foreign-wire { stroke: #9e9e9e; stroke-width: 1.5; stroke-dasharray: 5 3; }
  line.underlay { stroke: #4f8a3c; stroke-width: 2; }
</style>""".replace("FONT", FONT)


def topology_svg(view: dict[str, Any]) -> str:
    svg = _Svg()
    hosts = view["hosts"]
    underlay = view.get("underlay")
    y0 = 110 if underlay else 60
    x, heights, ups = 20.0, [], []
    for model in hosts:
        w, h, up_x = _host_svg(svg, model, x, y0, model.get("label", ""))
        heights.append(h)
        ups.append(up_x)
        x += w + 30
    width = max(x - 10, 400)
    if underlay:
        uy = 20
        svg.rect(20, uy, width - 40, 44, "underlay")
        svg.text(
            32, uy + 18, f"lab {underlay['lab']} · underlay {underlay['bridge']} {underlay['address']} ({underlay['namespace']})", "name"
        )
        svg.text(32, uy + 34, f"etcd {underlay['etcd']}: networks, one subnet lease per host, names; hosts meet over VXLAN here", "dim")
        for up_x in ups:
            svg.line(up_x, uy + 44, up_x, y0 - 4 - 10 - 2 * LINE_H + 36, "underlay")
    height = y0 + max(heights or [0]) + 20
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img">\n<title>qiao topology</title>\n{STYLE}\n'
        f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>\n'
    )
    return head + "\n".join(svg.parts) + "\n</svg>\n"


# -- DOT -------------------------------------------------------------------------


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def topology_dot(view: dict[str, Any]) -> str:
    nl = "\n"
    out = ["digraph qiao {", "  rankdir=TB;", '  node [shape=box, fontname="monospace", fontsize=10];', "  edge [dir=none];"]
    underlay = view.get("underlay")
    if underlay:
        text = f"{underlay['bridge']} {underlay['address']}\nunderlay, etcd {underlay['etcd']}"
        out.append(f'  underlay [label={_q(text)}, style=filled, fillcolor="#eef5e9"];')
    for hi, model in enumerate(view["hosts"]):
        h = f"h{hi}"
        label = model.get("label") or model["host"]["name"]
        containers = _by_owner(model)
        out.append(f"  subgraph cluster_{h} {{")
        out.append(f"    label={_q('host ' + label)};")
        up = model["host"].get("uplink")
        uplink = f"{h}/uplink"
        up_label = f"{up['dev']} (uplink)\n" + " ".join(up["addresses"]) if up else "no default route"
        out.append(f'    {_q(uplink)} [label={_q(up_label)}, style=filled, fillcolor="#fff3d6"];')
        if underlay:
            out.append(f"    underlay -> {_q(uplink)};")
        for net in model["networks"]:
            br = f"{h}/br/{net['bridge']}"
            bad = ", color=red, fontcolor=red" if net["drift"] else ""
            text = f"{net['bridge']} {net['address']}\nnetwork {net['name']}" + (f"\n{', '.join(net['flags'])}" if net["flags"] else "")
            text += "".join(f"\n! {d['what']}" for d in net["drift"])
            out.append(f'    {_q(br)} [label={_q(text)}, style=filled, fillcolor="#dcecfb"{bad}];')
            out.append(f'    {_q(uplink)} -> {_q(br)} [style=dashed, label="routed"];')
            vx = net.get("vxlan")
            if vx:
                v = f"{h}/vx/{vx['dev']}"
                text = f"VXLAN {vx['dev']} VNI {vx['vni']}" + "".join(f"\n-> {p['host']} {p['subnet']}" for p in vx["peers"])
                out.append(f'    {_q(v)} [label={_q(text)}, style=filled, fillcolor="#e8e0f7"];')
                out.append(f'    {_q(br)} -> {_q(v)} [style=dashed, label="routed"];')
            for f in net["foreign"]:
                fn = f"{h}/foreign/{net['bridge']}/{f['name']}"
                out.append(f"    {_q(fn)} [label={_q(f['name'] + nl + 'foreign ' + f['kind'])}, style=dashed, color=gray, fontcolor=gray];")
                out.append(f"    {_q(br)} -> {_q(fn)} [style=dashed, color=gray];")
            for p in net["ports"]:
                node = f"{h}/ctr/{p['owner']}/{p['ifname']}"
                ctr = containers.get(p["owner"])
                text = f"{p['owner']}\n{p['ifname']} {p['address']}\n{p['mac']}"
                if ctr is not None:
                    text += f"\nnetns {ctr['namespace']}" + "".join(f"\n-p {x}" for x in ctr["ports"])
                    if ctr["sharers"]:
                        text += "\ncontainer: " + ", ".join(ctr["sharers"])
                drift = p["drift"] + (ctr["drift"] if ctr else [])
                text += "".join(f"\n! {d['what']}" for d in drift)
                bad = ", color=red, fontcolor=red" if drift else ""
                out.append(f"    {_q(node)} [label={_q(text)}{bad}];")
                out.append(f"    {_q(br)} -> {_q(node)} [label={_q(p['veth'])}{bad}];")
        for c in model["containers"]:
            if c["mode"] in ("host", "none"):
                node = f"{h}/ctr/{c['name']}"
                where = "host network" if c["mode"] == "host" else "network none"
                out.append(f"    {_q(node)} [label={_q(c['name'] + nl + where)}];")
                if c["mode"] == "host":
                    out.append(f"    {_q(uplink)} -> {_q(node)} [style=dotted];")
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


# -- trace -----------------------------------------------------------------------


def trace_text(result: dict[str, Any], color: bool = False) -> str:
    dst = result["destination"]
    port = f":{dst['port']}/{dst['protocol']}" if dst["protocol"] != "icmp" else " (ICMP echo)"
    lines = [_fit(f"trace {result['source']['label']} -> {dst['label']}: {dst['address']}{port}", WIDTH)]
    hops = result["hops"]
    width = min(12, max([len(h["at"]) for h in hops] + [4]))
    for hop in hops:
        at = _fit(hop["at"], width).ljust(width)
        indent = "    " if hop["kind"] in ("rule", "route", "nat") else ""
        text = hop["text"]
        if hop.get("verdict"):
            text += f"  => {hop['verdict'].upper() if hop['verdict'] in ('drop', 'accept') else hop['verdict']}"
        if hop.get("comment"):
            text += f'  ("{hop["comment"]}")'
        if hop.get("rule"):
            text += f"  [{hop['rule']}]"
        first, rest = f"  {at}  {indent}", "  " + " " * width + "  " + indent + "  "
        red = color and hop.get("verdict") == "drop"
        for line in _wrap(text.split(" "), first, rest, sep=" "):
            lines.append((RED + line + RESET) if red else line)
    res = result["result"]
    status = res["status"] + (f": {res['reason']}" if res.get("reason") else "")
    head = f"result: {status}"
    lines.append((RED + head + RESET) if color and res["status"] not in ("delivered",) else head)
    lines += _wrap(res.get("detail", "").split(" "), "  ", "  ", sep=" ")
    also = res.get("by_address")
    if also:
        lines += _wrap(
            f"by address: {also['status']}{': ' + also['reason'] if also.get('reason') else ''} ({also.get('detail', '')})".split(" "),
            "  ",
            "  ",
            sep=" ",
        )
    lines.append(f"({result.get('elapsed_ms', 0):.0f} ms)")
    return "\n".join(lines) + "\n"
