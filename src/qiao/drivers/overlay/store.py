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

import base64
import contextlib
import json
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

PREFIX = "/qiao/overlay/"
VNI_PREFIX = "/qiao/vni/"


def parse_url(url: str) -> tuple[str, int]:
    """``etcd://host:2379`` (or http://) -> (host, port)."""
    parts = urllib.parse.urlsplit(url if "://" in url else "etcd://" + url)
    if parts.scheme not in ("etcd", "http") or not parts.hostname:
        raise ValueError(f"invalid cluster store {url!r}: expected etcd://HOST:PORT")
    return parts.hostname, parts.port or 2379


def _enc(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _dec(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class Compacted(Exception):
    """The watch's start revision was compacted away: read everything again."""


def parse_key(key: str) -> tuple[str, str, str]:
    """``/qiao/overlay/NET/KIND[/NAME]`` -> (network, kind, name): kind is config, subnets or names."""
    parts = key[len(PREFIX) :].split("/")
    network, kind = parts[0], parts[1] if len(parts) > 1 else ""
    if kind == "subnets":
        return network, kind, key_subnet(key)
    return network, kind, parts[2] if len(parts) > 2 else ""


def subnet_key(network: str, subnet: str) -> str:
    return f"{PREFIX}{network}/subnets/{subnet.replace('/', '-')}"


def key_subnet(key: str) -> str:
    return key.rsplit("/", 1)[1].replace("-", "/")


class ClusterStore:
    def __init__(self, url: str, timeout: float = 3.0):
        import etcd3gw  # daemon only

        host, port = parse_url(url)
        self.url = f"etcd://{host}:{port}"
        self.timeout = timeout
        self.client = etcd3gw.client(host=host, port=port, timeout=timeout)
        self.reads = 0  # range requests made: full reads only (a watch event costs none)

    def read_all(self) -> tuple[int, list[tuple[str, Any]]]:
        """Every overlay key and value, and the store's revision they were read at."""
        self.reads += 1
        resp = self.client.post(self.client.get_url("/kv/range"), json={"key": _enc(PREFIX), "range_end": _enc(_prefix_end(PREFIX))})
        kvs = [(_dec(kv["key"]), json.loads(_dec(kv.get("value", "")) or "null")) for kv in resp.get("kvs", [])]
        return int(resp["header"]["revision"]), kvs

    def dump(self) -> dict[str, dict[str, Any]]:
        """Every overlay key, decoded: network -> {"config": {...}, "subnets": {subnet: {...}}, "names": {id: {...}}}."""
        out: dict[str, dict[str, Any]] = {}
        for key, data in self.read_all()[1]:
            network, kind, name = parse_key(key)
            net = out.setdefault(network, {"config": None, "subnets": {}, "names": {}})
            if kind == "config":
                net["config"] = data
            elif kind in ("subnets", "names"):
                net[kind][name] = data
        return out

    def watch(self, start_revision: int) -> tuple[Iterator[tuple[str, Any, int]], Callable[[], None]]:
        """Changes under the prefix from ``start_revision`` on, one key at a time:
        (key, value or None when deleted, revision).  The iterator ends when the
        stream does (etcd gone, or ``cancel()``); :class:`Compacted` when the
        revision is no longer kept.  No read timeout: an idle watch is normal."""
        watch = {"key": _enc(PREFIX), "range_end": _enc(_prefix_end(PREFIX)), "start_revision": start_revision}
        body: dict[str, Any] = {"create_request": watch}
        resp = self.client.session.post(self.client.get_url("/watch"), json=body, stream=True, timeout=(self.timeout, None))
        closed = threading.Event()

        def cancel() -> None:
            """Shut the connection down under the reading thread (closing the
            response would wait for that thread's read to end)."""
            closed.set()
            with contextlib.suppress(OSError, AttributeError, ValueError):
                conn = socket.socket(fileno=os.dup(resp.raw._fp.fileno()))
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()

        def events() -> Iterator[tuple[str, Any, int]]:
            try:
                for line in resp.iter_lines():
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result", {})
                    if int(result.get("compact_revision", 0) or 0):
                        raise Compacted(f"revision {start_revision} compacted (now {result['compact_revision']})")
                    for ev in result.get("events", []):
                        kv = ev["kv"]
                        value = None if ev.get("type") == "DELETE" else json.loads(_dec(kv.get("value", "")) or "null")
                        yield _dec(kv["key"]), value, int(kv.get("mod_revision", 0))
            except Exception:
                if not closed.is_set():
                    raise
            finally:
                resp.close()

        return events(), cancel

    def create(self, key: str, value: Any, lease: Any = None) -> bool:
        """Put only if absent (one etcd transaction: never read-then-write)."""
        return bool(self.client.create(key, json.dumps(value, sort_keys=True), lease=lease))

    def put(self, key: str, value: Any, lease: Any = None) -> None:
        self.client.put(key, json.dumps(value, sort_keys=True), lease=lease)

    def replace_if(self, key: str, expected: Any, value: Any, lease: Any = None) -> bool:
        """Put ``value`` only if the key still holds ``expected`` (compare-and-swap)."""
        put: dict[str, Any] = {"key": _enc(key), "value": _enc(json.dumps(value, sort_keys=True))}
        if lease is not None:
            put["lease"] = lease.id
        txn = {
            "compare": [{"key": _enc(key), "result": "EQUAL", "target": "VALUE", "value": _enc(json.dumps(expected, sort_keys=True))}],
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


class DryClusterStore(ClusterStore):
    """The cluster store of a dry run (``qiao explain``): nothing is sent to
    etcd.  Each write is recorded (``record(port, method, **args)``); a create
    succeeds unless its key is one known to exist (``existing``)."""

    def __init__(self, url: str, record: Callable[..., None], existing: set[str]):  # no client: nothing to talk to
        self.url, self.reads = url, 0
        self._record, self._existing = record, existing

    def create(self, key: str, value: Any, lease: Any = None) -> bool:
        if key in self._existing:
            return False
        self._existing.add(key)
        self._record("cluster", "create", key=key, value=value)
        return True

    def put(self, key: str, value: Any, lease: Any = None) -> None:
        self._record("cluster", "put", key=key, value=value)

    def replace_if(self, key: str, expected: Any, value: Any, lease: Any = None) -> bool:
        self._record("cluster", "replace_if", key=key, value=value)
        return True

    def delete(self, key: str) -> None:
        self._record("cluster", "delete", key=key)

    def delete_prefix(self, prefix: str) -> None:
        self._record("cluster", "delete_prefix", key=prefix)

    def lease(self, ttl: int) -> Any:
        self._record("cluster", "lease", ttl=ttl)
        return _DryLease()


class _DryLease:
    id = 0

    def refresh(self) -> int:
        return 1

    def revoke(self) -> None:
        pass
