"""Restart policies: dockerd's validation, backoff and decisions, and the timers."""

from __future__ import annotations

import threading

import pytest

from qiao.engine import restart
from qiao.engine.errors import InvalidParameter
from qiao.engine.restart import Policy, Restarts, next_delay, should_restart


@pytest.mark.parametrize(
    ("name", "count", "message"),
    [
        (
            "sometimes",
            0,
            "invalid restart policy: unknown policy 'sometimes'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'",
        ),
        ("always", 3, "invalid restart policy: maximum retry count can only be used with 'on-failure'"),
        ("unless-stopped", -1, "invalid restart policy: maximum retry count can only be used with 'on-failure' and cannot be negative"),
        ("on-failure", -2, "invalid restart policy: maximum retry count cannot be negative"),
    ],
)
def test_policy_refusals_are_dockerds(name, count, message):
    with pytest.raises(InvalidParameter) as info:
        restart.policy(name, count)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("name", "count"), [("", 0), ("no", 0), ("always", 0), ("unless-stopped", 0), ("on-failure", 0), ("on-failure", 5)]
)
def test_policy_accepted(name, count):
    rule = restart.policy(name, count)
    assert rule == Policy(name or "no", count) and rule.none == (name in ("", "no"))


def test_backoff_doubles_from_100ms_to_a_minute_and_starts_over_after_10s():
    delays, delay = [], 0.0
    for _ in range(12):
        delay = next_delay(delay, ran_for=1)
        delays.append(delay)
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8] and delays[-1] == 60.0 and max(delays) == 60.0
    assert next_delay(60.0, ran_for=10) == 0.1 and next_delay(0.8, ran_for=9.9) == 1.6


@pytest.mark.parametrize(
    ("name", "count", "exit_code", "stopped", "restarts", "expected"),
    [
        ("always", 0, 0, False, 0, True),
        ("always", 0, 0, True, 0, True),  # only the cancellation of stop/kill keeps it down
        ("unless-stopped", 0, 1, False, 0, True),
        ("unless-stopped", 0, 1, True, 0, False),
        ("on-failure", 0, 0, False, 0, False),
        ("on-failure", 0, 1, False, 99, True),  # 0: no maximum
        ("on-failure", 2, 1, False, 1, True),
        ("on-failure", 2, 1, False, 2, False),
        ("no", 0, 1, False, 0, False),
    ],
)
def test_should_restart(name, count, exit_code, stopped, restarts, expected):
    assert should_restart(Policy(name, count), exit_code, stopped, restarts) is expected


def test_restarts_wait_then_start_and_cancel_sticks_until_reset():
    started: list[str] = []
    done = threading.Event()

    def start(cid: str) -> None:
        started.append(cid)
        done.set()

    r = Restarts(start)
    assert r.after_exit("a", Policy("always"), 0, False, 0, ran_for=1)
    assert done.wait(5) and started == ["a"]
    r.cancel("a")
    assert not r.after_exit("a", Policy("always"), 0, False, 1, ran_for=1)
    r.reset("a")
    done.clear()
    assert r.after_exit("a", Policy("always"), 0, False, 0, ran_for=1)
    assert done.wait(5) and started == ["a", "a"]
    assert not r.after_exit("b", Policy("no"), 1, False, 0, ran_for=1)


def test_cancel_drops_a_pending_restart():
    started: list[str] = []
    r = Restarts(started.append)
    r.schedule("a", delay=0.2)
    r.cancel("a")
    threading.Event().wait(0.4)
    assert started == []
