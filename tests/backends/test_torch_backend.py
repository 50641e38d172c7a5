"""The ``torch`` backend: registration, agreement with the reference, special values, no copies, no autograd."""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import threading
import types
import weakref
from typing import ClassVar

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs PyTorch: pip install 'fffcore[torch]'")

import fffcore  # noqa: E402
from fffcore import FFFParams  # noqa: E402
from fffcore.backends.torch import activations as torch_activations  # noqa: E402
from fffcore.backends.torch import kernels, plugin, prepared  # noqa: E402
from fffcore.backends.torch.conversion import compute_rows  # noqa: E402
from fffcore.conformance import tolerances  # noqa: E402
from fffcore.reference import activate, evaluate_path, oracle_cmm  # noqa: E402
from fffcore.registry import registry  # noqa: E402
from fffcore.torch import to_torch  # noqa: E402

DTYPES = ["float32", "float64"]
#: Every dtype the backend declares; numpy has no bfloat16, so tests build those layers as tensors.
ALL_DTYPES = ["float16", "bfloat16", "float32", "float64"]
#: (trees, depth): one neuron; all levels dense; levels past the dense top (gathered); several trees past it.
SHAPES = [(1, 0), (1, 3), (2, 5), (1, 9), (3, 8)]


@pytest.fixture(autouse=True)
def torch_backend_registered(use_registry):
    """The torch backend, whether or not it is already among the built-in plugins."""
    if "torch" not in registry().backends:
        use_registry(("fffcore.backends.torch.plugin", plugin))


def seeded(seed: int):
    """A CPU torch.Generator with a fixed seed: every random tensor in these tests is repeatable."""
    return torch.Generator().manual_seed(seed)


def integer_params(trees, depth, d_in, d_out, activation, high, seed, bias=True) -> FFFParams:
    """float64 layer of integers in [-high, high]: with small ``high`` every sum below is exact."""
    rng = np.random.default_rng(seed)
    n = 2 ** (depth + 1) - 1
    w_in = rng.integers(-high, high + 1, (trees, n, d_in)).astype(np.float64)
    b_in = rng.integers(-high, high + 1, (trees, n)).astype(np.float64) if bias else None
    w_out = rng.integers(-high, high + 1, (trees, n, d_out)).astype(np.float64)
    return FFFParams(w_in, b_in, w_out, activation)


def in_dtype(params: FFFParams, dtype: str) -> tuple[FFFParams, FFFParams]:
    """``params`` rounded to ``dtype`` as CPU tensors, and the same rounded values as float64 numpy (for the oracle)."""
    from fffcore.torch import to_torch

    rounded = to_torch(params, "cpu", getattr(torch, dtype))
    wide = [None if t is None else t.double().numpy() for t in (rounded.w_in, rounded.b_in, rounded.w_out)]
    return rounded, FFFParams(*wide, params.activation)


# --- registration and availability -------------------------------------------------------------


def test_declares_its_capabilities():
    backend = fffcore.get_backend("torch")
    assert backend.array_types == ("torch", "numpy")
    assert backend.devices == ("cpu", "cuda")
    assert {"float32", "float64"} <= set(backend.dtypes)
    assert backend.priority == 50
    assert backend.version() == torch.__version__


def test_16_bit_tensors_choose_the_torch_backend_automatically():
    # numba computes float32 and float64 only, so 16-bit layers on CPU tensors go to torch.
    params = to_torch(FFFParams.random(6, 3, 2, seed=0), dtype=torch.bfloat16)
    x = torch.ones(2, 6, dtype=torch.bfloat16)
    with fffcore.use_backend("torch"):
        expected = fffcore.fff(x, params)
    assert torch.equal(fffcore.fff(x, params), expected)
    assert fffcore.resolve_backend(x, params).name == "torch"


