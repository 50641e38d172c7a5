"""Comparisons of a backend's results with the float64 oracle, under the rules of :mod:`.tolerances`.

Each ``check_*`` function raises :class:`PropertyFailure` with a message that
says where (row, tree, level, output column), what was expected and what came.

Special values are compared by class first, because their class does not
depend on the summation order: a sum is NaN when any term is NaN or it holds
both +inf and -inf, else +-inf when any term is infinite, whatever the order.
So where the oracle says NaN the backend must say NaN, where it says +-inf the
backend must say the same infinity, and only finite values are compared with
tolerances. Elements whose magnitude may legitimately overflow the dtype are
not compared (:func:`fffcore.conformance.tolerances.may_overflow`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from fffcore.conformance import tolerances
from fffcore.conformance.cases import Built
from fffcore.params import FFFParams
from fffcore.reference.oracle import PathEvaluation, evaluate_path, oracle_cmm

#: At most this many valid paths per tree, and combinations per row, are tried for ambiguous rows.
MAX_PATHS_PER_TREE = 16
MAX_PATH_COMBINATIONS = 256


class PropertyFailure(AssertionError):
    """A backend broke a property; the message says where and how."""


@dataclass(frozen=True)
class OracleAlongPath:
    """The oracle along some paths, with the tolerances that go with it."""

    evaluation: PathEvaluation
    logit_tolerance: np.ndarray  # (B, K, L)
    logit_unverifiable: np.ndarray  # (B, K, L) bool
    output_tolerance: np.ndarray  # (B, d_out)
    output_unverifiable: np.ndarray  # (B, d_out) bool


def oracle_along(
    x64: np.ndarray, params64: FFFParams, dtype: str, nodes: np.ndarray, accumulation: str | None = None
) -> OracleAlongPath:
    """Evaluate the float64 oracle on rows ``x64`` (B, d_in) along ``nodes`` (B, K, L) for a ``dtype`` backend.

    ``accumulation``: the dtype the backend accumulates in (``Backend.accumulation_dtypes``); None: ``dtype``.
    """
    evaluation = evaluate_path(x64, params64, nodes)
    d_in = params64.d_in
    logit_tol = tolerances.logit_tolerance(dtype, d_in, evaluation.logit_scale, accumulation=accumulation)
    tree = np.arange(params64.trees)[None, :, None]
    w_out_abs = np.abs(params64.w_out[tree, nodes])  # (B, K, L, d_out)
    output_tol = tolerances.output_tolerance(
        dtype,
        params64.activation,
        evaluation.logits,
        logit_tol,
        w_out_abs,
        evaluation.output_scale,
        accumulation=accumulation,
        output64=evaluation.output,
    )
    terms = nodes.shape[1] * nodes.shape[2]
    return OracleAlongPath(
        evaluation,
        logit_tol,
        tolerances.may_overflow(dtype, evaluation.logit_scale, d_in, accumulation=accumulation),
        output_tol,
        tolerances.may_overflow(dtype, evaluation.output_scale + output_tol, terms, accumulation=accumulation),
    )


def mismatches(actual: np.ndarray, expected: np.ndarray, tolerance: np.ndarray, unverifiable: np.ndarray) -> np.ndarray:
    """Boolean mask of elements where ``actual`` breaks the rules against float64 ``expected``."""
    actual = actual.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        finite_bad = ~(np.abs(actual - expected) <= tolerance) & ~unverifiable
        return np.where(
            np.isnan(expected), ~np.isnan(actual), np.where(np.isinf(expected), actual != expected, finite_bad)
        )


def first_difference(expected: np.ndarray, actual: np.ndarray) -> tuple[int, ...] | None:
    """The index of the first element where two arrays of one shape differ (NaN equals NaN), or None."""
    with np.errstate(invalid="ignore"):
        same = expected == actual
        if expected.dtype.kind == "f":
            same |= np.isnan(expected) & np.isnan(actual)
    if np.all(same):
        return None
    return tuple(int(i) for i in np.argwhere(~same)[0])


def check_path_structure(nodes: np.ndarray, depth: int, leading: tuple[int, ...]) -> None:
    """Every path starts at the root and each next node is a child (2n+1 or 2n+2) of the previous."""
    if nodes.shape[-1] and np.any(nodes[..., 0] != 0):
        row, tree = np.argwhere(nodes[..., 0] != 0)[0]
        raise PropertyFailure(
            f"{where(row, leading)}, tree {tree}: the path starts at node {nodes[row, tree, 0]}, not the root 0; "
            f"path {nodes[row, tree].tolist()}"
        )
    parent, child = nodes[..., :-1], nodes[..., 1:]
    bad = (child != 2 * parent + 1) & (child != 2 * parent + 2)
    if np.any(bad):
        row, tree, level = np.argwhere(bad)[0]
        raise PropertyFailure(
            f"{where(row, leading)}, tree {tree}: node {child[row, tree, level]} at level {level + 1} is not a child "
            f"of node {parent[row, tree, level]} (children are 2n+1 and 2n+2); path {nodes[row, tree].tolist()}"
        )


def check_branches(
    built: Built, logits: np.ndarray, nodes: np.ndarray, leading: tuple[int, ...], accumulation: str | None = None
) -> OracleAlongPath:
    """The path is valid: each branch matches the float64 logit's sign unless that logit is inside the band.

    Also checks that the backend followed its own logits (``> 0`` right, ``< 0``
    or NaN left; an exact 0 it returns may be a rounded tiny value, so either).
    Returns the oracle along the backend's path for further checks.
    """
    dtype = built.case.layer.dtype
    oracle = oracle_along(built.oracle_x, built.oracle_params, dtype, nodes, accumulation)
    if nodes.shape[-1] < 2:
        return oracle
    went_right = nodes[..., 1:] == 2 * nodes[..., :-1] + 2
    z = oracle.evaluation.logits[..., :-1]
    with np.errstate(invalid="ignore"):
        must_go_right = z > 0  # NaN compares false: goes left
    scale = oracle.evaluation.logit_scale[..., :-1]
    d_in = built.oracle_params.d_in
    ambiguous = tolerances.branch_is_ambiguous(dtype, d_in, z, scale, accumulation=accumulation)
    wrong = (went_right != must_go_right) & ~ambiguous & ~oracle.logit_unverifiable[..., :-1]
    if np.any(wrong):
        row, tree, level = np.argwhere(wrong)[0]
        band = float(tolerances.branch_band(dtype, d_in, scale[row, tree, level], accumulation=accumulation))
        side = "right" if went_right[row, tree, level] else "left"
        raise PropertyFailure(
            f"{where(row, leading)}, tree {tree}, level {level}: at node {nodes[row, tree, level]} the path went "
            f"{side} to node {nodes[row, tree, level + 1]}, but the float64 logit is {num(z[row, tree, level])}, "
            f"outside the rounding band +-{band:.3g} (the branch is right exactly when logit > 0); the backend "
            f"returned logit {num(logits[row, tree, level])}; path {nodes[row, tree].tolist()}"
        )
    own = logits[..., :-1].astype(np.float64)
    with np.errstate(invalid="ignore"):
        inconsistent = ((own > 0) & ~went_right) | (((own < 0) | np.isnan(own)) & went_right)
    if np.any(inconsistent):
        row, tree, level = np.argwhere(inconsistent)[0]
        raise PropertyFailure(
            f"{where(row, leading)}, tree {tree}, level {level}: the backend returned logit "
            f"{num(own[row, tree, level])} at node {nodes[row, tree, level]} but went to node "
            f"{nodes[row, tree, level + 1]} (right is 2n+2, taken exactly when logit > 0); "
            f"path {nodes[row, tree].tolist()}"
        )
    return oracle


def check_logits(logits: np.ndarray, oracle: OracleAlongPath, leading: tuple[int, ...], nodes: np.ndarray) -> None:
    """The backend's logits equal the float64 logits along its own path, within the logit tolerance."""
    expected = oracle.evaluation.logits
    bad = mismatches(logits, expected, oracle.logit_tolerance, oracle.logit_unverifiable)
    if np.any(bad):
        row, tree, level = np.argwhere(bad)[0]
        raise PropertyFailure(
            f"{where(row, leading)}, tree {tree}, level {level} (node {nodes[row, tree, level]}): logit "
            f"{num(logits[row, tree, level])}, expected {num(expected[row, tree, level])} +- "
            f"{oracle.logit_tolerance[row, tree, level]:.3g} (float64 along the backend's own path)"
        )


