"""The host namespace's netlink socket (``kernel/host.py``): one socket, one
owner thread, whatever thread calls; nothing piles up per call.

qiaod serves each request on a new thread.  pyroute2 0.9 gives every thread
that calls an ``IPRoute`` a socket of its own, kept until ``close()``: a
shared ``IPRoute`` left one netlink socket per container start (issue 10,
"Nothing leaks").  The tests with a real ``IPRoute`` only read the links of
the namespace they run in (no root needed, nothing changed).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from qiao.kernel.host import LinuxHost, _Netlink


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled_fds(timeout: float = 5) -> int:
    """The open fds once steady for 0.1 s (the link retirer opens its own socket as its thread starts)."""
    deadline = time.monotonic() + timeout
    last = open_fds()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = open_fds()
        if now == last:
            break
        last = now
    return last


def on_new_threads(n: int, call: Callable[[], Any]) -> None:
    """``call()`` once on each of ``n`` new threads, one after the other (as qiaod's requests)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    for _ in range(n):
        t = threading.Thread(target=run)
        t.start()
        t.join()
    assert not errors, errors


class Recorder:
    """A stand-in for ``IPRoute``: records the thread of every call."""

    def __init__(self) -> None:
        self.threads: list[int] = [threading.get_ident()]  # the constructor's

    def link_lookup(self, ifname: str) -> list[int]:
        self.threads.append(threading.get_ident())
        return [7] if ifname == "eth0" else []

    def get_links(self) -> Iterator[str]:
        self.threads.append(threading.get_ident())
        yield from ("lo", "eth0")

    def link(self, command: str, **kwargs: Any) -> None:
        error = OSError("no such device")
        error.code = 19  # type: ignore[attr-defined]  # as pyroute2's NetlinkError
        raise error


def test_every_call_runs_on_the_one_owner_thread() -> None:
    made: list[Recorder] = []
    netlink = _Netlink(lambda: made.append(Recorder()) or made[-1])
    on_new_threads(20, lambda: netlink.link_lookup(ifname="eth0"))
    assert netlink.link_lookup(ifname="eth0") == [7] and netlink.link_lookup(ifname="nope") == []
    assert len(made) == 1, "one IPRoute for every caller"
    assert len(set(made[0].threads)) == 1 and made[0].threads[0] != threading.get_ident()


def test_a_dump_is_read_on_the_owner_thread() -> None:
    made: list[Recorder] = []
    netlink = _Netlink(lambda: made.append(Recorder()) or made[-1])
    assert netlink.get_links() == ("lo", "eth0")  # a generator would be read here, on the caller's thread
    assert made[0].threads[1] == made[0].threads[0] != threading.get_ident()


def test_errors_reach_the_caller_with_their_code() -> None:
    netlink = _Netlink(Recorder)
    with pytest.raises(OSError, match="no such device") as info:
        netlink.link("del", ifname="gone")
    assert info.value.code == 19  # type: ignore[attr-defined]


def test_a_call_from_the_owner_thread_itself_does_not_wait_for_itself() -> None:
    netlink = _Netlink(Recorder)
    assert netlink.run(lambda ipr: netlink.link_lookup(ifname="eth0")) == [7]


def test_a_factory_that_fails_fails_the_constructor() -> None:
    def broken() -> Any:
        raise PermissionError("no netlink for you")

    with pytest.raises(PermissionError, match="no netlink"):
        _Netlink(broken)


def test_linux_host_keeps_one_socket_whatever_thread_calls() -> None:
    """The regression: 50 requests' threads, each looking a link up, left 50 sockets."""
    host = LinuxHost()
    host.link_exists("lo")
    before = settled_fds()
    on_new_threads(50, lambda: host.link_exists("lo") and host.link_kind("lo"))
    assert open_fds() <= before, "a thread that used the host's netlink socket left a socket behind"


def test_linux_host_keeps_no_message_per_lookup() -> None:
    """pyroute2 files the ACK after a ``get``'s reply under sequence 0, where nothing reads it."""
    host = LinuxHost()
    for _ in range(20):
        assert host.link_exists("lo") and host.link_kind("lo") == "" and not host.link_exists("qiao-no-such")
    queued = host._ipr.run(lambda ipr: ipr.asyncore.local.msg_queue.queues[0].qsize())
    assert queued == 0, f"{queued} netlink messages kept for no reader"
