"""Choosing a backend at run time.

Precedence, first match wins:

1. the ``backend=`` argument of the call;
2. the innermost :func:`use_backend` context (per thread and per asyncio task);
3. the ``FFFCORE_BACKEND`` environment variable;
4. automatic choice by the input's device and the layer's dtype: the
   available backend of highest priority that computes on the device ``x``
   lives on, in the parameters' dtype and activation, and takes ``x``
   either as it is or through a zero-copy bridge (:mod:`fffcore.bridging`).
   So numpy arrays and CPU torch tensors of a float32 or float64 layer go to
   ``numba`` where it is available; CUDA tensors to ``cupy``, else ``torch``.

:func:`resolve_backend` answers, for a given input and layer, which backend a
call would run on.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fffcore.arrays import array_type
from fffcore.backend import Backend
from fffcore.bridging import array_device, find_bridge
from fffcore.registry import BackendUnavailableError, UnknownBackendError, registry

if TYPE_CHECKING:
    from fffcore.params import FFFParams

BACKEND_VARIABLE = "FFFCORE_BACKEND"

_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("fffcore_backend", default=None)
#: Automatic choices by (array type, device, dtype, activation, parameters' array type and device).
_automatic: dict[tuple[str, str, str, str, str, str], Backend] = {}


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Use the named backend for every call inside the ``with`` block that names none.

    The name is checked on entry: anything but a string raises a ``TypeError``,
    an unknown name :class:`~fffcore.registry.UnknownBackendError`, an
    unavailable one :class:`~fffcore.registry.BackendUnavailableError`.
    """
    if not isinstance(name, str):
        raise TypeError(f"use_backend: expected a backend name (str), got {type(name).__name__}: {name!r}")
    backend = registry().get(name)
    token = _context_backend.set(name)
    try:
        yield backend
    finally:
        _context_backend.reset(token)


def select_backend(x: Any, name: str | None = None, params: FFFParams | None = None) -> Backend:
    """The backend a call on ``x`` (with ``params``) runs on, by the precedence above.

    Without ``params`` the automatic choice considers every dtype and activation.
    """
    requested = name
    name = requested_backend(name)
    if name is not None:
        return named_backend(name, from_argument=requested is not None)
    kind = array_type(x)
    return automatic_backend(kind, array_device(x, kind), params)


def requested_backend(name: str | None) -> str | None:
    """The name chosen by the argument, the context or ``FFFCORE_BACKEND``, in that order; None for automatic.

    The variable's value is stripped of surrounding blanks; set but blank means automatic.
    """
    if name is None:
        name = _context_backend.get()
        if name is None:
            name = _environment_backend()
            if name is not None:
                name = name.strip() or None
    if name is not None and not isinstance(name, str):
        raise TypeError(f"backend: expected a backend name (str) or None, got {type(name).__name__}")
    return name


def named_backend(name: str, *, from_argument: bool) -> Backend:
    """The backend ``name`` (from :func:`requested_backend`), ready to run.

    When the name came from ``FFFCORE_BACKEND`` rather than from the call or a
    :func:`use_backend` block, a failed lookup says so, since nothing in the
    failing call names it.
    """
    try:
        return registry().get(name)
    except (UnknownBackendError, BackendUnavailableError) as error:
        if from_argument or _context_backend.get() is not None:
            raise
        raise type(error)(f"{BACKEND_VARIABLE}={_environment_backend()!r} in the environment: {error}") from None


def environment_problem() -> str | None:
    """Why the backend ``FFFCORE_BACKEND`` names cannot run here (every call naming none would fail), or None."""
    name = requested_backend(None) if _context_backend.get() is None else None
    if name is None:
        return None
    try:
        named_backend(name, from_argument=False)
    except (UnknownBackendError, BackendUnavailableError) as error:
        return str(error)
    return None


# os.environ.get of a variable that is not set raises and catches a KeyError inside: 0.7 us on
# every call. CPython's os.environ keeps the encoded environment in ``_data`` (kept in step by
# os.environ's own setters, which tests' monkeypatch uses too); a miss there is a plain dict miss.
_ENVIRON_DATA = getattr(os.environ, "_data", None)
_ENCODED_VARIABLE = os.environ.encodekey(BACKEND_VARIABLE) if hasattr(os.environ, "encodekey") else None