def check_output(built: Built, output: np.ndarray, leading: tuple[int, ...], accumulation: str | None = None) -> None:
    """The backend's output equals the float64 output along some valid path, within the output tolerance.

    Rows whose float64 path has no logit inside the rounding band have exactly
    one valid path, checked in one vectorised step. Rows with a near-tie are
    checked against every valid path (both children at each ambiguous node, at
    most :data:`MAX_PATH_COMBINATIONS`); the output must match one of them.
    """
    dtype = built.case.layer.dtype
    params64 = built.oracle_params
    x64 = built.oracle_x
    _, nodes64 = oracle_cmm(x64, params64)
    oracle = oracle_along(x64, params64, dtype, nodes64, accumulation)
    ambiguous = tolerances.branch_is_ambiguous(
        dtype,
        params64.d_in,
        oracle.evaluation.logits[..., :-1],
        oracle.evaluation.logit_scale[..., :-1],
        accumulation=accumulation,
    )
    undecided_rows = np.any(ambiguous, axis=(1, 2))
    bad = mismatches(output, oracle.evaluation.output, oracle.output_tolerance, oracle.output_unverifiable)
    bad[undecided_rows] = False
    if np.any(bad):
        row, column = np.argwhere(bad)[0]
        raise PropertyFailure(_output_message(row, column, output, oracle, leading, nodes64[row]))
    for row in np.flatnonzero(undecided_rows):
        candidates = valid_path_combinations(x64[row], params64, dtype, accumulation)
        if candidates is None:
            continue  # too many near-ties to enumerate: this row cannot be checked
        rows = np.repeat(x64[row : row + 1], len(candidates), axis=0)
        along = oracle_along(rows, params64, dtype, candidates, accumulation)
        bad = mismatches(
            np.broadcast_to(output[row], along.evaluation.output.shape),
            along.evaluation.output,
            along.output_tolerance,
            along.output_unverifiable,
        )
        if np.all(np.any(bad, axis=1)):
            first = int(np.argmin(np.sum(bad, axis=1)))
            column = int(np.flatnonzero(bad[first])[0])
            message = _output_message(0, column, output[row : row + 1], _row_of(along, first), (), candidates[first])
            raise PropertyFailure(
                f"{where(row, leading)} has near-ties; its output matches none of the {len(candidates)} valid "
                f"paths; closest: {message}"
            )


