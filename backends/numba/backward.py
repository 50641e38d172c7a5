"""The backward pass on the CPU: gradients along the paths, at the cost of the paths.

Two stages, each parallel, neither with a race:

1. per row (rows over threads): ``h = g . w_out[k, n]``, ``dz = h * act'(z)``, ``act(z)``, and the
   input gradient ``sum dz * w_in[k, n]``;
2. per node (nodes over threads, one at a time): the parameter gradients, each node's sum over the
   (row, level) visits of it, which a counting sort lists in row order.

Each sum runs in one fixed order, whatever the thread count, so the gradients are deterministic.
The paths are the forward pass's own (the backend's ``cmm``, which walks exactly as its ``fff``).
Each stage is one source compiled serial and parallel (:func:`~.kernels.serial_and_parallel`): a
child forked from a process that ran numba's threads runs the serial kernels (see
:mod:`fffcore.forking`), with the same results.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from fffcore import forking
from fffcore.backends.numba.activations import activate, slope
from fffcore.backends.numba.kernels import SAFE_FASTMATH, counting_sort, serial_and_parallel


def _row_gradients(x, g, logits, nodes, w_in, w_out, code, dz, activated, grad_x):
    """Stage 1 into ``dz`` and ``activated`` (B, K, L) and ``grad_x`` (B, d_in)."""
    rows, trees, levels = logits.shape
    zero = x.dtype.type(0)
    for b in prange(rows):
        for j in range(x.shape[1]):
            grad_x[b, j] = zero
        g_row = g[b]
        grad_row = grad_x[b]
        for k in range(trees):
            for level in range(levels):
                n = nodes[b, k, level]
                z = np.float64(logits[b, k, level])
                w_out_row = w_out[k, n]
                h = zero
                for j in range(g_row.shape[0]):
                    h += g_row[j] * w_out_row[j]
                d = h * (zero + slope(code, z))
                dz[b, k, level] = d
                activated[b, k, level] = zero + activate(code, z)
                w_in_row = w_in[k, n]
                for j in range(grad_row.shape[0]):
                    grad_row[j] += d * w_in_row[j]


row_gradients = serial_and_parallel(_row_gradients, fastmath=SAFE_FASTMATH)


@njit(cache=True, fastmath=SAFE_FASTMATH, inline="always")
def _add_visits(target, factors, sources, tree, order, lo, hi):
    """``target = sum of factors[b, tree, l] * sources[b]`` over the visits ``order[lo:hi]`` (each
    ``b * L + l``), added in their order to zeros; returns the sum of those factors, begun at zero."""
    levels = factors.shape[2]
    total = factors.dtype.type(0)
    for c in range(target.shape[0]):
        target[c] = total  # zero: set here, with the sums, rather than in a pass over the whole gradient
    for e in range(lo, hi):
        b = order[e] // levels
        factor = factors[b, tree, order[e] - b * levels]
        total += factor
        source = sources[b]
        for c in range(target.shape[0]):
            target[c] += factor * source[c]
    return total


def _node_gradients(x, g, dz, activated, tree, start, order, has_bias, grad_w_in, grad_b_in, grad_w_out):
    """Stage 2 for tree ``tree``: work item ``2n`` sums node n's ``w_in`` and bias gradients over its
    visits in ``order``, item ``2n + 1`` its ``w_out`` gradient, each from zero, so every row of the
    gradients is written here (a node no row visits gets zeros). Whole rows of ``x`` and ``g`` stream
    through, each added into one gradient row that stays in cache."""
    for item in prange(2 * (start.shape[0] - 1)):
        n = item // 2
        if item % 2 == 0:
            total = _add_visits(grad_w_in[tree, n], dz, x, tree, order, start[n], start[n + 1])
            if has_bias:
                grad_b_in[tree, n] = total
        else:
            _add_visits(grad_w_out[tree, n], activated, g, tree, order, start[n], start[n + 1])


node_gradients = serial_and_parallel(_node_gradients, fastmath=SAFE_FASTMATH)


def run_backward(
    x: np.ndarray,
    g: np.ndarray,
    logits: np.ndarray,
    nodes: np.ndarray,
    w_in: np.ndarray,
    b_in: np.ndarray | None,
    w_out: np.ndarray,
    code: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """The gradients (see :mod:`fffcore.backward`) from the forward pass's ``logits`` and ``nodes``.

    Args:
        x: (B, d_in) and g: (B, d_out), C-contiguous, in the weights' dtype.
        logits, nodes: (B, K, L) from the backend's ``cmm`` of ``x``.
        code: the activation's number (:data:`~fffcore.backends.numba.activations.ACTIVATION_CODES`).
    """
    rows, trees, _ = logits.shape
    dz = np.empty(logits.shape, x.dtype)
    activated = np.empty(logits.shape, x.dtype)
    grad_x = np.empty_like(x)
    grad_w_in = np.empty_like(w_in)  # every row written by the node stage, from zero
    grad_w_out = np.empty_like(w_out)
    has_bias = b_in is not None
    grad_b_in = np.zeros(w_in.shape[:2], x.dtype)
    if not rows:  # no stage runs: the gradients of the parameters are zero
        grad_w_in.fill(0)
        grad_w_out.fill(0)
    else:
        # A forked child must not enter the thread pool it inherited (GNU OpenMP would abort it).
        parallel = not forking.inherited("numba")
        if parallel:
            forking.note_started("numba")
        # Rows in equal shares (each row costs about the same), unlike the nodes below.
        (row_gradients.parallel if parallel else row_gradients.serial)(
            x, g, logits, nodes, w_in, w_out, code, dz, activated, grad_x
        )
        for tree in range(trees):
            # The (row, level) visits of each node, rows ascending, as ``row * L + level``.
            order, start = counting_sort(np.ascontiguousarray(nodes[:, tree, :]).reshape(-1), w_in.shape[1])
            node_gradients.run(  # nodes handed out one at a time: the root has every row, a leaf a few
                parallel, x, g, dz, activated, tree, start, order, has_bias, grad_w_in, grad_b_in, grad_w_out
            )
    return grad_x, grad_w_in, grad_b_in if has_bias else None, grad_w_out
