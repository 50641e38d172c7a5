"""Where one call goes: the plan for a layer, a requested backend and an input's array type and device.

Which backend, first match wins:

1. the ``backend=`` argument of the call;
2. the innermost :func:`use_backend` context (per thread and per asyncio task);
3. the ``FFFCORE_BACKEND`` environment variable;
4. automatic choice by the input's device and the layer's dtype: the
   available backend of highest priority that computes on the device ``x``
   lives on, in the parameters' dtype and activation, and takes ``x``
   either as it is or through a zero-copy bridge (:mod:`fffcore.bridging`).
   So numpy arrays and CPU torch tensors of a float32 or float64 layer go to
   ``numba`` where it is available; CUDA tensors to ``cupy``, else ``torch``.
   For the backward pass (:func:`fffcore.fff_backward`), only backends that
   declare ``backward`` are considered; one named by 1-3 that does not is an error.

A :class:`Plan` holds everything a call needs beyond its arguments: the backend, the bridge
``x`` crosses, the parameters bridged to the backend's array type, and the backend's prepared
call. It is made once per (parameters, requested name, array type and device of ``x``, forward
or backward) under one registry generation (:data:`fffcore.registry.loaded`), and forgotten when
the parameters are. The call's checks are made here too: the parameters and the shape of ``x``
on every call, the dtype of ``x`` once per dtype.

:func:`resolve_backend` answers, for a given input and layer, which backend a call runs on.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fffcore import registry as registry_module
from fffcore.arrays import array_device, array_type, describe_device, inspect_array
from fffcore.backend import Backend
from fffcore.bridging import Bridge, find_bridge
from fffcore.params import FFFParams
from fffcore.registry import BackendUnavailableError, UnknownBackendError, registry
from fffcore.spec import FLOATING_DTYPES, dtype_name, is_floating

BACKEND_VARIABLE = "FFFCORE_BACKEND"

_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("fffcore_backend", default=None)


@dataclass(frozen=True, eq=False)
class Plan:
    """How calls on one layer with one kind of input run.

    Attributes:
        backend: the backend the calls run on.
        bridge: the bridge ``x`` (and ``grad_y``) cross to reach the backend, and the results
            cross back; None when the backend takes ``x`` as it is.
        bridged_params: the layer's parameters as views in the backend's array type; None when
            the backend takes the call's own parameters (never those themselves: a plan must not
            keep alive the parameters it is kept for).
        call_fff: ``(x (B, d_in), params) -> y (B, d_out)``: the backend's prepared call
            (:meth:`Backend.prepare_fff`) or its ``fff``.
    """

    backend: Backend
    bridge: Bridge | None
    bridged_params: FFFParams | None
    call_fff: Callable[[Any, FFFParams], Any]

    def fff(self, x: Any, params: FFFParams) -> Any:
        """The layer's output (..., d_out) for ``x`` (..., d_in), in ``x``'s array type and on its device."""
        bridge = self.bridge
        if bridge is None or bridge.call_context is None:  # no context to enter: the call at one row stays short
            return self._fff(x, params)
        return self._in_call_context(x, self._fff, x, params)

    def cmm(self, x: Any, params: FFFParams) -> tuple[Any, Any]:
        """``(logits, nodes)``, each (..., K, D+1), in ``x``'s array type and on its device."""
        return self._in_call_context(x, self._cmm, x, params)

    def _in_call_context(self, x: Any, run: Callable[..., Any], *arguments: Any) -> Any:
        """``run(*arguments)``, inside the bridge's context for ``x`` (where the backend's work runs) if any."""
        bridge = self.bridge
        context = None if bridge is None or bridge.call_context is None else bridge.call_context(x)
        if context is None:
            return run(*arguments)
        with context:
            return run(*arguments)

    def _fff(self, x: Any, params: FFFParams) -> Any:
        bridge = self.bridge
        rows = x if bridge is None else bridge.to_target(x, params.dtype)
        taken = self.bridged_params or params
        if rows.ndim == 2:  # already (B, d_in): no reshapes (a few tenths of a microsecond at one row)
            y = self.call_fff(rows, taken)
        else:
            leading = tuple(rows.shape[:-1])
            y = self.call_fff(rows.reshape(-1, params.d_in), taken).reshape(leading + (params.d_out,))
        return y if bridge is None else bridge.to_source(y)

    def _cmm(self, x: Any, params: FFFParams) -> tuple[Any, Any]:
        bridge = self.bridge
        rows = x if bridge is None else bridge.to_target(x, params.dtype)
        tail = tuple(rows.shape[:-1]) + (params.trees, params.depth + 1)
        logits, nodes = self.backend.cmm(rows.reshape(-1, params.d_in), self.bridged_params or params)
        logits, nodes = logits.reshape(tail), nodes.reshape(tail)
        if bridge is not None:
            logits, nodes = bridge.to_source(logits), bridge.to_source(nodes)
        return logits, nodes

    def backward(self, x: Any, params: FFFParams, grad_y: Any, grad_kind: str) -> tuple[Any, Any, Any, Any]:
        """``(grad_x (..., d_in), grad_w_in, grad_b_in or None, grad_w_out)`` for ``grad_y`` (..., d_out)
        of array type ``grad_kind``, checked here against ``x``."""
        check_grad_y(x, params, grad_y, grad_kind)
        return self._in_call_context(x, self._backward, x, params, grad_y)

    def _backward(self, x: Any, params: FFFParams, grad_y: Any) -> tuple[Any, Any, Any, Any]:
        bridge = self.bridge
        rows = x if bridge is None else bridge.to_target(x, params.dtype)
        grads = grad_y if bridge is None else bridge.to_target(grad_y, params.dtype)
        leading = tuple(rows.shape[:-1])
        grad_x, grad_w_in, grad_b_in, grad_w_out = self.backend.fff_backward(
            rows.reshape(-1, params.d_in), self.bridged_params or params, grads.reshape(-1, params.d_out)
        )
        grad_x = grad_x.reshape(leading + (params.d_in,))
        if bridge is not None:
            grad_x, grad_w_in, grad_w_out = (bridge.to_source(a) for a in (grad_x, grad_w_in, grad_w_out))
            grad_b_in = None if grad_b_in is None else bridge.to_source(grad_b_in)
        return grad_x, grad_w_in, grad_b_in, grad_w_out