def valid_path_combinations(
    x64: np.ndarray, params64: FFFParams, dtype: str, accumulation: str | None = None
) -> np.ndarray | None:
    """Every valid path of one row (d_in,), as (C, K, D+1) node arrays; None when there are too many."""
    per_tree = []
    for tree in range(params64.trees):
        paths = _valid_paths_in_tree(x64, params64, dtype, tree, accumulation)
        if paths is None:
            return None
        per_tree.append(paths)
    count = int(np.prod([len(p) for p in per_tree]))
    if count > MAX_PATH_COMBINATIONS:
        return None
    return np.array([list(combo) for combo in itertools.product(*per_tree)], dtype=np.int64)


def _valid_paths_in_tree(
    x64: np.ndarray, params64: FFFParams, dtype: str, tree: int, accumulation: str | None
) -> list[list[int]] | None:
    paths: list[list[int]] = [[0]]
    for _ in range(params64.depth):
        longer = []
        for path in paths:
            node = path[-1]
            weights = params64.w_in[tree, node]
            bias = 0.0 if params64.b_in is None else params64.b_in[tree, node]
            with np.errstate(invalid="ignore", over="ignore"):
                logit = float(x64 @ weights + bias)
                scale = float(np.abs(x64) @ np.abs(weights) + abs(bias))
            ambiguous = tolerances.branch_is_ambiguous(
                dtype, params64.d_in, np.array(logit), np.array(scale), accumulation=accumulation
            )
            if ambiguous:
                longer += [[*path, 2 * node + 1], [*path, 2 * node + 2]]
            else:
                longer.append([*path, 2 * node + 1 + int(logit > 0)])
        paths = longer
        if len(paths) > MAX_PATHS_PER_TREE:
            return None
    return paths


