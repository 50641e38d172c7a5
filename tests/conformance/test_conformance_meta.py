"""The conformance suite catches wrong backends, and its helpers do what they say.

Every deliberately broken backend of :mod:`tests.conformance.conformance_broken_backends`
must fail the property named for it, and the report must name the property,
show a minimal example and say how to reproduce it.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="the conformance suite needs Hypothesis: pip install 'fffcore[conformance]'")

from fffcore import hookimpl
from fffcore.conformance import checks, tolerances
from fffcore.conformance.adapters import ADAPTERS, round_to_dtype, with_layout
from fffcore.conformance.cases import Case, InputSpec, LayerSpec
from fffcore.conformance.properties import get_property
from fffcore.conformance.runner import reproduce, run_property
from fffcore.conformance.target import resolve_target
from fffcore.params import FFFParams
from tests.conformance import conformance_broken_backends as broken
from tests.conformance.conformance_registry import registry_with

#: Examples for the property that must catch each broken backend; seed fixed so CI is repeatable.
BROKEN_EXAMPLES = 100
SEED = 0


@pytest.fixture(scope="module")
def broken_registry():
    with registry_with(("broken", broken)) as current:
        yield current


@pytest.mark.parametrize("name", sorted(broken.EXPECTED_FAILURES))
def test_broken_backend_fails_its_property(name, broken_registry):
    property_name = broken.EXPECTED_FAILURES[name]
    result = run_property(get_property(property_name), resolve_target(name), max_examples=BROKEN_EXAMPLES, seed=SEED)
    assert result.status == "fail", f"{name} passed {property_name} on {result.examples} examples"
    assert result.message.startswith(f"{property_name}: ")
    assert "minimal failing example:" in result.message
    assert "Case(layer=LayerSpec(" in result.message
    assert f"fff check {name} --seed {SEED}" in result.message
    # the printed case is a working reproduction: replaying it fails the same property again
    case_text = result.message.split("minimal failing example:\n", 1)[1].splitlines()[0].strip()
    namespace = {"Case": Case, "LayerSpec": LayerSpec, "InputSpec": InputSpec}
    case = eval(case_text, namespace)
    with pytest.raises(checks.PropertyFailure):
        reproduce(name, property_name, case)


@pytest.mark.parametrize("seed", range(10))
def test_a_bug_confined_to_deep_levels_fails_on_every_seed(seed, broken_registry):
    # The strategies draw depth 11 once in 16 draws; the fixed deep cases (depth 10) run in every run.
    result = run_property(
        get_property("output_along_path"), resolve_target("broken-deep-levels"), max_examples=100, seed=seed
    )
    assert result.status == "fail", f"broken-deep-levels passed output_along_path with seed {seed}"
    depth = int(result.message.split("depth=", 1)[1].split(",", 1)[0])
    assert depth >= 9, result.message  # a fixed deep case, or a drawn deep one shrunk no further than it can go


@pytest.mark.parametrize("name", ["broken-above-threshold", "broken-tail-block"])
@pytest.mark.parametrize("seed", range(10))
def test_a_bug_confined_to_large_batches_fails_on_every_seed(name, seed, broken_registry):
    result = run_property(get_property("large_batches"), resolve_target(name), max_examples=100, seed=seed)
    assert result.status == "fail", f"{name} passed large_batches with seed {seed}"


@pytest.mark.parametrize("seed", range(10))
def test_a_backend_ignoring_parameter_strides_fails_on_every_seed(seed, broken_registry):
    pytest.importorskip("torch")
    result = run_property(
        get_property("logits_along_path"), resolve_target("broken-params-strides"), max_examples=100, seed=seed
    )
    assert result.status == "fail", f"broken-params-strides passed logits_along_path with seed {seed}"
    # caught on tensors whose strides it ignored, not on some other difference
    assert "params_array_type='torch'" in result.message
    assert "params_layout='transposed'" in result.message or "params_layout='strided'" in result.message


def test_sampled_rows_hold_every_block_and_share_boundary_and_the_last_rows():
    from fffcore.conformance.properties import sample_rows

    rows = sample_rows(1025)
    assert {0, 1, 2, 3, 1021, 1022, 1023, 1024} <= set(rows)
    assert {63, 64, 127, 128, 959, 960, 1023} <= set(rows)  # both sides of every 64th row
    assert {511, 512, 340, 341} <= set(rows)  # halves and thirds of the batch
    assert list(sample_rows(3)) == [0, 1, 2] and len(rows) < 1025 // 3


def test_deep_cases_cover_every_combination_at_depth_ten():
    from fffcore.conformance.fixed import DEEP_DEPTH, deep_cases

    target = resolve_target("reference")
    for style in ("general", "exact", "specials", "small"):
        cases = deep_cases(target, style, seed=3)
        assert {(c.layer.dtype, c.array_type) for c in cases} == set(target.combinations)
        assert all(c.layer.depth == DEEP_DEPTH >= 9 for c in cases)
    assert deep_cases(target, "general", 1) != deep_cases(target, "general", 2)  # the seed still varies them


def test_thorough_runs_add_every_activation_with_every_combination_and_every_layout():
    pytest.importorskip("torch")
    from fffcore.conformance.fixed import fixed_cases

    target = resolve_target("torch")
    default = fixed_cases(target, "general", seed=5)
    thorough = fixed_cases(target, "general", seed=5, thorough=True)
    assert thorough[: len(default)] == default  # a thorough run checks everything a default one does
    grid = {(c.layer.dtype, c.array_type, c.layer.activation) for c in thorough}
    assert grid == {(d, a, act) for d, a in target.combinations for act in target.activations}
    assert {c.input.layout for c in thorough if c.array_type == "numpy"} == set(ADAPTERS["numpy"].layouts)
    assert {c.input.layout for c in thorough if c.array_type == "torch"} == set(ADAPTERS["torch"].layouts)
    for kind in ("numpy", "torch"):
        assert {c.params_layout for c in thorough if c.params_array_type == kind} == set(ADAPTERS[kind].layouts)
    large = fixed_cases(target, "large", seed=5, thorough=True)
    paper = {(c.layer.dtype, c.array_type) for c in large if c.layer.d_in == 768}
    assert paper == {(d, a) for d, a in target.combinations if (target.max_d_in(d) or 768) >= 768}


def test_thorough_scope_reaches_past_the_default_one():
    from fffcore.conformance.strategies import DEFAULT_SCOPE, THOROUGH_SCOPE

    assert THOROUGH_SCOPE.largest_width > DEFAULT_SCOPE.largest_width
    assert THOROUGH_SCOPE.largest_depth >= 9 > DEFAULT_SCOPE.largest_depth
    assert THOROUGH_SCOPE.rare < DEFAULT_SCOPE.rare and THOROUGH_SCOPE.max_rows > DEFAULT_SCOPE.max_rows
    assert set(DEFAULT_SCOPE.large_batches) < set(THOROUGH_SCOPE.large_batches)
    assert max(THOROUGH_SCOPE.large_batches) > 16384


def test_minimal_example_is_small(broken_registry):
    """Shrinking works: the tie bug is shown on a tiny layer (depth 1: one branch) whose arrays are printed in full."""
    result = run_property(
        get_property("exact_ties_and_sums"), resolve_target("broken-ge-ties"), max_examples=BROKEN_EXAMPLES, seed=SEED
    )
    assert result.status == "fail"
    assert "depth=1," in result.message and "trees=1," in result.message
    assert "x (" in result.message and "w_in (" in result.message


def test_reference_passes_every_property_of_a_broken_peer_it_shares(broken_registry):
    """The broken backends differ from the reference only in their bug: the reference passes the same property."""
    target = resolve_target("reference")
    for property_name in sorted(set(broken.EXPECTED_FAILURES.values())):
        result = run_property(get_property(property_name), target, max_examples=30, seed=SEED)
        assert result.passed, result.message


# --- tolerances ------------------------------------------------------------------------------------------


def test_gamma_is_n_u_over_one_minus_n_u():
    assert tolerances.gamma(10, 2.0**-24) == pytest.approx(10 * 2.0**-24 / (1 - 10 * 2.0**-24), rel=1e-15)
    assert tolerances.gamma(2**24, 2.0**-24) == float("inf")


def test_logit_tolerance_is_zero_for_exact_zero_products():
    tol = tolerances.logit_tolerance("float32", 8, np.array([0.0, 1.0]))
    assert tol[0] == 0.0
    assert tol[1] == pytest.approx(tolerances.gamma(11, 2.0**-24) + tolerances.gamma(9, 2.0**-53), rel=1e-6)


def test_band_separates_rounding_from_real_signs():
    scale = np.array([1.0, 1.0, 1.0, 0.0])
    logits = np.array([1e-9, 1e-3, np.nan, 0.0])
    ambiguous = tolerances.branch_is_ambiguous("float32", 4, logits, scale)
    # 1e-9 is within float32 rounding of a dot product of magnitude 1; 1e-3 is not; NaN and an exact 0 of
    # all-zero products have one right answer
    assert ambiguous.tolist() == [True, False, False, False]


def test_tanh_gelu_difference_exceeds_the_float32_output_tolerance():
    """The numbers behind the claim in the tolerances docstring, at |z| = 0.5, 1 and 2.7 (the largest difference)."""
    from fffcore.reference.activations import gelu, gelu_tanh

    z = np.array([0.5, 1.0, 2.7]).reshape(3, 1, 1)
    difference = np.abs(gelu(z) - gelu_tanh(z))[:, 0, 0]
    logit_tol = tolerances.logit_tolerance("float32", 1, np.abs(z))
    tol = tolerances.output_tolerance("float32", "gelu", z, logit_tol, np.ones((3, 1, 1, 1)), np.abs(gelu(z))[:, 0])
    assert np.all(difference > 20 * tol[:, 0]), (difference, tol[:, 0])


def test_may_overflow_only_near_the_largest_finite():
    assert tolerances.may_overflow("float16", np.array([1e3, 6.55e4, np.nan]), 4).tolist() == [False, True, True]


# --- cases and adapters -----------------------------------------------------------------------------------


def test_case_builds_the_same_arrays_twice_and_layouts_keep_values():
    layer = LayerSpec(d_in=5, d_out=3, depth=2, trees=2, dtype="float32", seed=7)
    built = [
        Case(layer, InputSpec(leading=(4,), layout=layout, seed=3)).build()
        for layout in ("contiguous", "transposed", "strided")
    ]
    assert not built[1].x.flags.c_contiguous and not built[2].x.flags.c_contiguous
    for other in built[1:]:
        np.testing.assert_array_equal(other.x, built[0].x)
        np.testing.assert_array_equal(other.oracle_x, built[0].oracle_x)
    assert built[0].params.dtype == "float32" and built[0].oracle_params.dtype == "float64"


def test_forced_ties_make_the_first_row_tie_at_every_level():
    layer = LayerSpec(d_in=4, d_out=2, depth=3, weights="integer", seed=1)
    built = Case(layer, InputSpec(leading=(3,), values="integers", force_ties=True)).build()
    from fffcore.reference.oracle import oracle_cmm

    logits, nodes = oracle_cmm(built.oracle_x, built.oracle_params)
    assert logits[0, 0].tolist() == [0.0] * 4
    assert nodes[0, 0].tolist() == [0, 1, 3, 7]


def test_round_to_dtype_matches_numpy():
    values = np.array([1 / 3, 1e-40, 70000.0])
    np.testing.assert_array_equal(round_to_dtype(values, "float32"), values.astype(np.float32).astype(np.float64))
    assert np.isinf(round_to_dtype(values, "float16")[2])


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided", "byteswapped", "readonly"])
def test_numpy_layouts_keep_values_and_have_the_layout_they_name(layout):
    values = np.arange(24.0).reshape(2, 3, 4)
    array = with_layout(ADAPTERS["numpy"], values, "float32", "cpu", layout)
    np.testing.assert_array_equal(array, values)
    assert array.flags.c_contiguous == (layout in ("contiguous", "byteswapped", "readonly"))
    assert array.dtype.isnative == (layout != "byteswapped") and array.dtype.name == "float32"
    assert array.flags.writeable == (layout != "readonly")
    if layout == "transposed":
        assert array.flags.f_contiguous


def test_layouts_a_library_cannot_hold_are_refused():
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="layout: expected one of"):
        with_layout(ADAPTERS["torch"], np.ones((2, 2)), "float32", "cpu", "byteswapped")


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_torch_parameters_reach_the_backend_in_their_layout(layout):
    pytest.importorskip("torch")
    layer = LayerSpec(d_in=5, d_out=3, depth=2, trees=2, dtype="float32", seed=7)
    case = Case(layer, InputSpec(leading=(4,), dtype="float32"), "torch", "cpu", "torch", layout)
    built = case.build()
    assert built.params.array_type == "torch"  # FFFParams keeps tensors as given
    assert built.params.w_in.is_contiguous() == (layout == "contiguous")
    np.testing.assert_array_equal(built.params.w_in.numpy(), built.oracle_params.w_in)
    np.testing.assert_array_equal(built.params.b_in.numpy(), built.oracle_params.b_in)


def test_torch_adapter_round_trips_with_layouts():
    pytest.importorskip("torch")
    adapter = ADAPTERS["torch"]
    values = np.arange(12.0).reshape(3, 4)
    for layout in adapter.layouts:
        array = with_layout(adapter, values, "float32", "cpu", layout)
        assert adapter.device_of(array) == "cpu" and adapter.dtype_of(array) == "float32"
        np.testing.assert_array_equal(adapter.to_numpy(array), values)
    scalar = adapter.from_numpy(np.array(1.0), "float32", "cpu")
    assert tuple(scalar.shape) == ()  # a 0-D input stays 0-D (the invalid-input property relies on it)


# --- checks on hand-made results ----------------------------------------------------------------------------


def test_path_structure_rejects_a_non_child():
    nodes = np.array([[[0, 2, 7]]])  # 7 is a child of 3, not of 2
    with pytest.raises(checks.PropertyFailure, match="not a child"):
        checks.check_path_structure(nodes, 2, (1,))


def test_valid_path_combinations_take_both_children_at_a_near_tie():
    w_in = np.array([[[1.0, -1.0], [1.0, 0.0], [0.0, 1.0]]])  # root logit is x0 - x1
    params = FFFParams(w_in, None, np.ones((1, 3, 1)))
    tie = checks.valid_path_combinations(np.array([1.0, 1.0]), params, "float32")
    clear = checks.valid_path_combinations(np.array([2.0, 1.0]), params, "float32")
    assert sorted(tie[:, 0].tolist()) == [[0, 1], [0, 2]]
    assert clear[:, 0].tolist() == [[0, 2]]


def test_mismatches_compare_special_values_by_class():
    expected = np.array([np.nan, np.inf, 1.0, 1.0])
    actual = np.array([np.nan, np.inf, 1.0 + 1e-9, np.nan])
    bad = checks.mismatches(actual, expected, np.full(4, 1e-6), np.zeros(4, bool))
    assert bad.tolist() == [False, False, False, True]


# --- the optional dtypes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "optional"), [("test-reference-float16", "float16"), ("test-torch-bfloat16", "bfloat16")]
)
def test_correct_backends_with_optional_dtypes_pass(name, optional):
    """float16 tolerances and the bfloat16 adapter path, on backends that are right by construction."""
    if name == "test-torch-bfloat16":
        pytest.importorskip("torch")
    from fffcore.conformance.runner import run_suite
    from tests.conformance import conformance_capability_backends as capability

    with registry_with(("capability", capability)):
        report = run_suite(name, max_examples=25, seed=SEED)
    assert optional in report.target.dtypes
    assert report.passed, "\n\n".join(result.message for result in report.failed)


# --- 16-bit layers accumulated in float32: the bands must catch real bugs ------------------------------------


def _wide_target(name: str, storage: str):
    if storage == "bfloat16":
        pytest.importorskip("torch")
    return resolve_target(name, dtypes=(storage,))


@pytest.fixture(scope="module")
def wide_registry():
    from tests.conformance import conformance_16bit_backends as wide

    with registry_with(("wide", wide)) as current:
        yield current


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
@pytest.mark.parametrize("bug", ["zeros", "level-skipped", "no-bias"])
def test_broken_16bit_backend_fails_its_property(storage, bug, wide_registry):
    from tests.conformance.conformance_16bit_backends import BUG_PROPERTIES

    name = f"test-wide-{storage}-{bug}"
    property_name = BUG_PROPERTIES[bug]
    result = run_property(get_property(property_name), _wide_target(name, storage), max_examples=100, seed=SEED)
    assert result.status == "fail", f"{name} passed {property_name} on {result.examples} examples"
    assert result.message.startswith(f"{property_name}: ")
    assert f"dtype='{storage}'" in result.message


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
@pytest.mark.parametrize("d_in", [32, 768])
def test_all_zeros_16bit_output_fails_at_wide_layers(storage, d_in, wide_registry):
    """The reviewer's cases: zeros passed output_along_path at d_in 32 and 768 under storage-accumulation bands."""
    _wide_target(f"test-wide-{storage}-zeros", storage)
    layer = LayerSpec(d_in=d_in, d_out=8, depth=3, trees=2, activation="gelu", dtype=storage, seed=5)
    case = Case(layer, InputSpec(leading=(6,), dtype="float32", seed=9), "numpy" if storage == "float16" else "torch")
    with pytest.raises(checks.PropertyFailure, match="output column"):
        reproduce(f"test-wide-{storage}-zeros", "output_along_path", case)
    reproduce(f"test-wide-{storage}", "output_along_path", case)  # the correct backend passes the same case


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correct_16bit_backend_passes(storage, seed, wide_registry):
    from fffcore.conformance.runner import run_suite

    _wide_target(f"test-wide-{storage}", storage)
    report = run_suite(f"test-wide-{storage}", max_examples=25, seed=seed, dtypes=(storage,))
    assert report.target.accumulation_dtypes == {storage: "float32"}
    assert report.passed, "\n\n".join(result.message for result in report.failed)


