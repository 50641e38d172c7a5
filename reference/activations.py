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


# Derivatives, for the backward pass: evaluated in float64 and rounded like the activations.
# act'(NaN) = NaN; at -inf and +inf each is its limit (0 and 1 for gelu, gelu_tanh, silu and relu, whose
# formulas would give inf * 0 there); relu'(0) = 0, as the branch rule sends 0 left; identity' = 1.


def gelu_derivative(x: np.ndarray) -> np.ndarray:
    """``Phi(x) + x * phi(x)``: the normal distribution and density functions."""
    z = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        value = 0.5 * _erfc(-z * _SQRT_HALF).astype(np.float64) + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return _at_infinities(z, 0.0, 1.0, value).astype(x.dtype)


def gelu_tanh_derivative(x: np.ndarray) -> np.ndarray:
    """The derivative of ``0.5 x (1 + tanh(u))``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``."""
    z = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        t = np.tanh(_TANH_GELU_SCALE * (z + 0.044715 * z * z * z))
        value = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _TANH_GELU_SCALE * (1.0 + 3 * 0.044715 * z * z)
    return _at_infinities(z, 0.0, 1.0, value).astype(x.dtype)


def relu_derivative(x: np.ndarray) -> np.ndarray:
    """1 where ``x > 0``, else 0; NaN stays NaN."""
    value = (x > 0).astype(x.dtype)
    return np.where(np.isnan(x), x, value)


def silu_derivative(x: np.ndarray) -> np.ndarray:
    """``s (1 + x (1 - s))`` with ``s = sigmoid(x)``."""
    z = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        s = 1.0 / (1.0 + np.exp(-z))
        value = s * (1.0 + z * (1.0 - s))
    return _at_infinities(z, 0.0, 1.0, value).astype(x.dtype)


def identity_derivative(x: np.ndarray) -> np.ndarray:
    """1; NaN stays NaN."""
    return np.where(np.isnan(x), x, np.ones_like(x))


DERIVATIVE_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": gelu_derivative,
    "gelu_tanh": gelu_tanh_derivative,
    "relu": relu_derivative,
    "silu": silu_derivative,
    "identity": identity_derivative,
}


def derivative(name: str, x: np.ndarray) -> np.ndarray:
    """The derivative of the activation called ``name``, element-wise; same shape and dtype as ``x``."""
    return DERIVATIVE_FUNCTIONS[name](x)


def _at_infinities(z: np.ndarray, below: float, above: float, value: np.ndarray) -> np.ndarray:
    return np.where(z == -np.inf, below, np.where(z == np.inf, above, value))