def _environment_backend() -> str | None:
    """The value of ``FFFCORE_BACKEND``, or None when it is not set."""
    if _ENVIRON_DATA is not None and _ENCODED_VARIABLE is not None:
        raw = _ENVIRON_DATA.get(_ENCODED_VARIABLE)
        return None if raw is None else os.environ.decodevalue(raw)
    return os.environ.get(BACKEND_VARIABLE)


def automatic_backend(kind: str, device: str, params: FFFParams | None, *, backward: bool = False) -> Backend:
    """The available backend of highest priority for ``kind`` arrays on ``device`` and these parameters;
    with ``backward``, among those that declare it (``fffcore.fff_backward``)."""
    if params is None:
        key = (kind, device, "", "", "", "", backward)
    else:
        params_kind = params.array_type
        params_on = array_device(params.w_in, params_kind)
        key = (kind, device, params.dtype, params.activation, params_kind, params_on, backward)
    backend = _automatic.get(key)
    if backend is None:
        backend = _choose_automatically(*key)
        _automatic[key] = backend
    return backend


def resolve_backend(x: Any, params: FFFParams, backend: str | None = None) -> Backend:
    """The backend that ``fffcore.fff(x, params, backend)`` would run on, without running it.

    Raises what the call would raise when no backend can serve it.
    """
    from fffcore.api import dispatch_for

    return dispatch_for(x, params, backend).backend


def forget_automatic_choices() -> None:
    """Drop every cached choice (after the registry changed)."""
    _automatic.clear()
    for forget in _forget_hooks:
        forget()


#: Other caches of decisions that depend on the registry (the core's per-parameters dispatch).
_forget_hooks: list[Any] = []


def takes(backend: Backend, kind: str, device: str) -> bool:
    """Whether ``backend`` computes on ``device`` and takes ``kind`` arrays there, as they are or bridged.

    A backend that takes numpy arrays but computes on CUDA (cupy) copies them over itself when
    asked by name; the automatic choice keeps numpy input on the CPU.
    """
    if device not in backend.devices:
        return False
    return kind in backend.array_types or find_bridge(kind, device, backend.array_types) is not None


def _choose_automatically(
    kind: str, device: str, dtype: str, activation: str, params_kind: str, params_on: str, backward: bool = False
) -> Backend:
    current = registry()
    candidates = [
        backend
        for backend in current.backends.values()
        if (backend.backward or not backward)
        and takes(backend, kind, device)
        and (not dtype or dtype in backend.dtypes)
        and (not activation or activation in backend.activations)
        and (not params_kind or _takes_params(backend, params_kind, params_on))
    ]
    # Highest priority first, and availability asked only until one answers yes: an availability
    # check may import its library (seconds for torch), which a faster backend makes unnecessary.
    for backend in sorted(candidates, key=lambda backend: -backend.priority):
        if current.availability(backend.name).available:
            return backend
    accepting = sorted(backend.name for backend in candidates)
    what = f"{kind} arrays on {device}" + (f" with {dtype} {activation} parameters" if dtype else "")
    if backward:
        what += " and computes the backward pass"
    hint = f"; backends for them: {', '.join(accepting)} (see `fff backends`)" if accepting else ""
    raise TypeError(f"x: no available backend takes {what}{hint}")


def _takes_params(backend: Backend, params_kind: str, params_on: str) -> bool:
    if params_kind in backend.array_types:
        return True
    return params_on in backend.devices and find_bridge(params_kind, params_on, backend.array_types) is not None


#: The inputs ``fff backends`` reports the automatic choice for: (label, array type, device, dtype).
TYPICAL_INPUTS: tuple[tuple[str, str, str, str], ...] = (
    ("numpy arrays, float32 layer", "numpy", "cpu", "float32"),
    ("torch CPU tensors, float32 layer", "torch", "cpu", "float32"),
    ("torch CPU tensors, bfloat16 layer", "torch", "cpu", "bfloat16"),
    ("torch CUDA tensors, float32 layer", "torch", "cuda", "float32"),
    ("cupy arrays, float32 layer", "cupy", "cuda", "float32"),
)


def automatic_choices() -> list[tuple[str, str]]:
    """For each of :data:`TYPICAL_INPUTS`: its label and the backend chosen for it (parameters of
    the same array type on the same device, gelu), or ``"none: <why>"``."""
    choices = []
    for label, kind, device, dtype in TYPICAL_INPUTS:
        try:
            chosen = _choose_automatically(kind, device, dtype, "gelu", kind, device).name
        except TypeError as error:
            chosen = f"none: {str(error).removeprefix('x: ')}"
        choices.append((label, chosen))
    return choices
