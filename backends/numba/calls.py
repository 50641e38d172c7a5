"""From a backend call to a kernel call: pick the kernel and the threads, convert ``x``, stay thread-safe.

Which kernel, by batch size (rows; the numbers are in :mod:`.sizes`, the measurements behind
them in ``benchmarks/NOTES.md``, section 12):

- Below ``BLOCKED_MIN_ROWS``: the row-group kernels (four rows walked side by side).
- From there: the blocked walk (rows grouped by node, sorted by subtree). ``fff`` and ``cmm``
  walk alike at every size, so ``cmm`` reports the path ``fff`` takes.
- Threads: from ``PARALLEL_MIN_ROWS`` (and at least two blocks for the blocked walk) a call runs
  on every thread while :data:`gate` is open, and from ``ALWAYS_PARALLEL_ROWS`` always. A
  parallel region costs a few microseconds when the cores are free, but every thread must reach
  its end, and on a busy machine a helper thread may first wait a scheduler time slice (several
  milliseconds) for a core. The parallel kernels count which thread ran each piece of work; a
  call whose helper threads did next to none of it closes the gate for a while (doubling while
  it repeats), and medium batches run serially until it reopens.

Importing this module imports numba (through :mod:`.kernels`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fffcore import forking
from fffcore.arrays import numpy_rows
from fffcore.backends.numba import kernels, sizes
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


class ParallelGate:
    """Whether a medium batch may use every thread now, learnt from the parallel calls before it.

    After each gated parallel call, :meth:`record` looks at how its pieces of work were shared:
    when one thread ran nearly all of them (the others ran less than a quarter of their fair
    share), the helpers were late (descheduled, or asleep and slow to wake) and the region only
    cost time, so the gate closes for :attr:`backoff_s`, which doubles while calls keep finding
    it so (up to :data:`MAX_BACKOFF_S`) and falls back to :data:`FIRST_BACKOFF_S` after a call
    that shared its work. Serial and parallel kernels give the same bits, so the gate changes
    only the time a call takes.
    """

    FIRST_BACKOFF_S = 0.05
    MAX_BACKOFF_S = 2.0

    def __init__(self) -> None:
        self.closed_until = 0.0
        self.backoff_s = self.FIRST_BACKOFF_S

    def is_open(self) -> bool:
        return time.monotonic() >= self.closed_until

    def record(self, workers: np.ndarray) -> bool:
        """Note a parallel call's ``workers`` counts; True when its helper threads were late."""
        counts = workers.tolist()  # a few entries: Python's sum and max beat numpy's set-up here
        pieces = sum(counts)
        if pieces < 2:  # nothing to share: says nothing about the helpers
            return False
        threads = len(counts)
        late = pieces - max(counts) < pieces * (threads - 1) / threads / 4
        if late:
            self.closed_until = time.monotonic() + self.backoff_s
            self.backoff_s = min(2 * self.backoff_s, self.MAX_BACKOFF_S)
        else:
            self.backoff_s = self.FIRST_BACKOFF_S
        return late


#: The one gate of this process: whether helper threads show up is a property of the machine's load.
gate = ParallelGate()


def _workers_size() -> int:
    """Entries of a ``workers`` array: one per thread numba may run (``NUMBA_NUM_THREADS``).

    A program that lowers the count with ``numba.set_num_threads`` leaves some entries at zero;
    the gate then judges the helpers against a larger fair share, which errs towards parallel.
    """
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def _use_threads(rows: int, minimum: int) -> bool:
    """Whether a call of ``rows`` rows runs on every thread (``minimum``: the kernel's own floor)."""
    if rows < minimum or rows < sizes.PARALLEL_MIN_ROWS or _workers_size() < 2 or forking.inherited("numba"):
        return False
    return rows >= sizes.ALWAYS_PARALLEL_ROWS or gate.is_open()


def _run(kernel: Callable[[np.ndarray | None], Any], rows: int, minimum: int, name: str, dtype: str) -> Any:
    """``kernel(workers)`` on every thread, or ``kernel(None)`` on this one (see :func:`_use_threads`)."""
    global _layer_is_thread_safe
    if not _use_threads(rows, minimum):
        return _first_call(name + " serial", dtype, lambda: kernel(None))
    forking.note_started("numba")
    workers = np.zeros(_workers_size(), np.int64)
    if _layer_is_thread_safe:
        result = _first_call(name + " parallel", dtype, lambda: kernel(workers))
    else:  # the first parallel calls: one at a time until the threading layer is known to be safe
        with _serial_lock:
            result = _first_call(name + " parallel", dtype, lambda: kernel(workers))
            _layer_is_thread_safe = _threading_layer() in _THREAD_SAFE_LAYERS
    if rows < sizes.ALWAYS_PARALLEL_ROWS:
        gate.record(workers)
    return result