#: Plans by ``id(params)``, then by (name, array type, device, backward, registry generation). An
#: entry is removed when its parameters are collected (a ``weakref.finalize``), so an id is never
#: found again for other parameters, and nothing here keeps parameters alive.
_plans: dict[int, dict[tuple[Any, ...], Plan]] = {}
_plans_lock = threading.Lock()
#: Dtype objects of ``x`` (numpy's, torch's) already found to be real floating.
_floating_x_dtypes: set[Any] = set()


def plan_for(
    x: Any, kind: str, device: str, params: FFFParams, name: str | None = None, *, backward: bool = False
) -> Plan:
    """The plan for a call on ``x`` (an array of type ``kind`` on ``device``, as
    :func:`fffcore.arrays.inspect_array` gives them) with ``params``, checked: a ``TypeError`` or
    ``ValueError`` naming the argument when the call cannot run.

    ``name`` is the call's ``backend=`` argument; ``backward`` asks for a backend that computes
    :func:`fffcore.fff_backward`.
    """
    if not isinstance(params, FFFParams):
        raise TypeError(f"params: expected FFFParams, got {type(params).__name__}")
    versions = params.versions
    if versions is not None:  # torch parameters: refuse ones written since construction
        b_in = params.b_in
        if (params.w_in._version, -1 if b_in is None else b_in._version, params.w_out._version) != versions:
            params.require_unchanged()
    shape = x.shape
    if not shape or shape[-1] != params.d_in:
        check_input_shape(shape, params.d_in)
    dtype = x.dtype
    try:
        floating = dtype in _floating_x_dtypes
    except TypeError:  # an unhashable stand-in
        floating = False
    if not floating:
        _check_input_dtype(dtype)
    requested = name
    name = requested_backend(name)
    current = registry_module.loaded or registry()
    key = (name, kind, device, backward, current.generation)
    plans = _plans.get(id(params))
    plan = None if plans is None else plans.get(key)
    if plan is None:
        plan = _new_plan(x, kind, device, params, name, requested is not None, backward)
        _keep(params, key, plan)
    return plan


