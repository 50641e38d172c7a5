"""The properties of the conformance suite, one function each, and the table that names them.

Every property receives the :class:`~fffcore.conformance.target.Target` and one
drawn :class:`~fffcore.conformance.cases.Case`, calls the backend through
``fffcore.cmm`` / ``fffcore.fff`` (so the core's validation runs as in real
use) and raises :class:`~fffcore.conformance.checks.PropertyFailure` when the
backend breaks it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fffcore.arrays import array_type
from fffcore.conformance import checks
from fffcore.conformance.adapters import ADAPTERS, adapter_for
from fffcore.conformance.cases import Built, Case
from fffcore.conformance.checks import PropertyFailure
from fffcore.conformance.target import Target
from fffcore.params import FFFParams

if TYPE_CHECKING:  # the strategies import Hypothesis, which this module must load without
    from fffcore.conformance.strategies import Scope


@dataclass(frozen=True)
class Outputs:
    """A backend's results as numpy, flattened to rows: logits and nodes (B, K, L), output (B, d_out)."""

    logits: np.ndarray
    nodes: np.ndarray
    output: np.ndarray
    leading: tuple[int, ...]


def call_backend(target: Target, built: Built, *, check_types: bool = False) -> Outputs:
    """Run ``cmm`` and ``fff`` on the case; with ``check_types``, also check shapes, dtypes, array type, device."""
    from fffcore.api import cmm, fff

    x = built.x
    leading = tuple(int(s) for s in x.shape[:-1])
    # NaN and infinite inputs make numpy-based backends warn; the suite checks the values instead
    with np.errstate(all="ignore"):
        try:
            logits, nodes = cmm(x, built.params, backend=target.backend)
        except Exception as error:
            raise PropertyFailure(f"cmm raised {type(error).__name__}: {error}") from error
        try:
            output = fff(x, built.params, backend=target.backend)
        except Exception as error:
            raise PropertyFailure(f"fff raised {type(error).__name__}: {error}") from error
    layer = built.case.layer
    tail = (layer.trees, layer.depth + 1)
    expected = (
        ("cmm logits", logits, leading + tail, layer.dtype),
        ("cmm nodes", nodes, leading + tail, "int64"),
        ("fff output", output, (*leading, layer.d_out), layer.dtype),
    )
    arrays = []
    for what, result, shape, dtype in expected:
        arrays.append(_as_numpy(what, result, built, shape, dtype, check_types))
    rows = (-1,) if leading != () else (1,)
    return Outputs(
        arrays[0].reshape(rows + tail),
        arrays[1].reshape(rows + tail),
        arrays[2].reshape((*rows, layer.d_out)),
        leading,
    )


def _as_numpy(
    what: str, result: Any, built: Built, shape: tuple[int, ...], dtype: str, check_types: bool
) -> np.ndarray:
    case = built.case
    kind = array_type(result)
    adapter = adapter_for(kind)
    if adapter is None or (check_types and kind != case.array_type):
        raise PropertyFailure(
            f"{what}: a {type(result).__module__}.{type(result).__name__}, expected a {case.array_type} array like x"
        )
    if check_types:
        if tuple(result.shape) != shape:
            raise PropertyFailure(f"{what}: shape {tuple(result.shape)}, expected {shape}")
        if adapter.dtype_of(result) != dtype:
            raise PropertyFailure(f"{what}: dtype {adapter.dtype_of(result)}, expected {dtype}")
        if adapter.device_of(result) != adapter.device_of(built.x):
            raise PropertyFailure(
                f"{what}: on {adapter.device_of(result)}, expected {adapter.device_of(built.x)} like x"
            )
    elif tuple(result.shape) != shape:
        raise PropertyFailure(f"{what}: shape {tuple(result.shape)}, expected {shape}")
    return adapter.to_numpy(result)


def result_types(target: Target, case: Case) -> None:
    """cmm and fff results have the right shapes, dtypes (params dtype, int64 nodes), array type and device."""
    call_backend(target, case.build(), check_types=True)


