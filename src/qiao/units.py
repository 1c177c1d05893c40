"""Docker's ``units.HumanDuration`` and ``HumanSize`` (go-units), shared by
the daemon's ``Status`` texts and the CLI's ``CREATED`` and ``SIZE``
columns.  Standard library only."""

from __future__ import annotations

import re

_GO_DURATION = re.compile(r"(?:[0-9]{0,12}\.?[0-9]{1,12}(?:ns|us|µs|ms|s|m|h))+\Z")  # bounded: no float overflow
_GO_DURATION_PART = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_GO_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float | None:
    """A Go duration (``1h30m``, ``42m``, ``10s``, ``1.5ms``) in seconds, as Docker's
    ``--since``/``--until`` and prune ``until`` take it; None when it is not one."""
    if not _GO_DURATION.match(text):
        return None
    return sum(float(n) * _GO_UNIT_SECONDS[u] for n, u in _GO_DURATION_PART.findall(text))


def human_duration(seconds: float) -> str:
    """``Less than a second``, ``5 seconds``, ``About a minute``, ``3 hours``, ``2 weeks``, ..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = int(seconds / 60)
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = int(seconds / 3600 + 0.5)  # Go's int(d.Hours() + 0.5): half rounds up, not to even
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def _custom_size(size: float, base: float, units: tuple[str, ...], precision: int) -> str:
    """go-units' CustomSize: divide by ``base`` while it fits, then ``%.<precision>g<unit>``."""
    i = 0
    while size >= base and i < len(units) - 1:
        size /= base
        i += 1
    return f"{size:.{precision}g}{units[i]}"


def human_size(size: float, precision: int = 3) -> str:
    """go-units' HumanSizeWithPrecision: decimal units (``1.98MB``), as ``docker images`` and ``docker stats`` print sizes."""
    return _custom_size(size, 1000.0, ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"), precision)


def bytes_size(size: float) -> str:
    """go-units' BytesSize: binary units (``1.5MiB``), as ``docker stats`` shows memory."""
    return _custom_size(size, 1024.0, ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"), 4)
