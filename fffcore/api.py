"""The public entry points ``fff`` and ``cmm``: validate, select a backend, dispatch."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fffcore.arrays import array_type, masked_array_error, require_dense_tensor
from fffcore.backend import Backend
from fffcore.bridging import Bridge, array_device, bridged_params, describe_device, find_bridge
from fffcore.params import FFFParams
from fffcore.selection import _forget_hooks, automatic_backend, named_backend, requested_backend
from fffcore.spec import FLOATING_DTYPES, dtype_name, is_floating


class CMMResult(NamedTuple):
    """Result of :func:`cmm`: ``logits`` (..., K, D+1) in the parameters' dtype, ``nodes`` (..., K, D+1) int64."""

    logits: Any
    nodes: Any


@dataclass(frozen=True)
class Dispatch:
    """Where one call goes: the backend, the bridge ``x`` crosses (None: taken as it is), and the
    parameters bridged to the backend's array type (None: the call's own parameters, as they are;
    kept out of the cache so that it never holds the parameters it is keyed on)."""

    backend: Backend
    bridge: Bridge | None
    bridged_params: FFFParams | None
    #: ``(x, params) -> y``: the backend's prepared call (:meth:`Backend.prepare_fff`) or its ``fff``.
    fff: Callable[[Any, FFFParams], Any]


def cmm(x: Any, params: FFFParams, backend: str | None = None) -> CMMResult:
    """Conditional matrix multiplication: the path of every row through every tree.

    Args:
        x: (..., d_in) real floating array (numpy, torch or cupy; lists become
            numpy). Any leading dimensions, including zero-length ones. A Dask array
            gives lazy Dask arrays (:mod:`fffcore.dask_arrays`).
        params: the layer.
        backend: a backend name; None follows :mod:`fffcore.selection`.

    Returns:
        :class:`CMMResult` with ``logits`` (..., K, D+1) in ``params.dtype`` and
        ``nodes`` (..., K, D+1) int64, in the array type of ``x`` and on its device
        (see :mod:`fffcore.bridging` for arrays a backend takes through a bridge).
    """
    kind = array_type(x)
    if kind == "dask":
        from fffcore.dask_arrays import dask_cmm

        return CMMResult(*dask_cmm(x, params, backend))
    x = _as_array(x)
    if kind == "torch":
        _refuse_torch_tracing("cmm")
    return run_cmm(x, params, backend)


def fff(x: Any, params: FFFParams, backend: str | None = None) -> Any:
    """The FFF layer: ``sum_k sum_l act(logit_kl) * w_out[k, node_kl]`` for every row.

    Args:
        x: (..., d_in) real floating array (numpy, torch or cupy; lists become numpy).
            A Dask array gives a lazy Dask array (:mod:`fffcore.dask_arrays`).
        params: the layer.
        backend: a backend name; None follows :mod:`fffcore.selection`.

    Returns:
        (..., d_out) array in ``params.dtype``, in the array type of ``x`` and on its device.
        The result never carries an autograd graph: FFF layers here are for inference.
    """
    kind = array_type(x)
    if kind == "dask":
        from fffcore.dask_arrays import dask_fff

        return dask_fff(x, params, backend)
    x = _as_array(x)
    if kind == "torch":
        _refuse_torch_tracing("fff")
    return run_fff(x, params, backend)


def run_fff(x: Any, params: FFFParams, backend: str | None = None) -> Any:
    """:func:`fff` for an array ``x``, without the tracing check (the torch custom op calls this)."""
    dispatch = dispatch_for(x, params, backend)
    bridge = dispatch.bridge
    rows = x if bridge is None else bridge.to_target(x, params.dtype)
    taken = dispatch.bridged_params or params
    if rows.ndim == 2:  # already (B, d_in): no reshapes (a few tenths of a microsecond at one row)
        y = dispatch.fff(rows, taken)
    else:
        leading = tuple(rows.shape[:-1])
        y = dispatch.fff(rows.reshape(-1, params.d_in), taken).reshape(leading + (params.d_out,))
    return y if bridge is None else bridge.to_source(y)


def run_cmm(x: Any, params: FFFParams, backend: str | None = None) -> CMMResult:
    """:func:`cmm` for an array ``x``, without the tracing check (the torch custom op calls this)."""
    dispatch = dispatch_for(x, params, backend)
    bridge = dispatch.bridge
    rows = x if bridge is None else bridge.to_target(x, params.dtype)
    tail = tuple(rows.shape[:-1]) + (params.trees, params.depth + 1)
    logits, nodes = dispatch.backend.cmm(rows.reshape(-1, params.d_in), dispatch.bridged_params or params)
    logits, nodes = logits.reshape(tail), nodes.reshape(tail)
    if bridge is not None:
        logits, nodes = bridge.to_source(logits), bridge.to_source(nodes)
    return CMMResult(logits, nodes)


