"""Conditional matrix multiplication (CMM), level by level, as in the paper."""

from __future__ import annotations

import numpy as np


def conditional_matmul(x: np.ndarray, w_in: np.ndarray, b_in: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Walk every row down every tree.

    At each level, every row takes the dot product of its input with the
    current node's weights (plus bias); a positive logit sends it to the right
    child ``2n + 2``, anything else (zero, negative, NaN) to the left ``2n + 1``.

    Args:
        x: (B, d_in) rows, in the parameters' dtype.
        w_in: (K, N, d_in) node weights, N = 2**(D+1) - 1 in heap order.
        b_in: (K, N) node biases, or None.

    Returns:
        logits (B, K, D+1) in x's dtype and nodes (B, K, D+1) int64, the node
        visited at each level (heap index within its tree).
    """
    rows = x.shape[0]
    trees, n_nodes, _ = w_in.shape
    levels = (n_nodes + 1).bit_length() - 1  # D + 1
    tree = np.arange(trees)[None, :]  # (1, K), broadcasts against (B, K) node indices

    logits = np.empty((rows, trees, levels), dtype=x.dtype)
    nodes = np.empty((rows, trees, levels), dtype=np.int64)
    node = np.zeros((rows, trees), dtype=np.int64)  # every row starts at the root
    for level in range(levels):
        weights = w_in[tree, node]  # (B, K, d_in): the current node's weights, per row and tree
        logit = np.einsum("bi,bki->bk", x, weights)
        if b_in is not None:
            logit = logit + b_in[tree, node]
        logits[:, :, level] = logit
        nodes[:, :, level] = node
        node = 2 * node + 1 + (logit > 0)  # strictly > 0: ties and NaN go left
    return logits, nodes
