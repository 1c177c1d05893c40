"""``docker stats`` and ``docker top`` without a container: samples from
synthetic /proc and cgroup readings, Docker's JSON shape, ps's columns, and
the CLI's table (Docker CLI's arithmetic and units)."""

from __future__ import annotations

import time

import pytest

from qiao.cli import output
from qiao.daemon import docker_stats
from qiao.engine import processes, stats, top
from qiao.engine.errors import InvalidParameter
from qiao.engine.models import Container
from qiao.engine.processes import CLOCK_TICKS, Proc

CTR = Container(id="c" * 64, name="web", created="2024-05-01T10:00:00Z", cmd=["sleep", "60"], env=[], hostname="c", network_mode="bridge")
NET = {
    "rx_bytes": 3_000_000,
    "rx_packets": 2000,
    "rx_errors": 0,
    "rx_dropped": 0,
    "tx_bytes": 1500,
    "tx_packets": 20,
    "tx_errors": 0,
    "tx_dropped": 0,
}


def proc(pid: int = 10, **kw) -> Proc:
    fields = dict(
        pid=pid, ppid=1, uid=0, state="S", comm="sleep", cmdline=["sleep", "60"], utime=0, stime=0, cutime=0, cstime=0, nice=0,
        threads=1, start=0, vsize=4096 * 1024, rss=2048 * 1024, tty=0, session=pid, pgrp=pid, tpgid=-1,
    )  # fmt: skip
    fields.update(kw)
    return Proc(**fields)  # type: ignore[arg-type]


# -- samples -------------------------------------------------------------------


def test_sample_from_a_cgroup():
    source = stats.Source(
        cpu=(3_000, 2_000, 1_000), memory=(8192, {"inactive_file": 1024}), tasks=4, procs=[proc()], shim=None, networks={}
    )
    s = stats.sample(source, 2, 10**12, 1 << 30, "now")
    assert (s.cpu_total, s.cpu_user, s.cpu_system, s.memory_usage, s.pids) == (3_000, 2_000, 1_000, 8192, 4)
    assert s.memory_stats == {"inactive_file": 1024} and (s.online_cpus, s.system_cpu, s.memory_limit) == (2, 10**12, 1 << 30)


def test_sample_without_a_cgroup_adds_up_the_processes_and_what_the_shim_reaped():
    ns = 1_000_000_000 // CLOCK_TICKS
    procs = [proc(10, utime=5, stime=1, cutime=2, threads=3), proc(11, utime=1, stime=1, cstime=4, rss=1 << 20)]
    shim = proc(9, utime=100, stime=100, cutime=7, cstime=3)  # its own time is not the container's
    s = stats.sample(stats.Source(None, None, None, procs, shim, {"eth0": NET}), 2, 0, 0, "now")
    assert (s.cpu_user, s.cpu_system) == ((5 + 2 + 1 + 7) * ns, (1 + 1 + 4 + 3) * ns)
    assert s.cpu_total == s.cpu_user + s.cpu_system and s.memory_usage == (2 << 20) + (1 << 20) and s.pids == 4


# -- the JSON ------------------------------------------------------------------

DOCKER_STATS_KEYS = [
    "name", "id", "read", "preread", "pids_stats", "blkio_stats", "num_procs", "storage_stats", "cpu_stats", "precpu_stats",
    "memory_stats", "networks",
]  # fmt: skip


