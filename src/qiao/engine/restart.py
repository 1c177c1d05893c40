"""Docker's restart policies (``--restart``), done by qiaod.

The rules are moby's restart manager (``restartmanager/restartmanager.go``):

* ``always`` restarts after any exit; ``unless-stopped`` too, unless the
  user stopped or killed the container; ``on-failure[:N]`` after a non-zero
  exit, at most N times (0: no limit).
* Before each restart qiaod waits: 100 ms, then twice as long as the time
  before, up to a minute; a container that ran for 10 s or more starts
  again from 100 ms.
* ``stop`` and ``kill`` (with ``SIGKILL`` or the stop signal) cancel any
  restart until the user starts the container again, which also sets
  ``RestartCount`` back to 0.
* When qiaod starts, an exited container that its policy would restart is
  started, even one the user stopped when the policy is ``always``: as
  dockerd does when it starts (the policy, the count and the "stopped by
  the user" mark are stored with the container, so they survive).

The waits and the cancellations live here, in memory: as in dockerd, a new
daemon starts with none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from qiao.engine.errors import InvalidParameter

POLICIES = ("no", "always", "unless-stopped", "on-failure")
FIRST_DELAY = 0.1  # seconds before the first restart
MAX_DELAY = 60.0
RESET_AFTER = 10.0  # a run this long starts the backoff over


@dataclass(frozen=True)
class Policy:
    name: str = "no"
    max_retries: int = 0  # on-failure only; 0: no limit

    @property
    def none(self) -> bool:
        return self.name == "no"


def policy(name: str, max_retries: int = 0) -> Policy:
    """``HostConfig.RestartPolicy``, checked with dockerd's messages."""
    name = name or "no"
    if name not in POLICIES:
        choices = "'no', 'always', 'on-failure', or 'unless-stopped'"
        raise InvalidParameter(f"invalid restart policy: unknown policy '{name}'; use one of {choices}")
    if name == "on-failure":
        if max_retries < 0:
            raise InvalidParameter("invalid restart policy: maximum retry count cannot be negative")
    elif max_retries:
        negative = " and cannot be negative" if max_retries < 0 else ""
        raise InvalidParameter(f"invalid restart policy: maximum retry count can only be used with 'on-failure'{negative}")
    return Policy(name, max_retries)


def next_delay(previous: float, ran_for: float) -> float:
    """The wait before the next restart, given the last one and how long the container ran."""
    if ran_for >= RESET_AFTER or previous <= 0:
        return FIRST_DELAY
    return min(previous * 2, MAX_DELAY)


def should_restart(rule: Policy, exit_code: int, manually_stopped: bool, restart_count: int) -> bool:
    if rule.name == "always":
        return True
    if rule.name == "unless-stopped":
        return not manually_stopped
    if rule.name == "on-failure":
        return exit_code != 0 and (rule.max_retries == 0 or restart_count < rule.max_retries)
    return False


class Restarts:
    """The restarts qiaod owes: per container, the current wait, whether the
    user cancelled them, and the timer of the one pending.  ``start(cid)``
    runs on the timer's thread when a wait is over.  Callers hold the engine
    lock, which orders every call here with the containers' changes."""

    def __init__(self, start: Callable[[str], None]):
        self._start = start
        self._delays: dict[str, float] = {}
        self._cancelled: set[str] = set()
        self._timers: dict[str, threading.Timer] = {}

    def after_exit(self, cid: str, rule: Policy, exit_code: int, manually_stopped: bool, restart_count: int, ran_for: float) -> bool:
        """Whether the container is to be restarted; if so, the restart is scheduled."""
        if rule.none or cid in self._cancelled:
            return False
        delay = next_delay(self._delays.get(cid, 0.0), ran_for)
        self._delays[cid] = delay
        if not should_restart(rule, exit_code, manually_stopped, restart_count):
            return False
        self.schedule(cid, delay)
        return True

    def schedule(self, cid: str, delay: float = FIRST_DELAY) -> None:
        self._drop_timer(cid)
        timer = threading.Timer(delay, self._due, args=(cid,))
        timer.daemon = True
        timer.name = f"restart-{cid[:12]}"
        self._timers[cid] = timer
        timer.start()

    def _due(self, cid: str) -> None:
        self._timers.pop(cid, None)
        self._start(cid)

    def cancel(self, cid: str) -> None:
        """No restart until the user starts the container again (``stop``, ``kill``)."""
        self._cancelled.add(cid)
        self._drop_timer(cid)

    def reset(self, cid: str) -> None:
        """The user started the container: a fresh restart manager, as dockerd makes."""
        self._cancelled.discard(cid)
        self._delays.pop(cid, None)
        self._drop_timer(cid)

    def forget(self, cid: str) -> None:
        self.reset(cid)

    def _drop_timer(self, cid: str) -> None:
        timer = self._timers.pop(cid, None)
        if timer is not None:
            timer.cancel()
