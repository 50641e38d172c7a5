"""Roofline figures: what a perfect FFF kernel must move and compute, and how fast this machine moves memory.

For one call of an FFF layer on ``rows`` rows, a perfect kernel reads ``x`` once, writes ``y``
once, and reads each weight row it visits (``w_in`` and ``w_out`` rows and the bias of every
node some row of the batch visits, in every tree) once, however many rows visit it. That is a
lower bound on the bytes any implementation moves; its floating-point work is, per row, tree
and level, a dot product of ``d_in`` (2 d_in FLOPs), the bias (1) and an update of the ``d_out``
outputs (2 d_out), the activation not counted.

Dividing the bytes by the measured time gives the achieved bandwidth, which is compared with
what this machine reads per second from a working set of the same size
(:func:`read_bandwidth`, measured by ``fff compare`` itself after its timings): from the caches
when the case fits in them, from memory when it does not. A share near 100% means the kernel
moves little more than it must, as fast as the machine can move it.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fffcore.params import FFFParams

#: Working sets are measured at their size rounded up to a power of two, and at least this.
MIN_PROBE_BYTES = 2**20
#: Repetitions of the bandwidth probe; the fastest counts (the machine's capability, not its noise).
PROBE_REPEATS = 7
#: And the probe keeps reading for this long at least: on a shared host one parallel read can wait
#: for a descheduled thread, and the fastest of many reads is the machine's rate.
PROBE_SECONDS = 0.1


@dataclass(frozen=True)
class Traffic:
    """The least a call must move and compute.

    Attributes:
        bytes: ``x`` read, ``y`` written and every visited weight row read once.
        flops: dot products, biases and output updates along every row's path.
        visited_nodes: distinct nodes the batch visits, summed over the trees.
    """

    bytes: int
    flops: int
    visited_nodes: int


def fff_traffic(params: FFFParams, nodes: np.ndarray) -> Traffic:
    """The traffic of one call whose rows visit ``nodes`` ((rows, K, D+1) heap indices)."""
    rows = int(nodes.shape[0])
    itemsize = np.dtype(params.dtype).itemsize if params.dtype != "bfloat16" else 2
    visited = sum(int(np.unique(nodes[:, tree, :]).size) for tree in range(params.trees))
    per_node = params.d_in + params.d_out + (1 if params.has_bias else 0)
    moved = itemsize * (rows * params.d_in + rows * params.d_out + visited * per_node)
    flops = rows * params.trees * (params.depth + 1) * (2 * params.d_in + 2 * params.d_out + 1)
    return Traffic(moved, flops, visited)


def probe_size(working_set: int) -> int:
    """The size the bandwidth of a ``working_set``-byte case is measured at: the next power of two."""
    return max(MIN_PROBE_BYTES, 1 << (max(1, working_set) - 1).bit_length())


@functools.cache
def read_bandwidth(nbytes: int) -> tuple[float, str]:
    """Bytes per second this machine reads from an ``nbytes`` array it reads again and again, and how.

    Summed with numba, vectorised (the sum's order is free), on every thread numba may use and on
    one, the faster counting: a working set in the caches is read faster by one thread than by a
    pool that must first be woken, and on a shared host one of the pool's threads may wait for a
    core. Without numba, with numpy on one thread (which then underestimates a multi-core machine).
    The array is read once untimed first, so a working set that fits in the caches is measured
    from them, as a kernel calling on the same weights again would find it.
    """
    values = np.ones(max(64, nbytes // 4 // 64 * 64), dtype=np.float32)
    if importlib.util.find_spec("numba") is None:
        return values.nbytes / _fastest_read(np.sum, values), "numpy, 1 thread"
    import numba

    from fffcore.benchmarks.bandwidth_kernel import parallel_sum

    threads = numba.get_num_threads()
    rates = {}
    for used in sorted({1, threads}):
        numba.set_num_threads(used)
        try:
            rates[used] = values.nbytes / _fastest_read(lambda array, used=used: parallel_sum(array, 4 * used), values)
        finally:
            numba.set_num_threads(threads)
    best = max(rates, key=rates.__getitem__)
    return rates[best], f"numba, {best} thread" + ("s" if best > 1 else "")


def _fastest_read(kernel: Callable[[np.ndarray], float], values: np.ndarray) -> float:
    """The fewest seconds ``kernel`` took to read ``values``, over :data:`PROBE_REPEATS` reads and
    :data:`PROBE_SECONDS` at least, after an untimed read (compiling or loading it, warming the caches)."""
    kernel(values)
    best = float("inf")
    began = time.perf_counter()
    reads = 0
    while reads < PROBE_REPEATS or time.perf_counter() - began < PROBE_SECONDS:
        start = time.perf_counter()
        kernel(values)
        best = min(best, time.perf_counter() - start)
        reads += 1
    return best
