"""Test helper: swap the process-wide registry for one that also holds extra plugins (the broken backends)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import fffcore.registry as registry_module


@contextlib.contextmanager
def registry_with(*plugins: tuple[str, Any]) -> Iterator[registry_module.Registry]:
    """Within the block, ``fffcore.fff(..., backend=NAME)`` also finds the backends of ``plugins``."""
    previous = registry_module.loaded
    registry_module.loaded = registry_module.load_registry(extra_plugins=list(plugins))
    try:
        yield registry_module.loaded
    finally:
        registry_module.loaded = previous
