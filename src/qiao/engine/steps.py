"""All-or-nothing operations: named steps with an undo stack.

Each step that changes something registers how to undo it; if a later step
raises, the registered undos run in reverse and the exception propagates
(moby's ``retErr`` defers, netavark's teardown of drivers ``0..i``).  A
fault hook named after each step lets tests break any step on purpose
(moby's ``DOCKER_TEST_BRIDGE_INIT_ERROR``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("qiao.steps")

Fault = Callable[[str], None]


class InjectedFault(RuntimeError):
    pass


def fault_at(step: str | None) -> Fault | None:
    """A fault hook that fails the step called ``step`` (``QIAO_FAULT_STEP``)."""
    if not step:
        return None

    def hook(name: str) -> None:
        if name == step:
            raise InjectedFault(f"injected fault at step {name}")

    return hook


class Steps:
    def __init__(self, fault: Fault | None = None):
        self._fault = fault
        self._undo: list[tuple[str, Callable[[], Any]]] = []

    def run(self, name: str, do: Callable[[], T], undo: Callable[[], Any] | None = None) -> T:
        if self._fault:
            self._fault(name)
        result = do()
        if undo is not None:
            self._undo.append((name, undo))
        return result

    def rollback(self) -> None:
        while self._undo:
            name, undo = self._undo.pop()
            try:
                undo()
            except Exception:  # keep undoing the rest; report every failure
                log.exception("undo of step %s failed", name)

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.rollback()


class Teardown:
    """Best-effort, complete release: every step runs even when an earlier one
    failed; failures are collected and reported once, by :meth:`report`
    (netavark's teardown, moby's ``sbLeave`` that logs and goes on).  Steps
    that change only memory cannot fail and need no wrapping."""

    def __init__(self, what: str, fault: Fault | None = None):
        self.what = what
        self._fault = fault
        self.errors: list[str] = []

    def run(self, name: str, do: Callable[[], Any]) -> None:
        try:
            if self._fault:
                self._fault(name)
            do()
        except Exception as exc:  # collected: the next steps must still run
            self.errors.append(f"{name}: {exc}")

    def report(self) -> None:
        """Log the failures once; the kernel side is repaired by the next resync or start."""
        if self.errors:
            log.warning("%s: %d step(s) failed and were skipped: %s", self.what, len(self.errors), "; ".join(self.errors))
