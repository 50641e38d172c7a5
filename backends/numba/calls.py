"""From a backend call to a kernel call: pick the kernel and the threads, convert ``x``, stay thread-safe.

Which kernel, by batch size (rows; the numbers are in :mod:`.sizes`, the measurements behind
them in ``benchmarks/NOTES.md``, section 12):

- Below ``BLOCKED_MIN_ROWS``: the row-group kernels (four rows walked side by side).
- From there: the blocked walk (rows grouped by node, sorted by subtree). ``fff`` and ``cmm``
  walk alike at every size, so ``cmm`` reports the path ``fff`` takes.

Threads: below ``PARALLEL_MIN_ROWS`` a call always runs on the calling thread. From there it runs
serially or on every thread, whichever has taken less time per row lately for this layer and a
batch of about this size (:class:`ThreadChoice`). On an idle machine that is every thread; but a
parallel region ends only when every thread has reached its end, and on a busy machine a helper
thread may first wait a scheduler time slice (several milliseconds) for a core, which costs more
than a medium batch saves. Both kernels give the same bits, so the choice changes only the time.

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
_threads_started = False

_no_bias: dict[str, np.ndarray] = {}


#: Seconds a kernel's first call in this process may take before the user is told it is compiling.
NOTICE_AFTER_S = 1.0
_first_calls_seen: set[tuple[str, str]] = set()
logger = logging.getLogger("fffcore.backends.numba")


class ThreadChoice:
    """Serial or parallel, per batch size (powers of two), for one layer: the faster lately.

    Each call's seconds per row are kept for its variant and size class, the last
    :data:`SAMPLES` of them, and each variant is judged by their mean without the largest (a
    mean, so that parallel calls that often wait a scheduler time slice on a busy machine count
    with their waits; without the largest, so that one call held up by something else, a page
    fault or a pause of the whole machine, does not decide for eight). A variant not yet timed
    is tried first (parallel before serial); then calls keep the current variant until the
    other's mean is lower by the margin :data:`SWITCH` (so that noise does not flip it back and
    forth). The other variant is tried again once :data:`RETRY_RATIO` times its expected call
    time has passed since it last ran (between :data:`RETRY_MIN_S` and :data:`RETRY_MAX_S`)
    and :data:`RETRY_CALLS` calls of the size class have run without it, so it is re-measured at
    a cost of about 5% of the time and of the calls at most (a layer called once per forward pass
    of a model, between other work, would otherwise flip variants on every call), and a machine
    whose load changes is followed within a fraction of a second or 20 calls. A parallel call
    that is the first of its size class, or right after serial ones, may find numba's helper
    threads asleep or not yet started (they sleep after a fraction of a millisecond without
    work), so it is not counted, and the next call runs parallel too and is.
    """

    SAMPLES = 8
    SWITCH = 0.9
    RETRY_RATIO = 20.0
    RETRY_MIN_S = 0.02
    RETRY_MAX_S = 0.25
    RETRY_CALLS = 20

    def __init__(self) -> None:
        self.per_row: dict[tuple[int, bool], float] = {}  # the mean of ``samples`` without the largest
        self.samples: dict[tuple[int, bool], list[float]] = {}
        self.last_run: dict[tuple[int, bool], float] = {}
        self.calls_without: dict[tuple[int, bool], int] = {}  # calls of the size class since the variant ran
        self.current: dict[int, bool] = {}  # size class -> whether calls now run parallel
        self.previous: dict[int, bool] = {}  # size class -> whether its last call ran parallel
        self.again: set[int] = set()  # size classes whose next call runs parallel (after a waking one)

    def parallel(self, rows: int) -> bool:
        """Whether a call of ``rows`` rows should run on every thread."""
        size = rows.bit_length()
        if size in self.again:
            self.again.discard(size)
            return True
        on_all = self.per_row.get((size, True))
        if on_all is None:
            return True
        on_one = self.per_row.get((size, False))
        if on_one is None:
            return False
        current = self.current.get(size, on_all <= on_one)
        if current and on_one < self.SWITCH * on_all:
            current = False
        elif not current and on_all < self.SWITCH * on_one:
            current = True
        self.current[size] = current
        other_per_row = on_one if current else on_all
        since = time.monotonic() - self.last_run.get((size, not current), 0.0)
        waited = min(self.RETRY_MAX_S, max(self.RETRY_MIN_S, self.RETRY_RATIO * other_per_row * rows))
        if since >= waited and self.calls_without.get((size, not current), 0) >= self.RETRY_CALLS:
            return not current
        return current

    def record(self, rows: int, parallel: bool, seconds: float) -> None:
        """Note that a call of ``rows`` rows took ``seconds`` serially or on every thread."""
        size = rows.bit_length()
        key = (size, parallel)
        woke_helpers = parallel and self.previous.get(size) is not True
        self.previous[size] = parallel
        self.last_run[key] = time.monotonic()
        self.calls_without[key] = 0
        self.calls_without[(size, not parallel)] = self.calls_without.get((size, not parallel), 0) + 1
        if woke_helpers:
            self.again.add(size)
            return
        samples = self.samples.setdefault(key, [])
        samples.append(seconds / rows)
        del samples[: -self.SAMPLES]
        kept = sorted(samples)[:-1] if len(samples) >= 3 else samples
        self.per_row[key] = sum(kept) / len(kept)


_choices: weakref.WeakKeyDictionary[FFFParams, ThreadChoice] = weakref.WeakKeyDictionary()


def thread_choice(params: FFFParams) -> ThreadChoice:
    """The :class:`ThreadChoice` of one layer (made on first use, dropped with the layer)."""
    found = _choices.get(params)
    if found is None:
        found = _choices[params] = ThreadChoice()
    return found


def _threads() -> int:
    """Threads numba may run (``NUMBA_NUM_THREADS``)."""
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def _run(kernel: Callable[[bool], Any], rows: int, params: FFFParams, name: str, serial_in_pool: bool) -> Any:
    """``kernel(parallel)``: on this thread below PARALLEL_MIN_ROWS rows, on one thread (numba
    given one, or a child forked from a process that ran the thread pool: see
    :mod:`fffcore.forking`), else as :func:`thread_choice` says, timed for it.
    ``serial_in_pool``: whether ``kernel(False)`` too enters numba's threading layer."""
    dtype = params.dtype
    if rows < sizes.PARALLEL_MIN_ROWS or _threads() < 2 or forking.inherited("numba"):
        return _in_pool(serial_in_pool, name + " serial", dtype, lambda: kernel(False))
    choice = thread_choice(params)
    parallel = choice.parallel(rows)
    what = name + (" parallel" if parallel else " serial")
    compiled = (what, dtype) in _first_calls_seen  # a kernel's first call may compile: not timed
    start = time.perf_counter()
    if parallel:
        forking.note_started("numba")
    result = _in_pool(parallel or serial_in_pool, what, dtype, lambda: kernel(parallel))
    if compiled:
        choice.record(rows, parallel, time.perf_counter() - start)
    return result


