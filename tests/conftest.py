"""Shared fixtures: a registry built from fake plugins, swapped in for one test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fffcore import registry as registry_module


@pytest.fixture
def use_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., registry_module.Registry]]:
    """Call with (name, plugin) pairs: they are loaded after the built-ins and become the process registry."""

    def install(*plugins: tuple[str, object]) -> registry_module.Registry:
        loaded = registry_module.load_registry(extra_plugins=list(plugins))
        monkeypatch.setattr(registry_module, "loaded", loaded)  # a new registry: every plan is made anew
        return loaded

    yield install


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--docs-full",
        action="store_true",
        help="tests/docs/test_docs.py: run the documented commands that take minutes as written, not short of that",
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
