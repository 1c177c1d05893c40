"""``qiao lab trace HOST SRC DST[:PORT][/tcp|udp]``: one probe across a lab's
hosts, traced on the host that sends it and on the host it reaches.

``qiao trace`` sees one host's part of a path: the kernel clears a packet's
trace mark when it changes namespace, so on host1 a probe to a container on
host2 ends at the VXLAN device.  The lab knows every host and its qiaod, so
it has both hosts trace the same probe and joins the two halves:

1. the receiving host is the one that has DST (a container's name, id or
   address, or a lab host's name or address: a published port there);
2. its qiaod arms a watch for the probe's 5-tuple (``POST
   /qiao/trace/watch``, a conversation on the connection it hands over, see
   :mod:`qiao.daemon.observe_api`), the lab having chosen the probe's
   source port (or echo id);
3. HOST's qiaod sends the probe with that source port and traces its part
   (``POST /qiao/trace``);
4. the lab tells the watch how the sender's socket ended, and the receiving
   host reads its part and the result (delivered, dropped by which of its
   rules, no listener) with what it knows of DST;
5. the path: the sender's hops, the underlay between the two hosts (the
   VXLAN encapsulation to the other host's address), the receiver's hops,
   and the receiver's result (the sender's, when the probe never got there).

Closing the connection ends the watch: done, interrupted or killed, the
receiving host removes its marking tables at once.  ``outside`` (the
underlay, the same for every host) is traced by the host that has DST, and
a DST on HOST itself is a plain ``qiao trace``.  Standard library only.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from qiao.cli.client import Client, DaemonError
from qiao.paths import Root

_DST = re.compile(r"^(?P<name>[^:/]+)(?P<rest>(?::[0-9]*)?(?:/[a-z]*)?)$")
NO_NAME = "name not found by the resolver"  # qiao.observe.verdicts.NO_NAME (not imported: the daemon's side)


class LabTraceError(Exception):
    """A lab trace that cannot be made: one line for the user."""


def _client(host: dict[str, Any]) -> Client:
    return Client(Root.resolve(host["root"]), autostart=False)


def _is_address(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _addresses(info: dict[str, Any]) -> list[str]:
    networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
    return [n["IPAddress"] for n in networks.values() if n.get("IPAddress")]


def _holders(hosts: list[dict[str, Any]], name: str) -> list[tuple[dict[str, Any], list[str]]]:
    """The hosts with a container ``name`` (by name first, else by id or id prefix), and its addresses."""
    exact: list[tuple[dict[str, Any], list[str]]] = []
    by_id: list[tuple[dict[str, Any], list[str]]] = []
    for h in hosts:
        try:
            info = _client(h).request("GET", f"/containers/{name}/json")
        except DaemonError:
            continue
        (exact if info.get("Name", "").lstrip("/") == name else by_id).append((h, _addresses(info)))
    return exact or by_id


def _owner_of_address(hosts: list[dict[str, Any]], address: str) -> dict[str, Any] | None:
    for h in hosts:
        if h["address"] == address:
            return h
    for h in hosts:
        for row in _client(h).request("GET", "/containers/json"):
            if address in _addresses(row):
                return h
    return None


@dataclass
class Target:
    """Where the probe goes: the receiving host (None: the sender's part is all
    there is), DST as the sender's trace and the receiver's watch are given it,
    and the container's addresses when DST is one on another host."""

    receiver: dict[str, Any] | None
    destination: str
    label: str
    addresses: list[str] = field(default_factory=list)


def target(lab: Any, sender: dict[str, Any], destination: str) -> Target:
    m = _DST.match(destination)
    if not m:  # the sender's qiaod names what is wrong with it
        return Target(None, destination, destination)
    name, rest = m["name"], m["rest"]
    hosts = lab.state["hosts"]

    def other(h: dict[str, Any] | None) -> dict[str, Any] | None:
        return h if h is not None and h["name"] != sender["name"] else None

    named_host = next((h for h in hosts if h["name"] == name), None)
    if named_host is not None:  # a lab host: its underlay address (published ports)
        return Target(other(named_host), named_host["address"] + rest, name)
    if _is_address(name):
        return Target(other(_owner_of_address(hosts, name)), destination, name)
    holders = _holders(hosts, name)
    if not holders or any(h["name"] == sender["name"] for h, _a in holders):
        return Target(None, destination, name)
    if len(holders) > 1:
        where = ", ".join(f"{h['name']} ({', '.join(a) or 'no address'})" for h, a in holders)
        raise LabTraceError(f"{name} is a container on {where}: trace to its address")
    return Target(holders[0][0], destination, name, holders[0][1])


