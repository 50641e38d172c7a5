"""``LoopBackend``: the FFF layer as the plainest possible Python loop over rows, trees and levels."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import fffcore


def _gelu(z: float) -> float:
    return 0.5 * z * math.erfc(-z / math.sqrt(2.0))


def _gelu_tanh(z: float) -> float:
    # z * z * z rather than z ** 3: a float power raises OverflowError where a product gives inf
    return 0.5 * z * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z * z * z)))


def _silu(z: float) -> float:
    # x * sigmoid(x), written so that exp never overflows
    return z / (1.0 + math.exp(-z)) if z >= 0 else z * math.exp(z) / (1.0 + math.exp(z))


def _relu(z: float) -> float:
    return z if z > 0 or math.isnan(z) else 0.0


ACTIVATIONS = {"gelu": _gelu, "gelu_tanh": _gelu_tanh, "relu": _relu, "silu": _silu, "identity": lambda z: z}


def activate(name: str, z: float) -> float:
    """The activation in float64, with the spec's special values: NaN stays NaN, act(-inf) is the limit."""
    if math.isnan(z):
        return z
    if z == -math.inf:
        return -math.inf if name == "identity" else 0.0
    if z == math.inf:
        return math.inf
    return ACTIVATIONS[name](z)


class LoopBackend(fffcore.Backend):
    """Row by row, tree by tree, level by level; numpy only, float32 and float64."""

    name = "example-loop"
    description = "example third-party backend: a plain per-row loop (slow; shows how to write a backend)"
    array_types = ("numpy",)
    devices = ("cpu",)
    dtypes = ("float32", "float64")
    activations = fffcore.ACTIVATIONS
    # Below the reference's 0: an example must never be chosen automatically.
    priority = -10
    install = "pip install fffcore-example-backend"

    def version(self) -> str:
        from importlib.metadata import version

        return version("fffcore-example-backend")

    def cmm(self, x: Any, params: fffcore.FFFParams) -> tuple[np.ndarray, np.ndarray]:
        # The core hands us (B, d_in) of any floating dtype; converting makes a copy, so x is never written.
        rows = np.asarray(x, dtype=params.dtype)
        levels = params.depth + 1
        logits = np.empty((rows.shape[0], params.trees, levels), dtype=params.dtype)
        nodes = np.empty((rows.shape[0], params.trees, levels), dtype=np.int64)
        for row in range(rows.shape[0]):
            for tree in range(params.trees):
                node = 0
                for level in range(levels):
                    logit = rows[row] @ params.w_in[tree, node]
                    if params.b_in is not None:
                        logit = logit + params.b_in[tree, node]
                    logits[row, tree, level] = logit
                    nodes[row, tree, level] = node
                    node = 2 * node + (2 if logit > 0 else 1)  # strictly > 0: a tie or NaN goes left
        return logits, nodes

    def fff(self, x: Any, params: fffcore.FFFParams) -> np.ndarray:
        logits, nodes = self.cmm(x, params)
        scalar = np.dtype(params.dtype).type
        output = np.zeros((logits.shape[0], params.d_out), dtype=params.dtype)
        with np.errstate(all="ignore"):  # inf and NaN inputs follow IEEE arithmetic, silently
            for row in range(logits.shape[0]):
                for tree in range(params.trees):
                    for level in range(params.depth + 1):
                        activated = scalar(activate(params.activation, float(logits[row, tree, level])))
                        output[row] += activated * params.w_out[tree, nodes[row, tree, level]]
        return output
