"""The FFF output: the activated logits of the visited nodes, times their output weights, summed."""

from __future__ import annotations

import numpy as np

from fffcore.reference.activations import activate


def fff_output(logits: np.ndarray, nodes: np.ndarray, w_out: np.ndarray, activation: str) -> np.ndarray:
    """``y[b] = sum_k sum_l act(logits[b, k, l]) * w_out[k, nodes[b, k, l]]``.

    Args:
        logits: (B, K, L) logits of the visited nodes.
        nodes: (B, K, L) int64 heap indices of the visited nodes.
        w_out: (K, N, d_out) output weights.
        activation: an activation name of the spec.

    Returns:
        (B, d_out) in the dtype of ``logits``; summed tree by tree, level by level.
    """
    rows, trees, levels = logits.shape
    tree = np.arange(trees)[None, :]
    activated = activate(activation, logits)
    y = np.zeros((rows, w_out.shape[2]), dtype=logits.dtype)
    for level in range(levels):
        rows_out = w_out[tree, nodes[:, :, level]]  # (B, K, d_out)
        y += np.einsum("bk,bko->bo", activated[:, :, level], rows_out)
    return y