def cmm_rows(x: Any, params: FFFParams) -> tuple[np.ndarray, np.ndarray]:
    """logits (B, K, D+1) in ``params.dtype`` and nodes (B, K, D+1) int64 for (B, d_in) ``x``.

    The same kernels' walks as :func:`fff_rows` at every batch size, so the nodes are the path
    ``fff`` takes (near a tie, another walk's rounding could take the other branch).
    """
    rows = _read_only_rows(x, params.dtype)
    count = rows.shape[0]
    w_in, b_in, has_bias = _layer_arguments(params)[:3]
    if count < sizes.BLOCKED_MIN_ROWS:

        def groups(workers: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
            if workers is None:
                return kernels._cmm_rows_serial(rows, w_in, b_in, has_bias)
            return kernels.run_parallel(kernels._cmm_rows_parallel, rows, w_in, b_in, has_bias, workers)

        return _run(groups, count, sizes.PARALLEL_MIN_ROWS, "cmm rows", params.dtype)
    blocked = lambda workers: kernels.run_cmm(rows, w_in, b_in, has_bias, workers=workers)  # noqa: E731
    return _run(blocked, count, sizes.DEFAULT_BLOCK + 1, "cmm blocked", params.dtype)


def fff_rows(x: Any, params: FFFParams) -> np.ndarray:
    """(B, d_out) FFF output in ``params.dtype`` for (B, d_in) ``x``."""
    rows = _read_only_rows(x, params.dtype)
    count = rows.shape[0]
    arguments = _layer_arguments(params)
    if count < sizes.BLOCKED_MIN_ROWS:
        groups = lambda workers: _row_groups(rows, arguments, workers)  # noqa: E731
        return _run(groups, count, sizes.PARALLEL_MIN_ROWS, "fff rows", params.dtype)
    return _run(
        lambda workers: kernels.run_fff(rows, *arguments, workers=workers),
        count,
        sizes.DEFAULT_BLOCK + 1,
        "fff blocked",
        params.dtype,
    )


def _row_groups(rows: np.ndarray, arguments: tuple[Any, ...], workers: np.ndarray | None) -> np.ndarray:
    """The row-group kernel, serial (``workers`` None) or parallel."""
    if workers is None:
        return kernels._fff_rows_serial(rows, *arguments)
    return kernels.run_parallel(kernels._fff_rows_parallel, rows, *arguments, workers)


def warm_up(dtypes: Sequence[str]) -> None:
    """Compile (or load from the disk cache) every kernel a call in these dtypes can use: for
    ``fff`` and ``cmm`` the row-group kernels (for ``fff`` also the direct entry point small
    calls use) and the blocked walk, each serial and parallel.
    Asked for, so no compiling notice is shown."""
    for dtype in dtypes:
        for kernel in ("fff rows", "cmm rows", "fff blocked", "cmm blocked"):
            for variant in ("", " serial", " parallel"):
                _first_calls_seen.add((kernel + variant, dtype))
        params = FFFParams.random(8, 4, 3, dtype=dtype, seed=0)
        arguments = _layer_arguments(params)
        prepared = prepare_fff_rows(params)
        prepared(np.zeros((1, params.d_in), dtype), params)
        for rows in (1, sizes.BLOCKED_MIN_ROWS):
            x = _read_only_rows(np.zeros((rows, params.d_in), dtype), dtype)
            workers = np.zeros(_workers_size(), np.int64)
            _row_groups(x, arguments, None)
            _row_groups(x, arguments, workers)
            kernels.run_fff(x, *arguments)
            kernels.run_fff(x, *arguments, workers=workers)
            kernels._cmm_rows_serial(x, *arguments[:3])
            kernels.run_parallel(kernels._cmm_rows_parallel, x, *arguments[:3], workers)
            kernels.run_cmm(x, *arguments[:3])
            kernels.run_cmm(x, *arguments[:3], workers=workers)


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
    """:func:`fff_rows` with the serial row-group kernel bound to these parameters (see ``Backend.prepare_fff``).

    At one row the kernel takes about 3 us, and numba's dispatcher spends a fair part of it
    re-deriving the argument types of every call. Here the kernel is compiled (or loaded from
    the disk cache) once for exactly the types a small call passes: read-only, aligned,
    C-contiguous (B, d_in) rows of the layer's dtype and the layer's own arrays, and that
    compiled version is called directly. Every call is checked to be of exactly those types
    first; anything else goes through :func:`fff_rows`.
    """
    w_in, b_in, has_bias, w_out, code = _layer_arguments(params)
    dtype = np.dtype(params.dtype)
    small_max = sizes.PARALLEL_MIN_ROWS - 1  # calls that would run serially anyway
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
                kernel = _first_call("fff rows serial", params.dtype, lambda: _compiled_small_kernel(*arguments))
                compiled.append(kernel)
            return compiled[0](rows, w_in, b_in, has_bias, w_out, code)
        return fff_rows(x, params)

    return call


def _compiled_small_kernel(*arguments: Any) -> Callable[..., np.ndarray]:
    """The machine code of the serial row-group kernel for exactly these arguments' types (compiled or
    loaded from the disk cache now), callable without numba's per-call type dispatch."""
    import numba

    signature = tuple(numba.typeof(argument) for argument in arguments)
    kernels._fff_rows_serial.compile(signature)
    return kernels._fff_rows_serial.overloads[signature].entry_point


def _read_only_rows(x: Any, dtype: str) -> np.ndarray:
    """C-contiguous rows of ``dtype`` (one copy when needed), as a read-only view.

    Read-only so every call has the same Numba signature as the (read-only)
    parameters, whatever the flags of the caller's array: one compilation per
    dtype instead of two, and the kernels could not write to ``x`` anyway.
    """
    rows = numpy_rows(x, dtype).view()
    rows.flags.writeable = False
    return rows


_layer: weakref.WeakKeyDictionary[FFFParams, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def _layer_arguments(params: FFFParams) -> tuple[Any, ...]:
    """``(w_in, b_in, has_bias, w_out, code)`` for the fff kernels, looked up once per parameters."""
    found = _layer.get(params)
    if found is None:
        found = (params.w_in, *_bias(params), params.w_out, ACTIVATION_CODES[params.activation])
        _layer[params] = found
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


def _threading_layer() -> str:
    """Numba's threading layer, or "" before any parallel kernel has run (numba answers only then)."""
    import numba

    try:
        return str(numba.threading_layer())
    except ValueError:
        return ""