def test_missing_torch_is_reported_with_the_install_command(monkeypatch):
    monkeypatch.setattr(plugin.importlib.util, "find_spec", lambda name: None)
    status = plugin.TorchBackend().availability()
    assert not status.available
    assert "torch is not installed" in status.reason
    assert status.fix == "pip install 'fffcore[torch]'"


def test_without_torch_the_backend_is_listed_unavailable_and_the_rest_works():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # torch cannot be imported in this process
        "import numpy as np, fffcore\n"
        "row = {r.name: r for r in fffcore.list_backends()}['torch']\n"
        "assert not row.available and row.reason == 'torch is not installed', row\n"
        "assert row.fix == \"pip install 'fffcore[torch]'\", row\n"
        "params = fffcore.FFFParams.random(4, 2, 2, seed=0)\n"
        "assert fffcore.fff(np.ones((3, 4), np.float32), params).shape == (3, 2)\n"
        "try:\n    import fffcore.torch\nexcept ImportError as error:\n    assert 'pip install' in str(error)\n"
        "else:\n    raise AssertionError('fffcore.torch imported without torch')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_numpy_calls_on_other_backends_do_not_import_torch():
    # import fffcore and a numpy call on another backend never import torch; listing backends does
    # (the availability check imports it once, so a broken install shows as unavailable).
    code = (
        "import sys, numpy as np, fffcore; "
        "fffcore.fff(np.ones((2, 4), np.float32), fffcore.FFFParams.random(4, 3, 1), backend='reference'); "
        "assert 'torch' not in sys.modules, 'torch was imported'; "
        "infos = {i.name: i for i in fffcore.list_backends()}; assert infos['torch'].available, infos"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- agreement with the reference ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize(("trees", "depth"), SHAPES)
@pytest.mark.parametrize("activation", ["relu", "identity"])
@pytest.mark.parametrize("bias", [True, False])
def test_integer_layers_match_the_reference_exactly(dtype, trees, depth, activation, bias):
    # d_in 5 and values in [-h, h]: |logit| <= 6h^2 and |y| <= 30 * 6h^3 over <= 30 visited nodes:
    # h = 3 keeps every sum below 2**24 (float32), h = 1 below 2**8 (bfloat16's exact integers).
    high = 3 if dtype in ("float32", "float64") else 1
    exact = integer_params(trees, depth, 5, 4, activation, high, seed=depth + 10 * trees, bias=bias)
    params, _ = in_dtype(exact, dtype)
    x = np.random.default_rng(depth).integers(-high, high + 1, (97, 5)).astype(np.float64)
    expected = fffcore.cmm(x, exact, backend="reference")
    expected_y = fffcore.fff(x, exact, backend="reference")
    # Integer logits are often exactly 0: those rows must go left, as in the reference.
    assert (expected.logits == 0).any()
    inputs = [torch.from_numpy(x).to(getattr(torch, dtype))]
    if dtype != "bfloat16":
        inputs.append(x.astype(dtype))  # numpy in, numpy out
    for x_in in inputs:
        result = fffcore.cmm(x_in, params, backend="torch")
        y = fffcore.fff(x_in, params, backend="torch")
        assert type(y) is type(x_in) and str(y.dtype).endswith(dtype)
        np.testing.assert_array_equal(np.asarray(result.nodes), expected.nodes)
        np.testing.assert_array_equal(torch.as_tensor(result.logits).double().numpy(), expected.logits)
        np.testing.assert_array_equal(torch.as_tensor(y).double().numpy(), expected_y)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("activation", fffcore.ACTIVATIONS)
@pytest.mark.parametrize(("trees", "depth"), SHAPES)
@pytest.mark.parametrize("min_group_rows", [kernels.MIN_GROUP_ROWS, 1], ids=["default-plan", "grouped-plan"])
def test_random_layers_agree_with_the_float64_oracle(monkeypatch, dtype, activation, trees, depth, min_group_rows):
    monkeypatch.setattr(kernels, "MIN_GROUP_ROWS", min_group_rows)  # 1: every level below the top is grouped
    seed = 10 * depth + trees + min_group_rows  # a different layer for every case
    d_in, d_out = 33, 7
    params, wide = in_dtype(FFFParams.random(d_in, d_out, depth, trees, activation=activation, seed=seed), dtype)
    x = torch.from_numpy(np.random.default_rng(seed + 100).standard_normal((129, d_in))).to(getattr(torch, dtype))
    x_wide = x.double().numpy()  # exactly the values the backend computes with
    accumulation = fffcore.get_backend("torch").accumulation_dtypes.get(dtype)  # float32 for 16-bit layers
    logits, nodes = fffcore.cmm(x, params, backend="torch")
    y = fffcore.fff(x, params, backend="torch").double().numpy()
    nodes, logits = nodes.numpy(), logits.double().numpy()
    along = evaluate_path(x_wide, wide, nodes)

    # Logits: within the conformance suite's derived band (fffcore.conformance.tolerances: any
    # summation order in the declared accumulation dtype, the storage roundings, the oracle's own error).
    logit_tol = tolerances.logit_tolerance(dtype, d_in, along.logit_scale, accumulation=accumulation)
    assert np.all(np.abs(logits - along.logits) <= logit_tol)

    # Paths: the first level where the backend leaves the oracle's path must be a near tie, that is
    # the oracle's logit at that node lies within the branch band; there the two may part ways.
    oracle_logits, oracle_nodes = oracle_cmm(x_wide, wide)
    oracle_scale = evaluate_path(x_wide, wide, oracle_nodes).logit_scale
    ambiguous = tolerances.branch_is_ambiguous(dtype, d_in, oracle_logits, oracle_scale, accumulation=accumulation)
    differs = nodes != oracle_nodes
    rows, tree_ids = np.nonzero(differs.any(axis=2))
    for row, tree in zip(rows, tree_ids, strict=True):
        level = int(np.argmax(differs[row, tree])) - 1  # the branch taken just before the first difference
        assert ambiguous[row, tree, level], (row, tree, level, oracle_logits[row, tree, level])

    # Outputs along the backend's own path, within the suite's derived band: the logit error through
    # the activation (Lipschitz), the activation's own rounding, the m = K (D+1) products and sums in
    # the accumulation dtype, the final rounding to storage, and the oracle's own error.
    w_out_abs = np.abs(wide.w_out[np.arange(trees)[None, :, None], nodes])
    output_tol = tolerances.output_tolerance(
        dtype,
        activation,
        along.logits,
        logit_tol,
        w_out_abs,
        along.output_scale,
        accumulation=accumulation,
        output64=along.output,
    )
    assert np.all(np.abs(y - along.output) <= output_tol)


def test_float64_paths_equal_the_reference_on_random_layers():
    # In float64 the rounding bands are ~1e-15 wide: a random layer has no near ties at all.
    params = FFFParams.random(20, 6, 9, 2, dtype="float64", seed=5)
    x = np.random.default_rng(5).standard_normal((200, 20))
    np.testing.assert_array_equal(
        fffcore.cmm(x, params, backend="torch").nodes, fffcore.cmm(x, params, backend="reference").nodes
    )


# --- special values -------------------------------------------------------------------------------

SPECIALS = [-math.inf, math.inf, math.nan, 0.0, -0.0, 1e-30, -1e-30, 5.0, -5.0, -10.0, -30.0, 40.0, -200.0, 3e38, -3e38]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", fffcore.ACTIVATIONS)
def test_activations_match_the_reference_on_special_values(dtype, activation):
    values = np.array(SPECIALS, dtype=dtype)
    expected = activate(activation, values)
    result = torch_activations.activate(activation, torch.from_numpy(values.copy())).numpy()
    np.testing.assert_array_equal(np.isnan(result), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(result[~finite], expected[~finite])
    # Both evaluate in float64 and round once: they may differ by one ulp of the dtype, where the
    # float64 libraries (erfc, tanh, exp) round the last float64 bit differently.
    np.testing.assert_array_max_ulp(result[finite], expected[finite], maxulp=1)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("activation", fffcore.ACTIVATIONS)
def test_16_bit_activations_are_the_float64_reference_rounded_once(dtype, activation):
    values = torch.tensor(SPECIALS, dtype=torch.float64).to(getattr(torch, dtype))  # 3e38 overflows float16 to inf
    result = torch_activations.activate(activation, values)
    # Both sides round a float64 value once; libm differences in the last float64 bit would have to
    # straddle a 16-bit rounding boundary (a chance of about 2**-40) to show.
    expected = torch.from_numpy(activate(activation, values.double().numpy())).to(values.dtype)
    assert result.dtype == values.dtype
    torch.testing.assert_close(result, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["gelu", "silu", "gelu_tanh", "relu"])
def test_minus_infinity_activates_to_zero_and_nan_goes_left(dtype, activation):
    # Root weight 1 on x: x = -inf gives a root logit -inf (act = 0, left); NaN gives NaN (left).
    w_in = np.ones((1, 3, 1), dtype)
    w_out = np.array([[[1.0], [2.0], [4.0]]], dtype)
    params = FFFParams(w_in, None, w_out, activation)
    x = np.array([[-math.inf], [math.nan], [math.inf]], dtype)
    result = fffcore.cmm(x, params, backend="torch")
    np.testing.assert_array_equal(result.nodes, [[[0, 1]], [[0, 1]], [[0, 2]]])
    y = fffcore.fff(x, params, backend="torch")
    assert y[0, 0] == 0.0  # act(-inf) = 0 at the root and at node 1
    assert np.isnan(y[1, 0])
    assert y[2, 0] == math.inf


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the reference's inf - inf
def test_special_inputs_take_the_reference_paths(dtype):
    # inf and NaN in x give logits whose class (NaN, +-inf) does not depend on the summation order.
    params = FFFParams.random(6, 3, 8, 2, dtype=dtype, seed=3, activation="gelu")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 6)).astype(dtype)
    picks = rng.integers(0, 6, (64, 2))
    x[np.arange(64), picks[:, 0]] = rng.choice([math.inf, -math.inf, math.nan], 64)
    expected = fffcore.cmm(x, params, backend="reference")
    result = fffcore.cmm(torch.from_numpy(x), params, backend="torch")
    np.testing.assert_array_equal(result.nodes.numpy(), expected.nodes)
    special = ~np.isfinite(expected.logits)
    np.testing.assert_array_equal(result.logits.numpy()[special], expected.logits[special])
    y = fffcore.fff(torch.from_numpy(x), params, backend="torch").numpy()
    y_ref = fffcore.fff(x, params, backend="reference")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    np.testing.assert_array_equal(y[np.isinf(y_ref)], y_ref[np.isinf(y_ref)])


