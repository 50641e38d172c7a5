"""Is a timed output right? The check ``fff compare`` and the suite run before reporting a time.

The yardstick is the float64 oracle (:func:`fffcore.reference.oracle.evaluate_path`)
evaluated along the path the implementation itself took, with the worst-case
rounding bounds of the conformance suite (:mod:`fffcore.conformance.tolerances`,
derived there from the dtype, ``d_in``, the tree size and the magnitudes
``sum |x w| + |b|`` of each logit):

* Path: it must start at the root and step to a child at every level; a
  branch may go against the sign of the float64 logit only where that logit
  lies inside its rounding band (a near tie, counted and allowed). Outside
  the band the branch is wrong.
* Output: within ``output_tolerance`` of the float64 oracle along the same path.

An implementation that does not report its path (the paper's baseline) is
checked along the float64 path, leaving out rows with a near tie anywhere on
it (they may rightly take another path); those rows are counted.

These are bounds, not estimates: a wrong path, weight, bias, activation
scale or tree sum fails them, while differences below the rounding bound
(e.g. the tanh approximation of GELU in place of the exact one in float32)
are not claimed to be caught here; the conformance suite tests those on
inputs built to expose them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fffcore.conformance import tolerances
from fffcore.conformance.checks import oracle_along
from fffcore.params import FFFParams
from fffcore.reference.oracle import oracle_cmm

#: Rows evaluated in float64 at a time, so the (rows, K, D+1, d_in) gathers stay tens of megabytes.
CHUNK_ROWS = 256


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one timed output.

    Attributes:
        ok: True when every checked row is within the bounds.
        detail: one line: what was checked, or the first failure with its numbers.
        rows_checked: rows compared.
        rows_skipped: rows left out because their float64 path has a near tie (only without a reported path).
        near_ties: branch decisions that went against the float64 sign within the rounding band (allowed).
        worst: the largest |error| / bound over the checked output elements (<= 1 when ok).
    """

    ok: bool
    detail: str
    rows_checked: int
    rows_skipped: int = 0
    near_ties: int = 0
    worst: float = 0.0


def check_fff_output(
    x: np.ndarray,
    params: FFFParams,
    output: np.ndarray,
    nodes: np.ndarray | None,
    *,
    accumulation: str | None = None,
) -> CheckResult:
    """Check an FFF output of ``x`` against the float64 oracle.

    Args:
        x: (B, d_in) numpy input as the implementation received it.
        params: the layer (numpy parameters).
        output: (B, d_out) the implementation's output, as numpy.
        nodes: (B, K, D+1) the nodes it visited, or None when it does not report them.
        accumulation: the dtype the implementation accumulates in, when wider than
            ``params.dtype`` (a backend's ``accumulation_dtypes``); None: ``params.dtype``.
    """
    rows = x.shape[0]
    expected_shape = (rows, params.d_out)
    if tuple(output.shape) != expected_shape:
        return CheckResult(False, f"output shape {tuple(output.shape)}, expected {expected_shape}", 0)
    levels = params.depth + 1
    if nodes is not None and tuple(nodes.shape) != (rows, params.trees, levels):
        return CheckResult(False, f"nodes shape {tuple(nodes.shape)}, expected {(rows, params.trees, levels)}", 0)
    # Round x to the layer's dtype as every backend does, and widen the parameters once (not per chunk):
    # the oracle then evaluates in float64 exactly what the backend was given.
    rounded = np.asarray(x).astype(params.dtype)
    wide = params if params.dtype == "float64" else params.astype(np.float64)
    checked = skipped = ties = 0
    worst = 0.0
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, rows)
        part = _check_rows(
            rounded[start:stop],
            wide,
            params.dtype,
            output[start:stop],
            None if nodes is None else nodes[start:stop],
            start,
            accumulation,
        )
        if not part.ok:
            return CheckResult(False, part.detail, checked, skipped, ties, worst)
        checked += part.rows_checked
        skipped += part.rows_skipped
        ties += part.near_ties
        worst = max(worst, part.worst)
    how = "along its own path" if nodes is not None else "along the float64 path"
    detail = f"{checked} rows within the float64 bounds {how} (worst error {worst:.2g} of the bound)"
    if skipped:
        detail += f"; {skipped} rows with a near tie left out"
    if ties:
        detail += f"; {ties} near-tie branches went the other way (allowed)"
    return CheckResult(True, detail, checked, skipped, ties, worst)