def _in_pool(enters_pool: bool, what: str, dtype: str, call: Callable[[], Any]) -> Any:
    """``call()`` (kernel ``what``); one at a time while it enters a threading layer not known to be thread-safe."""
    global _layer_is_thread_safe
    if not enters_pool or _layer_is_thread_safe:
        return _first_call(what, dtype, call)
    with _serial_lock:
        _start_threads()
        result = _first_call(what, dtype, call)
        _layer_is_thread_safe = _threading_layer() in _THREAD_SAFE_LAYERS
        return result


def cmm_rows(x: Any, params: FFFParams) -> tuple[np.ndarray, np.ndarray]:
    """logits (B, K, D+1) in ``params.dtype`` and nodes (B, K, D+1) int64 for (B, d_in) ``x``.

    The same kernels' walks as :func:`fff_rows` at every batch size, so the nodes are the path
    ``fff`` takes (near a tie, another walk's rounding could take the other branch).
    """
    rows = _read_only_rows(x, params.dtype)
    count = rows.shape[0]
    arguments = _layer_arguments(params)
    w_in, b_in, has_bias = arguments[:3]
    if count < sizes.BLOCKED_MIN_ROWS:
        groups = lambda parallel: kernels.cmm_rows.run(parallel, rows, w_in, b_in, has_bias)  # noqa: E731
        return _run(groups, count, params, "cmm rows", serial_in_pool=False)
    if not _blocked_walk_here(rows, params, arguments, kernels.cmm_rows):
        return _until_blocked(rows, arguments, "cmm", lambda: kernels.cmm_rows.serial(rows, w_in, b_in, has_bias))
    blocked = lambda parallel: kernels.run_cmm(rows, w_in, b_in, has_bias, parallel=parallel)  # noqa: E731
    return _run(blocked, count, params, "cmm blocked", serial_in_pool=True)


def fff_rows(x: Any, params: FFFParams) -> np.ndarray:
    """(B, d_out) FFF output in ``params.dtype`` for (B, d_in) ``x``."""
    rows = _read_only_rows(x, params.dtype)
    count = rows.shape[0]
    arguments = _layer_arguments(params)
    if count < sizes.BLOCKED_MIN_ROWS:
        groups = lambda parallel: kernels.fff_rows.run(parallel, rows, *arguments)  # noqa: E731
        return _run(groups, count, params, "fff rows", serial_in_pool=False)
    if not _blocked_walk_here(rows, params, arguments, kernels.fff_rows):
        return _until_blocked(rows, arguments, "fff", lambda: kernels.fff_rows.serial(rows, *arguments))
    blocked = lambda parallel: kernels.run_fff(rows, *arguments, parallel=parallel)  # noqa: E731
    return _run(blocked, count, params, "fff blocked", serial_in_pool=True)


