"""The activations of the spec in torch, with the reference's special values.

Each activation is evaluated in float64 and rounded to the input's dtype, as
:mod:`fffcore.reference.activations` does, so the two agree to within the
last rounding (their float64 libm calls may differ by an ulp of float64, far
below an ulp of float32). The work is (B, K, D+1) elements per call, small
next to the weight traffic, so the wide evaluation costs nothing measurable.

torch's own ``gelu`` and ``silu`` are not used: at -inf they give NaN (the
formula's ``-inf * 0``), its exact ``gelu`` gives NaN at +inf and -0.0 for
x below about -9 (``1 + erf`` cancels), where the spec asks for the limit 0,
+inf, and the tiny negative value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

_SQRT_HALF = math.sqrt(0.5)
_TANH_GELU_SCALE = math.sqrt(2.0 / math.pi)


def gelu(z: Any) -> Any:
    """Exact GELU of float64 ``z``: ``0.5 * z * erfc(-z / sqrt(2))`` (erfc keeps negative z accurate)."""
    import torch

    return 0.5 * z * torch.special.erfc(-z * _SQRT_HALF)


def gelu_tanh(z: Any) -> Any:
    """tanh-approximated GELU of float64 ``z``: ``0.5 * z * (1 + tanh(sqrt(2/pi) * (z + 0.044715 z^3)))``."""
    import torch

    return 0.5 * z * (1.0 + torch.tanh(_TANH_GELU_SCALE * (z + 0.044715 * z * z * z)))


def silu(z: Any) -> Any:
    """SiLU of float64 ``z``: ``z / (1 + exp(-z))``."""
    import torch

    return z / (1.0 + torch.exp(-z))


#: Each float64 formula with the input below which it is evaluated at that input instead: there the
#: formula already gives (-)0 in float64 (erfc(28) underflows, exp(746) and tanh's 1 + (-1) saturate),
#: exactly what it gives for every smaller finite input, and what the spec asks at -inf, where the
#: unclamped formula would compute -inf * 0 = NaN. One clamp (NaN passes through it) replaces an
#: ``isinf`` test and a select, two passes fewer over the logits.
_WIDE_ACTIVATIONS: dict[str, tuple[Callable[[Any], Any], float]] = {
    "gelu": (gelu, -40.0),
    "gelu_tanh": (gelu_tanh, -1000.0),
    "silu": (silu, -746.0),
}


def activate(name: str, logits: Any) -> Any:
    """Apply the activation ``name`` element-wise to a floating tensor.

    Args:
        name: an activation of :data:`fffcore.spec.ACTIVATIONS`.
        logits: floating tensor of any shape, on any device.

    Returns:
        A new tensor of the same shape, dtype and device (never a view of
        ``logits``, so callers may pass it on as their own). ``act(-inf)`` is
        0 (for gelu, gelu_tanh and silu it comes out as -0.0, which compares
        equal), NaN stays NaN.
    """
    import torch

    if name == "identity":
        return logits.clone()
    if name == "relu":
        # clamp_min propagates NaN, as the spec's max(x, 0) does.
        return torch.clamp_min(logits, 0)
    found = _WIDE_ACTIVATIONS.get(name)
    if found is None:
        raise ValueError(f"activation: expected one of gelu, gelu_tanh, relu, silu, identity, got {name!r}")
    formula, floor = found
    return formula(torch.clamp_min(logits.to(torch.float64), floor)).to(logits.dtype)


def slope(name: str, logits: Any) -> Any:
    """The derivative of the activation ``name`` of a floating tensor, evaluated in float64 and rounded
    to its dtype (the reference's formulas: relu'(0) = 0, identity' = 1, NaN for NaN, the limits 0 at
    -inf and 1 at +inf)."""
    import torch

    z = logits.to(torch.float64)
    if name == "identity":
        value = torch.ones_like(z)
    elif name == "relu":
        value = (z > 0).to(torch.float64)
    elif name == "gelu":
        value = 0.5 * torch.special.erfc(-z * _SQRT_HALF) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    elif name == "gelu_tanh":
        t = torch.tanh(_TANH_GELU_SCALE * (z + 0.044715 * z * z * z))
        value = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _TANH_GELU_SCALE * (1.0 + 3 * 0.044715 * z * z)
    elif name == "silu":
        s = torch.sigmoid(z)
        value = s * (1.0 + z * (1.0 - s))
    else:
        raise ValueError(f"activation: expected one of gelu, gelu_tanh, relu, silu, identity, got {name!r}")
    if name not in ("identity", "relu"):
        value = torch.where(z == -math.inf, 0.0, torch.where(z == math.inf, 1.0, value))
    return torch.where(torch.isnan(z), z, value).to(logits.dtype)