def test_storage_accumulation_caps_d_in_and_says_so():
    assert tolerances.max_checkable_d_in("bfloat16") == 9
    assert tolerances.max_checkable_d_in("float16") == 94
    assert tolerances.gamma(9 + 3, 2.0**-8) <= tolerances.MAX_RELATIVE_BAND < tolerances.gamma(10 + 3, 2.0**-8)
    assert tolerances.max_checkable_d_in("float32") is None
    assert tolerances.max_checkable_d_in("bfloat16", "float32") is None
    from tests.conformance import conformance_capability_backends as capability

    with registry_with(("capability", capability)):
        target = resolve_target("test-reference-float16", dtypes=("float16",))
    assert any("d_in drawn up to 94" in note for note in target.notes)
    from hypothesis import HealthCheck, given, settings

    from fffcore.conformance.strategies import layer_specs

    @settings(max_examples=200, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(layer_specs(target, "float16"))
    def drawn(layer):
        assert layer.d_in <= 94

    drawn()


def test_wide_accumulation_bands_follow_the_derivation():
    u16, u32 = 2.0**-8, 2.0**-24
    band = tolerances.branch_band("bfloat16", 768, np.array(1.0), accumulation="float32")
    backend = tolerances.compose(tolerances.gamma(769, u32), tolerances.gamma(3, u16))
    assert band == pytest.approx(backend + tolerances.gamma(769, 2.0**-53) + 771 * 2.0**-126, rel=1e-12)
    assert band < 0.0125  # the storage-accumulation band would be infinite at d_in 768
    logit = tolerances.logit_tolerance("bfloat16", 768, np.array(1.0), accumulation="float32")
    assert band < logit < band + 1.02 * u16  # the final rounding: u16 (1 + band)
    with pytest.raises(ValueError, match="at least as precise"):
        tolerances.logit_tolerance("float32", 4, np.array(1.0), accumulation="bfloat16")


def test_input_unchanged_catches_a_backend_that_writes_its_parameters():
    """numpy parameters are read-only, torch ones are not: a bfloat16 backend that scales w_out in place fails."""
    pytest.importorskip("torch")
    from tests.conformance.conformance_capability_backends import TorchBfloat16

    class WritesWeights(TorchBfloat16):
        name = "test-writes-weights"

        def fff(self, x, params):
            output = super().fff(x, params)
            params.w_out.mul_(2.0)  # the bug: scales the caller's weights in place
            return output

    class Plugin:
        @staticmethod
        @hookimpl
        def register_backends(register):
            register(WritesWeights())

    with registry_with(("writes", Plugin)):
        target = resolve_target("test-writes-weights", dtypes=("bfloat16",))
        result = run_property(get_property("input_unchanged"), target, max_examples=20, seed=SEED)
        passing = run_property(get_property("input_unchanged"), resolve_target("reference"), max_examples=20, seed=SEED)
    assert result.status == "fail"
    assert "modified the input w_out" in result.message
    assert passing.passed, passing.message
