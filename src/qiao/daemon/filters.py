"""Docker's ``filters`` query parameter: parsed, checked and matched as
dockerd does (moby ``api/types/filters``), for every list, prune and
event route.

Wire format: a JSON object of key -> set of values, written
``{"label": {"a=b": true}}`` (API >= 1.22) or, legacy, ``{"label": ["a=b"]}``.
A key a route does not take is a 400 naming it (``invalid filter 'key'``);
so is a value it cannot read.  Matching follows moby's ``Args``:

* ``match``: a value equal to the source, or a regular expression found in it
  (unanchored: ``name=web`` matches ``myweb1``, as in Docker);
* ``exact``: one of the values, exactly;
* ``fuzzy``: one of the values, exactly or as a prefix (ids);
* ``match_kv``: every ``KEY`` or ``KEY=VALUE`` holds in a label map.

Also the timestamps Docker's clients send (``since``, ``until``): a Unix time
``S[.NNNNNNNNN]``, and for prune filters a Go duration (``10m``) or an RFC
3339 date as well, as moby's ``GetTimestamp`` reads them.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import msgspec

from qiao.engine.errors import InvalidParameter
from qiao.units import go_duration

# The keys each route takes (moby's accepted filter tags, per route).
CONTAINER_LIST_KEYS = frozenset(
    {"ancestor", "before", "exited", "expose", "health", "id", "isolation", "is-task", "label", "name", "network", "publish", "since"}
    | {"status", "volume"}
)
NETWORK_LIST_KEYS = frozenset({"dangling", "driver", "id", "label", "name", "scope", "type"})
PRUNE_KEYS = frozenset({"label", "label!", "until"})  # containers/prune and networks/prune alike
EVENT_KEYS = frozenset(
    {"config", "container", "daemon", "event", "image", "label", "network", "node", "plugin", "scope", "secret", "service", "type"}
    | {"volume"}
)


def _values(raw: object) -> set[str] | None:
    """One key's values in either wire form; None when the form is neither."""
    if isinstance(raw, dict) and all(isinstance(v, bool) for v in raw.values()):
        return {k for k, on in raw.items() if on}
    if isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        return set(raw)
    return None


@dataclass(frozen=True)
class Filters:
    """A parsed ``filters`` parameter: key -> set of values."""

    fields: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None, accepted: Iterable[str]) -> Filters:
        """The ``filters`` query parameter, every key checked against ``accepted``."""
        if not text:
            return cls()
        try:
            data = msgspec.json.decode(text.encode())
        except (msgspec.DecodeError, ValueError, RecursionError):
            raise InvalidParameter("invalid filter: the filters parameter is not valid JSON") from None
        if not isinstance(data, dict):
            raise InvalidParameter("invalid filter: the filters parameter must be a JSON object")
        fields: dict[str, frozenset[str]] = {}
        allowed = frozenset(accepted)
        for key, raw in data.items():
            values = _values(raw)
            if values is None:
                raise InvalidParameter(f'invalid filter \'{key}\': expected {{"VALUE": true, ...}} or ["VALUE", ...]')
            if key not in allowed:
                raise InvalidParameter(f"invalid filter '{key}'")
            fields[key] = frozenset(values)
        return cls(fields)

    def __bool__(self) -> bool:
        return bool(self.fields)

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str) -> frozenset[str]:
        return self.fields.get(key, frozenset())

    def exact(self, key: str, source: str) -> bool:
        values = self.get(key)
        return not values or source in values

    def match(self, key: str, source: str) -> bool:
        """Exactly, or as a regular expression searched in ``source`` (a bad one never matches)."""
        if self.exact(key, source):
            return True
        for pattern in self.get(key):
            try:
                if re.search(pattern, source):
                    return True
            except re.error:
                continue
        return False

    def fuzzy(self, key: str, source: str) -> bool:
        """Exactly, or as a prefix of ``source``."""
        return self.exact(key, source) or any(source.startswith(v) for v in self.get(key))

    def match_kv(self, key: str, labels: Mapping[str, str]) -> bool:
        """Every ``K`` (present) or ``K=V`` (equal) of ``key`` holds in ``labels``; true without values."""
        values = self.get(key)
        if not values:
            return True
        for value in values:
            name, eq, want = value.partition("=")
            if name not in labels or (eq and labels[name] != want):
                return False
        return True

    def boolean(self, key: str) -> bool | None:
        """A true/false filter (``dangling``): None when absent; one value of 1, true, 0 or false."""
        values = self.get(key)
        if key not in self.fields:
            return None
        if len(values) != 1:
            raise InvalidParameter(f'got more than one value for filter key "{key}"')
        value = next(iter(values))
        if value in ("1", "true"):
            return True
        if value in ("0", "false"):
            return False
        raise InvalidParameter(f'invalid value for filter \'{key}\', must be "true" (or "1"), or "false" (or "0")')

    def refuse(self, reasons: Mapping[str, str]) -> None:
        """Keys Docker takes that qiao cannot honour (``key -> why``): a 400 that says so."""
        for key, why in reasons.items():
            if key in self.fields:
                raise InvalidParameter(f"qiao does not support the filter '{key}': {why}")


