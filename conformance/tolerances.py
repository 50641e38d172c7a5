"""Rounding bands and tolerances, derived from the dtype and the magnitudes involved.

Notation: ``u`` is the unit roundoff of the parameters' dtype (half an ulp of
1: 2**-11 for float16, 2**-8 for bfloat16, 2**-24 for float32, 2**-53 for
float64), ``u64 = 2**-53`` that of the float64 oracle, and
``gamma(n, u) = n u / (1 - n u)``, the classic bound on the relative error of
``n`` rounded operations (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., section 3.1).

Where the derivation below says "storage" it means the parameters' dtype
(``u_s``); "accumulation" is the dtype the backend declares for its dot
products and its tree sum in ``Backend.accumulation_dtypes`` (``u_a``; the
storage dtype itself when it declares none). Real 16-bit backends accumulate
in float32 (torch computes its 16-bit CPU matrix products in float32 and
rounds once), and the bands follow what the backend declares: with ``u_a =
u_s`` they are those of plain working-precision arithmetic.

**Logits.** The inputs and weights are already storage values (the oracle
rounds x to the storage dtype first). A backend computes ``z = sum_i x_i w_i +
b`` in the accumulation dtype, in any order (serial, pairwise, blocked, fused
multiply-add): ``d_in`` products and ``d_in`` additions, each term passing
through at most ``d_in + 1`` roundings, so::

    |fl(z) - z| <= gamma(d_in + 1, u_a) * S,     S = sum_i |x_i w_i| + |b|

Storage roundings on top, each bounded by ``u_s * S`` and combined with
``(1 + a)(1 + b) - 1`` (:func:`compose`):

* always: one rounding of ``x`` when a backend converts a wide input in two
  steps (float64 -> float32 -> float16, a "double rounding" some libraries do);
* only where the accumulation is wider than storage: each product rounded to
  storage before a wide sum (torch's ``vecdot`` on 16-bit tensors does that),
  and the bias-free dot product rounded to storage before the bias is added in
  storage (torch's matrix-product levels do that). Two more, ``gamma(2, u_s)``;
* the final rounding of the logit to storage (with ``u_a = u_s`` it is the
  last of the ``d_in + 1`` roundings above, counted once more for safety).

The final rounding is monotone and keeps the sign (a value that rounds to 0
is covered by the underflow term below), so it is left out of the **branch
band**::

    backend_branch = compose(gamma(d_in + 1, u_a), gamma(k, u_s)),   k = 1 (+2 when wider)
    branch_band    = (backend_branch + gamma(d_in + 1, u64)) * S + underflow
    logit_tolerance = (compose(backend_branch, u_s) + gamma(d_in + 1, u64)) * S + underflow

``gamma(d_in + 1, u64) * S`` bounds the float64 oracle's own error.
``underflow = (d_in + 3) * tiny`` allows each operation an absolute error of
one smallest normal number ``tiny`` of the storage dtype (at least that of the
accumulation dtype), which covers gradual underflow and also hardware that
flushes subnormals to zero (GPUs in fast-math mode). It is added only where
``S > 0``: when ``S == 0`` every product is an exact zero and every backend
computes exactly 0. With ``u_a = u_s`` the logit tolerance is at most the
classic ``gamma(d_in + 3, u) * S`` (Higham's ``gamma(a) + gamma(b) + gamma(a)
gamma(b) <= gamma(a + b)``).

When the oracle's float64 logit satisfies ``|z64| <= branch_band`` (and the
band is not empty), a correct backend may see either sign, so either child is
valid. Outside the band the sign is certain and the branch must match it.

How much this matters at 16 bits: with bfloat16 accumulation
``gamma(d_in + 3, 2**-8)`` is 0.045 at d_in 8, 0.20 at d_in 40 and infinite
from d_in 253 on: such bands accept a backend that returns zeros. With float32
accumulation the bfloat16 branch band is ``gamma(3, 2**-8) ~ 0.012`` plus
``gamma(d_in + 1, 2**-24)`` (4.6e-5 at d_in 768) times ``S``. A backend that
accumulates in its 16-bit storage dtype only gets layers narrow enough that
``gamma(d_in + 3, u_s) <= MAX_RELATIVE_BAND`` (:func:`max_checkable_d_in`;
d_in <= 9 for bfloat16, <= 94 for float16), so no check is vacuous.

**Outputs.** ``y = sum_{k,l} act(z_kl) w_kl`` over ``m = K (D+1)`` visited
nodes, where ``w_kl`` is the row of ``w_out`` of the visited node. The
backend's error has three parts:

1. the logit error propagated through the activation: ``|act(a) - act(b)| <=
   L |a - b|`` with ``L`` the Lipschitz constant of the activation
   (:data:`ACTIVATION_LIPSCHITZ`), so ``L * logit_tolerance`` per term;
2. the activation's own rounding: backends may evaluate GELU as
   ``0.5 x (1 + erf(x / sqrt 2))`` in the storage dtype. Rounding ``x/sqrt 2``
   (``u``, and ``erf'`` times ``|t|`` is below 0.49), ``erf`` itself (a couple
   of ulps of its result, at most 1), the sum ``1 + erf`` (``u`` of at most 2)
   and the two products (``u`` each of at most ``|x|``) add up to about ``4 u
   |x|`` in absolute terms; silu ``x / (1 + exp(-x))`` and the tanh form have
   similar bounds. We allow ``ACTIVATION_ROUNDING[act] * u_s * |z|``, with
   ``ACTIVATION_ROUNDING = 8`` for those (twice the estimate) and 0 for relu and
   identity, which round nothing. Evaluating in the (finer) accumulation dtype
   and rounding once to storage errs by at most ``c u_a |z| + u_s |act(z)|``,
   below the same bound (``|act(z)| <= |z|`` for all of them);
3. the products and the tree sum: ``m`` products and ``m - 1`` additions in
   the accumulation dtype, in any order, bounded by ``gamma(m + 1, u_a) * T``
   with ``T = sum_{k,l} |act(z_kl)| |w_kl|`` (the oracle's ``output_scale``,
   widened by parts 1 and 2 so the bound also holds for the backend's slightly
   different activated values); then, where the accumulation is wider than
   storage, one final rounding to storage, at most ``u_s`` times the
   magnitude of the value rounded: ``|y64|`` plus every error bound before it
   (with ``u_a = u_s`` the final rounding is one more ``u`` in
   ``gamma(m + 2, u) * T``). The oracle adds ``gamma(m + 1, u64) * T``.

So, per output element, with ``P = sum_{k,l} |w_kl| (L logit_tolerance_kl +
c u_s |z_kl|)``::

    wider:  pre = P + gamma(m + 1, u_a) (T + P) + gamma(m + 1, u64) T
            output_tolerance = pre + u_s (|y64| + pre) + (m + 2) tiny
    same:   output_tolerance = P + (gamma(m + 2, u) + gamma(m + 1, u64)) (T + P) + (m + 2) tiny

How tight this is: a tanh-approximate GELU where the exact one is declared is
off by up to 4.7e-4 absolute near ``|z| = 2.7`` (1.5e-4 at 1, 1.7e-5 at 0.5),
while the bound for a float32 layer with d_in = 1 is about 2e-6 at ``|z| = 2.7``
and 4e-7 at 0.5, and for a float64 layer with d_in = 8 and ``S ~ 1`` about 1e-14.
At 16 bits that difference is below one rounding of the activation itself
(``2**-11 * 2.7 = 1.3e-3`` in float16), so no honest band can tell the two
GELUs apart there; float32 and float64 do. Float32 accumulation in a layer
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


#: A backend that accumulates in its storage dtype is only given layers with
#: ``gamma(d_in + 3, u) <= MAX_RELATIVE_BAND``: wider bands accept nearly anything.
MAX_RELATIVE_BAND = 0.05


def compose(a: float, b: float) -> float:
    """Relative error bound of two successive relative errors bounded by ``a`` and ``b``: (1+a)(1+b) - 1."""
    return a + b + a * b


def accumulation_roundoff(dtype: str, accumulation: str | None = None) -> float:
    """Unit roundoff ``u_a`` of the dtype a ``dtype`` backend accumulates in (``None``: ``dtype`` itself).

    Raises:
        ValueError: an unknown accumulation dtype, or one coarser than ``dtype``.
    """
    if accumulation is None:
        return UNIT_ROUNDOFF[dtype]
    if accumulation not in UNIT_ROUNDOFF:
        raise ValueError(
            f"accumulation dtype for {dtype}: expected one of {', '.join(UNIT_ROUNDOFF)}, got {accumulation!r}"
        )
    if UNIT_ROUNDOFF[accumulation] > UNIT_ROUNDOFF[dtype]:
        raise ValueError(
            f"accumulation dtype for {dtype}: expected one at least as precise as {dtype}, got {accumulation!r}"
        )
    return UNIT_ROUNDOFF[accumulation]


def _is_wider(dtype: str, accumulation: str | None) -> bool:
    return accumulation_roundoff(dtype, accumulation) < UNIT_ROUNDOFF[dtype]


def max_checkable_d_in(dtype: str, accumulation: str | None = None) -> int | None:
    """Largest d_in whose logit band stays meaningful; ``None`` when there is no such limit.

    Only a backend accumulating in a 16-bit storage dtype has one: the largest
    d_in with ``gamma(d_in + 3, u) <= MAX_RELATIVE_BAND`` (9 for bfloat16, 94
    for float16). With wider accumulation the bands grow with ``gamma(d_in + 1,
    u_a)``, which stays small for every layer the suite builds.
    """
    u = accumulation_roundoff(dtype, accumulation)
    if u < 2.0**-20:
        return None
    d_in = int(MAX_RELATIVE_BAND / (1.0 + MAX_RELATIVE_BAND) / u) - 3  # gamma(n, u) <= c  <=>  n u <= c / (1 + c)
    while d_in > 1 and gamma(d_in + 3, u) > MAX_RELATIVE_BAND:
        d_in -= 1
    return max(d_in, 1)


def _backend_branch_relative(dtype: str, d_in: int, accumulation: str | None) -> float:
    """The backend's relative logit error before its final rounding to storage (module docstring)."""
    storage_roundings = 3 if _is_wider(dtype, accumulation) else 1
    return compose(
        gamma(d_in + 1, accumulation_roundoff(dtype, accumulation)), gamma(storage_roundings, UNIT_ROUNDOFF[dtype])
    )


