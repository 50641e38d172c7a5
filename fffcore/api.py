"""The public entry points ``fff`` and ``cmm``: validate, select a backend, dispatch."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from fffcore.arrays import array_type
from fffcore.backend import Backend
from fffcore.params import FFFParams
from fffcore.selection import select_backend
from fffcore.spec import FLOATING_DTYPES, dtype_name, is_floating


class CMMResult(NamedTuple):
    """Result of :func:`cmm`: ``logits`` (..., K, D+1) in the parameters' dtype, ``nodes`` (..., K, D+1) int64."""

    logits: Any
    nodes: Any


def cmm(x: Any, params: FFFParams, backend: str | None = None) -> CMMResult:
    """Conditional matrix multiplication: the path of every row through every tree.

    Args:
        x: (..., d_in) real floating array (numpy, torch or cupy; lists become
            numpy). Any leading dimensions, including zero-length ones.
        params: the layer.
        backend: a backend name; None follows :mod:`fffcore.selection`.

    Returns:
        :class:`CMMResult` with ``logits`` (..., K, D+1) in ``params.dtype`` and
        ``nodes`` (..., K, D+1) int64, in the array type of ``x``.
    """
    rows, leading, chosen = _prepare(x, params, backend)
    logits, nodes = chosen.cmm(rows, params)
    tail = (params.trees, params.depth + 1)
    return CMMResult(logits.reshape(leading + tail), nodes.reshape(leading + tail))


def fff(x: Any, params: FFFParams, backend: str | None = None) -> Any:
    """The FFF layer: ``sum_k sum_l act(logit_kl) * w_out[k, node_kl]`` for every row.

    Args:
        x: (..., d_in) real floating array (numpy, torch or cupy; lists become numpy).
        params: the layer.
        backend: a backend name; None follows :mod:`fffcore.selection`.

    Returns:
        (..., d_out) array in ``params.dtype``, in the array type of ``x``.
    """
    rows, leading, chosen = _prepare(x, params, backend)
    return chosen.fff(rows, params).reshape(leading + (params.d_out,))


def _prepare(x: Any, params: FFFParams, name: str | None) -> tuple[Any, tuple[int, ...], Backend]:
    """Check the call, choose the backend, and flatten ``x`` to (B, d_in)."""
    if not isinstance(params, FFFParams):
        raise TypeError(f"params: expected FFFParams, got {type(params).__name__}")
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        x = _as_numpy(x)
    shape = tuple(x.shape)
    if len(shape) < 1:
        raise ValueError(f"x: expected an array of shape (..., {params.d_in}), got a 0-D array")
    if shape[-1] != params.d_in:
        raise ValueError(f"x: expected shape (..., {params.d_in}) to match params.d_in, got {shape}")
    x_dtype = dtype_name(x.dtype)
    if not is_floating(x_dtype):
        raise TypeError(f"x: expected a real floating dtype {FLOATING_DTYPES}, got {x_dtype}")

    backend = select_backend(x, name)
    kind = array_type(x)
    if kind not in backend.array_types:
        raise TypeError(f"x: backend {backend.name!r} accepts {', '.join(backend.array_types)} arrays, got {kind}")
    if params.array_type not in backend.array_types:
        raise TypeError(
            f"params: backend {backend.name!r} accepts {', '.join(backend.array_types)} arrays, "
            f"got {params.array_type} parameters"
        )
    if params.dtype not in backend.dtypes:
        raise TypeError(f"params: backend {backend.name!r} computes in {', '.join(backend.dtypes)}, got {params.dtype}")
    if params.activation not in backend.activations:
        raise ValueError(
            f"params: backend {backend.name!r} implements {', '.join(backend.activations)}, "
            f"got activation {params.activation!r}"
        )
    leading = shape[:-1]
    return x.reshape(-1, params.d_in), leading, backend


def _as_numpy(x: Any) -> np.ndarray:
    try:
        return np.asarray(x)
    except Exception as error:  # ragged lists and the like
        raise TypeError(f"x: expected an array, got {type(x).__name__}: {error}") from error
