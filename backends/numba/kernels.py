"""The Numba kernels behind the ``numba`` backend: blocked, grouped, level-synchronous walks.

Importing this module imports numba; :mod:`fffcore.backends.numba.plugin`
imports it only on the first ``cmm``/``fff`` call. Every kernel is compiled
lazily, once per signature, with ``cache=True`` (on disk, in numba's cache
directory), so later processes load machine code instead of compiling.

How a layer is evaluated (per tree; the design and the measurements behind it
are logged in ``benchmarks/NOTES.md``):

1. *Top stage*: rows are cut into blocks of ``block`` consecutive rows and
   each block walks levels ``0 .. split-1`` together, level by level. Rows of
   a block that sit on the same node are kept next to each other, so one load
   of a weight vector serves up to four rows (``_dot4_shared``).
2. *Sort*: a counting sort orders all rows by the node they reached at level
   ``split`` (the root of their subtree).
3. *Deep stage*: the sorted rows are cut into blocks again and each block
   walks the remaining levels. Rows of one block now share the subtree, so the
   deep weights, which no single block of unsorted rows would share, are
   loaded from memory once per block instead of once per row.
4. *Output* (fused ``fff`` only): each row's output is written in passes of
   four levels, ``y += a0*w0 + a1*w1 + a2*w2 + a3*w3``, which reads and writes
   ``y`` a quarter as often as one level at a time; four rows that share four
   levels' nodes (the top of a sorted block) share the loads of those
   ``w_out`` rows (:func:`_accumulate_shared`).

``split`` is chosen so that a subtree holds about one block of rows.

Serial and parallel: each kernel that runs over groups of rows or blocks is written once, as a
plain function whose loop over them is a ``prange``, and compiled twice by
:func:`serial_and_parallel` (``prange`` is ``range`` in the serial variant), so the two cannot
drift apart and give the same bits.

Floating-point: the dot products and the output sums run in the layer's
dtype with the fastmath flags :data:`SAFE_FASTMATH`, which let LLVM
reassociate and vectorise sums but keep IEEE NaN and infinity semantics, so
the branch ``logit > 0`` (NaN and zero go left) is evaluated exactly on the
logit the kernel computed. Reassociation changes the rounding of a logit
within ``gamma_n * sum_i |x_i w_i|``, the band the conformance rules allow.
Activations run in float64 without fastmath (:mod:`.activations`).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numba import get_num_threads, njit, prange, set_num_threads, set_parallel_chunksize

from fffcore import forking
from fffcore.backends.numba.activations import activate
from fffcore.backends.numba.sizes import DEFAULT_BLOCK, GROUP_ROWS

#: LLVM fast-math flags that cannot change NaN/inf semantics or a comparison:
#: no ``nnan``/``ninf`` (they would let LLVM assume ``logit > 0`` is never NaN).
SAFE_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: Rows per block (DEFAULT_BLOCK, 64): 64 rows of x and of y at width 768 (2 x 192 KiB in
#: float32) plus the block's weight rows stay in a 1.25 MiB L2 cache.


#: Which kernel runs at which batch size, and when a call uses every thread, is decided in
#: :mod:`fffcore.backends.numba.calls` (the thresholds are in :mod:`.sizes`); every kernel here
#: comes in a serial variant and a parallel one, compiled from one source, which give the same bits.


class SerialAndParallel(NamedTuple):
    """One kernel source compiled twice (:func:`serial_and_parallel`): ``serial`` runs its ``prange``
    loops as ``range`` on the calling thread, ``parallel`` spreads them over numba's threads. Each
    iteration does the same arithmetic in both, so both give the same bits."""

    serial: Any
    parallel: Any

    def run(self, parallel: bool, *args: Any) -> Any:
        """The parallel variant on numba's threads (through :func:`run_parallel`), or the serial one here."""
        if parallel:
            return run_parallel(self.parallel, *args)
        return self.serial(*args)


def serial_and_parallel(body: Callable[..., Any], **options: Any) -> SerialAndParallel:
    """``body``, a plain function whose loops over rows are ``prange``, compiled serial and parallel.

    Each variant compiles its own copy of ``body``, named ``<name>_serial`` or ``<name>_parallel``:
    numba's disk cache files a function's machine code under its qualified name and first line, keyed
    by the signature and the bytecode but not by ``parallel``, so two dispatchers of one function
    object would load each other's code from the cache. ``options``: numba's, besides ``parallel``
    (every variant is cached on disk).
    """
    variants = []
    for parallel in (False, True):
        suffix = "_parallel" if parallel else "_serial"
        name = body.__name__ + suffix
        copy = types.FunctionType(body.__code__, body.__globals__, name, body.__defaults__, body.__closure__)
        copy.__qualname__ = body.__qualname__ + suffix
        copy.__doc__ = body.__doc__
        variants.append(njit(cache=True, parallel=parallel, **options)(copy))
    return SerialAndParallel(*variants)