def _check_rows(
    x: np.ndarray,
    wide: FFFParams,
    dtype: str,
    output: np.ndarray,
    nodes: np.ndarray | None,
    first_row: int,
    accumulation: str | None,
) -> CheckResult:
    """Rows ``first_row`` onwards: ``x`` in the layer's ``dtype``, ``wide`` its parameters in float64.

    A failure names the row by its number in the whole input.
    """
    reported = nodes is not None
    if nodes is None:
        _, nodes = oracle_cmm(x, wide)
    else:
        failure = _invalid_path(nodes, first_row)
        if failure:
            return CheckResult(False, failure, 0)
    nodes = np.asarray(nodes, dtype=np.int64)
    oracle = oracle_along(x, wide, dtype, nodes, accumulation)  # the conformance suite's bounds
    along, band = oracle.evaluation, oracle.logit_tolerance  # band: (B, K, L)
    # The last level's sign decides no branch, so only levels 0..D-1 can be ties that matter.
    branch_tie = tolerances.branch_is_ambiguous(
        dtype, wide.d_in, along.logits, along.logit_scale, accumulation=accumulation
    )[:, :, :-1]
    went_right = nodes[:, :, 1:] == 2 * nodes[:, :, :-1] + 2
    against_sign = went_right != (along.logits[:, :, :-1] > 0)
    wrong_branch = against_sign & ~branch_tie
    if wrong_branch.any():
        b, k, level = np.argwhere(wrong_branch)[0]
        side = "right" if went_right[b, k, level] else "left"
        return CheckResult(
            False,
            f"row {first_row + b} tree {k} level {level}: went {side} at node {nodes[b, k, level]} but the float64 "
            f"logit is {along.logits[b, k, level]:.6g}, outside the rounding band {band[b, k, level]:.3g}",
            0,
        )
    ties = int(np.count_nonzero(against_sign))
    # Without a reported path, a row with a near tie on the float64 path may rightly have taken another one.
    keep = np.ones(x.shape[0], dtype=bool) if reported else ~branch_tie.any(axis=(1, 2))

    bound = oracle.output_tolerance
    error = np.abs(output.astype(np.float64) - along.output)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(bound > 0, error / bound, np.where(error == 0, 0.0, np.inf))
    ratio = np.where(np.isnan(error), np.inf, ratio)[keep]
    worst = float(ratio.max()) if ratio.size else 0.0
    if worst > 1:
        kept_rows = np.flatnonzero(keep)
        b, o = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        row = kept_rows[b]
        return CheckResult(
            False,
            f"row {first_row + row} output {o}: got {output[row, o]:.7g}, float64 oracle {along.output[row, o]:.7g}, "
            f"|error| {error[row, o]:.3g} > bound {bound[row, o]:.3g}",
            0,
        )
    return CheckResult(True, "", int(keep.sum()), int((~keep).sum()), ties, worst)


def _invalid_path(nodes: np.ndarray, first_row: int) -> str:
    """Empty when ``nodes`` (B, K, L) starts at the root and steps to a child each level, else what is wrong."""
    if np.any(nodes[:, :, 0] != 0):
        b, k = np.argwhere(nodes[:, :, 0] != 0)[0]
        return f"row {first_row + b} tree {k}: path starts at node {nodes[b, k, 0]}, not the root 0"
    step = nodes[:, :, 1:] - 2 * nodes[:, :, :-1]
    bad = (step != 1) & (step != 2)
    if bad.any():
        b, k, level = np.argwhere(bad)[0]
        return (
            f"row {first_row + b} tree {k} level {level + 1}: node {nodes[b, k, level + 1]} "
            f"is not a child of node {nodes[b, k, level]}"
        )
    return ""
