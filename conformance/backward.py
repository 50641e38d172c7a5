"""The backward pass against the float64 oracle along the backend's own paths, with derived tolerances.

For a backend that declares ``backward``: ``fffcore.cmm`` gives its paths, ``fffcore.fff_backward`` its
gradients, and the oracle evaluates the gradients of :mod:`fffcore.backward` in float64 along those
same paths (so a row within the rounding band of a tie is judged on the branch the backend took, as
the forward pass is). Each gradient element is a sum of products of storage values and of
intermediates that carry error; its tolerance adds, term by term (``u_s``, ``u_a``, ``gamma`` as in
:mod:`.tolerances`):

* the logit's error ``dz_err = logit_tolerance`` (the forward pass's, same derivation);
* the activation's value and slope at a logit off by that much: ``Lip(act) * dz_err + u_s |act|`` and
  ``Lip(act') * dz_err + u_s |act'|`` (``Lip(act')``: 0.8 for gelu and gelu_tanh, whose second
  derivatives peak at 2 phi(0) = 0.798 and 0.80, 0.5 for silu, 0 for identity; relu's slope jumps
  at 0, so a logit within its tolerance of 0 may take slope 0 or 1);
* ``h = g . w_out[k, n]``: ``gamma(d_out + 1, u_a) * sum |g w_out|``;
* ``dz = h act'``: ``|act'| h_err + |h| slope_err + h_err slope_err + u_s |h act'|``;
* each gradient, a sum over n terms ``t_i`` with errors ``e_i``: ``sum e_i + gamma(n + 1, u_a) *
  sum (|t_i| + e_i)``, then the rounding to storage, ``u_s (|value| + that)``, the float64 oracle's own
  ``gamma(n + 1, u64) * sum |t_i|``, and an absolute ``(n + 3) * tiny`` where anything is nonzero.

With integer-valued data and relu or identity every quantity is an integer, so a gradient whose
terms' magnitudes add up to less than ``1/u_a`` must be exact, after its one rounding to storage.
NaN and infinities are compared by class, as in the forward checks.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from fffcore.arrays import array_type
from fffcore.conformance import checks, tolerances
from fffcore.conformance.adapters import adapter_for, round_to_dtype
from fffcore.conformance.cases import Built, Case
from fffcore.conformance.checks import PropertyFailure
from fffcore.conformance.target import Target
from fffcore.reference.activations import activate, derivative
from fffcore.reference.oracle import evaluate_path

#: Lipschitz constants of the activations' derivatives (bounds on |act''|; relu's is handled apart).
SLOPE_LIPSCHITZ = {"gelu": 0.8, "gelu_tanh": 0.81, "silu": 0.5, "relu": 0.0, "identity": 0.0}
NAMES = ("x", "w_in", "b_in", "w_out")


@dataclass(frozen=True)
class Gradients:
    """Float64 gradients along given paths and their tolerances: name -> (values, tolerance)."""

    values: dict[str, np.ndarray]
    tolerance: dict[str, np.ndarray]
    #: Sum of the magnitudes of each element's terms: integer sums below 1/u_a are exact.
    scale: dict[str, np.ndarray]


def upstream_gradient(case: Case, rows: int, d_out: int, dtype: str, *, integer: bool) -> np.ndarray:
    """The ``grad_y`` of a case: drawn from a seed derived from the case, rounded to ``dtype``."""
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    values = rng.integers(-3, 4, (rows, d_out)).astype(np.float64) if integer else rng.standard_normal((rows, d_out))
    return round_to_dtype(values, dtype)


def oracle_gradients(built: Built, nodes: np.ndarray, g64: np.ndarray, accumulation: str | None) -> Gradients:
    """The gradients in float64 along ``nodes`` (B, K, L) for upstream ``g64`` (B, d_out), with tolerances."""
    params = built.oracle_params
    dtype = built.case.layer.dtype
    name = params.activation
    u_s = tolerances.UNIT_ROUNDOFF[dtype]
    u_a = tolerances.accumulation_roundoff(dtype, accumulation)
    tiny = tolerances.SMALLEST_NORMAL[dtype]
    x = built.oracle_x
    _, trees, levels = nodes.shape
    d_in, d_out = params.d_in, params.d_out
    tree = np.arange(trees)[None, :, None]
    evaluation = evaluate_path(x, params, nodes)
    with np.errstate(all="ignore"):
        z = evaluation.logits
        z_err = tolerances.logit_tolerance(dtype, d_in, evaluation.logit_scale, accumulation=accumulation)
        act, slope = activate(name, z), derivative(name, z)
        act_err = tolerances.ACTIVATION_LIPSCHITZ[name] * z_err + u_s * np.abs(act)
        slope_err = SLOPE_LIPSCHITZ[name] * z_err + u_s * np.abs(slope)
        if name == "relu":
            slope_err = np.where(np.abs(z) <= z_err, 1.0, slope_err)
        w_in_rows, w_out_rows = params.w_in[tree, nodes], params.w_out[tree, nodes]  # (B, K, L, d)
        h = np.einsum("bo,bklo->bkl", g64, w_out_rows)
        h_scale = np.einsum("bo,bklo->bkl", np.abs(g64), np.abs(w_out_rows))
        h_err = tolerances.gamma(d_out + 1, u_a) * h_scale + np.where(h_scale > 0, (d_out + 3) * tiny, 0.0)
        dz = h * slope
        dz_err = np.abs(slope) * h_err + np.abs(h) * slope_err + h_err * slope_err + u_s * np.abs(dz)

        def summed(terms: int, value: np.ndarray, scale: np.ndarray, propagated: np.ndarray) -> np.ndarray:
            before = propagated + tolerances.gamma(terms + 1, u_a) * (scale + propagated)
            oracle = tolerances.gamma(terms + 1, tolerances.U64) * scale
            return before + u_s * (np.abs(value) + before) + oracle + np.where(scale > 0, (terms + 3) * tiny, 0.0)

        grad_x = np.einsum("bkl,bkli->bi", dz, w_in_rows)
        x_scale = np.einsum("bkl,bkli->bi", np.abs(dz), np.abs(w_in_rows))
        grad_x_tol = summed(trees * levels, grad_x, x_scale, np.einsum("bkl,bkli->bi", dz_err, np.abs(w_in_rows)))
        flat = (nodes + tree * params.n_nodes).reshape(-1)
        size = trees * params.n_nodes
        visits = np.bincount(flat, minlength=size).reshape(trees, params.n_nodes)
        per_visit_terms = int(max(1, visits.max()))

        def by_node(values: np.ndarray) -> np.ndarray:  # (B, K, L, d) summed into (K, N, d)
            out = np.zeros((size, values.shape[-1]))
            np.add.at(out, flat, values.reshape(-1, values.shape[-1]))
            return out.reshape(trees, params.n_nodes, -1)

        xs, gs = x[:, None, None, :], g64[:, None, None, :]
        grad_w_in = by_node(dz[..., None] * xs)
        w_in_scale = by_node(np.abs(dz)[..., None] * np.abs(xs))
        grad_w_in_tol = summed(per_visit_terms, grad_w_in, w_in_scale, by_node(dz_err[..., None] * np.abs(xs)))
        grad_b = by_node(dz[..., None])[..., 0]
        b_scale = by_node(np.abs(dz)[..., None])[..., 0]
        grad_b_tol = summed(per_visit_terms, grad_b, b_scale, by_node(dz_err[..., None])[..., 0])
        grad_w_out = by_node(act[..., None] * gs)
        w_out_scale = by_node(np.abs(act)[..., None] * np.abs(gs))
        grad_w_out_tol = summed(per_visit_terms, grad_w_out, w_out_scale, by_node(act_err[..., None] * np.abs(gs)))
    values = {"x": grad_x, "w_in": grad_w_in, "b_in": grad_b, "w_out": grad_w_out}
    tolerance = {"x": grad_x_tol, "w_in": grad_w_in_tol, "b_in": grad_b_tol, "w_out": grad_w_out_tol}
    scale = {"x": x_scale, "w_in": w_in_scale, "b_in": b_scale, "w_out": w_out_scale}
    return Gradients(values, tolerance, scale)


def check_gradients(target: Target, case: Case, *, exact: bool = False) -> None:
    """Run ``cmm`` and ``fff_backward`` on the case and compare every gradient with the oracle's."""
    from fffcore.api import cmm
    from fffcore.backward import fff_backward

    built = case.build()
    layer = case.layer
    adapter = adapter_for(case.array_type)
    x = built.x
    leading = tuple(int(s) for s in x.shape[:-1])
    rows = built.rows
    g = upstream_gradient(case, rows, layer.d_out, layer.dtype, integer=exact)
    g_native = adapter.from_numpy(g.reshape((*leading, layer.d_out)), layer.dtype, adapter.device_of(x))
    with np.errstate(all="ignore"):
        try:
            nodes = adapter.to_numpy(cmm(x, built.params, backend=target.backend).nodes)
            result = fff_backward(x, built.params, g_native, backend=target.backend)
        except Exception as error:
            raise PropertyFailure(f"fff_backward raised {type(error).__name__}: {error}") from error
    nodes = nodes.reshape(rows, layer.trees, layer.depth + 1)
    checks.check_path_structure(nodes, layer.depth, leading)
    accumulation = target.accumulation(layer.dtype)
    oracle = oracle_gradients(built, nodes, g, accumulation)
    for name in NAMES:
        got = getattr(result, name)
        if name == "b_in" and not layer.bias:
            if got is not None:
                raise PropertyFailure("grad b_in: expected None for a layer without bias")
            continue
        if got is None:
            raise PropertyFailure(f"grad {name}: None, expected an array")
        if array_type(got) != case.array_type:
            raise PropertyFailure(f"grad {name}: a {type(got).__name__}, expected a {case.array_type} array like x")
        actual = adapter.to_numpy(got).astype(np.float64)
        expected = oracle.values[name]
        shape = (*leading, layer.d_in) if name == "x" else expected.shape
        if actual.shape != tuple(shape):
            raise PropertyFailure(f"grad {name}: shape {actual.shape}, expected {tuple(shape)}")
        actual = actual.reshape(expected.shape)
        tolerance = oracle.tolerance[name]
        if exact:
            # Integer sums whose terms' magnitudes add up to less than 1/u_a are exact in the accumulation
            # dtype; one rounding to storage follows (a bfloat16 603 is 604). Larger ones keep the tolerance.
            exact_here = oracle.scale[name] < 1.0 / tolerances.accumulation_roundoff(layer.dtype, accumulation)
            expected = np.where(exact_here, round_to_dtype(expected, layer.dtype), expected)
            tolerance = np.where(exact_here, 0.0, tolerance)
        unverifiable = tolerances.may_overflow(layer.dtype, np.abs(expected) + tolerance, 2 * layer.d_in + 4)
        bad = checks.mismatches(actual, expected, tolerance, unverifiable)
        if np.any(bad):
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise PropertyFailure(
                f"grad {name}{list(index)}: {checks.num(actual[index])}, expected {checks.num(expected[index])} "
                f"+- {tolerance[index]:.3g} (float64 along the backend's own path"
                + (", exact: integer data" if exact else "")
                + ")"
            )