@njit(cache=True, fastmath=SAFE_FASTMATH, inline="always")
def _dot1(x, row, w, tree, node, start):
    """``start + x[row] . w[tree, node]`` in the dtype of ``x``: the logit, with the bias (or 0) as ``start``.

    The bias starts the sum rather than being added to it: the compiler may fuse an add that follows the
    sum with its last multiply into one FMA, and whether it does depends on the code around it (it did
    in the parallel row groups' leftover rows and not elsewhere), so every kernel sums in here alone.
    """
    total = start
    for i in range(x.shape[1]):
        total += x[row, i] * w[tree, node, i]
    return total


@njit(cache=True, fastmath=SAFE_FASTMATH, inline="always")
def _dot4_shared(x, r0, r1, r2, r3, w, tree, node, start):
    """Four rows against one weight vector, each sum begun at ``start`` as in :func:`_dot1`: one weight
    load feeds four FMAs."""
    s0 = start
    s1 = start
    s2 = start
    s3 = start
    for i in range(x.shape[1]):
        weight = w[tree, node, i]
        s0 += x[r0, i] * weight
        s1 += x[r1, i] * weight
        s2 += x[r2, i] * weight
        s3 += x[r3, i] * weight
    return s0, s1, s2, s3


@njit(cache=True, fastmath=SAFE_FASTMATH, inline="always")
def _level_count(n_nodes):
    """D + 1 for a tree of ``n_nodes`` = 2**(D+1) - 1 nodes."""
    levels = 0
    while n_nodes > 0:
        n_nodes >>= 1
        levels += 1
    return levels


@njit(cache=True, fastmath=SAFE_FASTMATH, inline="always")
def _walk_row(x, row, w_in, b_in, has_bias, tree, logits, nodes):
    """Row ``row`` of ``x`` down tree ``tree``: its logit and node at each level, into (L,) ``logits`` and ``nodes``."""
    node = 0
    for level in range(logits.shape[0]):
        z = _dot1(x, row, w_in, tree, node, b_in[tree, node] if has_bias else x.dtype.type(0))
        logits[level] = z
        nodes[level] = node
        node = 2 * node + (2 if z > 0 else 1)  # NaN and zero go left


@njit(cache=True, fastmath=SAFE_FASTMATH, inline="always")
def _walk_group(x, r, w_in, b_in, has_bias, tree, logits, nodes):
    """Rows ``r .. r+3`` of ``x`` down tree ``tree`` side by side: logits and nodes into (4, L) arrays.

    The four rows' dot products at a level are independent, so their weight rows are fetched while
    the others are summed. Each is :func:`_dot1`, the dot product every other kernel uses: a row's
    logits, and so its path and output, are the same bits whatever the batch around it and whichever
    kernel it lands in. (One loop over all four rows ran 8-14% faster at 4-1024 rows, but the
    compiler vectorised its sums in another order, so a row's last bits depended on its batch.)
    """
    zero = x.dtype.type(0)
    n0 = 0
    n1 = 0
    n2 = 0
    n3 = 0
    for level in range(logits.shape[1]):
        s0 = _dot1(x, r, w_in, tree, n0, b_in[tree, n0] if has_bias else zero)
        s1 = _dot1(x, r + 1, w_in, tree, n1, b_in[tree, n1] if has_bias else zero)
        s2 = _dot1(x, r + 2, w_in, tree, n2, b_in[tree, n2] if has_bias else zero)
        s3 = _dot1(x, r + 3, w_in, tree, n3, b_in[tree, n3] if has_bias else zero)
        logits[0, level] = s0
        logits[1, level] = s1
        logits[2, level] = s2
        logits[3, level] = s3
        nodes[0, level] = n0
        nodes[1, level] = n1
        nodes[2, level] = n2
        nodes[3, level] = n3
        n0 = 2 * n0 + (2 if s0 > 0 else 1)  # NaN and zero go left
        n1 = 2 * n1 + (2 if s1 > 0 else 1)
        n2 = 2 * n2 + (2 if s2 > 0 else 1)
        n3 = 2 * n3 + (2 if s3 > 0 else 1)


