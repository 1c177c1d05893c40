"""Identifiers and names in Docker's forms."""

from __future__ import annotations

import ipaddress
import re
import secrets

from qiao.engine.errors import InvalidParameter

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,252}\Z")  # \Z: "$" would accept a trailing newline
# A DNS name (aliases, link aliases): labels of letters, digits and '-', 1-63 long.
DNS_NAME_RE = re.compile(r"^(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")
MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")
# An interface name qiao accepts: at most 15 bytes of a safe alphabet (the
# kernel allows more, but these names also appear quoted in nft rules).
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")


def new_id() -> str:
    """64 hex digits, as Docker's container, network and endpoint ids."""
    return secrets.token_hex(32)


def veth_name() -> str:
    """Host end of a veth pair: ``veth`` + 7 hex (NetworkManager ignores ``veth*``)."""
    return "veth" + secrets.token_hex(4)[:7]


def mac_from_ipv4(address: str) -> str:
    """``02:42`` followed by the four bytes of the IPv4 address (the seed's form)."""
    raw = ipaddress.IPv4Address(address).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in raw)


def valid_ifname(name: str) -> bool:
    return bool(IFNAME_RE.match(name)) and name not in (".", "..")


def check_mac(mac: str) -> None:
    """A MAC an interface can have: six bytes, unicast, not all zero."""
    if not MAC_RE.match(mac):
        raise InvalidParameter(f"invalid MAC address {mac!r}")
    first = int(mac[:2], 16)
    if first & 1:
        raise InvalidParameter(f"invalid MAC address {mac}: a multicast address (the first byte is odd)")
    if int(mac.replace(":", ""), 16) == 0:
        raise InvalidParameter(f"invalid MAC address {mac}: all zero")
