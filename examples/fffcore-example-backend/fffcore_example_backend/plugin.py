"""The plugin module the entry point names: one hook that registers the backend."""

from __future__ import annotations

from collections.abc import Callable

import fffcore
from fffcore_example_backend.backend import LoopBackend


@fffcore.hookimpl
def register_backends(register: Callable[[object], None]) -> None:
    register(LoopBackend())