@njit(cache=True, fastmath=SAFE_FASTMATH, inline="always")
def _walk_rows(x, r, count, w_in, b_in, has_bias, tree, logits, nodes):
    """Rows ``r .. r+count-1`` (a group or fewer) down tree ``tree``: logits and nodes into (count, L)
    arrays, a whole group side by side (:func:`_walk_group`), fewer rows one by one (:func:`_walk_row`)."""
    if count == GROUP_ROWS:
        _walk_group(x, r, w_in, b_in, has_bias, tree, logits, nodes)
    else:
        for k in range(count):
            _walk_row(x, r + k, w_in, b_in, has_bias, tree, logits[k], nodes[k])


@njit(cache=True, fastmath=SAFE_FASTMATH, inline="always")
def _accumulate4(y, row, a0, a1, a2, a3, w, tree, n0, n1, n2, n3, assign):
    """``y[row] (= or +=) a0 w[tree, n0] + ... + a3 w[tree, n3]``: four levels per pass over ``y[row]``."""
    if assign:
        for j in range(y.shape[1]):
            y[row, j] = a0 * w[tree, n0, j] + a1 * w[tree, n1, j] + a2 * w[tree, n2, j] + a3 * w[tree, n3, j]
    else:
        for j in range(y.shape[1]):
            y[row, j] += a0 * w[tree, n0, j] + a1 * w[tree, n1, j] + a2 * w[tree, n2, j] + a3 * w[tree, n3, j]


@njit(cache=True, fastmath=SAFE_FASTMATH, inline="always")
def _accumulate1(y, row, a0, w, tree, n0, assign):
    """``y[row] (= or +=) a0 w[tree, n0]``: the levels left over after the passes of four."""
    if assign:
        for j in range(y.shape[1]):
            y[row, j] = a0 * w[tree, n0, j]
    else:
        for j in range(y.shape[1]):
            y[row, j] += a0 * w[tree, n0, j]


@njit(cache=True, fastmath=SAFE_FASTMATH, inline="always")
def _output_levels(y, row, acts, path, w_out, tree, first_level, assign):
    """``y[row] (= or +=) sum_{l >= first_level} acts[l] * w_out[tree, path[l]]``: the row's output from
    its activated (L,) logits and (L,) path, in passes of four levels whose weight rows, all known once
    the path is, load side by side (and ``y[row]`` is read and written a quarter as often), then the
    levels left over one by one."""
    levels = acts.shape[0]
    first = assign
    level = first_level
    while level + 4 <= levels:
        _accumulate4(
            y,
            row,
            acts[level],
            acts[level + 1],
            acts[level + 2],
            acts[level + 3],
            w_out,
            tree,
            path[level],
            path[level + 1],
            path[level + 2],
            path[level + 3],
            first,
        )
        first = False
        level += 4
    while level < levels:
        _accumulate1(y, row, acts[level], w_out, tree, path[level], first)
        first = False
        level += 1


@njit(cache=True, fastmath=SAFE_FASTMATH, inline="always")
def _fff_group(x, lo, hi, w_in, b_in, has_bias, w_out, code, y, logits, nodes):
    """``y[lo:hi]`` = the FFF output of rows ``lo .. hi-1``, one group (``hi - lo <= GROUP_ROWS``).

    Per tree the paths come first, into rows ``lo .. hi-1`` of the scratch (B, L) ``logits`` and
    ``nodes`` (:func:`_walk_rows`), then each row's output (:func:`_output_levels`). Every kernel
    starts its groups at multiples of four, and a row's arithmetic depends only on its place in its
    group, so serial and parallel runs give the same bits. Inlined into the loop over groups, as is
    :func:`_output_levels` here: as calls they cost 1-3% at 16 rows on one thread.
    """
    zero = y.dtype.type(0)
    for row in range(lo, hi):
        for j in range(y.shape[1]):
            y[row, j] = zero
    for tree in range(w_in.shape[0]):
        _walk_rows(x, lo, hi - lo, w_in, b_in, has_bias, tree, logits[lo:hi], nodes[lo:hi])
        for row in range(lo, hi):
            for level in range(logits.shape[1]):  # the logits, activated in place
                logits[row, level] = zero + activate(code, np.float64(logits[row, level]))
            _output_levels(y, row, logits[row], nodes[row], w_out, tree, 0, False)