def input_unchanged(target: Target, case: Case) -> None:
    """Neither call writes to x or to the parameters (compared byte for byte, NaN payloads included)."""
    built = case.build()
    before = _snapshot(built)
    call_backend(target, built)
    _require_unchanged(before, _snapshot(built), "cmm or fff")


def _require_unchanged(before: dict[str, np.ndarray], after: dict[str, np.ndarray], calls: str) -> None:
    for name, old in before.items():
        new = after[name]
        if old.tobytes() == new.tobytes():
            continue
        with np.errstate(invalid="ignore"):
            differs = (old != new) & ~(np.isnan(old) & np.isnan(new))
        index = tuple(int(i) for i in np.argwhere(differs)[0]) if np.any(differs) else None
        where = f"first at {name}[{', '.join(map(str, index))}]: {old[index]!r} became {new[index]!r}" if index else ""
        raise PropertyFailure(f"{calls} modified the input {name} (byte for byte) {where}".strip())


def _snapshot(built: Built, more: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Copies, as numpy, of x, every parameter array the backend received (numpy, torch or cupy) and ``more``."""
    arrays = {"x": built.x, "w_in": built.params.w_in, "b_in": built.params.b_in, "w_out": built.params.w_out}
    arrays.update(more or {})
    snapshot = {}
    for name, array in arrays.items():
        if array is None:
            continue
        adapter = adapter_for(array_type(array))
        if adapter is None:
            raise AssertionError(f"conformance suite bug: no adapter for the {name} it built")
        snapshot[name] = np.array(adapter.to_numpy(array), copy=True)
    return snapshot


def repeatable(target: Target, case: Case) -> None:
    """Calling twice with the same arguments gives identical results, bit for bit."""
    built = case.build()
    first = call_backend(target, built)
    second = call_backend(target, built)
    _require_identical(first, second, "the second call")


def valid_paths(target: Target, case: Case) -> None:
    """Each returned path is a root-to-leaf path whose branches match the float64 logits outside the rounding band."""
    built = case.build()
    result = call_backend(target, built)
    checks.check_path_structure(result.nodes, case.layer.depth, result.leading)
    checks.check_branches(built, result.logits, result.nodes, result.leading, target.accumulation(case.layer.dtype))


def logits_along_path(target: Target, case: Case) -> None:
    """The returned logits equal the float64 logits along the backend's own path, within the derived tolerance."""
    built = case.build()
    result = call_backend(target, built)
    checks.check_path_structure(result.nodes, case.layer.depth, result.leading)
    oracle = checks.oracle_along(
        built.oracle_x, built.oracle_params, case.layer.dtype, result.nodes, target.accumulation(case.layer.dtype)
    )
    checks.check_logits(result.logits, oracle, result.leading, result.nodes)


def output_along_path(target: Target, case: Case) -> None:
    """The fff output equals the float64 output along a valid path, within the derived tolerance."""
    built = case.build()
    result = call_backend(target, built)
    checks.check_output(built, result.output, result.leading, target.accumulation(case.layer.dtype))


def exact_ties_and_sums(target: Target, case: Case) -> None:
    """Integer-valued data: ties go left, heap indices and logits are exact, the relu/identity tree sum is exact."""
    built = case.build()
    result = call_backend(target, built)
    checks.check_path_structure(result.nodes, case.layer.depth, result.leading)
    checks.check_exact(
        built, result.logits, result.nodes, result.output, result.leading, target.accumulation(case.layer.dtype)
    )


def nan_and_infinity(target: Target, case: Case) -> None:
    """Inputs holding inf, -inf and NaN: NaN logits go left and propagate, infinities follow IEEE arithmetic."""
    built = case.build()
    result = call_backend(target, built)
    checks.check_path_structure(result.nodes, case.layer.depth, result.leading)
    accumulation = target.accumulation(case.layer.dtype)
    oracle = checks.check_branches(built, result.logits, result.nodes, result.leading, accumulation)
    checks.check_logits(result.logits, oracle, result.leading, result.nodes)
    checks.check_output(built, result.output, result.leading, accumulation)


def large_batches(target: Target, case: Case) -> None:
    """Large batches and batches at the backend's thresholds: paths, logits and outputs, on sampled rows."""
    built = case.build()
    result = call_backend(target, built)
    checks.check_path_structure(result.nodes, case.layer.depth, result.leading)
    rows = sample_rows(built.rows)
    sample = replace(built, oracle_x=built.oracle_x[rows])
    leading = (len(rows),)
    accumulation = target.accumulation(case.layer.dtype)
    logits, nodes = result.logits[rows], result.nodes[rows]
    try:
        oracle = checks.check_branches(sample, logits, nodes, leading, accumulation)
        checks.check_logits(logits, oracle, leading, nodes)
        checks.check_output(sample, result.output[rows], leading, accumulation)
    except PropertyFailure as failure:
        numbering = ", ".join(f"{k}: {row}" for k, row in enumerate(rows))
        raise PropertyFailure(
            f"{failure} [of a batch of {built.rows} rows, {len(rows)} were checked; their numbers in the batch, "
            f"by position in the sample: {numbering}]"
        ) from None


def sample_rows(rows: int) -> np.ndarray:
    """Rows of a batch that every way of splitting it has at a boundary: the first and last four,
    both sides of every 64th row (block sizes that are powers of two up to 64 divide it), and the
    ends of each part when the batch is split into 2, 3, 4, 6, 8 or 16 parts (threads)."""
    chosen = set(range(min(rows, 4))) | set(range(max(0, rows - 4), rows))
    for boundary in range(64, rows, 64):
        chosen |= {boundary - 1, boundary}
    for parts in (2, 3, 4, 6, 8, 16):
        for part in range(1, parts):
            boundary = rows * part // parts
            chosen |= {boundary - 1, boundary}
    return np.array(sorted(row for row in chosen if 0 <= row < rows), dtype=np.int64)


#: Invalid calls, each made on the backend and on the reference: (name, how to break the call).
INVALID_CALLS: tuple[str, ...] = (
    "wrong_width",
    "zero_dim",
    "integer_dtype",
    "bool_dtype",
    "complex_dtype",
    "not_params",
    "params_mismatch",
)


def invalid_inputs(target: Target, case: Case) -> None:
    """Invalid calls raise the same exception types as the reference (wrong width or rank, non-float x, bad params)."""
    from fffcore.api import cmm, fff

    built = case.build()
    adapter = ADAPTERS[case.array_type]
    numpy_adapter = ADAPTERS["numpy"]
    for kind in INVALID_CALLS:
        for function in (fff, cmm):
            expected = _raised(
                lambda f=function, k=kind: f(*_invalid_call(k, built, numpy_adapter), backend="reference")
            )
            actual = _raised(lambda f=function, k=kind: f(*_invalid_call(k, built, adapter), backend=target.backend))
            if expected is None:
                raise AssertionError(f"conformance suite bug: the reference accepts the invalid call {kind!r}")
            if actual is None or not isinstance(actual, type(expected)):
                got = "nothing" if actual is None else f"{type(actual).__name__}: {actual}"
                raise PropertyFailure(
                    f"{function.__name__} with {kind.replace('_', ' ')}: raised {got}, expected "
                    f"{type(expected).__name__} like the reference ({expected})"
                )


def _invalid_call(kind: str, built: Built, adapter: Any) -> tuple[Any, Any]:
    case = built.case
    params = (
        built.params
        if adapter.name == case.array_type
        else built.oracle_params.astype("float64" if case.layer.dtype == "bfloat16" else case.layer.dtype)
    )
    d_in = case.layer.d_in
    device = case.device if adapter.name == case.array_type else "cpu"
    rows = np.ones((2, d_in))
    if kind == "wrong_width":
        return adapter.from_numpy(np.ones((2, d_in + 1)), "float32", device), params
    if kind == "zero_dim":
        return adapter.from_numpy(np.array(1.0), "float32", device), params
    if kind in ("integer_dtype", "bool_dtype", "complex_dtype"):
        dtype = {"integer_dtype": "int32", "bool_dtype": "bool", "complex_dtype": "complex64"}[kind]
        return _raw_array(adapter, rows.astype(dtype), device), params
    if kind == "not_params":
        return adapter.from_numpy(rows, "float32", device), {"w_in": params.w_in}
    # parameters built for one more input feature than x has, in the array type the valid parameters have
    wider = FFFParams.random(d_in + 1, case.layer.d_out, case.layer.depth, case.layer.trees, dtype="float32", seed=0)
    if params.array_type != "numpy":
        wider = FFFParams(
            *(
                None if w is None else adapter.from_numpy(w, "float32", device)
                for w in (wider.w_in, wider.b_in, wider.w_out)
            ),
            wider.activation,
        )
    return adapter.from_numpy(rows, "float32", device), wider


def _raw_array(adapter: Any, values: np.ndarray, device: str) -> Any:
    """``values`` in the adapter's library keeping their (non-floating) dtype."""
    if adapter.name == "numpy":
        return values.copy()
    if adapter.name == "torch":
        import torch

        return torch.from_numpy(values.copy()).to(device)
    import cupy

    return cupy.asarray(values)


def _raised(action: Callable[[], Any]) -> BaseException | None:
    try:
        action()
    except Exception as error:
        return error
    return None


#: Threads that call the backend at once in :func:`thread_safety`.
THREADS = 4


def thread_safety(target: Target, case: Case) -> None:
    """The backend called from several threads at once gives the same results as serial calls."""
    built = case.build()
    variants = [built] + [
        replace(case, input=replace(case.input, seed=case.input.seed + i)).build() for i in range(1, THREADS)
    ]
    serial = [call_backend(target, b) for b in variants]
    concurrent = _in_threads(lambda index: call_backend(target, variants[index]))
    for index, results in enumerate(concurrent):
        for repeat, result in enumerate(results):
            _require_identical(serial[index], result, f"thread {index} of {THREADS} (call {repeat + 1})")


def _in_threads(call: Callable[[int], Any], repeats: int = 3) -> list[list[Any]]:
    """``call(index)`` ``repeats`` times in each of :data:`THREADS` threads started together; the results
    per thread. A thread's exception becomes the :class:`PropertyFailure`, raised from this thread."""
    barrier = threading.Barrier(THREADS)
    concurrent: list[Any] = [None] * THREADS

    def work(index: int) -> None:
        barrier.wait()
        try:
            concurrent[index] = [call(index) for _ in range(repeats)]
        except BaseException as error:  # reported below, from the main thread
            concurrent[index] = error

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, results in enumerate(concurrent):
        if isinstance(results, BaseException):
            raise PropertyFailure(f"thread {index} of {THREADS}: {results}")
    return concurrent


def gradients_along_path(target: Target, case: Case) -> None:
    """fff_backward's gradients equal float64 along the backend's own path, within the derived tolerances."""
    from fffcore.conformance.backward import check_gradients

    check_gradients(target, case)


def exact_gradients(target: Target, case: Case) -> None:
    """Integer-valued data with relu or identity: every gradient is exact (and ties go left, as forward)."""
    from fffcore.conformance.backward import check_gradients

    check_gradients(target, case, exact=case.layer.activation in ("relu", "identity"))


def gradients_nan_and_infinity(target: Target, case: Case) -> None:
    """Inputs holding inf, -inf and NaN: the gradients' NaN and infinities follow IEEE arithmetic along the path."""
    from fffcore.conformance.backward import check_gradients

    check_gradients(target, case)


def gradients_special_upstream(target: Target, case: Case) -> None:
    """grad_y holding NaN, +-inf, the largest finite values, subnormals, signed zeros: IEEE classes along the path.

    Expected, derived along the path (:mod:`fffcore.conformance.gradient_oracle`): a NaN in ``grad_y[b, o]``
    makes NaN exactly all of grad x[b], the w_in and b_in gradients of every node row b visits and column
    o of their w_out gradients; an infinity gives +-inf where it meets nonzero factors, and NaN where it
    meets a certain zero (relu's slope below 0) or the other infinity; an infinity times a value whose
    tolerance reaches zero, and sums that may overflow, are of unknown class and not compared; finite
    entries are compared within the derived tolerance, zeros by value.
    """
    from fffcore.conformance.backward import check_gradients

    check_gradients(target, case)


def gradients_large_batches(target: Target, case: Case) -> None:
    """Gradients of large batches (thousands of rows, the paper's layer among them) and at the thresholds."""
    from fffcore.conformance.backward import check_gradients

    try:
        check_gradients(target, case)
    except PropertyFailure as failure:
        raise PropertyFailure(f"{failure} [a batch of {case.build().rows} rows]") from None


def gradients_unchanged(target: Target, case: Case) -> None:
    """fff_backward writes to none of x, grad_y and the parameters (compared byte for byte)."""
    from fffcore.conformance.backward import call_backward, upstream_of

    built = case.build()
    upstream = upstream_of(built)
    arrays = {"grad_y": upstream.native}
    before = _snapshot(built, arrays)
    call_backward(target, built, upstream.native)
    _require_unchanged(before, _snapshot(built, arrays), "fff_backward")


def gradients_repeatable(target: Target, case: Case) -> None:
    """Calling fff_backward twice with the same arguments gives identical gradients, bit for bit."""
    from fffcore.conformance.backward import call_backward, upstream_of

    built = case.build()
    upstream = upstream_of(built)
    first = call_backward(target, built, upstream.native)
    _require_same_gradients(first, call_backward(target, built, upstream.native), "the second call")


def gradients_thread_safety(target: Target, case: Case) -> None:
    """fff_backward called from several threads at once gives the same gradients as serial calls."""
    from fffcore.conformance.backward import call_backward, upstream_of

    variants = [case.build()] + [
        replace(case, input=replace(case.input, seed=case.input.seed + i)).build() for i in range(1, THREADS)
    ]
    upstreams = [upstream_of(built).native for built in variants]
    serial = [call_backward(target, built, g) for built, g in zip(variants, upstreams, strict=True)]
    concurrent = _in_threads(lambda i: call_backward(target, variants[i], upstreams[i]))
    for index, results in enumerate(concurrent):
        for repeat, result in enumerate(results):
            _require_same_gradients(serial[index], result, f"thread {index} of {THREADS} (call {repeat + 1})")


def autograd_matches_backward(target: Target, case: Case) -> None:
    """torch.ops.fffcore.fff through loss.backward() gives the gradients fff_backward gives, bit for bit."""
    from fffcore.conformance.autograd import check_autograd

    check_autograd(target, case)


def _require_same_gradients(
    expected: dict[str, np.ndarray | None], actual: dict[str, np.ndarray | None], who: str
) -> None:
    for name, a in expected.items():
        b = actual[name]
        index = None if a is None else checks.first_difference(a, b)
        if index is None:
            continue
        raise PropertyFailure(
            f"{who} returned a different grad {name}: at {list(index)} {b[index]!r} instead of {a[index]!r}"
        )


def _require_identical(expected: Outputs, actual: Outputs, who: str) -> None:
    for what in ("logits", "nodes", "output"):
        a, b = getattr(expected, what), getattr(actual, what)
        index = checks.first_difference(a, b)
        if index is not None:
            raise PropertyFailure(
                f"{who} returned different {what}: at {list(index)} {b[index]!r} instead of {a[index]!r}"
            )


@dataclass(frozen=True)
class Property:
    """One named property: its check, the cases it draws (a strategy for a target and a
    :class:`~fffcore.conformance.strategies.Scope`), and its share of the example budget."""

    name: str
    check: Callable[[Target, Case], None]
    strategy: Callable[[Target, Scope], Any]
    budget: float = 1.0
    #: How its cases draw values (:data:`fffcore.conformance.fixed.STYLES`), for its fixed cases.
    style: str = "general"
    #: Checks ``fffcore.fff_backward``: runs only on backends that declare ``backward``.
    backward: bool = False
    #: Why it cannot run on a target (None: it can), besides a missing ``backward``.
    unsupported: Callable[[Target], str | None] | None = None

    @property
    def description(self) -> str:
        return (self.check.__doc__ or "").strip().splitlines()[0]

    def skip_reason(self, target: Target) -> str | None:
        """Why this property does not run on ``target``, or None."""
        if self.backward and not target.backward:
            return f"backend {target.backend!r} does not declare backward"
        return self.unsupported(target) if self.unsupported else None


def _general(target: Target, scope: Scope) -> Any:
    from fffcore.conformance.strategies import cases

    return cases(target, scope=scope)


def _exact(target: Target, scope: Scope) -> Any:
    from fffcore.conformance.strategies import cases

    return cases(target, integer=True, scope=scope)


def _specials(target: Target, scope: Scope) -> Any:
    from hypothesis import strategies as st

    from fffcore.conformance.strategies import cases

    return cases(target, values=st.just("specials"), scope=scope)


def _large(target: Target, scope: Scope) -> Any:
    from fffcore.conformance.strategies import large_cases

    return large_cases(target, scope)


def _small(target: Target, scope: Scope) -> Any:
    from fffcore.conformance.strategies import cases

    return cases(target, max_rows=16, scope=scope)


def _special_upstream(target: Target, scope: Scope) -> Any:
    from fffcore.conformance.strategies import cases

    return cases(target, upstream="specials", finite_inputs=True, scope=scope)


def _torch_tensors(target: Target, scope: Scope) -> Any:
    from fffcore.conformance.strategies import cases

    return cases(target, array_type="torch", params_array_type="torch", max_rows=16, scope=scope)


def _without_torch(target: Target) -> str | None:
    if "torch" not in target.array_types:
        return "no torch tensors are tested on this target (torch missing, or no dtype both hold)"
    return None


#: Every property, in report order.
PROPERTIES: tuple[Property, ...] = (
    Property("result_types", result_types, _general),
    Property("input_unchanged", input_unchanged, _general, 0.5),
    Property("repeatable", repeatable, _general, 0.5),
    Property("valid_paths", valid_paths, _general),
    Property("logits_along_path", logits_along_path, _general),
    Property("output_along_path", output_along_path, _general),
    Property("exact_ties_and_sums", exact_ties_and_sums, _exact, style="exact"),
    Property("nan_and_infinity", nan_and_infinity, _specials, style="specials"),
    Property("invalid_inputs", invalid_inputs, _small, 0.25, style="small"),
    Property("thread_safety", thread_safety, _small, 0.25, style="small"),
    Property("large_batches", large_batches, _large, 0.05, style="large"),
    Property("gradients_along_path", gradients_along_path, _general, 0.5, backward=True),
    Property("exact_gradients", exact_gradients, _exact, 0.25, style="exact", backward=True),
    Property(
        "gradients_nan_and_infinity", gradients_nan_and_infinity, _specials, 0.25, style="specials", backward=True
    ),
    Property(
        "gradients_special_upstream",
        gradients_special_upstream,
        _special_upstream,
        0.5,
        style="upstream",
        backward=True,
    ),
    Property("gradients_large_batches", gradients_large_batches, _large, 0.05, style="large", backward=True),
    Property("gradients_unchanged", gradients_unchanged, _general, 0.25, backward=True),
    Property("gradients_repeatable", gradients_repeatable, _general, 0.25, backward=True),
    Property("gradients_thread_safety", gradients_thread_safety, _small, 0.1, style="small", backward=True),
    Property(
        "autograd_matches_backward",
        autograd_matches_backward,
        _torch_tensors,
        0.25,
        style="torch",
        backward=True,
        unsupported=_without_torch,
    ),
)

PROPERTY_NAMES: tuple[str, ...] = tuple(p.name for p in PROPERTIES)


def get_property(name: str) -> Property:
    for prop in PROPERTIES:
        if prop.name == name:
            return prop
    raise ValueError(f"property: expected one of {', '.join(PROPERTY_NAMES)}, got {name!r}")
