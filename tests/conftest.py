"""Shared fixtures: a registry built from fake plugins, swapped in for one test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from fffcore import registry as registry_module
from fffcore import selection
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


@pytest.fixture
def use_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., registry_module.Registry]]:
    """Call with (name, plugin) pairs: they are loaded after the built-ins and become the process registry."""

    def install(*plugins: tuple[str, object]) -> registry_module.Registry:
        loaded = registry_module.load_registry(extra_plugins=list(plugins))
        monkeypatch.setattr(registry_module, "_registry", loaded)
        selection.forget_automatic_choices()
        return loaded

    yield install
    selection.forget_automatic_choices()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--docs-full",
        action="store_true",
        help="tests/test_docs.py: run the documented commands that take minutes as written, not short of that",
    )


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A client of a real ``distributed.LocalCluster``: 2 worker processes of 1 thread each, on the loopback address."""
    pytest.importorskip("distributed", reason="the Dask cluster tests need distributed: pip install 'fffcore[dask]'")
    from fffcore.apply import local_client

    client = local_client(workers=2, threads_per_worker=1)
    try:
        yield client
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
