"""The activations of the spec, in NumPy.

Each is evaluated in float64 and rounded to the input's dtype, so a float32
result is within half an ulp of the float64 formula. Special values:
``act(NaN) = NaN``, ``act(+inf) = +inf``, and ``act(-inf)`` is the limit of the
function: 0 for ``gelu``, ``gelu_tanh``, ``relu`` and ``silu`` (their formulas
would give ``-inf * 0 = NaN`` in IEEE arithmetic), ``-inf`` for ``identity``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_erfc = np.frompyfunc(math.erfc, 1, 1)
_SQRT_HALF = math.sqrt(0.5)
_TANH_GELU_SCALE = math.sqrt(2.0 / math.pi)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, ``x * Phi(x) = 0.5 * x * erfc(-x / sqrt(2))``.

    erfc rather than ``1 + erf`` keeps full relative accuracy for negative x.
    """
    z = x.astype(np.float64)
    with np.errstate(invalid="ignore"):  # -inf * erfc(inf) = -inf * 0, replaced by the limit below
        value = 0.5 * z * _erfc(-z * _SQRT_HALF).astype(np.float64)
    return _at_minus_infinity(z, 0.0, value).astype(x.dtype)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """The tanh approximation, ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``."""
    z = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        value = 0.5 * z * (1.0 + np.tanh(_TANH_GELU_SCALE * (z + 0.044715 * z * z * z)))
    return _at_minus_infinity(z, 0.0, value).astype(x.dtype)


def relu(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)``; NaN stays NaN."""
    return np.maximum(x, np.zeros((), x.dtype))


def silu(x: np.ndarray) -> np.ndarray:
    """``x * sigmoid(x) = x / (1 + exp(-x))``."""
    z = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        value = z / (1.0 + np.exp(-z))
    return _at_minus_infinity(z, 0.0, value).astype(x.dtype)


def identity(x: np.ndarray) -> np.ndarray:
    """``x`` (a copy)."""
    return x.copy()


ACTIVATION_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": gelu,
    "gelu_tanh": gelu_tanh,
    "relu": relu,
    "silu": silu,
    "identity": identity,
}


def activate(name: str, x: np.ndarray) -> np.ndarray:
    """Apply the activation called ``name`` element-wise; same shape and dtype as ``x``."""
    return ACTIVATION_FUNCTIONS[name](x)


def _at_minus_infinity(z: np.ndarray, limit: float, value: np.ndarray) -> np.ndarray:
    return np.where(z == -np.inf, limit, value)
