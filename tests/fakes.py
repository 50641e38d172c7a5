"""Fake backends for tests: the reference under another name, priority, devices and availability."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fffcore.backend import Availability, Backend
from fffcore.hookspecs import hookimpl
from fffcore.reference.plugin import ReferenceBackend


class FakeBackend(ReferenceBackend):
    """The reference under another name, priority, devices and availability; records its calls,
    and the arrays and parameters each call received (``received``)."""

    name = "fake"
    calls: list[str]

    def __init__(self, name: str, priority: int = 0, available: bool = True, array_types=("numpy",), devices=("cpu",)):
        self.name = name  # type: ignore[misc]  # instance attribute shadows the class's ClassVar
        self.priority = priority  # type: ignore[misc]
        self.array_types = array_types  # type: ignore[misc]
        self.devices = devices  # type: ignore[misc]
        self._available = available
        self.calls = []
        self.received: list[tuple[Any, Any]] = []

    def availability(self) -> Availability:
        if self._available:
            return Availability(True)
        return Availability(False, "fakelib is not installed", "pip install fakelib")

    def fff(self, x: Any, params: Any) -> np.ndarray:
        self.calls.append("fff")
        self.received.append((x, params))
        return super().fff(x, params)


def plugin_with(*backends: Backend) -> object:
    class Plugin:
        @hookimpl
        def register_backends(self, register: Callable[[object], None]) -> None:
            for backend in backends:
                register(backend)

    return Plugin()
