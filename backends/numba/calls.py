"""From a backend call to a kernel call: convert ``x``, pick the arguments, stay thread-safe.

Importing this module imports numba (through :mod:`.kernels`).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
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


#: Seconds a kernel's first call in this process may take before the user is told it is compiling.
NOTICE_AFTER_S = 1.0
_first_calls_seen: set[tuple[str, str]] = set()
logger = logging.getLogger("fffcore.backends.numba")


def cmm_rows(x: Any, params: FFFParams) -> tuple[np.ndarray, np.ndarray]:
    """logits (B, K, D+1) in ``params.dtype`` and nodes (B, K, D+1) int64 for (B, d_in) ``x``."""
    rows = _read_only_rows(x, params.dtype)
    return _guarded(lambda: kernels.run_cmm(rows, params.w_in, *_bias(params)), len(rows), "cmm", params.dtype)


def fff_rows(x: Any, params: FFFParams) -> np.ndarray:
    """(B, d_out) FFF output in ``params.dtype`` for (B, d_in) ``x``."""
    rows = _read_only_rows(x, params.dtype)
    if 0 < rows.shape[0] <= kernels.SMALL_MAX_ROWS:  # the row-by-row kernel: serial, no set-up
        if ("fff row-by-row", params.dtype) not in _first_calls_seen:
            return _first_call(
                "fff row-by-row", params.dtype, lambda: kernels._fff_rows_small(rows, *_small_arguments(params))
            )
        return kernels._fff_rows_small(rows, *_small_arguments(params))
    code = ACTIVATION_CODES[params.activation]
    return _guarded(
        lambda: kernels.run_fff(rows, params.w_in, *_bias(params), params.w_out, code), len(rows), "fff", params.dtype
    )


def warm_up(dtypes: Sequence[str]) -> None:
    """Compile (or load from the disk cache) every kernel a call in these dtypes can use: the
    row-by-row kernels, the serial walk and the parallel one, for ``fff`` and ``cmm``. Asked for,
    so no compiling notice is shown."""
    for dtype in dtypes:
        for kernel in ("fff row-by-row", "fff serial", "fff parallel", "cmm serial", "cmm parallel"):
            _first_calls_seen.add((kernel, dtype))
        params = FFFParams.random(8, 4, 3, dtype=dtype, seed=0)
        prepared = prepare_fff_rows(params)
        for rows in (1, kernels.SMALL_MAX_ROWS + 1, kernels.PARALLEL_MIN_ROWS):
            x = np.zeros((rows, params.d_in), dtype)
            prepared(x, params)
            fff_rows(x, params)
            cmm_rows(x, params)


def cache_location() -> str:
    """Where numba keeps the compiled kernels between processes."""
    import numba

    if numba.config.CACHE_DIR:
        return str(numba.config.CACHE_DIR)
    folder = Path(kernels.__file__).parent / "__pycache__"
    return f"{folder} (numba's user cache folder where that is not writable)"


def _first_call(what: str, dtype: str, call: Callable[[], Any]) -> Any:
    """Run ``call``, the first of kernel ``what`` in ``dtype`` here; if it takes long (numba is
    compiling it, no disk cache yet), say so once while it runs, instead of stalling silently."""
    key = (what, dtype)
    if key in _first_calls_seen:
        return call()
    _first_calls_seen.add(key)
    timer = threading.Timer(NOTICE_AFTER_S, _announce_compiling, (what, dtype))
    timer.daemon = True
    timer.start()
    try:
        return call()
    finally:
        timer.cancel()


def _announce_compiling(what: str, dtype: str) -> None:
    logger.warning(
        "fffcore: numba is compiling its %s %s kernel on first use; this takes several seconds once, and "
        "later processes load it from the disk cache in %s. `fff warmup` compiles every kernel ahead of time.",
        dtype,
        what,
        cache_location(),
    )


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
                arguments = (rows, w_in, b_in, has_bias, w_out, code)
                compiled.append(_first_call("fff row-by-row", params.dtype, lambda: _compiled_small_kernel(*arguments)))
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


def _guarded(call: Any, rows: int, operation: str, dtype: str) -> Any:
    """Run ``call``; under the lock when it may enter parallel code on a layer not known to be thread-safe."""
    global _layer_is_thread_safe
    parallel = rows >= kernels.PARALLEL_MIN_ROWS
    kernel = f"{operation} {'parallel' if parallel else 'serial'}"
    if (kernel, dtype) not in _first_calls_seen:
        inner = call
        call = lambda: _first_call(kernel, dtype, inner)  # noqa: E731
    if _layer_is_thread_safe or not parallel:  # the serial kernels share no state
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
