"""The null driver: the predefined ``none`` network.  A container on it has
a network namespace of its own with only ``lo``; there is nothing to plug."""

from __future__ import annotations

from typing import ClassVar

from qiao.drivers import Base


class NullDriver(Base):
    name: ClassVar[str] = "null"