def _fff_rows(x, w_in, b_in, has_bias, w_out, code):
    """The FFF output (B, d_out) of a batch below the blocked walk's size, group by group (:func:`_fff_group`).

    One compiled call and a few small allocations: at a handful of rows the blocked walk's set-up
    (blocks, a counting sort, scratch arrays) costs more than the walk itself. Compiled serial and
    parallel (:data:`fff_rows`); run the parallel variant with chunk size 1 (:func:`run_parallel`),
    so groups are handed to threads one at a time.
    """
    rows = x.shape[0]
    y = np.empty((rows, w_out.shape[2]), x.dtype)
    # Scratch for every row, each group using its own rows: allocated once per call rather than once
    # per group (which cost about 2% at 16 to 128 rows on one thread).
    levels = _level_count(w_in.shape[1])
    logits = np.empty((rows, levels), x.dtype)
    nodes = np.empty((rows, levels), np.int64)
    for g in prange((rows + GROUP_ROWS - 1) // GROUP_ROWS):
        lo = g * GROUP_ROWS
        _fff_group(x, lo, min(rows, lo + GROUP_ROWS), w_in, b_in, has_bias, w_out, code, y, logits, nodes)
    return y


fff_rows = serial_and_parallel(_fff_rows, fastmath=SAFE_FASTMATH)


@njit(cache=True, fastmath=SAFE_FASTMATH)
def _cmm_group(x, lo, hi, w_in, b_in, has_bias, logits, nodes):
    """Logits and nodes (B, K, L) of rows ``lo .. hi-1``, one group, walked as :func:`_fff_group` walks
    them (the same groups, the same dot products), so ``cmm`` reports the path ``fff`` takes."""
    for tree in range(w_in.shape[0]):
        _walk_rows(x, lo, hi - lo, w_in, b_in, has_bias, tree, logits[lo:hi, tree], nodes[lo:hi, tree])


def _cmm_rows(x, w_in, b_in, has_bias):
    """CMM of a batch below the blocked walk's size, group by group (:func:`_cmm_group`): logits
    (B, K, L) in x's dtype, nodes (B, K, L) int64. Compiled serial and parallel (:data:`cmm_rows`)."""
    rows = x.shape[0]
    levels = _level_count(w_in.shape[1])
    logits = np.empty((rows, w_in.shape[0], levels), x.dtype)
    nodes = np.empty((rows, w_in.shape[0], levels), np.int64)
    for g in prange((rows + GROUP_ROWS - 1) // GROUP_ROWS):
        lo = g * GROUP_ROWS
        _cmm_group(x, lo, min(rows, lo + GROUP_ROWS), w_in, b_in, has_bias, logits, nodes)
    return logits, nodes


cmm_rows = serial_and_parallel(_cmm_rows, fastmath=SAFE_FASTMATH)


@njit(cache=True, inline="always")
def _run_end(node, start):
    """Where the run of equal entries of ``node`` that begins at ``start`` ends (one past its last)."""
    stop = start + 1
    while stop < node.shape[0] and node[stop] == node[start]:
        stop += 1
    return stop


@njit(cache=True, fastmath=SAFE_FASTMATH)
def _walk_block(x, w_in, b_in, has_bias, tree, slot, order, node, first, last, logits, nodes):
    """Walk the rows ``order`` (sorted by ``node``) from level ``first`` to ``last - 1``.

    Args:
        x: (B, d_in) rows.
        w_in, b_in: (K, N, d_in) and (K, N) (``b_in`` ignored unless ``has_bias``).
        tree: which tree's weights to use; ``slot``: its index on axis 1 of
            ``logits``/``nodes``.
        order: (m,) int64 row indices, sorted by their current node; reordered
            in place so that it stays sorted by node at every level.
        node: (m,) int64 current node of ``order[i]``, updated in place.
        logits, nodes: (B, S, L) outputs, written at ``[order[i], slot, level]``.
    """
    m = order.shape[0]
    scratch_order = np.empty(m, np.int64)
    scratch_node = np.empty(m, np.int64)
    values = np.empty(m, x.dtype)
    for level in range(first, last):
        # Logits, one run of rows sharing a node at a time.
        start = 0
        while start < m:
            current = node[start]
            stop = _run_end(node, start)
            bias = b_in[tree, current] if has_bias else x.dtype.type(0)
            i = start
            while i + 4 <= stop:
                s0, s1, s2, s3 = _dot4_shared(
                    x, order[i], order[i + 1], order[i + 2], order[i + 3], w_in, tree, current, bias
                )
                values[i] = s0
                values[i + 1] = s1
                values[i + 2] = s2
                values[i + 3] = s3
                i += 4
            while i < stop:
                values[i] = _dot1(x, order[i], w_in, tree, current, bias)
                i += 1
            start = stop
        # Record, then branch (strictly > 0: zero and NaN go left), keeping each
        # run's left children before its right children so the order stays sorted.
        start = 0
        out = 0
        while start < m:
            current = node[start]
            stop = _run_end(node, start)
            for j in range(start, stop):
                row = order[j]
                logits[row, slot, level] = values[j]
                nodes[row, slot, level] = current
                if not values[j] > 0:
                    scratch_order[out] = row
                    scratch_node[out] = 2 * current + 1
                    out += 1
            for j in range(start, stop):
                if values[j] > 0:
                    scratch_order[out] = order[j]
                    scratch_node[out] = 2 * current + 2
                    out += 1
            start = stop
        order[:] = scratch_order
        node[:] = scratch_node


@njit(cache=True, fastmath=SAFE_FASTMATH, inline="always")
def _accumulate_shared(y, r0, r1, r2, r3, acts, i, level, w, tree, n0, n1, n2, n3, assign):
    """Four rows that share four levels' nodes: each w_out vector is loaded once for the four rows."""
    a00, a01, a02, a03 = acts[i, level], acts[i, level + 1], acts[i, level + 2], acts[i, level + 3]
    a10, a11, a12, a13 = acts[i + 1, level], acts[i + 1, level + 1], acts[i + 1, level + 2], acts[i + 1, level + 3]
    a20, a21, a22, a23 = acts[i + 2, level], acts[i + 2, level + 1], acts[i + 2, level + 2], acts[i + 2, level + 3]
    a30, a31, a32, a33 = acts[i + 3, level], acts[i + 3, level + 1], acts[i + 3, level + 2], acts[i + 3, level + 3]
    for j in range(y.shape[1]):
        w0 = w[tree, n0, j]
        w1 = w[tree, n1, j]
        w2 = w[tree, n2, j]
        w3 = w[tree, n3, j]
        v0 = a00 * w0 + a01 * w1 + a02 * w2 + a03 * w3
        v1 = a10 * w0 + a11 * w1 + a12 * w2 + a13 * w3
        v2 = a20 * w0 + a21 * w1 + a22 * w2 + a23 * w3
        v3 = a30 * w0 + a31 * w1 + a32 * w2 + a33 * w3
        if assign:
            y[r0, j] = v0
            y[r1, j] = v1
            y[r2, j] = v2
            y[r3, j] = v3
        else:
            y[r0, j] += v0
            y[r1, j] += v1
            y[r2, j] += v2
            y[r3, j] += v3


@njit(cache=True, fastmath=SAFE_FASTMATH)
def _output_rows(y, order, logits, nodes, w_out, tree, code, assign):
    """``y[row] (= or +=) sum_l act(logits[row, 0, l]) * w_out[tree, nodes[row, 0, l]]`` for each row in ``order``.

    ``order`` is sorted by path (the walk leaves it sorted by leaf), so four
    consecutive rows that agree on a level's node agree on every level above
    it: their shared top levels go through :func:`_accumulate_shared`, four
    levels at a time, and the rest row by row.
    """
    m = order.shape[0]
    levels = logits.shape[2]
    zero = y.dtype.type(0)
    acts = np.empty((m, levels), y.dtype)
    for i in range(m):
        for level in range(levels):
            acts[i, level] = zero + activate(code, np.float64(logits[order[i], 0, level]))
    i = 0
    while i + 4 <= m:
        r0, r1, r2, r3 = order[i], order[i + 1], order[i + 2], order[i + 3]
        shared = 0
        while shared < levels and nodes[r0, 0, shared] == nodes[r3, 0, shared]:
            shared += 1
        shared -= shared % 4
        first = assign
        for level in range(0, shared, 4):
            _accumulate_shared(
                y,
                r0,
                r1,
                r2,
                r3,
                acts,
                i,
                level,
                w_out,
                tree,
                nodes[r0, 0, level],
                nodes[r0, 0, level + 1],
                nodes[r0, 0, level + 2],
                nodes[r0, 0, level + 3],
                first,
            )
            first = False
        for k in range(4):
            _output_levels(y, order[i + k], acts[i + k], nodes[order[i + k], 0], w_out, tree, shared, first)
        i += 4
    while i < m:
        _output_levels(y, order[i], acts[i], nodes[order[i], 0], w_out, tree, 0, assign)
        i += 1


@njit(cache=True)
def counting_sort(keys, n_keys):
    """The indices of ``keys`` (n,) int64, each in ``0 .. n_keys-1``, sorted stably by key.

    Returns ``order`` (n,) int64, the indices by key (ascending within a key), and ``start``
    (n_keys + 1,) int64: key k's indices are ``order[start[k]:start[k + 1]]``.
    """
    start = np.zeros(n_keys + 1, np.int64)
    for i in range(keys.shape[0]):
        start[keys[i] + 1] += 1
    for k in range(n_keys):
        start[k + 1] += start[k]
    filled = start[:-1].copy()
    order = np.empty(keys.shape[0], np.int64)
    for i in range(keys.shape[0]):
        k = keys[i]
        order[filled[k]] = i
        filled[k] += 1
    return order, start


@njit(cache=True)
def _sort_by_node(node_at_split, n_nodes):
    """Row indices sorted (stably) by ``node_at_split``: (B,) int64. Nodes are below
    ``2 * n_nodes + 1``: a split after the last level names the leaves' would-be children."""
    return counting_sort(node_at_split, 2 * n_nodes + 1)[0]


@njit(cache=True, fastmath=SAFE_FASTMATH)
def _top_block(x, w_in, b_in, has_bias, tree, slot, logits, nodes, lo, hi, split, node_at_split):
    """Rows ``lo .. hi-1`` (one block) from the root down to level ``split - 1``; records where they land."""
    order = np.arange(lo, hi)
    node = np.zeros(hi - lo, np.int64)
    _walk_block(x, w_in, b_in, has_bias, tree, slot, order, node, 0, split, logits, nodes)
    for i in range(hi - lo):
        node_at_split[order[i]] = node[i]


@njit(cache=True, fastmath=SAFE_FASTMATH)
def _deep_block(
    x, w_in, b_in, has_bias, tree, slot, logits, nodes, order, split, node_at_split, y, w_out, code, fused, assign
):
    """Rows ``order`` (sorted by their node at level ``split``) from there to the leaves, then their output."""
    node = np.empty(order.shape[0], np.int64)
    for i in range(order.shape[0]):
        node[i] = node_at_split[order[i]]
    _walk_block(x, w_in, b_in, has_bias, tree, slot, order, node, split, logits.shape[2], logits, nodes)
    if fused:
        _output_rows(y, order, logits, nodes, w_out, tree, code, assign)


def _walk_tree(
    x, w_in, b_in, has_bias, tree, slot, logits, nodes, block, split, node_at_split, y, w_out, code, fused, assign
):
    """Every row through tree ``tree`` (see the module docstring), block by block.

    ``node_at_split`` (B,) int64 zeros, filled with the node each row reaches
    at level ``split``. Compiled serial and parallel (:data:`walk_tree`); run the
    parallel variant through :func:`run_parallel`, which hands blocks out one at a
    time (chunk size 1), so a thread that the operating system delays holds back
    one block, not a fixed share of them. (``with parallel_chunksize`` inside the
    kernel would do the same but cannot be cached.)
    """
    rows = x.shape[0]
    blocks = (rows + block - 1) // block
    if split > 0:
        for b in prange(blocks):
            lo = b * block
            _top_block(
                x, w_in, b_in, has_bias, tree, slot, logits, nodes, lo, min(rows, lo + block), split, node_at_split
            )
    sorted_rows = _sort_by_node(node_at_split, w_in.shape[1])
    for b in prange(blocks):
        lo = b * block
        order = sorted_rows[lo : min(rows, lo + block)].copy()
        _deep_block(
            x,
            w_in,
            b_in,
            has_bias,
            tree,
            slot,
            logits,
            nodes,
            order,
            split,
            node_at_split,
            y,
            w_out,
            code,
            fused,
            assign,
        )


walk_tree = serial_and_parallel(_walk_tree)


def run_parallel(kernel, *args):
    """A parallel kernel called with chunk size 1 on this thread (restored afterwards), so its
    loop iterations are handed out one at a time."""
    previous = set_parallel_chunksize(1)
    try:
        return kernel(*args)
    finally:
        set_parallel_chunksize(previous)


def run_on_one_thread(kernel, *args):
    """A parallel kernel run on the calling thread alone (numba's thread count for this thread set
    to one, then restored): the serial variant without compiling a second kernel."""
    previous = get_num_threads()
    set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        set_num_threads(previous)


def _tree_walker(parallel: bool) -> Callable[..., None]:
    """The tree walk to run: the parallel kernel on every thread or on this one; the serial kernel
    in a child forked from a process that ran numba's threads (see :mod:`fffcore.forking`), which
    must not enter the inherited thread pool at all. (Elsewhere the serial runs too use the parallel
    kernel, on one thread, so that a process compiles one walk, not two.)"""
    if parallel:
        return lambda *args: run_parallel(walk_tree.parallel, *args)
    if forking.inherited("numba"):
        return walk_tree.serial
    return lambda *args: run_on_one_thread(walk_tree.parallel, *args)


#: Signatures of the parallel tree walk that this process has compiled or loaded from the disk cache.
_walks_ready: set[Any] = set()
#: The threads compiling (or loading) them, by signature; one per signature and process.
_walk_threads: dict[Any, threading.Thread] = {}
_walk_lock = threading.Lock()
_hooks_registered: list[bool] = []  # whether the exit and fork hooks are in place
#: Seconds the process waits at exit for a walk still compiling before it says why it waits.
EXIT_NOTICE_AFTER_S = 1.0
logger = logging.getLogger("fffcore.backends.numba")


def blocked_walk_ready(x: np.ndarray, w_in: np.ndarray, b_in: np.ndarray, has_bias: bool, w_out: np.ndarray) -> bool:
    """Whether this process has the blocked walk (the parallel tree walk) for these argument types, or
    is a forked child (which compiles only the threadless walk, when it needs it)."""
    return forking.inherited("numba") or _walk_signature(x, w_in, b_in, has_bias, w_out) in _walks_ready


def compile_blocked_walk(x: np.ndarray, w_in: np.ndarray, b_in: np.ndarray, has_bias: bool, w_out: np.ndarray) -> None:
    """Start compiling the blocked walk for these argument types (or loading it from the disk cache) on a
    thread of its own, once per process and signature.

    It takes about 13 s to compile on 2 cores: callers serve their calls with the row-group kernels
    (the same bits) until :func:`blocked_walk_ready` says it is there. numba compiles one function at a
    time, so a caller starts this after compiling what its own call needs. The process waits for it at
    exit, so that the disk cache keeps it.
    """
    signature = _walk_signature(x, w_in, b_in, has_bias, w_out)
    with _walk_lock:
        if signature in _walk_threads:
            return

        def compile_it() -> None:
            # Compiling a parallel kernel starts numba's threading layer: a child forked from now on must
            # not enter it (fffcore.forking), as if a parallel kernel had run.
            forking.note_started("numba")
            try:
                walk_tree.parallel.compile(signature)
            except Exception as error:  # the row groups keep serving; a parallel call here will say why
                logger.warning("fffcore: numba could not compile the blocked walk: %s: %s", type(error).__name__, error)
                return
            _walks_ready.add(signature)

        thread = threading.Thread(target=compile_it, name="fffcore numba blocked walk", daemon=True)
        if not _hooks_registered:
            _hooks_registered.append(True)
            atexit.register(_finish_compiling)
            # A child forked mid-compile would inherit numba's compiler lock held by a thread it does
            # not have, and hang at its first compile: a fork waits for the compile to end.
            os.register_at_fork(before=wait_for_blocked_walks)
        _walk_threads[signature] = thread
        thread.start()


def _walk_signature(x: np.ndarray, w_in: np.ndarray, b_in: np.ndarray, has_bias: bool, w_out: np.ndarray) -> Any:
    """The numba argument types :func:`_run_blocked` calls the walk with, for these arrays."""
    from numba import typeof

    levels = (w_in.shape[1] + 1).bit_length() - 1
    output = np.empty((1, w_out.shape[2]), x.dtype)
    paths = (np.empty((1, 1, levels), x.dtype), np.empty((1, 1, levels), np.int64))
    arguments = (x, w_in, b_in, has_bias, 0, 0, *paths, DEFAULT_BLOCK, 0, np.zeros(1, np.int64))
    arguments += (output, w_out, 0, True, True)
    return tuple(typeof(a) for a in arguments)


def compiling_blocked_walk() -> bool:
    """Whether a blocked walk is compiling on its thread now."""
    return any(thread.is_alive() for thread in _walk_threads.values())


def compiled_for(kernels: SerialAndParallel, dtype: str) -> bool:
    """Whether the serial variant of ``kernels`` is compiled (or loaded) here for arrays of ``dtype``."""
    return any(str(signature[0].dtype) == dtype for signature in kernels.serial.signatures)


def wait_for_blocked_walks() -> None:
    """Block until every blocked walk this process started compiling is there (``fff warmup`` does)."""
    for thread in list(_walk_threads.values()):
        thread.join()


def _finish_compiling() -> None:
    """At exit: let a walk still compiling finish, so that the disk cache keeps it, and say why the
    process waits when that takes more than a moment."""
    running = [thread for thread in _walk_threads.values() if thread.is_alive()]
    for thread in running:
        thread.join(EXIT_NOTICE_AFTER_S)
    if any(thread.is_alive() for thread in running):
        logger.warning(
            "fffcore: numba is finishing compiling the blocked walk (up to 13 s) before the process exits, so "
            "that later processes load it from the disk cache; `fff warmup` compiles every kernel ahead of time."
        )
    wait_for_blocked_walks()


def choose_split(rows: int, levels: int, block: int) -> int:
    """Levels walked before the sort: about log2(rows / block), so a subtree holds about one block of rows."""
    if rows <= block:
        return 0
    return int(min(levels, max(0, round(np.log2(rows / block)))))


def run_cmm(
    x: np.ndarray,
    w_in: np.ndarray,
    b_in: np.ndarray,
    has_bias: bool,
    block: int = DEFAULT_BLOCK,
    parallel: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """CMM of every row by the blocked walk.

    Args:
        x: (B, d_in) C-contiguous rows in the weights' dtype (float32 or float64).
        w_in: (K, N, d_in) weights; b_in: (K, N) biases, read only when ``has_bias``.
        block: rows walked together.
        parallel: on every thread (blocks handed out one at a time), or on the calling one. Both
            run the parallel kernel (see :func:`_tree_walker`), so either enters numba's threading
            layer.

    Returns:
        logits (B, K, L) in x's dtype and nodes (B, K, L) int64, L = depth + 1.
    """
    unused_w = np.empty((1, 1, 1), x.dtype)
    unused_w.flags.writeable = False  # as the layer's w_out: the same compiled walk as run_fff
    _, logits, nodes = _run_blocked(x, w_in, b_in, has_bias, unused_w, 0, False, block, parallel)
    return logits, nodes


def run_fff(
    x: np.ndarray,
    w_in: np.ndarray,
    b_in: np.ndarray,
    has_bias: bool,
    w_out: np.ndarray,
    code: int,
    block: int = DEFAULT_BLOCK,
    parallel: bool = False,
) -> np.ndarray:
    """The fused FFF layer by the blocked walk: (B, d_out) in x's dtype.

    Args as :func:`run_cmm`, plus ``w_out`` (K, N, d_out) and the activation
    ``code`` (:data:`fffcore.backends.numba.activations.ACTIVATION_CODES`).
    Only one tree's (B, 1, L) logits and nodes exist at a time.
    """
    return _run_blocked(x, w_in, b_in, has_bias, w_out, code, True, block, parallel)[0]


def _run_blocked(x, w_in, b_in, has_bias, w_out, code, fused, block, parallel):
    """The blocked walk, tree by tree, for :func:`run_fff` and :func:`run_cmm`: ``(y, logits, nodes)``.

    ``fused`` (fff): y (B, d_out), and logits and nodes (B, 1, L) of the tree being walked, which the
    next tree overwrites. Not fused (cmm): logits and nodes (B, K, L) of every tree, and no y.
    """
    rows = x.shape[0]
    trees, n_nodes, _ = w_in.shape
    levels = (n_nodes + 1).bit_length() - 1
    slots = 1 if fused else trees
    y = np.empty((rows, w_out.shape[2]) if fused else (0, 1), x.dtype)
    logits = np.empty((rows, slots, levels), x.dtype)
    nodes = np.empty((rows, slots, levels), np.int64)
    if rows == 0:
        return y, logits, nodes
    split = choose_split(rows, levels, block)
    kernel = _tree_walker(parallel)
    for tree in range(trees):
        node_at_split = np.zeros(rows, np.int64)
        slot = 0 if fused else tree
        assign = tree == 0  # the first tree writes y, the others add to it
        kernel(
            x,
            w_in,
            b_in,
            has_bias,
            tree,
            slot,
            logits,
            nodes,
            block,
            split,
            node_at_split,
            y,
            w_out,
            code,
            fused,
            assign,
        )
    return y, logits, nodes


def cache_statistics() -> dict[str, int]:
    """On-disk cache hits and misses of this process's kernel compilations: ``{"hits": ..., "misses": ...}``.

    A miss means a signature was compiled here; in a process started after the
    cache was filled, every signature should be a hit.
    """
    hits = misses = 0
    for dispatcher in (*walk_tree, *fff_rows, *cmm_rows):
        hits += sum(dispatcher.stats.cache_hits.values())
        misses += sum(dispatcher.stats.cache_misses.values())
    return {"hits": hits, "misses": misses}
