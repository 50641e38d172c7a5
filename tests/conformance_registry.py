"""Test helper: swap the process-wide registry for one that also holds extra plugins (the broken backends)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import fffcore.registry as registry_module
from fffcore import selection


@contextlib.contextmanager
def registry_with(*plugins: tuple[str, Any]) -> Iterator[registry_module.Registry]:
    """Within the block, ``fffcore.fff(..., backend=NAME)`` also finds the backends of ``plugins``."""
    previous = registry_module._registry
    registry_module._registry = registry_module.load_registry(extra_plugins=list(plugins))
    selection.forget_automatic_choices()
    try:
        yield registry_module._registry
    finally:
        registry_module._registry = previous
        selection.forget_automatic_choices()
