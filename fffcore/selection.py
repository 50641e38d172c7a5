"""Choosing a backend at run time.

Precedence, first match wins:

1. the ``backend=`` argument of the call;
2. the innermost :func:`use_backend` context (per thread and per asyncio task);
3. the ``FFFCORE_BACKEND`` environment variable;
4. automatic choice by the input's array type: the available backend of
   highest priority that accepts that array type (for numpy input, among
   backends that compute on the CPU).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

from fffcore.arrays import array_type
from fffcore.backend import Backend
from fffcore.registry import registry

BACKEND_VARIABLE = "FFFCORE_BACKEND"

_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("fffcore_backend", default=None)
_automatic: dict[str, Backend] = {}


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Use the named backend for every call inside the ``with`` block that names none.

    The name is checked on entry: an unknown name raises
    :class:`~fffcore.registry.UnknownBackendError`, an unavailable one
    :class:`~fffcore.registry.BackendUnavailableError`.
    """
    backend = registry().get(name)
    token = _context_backend.set(name)
    try:
        yield backend
    finally:
        _context_backend.reset(token)


def select_backend(x: object, name: str | None = None) -> Backend:
    """The backend a call on ``x`` runs on, by the precedence above."""
    if name is None:
        name = _context_backend.get()
        if name is None:
            name = os.environ.get(BACKEND_VARIABLE) or None
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"backend: expected a backend name (str) or None, got {type(name).__name__}")
        return registry().get(name)
    kind = array_type(x)
    backend = _automatic.get(kind)
    if backend is None:
        backend = _choose_automatically(kind)
        _automatic[kind] = backend
    return backend


def forget_automatic_choices() -> None:
    _automatic.clear()


def _choose_automatically(kind: str) -> Backend:
    current = registry()
    candidates = [
        backend
        for backend in current.backends.values()
        if kind in backend.array_types and (kind != "numpy" or "cpu" in backend.devices)
    ]
    # Highest priority first, and availability asked only until one answers yes: an availability
    # check may import its library (seconds for torch), which a faster backend makes unnecessary.
    for backend in sorted(candidates, key=lambda backend: -backend.priority):
        if current.availability(backend.name).available:
            return backend
    accepting = sorted(backend.name for backend in candidates)
    hint = f"; backends for {kind} arrays: {', '.join(accepting)} (see `fff backends`)" if accepting else ""
    raise TypeError(f"x: no available backend accepts {kind} arrays{hint}")
