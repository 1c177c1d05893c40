"""The host driver: the predefined ``host`` network.  A container on it has
no network namespace of its own; there is nothing to create or plug."""

from __future__ import annotations

from typing import ClassVar

from qiao.drivers import Base


class HostDriver(Base):
    name: ClassVar[str] = "host"
