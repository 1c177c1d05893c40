"""A rule of a libnftables JSON listing, written back as nft text.

``qiao trace`` names the rule that gave each verdict.  The kernel's trace
event carries only the rule's handle; the listing (JSON, with handles) has
its expressions, and this renders them the way ``nft list`` would show the
rule, for the usual statements (matches, verdicts, verdict maps, NAT,
counters).  Anything else is shown by its statement name, never dropped.
"""

from __future__ import annotations

from typing import Any

UNQUALIFIED_META = {"iifname", "oifname", "iif", "oif", "mark", "nftrace", "iiftype", "oiftype"}
IFNAME_KEYS = {"iifname", "oifname"}


def _value(v: Any, quote: bool = False) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return f'"{v}"' if quote and not v.startswith("@") else v
    if isinstance(v, list):
        return ",".join(_value(x, quote) for x in v)
    if not isinstance(v, dict) or len(v) != 1:
        return str(v)
    ((kind, body),) = v.items()
    if kind == "meta":
        key = body.get("key", "")
        return key if key in UNQUALIFIED_META else f"meta {key}"
    if kind == "payload":
        if "protocol" in body:
            return f"{body['protocol']} {body['field']}"
        return f"@{body.get('base')},{body.get('offset')},{body.get('len')}"
    if kind == "ct":
        direction = f" {body['dir']}" if body.get("dir") else ""
        return f"ct{direction} {body.get('key', '')}"
    if kind == "fib":
        flags = body.get("flags", [])
        return f"fib {' . '.join(flags if isinstance(flags, list) else [flags])} {body.get('result', '')}"
    if kind == "concat":
        return " . ".join(_value(x, quote) for x in body)
    if kind == "prefix":
        return f"{body['addr']}/{body['len']}"
    if kind == "range":
        return f"{_value(body[0])}-{_value(body[1])}"
    if kind == "set":
        items = body if isinstance(body, list) else [body]
        return "{ " + ", ".join(_value(x, quote) for x in items) + " }"
    if kind == "map":
        return f"{_value(body['key'])} map {_value(body['data'])}"
    if kind in ("&", "|", "^", "<<", ">>"):
        return f"{_value(body[0])} {kind} {_value(body[1])}"
    return kind


def _statement(stmt: Any) -> str:
    if not isinstance(stmt, dict) or len(stmt) != 1:
        return str(stmt)
    ((kind, body),) = stmt.items()
    if kind == "match":
        left = body.get("left")
        quote = isinstance(left, dict) and "meta" in left and left["meta"].get("key") in IFNAME_KEYS
        op = body.get("op", "==")
        middle = " " if op in ("==", "in") else f" {op} "
        return f"{_value(left)}{middle}{_value(body.get('right'), quote)}"
    if kind in ("accept", "drop", "continue", "return", "masquerade", "notrack", "counter", "log", "reject", "limit", "queue"):
        return kind
    if kind in ("jump", "goto"):
        return f"{kind} {body.get('target', '')}"
    if kind == "vmap":
        return f"{_value(body['key'])} vmap {_value(body['data'])}"
    if kind in ("dnat", "snat"):
        family = f" {body['family']}" if body.get("family") else ""
        port = f":{_value(body['port'])}" if body.get("port") is not None else ""
        return f"{kind}{family} to {_value(body.get('addr'))}{port}"
    if kind == "mangle":
        return f"{_value(body.get('key'))} set {_value(body.get('value'))}"
    return kind


def rule_text(expr: list[Any]) -> str:
    """The rule's statements as nft would list them."""
    return " ".join(_statement(s) for s in expr)