def _relabel(hops: list[dict[str, Any]], host: str) -> list[dict[str, Any]]:
    return [hop | {"at": host} if hop["at"] == "host" else hop for hop in hops]


def _named(label: str, host: str) -> str:
    """A container (or address) named with its host: "a on host1"; the host itself: "host1"."""
    return host if label in ("host", host) else f"{label} on {host}"


def _end(end: dict[str, Any], host: str) -> dict[str, Any]:
    """An end of the path as the sender's qiaod gave it, with its host (outside
    and an address elsewhere are on no host)."""
    label = end["label"] if end["kind"] in ("outside", "address") else _named(end["label"], host)
    return end | {"label": label, "host": host}


def _underlay(sender: dict[str, Any], receiver: dict[str, Any], hops: list[dict[str, Any]]) -> dict[str, Any]:
    tunnel = next((h["tunnel"] for h in reversed(hops) if h.get("tunnel")), None)
    path = f"{sender['address']} ({sender['name']}) -> {receiver['address']} ({receiver['name']}) across bridge ul0"
    text = f"{path}: the packet inside VXLAN ({tunnel['dev']}, UDP)" if tunnel else f"{path}: routed as it is"
    return {"at": "underlay", "kind": "hop", "text": text}


def trace(lab: Any, host: str, source: str, destination: str) -> dict[str, Any]:
    """The joined trace (the shape of ``POST /qiao/trace``'s answer, each hop's
    ``at`` naming the host or container, the ends carrying their hosts)."""
    started = time.monotonic()
    sender = lab.host(host)
    aim = target(lab, sender, destination)
    if source == "outside" and aim.receiver is not None:  # the underlay: every host's outside
        sender, aim = aim.receiver, Target(None, aim.destination, aim.label)
    receiver = aim.receiver
    if receiver is None:
        sent = _client(sender).request("POST", "/qiao/trace", body={"Source": source, "Destination": aim.destination})
        return sent | {
            "source": _end(sent["source"], sender["name"]),
            "destination": _end(sent["destination"], sender["name"]),
            "hops": _relabel(sent["hops"], sender["name"]),
        }
    probe_id = 32768 + secrets.randbelow(28000)
    watch = {"Destination": aim.destination, "SourcePort": probe_id, "Source": _named(source, sender["name"])}
    with _client(receiver).converse("/qiao/trace/watch", watch) as conversation:
        conversation.receive()  # armed
        try:
            sent = _client(sender).request(
                "POST", "/qiao/trace", body={"Source": source, "Destination": aim.destination, "SourcePort": probe_id}
            )
        except DaemonError as exc:
            if exc.status == 404 and aim.addresses:
                raise LabTraceError(
                    f"{sender['name']}: {exc} ({aim.label} is on {receiver['name']} at {', '.join(aim.addresses)}: trace to its address)"
                ) from None
            raise
        conversation.send({"Outcome": sent["socket"]["outcome"], "Detail": sent["socket"]["detail"]})
        seen = conversation.receive()
    hops = _relabel(sent["hops"], sender["name"])
    result = sent["result"]
    if seen["seen"]:
        hops += [_underlay(sender, receiver, hops), *_relabel(seen["hops"], receiver["name"])]
        # by name it fails at the sender (its resolver); by address, this is what happens
        result = result | {"by_address": seen["result"]} if result.get("reason") == NO_NAME else seen["result"]
    elif any(h["kind"] == "out" and h["at"] == sender["name"] for h in hops):  # it left the sender: lost on the way
        hops.append({"at": receiver["name"], "kind": "info", "text": "saw nothing of the probe"})
    return sent | {
        "source": _end(sent["source"], sender["name"]),
        "destination": sent["destination"] | {"label": _named(aim.label, receiver["name"]), "host": receiver["name"]},
        "hops": hops,
        "result": result,
        "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
    }