def check_input_shape(shape: tuple[int, ...], d_in: int, name: str = "x") -> None:
    """Raise a ValueError unless ``shape`` is (..., d_in), ``d_in`` the layer's."""
    if len(shape) < 1:
        raise ValueError(f"{name}: expected an array of shape (..., {d_in}), got a 0-D array")
    if shape[-1] != d_in:
        raise ValueError(f"{name}: expected shape (..., {d_in}) to match params.d_in, got {tuple(shape)}")


def _check_input_dtype(dtype: Any) -> None:
    name = dtype_name(dtype)
    if not is_floating(name):
        raise TypeError(f"x: expected a real floating dtype {FLOATING_DTYPES}, got {name}")
    try:
        _floating_x_dtypes.add(dtype)
    except TypeError:  # an unhashable stand-in: checked again next time
        pass


def check_grad_y(x: Any, params: FFFParams, grad_y: Any, grad_kind: str) -> None:
    """Raise unless ``grad_y`` is a real floating array (..., d_out) of ``x``'s array type and leading shape."""
    kind = array_type(x)
    if grad_kind != kind:
        raise TypeError(f"grad_y: expected a {kind} array like x, got {grad_kind}")
    expected = tuple(x.shape[:-1]) + (params.d_out,)
    if tuple(grad_y.shape) != expected:
        raise ValueError(f"grad_y: expected shape {expected} (x's, with d_out last), got {tuple(grad_y.shape)}")
    if not is_floating(dtype_name(grad_y.dtype)):
        raise TypeError(f"grad_y: expected a real floating dtype {FLOATING_DTYPES}, got {dtype_name(grad_y.dtype)}")


def _keep(params: FFFParams, key: tuple[Any, ...], plan: Plan) -> None:
    """Keep ``plan`` for ``params`` until they are collected."""
    identity = id(params)
    with _plans_lock:
        plans = _plans.get(identity)
        if plans is None:
            plans = _plans[identity] = {}
            weakref.finalize(params, _plans.pop, identity, None)
        plans[key] = plan


def _new_plan(
    x: Any, kind: str, device: str, params: FFFParams, name: str | None, from_argument: bool, backward: bool
) -> Plan:
    if name is None:
        backend = automatic_backend(kind, device, params, backward=backward)
    else:
        backend = named_backend(name, from_argument=from_argument)
        if backward and not backend.backward:
            raise TypeError(
                f"backend {backend.name!r} does not implement the backward pass; "
                "`fff backends` lists the backends that do (backward: yes)"
            )
    if params.dtype not in backend.dtypes:
        raise TypeError(f"params: backend {backend.name!r} computes in {', '.join(backend.dtypes)}, got {params.dtype}")
    if params.activation not in backend.activations:
        raise ValueError(
            f"params: backend {backend.name!r} implements {', '.join(backend.activations)}, "
            f"got activation {params.activation!r}"
        )
    bridge = None
    if kind not in backend.array_types or device not in backend.devices:  # the latter: a TypeError
        bridge = _bridge_to(backend, x, kind, "x")
    taken = None
    params_kind = params.array_type
    if params_kind not in backend.array_types or array_device(params.w_in, params_kind) not in backend.devices:
        taken = _bridged_params(params, _bridge_to(backend, params.w_in, params_kind, "params"))
    prepared = None if backward else backend.prepare_fff(taken or params)
    return Plan(backend, bridge, taken, prepared if prepared is not None else backend.fff)


