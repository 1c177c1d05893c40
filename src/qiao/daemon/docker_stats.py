"""``GET /containers/{id}/stats``: a sample as dockerd's JSON (moby
``container.StatsResponse``, cgroup v2 flavour: no per-CPU list), with
the previous sample's CPU figures as ``precpu_stats`` so that a client
computes the CPU share of the interval, as the Docker CLI does."""

from __future__ import annotations

from typing import Any

from qiao.engine.models import Container
from qiao.engine.stats import Sample

ZERO_TIME = "0001-01-01T00:00:00Z"
_BLKIO_KEYS = (
    "io_service_bytes_recursive", "io_serviced_recursive", "io_queue_recursive", "io_service_time_recursive",
    "io_wait_time_recursive", "io_merged_recursive", "io_time_recursive", "sectors_recursive",
)  # fmt: skip


def _cpu(sample: Sample | None) -> dict[str, Any]:
    """``cpu_stats`` / ``precpu_stats``; zeros (and no system figures) without a sample, as dockerd's first frame."""
    out: dict[str, Any] = {
        "cpu_usage": {
            "total_usage": sample.cpu_total if sample else 0,
            "usage_in_kernelmode": sample.cpu_system if sample else 0,
            "usage_in_usermode": sample.cpu_user if sample else 0,
        },
    }
    if sample:
        out.update(system_cpu_usage=sample.system_cpu, online_cpus=sample.online_cpus)
    out["throttling_data"] = {"periods": 0, "throttled_periods": 0, "throttled_time": 0}
    return out


def stats(ctr: Container, sample: Sample | None, previous: Sample | None = None) -> dict[str, Any]:
    """One stats object; a container that does not run gets dockerd's empty one (name and id only)."""
    doc: dict[str, Any] = {
        "name": "/" + ctr.name,
        "id": ctr.id,
        "read": sample.read if sample else ZERO_TIME,
        "preread": previous.read if previous else ZERO_TIME,
        "pids_stats": {"current": sample.pids} if sample else {},
        "blkio_stats": dict.fromkeys(_BLKIO_KEYS),
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": _cpu(sample),
        "precpu_stats": _cpu(previous),
        "memory_stats": {"usage": sample.memory_usage, "stats": dict(sample.memory_stats), "limit": sample.memory_limit} if sample else {},
    }
    if sample and sample.networks:
        doc["networks"] = {name: dict(counters) for name, counters in sorted(sample.networks.items())}
    return doc