def _with_underflow(relative: float, dtype: str, d_in: int, logit_scale: np.ndarray) -> np.ndarray:
    underflow = (d_in + 3) * SMALLEST_NORMAL[dtype]
    with np.errstate(invalid="ignore", over="ignore"):
        return relative * logit_scale + np.where(logit_scale > 0, underflow, 0.0)


def logit_tolerance(dtype: str, d_in: int, logit_scale: np.ndarray, *, accumulation: str | None = None) -> np.ndarray:
    """Largest honest difference between a backend's logit and the float64 oracle's.

    Args:
        dtype: the parameters' (storage) dtype.
        d_in: the length of the dot product.
        logit_scale: float64 ``sum_i |x_i w_i| + |b|`` of each logit (any shape).
        accumulation: the dtype the backend accumulates dot products in; ``None``: ``dtype``.

    Returns:
        float64 array of ``logit_scale``'s shape (derivation in the module docstring).
    """
    backend = compose(_backend_branch_relative(dtype, d_in, accumulation), UNIT_ROUNDOFF[dtype])
    return _with_underflow(backend + gamma(d_in + 1, U64), dtype, d_in, logit_scale)


def branch_band(dtype: str, d_in: int, logit_scale: np.ndarray, *, accumulation: str | None = None) -> np.ndarray:
    """Half-width of the band around 0 inside which a correct backend may branch either way.

    The logit tolerance without the final (sign-preserving) rounding to storage.
    Arguments as for :func:`logit_tolerance`; float64 of ``logit_scale``'s shape.
    """
    backend = _backend_branch_relative(dtype, d_in, accumulation)
    return _with_underflow(backend + gamma(d_in + 1, U64), dtype, d_in, logit_scale)


