"""From a backend call to a kernel call: convert ``x``, pick the arguments, stay thread-safe.

Importing this module imports numba (through :mod:`.kernels`).
"""

from __future__ import annotations

import threading
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
    code = ACTIVATION_CODES[params.activation]
    return _guarded(lambda: kernels.run_fff(rows, params.w_in, *_bias(params), params.w_out, code), len(rows))


def _read_only_rows(x: Any, dtype: str) -> np.ndarray:
    """C-contiguous rows of ``dtype`` (one copy when needed), as a read-only view.

    Read-only so every call has the same Numba signature as the (read-only)
    parameters, whatever the flags of the caller's array: one compilation per
    dtype instead of two, and the kernels could not write to ``x`` anyway.
    """
    rows = numpy_rows(x, dtype).view()
    rows.flags.writeable = False
    return rows


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