def sample(cpu: int, system: int, read: str = "2024-05-01T10:00:01.000000Z") -> stats.Sample:
    return stats.Sample(read, cpu, cpu // 2, cpu // 2, system, 2, 4096, {"inactive_file": 1024}, 1 << 30, 3, {"eth0": NET})


def test_stats_json_has_dockers_shape():
    before, now = sample(1_000_000, 10**12, "2024-05-01T10:00:00.000000Z"), sample(51_000_000, 10**12 + 100_000_000)
    doc = docker_stats.stats(CTR, now, before)
    assert list(doc) == DOCKER_STATS_KEYS
    assert (doc["name"], doc["id"], doc["read"], doc["preread"]) == ("/web", CTR.id, now.read, before.read)
    assert doc["cpu_stats"] == {
        "cpu_usage": {"total_usage": 51_000_000, "usage_in_kernelmode": 25_500_000, "usage_in_usermode": 25_500_000},
        "system_cpu_usage": 10**12 + 100_000_000,
        "online_cpus": 2,
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }
    assert doc["precpu_stats"]["cpu_usage"]["total_usage"] == 1_000_000
    assert doc["memory_stats"] == {"usage": 4096, "stats": {"inactive_file": 1024}, "limit": 1 << 30}
    assert doc["pids_stats"] == {"current": 3} and doc["networks"] == {"eth0": NET}
    assert doc["blkio_stats"]["io_service_bytes_recursive"] is None
    # What the Docker CLI makes of it: 50 ms of CPU in 100 ms of the machine's (2 CPUs) time
    assert output.cpu_percent(doc) == pytest.approx(100.0)
    assert output.memory_usage(doc) == 3072


def test_first_frame_and_a_container_that_does_not_run():
    first = docker_stats.stats(CTR, sample(1, 2))
    assert first["preread"] == docker_stats.ZERO_TIME and "system_cpu_usage" not in first["precpu_stats"]
    idle = docker_stats.stats(CTR, None)
    assert idle["read"] == docker_stats.ZERO_TIME and idle["memory_stats"] == {} and "networks" not in idle


def test_cli_stats_row_is_dockers():
    doc = docker_stats.stats(CTR, sample(51_000_000, 10**12 + 100_000_000), sample(1_000_000, 10**12))
    assert output.stats_row(doc) == ["cccccccccccc", "web", "100.00%", "3KiB / 1GiB", "0.00%", "3MB / 1.5kB", "0B / 0B", "3"]


@pytest.mark.parametrize(
    ("size", "binary", "decimal"),
    [(0, "0B", "0B"), (1023, "1023B", "1.02kB"), (1536, "1.5KiB", "1.54kB"), (3_000_000, "2.861MiB", "3MB"), (25 << 30, "25GiB", "26.8GB")],
)
def test_sizes_as_go_units(size, binary, decimal):
    assert output.bytes_size(size) == binary and output.human_size(size) == decimal


# -- top -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fmt"),
    [
        ("", "full"),
        ("-ef", "full"),
        ("-e -f", "full"),
        ("-f", "full"),
        ("-e", "default"),
        ("-A", "default"),
        ("aux", "user"),
        ("ax", "bsd"),
    ],
)
def test_ps_formats(args, fmt):
    assert top.ps_format(args) == fmt


@pytest.mark.parametrize("args", ["-o pid,comm", "-ef aux", "--forest", "l"])
def test_other_ps_arguments_are_refused_by_name(args):
    with pytest.raises(InvalidParameter, match="qiao's top takes"):
        top.ps_format(args)


def test_top_rows_from_proc():
    now = time.time()
    clock = top.Clock(now=now, uptime=1000.0, memory=1 << 30)
    started = (1000.0 - 100) * CLOCK_TICKS  # 100 s ago
    p = proc(42, ppid=7, utime=5 * CLOCK_TICKS, stime=5 * CLOCK_TICKS, start=int(started), tty=(136 << 8) | 3, tpgid=42, threads=2)
    titles, rows = top.table([p], "-ef", clock, {0: "root"})
    assert titles == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert rows == [["root", "42", "7", "10", time.strftime("%H:%M", time.localtime(now - 100)), "pts/3", "00:00:10", "sleep 60"]]
    titles, rows = top.table([p], "aux", clock, {})
    assert titles[0] == "USER" and rows[0][:4] == ["0", "42", "10.0", "0.2"] and rows[0][7] == "Ssl+" and rows[0][9] == "0:10"
    kernel = proc(2, cmdline=[], comm="kthreadd")
    assert top.table([kernel], "-e", clock, {})[1] == [["2", "?", "00:00:00", "[kthreadd]"]]


def test_tty_names_and_times():
    assert (top.tty(0), top.tty((136 << 8) | 0), top.tty((4 << 8) | 1), top.tty((4 << 8) | 65)) == ("?", "pts/0", "tty1", "ttyS1")
    assert top.tty((136 << 8) | 255 | (1 << 20)) == "pts/511"  # minor above 255: the kernel's split encoding
    assert (top.clock_time(3725), top.clock_time(90061), top.minutes_time(3725)) == ("01:02:05", "1-01:01:01", "62:05")


def test_read_a_real_process():
    import os

    me = processes.read(os.getpid())
    assert me is not None and me.pid == os.getpid() and me.threads >= 1 and me.cmdline
    assert processes.read(2**31 - 1) is None


# -- the CLI's run options -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "policy"),
    [("", {"Name": "", "MaximumRetryCount": 0}), ("always", {"Name": "always", "MaximumRetryCount": 0}),
     ("on-failure:3", {"Name": "on-failure", "MaximumRetryCount": 3})],
)  # fmt: skip
def test_cli_restart_policy(text, policy):
    assert output.restart_policy(text) == policy


def test_cli_restart_policy_count_must_be_a_number():
    with pytest.raises(ValueError, match="maximum retry count must be an integer"):
        output.restart_policy("on-failure:x")


def test_cli_env_file_and_env_items():
    text = "# comment\n\n  A=1\nB= spaced \nPASSED\nMISSING\n"
    assert output.env_file(text, {"PASSED": "p"}) == ["A=1", "B= spaced ", "PASSED=p"]
    assert output.env_items(["X=1", "PASSED", "MISSING"], {"PASSED": "p"}) == ["X=1", "PASSED=p", "MISSING"]
    with pytest.raises(ValueError, match="whitespace"):
        output.env_file("BAD NAME=1\n", {}, "f")
