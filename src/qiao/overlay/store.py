"""The cluster store: etcd's v3 API through its JSON gateway (etcd3gw, a
maintained pure-HTTP client), with flannel's key layout under a qiao prefix::

    /qiao/overlay/<network>/config                 {"Network", "SubnetLen", "Backend": {"Type": "vxlan", "VNI", "Port"}, "Id", ...}
    /qiao/overlay/<network>/subnets/<a.b.c.d>-<len> {"PublicIP", "BackendType": "vxlan", "BackendData": {"VNI", "VtepMAC"}}  (leased)
    /qiao/overlay/<network>/names/<endpoint id>     {"Container", "Name", "Aliases", "IPv4"}                              (leased)
    /qiao/vni/<vni>                                  <network id>   (VNI reservations)

Leased keys belong to one etcd lease per daemon, kept alive by the daemon;
a crashed host's keys vanish when it expires, a leaving host revokes it.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

PREFIX = "/qiao/overlay/"
VNI_PREFIX = "/qiao/vni/"


def parse_url(url: str) -> tuple[str, int]:
    """``etcd://host:2379`` (or http://) -> (host, port)."""
    parts = urllib.parse.urlsplit(url if "://" in url else "etcd://" + url)
    if parts.scheme not in ("etcd", "http") or not parts.hostname:
        raise ValueError(f"invalid cluster store {url!r}: expected etcd://HOST:PORT")
    return parts.hostname, parts.port or 2379


def subnet_key(network: str, subnet: str) -> str:
    return f"{PREFIX}{network}/subnets/{subnet.replace('/', '-')}"


def key_subnet(key: str) -> str:
    return key.rsplit("/", 1)[1].replace("-", "/")


class ClusterStore:
    def __init__(self, url: str, timeout: float = 3.0):
        import etcd3gw  # daemon only

        host, port = parse_url(url)
        self.client = etcd3gw.client(host=host, port=port, timeout=timeout)

    def dump(self) -> dict[str, dict[str, Any]]:
        """Every overlay key, decoded: network -> {"config": {...}, "subnets": {subnet: {...}}, "names": {id: {...}}}."""
        out: dict[str, dict[str, Any]] = {}
        for value, meta in self.client.get_prefix(PREFIX):
            key = meta["key"].decode() if isinstance(meta["key"], bytes) else meta["key"]
            parts = key[len(PREFIX) :].split("/")
            net = out.setdefault(parts[0], {"config": None, "subnets": {}, "names": {}})
            data = json.loads(value)
            if parts[1] == "config":
                net["config"] = data
            elif parts[1] == "subnets":
                net["subnets"][key_subnet(key)] = data
            elif parts[1] == "names":
                net["names"][parts[2]] = data
        return out

    def create(self, key: str, value: Any, lease: Any = None) -> bool:
        """Put only if absent (one etcd transaction: never read-then-write)."""
        return bool(self.client.create(key, json.dumps(value, sort_keys=True), lease=lease))

    def put(self, key: str, value: Any, lease: Any = None) -> None:
        self.client.put(key, json.dumps(value, sort_keys=True), lease=lease)

    def replace_if(self, key: str, expected: Any, value: Any, lease: Any = None) -> bool:
        """Put ``value`` only if the key still holds ``expected`` (compare-and-swap)."""
        import base64

        def enc(text: str) -> str:
            return base64.b64encode(text.encode()).decode()

        put: dict[str, Any] = {"key": enc(key), "value": enc(json.dumps(value, sort_keys=True))}
        if lease is not None:
            put["lease"] = lease.id
        txn = {
            "compare": [{"key": enc(key), "result": "EQUAL", "target": "VALUE", "value": enc(json.dumps(expected, sort_keys=True))}],
            "success": [{"request_put": put}],
            "failure": [],
        }
        return bool(self.client.transaction(txn).get("succeeded"))

    def delete(self, key: str) -> None:
        self.client.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        self.client.delete_prefix(prefix)

    def lease(self, ttl: int) -> Any:
        return self.client.lease(ttl)

    def watch(self) -> tuple[Any, Any]:
        return self.client.watch_prefix(PREFIX)
