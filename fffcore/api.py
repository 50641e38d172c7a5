"""The public entry points ``fff`` and ``cmm``: look at ``x`` once, take its plan, run it."""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

from fffcore.arrays import inspect_array
from fffcore.params import FFFParams
from fffcore.plan import plan_for


class CMMResult(NamedTuple):
    """Result of :func:`cmm`: ``logits`` (..., K, D+1) in the parameters' dtype, ``nodes`` (..., K, D+1) int64."""

    logits: Any
    nodes: Any


def cmm(x: Any, params: FFFParams, backend: str | None = None) -> CMMResult:
    """Conditional matrix multiplication: the path of every row through every tree.

    Args:
        x: (..., d_in) real floating array (numpy, torch or cupy; lists become
            numpy). Any leading dimensions, including zero-length ones. A Dask array
            gives lazy Dask arrays (:mod:`fffcore.dask_arrays`).
        params: the layer.
        backend: a backend name; None follows :mod:`fffcore.plan`.

    Returns:
        :class:`CMMResult` with ``logits`` (..., K, D+1) in ``params.dtype`` and
        ``nodes`` (..., K, D+1) int64, in the array type of ``x`` and on its device
        (see :mod:`fffcore.bridging` for arrays a backend takes through a bridge).
    """
    x, kind, device = inspect_array(x)
    if kind == "dask":
        from fffcore.dask_arrays import dask_cmm

        return CMMResult(*dask_cmm(x, params, backend))
    if kind == "torch":
        torch = sys.modules["torch"]  # x is a tensor, so torch is imported
        if torch.compiler.is_compiling() or torch._C._is_tracing():
            raise _tracing_error("cmm")
    return CMMResult(*plan_for(x, kind, device, params, backend).cmm(x, params))


def fff(x: Any, params: FFFParams, backend: str | None = None) -> Any:
    """The FFF layer: ``sum_k sum_l act(logit_kl) * w_out[k, node_kl]`` for every row.

    Args:
        x: (..., d_in) real floating array (numpy, torch or cupy; lists become numpy).
            A Dask array gives a lazy Dask array (:mod:`fffcore.dask_arrays`).
        params: the layer.
        backend: a backend name; None follows :mod:`fffcore.plan`.

    Returns:
        (..., d_out) array in ``params.dtype``, in the array type of ``x`` and on its device.
        The result never carries an autograd graph: for gradients see :func:`fffcore.fff_backward`
        and :class:`fffcore.torch.FFFLayer`.
    """
    x, kind, device = inspect_array(x)
    if kind == "dask":
        from fffcore.dask_arrays import dask_fff

        return dask_fff(x, params, backend)
    if kind == "torch":
        torch = sys.modules["torch"]  # x is a tensor, so torch is imported
        if torch.compiler.is_compiling() or torch._C._is_tracing():
            raise _tracing_error("fff")
    return plan_for(x, kind, device, params, backend).fff(x, params)


def _tracing_error(name: str) -> RuntimeError:
    """A clear error instead of a graph that would replay this call's result as a constant.

    ``torch.jit.trace`` records torch operations only; the numpy and numba work behind a
    bridged call would vanish from the trace. The custom ops ``torch.ops.fffcore.fff`` and
    ``torch.ops.fffcore.cmm`` (and :class:`fffcore.torch.FFFInference`, which calls them while
    tracing or compiling) are recorded as one operation each and run anew on every input.
    """
    return RuntimeError(
        f"fffcore.{name} cannot be traced or compiled by torch (jit.trace, compile, export): its result "
        f"would be recorded as a constant. Call torch.ops.fffcore.{name} (import fffcore.torch to register "
        "it) or use fffcore.torch.FFFInference, which torch records as one operation."
    )
