"""Values too large, too deep or in another script are the client's mistake (a
400), never a 500: each case below was a 500 in a sweep of malformed requests
over every route (Python's int() digit limit, float overflow, recursion)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qiao.daemon import wire
from qiao.daemon.filters import Filters, timestamp_nanos, unix_nanos
from qiao.daemon.http import Request
from qiao.daemon.lists import _ports
from qiao.daemon.streams import _size
from qiao.drivers.bridge import OPT_MTU, mtu_option
from qiao.engine import signals
from qiao.engine.errors import InvalidParameter
from qiao.runtime import security

MANY = "9" * 5000
HUGE_RETRIES = {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 10**30}}


@pytest.mark.parametrize(
    "call",
    [
        lambda: signals.parse(MANY),
        lambda: signals.parse("SIG" + MANY),
        lambda: _size(Request({"h": MANY, "w": "80"}, b"")),
        lambda: unix_nanos("-" + MANY, "since"),
        lambda: unix_nanos("9" * 400, "until"),
        lambda: timestamp_nanos("1" * 400 + "h", "until", 0),
        lambda: timestamp_nanos("99999999999h", "until", 0),
        lambda: _ports(Filters({"expose": frozenset({"1-" + MANY})}), "expose"),
        lambda: Filters.parse("[" * 1300, ("dangling",)),
        lambda: mtu_option({OPT_MTU: MANY}),
        lambda: wire.container_spec("x", json.dumps({"Cmd": ["true"], "StopTimeout": 10**30}).encode()),
        lambda: wire.container_spec("x", json.dumps({"Cmd": ["true"], "HostConfig": HUGE_RETRIES}).encode()),
    ],
)
def test_a_huge_value_is_a_400(call: Any) -> None:
    with pytest.raises(InvalidParameter):
        call()


@pytest.mark.parametrize("user", ["²", "9" * 5000])
def test_a_user_in_another_script_or_huge_is_an_unknown_user(user: str) -> None:
    with pytest.raises(security.SecurityError):
        security.resolve_user(user)
