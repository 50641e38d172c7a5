"""Float64 evaluation of the spec, the yardstick of the conformance suite.

Every backend computes in the parameters' dtype after rounding ``x`` to it, so
the oracle rounds ``x`` the same way and then evaluates in float64. Along a
*given* path (the backend's own) it also returns the magnitudes from which
rounding bands are derived: ``sum_i |x_i w_i| + |b|`` per logit and
``sum_kl |act(logit_kl)| |w_out[k, node_kl]|`` per output element.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fffcore.params import FFFParams
from fffcore.reference.activations import activate
from fffcore.reference.cmm import conditional_matmul
from fffcore.reference.fff import fff_output


@dataclass(frozen=True)
class PathEvaluation:
    """The spec evaluated in float64 along given paths.

    Attributes:
        logits: (B, K, L) float64 logits of the given nodes.
        logit_scale: (B, K, L) float64 ``sum_i |x_i * w_in[k, n, i]| + |b_in[k, n]|``.
        output: (B, d_out) float64 tree sum along the given nodes.
        output_scale: (B, d_out) float64 ``sum_kl |act(logit_kl)| * |w_out[k, n_kl]|``.
    """

    logits: np.ndarray
    logit_scale: np.ndarray
    output: np.ndarray
    output_scale: np.ndarray


def as_float64_rows(x: Any, params: FFFParams) -> np.ndarray:
    """(B, d_in) ``x`` rounded to the parameters' dtype, then widened to float64."""
    return np.asarray(x).astype(params.dtype).astype(np.float64)


def _float64_params(params: FFFParams) -> FFFParams:
    return params if params.dtype == "float64" else params.astype(np.float64)


def oracle_cmm(x: Any, params: FFFParams) -> tuple[np.ndarray, np.ndarray]:
    """CMM in float64: logits (B, K, D+1) float64 and nodes (B, K, D+1) int64."""
    wide = _float64_params(params)
    return conditional_matmul(as_float64_rows(x, params), wide.w_in, wide.b_in)


def oracle_fff(x: Any, params: FFFParams) -> np.ndarray:
    """The FFF output in float64, (B, d_out), on the float64 path."""
    wide = _float64_params(params)
    logits, nodes = conditional_matmul(as_float64_rows(x, params), wide.w_in, wide.b_in)
    return fff_output(logits, nodes, wide.w_out, wide.activation)


def evaluate_path(x: Any, params: FFFParams, nodes: Any) -> PathEvaluation:
    """Evaluate the layer in float64 along ``nodes`` (B, K, L) instead of the path the logits choose.

    The nodes need not be a valid path; checking that is the caller's job.
    """
    wide = _float64_params(params)
    rows = as_float64_rows(x, params)
    nodes = np.asarray(nodes, dtype=np.int64)
    tree = np.arange(wide.trees)[None, :, None]  # broadcasts against (B, K, L)
    weights = wide.w_in[tree, nodes]  # (B, K, L, d_in)
    with np.errstate(invalid="ignore", over="ignore"):
        logits = np.einsum("bi,bkli->bkl", rows, weights)
        logit_scale = np.einsum("bi,bkli->bkl", np.abs(rows), np.abs(weights))
        if wide.b_in is not None:
            bias = wide.b_in[tree, nodes]
            logits = logits + bias
            logit_scale = logit_scale + np.abs(bias)
        output = fff_output(logits, nodes, wide.w_out, wide.activation)
        activated = np.abs(activate(wide.activation, logits))
        output_scale = np.einsum("bkl,bklo->bo", activated, np.abs(wide.w_out[tree, nodes]))
    return PathEvaluation(logits, logit_scale, output, output_scale)