# -- times -------------------------------------------------------------------------

_UNIX = re.compile(r"-?[0-9]{1,12}(\.[0-9]{1,9})?\Z")  # seconds within ~30 000 years: no overflow downstream


def unix_nanos(value: str, what: str) -> int:
    """A Unix time as Docker's clients send it (``1700000000`` or ``1700000000.123456789``), in nanoseconds."""
    if not _UNIX.match(value):
        raise InvalidParameter(f"invalid value for {what}: {value!r} is not a Unix timestamp (seconds[.nanoseconds])")
    seconds, _, fraction = value.partition(".")
    return int(seconds) * 1_000_000_000 + (int(fraction[:9].ljust(9, "0")) if fraction else 0)  # as Go's time.Unix(s, ns)


def timestamp_nanos(value: str, what: str, now_ns: int) -> int:
    """A prune ``until`` (moby ``GetTimestamp``): a Go duration before now
    (``10m``, ``1h30m``), an RFC 3339 date or time (UTC when it names no zone),
    or a Unix time; in nanoseconds."""
    seconds = go_duration(value) if value != "0" else None
    if seconds is not None:
        if seconds > 3600 * 24 * 365 * 10_000:
            raise InvalidParameter(f"invalid value for {what}: {value!r} is too long a duration")
        return now_ns - int(seconds * 1e9)
    if _UNIX.match(value):
        return unix_nanos(value, what)
    try:
        when = datetime.datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise InvalidParameter(f'invalid value for {what}: failed to parse value as time or duration: "{value}"') from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def created_nanos(stamp: str) -> int:
    """An object's ``created`` (RFC 3339, as qiao stores it) in nanoseconds; 0 when unreadable."""
    try:
        when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


@dataclass(frozen=True)
class Prune:
    """The filters of ``containers/prune`` and ``networks/prune`` (moby
    ``daemon/prune.go``): ``until`` (created before), ``label`` (every one
    holds) and ``label!`` (excluded when every one holds)."""

    filters: Filters
    until_ns: int | None

    @classmethod
    def parse(cls, text: str | None, now_ns: int) -> Prune:
        filters = Filters.parse(text, PRUNE_KEYS)
        until = filters.get("until")
        if len(until) > 1:
            raise InvalidParameter("more than one until filter specified")
        until_ns = timestamp_nanos(next(iter(until)), "until", now_ns) if until else None
        return cls(filters, until_ns)

    def matches(self, labels: Mapping[str, str], created: str) -> bool:
        """Whether an object with these labels, created then, is to be pruned."""
        if self.until_ns is not None and created_nanos(created) > self.until_ns:
            return False
        if not self.filters.match_kv("label", labels):
            return False
        return not ("label!" in self.filters and self.filters.match_kv("label!", labels))