# --- tensors in, tensors out: no copies, no host round trip, no autograd ----------------------------


def test_matching_tensor_input_is_used_without_a_copy():
    x = torch.randn(8, 5, generator=seeded(0))
    assert compute_rows(x, "float32").data_ptr() == x.data_ptr()
    strided = torch.randn(5, 8, generator=seeded(1)).t()  # a transposed view: still no copy, the kernels take strides
    assert compute_rows(strided, "float32").data_ptr() == strided.data_ptr()
    array = np.ones((8, 5), np.float32)
    assert np.shares_memory(compute_rows(array, "float32").numpy(), array)


def test_tensor_calls_never_touch_numpy(monkeypatch):
    from fffcore.torch import to_torch

    params = to_torch(FFFParams.random(12, 4, 8, 2, seed=1))
    x = torch.randn(50, 3, 12, generator=seeded(2))
    before = x.clone()

    def no_host_conversion(*args, **kwargs):
        raise AssertionError("a torch call went through numpy")

    monkeypatch.setattr(torch.Tensor, "numpy", no_host_conversion)
    monkeypatch.setattr(torch.Tensor, "__array__", no_host_conversion, raising=False)
    monkeypatch.setattr(torch, "from_numpy", no_host_conversion)
    monkeypatch.setattr(np, "asarray", no_host_conversion)
    monkeypatch.setattr(np, "ascontiguousarray", no_host_conversion)
    y = fffcore.fff(x, params, backend="torch")
    result = fffcore.cmm(x, params, backend="torch")
    monkeypatch.undo()

    assert isinstance(y, torch.Tensor) and y.shape == (50, 3, 4) and y.dtype == torch.float32
    assert y.device == x.device and result.nodes.dtype == torch.int64 and result.logits.shape == (50, 3, 2, 9)
    assert torch.equal(x, before)  # the input is never written
    np.testing.assert_allclose(
        y.numpy(), fffcore.fff(x.numpy(), params_numpy(params), backend="reference"), rtol=1e-5, atol=1e-6
    )


