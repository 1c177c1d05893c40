"""The engine's changes, told to whoever listens (the DNS zones, the
overlay's name publisher), so the engine needs to know none of them.

Listeners run synchronously, under the engine lock, in the order they
subscribed: they must only update memory or queue work for a thread of
their own (no network I/O, no waiting).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from qiao.engine.models import Endpoint, Network

log = logging.getLogger("qiao.events")


@dataclass(frozen=True)
class Event:
    kind: str  # "network" | "endpoint" | "names" (a network's remote names changed)
    action: str  # network: create | delete; endpoint: join | leave; names: update
    network: Network
    endpoint: Endpoint | None = None


Listener = Callable[[Event], None]


class Events:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not undo the change that was made
                log.exception("event listener failed on %s %s", event.kind, event.action)