def _row_of(along: OracleAlongPath, index: int) -> OracleAlongPath:
    pick = slice(index, index + 1)
    evaluation = PathEvaluation(
        along.evaluation.logits[pick],
        along.evaluation.logit_scale[pick],
        along.evaluation.output[pick],
        along.evaluation.output_scale[pick],
    )
    return OracleAlongPath(
        evaluation,
        along.logit_tolerance[pick],
        along.logit_unverifiable[pick],
        along.output_tolerance[pick],
        along.output_unverifiable[pick],
    )


def _output_message(
    row: int, column: int, output: np.ndarray, oracle: OracleAlongPath, leading: tuple[int, ...], path: np.ndarray
) -> str:
    expected = oracle.evaluation.output[row, column]
    return (
        f"{where(row, leading)}, output column {column}: {num(output[row, column])}, expected {num(expected)} "
        f"+- {oracle.output_tolerance[row, column]:.3g} (float64 along path {np.asarray(path).tolist()}, "
        "one list per tree)"
    )


def check_exact(
    built: Built,
    logits: np.ndarray,
    nodes: np.ndarray,
    output: np.ndarray,
    leading: tuple[int, ...],
    accumulation: str | None = None,
) -> None:
    """Integer-valued cases: paths and logits bit for bit, and the tree sum bit for bit where it is exact.

    Every product and partial sum of integers below 2**p (p significand bits)
    is exact in any order, so the logits, the branches (ties included: 0 goes
    left) and, for relu and identity, the outputs have one right answer.
    """
    layer = built.case.layer
    limit = 2.0 ** tolerances.SIGNIFICAND_BITS[layer.dtype]
    logits64, nodes64 = oracle_cmm(built.oracle_x, built.oracle_params)
    evaluation = evaluate_path(built.oracle_x, built.oracle_params, nodes64)
    if np.any(evaluation.logit_scale > limit):
        raise AssertionError("conformance suite bug: an integer case whose logits are not exact in its dtype")
    if not np.array_equal(nodes, nodes64):
        row, tree = np.argwhere(np.any(nodes != nodes64, axis=2))[0]
        raise PropertyFailure(
            f"{where(row, leading)}, tree {tree}: path {nodes[row, tree].tolist()}, expected "
            f"{nodes64[row, tree].tolist()} exactly (integer data, exact logits "
            f"{logits64[row, tree].tolist()}; a logit of exactly 0 goes left)"
        )
    if not np.array_equal(logits.astype(np.float64), logits64):
        row, tree, level = np.argwhere(logits.astype(np.float64) != logits64)[0]
        raise PropertyFailure(
            f"{where(row, leading)}, tree {tree}, level {level}: logit {num(logits[row, tree, level])}, expected "
            f"exactly {num(logits64[row, tree, level])} (integer data: every order of summation is exact)"
        )
    exact_sum = layer.activation in ("relu", "identity") and not np.any(evaluation.output_scale > limit)
    if exact_sum:
        expected = evaluation.output
        if not np.array_equal(output.astype(np.float64), expected):
            row, column = np.argwhere(output.astype(np.float64) != expected)[0]
            raise PropertyFailure(
                f"{where(row, leading)}, output column {column}: {num(output[row, column])}, expected exactly "
                f"{num(expected[row, column])} (integer data and {layer.activation}: the tree sum is exact)"
            )
    else:
        check_output(built, output, leading, accumulation)


def num(value: object) -> str:
    """A scalar as a plain Python float repr (``-0.1786``, ``nan``, ``inf``), whatever its numpy type."""
    return repr(float(value))  # type: ignore[arg-type]


def where(row: int, leading: tuple[int, ...]) -> str:
    """``"row 3"`` or, with several leading dimensions, ``"row 3 (x[1, 0])"``."""
    if len(leading) > 1:
        index = ", ".join(str(int(i)) for i in np.unravel_index(int(row), leading))
        return f"row {int(row)} (x[{index}])"
    return f"row {int(row)}"
