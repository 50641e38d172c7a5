"""``fffcore.fff_backward``: the gradients of an FFF layer, for training.

With the paths the forward pass takes held fixed (the branch decisions carry no gradient, as in the
masked dense layer UltraFastBERT trains with), for a row x with upstream gradient g = dL/dy, in every
tree k at every level l, with node n = n_kl, logit z = z_kl and act' the activation's derivative
(:mod:`fffcore.reference.activations`: relu'(0) = 0, identity' = 1, exact for gelu, gelu_tanh and silu,
NaN for NaN, the limits at -inf and +inf)::

    h = g . w_out[k, n],   dz = h * act'(z)
    dL/dx = sum_kl dz * w_in[k, n]
    dL/dw_in[k, n] = sum over rows and levels visiting n of dz * x
    dL/db_in[k, n] = sum of dz
    dL/dw_out[k, n] = sum of act(z) * g

These equal the autograd gradients of the dense layer that computes every node's logit and keeps, by a
0/1 mask, exactly the visited ones. The cost follows the path: O(K (D+1) (d_in + d_out)) per row.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from fffcore.arrays import inspect_array
from fffcore.params import FFFParams
from fffcore.plan import plan_for


class FFFGradients(NamedTuple):
    """Result of :func:`fff_backward`, each in the parameters' dtype.

    ``x`` (..., d_in) in the array type of the input and on its device; ``w_in`` (K, N, d_in),
    ``b_in`` (K, N) or None for a layer without bias, ``w_out`` (K, N, d_out), in the array type of
    the input (the parameters' own for torch parameters used through a bridge)."""

    x: Any
    w_in: Any
    b_in: Any
    w_out: Any


def fff_backward(x: Any, params: FFFParams, grad_y: Any, backend: str | None = None) -> FFFGradients:
    """The gradients of a loss with respect to ``x`` and the layer, given ``grad_y`` = dL/dy.

    Args:
        x: (..., d_in) the forward pass's input (real floating: numpy, torch or cupy).
        params: the layer.
        grad_y: (..., d_out), the same leading shape as ``x``, same array type, real floating.
        backend: a backend that declares ``backward``; None: the one :func:`fffcore.fff` would take when
            it declares it, else the available backend of highest priority that does and takes ``x``.
    """
    x, kind, device = inspect_array(x)
    grad_y, grad_kind, _ = inspect_array(grad_y, "grad_y")
    plan = plan_for(x, kind, device, params, backend, backward=True)
    return FFFGradients(*plan.backward(x, params, grad_y, grad_kind))
