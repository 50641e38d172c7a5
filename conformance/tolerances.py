"""Rounding bands and tolerances, derived from the dtype and the magnitudes involved.

Notation: ``u`` is the unit roundoff of the parameters' dtype (half an ulp of
1: 2**-11 for float16, 2**-8 for bfloat16, 2**-24 for float32, 2**-53 for
float64), ``u64 = 2**-53`` that of the float64 oracle, and
``gamma(n, u) = n u / (1 - n u)``, the classic bound on the relative error of
``n`` rounded operations (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., section 3.1).

**Logits.** A backend computes ``z = sum_i x_i w_i + b`` in working precision,
in any order (serial, pairwise, blocked, fused multiply-add). Whatever the
order, the computed value satisfies::

    |fl(z) - z| <= gamma(d_in + 1, u) * S,     S = sum_i |x_i w_i| + |b|

(``d_in`` products and ``d_in`` additions, each term passing through at most
``d_in + 1`` roundings). Three more roundings may happen on top: the final
rounding to the dtype when the backend accumulates in a wider type, and one
rounding of ``x`` when a backend converts a wide input in two steps (float64
-> float32 -> float16, a "double rounding" some libraries do), each bounded by
``u * S``. With ``gamma(a, u) + b u <= gamma(a + b, u)`` the backend's logit is
within ``gamma(d_in + 3, u) * S`` of the exact value. The oracle's own float64
logit is within ``gamma(d_in + 1, u64) * S`` of it, so backend and oracle may
differ by::

    logit_tolerance = (gamma(d_in + 3, u) + gamma(d_in + 1, u64)) * S + underflow

``underflow = (d_in + 3) * tiny`` allows each operation an absolute error of
one smallest normal number ``tiny`` of the dtype, which covers gradual
underflow and also hardware that flushes subnormals to zero (GPUs in fast-math
mode). It is added only where ``S > 0``: when ``S == 0`` every product is an
exact zero and every backend computes exactly 0.

**Branches.** The same quantity is the rounding band of a branch: when the
oracle's float64 logit satisfies ``|z64| <= logit_tolerance`` (and the band is
not empty), a correct backend may see either sign, so either child is valid.
Outside the band the sign is certain and the branch must match it.

**Outputs.** ``y = sum_{k,l} act(z_kl) w_kl`` over ``m = K (D+1)`` visited
nodes, where ``w_kl`` is the row of ``w_out`` of the visited node. The
backend's error has three parts:

1. the logit error propagated through the activation: ``|act(a) - act(b)| <=
   L |a - b|`` with ``L`` the Lipschitz constant of the activation
   (:data:`ACTIVATION_LIPSCHITZ`), so ``L * logit_tolerance`` per term;
2. the activation's own rounding: backends may evaluate GELU as
   ``0.5 x (1 + erf(x / sqrt 2))`` in the working dtype. Rounding ``x/sqrt 2``
   (``u``, and ``erf'`` times ``|t|`` is below 0.49), ``erf`` itself (a couple
   of ulps of its result, at most 1), the sum ``1 + erf`` (``u`` of at most 2)
   and the two products (``u`` each of at most ``|x|``) add up to about ``4 u
   |x|`` in absolute terms; silu ``x / (1 + exp(-x))`` and the tanh form have
   similar bounds. We allow ``ACTIVATION_ROUNDING[act] * u * |z|``, with
   ``ACTIVATION_ROUNDING = 8`` for those (twice the estimate) and 0 for relu and
   identity, which round nothing;
3. the products and the tree sum: ``m`` products and ``m - 1`` additions in any
   order, plus one final rounding, bounded by ``gamma(m + 2, u) * T`` with
   ``T = sum_{k,l} |act(z_kl)| |w_kl|`` (the oracle's ``output_scale``, widened
   by part 1 and 2 so the bound also holds for the backend's slightly different
   activated values); the oracle adds ``gamma(m + 1, u64) * T``.

So, per output element::

    output_tolerance = sum_{k,l} |w_kl| * (L * logit_tolerance_kl + c u |z_kl|)
                       + (gamma(m + 2, u) + gamma(m + 1, u64)) * (T + first term)
                       + (m + 2) * tiny

How tight this is: a tanh-approximate GELU where the exact one is declared is
off by up to 4.7e-4 absolute near ``|z| = 2.7`` (1.5e-4 at 1, 1.7e-5 at 0.5),
while the bound for a float32 layer with d_in = 1 is about 2e-6 at ``|z| = 2.7``
and 4e-7 at 0.5, and for a float64 layer with d_in = 8 and ``S ~ 1`` about 1e-14. Float32 accumulation in a layer
that declares float64 perturbs every logit by about ``2**-24 * S`` (the inputs
alone are rounded to float32), ten orders of magnitude above the float64 bound
``gamma(d_in + 3, 2**-53) * S``.

**Overflow.** Where ``S`` (or ``T``) comes within a factor ``1 + gamma`` of the
largest finite number of the dtype, a correct backend may overflow to
infinity where the float64 oracle does not; such elements cannot be checked
and are skipped (:func:`may_overflow`). The case generators keep magnitudes far
below that, so this is rare.
"""

from __future__ import annotations

import numpy as np