def _bridge_to(backend: Backend, array: Any, kind: str, what: str) -> Bridge:
    """The zero-copy bridge from ``array`` to ``backend``, or a TypeError saying why there is none."""
    device = array_device(array, kind)
    accepted = ", ".join(backend.array_types)
    if device not in backend.devices:
        where = ", ".join(backend.devices)
        raise TypeError(
            f"{what}: backend {backend.name!r} computes on {where} with {accepted} arrays, got "
            f"{describe_device(array, kind)}; move it there yourself or choose a backend for {device} "
            "(`fff backends` lists them)"
        )
    bridge = find_bridge(kind, device, backend.array_types)
    if bridge is None:
        raise TypeError(f"{what}: backend {backend.name!r} accepts {accepted} arrays, got {kind}")
    return bridge


def _bridged_params(params: FFFParams, bridge: Bridge) -> FFFParams:
    """``params`` as :class:`FFFParams` of ``bridge.target`` arrays sharing their memory.

    bfloat16 parameters cannot cross into numpy or cupy: the capability checks reject them first.
    """
    w_in, b_in, w_out = (
        None if a is None else bridge.to_target(a, params.dtype) for a in (params.w_in, params.b_in, params.w_out)
    )
    # Views of the caller's parameters, whose own checks (torch version counters) cover them.
    return FFFParams(w_in, b_in, w_out, params.activation, copy=False)


# --- which backend ---------------------------------------------------------------------------------


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


def resolve_backend(x: Any, params: FFFParams, backend: str | None = None) -> Backend:
    """The backend that ``fffcore.fff(x, params, backend)`` would run on, without running it.

    Raises what the call would raise when no backend can serve it.
    """
    x, kind, device = inspect_array(x)
    return plan_for(x, kind, device, params, backend).backend


def requested_backend(name: str | None) -> str | None:
    """The name chosen by the argument, the context or ``FFFCORE_BACKEND``, in that order; None for automatic."""
    if name is None:
        name = _context_backend.get()
        if name is None:
            name = _environment_backend()
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
        raise type(error)(f"{BACKEND_VARIABLE}={_raw_environment_backend()!r} in the environment: {error}") from None


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


def _raw_environment_backend() -> str | None:
    """The value of ``FFFCORE_BACKEND`` as set, or None when it is not set."""
    if _ENVIRON_DATA is not None and _ENCODED_VARIABLE is not None:
        raw = _ENVIRON_DATA.get(_ENCODED_VARIABLE)
        return None if raw is None else os.environ.decodevalue(raw)
    return os.environ.get(BACKEND_VARIABLE)


def _environment_backend() -> str | None:
    """The backend ``FFFCORE_BACKEND`` names, stripped of surrounding blanks; None when unset or blank."""
    value = _raw_environment_backend()
    return None if value is None else (value.strip() or None)


#: Automatic choices by (array type, device, dtype, activation, parameters' array type and device,
#: backward, registry generation).
_automatic: dict[tuple[Any, ...], Backend] = {}


def automatic_backend(kind: str, device: str, params: FFFParams | None, *, backward: bool = False) -> Backend:
    """The available backend of highest priority for ``kind`` arrays on ``device`` and these parameters;
    with ``backward``, among those that declare it (``fffcore.fff_backward``)."""
    generation = registry().generation
    if params is None:
        key: tuple[Any, ...] = (kind, device, "", "", "", "", backward, generation)
    else:
        params_kind = params.array_type
        params_on = array_device(params.w_in, params_kind)
        key = (kind, device, params.dtype, params.activation, params_kind, params_on, backward, generation)
    backend = _automatic.get(key)
    if backend is None:
        backend = _choose_automatically(*key[:-1])
        _automatic[key] = backend
    return backend


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
