"""The backward pass of an FFF layer along the paths the forward pass took.

The branch decisions carry no gradient (as in the masked dense layer UltraFastBERT trains), so for a
row x with upstream gradient g = dL/dy, at each tree k and level l, with node n = n_kl and logit z = z_kl::

    h     = g . w_out[k, n]            (how the loss moves with the activated logit)
    dz    = h * act'(z)
    dL/dx          += dz * w_in[k, n]
    dL/dw_in[k, n] += dz * x
    dL/db_in[k, n] += dz
    dL/dw_out[k, n] += act(z) * g

summed over rows and levels. These are the autograd gradients of the masked dense layer whose mask
keeps exactly these paths (``tests/core/test_backward.py`` checks it).
"""

from __future__ import annotations

import numpy as np

from fffcore.reference.activations import activate, derivative
from fffcore.reference.cmm import conditional_matmul


def fff_backward(
    x: np.ndarray,
    w_in: np.ndarray,
    b_in: np.ndarray | None,
    w_out: np.ndarray,
    activation: str,
    grad_y: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Gradients of a loss with respect to the input and the weights, level by level.

    Args:
        x: (B, d_in) rows, in the parameters' dtype.
        w_in, b_in, w_out: the layer, (K, N, d_in), (K, N) or None, (K, N, d_out).
        activation: an activation name of the spec.
        grad_y: (B, d_out) gradient of the loss with respect to the layer's output, in x's dtype.

    Returns:
        ``(grad_x (B, d_in), grad_w_in (K, N, d_in), grad_b_in (K, N) or None, grad_w_out (K, N, d_out))``,
        all in x's dtype; nodes no row visited get zeros.
    """
    logits, nodes = conditional_matmul(x, w_in, b_in)
    rows, trees, levels = logits.shape
    tree = np.arange(trees)[None, :]  # (1, K)
    activated = activate(activation, logits)
    slopes = derivative(activation, logits)

    grad_x = np.zeros_like(x)
    grad_w_in = np.zeros_like(w_in)
    grad_b_in = None if b_in is None else np.zeros_like(b_in)
    grad_w_out = np.zeros_like(w_out)
    trees_of = np.broadcast_to(tree, (rows, trees))
    for level in range(levels):
        node = nodes[:, :, level]  # (B, K)
        h = np.einsum("bo,bko->bk", grad_y, w_out[tree, node])
        dz = h * slopes[:, :, level]
        grad_x += np.einsum("bk,bki->bi", dz, w_in[tree, node])
        np.add.at(grad_w_in, (trees_of, node), dz[:, :, None] * x[:, None, :])
        if grad_b_in is not None:
            np.add.at(grad_b_in, (trees_of, node), dz)
        np.add.at(grad_w_out, (trees_of, node), activated[:, :, level, None] * grad_y[:, None, :])
    return grad_x, grad_w_in, grad_b_in, grad_w_out
