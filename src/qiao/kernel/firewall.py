"""The firewall port: qiao's own nftables table, changed one atomic
libnftables JSON transaction at a time.

Layout (``table inet qiao``), after moby's nftables design: base chains only
dispatch, through verdict maps keyed by bridge name, to small per-network
chains, so a packet costs two map lookups however many networks exist, and
adding or removing a network touches nothing else::

    chain forward     { type filter hook forward priority filter; oifname vmap @fwd_in }
    chain postrouting { type nat hook postrouting priority srcnat; iifname vmap @nat_out }
    chain fwd-in-<br> { ct state established,related accept; iifname <br> accept; drop }
    chain nat-out-<br>{ oifname != <br> ip saddr <subnet> masquerade }

Nothing outside this table is touched; policies stay ``accept``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

TABLE = "qiao"
FAMILY = "inet"


@dataclass(frozen=True)
class BridgeRules:
    """What the firewall needs to know of one bridge network."""

    bridge: str
    subnet: str  # CIDR
    masquerade: bool = True


class Firewall(Protocol):
    def reset(self, networks: list[BridgeRules]) -> None: ...
    def add_network(self, net: BridgeRules) -> None: ...
    def del_network(self, net: BridgeRules) -> None: ...


def _obj(kind: str, **fields: Any) -> dict[str, Any]:
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _base_objects() -> list[dict[str, Any]]:
    return [
        {"table": {"family": FAMILY, "name": TABLE}},
        _obj("map", name="fwd_in", type="ifname", map="verdict"),
        _obj("map", name="nat_out", type="ifname", map="verdict"),
        _obj("chain", name="forward", type="filter", hook="forward", prio=0, policy="accept"),
        _obj("chain", name="postrouting", type="nat", hook="postrouting", prio=100, policy="accept"),
        _obj("rule", chain="forward", expr=[{"vmap": {"key": _meta("oifname"), "data": "@fwd_in"}}]),
        _obj("rule", chain="postrouting", expr=[{"vmap": {"key": _meta("iifname"), "data": "@nat_out"}}]),
    ]


def _network_objects(net: BridgeRules) -> list[dict[str, Any]]:
    fwd, nat = f"fwd-in-{net.bridge}", f"nat-out-{net.bridge}"
    addr, length = net.subnet.split("/")
    objs = [
        _obj("chain", name=fwd),
        _obj("rule", chain=fwd, expr=[_match({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None}]),
        _obj("rule", chain=fwd, expr=[_match(_meta("iifname"), net.bridge), {"accept": None}]),
        _obj("rule", chain=fwd, expr=[{"drop": None}]),
        _obj("element", name="fwd_in", elem=[[net.bridge, {"jump": {"target": fwd}}]]),
        _obj("chain", name=nat),
    ]
    if net.masquerade:
        objs.append(
            _obj(
                "rule",
                chain=nat,
                expr=[
                    _match(_meta("oifname"), net.bridge, "!="),
                    _match({"payload": {"protocol": "ip", "field": "saddr"}}, {"prefix": {"addr": addr, "len": int(length)}}),
                    {"masquerade": None},
                ],
            )
        )
    objs.append(_obj("element", name="nat_out", elem=[[net.bridge, {"jump": {"target": nat}}]]))
    return objs


class NftFirewall:
    def __init__(self) -> None:
        import nftables  # libnftables binding (Debian's python3-nftables, from PyPI as pip-nftables)

        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)

    def _apply(self, commands: list[dict[str, Any]]) -> None:
        rc, _out, err = self._nft.json_cmd({"nftables": commands})
        if rc != 0:
            raise RuntimeError(f"nftables: {err.strip() or 'transaction failed'}")

    def reset(self, networks: list[BridgeRules]) -> None:
        """Replace the whole table from intent in one transaction (no gap)."""
        table = {"table": {"family": FAMILY, "name": TABLE}}
        cmds: list[dict[str, Any]] = [{"add": table}, {"delete": table}]
        cmds += [{"add": o} for o in _base_objects()]
        for net in networks:
            cmds += [{"add": o} for o in _network_objects(net)]
        self._apply(cmds)

    def add_network(self, net: BridgeRules) -> None:
        self._apply([{"add": o} for o in _network_objects(net)])

    def del_network(self, net: BridgeRules) -> None:
        fwd, nat = f"fwd-in-{net.bridge}", f"nat-out-{net.bridge}"
        self._apply(
            [
                {"delete": _obj("element", name="fwd_in", elem=[net.bridge])},
                {"delete": _obj("element", name="nat_out", elem=[net.bridge])},
                {"flush": _obj("chain", name=fwd)},
                {"delete": _obj("chain", name=fwd)},
                {"flush": _obj("chain", name=nat)},
                {"delete": _obj("chain", name=nat)},
            ]
        )

    def dump(self) -> str:
        _rc, out, _err = self._nft.cmd(f"list table {FAMILY} {TABLE}")
        return json.dumps(json.loads(out or "{}"))


class StubFirewall:
    def __init__(self) -> None:
        self.networks: dict[str, BridgeRules] = {}
        self.resets = 0

    def reset(self, networks: list[BridgeRules]) -> None:
        self.resets += 1
        self.networks = {n.bridge: n for n in networks}

    def add_network(self, net: BridgeRules) -> None:
        self.networks[net.bridge] = net

    def del_network(self, net: BridgeRules) -> None:
        self.networks.pop(net.bridge, None)