def branch_is_ambiguous(
    dtype: str, d_in: int, logit64: np.ndarray, logit_scale: np.ndarray, *, accumulation: str | None = None
) -> np.ndarray:
    """Where a correct backend may branch either way: the float64 logit lies inside the branch band.

    NaN and infinite logits are never ambiguous (their class does not depend on
    the summation order, see :mod:`fffcore.conformance.checks`).
    """
    band = branch_band(dtype, d_in, logit_scale, accumulation=accumulation)
    with np.errstate(invalid="ignore"):
        return np.isfinite(logit64) & (band > 0) & (np.abs(logit64) <= band)


def output_tolerance(
    dtype: str,
    activation: str,
    logits64: np.ndarray,
    logit_tol: np.ndarray,
    w_out_abs: np.ndarray,
    output_scale: np.ndarray,
    *,
    accumulation: str | None = None,
    output64: np.ndarray | None = None,
) -> np.ndarray:
    """Largest honest difference between a backend's output and the float64 oracle's along the same path.

    Args:
        dtype: the parameters' (storage) dtype.
        activation: the activation's name.
        logits64: (B, K, L) float64 oracle logits along the path.
        logit_tol: (B, K, L) their :func:`logit_tolerance`.
        w_out_abs: (B, K, L, d_out) ``|w_out|`` of the visited nodes, float64.
        output_scale: (B, d_out) ``sum_kl |act(z_kl)| |w_kl|``.
        accumulation: the dtype the backend accumulates the tree sum in; ``None``: ``dtype``.
        output64: (B, d_out) the float64 output, for the final rounding to storage of a
            wide accumulation; ``None`` bounds ``|y64|`` by ``output_scale``.

    Returns:
        (B, d_out) float64 (derivation in the module docstring).
    """
    u_s = UNIT_ROUNDOFF[dtype]
    u_a = accumulation_roundoff(dtype, accumulation)
    terms = int(logits64.shape[1] * logits64.shape[2])  # m = K (D+1)
    tiny = (terms + 2) * SMALLEST_NORMAL[dtype]
    with np.errstate(invalid="ignore", over="ignore"):
        rounding = ACTIVATION_ROUNDING[activation] * u_s * np.abs(logits64)
        per_term = ACTIVATION_LIPSCHITZ[activation] * logit_tol + rounding
        propagated = np.einsum("bkl,bklo->bo", per_term, w_out_abs)
        oracle = gamma(terms + 1, U64) * output_scale
        if u_a == u_s:
            return propagated + (gamma(terms + 2, u_s) + gamma(terms + 1, U64)) * (output_scale + propagated) + tiny
        before_rounding = propagated + gamma(terms + 1, u_a) * (output_scale + propagated) + oracle
        magnitude = np.abs(output64) if output64 is not None else output_scale
        return before_rounding + u_s * (magnitude + before_rounding) + tiny


def may_overflow(dtype: str, scale: np.ndarray, operations: int, *, accumulation: str | None = None) -> np.ndarray:
    """Where a correct backend may overflow although the float64 value is finite.

    A computed magnitude is at most ``scale`` times ``1 +`` the relative error
    bound of ``operations`` accumulated operations and the storage roundings
    (doubled for safety); beyond the dtype's largest finite number it may be
    infinite.
    """
    relative = compose(
        gamma(operations + 3, accumulation_roundoff(dtype, accumulation)), gamma(3, UNIT_ROUNDOFF[dtype])
    )
    limit = LARGEST_FINITE[dtype] / (1.0 + 2.0 * relative)
    with np.errstate(invalid="ignore"):
        return ~(scale < limit)  # NaN scale counts as "may overflow": nothing can be said