#: Layers whose blocked walk this process has, for aligned rows (the read-only C-contiguous rows of the
#: layer's dtype that every call passes): asked once, rather than deriving the walk's types on every call.
_walk_ready_for: weakref.WeakSet[FFFParams] = weakref.WeakSet()


def _blocked_walk_here(rows: np.ndarray, params: FFFParams, arguments: tuple[Any, ...], row_kernels: Any) -> bool:
    """Whether a large batch can run the blocked walk now. While it compiles, the row-group kernel
    serves instead, unless that would have to compile too: numba compiles one function at a time, so
    that would wait for the walk anyway, and the call waits for the walk and runs it."""
    aligned = rows.flags.aligned
    if aligned and params in _walk_ready_for:
        return True
    if kernels.blocked_walk_ready(rows, *arguments[:4]):
        if aligned:
            _walk_ready_for.add(params)
        return True
    if kernels.compiling_blocked_walk() and not kernels.compiled_for(row_kernels, rows.dtype.name):
        kernels.wait_for_blocked_walks()
        return kernels.blocked_walk_ready(rows, *arguments[:4])
    return False


def _until_blocked(rows: np.ndarray, arguments: tuple[Any, ...], what: str, call: Callable[[], Any]) -> Any:
    """``call()``, a row-group kernel on this thread, serving a large batch while the blocked walk is not
    yet there (the same bits); then the walk's compile starts (:func:`.kernels.compile_blocked_walk`)."""
    result = _first_call(what + " rows serial", rows.dtype.name, call)
    kernels.compile_blocked_walk(rows, *arguments[:4])
    return result


def warm_up(dtypes: Sequence[str]) -> None:
    """Compile (or load from the disk cache) every kernel a call in these dtypes can use: for
    ``fff`` and ``cmm`` the row-group kernels, serial and parallel (for ``fff`` also the direct
    entry point small calls use), and the blocked walk, serial and parallel. Asked for, so no
    compiling notice is shown."""
    with _serial_lock:
        _start_threads()
    for dtype in dtypes:
        for kernel in ("fff rows", "cmm rows", "fff blocked", "cmm blocked"):
            for variant in (" serial", " parallel"):
                _first_calls_seen.add((kernel + variant, dtype))
        params = FFFParams.random(8, 4, 3, dtype=dtype, seed=0)
        arguments = _layer_arguments(params)
        prepared = prepare_fff_rows(params)
        prepared(np.zeros((1, params.d_in), dtype), params)
        x = _read_only_rows(np.zeros((sizes.PARALLEL_MIN_ROWS, params.d_in), dtype), dtype)
        for parallel in (False, True):
            kernels.fff_rows.run(parallel, x, *arguments)
            kernels.cmm_rows.run(parallel, x, *arguments[:3])
        kernels.compile_blocked_walk(x, *arguments[:4])  # the blocked walk: one kernel for fff and cmm
        kernels.wait_for_blocked_walks()
        kernels.run_fff(x, *arguments, parallel=True)
        kernels.run_cmm(x, *arguments[:3], parallel=True)


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


#: What compiling every kernel of one dtype took with an empty cache on a 2-core AMD EPYC (``fff warmup``;
#: docs/numba.md, "Compilation and the on-disk cache"): the notice quotes it.
COMPILE_ALL_S = 22
_announced_dtypes: set[str] = set()


def _announce_compiling(what: str, dtype: str) -> None:
    """Say, once per process and dtype, that numba is compiling (``what``: the kernel that started it)."""
    if dtype in _announced_dtypes:
        return
    _announced_dtypes.add(dtype)
    logger.warning(
        "fffcore: numba is compiling its %s kernels (first: %s) on first use, about %d s in all on 2 cores; "
        "once: later processes load them from %s. `fff warmup` compiles them ahead of time.",
        dtype,
        what,
        COMPILE_ALL_S,
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
    kernels.fff_rows.serial.compile(signature)
    return kernels.fff_rows.serial.overloads[signature].entry_point


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


def _start_threads() -> None:
    """Start numba's threads (its threading layer) once, before a kernel enters them, so that a layer
    that cannot load here fails as one line with its fix rather than a traceback from inside numba.
    Called under ``_serial_lock``; later calls cost a flag test."""
    global _threads_started
    if _threads_started:
        return
    import numba

    from fffcore.registry import BackendUnavailableError

    try:
        numba.get_num_threads()  # launches the threads, loading the layer numba's settings ask for
    except ValueError as error:
        numba_says = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        layer = f"NUMBA_THREADING_LAYER={numba.config.THREADING_LAYER}"
        raise BackendUnavailableError(
            f"backend 'numba' is unavailable: its threading layer ({layer}) does not load here: {numba_says}; "
            "to fix: install what it needs, or unset NUMBA_THREADING_LAYER so that numba picks one that loads"
        ) from None
    _threads_started = True


def _threading_layer() -> str:
    """Numba's threading layer, or "" before any parallel kernel has run (numba answers only then)."""
    import numba

    try:
        return str(numba.threading_layer())
    except ValueError:
        return ""
