"""Signals as Docker's API and CLI name them (``kill -s``, ``--stop-signal``,
``stop --signal``): ``SIGTERM``, ``term``, ``15``, ``SIGRTMIN+3``."""

from __future__ import annotations

import re
import signal

from qiao.engine.errors import InvalidParameter

_RT = re.compile(r"RTM(IN|AX)([+-][0-9]{1,2})?\Z")


def parse(text: str) -> int:
    """The signal's number; an unknown name, 0 (a no-op) or one past the kernel's last is a 400."""
    name = text.upper().removeprefix("SIG")  # no strip: "KILL\n" is not a signal (dockerd refuses it too)
    number: int | None = None
    if re.fullmatch(r"[0-9]{1,3}", name):  # ASCII digits, and few: int() of 5 000 would raise past Python's limit
        number = int(name)
    elif rt := _RT.match(name):
        base = signal.SIGRTMIN if rt.group(1) == "IN" else signal.SIGRTMAX
        number = base + int(rt.group(2) or 0)
    elif "SIG" + name in signal.Signals.__members__:
        number = signal.Signals["SIG" + name]
    if number is None or not 0 < number <= signal.SIGRTMAX:
        raise InvalidParameter(f"invalid signal: {text}")
    return number
