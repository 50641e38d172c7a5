"""Calling a backend's backward pass and checking its gradients against :mod:`.gradient_oracle`.

For a backend that declares ``backward``: ``fffcore.cmm`` gives its paths, ``fffcore.fff_backward`` its
gradients, and the oracle evaluates the gradients of :mod:`fffcore.backward` in float64 along those
same paths (so a row within the rounding band of a tie is judged on the branch the backend took, as
the forward pass is), with the tolerances and IEEE classes derived in :mod:`.gradient_oracle`.
Every call's results are also checked for their array type, shape, dtype (the parameters') and device
(``x``'s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fffcore.arrays import array_type
from fffcore.conformance import checks, tolerances
from fffcore.conformance.adapters import ADAPTERS, adapter_for, round_to_dtype, with_layout
from fffcore.conformance.cases import Built, Case
from fffcore.conformance.checks import PropertyFailure
from fffcore.conformance.gradient_oracle import NAMES, oracle_gradients
from fffcore.conformance.target import Target


@dataclass(frozen=True)
class Upstream:
    """A case's ``grad_y``: as the backend receives it, and as float64 rows rounded to the layer's dtype."""

    native: Any
    rows: np.ndarray  # (B, d_out)


def upstream_of(built: Built) -> Upstream:
    """The case's ``grad_y`` (:meth:`~fffcore.conformance.cases.InputSpec.upstream_values`), in the
    input's array type, dtype, device and layout."""
    case = built.case
    adapter = ADAPTERS[case.array_type]
    values = case.input.upstream_values(case.layer)
    native = with_layout(adapter, values, case.input.dtype, case.device, case.input.layout)
    seen = adapter.to_numpy(native).astype(np.float64)  # exactly what the backend receives
    return Upstream(native, round_to_dtype(seen, case.layer.dtype).reshape(-1, case.layer.d_out))


def call_backward(target: Target, built: Built, grad_y: Any) -> dict[str, np.ndarray | None]:
    """``fffcore.fff_backward`` on the case, its results checked for array type, shape, dtype and device,
    and returned as numpy (``x``'s gradient with x's shape; None for ``b_in`` of a layer without bias)."""
    from fffcore.backward import fff_backward

    case, layer = built.case, built.case.layer
    with np.errstate(all="ignore"):
        try:
            result = fff_backward(built.x, built.params, grad_y, backend=target.backend)
        except Exception as error:
            raise PropertyFailure(f"fff_backward raised {type(error).__name__}: {error}") from error
    adapter = ADAPTERS[case.array_type]
    device = adapter.device_of(built.x)
    shapes = {
        "x": tuple(int(s) for s in built.x.shape),
        "w_in": (layer.trees, built.params.n_nodes, layer.d_in),
        "b_in": (layer.trees, built.params.n_nodes),
        "w_out": (layer.trees, built.params.n_nodes, layer.d_out),
    }
    arrays: dict[str, np.ndarray | None] = {}
    for name in NAMES:
        got = getattr(result, name)
        if name == "b_in" and not layer.bias:
            if got is not None:
                raise PropertyFailure("grad b_in: expected None for a layer without bias")
            arrays[name] = None
            continue
        if got is None:
            raise PropertyFailure(f"grad {name}: None, expected an array")
        kind = array_type(got)
        if kind != case.array_type or adapter_for(kind) is None:
            raise PropertyFailure(
                f"grad {name}: a {type(got).__module__}.{type(got).__name__}, expected a {case.array_type} array like x"
            )
        if tuple(got.shape) != shapes[name]:
            raise PropertyFailure(f"grad {name}: shape {tuple(got.shape)}, expected {shapes[name]}")
        if adapter.dtype_of(got) != layer.dtype:
            raise PropertyFailure(
                f"grad {name}: dtype {adapter.dtype_of(got)}, expected {layer.dtype} like the parameters"
            )
        if adapter.device_of(got) != device:
            raise PropertyFailure(f"grad {name}: on {adapter.device_of(got)}, expected {device} like x")
        arrays[name] = adapter.to_numpy(got)
    return arrays


def backend_paths(target: Target, built: Built) -> np.ndarray:
    """The backend's own paths, (B, K, L) int64, from ``fffcore.cmm``; checked for their structure."""
    from fffcore.api import cmm

    layer = built.case.layer
    with np.errstate(all="ignore"):
        try:
            nodes = adapter_for(built.case.array_type).to_numpy(
                cmm(built.x, built.params, backend=target.backend).nodes
            )
        except Exception as error:
            raise PropertyFailure(f"cmm raised {type(error).__name__}: {error}") from error
    nodes = nodes.reshape(built.rows, layer.trees, layer.depth + 1)
    checks.check_path_structure(nodes, layer.depth, tuple(int(s) for s in built.x.shape[:-1]))
    return nodes


def check_gradients(target: Target, case: Case, *, exact: bool = False) -> None:
    """Run ``cmm`` and ``fff_backward`` on the case and compare every gradient with the oracle's.

    ``exact``: integer-valued data and upstream gradients with relu or identity, where every gradient
    whose terms' magnitudes add up to less than ``1/u_a`` is exact (after its one rounding to storage).
    """
    built = case.build()
    layer = case.layer
    upstream = upstream_of(built)
    nodes = backend_paths(target, built)
    got = call_backward(target, built, upstream.native)
    accumulation = target.accumulation(layer.dtype)
    oracle = oracle_gradients(built, nodes, upstream.rows, accumulation)
    leading = tuple(int(s) for s in built.x.shape[:-1])
    for name in NAMES:
        actual = got[name]
        if actual is None:
            continue
        expected = oracle.values[name]
        actual = actual.astype(np.float64).reshape(expected.shape)
        tolerance = oracle.tolerance[name]
        if exact:
            # Integer sums whose terms' magnitudes add up to less than 1/u_a are exact in the accumulation
            # dtype; one rounding to storage follows (a bfloat16 603 is 604). Larger ones keep the tolerance.
            exact_here = oracle.scale[name] < 1.0 / tolerances.accumulation_roundoff(layer.dtype, accumulation)
            expected = np.where(exact_here, round_to_dtype(expected, layer.dtype), expected)
            tolerance = np.where(exact_here, 0.0, tolerance)
        unknown = oracle.unknown[name]
        bad = checks.mismatches(actual, expected, tolerance, unknown) & ~unknown
        if np.any(bad):
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            where = f"{name}{list(index)}"
            if name == "x":
                where = f"x, {checks.where(index[0], leading)}, column {index[1]}"
            raise PropertyFailure(
                f"grad {where}: {checks.num(actual[index])}, expected {checks.num(expected[index])} "
                f"+- {tolerance[index]:.3g} (float64 along the backend's own path"
                + (", exact: integer data" if exact else "")
                + (f"; grad_y holds {_describe_upstream(upstream.rows)}" if case.input.upstream == "specials" else "")
                + ")"
            )


def _describe_upstream(rows: np.ndarray) -> str:
    """What special values ``grad_y`` holds, for a failure message."""
    with np.errstate(invalid="ignore"):
        counts = {
            "NaN": int(np.isnan(rows).sum()),
            "+inf": int((rows == np.inf).sum()),
            "-inf": int((rows == -np.inf).sum()),
            "zeros": int((rows == 0).sum()),
        }
    return ", ".join(f"{count} {what}" for what, count in counts.items() if count) or "no special values"
