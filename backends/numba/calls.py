"""From a backend call to a kernel call: convert ``x``, pick the arguments, stay thread-safe.

Importing this module imports numba (through :mod:`.kernels`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from fffcore.arrays import numpy_rows
from fffcore.backends.numba import kernels
from fffcore.backends.numba.activations import ACTIVATION_CODES
from fffcore.params import FFFParams

# Numba's "workqueue" threading layer (the fallback when neither TBB nor
# OpenMP loads) aborts when two threads enter parallel code at once; the
# OpenMP and TBB layers are thread-safe. Until a parallel kernel has run, the
# layer is unknown, so calls that may run parallel code serialise until then,
# and for good under workqueue; the serial kernels never need the lock.
_THREAD_SAFE_LAYERS = ("tbb", "omp")
_serial_lock = threading.Lock()
_layer_is_thread_safe = False

_no_bias: dict[str, np.ndarray] = {}


def cmm_rows(x: Any, params: FFFParams) -> tuple[np.ndarray, np.ndarray]:
    """logits (B, K, D+1) in ``params.dtype`` and nodes (B, K, D+1) int64 for (B, d_in) ``x``."""
    rows = _read_only_rows(x, params.dtype)
    return _guarded(lambda: kernels.run_cmm(rows, params.w_in, *_bias(params)), len(rows))


def fff_rows(x: Any, params: FFFParams) -> np.ndarray:
    """(B, d_out) FFF output in ``params.dtype`` for (B, d_in) ``x``."""
    rows = _read_only_rows(x, params.dtype)
    if 0 < rows.shape[0] <= kernels.SMALL_MAX_ROWS:  # the row-by-row kernel: serial, no set-up
        return kernels._fff_rows_small(rows, *_small_arguments(params))
    code = ACTIVATION_CODES[params.activation]
    return _guarded(lambda: kernels.run_fff(rows, params.w_in, *_bias(params), params.w_out, code), len(rows))


def prepare_fff_rows(params: FFFParams) -> Callable[[Any, FFFParams], np.ndarray]:
    """:func:`fff_rows` with the small-batch kernel bound to these parameters (see ``Backend.prepare_fff``).

    At one row the kernel takes about 3 us, and numba's dispatcher spends a fair part of it
    re-deriving the argument types of every call. Here the kernel is compiled (or loaded from
    the disk cache) once for exactly the types a small call passes: read-only, aligned,
    C-contiguous (B, d_in) rows of the layer's dtype and the layer's own arrays, and that
    compiled version is called directly. Every call is checked to be of exactly those types
    first; anything else goes through :func:`fff_rows`.
    """
    w_in, b_in, has_bias, w_out, code = _small_arguments(params)
    dtype = np.dtype(params.dtype)
    small_max = kernels.SMALL_MAX_ROWS
    compiled: list[Any] = []  # filled at the first small call: large batches never need it

    def call(x: Any, params: FFFParams) -> np.ndarray:
        if (
            type(x) is np.ndarray
            and x.ndim == 2
            and x.dtype == dtype
            and 0 < x.shape[0] <= small_max
            and x.flags.c_contiguous
            and x.flags.aligned
        ):
            rows = x.view()
            rows.flags.writeable = False
            if not compiled:
                compiled.append(_compiled_small_kernel(rows, w_in, b_in, has_bias, w_out, code))
            return compiled[0](rows, w_in, b_in, has_bias, w_out, code)
        return fff_rows(x, params)

    return call


def _compiled_small_kernel(*arguments: Any) -> Callable[..., np.ndarray]:
    """The machine code of the row-by-row kernel for exactly these arguments' types (compiled or
    loaded from the disk cache now), callable without numba's per-call type dispatch."""
    import numba

    signature = tuple(numba.typeof(argument) for argument in arguments)
    kernels._fff_rows_small.compile(signature)
    return kernels._fff_rows_small.overloads[signature].entry_point


def _read_only_rows(x: Any, dtype: str) -> np.ndarray:
    """C-contiguous rows of ``dtype`` (one copy when needed), as a read-only view.

    Read-only so every call has the same Numba signature as the (read-only)
    parameters, whatever the flags of the caller's array: one compilation per
    dtype instead of two, and the kernels could not write to ``x`` anyway.
    """
    rows = numpy_rows(x, dtype).view()
    rows.flags.writeable = False
    return rows


_small: weakref.WeakKeyDictionary[FFFParams, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def _small_arguments(params: FFFParams) -> tuple[Any, ...]:
    """``(w_in, b_in, has_bias, w_out, code)`` for the row-by-row kernel, looked up once per parameters."""
    found = _small.get(params)
    if found is None:
        found = (params.w_in, *_bias(params), params.w_out, ACTIVATION_CODES[params.activation])
        _small[params] = found
    return found


def _bias(params: FFFParams) -> tuple[np.ndarray, bool]:
    """``(b_in, True)``, or a read-only (1, 1) stand-in and False for a layer without bias."""
    if params.b_in is not None:
        return params.b_in, True
    stand_in = _no_bias.get(params.dtype)
    if stand_in is None:
        stand_in = np.zeros((1, 1), params.dtype)
        stand_in.flags.writeable = False
        _no_bias[params.dtype] = stand_in
    return stand_in, False


def _guarded(call: Any, rows: int) -> Any:
    """Run ``call``; under the lock when it may enter parallel code on a layer not known to be thread-safe."""
    global _layer_is_thread_safe
    if _layer_is_thread_safe or rows < kernels.PARALLEL_MIN_ROWS:  # the serial kernels share no state
        return call()
    with _serial_lock:
        result = call()
        _layer_is_thread_safe = _threading_layer() in _THREAD_SAFE_LAYERS
        return result


def _threading_layer() -> str:
    """Numba's threading layer, or "" before any parallel kernel has run (numba answers only then)."""
    import numba

    try:
        return str(numba.threading_layer())
    except ValueError:
        return ""
