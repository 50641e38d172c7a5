"""The activations of the spec as Numba device-side scalar functions.

Imported only by :mod:`fffcore.backends.numba.kernels`, which is imported only
when a kernel is first needed, so ``import fffcore`` never imports numba.

Each activation is evaluated in float64 and the caller rounds the result to
the layer's dtype, exactly as :mod:`fffcore.reference.activations` does, so a
float32 activation matches the reference to the rounding of one float64
libm call. These functions are compiled *without* fastmath: ``afn`` could
swap erfc/tanh/exp for approximations and ``nnan``/``ninf`` would break the
special values, and they run only once per visited node, so they cost nothing
next to the dot products.

Special values (the spec's): ``act(NaN) = NaN``, ``act(+inf) = +inf``,
``act(-inf)`` is the limit, 0 for gelu, gelu_tanh, relu and silu and -inf for
identity.
"""

from __future__ import annotations

import math

from numba import njit

from fffcore.spec import ACTIVATIONS

#: The integer a kernel receives for each activation name (its index in the spec's tuple).
ACTIVATION_CODES: dict[str, int] = {name: code for code, name in enumerate(ACTIVATIONS)}
GELU, GELU_TANH, RELU, SILU, IDENTITY = (ACTIVATION_CODES[n] for n in ("gelu", "gelu_tanh", "relu", "silu", "identity"))

_SQRT_HALF = math.sqrt(0.5)
_TANH_GELU_SCALE = math.sqrt(2.0 / math.pi)


# Not inlined: Numba inlines at its IR level, where the caller's fastmath flags
# would then apply to these formulas too.
@njit(cache=True)
def activate(code: int, z: float) -> float:
    """``act(z)`` for the activation numbered ``code``, in float64.

    The formulas and their evaluation order are the reference's, term for term.
    """
    if code == IDENTITY:
        return z
    if code == RELU:
        # max(z, 0) that lets NaN through, like numpy.maximum.
        if z > 0.0 or z != z:
            return z
        return 0.0
    if z == -math.inf:
        return 0.0  # the limit; the formulas would give -inf * 0 = NaN
    if code == GELU:
        # erfc rather than 1 + erf keeps full relative accuracy for negative z.
        return 0.5 * z * math.erfc(-z * _SQRT_HALF)
    if code == GELU_TANH:
        return 0.5 * z * (1.0 + math.tanh(_TANH_GELU_SCALE * (z + 0.044715 * z * z * z)))
    # SILU
    return z / (1.0 + math.exp(-z))


@njit(cache=True)
def slope(code: int, z: float) -> float:
    """``act'(z)`` for the activation numbered ``code``, in float64: the reference's derivatives
    (:mod:`fffcore.reference.activations`), term for term; NaN for NaN, the limits at -inf and +inf."""
    if z != z:
        return z
    if code == IDENTITY:
        return 1.0
    if code == RELU:
        return 1.0 if z > 0.0 else 0.0
    if z == -math.inf:
        return 0.0
    if z == math.inf:
        return 1.0
    if code == GELU:
        return 0.5 * math.erfc(-z * _SQRT_HALF) + z * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    if code == GELU_TANH:
        t = math.tanh(_TANH_GELU_SCALE * (z + 0.044715 * z * z * z))
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _TANH_GELU_SCALE * (1.0 + 3 * 0.044715 * z * z)
    s = 1.0 / (1.0 + math.exp(-z))  # SILU
    return s * (1.0 + z * (1.0 - s))