def dispatch_for(x: Any, params: FFFParams, name: str | None) -> Dispatch:
    """Check the call, choose the backend, and find the bridges ``x`` and ``params`` need.

    The decision depends only on the parameters, the requested name and ``x``'s array type and
    device, so it is made once per combination and kept as long as the parameters live.
    """
    if not isinstance(params, FFFParams):
        raise TypeError(f"params: expected FFFParams, got {type(params).__name__}")
    if params._versions is not None:  # torch parameters: refuse ones written since construction
        params.require_unchanged()
    shape = x.shape
    if len(shape) < 1:
        raise ValueError(f"x: expected an array of shape (..., {params.d_in}), got a 0-D array")
    if shape[-1] != params.d_in:
        raise ValueError(f"x: expected shape (..., {params.d_in}) to match params.d_in, got {tuple(shape)}")
    x_dtype = dtype_name(x.dtype)
    if not is_floating(x_dtype):
        raise TypeError(f"x: expected a real floating dtype {FLOATING_DTYPES}, got {x_dtype}")
    requested = name
    name = requested_backend(name)
    kind = array_type(x)
    if kind == "torch":
        require_dense_tensor(x, "x")
    device = array_device(x, kind)
    key = (name, kind, device, _registry_generation[0])
    dispatches = params._dispatches
    found = dispatches.get(key)
    if found is not None:
        return found
    dispatch = _new_dispatch(x, params, name, kind, device, from_argument=requested is not None)
    dispatches[key] = dispatch
    return dispatch


def _new_dispatch(
    x: Any, params: FFFParams, name: str | None, kind: str, device: str, *, from_argument: bool
) -> Dispatch:
    if kind == "numpy.ma":
        raise masked_array_error("x")
    if name is None:
        backend = automatic_backend(kind, device, params)
    else:
        backend = named_backend(name, from_argument=from_argument)
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
        taken = bridged_params(params, _bridge_to(backend, params.w_in, params_kind, "params"))
    prepared = backend.prepare_fff(taken or params)
    return Dispatch(backend, bridge, taken, prepared if prepared is not None else backend.fff)


#: Bumped whenever the registry changes, so that decisions kept on parameters objects made
#: under an earlier registry are not found again.
_registry_generation = [0]


def _forget_dispatches() -> None:
    _registry_generation[0] += 1


_forget_hooks.append(_forget_dispatches)


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


def _refuse_torch_tracing(name: str) -> None:
    """A clear error instead of a graph that would replay this call's result as a constant.

    ``torch.jit.trace`` records torch operations only; the numpy and numba work behind a
    bridged call would vanish from the trace. The custom ops ``torch.ops.fffcore.fff`` and
    ``torch.ops.fffcore.cmm`` (and :class:`fffcore.torch.FFFInference`, which calls them while
    tracing or compiling) are recorded as one operation each and run anew on every input.
    """
    torch = sys.modules["torch"]  # only reached with a torch tensor in hand, so torch is imported
    if torch.compiler.is_compiling() or torch._C._is_tracing():
        raise RuntimeError(
            f"fffcore.{name} cannot be traced or compiled by torch (jit.trace, compile, export): its result "
            f"would be recorded as a constant. Call torch.ops.fffcore.{name} (import fffcore.torch to register "
            "it) or use fffcore.torch.FFFInference, which torch records as one operation."
        )


def _as_array(x: Any) -> Any:
    if type(x) is np.ndarray or array_type(x) in ("torch", "cupy"):
        return x
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    try:
        return np.asarray(x)
    except Exception as error:  # ragged lists and the like
        raise TypeError(f"x: expected an array, got {type(x).__name__}: {error}") from error


def backward_dispatch(x: Any, params: FFFParams, name: str | None) -> Dispatch:
    """Where :func:`fffcore.fff_backward` goes: the forward's backend when it declares ``backward``; a
    backend named (by argument, ``use_backend`` or ``FFFCORE_BACKEND``) that does not is an error; else the
    available backend of highest priority that declares it and takes ``x`` and the layer."""
    dispatch = dispatch_for(x, params, name)
    if dispatch.backend.backward:
        return dispatch
    if requested_backend(name) is not None:
        raise TypeError(
            f"backend {dispatch.backend.name!r} does not implement the backward pass; "
            "`fff backends` lists the backends that do (backward: yes)"
        )
    kind = array_type(x)
    return dispatch_for(x, params, automatic_backend(kind, array_device(x, kind), params, backward=True).name)
