"""The gradient properties catch wrong backward passes, and their oracle follows IEEE arithmetic.

The broken backward passes of :mod:`tests.conformance.conformance_broken_backends` that hide where the
earlier gradient properties never looked (beyond 4096 rows; NaN and infinities in grad_y) must fail
their property on each of ten seeds, and pass the earlier gradient properties.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="the conformance suite needs Hypothesis: pip install 'fffcore[conformance]'")

from fffcore.conformance.cases import Case, InputSpec, LayerSpec
from fffcore.conformance.gradient_oracle import Quantity, exact, oracle_gradients, product
from fffcore.conformance.properties import PROPERTIES, get_property
from fffcore.conformance.runner import run_property
from fffcore.conformance.target import Target, resolve_target
from tests.conformance import conformance_broken_backends as broken
from tests.conformance.conformance_registry import registry_with

#: The gradient properties before the large-batch and upstream ones: they must miss the new bugs.
EARLIER_GRADIENT_PROPERTIES = ("gradients_along_path", "exact_gradients", "gradients_nan_and_infinity")
#: Examples per run in these tests: the fixed cases, which every run has, are what must catch the bugs.
EXAMPLES = 20


@pytest.fixture(scope="module")
def broken_registry():
    with registry_with(("broken", broken)) as current:
        yield current


@pytest.mark.parametrize(
    ("name", "property_name"),
    [
        ("broken-backward-blocks", "gradients_large_batches"),
        ("broken-backward-nan-to-num", "gradients_special_upstream"),
    ],
)
@pytest.mark.parametrize("seed", range(10))
def test_a_backward_bug_the_earlier_properties_miss_fails_on_every_seed(name, property_name, seed, broken_registry):
    result = run_property(get_property(property_name), resolve_target(name), max_examples=EXAMPLES, seed=seed)
    assert result.status == "fail", f"{name} passed {property_name} with seed {seed}"
    assert result.message.startswith(f"{property_name}: grad ")


@pytest.mark.parametrize("name", ["broken-backward-blocks", "broken-backward-nan-to-num"])
def test_the_earlier_gradient_properties_miss_those_bugs(name, broken_registry):
    target = resolve_target(name)
    for property_name in EARLIER_GRADIENT_PROPERTIES:
        result = run_property(get_property(property_name), target, max_examples=40, seed=0)
        assert result.status == "pass", result.message


def test_gradient_deep_cases_come_with_and_without_bias_in_several_layouts():
    pytest.importorskip("torch")
    from fffcore.conformance.fixed import DEEP_DEPTH, deep_cases

    target = resolve_target("torch")
    cases = deep_cases(target, "general", seed=3, backward=True)
    assert {(c.layer.dtype, c.array_type, c.layer.bias) for c in cases} == {
        (d, a, bias) for d, a in target.combinations for bias in (True, False)
    }
    assert all(c.layer.depth == DEEP_DEPTH >= 9 and c.layer.trees == 2 for c in cases)
    assert {c.input.layout for c in cases} >= {"contiguous", "transposed", "strided"}
    assert {c.layer.dtype for c in cases} >= {"float16", "bfloat16"}  # torch declares them for backward
    forward = deep_cases(target, "general", seed=3)
    assert {c.input.layout for c in forward} == {"contiguous"}


def test_gradient_large_cases_pass_4096_rows_and_rotate_through_dtypes_and_layouts():
    pytest.importorskip("torch")
    from fffcore.conformance.fixed import fixed_cases

    target = resolve_target("torch")
    seen = set()
    for seed in range(len(target.combinations)):
        large = [c for c in fixed_cases(target, "large", seed, backward=True) if c.input.leading[0] > 4096]
        paper = [c for c in large if c.layer.d_in == 768 and c.layer.depth == 11]
        narrow = [c for c in large if c.layer.d_in < 768]
        assert narrow and narrow[0].layer.trees == 2
        if paper:
            assert paper[0].input.leading[0] >= 4097
        seen |= {(c.layer.dtype, c.array_type, c.input.layout) for c in large}
    assert {(d, a) for d, a, _ in seen} == set(target.combinations)
    assert {layout for *_, layout in seen} >= {"contiguous", "transposed", "strided"}


def test_thorough_runs_widen_the_gradient_draws():
    pytest.importorskip("torch")
    from fffcore.conformance.fixed import fixed_cases

    target = resolve_target("torch")
    default = fixed_cases(target, "upstream", seed=5, backward=True)
    thorough = fixed_cases(target, "upstream", seed=5, thorough=True, backward=True)
    assert thorough[: len(default)] == default and len(thorough) > len(default)
    assert all(c.input.upstream == "specials" for c in thorough)
    grid = {(c.layer.dtype, c.array_type, c.layer.activation) for c in thorough}
    assert grid == {(d, a, act) for d, a in target.combinations for act in target.activations}
    large = fixed_cases(target, "large", seed=5, thorough=True, backward=True)
    assert {(c.layer.dtype, c.array_type) for c in large if c.input.leading[0] > 4096} == set(target.combinations)


def test_the_autograd_property_runs_on_torch_tensors_and_skips_without_them():
    prop = get_property("autograd_matches_backward")
    numpy_only = Target("somewhere", "cpu", (("float32", "numpy"),), ("gelu",), backward=True)
    assert "no torch tensors" in prop.skip_reason(numpy_only)
    pytest.importorskip("torch")
    from fffcore.conformance.fixed import deep_cases

    cases = deep_cases(resolve_target("numba"), "torch", seed=0, backward=True)
    assert cases and all(c.array_type == c.params_array_type == "torch" for c in cases)


def test_every_gradient_property_is_listed_for_backends_with_backward():
    names = [p.name for p in PROPERTIES if p.backward]
    assert names == [
        "gradients_along_path",
        "exact_gradients",
        "gradients_nan_and_infinity",
        "gradients_special_upstream",
        "gradients_large_batches",
        "gradients_unchanged",
        "gradients_repeatable",
        "gradients_thread_safety",
        "autograd_matches_backward",
    ]


# The upstream gradients with special values, and the oracle's classes.


def _specials_case(d_out: int = 5, rows: int = 40, activation: str = "gelu", dtype: str = "float32") -> Case:
    layer = LayerSpec(d_in=3, d_out=d_out, depth=2, trees=2, activation=activation, dtype=dtype, seed=4)
    spec = InputSpec(leading=(rows,), dtype=dtype, seed=11, upstream="specials")
    return Case(layer, spec)


def test_special_upstream_rows_hold_every_kind_and_the_first_a_nan_and_an_infinity():
    case = _specials_case(rows=400)
    g = case.input.upstream_values(case.layer)
    assert np.isnan(g[0]).any() and np.isinf(g[0]).any()
    largest = float(np.finfo(np.float32).max)
    assert (g == np.inf).any() and (g == -np.inf).any()
    assert (np.abs(g) == largest).any()
    tiny = (g != 0) & (np.abs(g) < float(np.finfo(np.float32).tiny))
    assert tiny.any()
    zeros = g == 0
    assert (zeros & np.signbit(g)).any() and (zeros & ~np.signbit(g)).any()
    assert np.all(g[np.all(zeros, axis=1)] == 0)  # and rows that are all signed zeros
    one_row = _specials_case(rows=1).input.upstream_values(case.layer)
    assert np.isnan(one_row).any() and np.isinf(one_row).any()


def _oracle(case: Case, g: np.ndarray):
    from fffcore.reference.oracle import oracle_cmm

    built = case.build()
    _, nodes = oracle_cmm(built.oracle_x, built.oracle_params)
    return built, nodes, oracle_gradients(built, nodes, g, accumulation=None)


def test_a_nan_in_grad_y_reaches_exactly_the_entries_the_spec_says():
    case = Case(
        LayerSpec(d_in=3, d_out=4, depth=2, trees=2, activation="gelu", dtype="float64", seed=4),
        InputSpec(leading=(6,), dtype="float64", seed=11),
    )
    g = np.random.default_rng(0).standard_normal((6, 4))
    g[2, 1] = np.nan
    built, nodes, oracle = _oracle(case, g)
    nan = {name: np.isnan(values) for name, values in oracle.values.items()}
    assert np.all(nan["x"][2]) and not np.any(nan["x"][[0, 1, 3, 4, 5]])
    visited = np.zeros((2, built.oracle_params.n_nodes), bool)
    visited[np.arange(2)[:, None], nodes[2]] = True
    assert np.array_equal(nan["b_in"], visited)
    assert np.array_equal(nan["w_in"], np.repeat(visited[..., None], 3, axis=2))
    column = np.zeros_like(nan["w_out"])
    column[..., 1] = visited
    assert np.array_equal(nan["w_out"], column)
    assert not any(np.any(unknown) for unknown in oracle.unknown.values())


def test_an_infinity_times_a_certain_zero_is_nan_and_times_a_possible_zero_unknown():
    inf = exact(np.array([np.inf, np.inf, -np.inf]))
    zero_for_sure = Quantity(np.array([0.0, 0.0, 0.0]), np.zeros(3), np.zeros(3, bool), np.ones(3, bool))
    result = product(inf, zero_for_sure)
    assert np.all(np.isnan(result.value)) and not np.any(result.unknown)
    near_zero = Quantity(np.array([1e-9, 0.0, -1e-9]), np.full(3, 1e-8), np.zeros(3, bool), np.zeros(3, bool))
    assert np.all(product(inf, near_zero).unknown)
    far_from_zero = Quantity(np.array([0.5, 2.0, -1.0]), np.full(3, 1e-8), np.zeros(3, bool), np.zeros(3, bool))
    result = product(inf, far_from_zero)
    assert list(result.value) == [np.inf, np.inf, np.inf] and not np.any(result.unknown)
    huge = exact(np.array([1e308]))
    assert product(huge, exact(np.array([10.0]))).unknown.all()  # overflows only when rounded: fma keeps it


def test_relu_with_an_infinite_upstream_gives_nan_where_the_slope_is_certainly_zero():
    case = Case(
        LayerSpec(d_in=4, d_out=3, depth=1, trees=1, activation="relu", dtype="float32", seed=2),
        InputSpec(leading=(30,), dtype="float32", seed=5),
    )
    g = np.ones((30, 3))
    g[:, 0] = np.inf
    built, nodes, oracle = _oracle(case, g)
    from fffcore.reference.oracle import evaluate_path

    z = evaluate_path(built.oracle_x, built.oracle_params, nodes).logits[:, 0, :]  # (B, L)
    negative = np.all(z < -1e-3, axis=1)  # both levels' logits clearly below 0: slope 0 exactly
    assert negative.any() and (~negative).any()
    assert np.all(np.isnan(oracle.values["x"][negative])) and not np.any(oracle.unknown["x"][negative])