#: Unit roundoff u = 2**-p for a dtype with p significand bits (the implicit bit included).
UNIT_ROUNDOFF: dict[str, float] = {
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
    "float32": 2.0**-24,
    "float64": 2.0**-53,
}

#: Significand bits p: every integer of magnitude <= 2**p is exactly representable.
SIGNIFICAND_BITS: dict[str, int] = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}

#: Smallest positive normal number.
SMALLEST_NORMAL: dict[str, float] = {
    "float16": 2.0**-14,
    "bfloat16": 2.0**-126,
    "float32": 2.0**-126,
    "float64": 2.0**-1022,
}

#: Largest finite number.
LARGEST_FINITE: dict[str, float] = {
    "float16": 65504.0,
    "bfloat16": float(np.float32(3.3895313892515355e38)),
    "float32": float(np.finfo(np.float32).max),
    "float64": float(np.finfo(np.float64).max),
}

#: max |act'(z)| over all z: gelu 1.1289 (at z ~ 1.5), the tanh form 1.1290, silu 1.0998;
#: relu and identity 1. Rounded up.
ACTIVATION_LIPSCHITZ: dict[str, float] = {"gelu": 1.13, "gelu_tanh": 1.13, "silu": 1.1, "relu": 1.0, "identity": 1.0}

#: c in the activation's own absolute rounding error ``c * u * |z|`` (see the module docstring).
ACTIVATION_ROUNDING: dict[str, float] = {"gelu": 8.0, "gelu_tanh": 8.0, "silu": 8.0, "relu": 0.0, "identity": 0.0}

U64 = UNIT_ROUNDOFF["float64"]


def gamma(n: int, u: float) -> float:
    """``n u / (1 - n u)``: bounds the relative error of ``n`` rounded operations (requires ``n u < 1``)."""
    nu = n * u
    if nu >= 1.0:
        return float("inf")  # no bound: too many operations for this precision
    return nu / (1.0 - nu)


def logit_tolerance(dtype: str, d_in: int, logit_scale: np.ndarray) -> np.ndarray:
    """Largest honest difference between a backend's logit and the float64 oracle's.

    Args:
        dtype: the parameters' dtype.
        d_in: the length of the dot product.
        logit_scale: float64 ``sum_i |x_i w_i| + |b|`` of each logit (any shape).

    Returns:
        float64 array of ``logit_scale``'s shape (derivation in the module docstring).
    """
    u = UNIT_ROUNDOFF[dtype]
    relative = gamma(d_in + 3, u) + gamma(d_in + 1, U64)
    underflow = (d_in + 3) * SMALLEST_NORMAL[dtype]
    with np.errstate(invalid="ignore", over="ignore"):
        return relative * logit_scale + np.where(logit_scale > 0, underflow, 0.0)


def branch_is_ambiguous(dtype: str, d_in: int, logit64: np.ndarray, logit_scale: np.ndarray) -> np.ndarray:
    """Where a correct backend may branch either way: the float64 logit lies inside the rounding band.

    NaN and infinite logits are never ambiguous (their class does not depend on
    the summation order, see :mod:`fffcore.conformance.checks`).
    """
    band = logit_tolerance(dtype, d_in, logit_scale)
    with np.errstate(invalid="ignore"):
        return np.isfinite(logit64) & (band > 0) & (np.abs(logit64) <= band)


def output_tolerance(
    dtype: str,
    activation: str,
    logits64: np.ndarray,
    logit_tol: np.ndarray,
    w_out_abs: np.ndarray,
    output_scale: np.ndarray,
) -> np.ndarray:
    """Largest honest difference between a backend's output and the float64 oracle's along the same path.

    Args:
        dtype: the parameters' dtype.
        activation: the activation's name.
        logits64: (B, K, L) float64 oracle logits along the path.
        logit_tol: (B, K, L) their :func:`logit_tolerance`.
        w_out_abs: (B, K, L, d_out) ``|w_out|`` of the visited nodes, float64.
        output_scale: (B, d_out) ``sum_kl |act(z_kl)| |w_kl|``.

    Returns:
        (B, d_out) float64 (derivation in the module docstring).
    """
    u = UNIT_ROUNDOFF[dtype]
    terms = int(logits64.shape[1] * logits64.shape[2])  # m = K (D+1)
    with np.errstate(invalid="ignore", over="ignore"):
        per_term = ACTIVATION_LIPSCHITZ[activation] * logit_tol + ACTIVATION_ROUNDING[activation] * u * np.abs(logits64)
        propagated = np.einsum("bkl,bklo->bo", per_term, w_out_abs)
        summation = (gamma(terms + 2, u) + gamma(terms + 1, U64)) * (output_scale + propagated)
        return propagated + summation + (terms + 2) * SMALLEST_NORMAL[dtype]


def may_overflow(dtype: str, scale: np.ndarray, operations: int) -> np.ndarray:
    """Where a correct backend may overflow although the float64 value is finite."""
    limit = LARGEST_FINITE[dtype] / (1.0 + 2.0 * gamma(operations + 3, UNIT_ROUNDOFF[dtype]))
    with np.errstate(invalid="ignore"):
        return ~(scale < limit)  # NaN scale counts as "may overflow": nothing can be said