class RecordingTensor(torch.Tensor):
    """A tensor that records every torch function called on it (to spot host conversions)."""

    seen: ClassVar[list[str]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_tensor_subclass_sees_no_host_conversion():
    params = FFFParams.random(10, 3, 8, seed=2)
    x = torch.randn(20, 10, generator=seeded(3)).as_subclass(RecordingTensor)
    RecordingTensor.seen.clear()
    y = fffcore.fff(x, params, backend="torch")
    assert RecordingTensor.seen, "the subclass recorded nothing, so this test checks nothing"
    host = {"numpy", "__array__", "tolist", "item", "cpu"}
    assert not host & set(RecordingTensor.seen), RecordingTensor.seen
    assert isinstance(y, torch.Tensor) and y.shape == (20, 3)


def test_no_autograd_graph_is_kept():
    params = FFFParams.random(10, 3, 4, seed=2)
    x = torch.randn(20, 10, generator=seeded(4), requires_grad=True)
    y = fffcore.fff(x, params, backend="torch")
    assert not y.requires_grad and y.grad_fn is None
    with torch.inference_mode():
        z = fffcore.fff(torch.randn(4, 10, generator=seeded(5)), params, backend="torch")
    assert z.shape == (4, 3) and z.is_inference()


def test_numpy_in_numpy_out_in_the_params_dtype():
    params = FFFParams.random(10, 3, 4, seed=2, dtype="float32")
    x = np.random.default_rng(0).standard_normal((7, 10))  # float64, converted to float32
    x.flags.writeable = False  # read-only input: converted without torch's non-writable warning
    y = fffcore.fff(x, params, backend="torch")
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (7, 3)
    np.testing.assert_allclose(y, fffcore.fff(x, params, backend="reference"), rtol=1e-5, atol=1e-6)


def test_empty_batch_and_leading_dimensions():
    params = FFFParams.random(4, 2, 9, 2, seed=0)
    assert fffcore.fff(torch.zeros(0, 4), params, backend="torch").shape == (0, 2)
    assert fffcore.cmm(torch.zeros(2, 0, 4), params, backend="torch").nodes.shape == (2, 0, 2, 10)
    assert fffcore.fff(np.zeros((3, 2, 4), np.float32), params, backend="torch").shape == (3, 2, 2)


def test_row_blocks_give_the_same_result_as_one_block(monkeypatch):
    # float64: a one-row block takes a matrix-vector product, whose summation order differs from
    # the matrix product's, so results agree to rounding, and no logit of this layer is that close to 0.
    params = FFFParams.random(16, 5, 9, 2, seed=4, dtype="float64")
    x = torch.randn(1000, 16, generator=seeded(6), dtype=torch.float64)
    whole = fffcore.fff(x, params, backend="torch")
    whole_nodes = fffcore.cmm(x, params, backend="torch").nodes
    monkeypatch.setattr(kernels, "BLOCK_ELEMENTS", 2 * 63 * 37)  # 37 rows per block, a ragged last block
    assert kernels.rows_per_block(prepared.torch_layer(params, x.device)) == 37
    # Outputs are O(1) sums of 20 terms: rounding differences stay near 20 * 2**-53 ~ 2e-15.
    torch.testing.assert_close(fffcore.fff(x, params, backend="torch"), whole, rtol=1e-13, atol=1e-13)
    assert torch.equal(fffcore.cmm(x, params, backend="torch").nodes, whole_nodes)


@pytest.mark.parametrize(
    ("min_group_rows", "padding_limit", "kinds"),
    [
        (10**9, 2, {"dense", "gathered"}),  # groups never big enough: every level below the top is gathered
        (1, 10**9, {"dense", "grouped", "gathered"}),  # padded bmm over groups, then gathered deep levels
        (1, 0, {"dense", "grouped", "gathered"}),  # one mm per group (padding never allowed)
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_every_evaluation_plan_matches_the_reference(monkeypatch, min_group_rows, padding_limit, kinds, bias):
    monkeypatch.setattr(kernels, "MIN_GROUP_ROWS", min_group_rows)
    monkeypatch.setattr(kernels, "PADDING_LIMIT", padding_limit)
    # depth 13: 6 dense levels, 6 grouped ones, 2 gathered; 3 trees so items mix rows and trees.
    params = FFFParams.random(9, 4, 13, 3, seed=6, dtype="float64", bias=bias, activation="silu")
    x = np.random.default_rng(6).standard_normal((700, 9))
    plan = kernels.level_plan(prepared.torch_layer(params, torch.device("cpu")), 700, "cpu")
    assert {kind for kind, _, _ in plan} == kinds
    assert sum(count for _, _, count in plan) == 14
    expected = fffcore.cmm(x, params, backend="reference")
    result = fffcore.cmm(x, params, backend="torch")
    # float64 with d_in 9: logits agree to ~1e-15 and no random logit falls inside that band.
    np.testing.assert_array_equal(result.nodes, expected.nodes)
    np.testing.assert_allclose(result.logits, expected.logits, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(
        fffcore.fff(x, params, backend="torch"), fffcore.fff(x, params, backend="reference"), rtol=1e-12, atol=1e-12
    )


def test_concurrent_calls_agree():
    params = FFFParams.random(16, 5, 9, 2, seed=4)
    x = torch.randn(300, 16, generator=seeded(7))
    expected = fffcore.fff(x, params, backend="torch")
    results: list[object] = [None] * 4

    def work(slot: int) -> None:
        results[slot] = fffcore.fff(x, params, backend="torch")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(r, expected) for r in results)


# --- parameters are converted once -----------------------------------------------------------------


def test_numpy_params_are_converted_once_per_device():
    params = FFFParams.random(6, 2, 3, seed=0)
    first = prepared.torch_layer(params, torch.device("cpu"))
    fffcore.fff(torch.ones(1, 6), params, backend="torch")
    assert prepared.torch_layer(params, torch.device("cpu")) is first
    assert prepared.cached_devices(params) == [torch.device("cpu")]


def test_torch_params_on_the_device_are_used_in_place():
    from fffcore.torch import to_torch

    params = to_torch(FFFParams.random(6, 2, 3, 2, seed=0))
    layer = prepared.torch_layer(params, torch.device("cpu"))
    assert layer.w_in_rows.data_ptr() == params.w_in.data_ptr()
    assert layer.w_out_rows.data_ptr() == params.w_out.data_ptr()
    assert layer.b_in_rows.data_ptr() == params.b_in.data_ptr()


def test_the_cache_dies_with_the_params():
    params = FFFParams.random(6, 2, 3, seed=0)
    fffcore.fff(torch.ones(1, 6), params, backend="torch")
    alive = weakref.ref(params)
    del params
    gc.collect()
    assert alive() is None


# --- CUDA ---------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() is False)"
)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_tensors_stay_on_the_device(dtype):
    params = FFFParams.random(32, 8, 9, 2, seed=0, dtype=dtype)
    x = torch.randn(257, 32, generator=seeded(8), dtype=getattr(torch, dtype)).to("cuda")
    y = fffcore.fff(x, params, backend="torch")
    result = fffcore.cmm(x, params, backend="torch")
    assert y.device == x.device and result.nodes.device == x.device
    cpu = fffcore.cmm(x.cpu(), params, backend="torch")
    same_path = (result.nodes.cpu() == cpu.nodes).all(dim=2).all(dim=1)
    assert same_path.float().mean() > 0.99  # paths may part only at near ties
    torch.testing.assert_close(y.cpu()[same_path], fffcore.fff(x.cpu(), params, backend="torch")[same_path])


def params_numpy(params: FFFParams) -> FFFParams:
    """numpy copies of torch parameters, for the reference."""
    b_in = None if params.b_in is None else params.b_in.numpy()
    return FFFParams(params.w_in.numpy(), b_in, params.w_out.numpy(), params.activation)


@cuda
def test_tf32_enabled_by_the_user_changes_no_branch_on_cuda(monkeypatch):
    from fffcore.torch import to_torch

    # The root's logit is 768 * (1 + 2**-12) - 768 = 0.1875 exactly: right, far outside float32's
    # rounding band (gamma_769 * 768.2, about 0.035). TF32 keeps 10 mantissa bits, so it reads each
    # x_i as 1.0, the logit as 0, and sends every row left: every rounding error has one sign here,
    # unlike random data, where they cancel and stay inside the band.
    numpy_params = FFFParams.random(768, 8, 3, seed=3)
    w_in, b_in = numpy_params.w_in.copy(), numpy_params.b_in.copy()
    w_in[0, 0, :], b_in[0, 0] = 1.0, -768.0
    params = to_torch(FFFParams(w_in, b_in, numpy_params.w_out), "cuda")
    x = torch.full((64, 768), 1 + 2**-12, device="cuda")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 for float32 matrix products, as users set it
    try:
        nodes = fffcore.cmm(x, params, backend="torch").nodes
        with monkeypatch.context() as patch:  # the plain product, without the guard
            patch.setattr(kernels, "_matmul", lambda product, a, b: product(a, b))
            unguarded = fffcore.cmm(x, params, backend="torch").nodes
    finally:
        torch.set_float32_matmul_precision(before)
    if (unguarded[:, 0, 1] == 2).all():
        pytest.skip("this GPU does not round float32 products to TF32, so nothing is tested")
    assert (unguarded[:, 0, 1] == 1).all()  # what TF32 does to an unguarded product
    assert (nodes[:, 0, 1] == 2).all()  # the backend's own product is not coarsened


def test_tf32_guard_on_cuda_is_visible_on_the_cpu():
    # No CUDA here: tensors that say they live on CUDA record the dtype each product runs in. With
    # TF32 allowed (as users set it), float32 products on CUDA must still run where TF32 cannot
    # round them (float64), 16-bit ones in float32, and CPU float32 ones untouched.
    seen = []

    class Recorded:
        def __init__(self, dtype, device):
            self.dtype, self.device = dtype, types.SimpleNamespace(type=device)

        def double(self):
            return Recorded(torch.float64, self.device.type)

        def float(self):
            return Recorded(torch.float32, self.device.type)

        def to(self, dtype):
            return Recorded(dtype, self.device.type)

    def product(a, b):
        seen.append((a.dtype, b.dtype))
        return Recorded(a.dtype, a.device.type)

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        for dtype, device in ((torch.float32, "cuda"), (torch.bfloat16, "cuda"), (torch.float32, "cpu")):
            result = kernels._matmul(product, Recorded(dtype, device), Recorded(dtype, device))
            assert result.dtype is dtype  # rounded back to the layer's dtype
    finally:
        torch.set_float32_matmul_precision(before)
    assert seen == [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.float32, torch.float32)]
