"""The CUDA kernels, run on the CPU: fff_kernels.cu compiled by g++ with a thread-per-lane warp emulation.

``backends/cupy/cpu_emulation.cpp`` runs every CUDA thread of a launch as a
POSIX thread (shuffles and ``__syncwarp`` meet at a per-warp barrier), so the
kernel source itself is executed here, with the exact geometry, tree groups
and compile options the host plan produces. Two layers of tests:

* kernel level: launches planned by :mod:`kernel_plan`, checked against the
  float64 oracle along the kernel's own path;
* backend level: :class:`CupyBackend` end to end, with ``cupy`` replaced in
  ``sys.modules`` by a numpy-backed stand-in whose ``RawModule`` compiles the
  same source with the same options for the emulator, so argument order,
  scalar widths, the bias stand-in and shared-memory sizes are all exercised.

Tolerances come from :mod:`fffcore.conformance.tolerances`: a logit is a sum
of d_in products plus the bias, computed in the params dtype in some order, so
it lies within ``logit_tolerance`` (``gamma(d_in + 3, u) * (sum|x_i w_i| + |b|)``
plus the float64 oracle's own error) with ``gamma(n) = n u / (1 - n u)`` and
``u = eps / 2`` (Higham, Accuracy and Stability, section 3.1). An output element is a sum of K(D+1) terms
``act(logit) * w``; each activation is within ``ACTIVATION_EPS = 8 eps`` of the
exact one relative to ``|act| + |logit|`` (CUDA and glibc document erfc at most 4
ulp and tanh and exp at most 2, plus at most three roundings in the formula;
the ``|logit|`` term covers gelu_tanh's cancellation in ``1 + tanh`` for
negative logits), each product adds ``u`` and the sum ``gamma(K(D+1))``.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fffcore.backends.cupy import kernel_plan
from fffcore.backends.cupy.plugin import CupyBackend
from fffcore.conformance import tolerances
from fffcore.params import FFFParams
from fffcore.reference.activations import activate
from fffcore.reference.oracle import evaluate_path
from fffcore.reference.plugin import ReferenceBackend
from fffcore.spec import ACTIVATIONS

PACKAGE_DIR = Path(kernel_plan.__file__).resolve().parent
EMULATION_SOURCE = PACKAGE_DIR / "cpu_emulation.cpp"
ACTIVATION_EPS = 8  # in units of eps, see the module docstring

pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to run the kernels on the CPU"),
    pytest.mark.skipif(not EMULATION_SOURCE.exists(), reason="cpu_emulation.cpp ships with the source tree only"),
]


def gamma(n: int, dtype: str) -> float:
    """Higham's gamma(n) for ``dtype``'s unit roundoff, from the conformance suite's derivation."""
    return tolerances.gamma(n, tolerances.UNIT_ROUNDOFF[dtype])


# --- building and calling the emulator -------------------------------------------------------------


class Emulators:
    """g++ builds of the emulator, one shared library per set of compile options, cached for the session."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.libraries: dict[tuple[str, ...], ctypes.CDLL] = {}

    def library(self, options: tuple[str, ...], source_dir: Path = PACKAGE_DIR) -> ctypes.CDLL:
        """The emulator of one variant, built from ``source_dir``'s cpu_emulation.cpp and fff_kernels.cu."""
        key = (*options, str(source_dir))
        library = self.libraries.get(key)
        if library is None:
            defines = [option for option in options if option.startswith("-D")]
            assert len(defines) == len(options) - 1, f"unexpected compile options {options}"
            target = self.directory / f"emulation_{len(self.libraries)}.so"
            command = [
                "g++",
                "-std=c++17",
                "-O1",
                "-Wall",
                "-Wextra",
                "-Wno-unknown-pragmas",  # the CUDA unroll pragmas
                "-Werror",
                "-shared",
                "-fPIC",
                "-pthread",
                f"-I{source_dir}",
                *defines,
                str(source_dir / EMULATION_SOURCE.name),
                "-o",
                str(target),
            ]
            built = subprocess.run(command, capture_output=True, text=True, check=False)
            assert built.returncode == 0, f"g++ failed:\n{built.stderr}"
            library = ctypes.CDLL(str(target))
            library.emulate_fff_forward.restype = ctypes.c_int
            library.emulate_fff_conditional_matmul.restype = ctypes.c_int
            self.libraries[key] = library
        return library


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Emulators:
    return Emulators(tmp_path_factory.mktemp("cupy_emulation"))


def _pointer(array: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


_CTYPES_BY_DTYPE = {"int64": ctypes.c_longlong, "int32": ctypes.c_int}


def _scalars(values: tuple[int, ...], dtypes: tuple[str, ...]) -> list[Any]:
    return [_CTYPES_BY_DTYPE[dtype](value) for dtype, value in zip(dtypes, values, strict=True)]


#: Per kernel: its pointer arguments, its scalar dtypes, and whether it takes dynamic shared memory.
KERNEL_SIGNATURES: dict[str, tuple[int, tuple[str, ...], bool]] = {
    kernel_plan.FFF_KERNEL_NAME: (5, kernel_plan.FFF_SCALAR_DTYPES, True),
    kernel_plan.CMM_KERNEL_NAME: (5, kernel_plan.CMM_SCALAR_DTYPES, False),
    kernel_plan.TOP_WALK_KERNEL_NAME: (6, kernel_plan.TOP_WALK_SCALAR_DTYPES, False),
    kernel_plan.SORTED_KERNEL_NAME: (8, kernel_plan.SORTED_SCALAR_DTYPES, True),
    kernel_plan.TILED_KERNEL_NAME: (5, kernel_plan.TILED_SCALAR_DTYPES, True),
}
#: Launch statuses of cpu_emulation.cpp's launch(), and what they would mean on a GPU.
EMULATION_FAILURES = {
    1: "a warp's shuffles or __syncwarp, or the block's __syncthreads, did not line up (undefined on a GPU)",
    2: "a block size the emulator cannot run",
    3: "the emulator could not start its threads",
    4: "a block wrote past the end of its dynamic shared memory",
}


def emulate_launch(library: ctypes.CDLL, launch: kernel_plan.KernelLaunch, pointers: list[Any]) -> None:
    """Run one planned launch; pointers are the kernel's pointer arguments in order."""
    geometry = launch.geometry
    assert geometry.block % 32 == 0 and 0 < geometry.block <= 1024
    # Only the tiled kernel opts into more than the 48 KiB every device grants.
    opt_in = launch.kernel == kernel_plan.TILED_KERNEL_NAME
    limit = kernel_plan.HOPPER_SHARED_BYTES_OPTIN if opt_in else kernel_plan.SHARED_BYTES_PER_BLOCK
    assert geometry.shared_bytes <= limit
    pointer_count, scalar_dtypes, takes_shared = KERNEL_SIGNATURES[launch.kernel]
    assert len(pointers) == pointer_count
    shared = [ctypes.c_ulonglong(geometry.shared_bytes)] if takes_shared else []
    if not takes_shared:
        assert geometry.shared_bytes == 0
    status = getattr(library, f"emulate_{launch.kernel}")(
        ctypes.c_uint(geometry.grid),
        ctypes.c_uint(geometry.block),
        *shared,
        *pointers,
        *_scalars(launch.scalars, scalar_dtypes),
    )
    assert status == 0, EMULATION_FAILURES.get(status, f"emulator status {status}")


def poisoned(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An output buffer filled with a value no kernel writes, so unwritten elements show."""
    if np.dtype(dtype).kind == "f":
        return np.full(shape, -np.finfo(dtype).max, dtype=dtype)
    if np.dtype(dtype).kind == "u":
        return np.full(shape, np.iinfo(dtype).max - 7, dtype=dtype)
    return np.full(shape, -7, dtype=dtype)


def run_kernels(
    emulators: Emulators,
    x: np.ndarray,
    params: FFFParams,
    **plan_options: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, kernel_plan.KernelConfig, list[kernel_plan.KernelLaunch]]:
    """(logits, nodes, y, config, fff launches) of the emulated kernels, planned as the backend plans them.

    ``x`` must already be C-contiguous rows of the params dtype (it may be
    misaligned on purpose); plan_options go to the planners (warps, shared
    limit, block cap).
    """
    traits = kernel_plan.dtype_traits(params.dtype)
    rows = x.shape[0]
    y = poisoned((rows, params.d_out), params.dtype)
    logits = poisoned((rows, params.trees, params.depth + 1), params.dtype)
    nodes = poisoned((rows, params.trees, params.depth + 1), np.int64)
    warps = plan_options.get("warps_per_block", kernel_plan.WARPS_PER_BLOCK)
    config = kernel_plan.kernel_config(
        dtype=params.dtype,
        activation=params.activation,
        has_bias=params.has_bias,
        d_in=params.d_in,
        d_out=params.d_out,
        in_addresses=(x.ctypes.data, params.w_in.ctypes.data),
        out_addresses=(params.w_out.ctypes.data, y.ctypes.data),
        warps_per_block=warps,
    )
    library = emulators.library(kernel_plan.compile_options(config))
    b_in = params.w_in if params.b_in is None else params.b_in
    fff_launches = kernel_plan.fff_launches(
        rows, params.trees, params.depth, params.d_in, params.d_out, traits.compute_itemsize, **plan_options
    )
    for launch in fff_launches:
        emulate_launch(library, launch, [_pointer(a) for a in (x, params.w_in, b_in, params.w_out, y)])
    cmm_options = {k: v for k, v in plan_options.items() if k != "shared_limit"}
    for launch in kernel_plan.cmm_launches(rows, params.trees, params.depth, params.d_in, **cmm_options):
        emulate_launch(library, launch, [_pointer(a) for a in (x, params.w_in, b_in, logits, nodes)])
    return logits, nodes, y, config, fff_launches


# --- checks against the oracle ---------------------------------------------------------------------


def assert_valid_path(logits: np.ndarray, nodes: np.ndarray) -> None:
    """Every path starts at the root and takes the child its own logit chooses (strictly > 0 goes right)."""
    assert np.all(nodes[:, :, 0] == 0), "paths must start at the root"
    expected = 2 * nodes[:, :, :-1] + 1 + (logits[:, :, :-1] > 0)
    mismatch = np.argwhere(nodes[:, :, 1:] != expected)
    assert mismatch.size == 0, f"nodes do not follow their logits at (row, tree, level-1) {mismatch[:5].tolist()}"


def assert_logits_within_band(
    x: np.ndarray,
    params: FFFParams,
    logits: np.ndarray,
    nodes: np.ndarray,
    dtype: str | None = None,
    accumulation: str | None = None,
) -> None:
    """``dtype``: the dtype the kernel stored and rounded in, when ``params`` hold its values in a wider
    one; ``accumulation``: the dtype it summed in, when wider than ``dtype``."""
    exact = evaluate_path(x, params, nodes)
    band = tolerances.logit_tolerance(dtype or params.dtype, params.d_in, exact.logit_scale, accumulation=accumulation)
    error = np.abs(logits.astype(np.float64) - exact.logits)
    worst = np.unravel_index(np.argmax(error - band), error.shape)
    assert np.all(error <= band), f"logit error {error[worst]:.3g} > band {band[worst]:.3g} at {worst}"


def assert_output_within_band(
    params: FFFParams,
    logits: np.ndarray,
    nodes: np.ndarray,
    y: np.ndarray,
    dtype: str | None = None,
    accumulation: str | None = None,
) -> None:
    """y against the float64 tree sum of act(kernel logits) along the kernel's path. With a wider
    ``accumulation``, the activations, products and sum are in it, and y is rounded once to ``dtype``."""
    dtype = dtype or params.dtype
    summed_in = accumulation or dtype
    wide = logits.astype(np.float64)
    activated = activate(params.activation, wide)
    tree = np.arange(params.trees)[None, :, None]
    rows_out = np.asarray(params.w_out, dtype=np.float64)[tree, nodes]  # (B, K, L, d_out)
    expected = np.einsum("bkl,bklo->bo", activated, rows_out)
    scale = np.einsum("bkl,bklo->bo", np.abs(activated) + np.abs(wide), np.abs(rows_out))
    eps = 2 * tolerances.UNIT_ROUNDOFF[summed_in]  # an ulp of 1
    terms = params.trees * (params.depth + 1)
    band = (ACTIVATION_EPS * eps + eps / 2 + gamma(terms, summed_in)) * scale
    if summed_in != dtype:  # the one rounding of the sum to the stored dtype
        band = band * (1 + tolerances.UNIT_ROUNDOFF[dtype]) + tolerances.UNIT_ROUNDOFF[dtype] * np.abs(expected)
    error = np.abs(y.astype(np.float64) - expected)
    worst = np.unravel_index(np.argmax(error - band), error.shape)
    assert np.all(error <= band), f"output error {error[worst]:.3g} > band {band[worst]:.3g} at {worst}"


def check_against_oracle(
    x: np.ndarray,
    params: FFFParams,
    logits: np.ndarray,
    nodes: np.ndarray,
    y: np.ndarray,
    dtype: str | None = None,
    accumulation: str | None = None,
) -> None:
    assert_valid_path(logits, nodes)
    assert_logits_within_band(x, params, logits, nodes, dtype, accumulation)
    assert_output_within_band(params, logits, nodes, y, dtype, accumulation)


def rows_for(params: FFFParams, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, params.d_in)).astype(params.dtype)


# --- kernel level ----------------------------------------------------------------------------------

# (dtype, activation, bias, d_in, d_out, depth, trees, rows): each row a different compiled variant or path of the plan.
KERNEL_CASES = [
    pytest.param("float32", "gelu", True, 96, 64, 3, 1, 11, id="f32-gelu-registers-vec4"),
    pytest.param("float64", "gelu_tanh", False, 40, 24, 2, 2, 9, id="f64-gelu_tanh-nobias-vec2-masked-lanes"),
    pytest.param("float32", "relu", True, 5, 3, 4, 3, 10, id="f32-relu-scalar-loads"),
    pytest.param("float32", "silu", False, 36, 1, 1, 1, 1, id="f32-silu-one-row-d_out-1"),
    pytest.param("float64", "identity", True, 2100, 8, 2, 1, 3, id="f64-identity-x-streamed"),
    pytest.param("float32", "gelu", True, 64, 32, 0, 4, 5, id="f32-depth-0-four-trees"),
    pytest.param("float16", "gelu", True, 200, 40, 3, 2, 7, id="f16-gelu-vec8"),
    pytest.param("float16", "silu", False, 30, 6, 2, 1, 4, id="f16-silu-scalar-loads"),
]


@pytest.mark.parametrize(("dtype", "activation", "bias", "d_in", "d_out", "depth", "trees", "rows"), KERNEL_CASES)
def test_kernels_match_the_oracle(
    emulators: Emulators,
    dtype: str,
    activation: str,
    bias: bool,
    d_in: int,
    d_out: int,
    depth: int,
    trees: int,
    rows: int,
) -> None:
    params = FFFParams.random(d_in, d_out, depth, trees, bias=bias, activation=activation, dtype=dtype, seed=d_in)
    x = rows_for(params, rows, seed=rows)
    logits, nodes, y, _, _ = run_kernels(emulators, x, params)
    check_against_oracle(x, params, logits, nodes, y)


def run_grouped(emulators: Emulators, x: np.ndarray, params: FFFParams, **plan_options: Any) -> np.ndarray:
    """y of the emulated row-grouped kernels: per tree group the top walk, a stable sort of the
    rows by key (as the runtime sorts them on the device), then the sorted launch."""
    traits = kernel_plan.dtype_traits(params.dtype)
    compute = np.float64 if traits.compute_itemsize == 8 else np.float32
    rows = x.shape[0]
    y = poisoned((rows, params.d_out), params.dtype)
    config = kernel_plan.kernel_config(
        dtype=params.dtype,
        activation=params.activation,
        has_bias=params.has_bias,
        d_in=params.d_in,
        d_out=params.d_out,
        in_addresses=(x.ctypes.data, params.w_in.ctypes.data),
        out_addresses=(params.w_out.ctypes.data, y.ctypes.data),
        warps_per_block=plan_options.get("warps_per_block", kernel_plan.WARPS_PER_BLOCK),
    )
    library = emulators.library(kernel_plan.compile_options(config))
    b_in = params.w_in if params.b_in is None else params.b_in
    steps = kernel_plan.grouped_fff_launches(
        rows, params.trees, params.depth, params.d_in, params.d_out, traits.compute_itemsize, **plan_options
    )
    for step in steps:
        top_acts = poisoned((rows, step.tree_count, step.top_levels), compute)
        top_path = np.full((rows, step.tree_count, step.top_levels + 1), -7, dtype=np.int32)
        keys = np.full(rows, -7, dtype=np.int32)
        emulate_launch(library, step.top_walk, [_pointer(a) for a in (x, params.w_in, b_in, top_acts, top_path, keys)])
        assert np.all((keys >= 2**step.top_levels - 1) & (keys < 2 ** (step.top_levels + 1) - 1))
        order = np.argsort(keys, kind="stable").astype(np.int64)
        arrays = (x, params.w_in, b_in, params.w_out, y, order, top_acts, top_path)
        emulate_launch(library, step.sorted, [_pointer(a) for a in arrays])
    return y


@pytest.mark.parametrize(
    ("dtype", "activation", "bias", "d_in", "d_out", "depth", "trees", "rows", "plan"),
    [
        pytest.param("float32", "gelu", True, 96, 64, 4, 1, 300, {}, id="f32-one-tree-top-2-levels"),
        pytest.param("float64", "silu", False, 40, 24, 3, 3, 70, {}, id="f64-three-trees-nobias"),
        pytest.param("float32", "relu", True, 5, 3, 2, 4, 9, {"shared_limit": 600}, id="f32-tree-groups-scalar"),
        pytest.param("float16", "gelu_tanh", True, 64, 16, 5, 1, 600, {}, id="f16-top-3-levels"),
        pytest.param("float32", "identity", True, 2100, 8, 1, 2, 5, {"warps_per_block": 2}, id="f32-x-streamed"),
    ],
)
def test_row_grouped_kernels_give_the_bits_of_the_warp_per_row_kernel(
    emulators: Emulators,
    dtype: str,
    activation: str,
    bias: bool,
    d_in: int,
    d_out: int,
    depth: int,
    trees: int,
    rows: int,
    plan: dict[str, int],
) -> None:
    # Each row's arithmetic is the same in both (the same dot products, activations and output
    # sum in the same order); only the order in which warps take the rows differs.
    params = FFFParams.random(d_in, d_out, depth, trees, bias=bias, activation=activation, dtype=dtype, seed=rows)
    x = rows_for(params, rows, seed=d_in)
    logits, nodes, y, _, _ = run_kernels(emulators, x, params, **plan)
    grouped = run_grouped(emulators, x, params, **plan)
    np.testing.assert_array_equal(grouped.view(np.uint8), y.view(np.uint8))
    check_against_oracle(x, params, logits, nodes, grouped)


def test_row_grouped_plan_walks_about_log2_rows_over_64_levels_first() -> None:
    assert [kernel_plan.grouped_top_levels(rows, 11) for rows in (1, 64, 128, 4096, 16384, 2**20)] == [
        1,
        1,
        1,
        6,
        8,
        11,
    ]
    assert kernel_plan.grouped_top_levels(16384, 3) == 3
    with pytest.raises(ValueError, match=r"params\.depth: the row-grouped kernels need depth >= 1, got 0"):
        kernel_plan.grouped_fff_launches(10, 1, 0, 8, 8, 4)


def test_the_variants_cover_registers_streaming_and_both_vector_widths(emulators: Emulators) -> None:
    """Pins the kernel cases above to the variants they are meant to exercise."""
    configs = {}
    for case in KERNEL_CASES:
        dtype, activation, bias, d_in, d_out, *_ = case.values
        configs[case.id] = kernel_plan.kernel_config(
            dtype=dtype,
            activation=activation,
            has_bias=bias,
            d_in=d_in,
            d_out=d_out,
            in_addresses=(0,),
            out_addresses=(0,),
        )
    assert configs["f32-gelu-registers-vec4"].vec_in == 4 and configs["f32-gelu-registers-vec4"].x_chunks == 1
    masked = configs["f64-gelu_tanh-nobias-vec2-masked-lanes"]
    assert masked.vec_in == 2 and masked.x_chunks == 1  # 40 elements: lanes 20..31 hold zeros
    assert configs["f32-relu-scalar-loads"].vec_in == 1 and configs["f32-relu-scalar-loads"].vec_out == 1
    assert configs["f32-silu-one-row-d_out-1"].vec_in == 4 and configs["f32-silu-one-row-d_out-1"].vec_out == 1
    assert configs["f64-identity-x-streamed"].x_chunks == 0


def test_one_block_strides_over_every_row(emulators: Emulators) -> None:
    params = FFFParams.random(64, 16, 3, 1, dtype="float32", seed=3)
    x = rows_for(params, 37, seed=4)
    logits, nodes, y, _, launches = run_kernels(emulators, x, params, max_blocks=1, warps_per_block=2)
    assert launches[0].geometry.grid == 1 and launches[0].geometry.block == 64
    check_against_oracle(x, params, logits, nodes, y)


def test_tree_groups_accumulate_into_the_output(emulators: Emulators) -> None:
    params = FFFParams.random(32, 12, 2, 5, dtype="float64", activation="silu", seed=5)
    x = rows_for(params, 6, seed=6)
    # Room for the paths of 2 trees only: groups of 2, 2 and 1, the last two accumulating.
    limit = kernel_plan.shared_bytes_for(6, 2, 3, 8)
    logits, nodes, y, _, launches = run_kernels(emulators, x, params, shared_limit=limit)
    assert [launch.scalars[4:] for launch in launches] == [(0, 2, 0), (2, 2, 1), (4, 1, 1)]
    check_against_oracle(x, params, logits, nodes, y)


def test_misaligned_rows_fall_back_to_scalar_loads(emulators: Emulators) -> None:
    params = FFFParams.random(64, 32, 3, 1, dtype="float32", seed=7)
    buffer = rows_for(params, 5, seed=8).ravel()
    shifted = np.empty(buffer.size + 1, dtype=np.float32)[1:]  # 4 bytes past a 16-byte boundary
    assert shifted.ctypes.data % 16 != 0
    shifted[:] = buffer
    x = shifted.reshape(5, 64)
    logits, nodes, y, config, _ = run_kernels(emulators, x, params)
    assert config.vec_in == 1 and config.vec_out == 4
    check_against_oracle(x, params, logits, nodes, y)


def test_special_values_follow_the_spec(emulators: Emulators) -> None:
    """NaN logits go left and give NaN; exact zeros go left; act(-inf) is 0, so a -inf logit adds nothing."""
    base = FFFParams.random(32, 8, 2, 1, dtype="float32", seed=9)
    b_in = np.array(base.b_in)
    b_in[0, 0] = -np.inf  # every row's root logit is -inf (x finite), so it goes left and contributes 0
    params = FFFParams(base.w_in, b_in, base.w_out, "gelu")
    x = rows_for(params, 4, seed=10)
    x[1, 3] = np.nan
    logits, nodes, y, _, _ = run_kernels(emulators, x, params)
    left_path = [0, 1, 3]
    finite = [0, 2, 3]
    assert np.all(logits[finite, 0, 0] == -np.inf) and np.all(nodes[:, 0, 1] == 1)
    assert np.all(np.isnan(logits[1])) and nodes[1, 0].tolist() == left_path and np.all(np.isnan(y[1]))
    assert np.all(np.isfinite(y[finite]))
    _, reference_nodes = ReferenceBackend().cmm(x[finite], params)
    np.testing.assert_array_equal(nodes[finite], reference_nodes)
    assert_output_within_band(params, logits[finite], nodes[finite], y[finite])

    no_bias = FFFParams(base.w_in, None, base.w_out, "relu")
    zeros = np.zeros((2, 32), dtype=np.float32)
    logits, nodes, y, _, _ = run_kernels(emulators, zeros, no_bias)
    assert np.all(logits == 0) and nodes[0, 0].tolist() == left_path and np.all(y == 0)


def test_the_emulation_runs_the_source_it_is_given(emulators: Emulators, tmp_path: Path) -> None:
    """A kernel with the wrong branch (>= 0) sends exact zeros right: the emulation would catch it."""
    source = (PACKAGE_DIR / kernel_plan.KERNEL_SOURCE_FILE).read_text(encoding="utf-8")
    branch = "(logit > compute_t(0) ? 1 : 0)"
    assert source.count(branch) == 1
    (tmp_path / kernel_plan.KERNEL_SOURCE_FILE).write_text(source.replace(branch, "(logit >= compute_t(0) ? 1 : 0)"))
    shutil.copy(EMULATION_SOURCE, tmp_path)
    params = FFFParams.random(32, 8, 2, 1, bias=False, dtype="float32", seed=23)
    zeros = np.zeros((1, 32), dtype=np.float32)
    logits = poisoned((1, 1, 3), np.float32)
    nodes = poisoned((1, 1, 3), np.int64)
    config = kernel_plan.kernel_config(
        dtype="float32", activation="gelu", has_bias=False, d_in=32, d_out=8, in_addresses=(0,), out_addresses=(0,)
    )
    mutated = emulators.library(kernel_plan.compile_options(config), source_dir=tmp_path)
    (launch,) = kernel_plan.cmm_launches(1, 1, 2, 32)
    emulate_launch(mutated, launch, [_pointer(a) for a in (zeros, params.w_in, params.w_in, logits, nodes)])
    assert np.all(logits == 0) and nodes[0, 0].tolist() == [0, 2, 6]  # right, right: what the spec forbids


def test_float16_conversions_match_numpy(emulators: Emulators) -> None:
    config = kernel_plan.kernel_config(
        dtype="float16", activation="identity", has_bias=False, d_in=8, d_out=8, in_addresses=(0,), out_addresses=(0,)
    )
    library = emulators.library(kernel_plan.compile_options(config))
    # Every float16 bit pattern widens exactly (NaN payloads aside).
    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    widened = np.empty(halves.size, dtype=np.float32)
    library.emulate_to_compute(_pointer(halves), _pointer(widened), ctypes.c_longlong(halves.size))
    expected = halves.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(widened), nan)
    np.testing.assert_array_equal(widened[~nan].view(np.uint32), expected[~nan].view(np.uint32))
    # Narrowing rounds to nearest, ties to even: every float16, every midpoint between neighbours
    # (ties), points just beside them, overflow, subnormals, zeros, infinities and NaN.
    finite = expected[np.isfinite(expected)].astype(np.float64)
    ordered = np.unique(finite)
    midpoints = (ordered[:-1] + ordered[1:]) / 2
    near = np.concatenate([midpoints, np.nextafter(midpoints.astype(np.float32), np.float32(np.inf))])
    specials = [65504.0, 65519.0, 65520.0, 1e6, -1e6, 2.0**-25, 2.0**-26, 1e-30, -0.0, 0.0, np.inf, -np.inf, np.nan]
    floats = np.concatenate([finite, near, specials]).astype(np.float32)
    rng = np.random.default_rng(24)
    floats = np.concatenate(
        [floats, rng.standard_normal(20000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 20000)]
    )
    floats = np.ascontiguousarray(floats, dtype=np.float32)
    narrowed = np.empty(floats.size, dtype=np.uint16)
    library.emulate_to_storage(_pointer(floats), _pointer(narrowed), ctypes.c_longlong(floats.size))
    with np.errstate(over="ignore"):
        reference = floats.astype(np.float16)
    nan = np.isnan(reference)
    np.testing.assert_array_equal(np.isnan(narrowed.view(np.float16)), nan)
    np.testing.assert_array_equal(narrowed[~nan], reference[~nan].view(np.uint16))


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 by torch (nearest, ties to even): their uint16 bits."""
    torch = pytest.importorskip("torch", reason="torch's bfloat16 rounding is the reference here")
    rounded = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)
    return rounded.view(torch.int16).numpy().view(np.uint16)


def bfloat16_values(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits as the float32 values they stand for (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_bfloat16_conversions_match_torch(emulators: Emulators) -> None:
    config = kernel_plan.kernel_config(
        dtype="bfloat16", activation="identity", has_bias=False, d_in=8, d_out=8, in_addresses=(0,), out_addresses=(0,)
    )
    library = emulators.library(kernel_plan.compile_options(config))
    # Every bfloat16 bit pattern widens exactly: it is the top half of a float32.
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    widened = np.empty(every.size, dtype=np.float32)
    library.emulate_to_compute(_pointer(every), _pointer(widened), ctypes.c_longlong(every.size))
    np.testing.assert_array_equal(widened.view(np.uint32), every.astype(np.uint32) << 16)
    # Narrowing: every bfloat16, the midpoints between neighbours (ties), one float32 ulp either side,
    # the largest finite values and past them, subnormals, zeros, infinities and NaN.
    finite = widened[np.isfinite(widened)].astype(np.float64)
    ordered = np.unique(finite)
    midpoints = ((ordered[:-1] + ordered[1:]) / 2).astype(np.float32)
    near = np.concatenate(
        [midpoints, np.nextafter(midpoints, np.float32(np.inf)), np.nextafter(midpoints, np.float32(-np.inf))]
    )
    top = float(np.finfo(np.float32).max)
    specials = [3.3895313892515355e38, 3.3961775292304e38, top, -top, 1e-40, -1e-45, -0.0, 0.0, np.inf, -np.inf, np.nan]
    rng = np.random.default_rng(31)
    scattered = rng.standard_normal(20000) * 10.0 ** rng.integers(-40, 38, 20000)
    with np.errstate(over="ignore"):
        floats = np.ascontiguousarray(
            np.concatenate([finite, near, specials, scattered]).astype(np.float32), dtype=np.float32
        )
    narrowed = np.empty(floats.size, dtype=np.uint16)
    library.emulate_to_storage(_pointer(floats), _pointer(narrowed), ctypes.c_longlong(floats.size))
    reference = bfloat16_bits(floats)
    nan = np.isnan(floats)
    assert np.all(np.isnan(bfloat16_values(narrowed[nan])))
    np.testing.assert_array_equal(narrowed[~nan], reference[~nan])


@pytest.mark.parametrize(
    ("activation", "bias", "d_in", "d_out", "depth", "trees", "rows"),
    [
        pytest.param("gelu", True, 200, 40, 3, 2, 7, id="bf16-gelu-vec8"),
        pytest.param("relu", False, 30, 6, 2, 1, 4, id="bf16-relu-scalar-loads"),
    ],
)
def test_bfloat16_kernels_match_the_oracle(
    emulators: Emulators, activation: str, bias: bool, d_in: int, d_out: int, depth: int, trees: int, rows: int
) -> None:
    # numpy has no bfloat16: the kernel gets raw 16-bit buffers (as it will from torch through DLPack),
    # the oracle float32 parameters holding exactly the bfloat16 values.
    wide = FFFParams.random(d_in, d_out, depth, trees, bias=bias, activation=activation, dtype="float32", seed=d_in)
    bits = {name: bfloat16_bits(getattr(wide, name)) for name in ("w_in", "w_out") + (("b_in",) if bias else ())}
    params = FFFParams(
        bfloat16_values(bits["w_in"]),
        bfloat16_values(bits["b_in"]) if bias else None,
        bfloat16_values(bits["w_out"]),
        activation,
    )
    x_bits = bfloat16_bits(np.random.default_rng(rows).standard_normal((rows, d_in)))
    x = bfloat16_values(x_bits)
    y_bits = np.full((rows, d_out), 0xFF7F, dtype=np.uint16)  # -max: an unwritten element shows
    logit_bits = np.full((rows, trees, depth + 1), 0xFF7F, dtype=np.uint16)
    nodes = poisoned((rows, trees, depth + 1), np.int64)
    config = kernel_plan.kernel_config(
        dtype="bfloat16",
        activation=activation,
        has_bias=bias,
        d_in=d_in,
        d_out=d_out,
        in_addresses=(x_bits.ctypes.data, bits["w_in"].ctypes.data),
        out_addresses=(bits["w_out"].ctypes.data, y_bits.ctypes.data),
    )
    library = emulators.library(kernel_plan.compile_options(config))
    b_in = bits["b_in"] if bias else bits["w_in"]
    traits = kernel_plan.dtype_traits("bfloat16")
    for launch in kernel_plan.fff_launches(rows, trees, depth, d_in, d_out, traits.compute_itemsize):
        emulate_launch(library, launch, [_pointer(a) for a in (x_bits, bits["w_in"], b_in, bits["w_out"], y_bits)])
    for launch in kernel_plan.cmm_launches(rows, trees, depth, d_in):
        emulate_launch(library, launch, [_pointer(a) for a in (x_bits, bits["w_in"], b_in, logit_bits, nodes)])
    logits, y = bfloat16_values(logit_bits), bfloat16_values(y_bits)
    # Summed in float32, rounded once to bfloat16: the float32 bands plus one bfloat16 rounding.
    check_against_oracle(x, params, logits, nodes, y, dtype="bfloat16", accumulation="float32")


# --- the tiled variant -----------------------------------------------------------------------------


def emulate_tiled(
    emulators: Emulators,
    x: np.ndarray,
    w_in: np.ndarray,
    b_in: np.ndarray | None,
    w_out: np.ndarray,
    *,
    dtype: str,
    activation: str,
    **plan_options: Any,
) -> tuple[np.ndarray, tuple[kernel_plan.KernelLaunch, ...]]:
    """(y, launches) of the emulated tiled kernel on raw storage arrays (bfloat16 as uint16 words),
    planned as the backend plans it; plan_options go to the planner (warps, shared limit, block cap)."""
    traits = kernel_plan.dtype_traits(dtype)
    trees, nodes, d_in = w_in.shape
    rows, d_out = x.shape[0], w_out.shape[2]
    y = poisoned((rows, d_out), x.dtype)
    config = kernel_plan.kernel_config(
        dtype=dtype,
        activation=activation,
        has_bias=b_in is not None,
        d_in=d_in,
        d_out=d_out,
        in_addresses=(x.ctypes.data, w_in.ctypes.data),
        out_addresses=(w_out.ctypes.data, y.ctypes.data),
        warps_per_block=plan_options.get("warps_per_block", kernel_plan.WARPS_PER_BLOCK),
    )
    library = emulators.library(kernel_plan.compile_options(config))
    depth = (nodes + 1).bit_length() - 2
    launches = kernel_plan.tiled_fff_launches(
        rows, trees, depth, d_in, d_out, traits.itemsize, traits.compute_itemsize, **plan_options
    )
    pointers = [_pointer(a) for a in (x, w_in, w_in if b_in is None else b_in, w_out, y)]
    for launch in launches:
        emulate_launch(library, launch, pointers)
    return y, launches


def run_tiled(
    emulators: Emulators, x: np.ndarray, params: FFFParams, **plan_options: Any
) -> tuple[np.ndarray, tuple[kernel_plan.KernelLaunch, ...]]:
    """(y, launches) of the emulated tiled kernel for a numpy layer."""
    arrays = (params.w_in, params.b_in, params.w_out)
    return emulate_tiled(emulators, x, *arrays, dtype=params.dtype, activation=params.activation, **plan_options)


def limit_for_tile(tile_rows: int, d_in: int, d_out: int, depth: int, trees: int, dtype: str, warps: int) -> int:
    """The shared-memory limit under which the tiled plan takes tiles of ``tile_rows`` rows and
    walks all ``trees`` in one launch (twice the rows would not fit)."""
    traits = kernel_plan.dtype_traits(dtype)
    shape = kernel_plan.tile_shape(
        tile_rows, d_in, d_out, depth + 1, traits.itemsize, traits.compute_itemsize, warps * 32
    )
    return shape.shared_bytes(trees)


def tiled_options(plan: dict[str, int], d_in: int, d_out: int, depth: int, trees: int, dtype: str) -> dict[str, int]:
    """Plan options from a case: ``tile_rows`` becomes the shared limit that gives that tile."""
    options = {key: value for key, value in plan.items() if key != "tile_rows"}
    warps = options.setdefault("warps_per_block", kernel_plan.WARPS_PER_BLOCK)
    options["shared_limit"] = limit_for_tile(plan["tile_rows"], d_in, d_out, depth, trees, dtype, warps)
    return options


# (dtype, activation, bias, d_in, d_out, depth, trees, rows, plan): small tiles keep the emulation
# short (each CUDA thread is a POSIX thread); one case runs the real 128-row tile on a narrow layer.
#: Tiles of 8 rows for blocks of 2 warps (4 rows per warp and level), the most common plan below.
EIGHT_ROWS = {"tile_rows": 8, "warps_per_block": 2}
TILED_CASES = [
    pytest.param(
        "float32", "gelu", True, 96, 64, 3, 1, 37, {**EIGHT_ROWS, "max_blocks": 2}, id="f32-vec4-5-tiles-strided"
    ),
    pytest.param("float64", "gelu_tanh", False, 40, 24, 2, 2, 5, EIGHT_ROWS, id="f64-nobias-vec2-batch-under-a-tile"),
    pytest.param("float32", "relu", True, 5, 300, 4, 3, 40, {**EIGHT_ROWS, "tile_rows": 16}, id="f32-scalar-5-chunks"),
    pytest.param("float32", "silu", False, 256, 200, 2, 1, 20, EIGHT_ROWS, id="f32-nobias-4-columns-per-thread"),
    pytest.param(
        "float64", "identity", True, 2100, 8, 2, 1, 9, {**EIGHT_ROWS, "warps_per_block": 1}, id="f64-streamed"
    ),
    pytest.param("float32", "gelu", True, 64, 32, 0, 4, 12, EIGHT_ROWS, id="f32-depth-0-four-trees"),
    pytest.param("float16", "gelu", True, 200, 40, 3, 2, 19, EIGHT_ROWS, id="f16-gelu-vec8"),
    pytest.param("float16", "silu", False, 30, 6, 2, 1, 11, EIGHT_ROWS, id="f16-silu-scalar-loads"),
    pytest.param("float32", "gelu_tanh", True, 8, 8, 3, 1, 136, {**EIGHT_ROWS, "tile_rows": 128}, id="f32-tile-128"),
]


@pytest.mark.parametrize(
    ("dtype", "activation", "bias", "d_in", "d_out", "depth", "trees", "rows", "plan"), TILED_CASES
)
def test_tiled_kernel_gives_the_bits_of_the_warp_per_row_kernel(
    emulators: Emulators,
    dtype: str,
    activation: str,
    bias: bool,
    d_in: int,
    d_out: int,
    depth: int,
    trees: int,
    rows: int,
    plan: dict[str, int],
) -> None:
    # Each logit is the warp-per-row kernel's dot product (the same lanes, products and butterfly,
    # then the bias and the rounding) and each output element its sum over trees, then levels, from
    # 0 in compute_t: with all trees in one launch in both, the bits agree.
    params = FFFParams.random(d_in, d_out, depth, trees, bias=bias, activation=activation, dtype=dtype, seed=rows)
    x = rows_for(params, rows, seed=d_in)
    options = tiled_options(plan, d_in, d_out, depth, trees, dtype)
    tiled, launches = run_tiled(emulators, x, params, **options)
    assert [launch.scalars[4:8] for launch in launches] == [(0, trees, 0, plan["tile_rows"])]
    assert launches[0].geometry.grid == min(-(-rows // plan["tile_rows"]), plan.get("max_blocks", rows))
    logits, nodes, y, _, _ = run_kernels(emulators, x, params, warps_per_block=options["warps_per_block"])
    np.testing.assert_array_equal(tiled.view(np.uint8), y.view(np.uint8))
    check_against_oracle(x, params, logits, nodes, tiled)
    again, _ = run_tiled(emulators, x, params, **options)
    np.testing.assert_array_equal(again.view(np.uint8), tiled.view(np.uint8))  # a fixed sum order: repeatable


def test_tiled_cases_cover_their_variants() -> None:
    """Pins the tiled cases above to the compiled variants and plans they are meant to exercise."""
    configs, shapes = {}, {}
    for case in TILED_CASES:
        dtype, activation, bias, d_in, d_out, depth, trees, _, plan = case.values
        traits = kernel_plan.dtype_traits(dtype)
        options = tiled_options(plan, d_in, d_out, depth, trees, dtype)
        configs[case.id] = kernel_plan.kernel_config(
            dtype=dtype,
            activation=activation,
            has_bias=bias,
            d_in=d_in,
            d_out=d_out,
            in_addresses=(0,),
            out_addresses=(0,),
        )
        threads = options["warps_per_block"] * 32
        sizes = (d_in, d_out, depth + 1, traits.itemsize, traits.compute_itemsize, threads)
        shapes[case.id] = kernel_plan.choose_tile(*sizes, options["shared_limit"])
    assert {case.values[1] for case in TILED_CASES} == set(ACTIVATIONS)
    assert configs["f32-scalar-5-chunks"].vec_in == 1
    assert shapes["f32-scalar-5-chunks"].out_columns == 64  # 300 columns in 5 chunks
    assert shapes["f32-nobias-4-columns-per-thread"].out_columns == 4 * 64
    assert configs["f64-streamed"].x_chunks == 0
    assert configs["f16-gelu-vec8"].vec_in == 8 and configs["f16-silu-scalar-loads"].vec_in == 1
    assert shapes["f32-tile-128"].rows == kernel_plan.TILE_MAX_ROWS


def test_tiled_tree_groups_accumulate_with_the_bits_of_the_warp_per_row_kernel(emulators: Emulators) -> None:
    params = FFFParams.random(32, 12, 2, 5, dtype="float64", activation="silu", seed=5)
    x = rows_for(params, 19, seed=6)
    # Room for the walks of 2 trees beside the tile: groups of 2, 2 and 1, the last two accumulating.
    options = {"warps_per_block": 2, "shared_limit": limit_for_tile(8, 32, 12, 2, 2, "float64", 2)}
    tiled, launches = run_tiled(emulators, x, params, **options)
    assert [launch.scalars[4:7] for launch in launches] == [(0, 2, 0), (2, 2, 1), (4, 1, 1)]
    # The warp-per-row kernel in the same groups rounds y at the same points.
    limit = kernel_plan.shared_bytes_for(2, 2, 3, 8)
    logits, nodes, y, _, grouped = run_kernels(emulators, x, params, warps_per_block=2, shared_limit=limit)
    assert [launch.scalars[4:7] for launch in grouped] == [(0, 2, 0), (2, 2, 1), (4, 1, 1)]
    np.testing.assert_array_equal(tiled.view(np.uint8), y.view(np.uint8))
    check_against_oracle(x, params, logits, nodes, tiled)


def test_tiled_ties_and_nan_go_left(emulators: Emulators) -> None:
    """Rows of zeros have logit exactly 0 at every level (no bias): they go left all the way, among
    rows that go elsewhere, so runs of a tile split unevenly; a NaN row goes left and gives NaN."""
    params = FFFParams.random(32, 8, 3, 2, bias=False, activation="relu", dtype="float32", seed=27)
    x = rows_for(params, 21, seed=28)
    x[[0, 4, 5, 13, 20]] = 0
    x[9, 7] = np.nan
    options = {"warps_per_block": 2, "shared_limit": limit_for_tile(8, 32, 8, 3, 2, "float32", 2)}
    tiled, _ = run_tiled(emulators, x, params, **options)
    logits, nodes, y, _, _ = run_kernels(emulators, x, params, warps_per_block=2)
    left_path = [0, 1, 3, 7]
    assert np.all(logits[[0, 4, 5, 13, 20]] == 0) and np.all(nodes[[0, 4, 5, 13, 20]] == left_path)
    assert np.all(tiled[[0, 4, 5, 13, 20]] == 0)  # relu(0) = 0 at every level
    assert np.all(nodes[9] == left_path) and np.all(np.isnan(tiled[9]))
    np.testing.assert_array_equal(tiled, y)  # NaN where y has NaN
    finite = [row for row in range(21) if row != 9]
    check_against_oracle(x[finite], params, logits[finite], nodes[finite], tiled[finite])


@pytest.mark.parametrize(
    ("activation", "bias", "d_in", "d_out", "depth", "trees", "rows"),
    [
        pytest.param("gelu", True, 200, 40, 3, 2, 19, id="bf16-gelu-vec8"),
        pytest.param("relu", False, 30, 6, 2, 1, 11, id="bf16-relu-scalar-loads"),
    ],
)
def test_tiled_bfloat16_kernel_gives_the_bits_of_the_warp_per_row_kernel(
    emulators: Emulators, activation: str, bias: bool, d_in: int, d_out: int, depth: int, trees: int, rows: int
) -> None:
    wide = FFFParams.random(d_in, d_out, depth, trees, bias=bias, activation=activation, dtype="float32", seed=d_in)
    bits = {name: bfloat16_bits(getattr(wide, name)) for name in ("w_in", "w_out") + (("b_in",) if bias else ())}
    x_bits = bfloat16_bits(np.random.default_rng(rows).standard_normal((rows, d_in)))
    options = {"warps_per_block": 2, "shared_limit": limit_for_tile(8, d_in, d_out, depth, trees, "bfloat16", 2)}
    b_bits = bits["b_in"] if bias else None
    tiled_bits, launches = emulate_tiled(
        emulators, x_bits, bits["w_in"], b_bits, bits["w_out"], dtype="bfloat16", activation=activation, **options
    )
    assert launches[0].scalars[7] == 8
    # The warp-per-row kernel and cmm on the same words, as the bfloat16 oracle test runs them.
    y_bits = np.full((rows, d_out), 0xFF7F, dtype=np.uint16)
    logit_bits = np.full((rows, trees, depth + 1), 0xFF7F, dtype=np.uint16)
    nodes = poisoned((rows, trees, depth + 1), np.int64)
    config = kernel_plan.kernel_config(
        dtype="bfloat16",
        activation=activation,
        has_bias=bias,
        d_in=d_in,
        d_out=d_out,
        in_addresses=(x_bits.ctypes.data, bits["w_in"].ctypes.data),
        out_addresses=(bits["w_out"].ctypes.data, y_bits.ctypes.data),
        warps_per_block=2,
    )
    library = emulators.library(kernel_plan.compile_options(config))
    b_in = bits["b_in"] if bias else bits["w_in"]
    for launch in kernel_plan.fff_launches(rows, trees, depth, d_in, d_out, 4, warps_per_block=2):
        emulate_launch(library, launch, [_pointer(a) for a in (x_bits, bits["w_in"], b_in, bits["w_out"], y_bits)])
    for launch in kernel_plan.cmm_launches(rows, trees, depth, d_in, warps_per_block=2):
        emulate_launch(library, launch, [_pointer(a) for a in (x_bits, bits["w_in"], b_in, logit_bits, nodes)])
    np.testing.assert_array_equal(tiled_bits, y_bits)
    params = FFFParams(
        bfloat16_values(bits["w_in"]),
        bfloat16_values(bits["b_in"]) if bias else None,
        bfloat16_values(bits["w_out"]),
        activation,
    )
    check_against_oracle(
        bfloat16_values(x_bits),
        params,
        bfloat16_values(logit_bits),
        nodes,
        bfloat16_values(tiled_bits),
        dtype="bfloat16",
        accumulation="float32",
    )


def test_the_emulator_catches_a_tiled_launch_short_of_shared_memory(emulators: Emulators) -> None:
    """The emulator's canary past the block's shared memory: a launch planned 16 bytes short fails."""
    params = FFFParams.random(16, 8, 2, 1, dtype="float32", seed=29)
    x = rows_for(params, 8, seed=30)
    options = {"warps_per_block": 1, "shared_limit": limit_for_tile(8, 16, 8, 2, 1, "float32", 1)}
    (launch,) = kernel_plan.tiled_fff_launches(8, 1, 2, 16, 8, 4, 4, **options)
    short = kernel_plan.KernelLaunch(
        launch.kernel,
        kernel_plan.LaunchGeometry(launch.geometry.grid, launch.geometry.block, launch.geometry.shared_bytes - 16),
        launch.scalars,
    )
    y = poisoned((8, 8), np.float32)
    config = kernel_plan.kernel_config(
        dtype="float32",
        activation="gelu",
        has_bias=True,
        d_in=16,
        d_out=8,
        in_addresses=(x.ctypes.data, params.w_in.ctypes.data),
        out_addresses=(params.w_out.ctypes.data, y.ctypes.data),
        warps_per_block=1,
    )
    library = emulators.library(kernel_plan.compile_options(config))
    pointers = [_pointer(a) for a in (x, params.w_in, params.b_in, params.w_out, y)]
    with pytest.raises(AssertionError, match="wrote past the end of its dynamic shared memory"):
        emulate_launch(library, short, pointers)
    emulate_launch(library, launch, pointers)  # the planned size is enough
    logits, nodes = ReferenceBackend().cmm(x, params)
    check_against_oracle(x, params, logits, nodes, y)


# --- backend level, through a numpy-backed stand-in for cupy ---------------------------------------


class FakeDeviceArray(np.ndarray):
    """A "device" array: numpy memory that fffcore's array_type() sees as cupy."""

    @property
    def data(self) -> Any:  # type: ignore[override]  # cupy's .data is a MemoryPointer with .ptr
        return types.SimpleNamespace(ptr=self.ctypes.data)

    @property
    def device(self) -> Any:
        return types.SimpleNamespace(id=0)

    def get(self) -> np.ndarray:
        return np.array(self, copy=True).view(np.ndarray)


FakeDeviceArray.__module__ = "cupy"


class FakeDevice:
    def __init__(self, device_id: int = 0) -> None:
        assert device_id == 0, "the stand-in has one device"
        self.id = device_id

    def __enter__(self) -> FakeDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class FakeKernel:
    """A RawKernel stand-in: checks the arguments as CUDA would see them, then runs the emulator."""

    def __init__(self, fake: FakeCupy, options: tuple[str, ...], name: str) -> None:
        self.fake = fake
        self.options = options
        self.name = name
        self._max_dynamic_shared = kernel_plan.SHARED_BYTES_PER_BLOCK  # CUDA's default, without an opt-in

    @property
    def max_dynamic_shared_size_bytes(self) -> int:  # cupy's RawKernel attribute
        return self._max_dynamic_shared

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value: int) -> None:
        assert value <= self.fake.shared_optin, "more dynamic shared memory than the device allows a block"
        self._max_dynamic_shared = value

    def __call__(
        self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...], shared_mem: int = 0
    ) -> None:
        pointer_count, dtypes, _ = KERNEL_SIGNATURES[self.name]
        pointers, scalars = args[:pointer_count], args[pointer_count:]
        assert all(isinstance(a, FakeDeviceArray) for a in pointers), "every pointer argument must be a device array"
        assert all(a.flags.c_contiguous for a in pointers)
        assert [np.asarray(s).dtype.name for s in scalars] == list(dtypes), "scalar arguments at the wrong widths"
        assert all(isinstance(s, np.generic) for s in scalars)
        assert shared_mem <= self._max_dynamic_shared, "a launch over the kernel's dynamic shared-memory limit fails"
        launch = kernel_plan.KernelLaunch(
            self.name,
            kernel_plan.LaunchGeometry(int(grid[0]), int(block[0]), int(shared_mem)),
            tuple(int(s) for s in scalars),
        )
        self.fake.launches.append(launch)
        emulate_launch(self.fake.emulators.library(self.options), launch, [_pointer(a) for a in pointers])


class FakeModule:
    def __init__(self, fake: FakeCupy, code: str, options: tuple[str, ...]) -> None:
        assert code == kernel_plan.kernel_source()
        self.fake = fake
        self.options = tuple(options)

    def get_function(self, name: str) -> FakeKernel:
        assert name in kernel_plan.KERNEL_NAMES
        return FakeKernel(self.fake, self.options, name)


class FakeCupy(types.ModuleType):
    """The parts of cupy the runtime uses, on numpy memory; RawModule runs the emulator."""

    def __init__(self, emulators: Emulators) -> None:
        super().__init__("cupy")
        self.__version__ = "0-fake"
        self.emulators = emulators
        self.launches: list[kernel_plan.KernelLaunch] = []
        self.modules_built = 0
        # What a block may opt into; the tests lower it to see the tile follow the device.
        self.shared_optin = kernel_plan.HOPPER_SHARED_BYTES_OPTIN
        runtime = types.SimpleNamespace(getDeviceProperties=self.device_properties)
        self.cuda = types.SimpleNamespace(Device=FakeDevice, runtime=runtime)

    def device_properties(self, device_id: int) -> dict[str, int]:
        assert device_id == 0, "the stand-in has one device"
        return {"sharedMemPerBlockOptin": self.shared_optin, "sharedMemPerBlock": kernel_plan.SHARED_BYTES_PER_BLOCK}

    def RawModule(self, *, code: str, options: tuple[str, ...]) -> FakeModule:  # cupy's name
        self.modules_built += 1
        return FakeModule(self, code, options)

    def asarray(self, a: Any, dtype: Any = None) -> FakeDeviceArray:
        return np.array(a, dtype=dtype, order="C", copy=True).view(FakeDeviceArray)

    def ascontiguousarray(self, a: Any, dtype: Any = None) -> FakeDeviceArray:
        return np.ascontiguousarray(a, dtype=dtype).view(FakeDeviceArray)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> FakeDeviceArray:
        return poisoned(shape, dtype).view(FakeDeviceArray)

    uint16 = np.uint16
    int16 = np.int16

    def from_dlpack(self, tensor: Any) -> FakeDeviceArray:
        return np.from_dlpack(tensor).view(FakeDeviceArray)

    def argsort(self, a: Any) -> FakeDeviceArray:
        return np.argsort(np.asarray(a), kind="stable").view(FakeDeviceArray)


@pytest.fixture
def fake_cupy(emulators: Emulators, monkeypatch: pytest.MonkeyPatch) -> FakeCupy:
    fake = FakeCupy(emulators)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return fake


def device(fake: FakeCupy, array: np.ndarray) -> FakeDeviceArray:
    return fake.asarray(array)


def test_backend_numpy_in_numpy_out(fake_cupy: FakeCupy) -> None:
    params = FFFParams.random(48, 20, 3, 2, activation="gelu_tanh", dtype="float32", seed=11)
    x = np.random.default_rng(12).standard_normal((9, 48))  # float64 input, converted to float32 by the backend
    before = x.copy()
    backend = CupyBackend()
    y = backend.fff(x, params)
    logits, nodes = backend.cmm(x, params)
    assert type(y) is np.ndarray and type(logits) is np.ndarray and type(nodes) is np.ndarray
    assert y.dtype == np.float32 and logits.dtype == np.float32 and nodes.dtype == np.int64
    assert y.shape == (9, 20) and nodes.shape == (9, 2, 4)
    np.testing.assert_array_equal(x, before)
    check_against_oracle(x.astype(np.float32), params, logits, nodes, y)
    assert [launch.kernel for launch in fake_cupy.launches] == [
        kernel_plan.FFF_KERNEL_NAME,
        kernel_plan.CMM_KERNEL_NAME,
    ]


def test_backend_device_arrays_stay_on_the_device(fake_cupy: FakeCupy) -> None:
    params = FFFParams.random(64, 32, 2, 1, bias=False, activation="relu", dtype="float64", seed=13)
    host = np.random.default_rng(14).standard_normal((30, 128))
    x = device(fake_cupy, host)[:, ::2]  # strided: the backend must copy it to contiguous rows
    assert not x.flags.c_contiguous
    y = CupyBackend().fff(x, params)
    assert isinstance(y, FakeDeviceArray) and y.shape == (30, 32) and y.dtype == np.float64
    logits, nodes = CupyBackend().cmm(x, params)
    assert isinstance(logits, FakeDeviceArray) and isinstance(nodes, FakeDeviceArray)
    check_against_oracle(np.asarray(x), params, logits.get(), nodes.get(), y.get())
    np.testing.assert_array_equal(np.asarray(x), host[:, ::2])


def test_backend_device_params_and_a_compiled_variant_reused(fake_cupy: FakeCupy) -> None:
    host_params = FFFParams.random(32, 16, 2, 1, activation="silu", dtype="float32", seed=15)
    params = FFFParams(host_params.w_in, host_params.b_in, host_params.w_out, "silu")
    # FFFParams keeps real cupy arrays as given but turns numpy subclasses into numpy, so the stand-in's
    # device arrays are put in place after validation, as a real cupy layer would be.
    for name in ("w_in", "b_in", "w_out"):
        object.__setattr__(params, name, device(fake_cupy, getattr(host_params, name)))
    assert params.array_type == "cupy"
    backend = CupyBackend()
    x = device(fake_cupy, rows_for(host_params, 4, seed=16))
    first = backend.fff(x, params).get()
    second = backend.fff(x, params).get()
    assert fake_cupy.modules_built == 1, "the same variant on the same device must compile once"
    np.testing.assert_array_equal(first, second)  # deterministic: no atomics, fixed reduction order
    logits, nodes = backend.cmm(x, params)
    check_against_oracle(np.asarray(x), host_params, logits.get(), nodes.get(), first)


@pytest.mark.parametrize("rows", [0, 1])
def test_backend_batches_of_zero_and_one_rows(fake_cupy: FakeCupy, rows: int) -> None:
    params = FFFParams.random(16, 4, 2, 3, dtype="float32", seed=17)
    x = rows_for(params, rows, seed=18)
    y = CupyBackend().fff(x, params)
    logits, nodes = CupyBackend().cmm(x, params)
    assert y.shape == (rows, 4) and logits.shape == (rows, 3, 3) and nodes.shape == (rows, 3, 3)
    assert len(fake_cupy.launches) == (0 if rows == 0 else 2)
    if rows:
        check_against_oracle(x, params, logits, nodes, y)


def test_the_block_size_knob_reaches_the_launch(fake_cupy: FakeCupy) -> None:
    from fffcore.backends.cupy.runtime import KernelCache, WeightCache, run_fff

    params = FFFParams.random(64, 32, 3, 1, dtype="float32", seed=21)
    x = rows_for(params, 9, seed=22)
    y = run_fff(x, params, KernelCache(), WeightCache(), warps_per_block=4)
    (launch,) = fake_cupy.launches
    assert (launch.geometry.grid, launch.geometry.block) == (3, 128)
    logits, nodes = ReferenceBackend().cmm(x, params)
    check_against_oracle(x, params, logits, nodes, y)


def test_the_row_grouped_variant_runs_through_the_runtime_with_the_same_bits(fake_cupy: FakeCupy) -> None:
    from fffcore.backends.cupy import runtime

    params = FFFParams.random(48, 16, 4, 2, activation="silu", dtype="float32", seed=41)
    x = rows_for(params, 150, seed=42)
    kernels, weights = runtime.KernelCache(), runtime.WeightCache()
    expected = runtime.run_fff(x, params, kernels, weights, variant="warp_per_row")
    assert [launch.kernel for launch in fake_cupy.launches] == [kernel_plan.FFF_KERNEL_NAME]
    fake_cupy.launches.clear()
    grouped = runtime.run_fff(x, params, kernels, weights, variant="row_grouped")
    assert [launch.kernel for launch in fake_cupy.launches] == [
        kernel_plan.TOP_WALK_KERNEL_NAME,
        kernel_plan.SORTED_KERNEL_NAME,
    ]
    assert fake_cupy.modules_built == 1  # every kernel of a variant comes from one compiled module
    np.testing.assert_array_equal(grouped, expected)


def test_the_tiled_variant_runs_through_the_runtime_with_the_same_bits(fake_cupy: FakeCupy) -> None:
    from fffcore.backends.cupy import runtime

    params = FFFParams.random(48, 16, 4, 2, activation="gelu", dtype="float32", seed=45)
    x = rows_for(params, 70, seed=46)
    # A device that lets a block opt into 100000 bytes: tiles of 128 rows would need 131072 for the
    # sums of one column per thread, so the runtime must read the limit and take 64.
    fake_cupy.shared_optin = 100_000
    kernels, weights = runtime.KernelCache(), runtime.WeightCache()
    expected = runtime.run_fff(x, params, kernels, weights, variant="warp_per_row")
    fake_cupy.launches.clear()
    tiled = runtime.run_fff(x, params, kernels, weights, variant="tiled")
    (launch,) = fake_cupy.launches
    assert launch.kernel == kernel_plan.TILED_KERNEL_NAME and launch.scalars[7] == 64
    assert (launch.geometry.grid, launch.geometry.block) == (2, 256)
    assert kernel_plan.SHARED_BYTES_PER_BLOCK < launch.geometry.shared_bytes <= fake_cupy.shared_optin
    assert fake_cupy.modules_built == 1  # every kernel of a variant comes from one compiled module
    np.testing.assert_array_equal(tiled, expected)
    np.testing.assert_array_equal(runtime.run_fff(x, params, kernels, weights, variant="tiled"), tiled)
    assert fake_cupy.launches[-1].geometry.shared_bytes == launch.geometry.shared_bytes


def test_the_tiled_variant_says_when_a_tile_does_not_fit(fake_cupy: FakeCupy) -> None:
    from fffcore.backends.cupy import runtime

    params = FFFParams.random(4096, 8, 2, 1, dtype="float64", seed=47)
    x = rows_for(params, 3, seed=48)
    # 8 rows of 4096 float64 are 262144 bytes, over the 232448 a Hopper block may opt into.
    with pytest.raises(ValueError, match=r"params: the tiled variant needs a tile of at least 8 rows"):
        runtime.run_fff(x, params, runtime.KernelCache(), runtime.WeightCache(), variant="tiled")
    assert fake_cupy.launches == []


def test_the_backend_takes_the_warp_per_row_variant_until_a_crossover_is_measured() -> None:
    from fffcore.backends.cupy import runtime

    assert runtime.GROUPED_MIN_ROWS is None  # no GPU run has measured where grouping starts to pay
    assert runtime.TILED_MIN_ROWS is None  # nor where tiles do
    assert runtime.choose_variant(2**20, 11, None) == "warp_per_row"
    assert runtime.choose_variant(5, 11, "row_grouped") == "row_grouped"
    assert runtime.choose_variant(5, 0, "tiled") == "tiled"
    with pytest.raises(ValueError, match=r"variant: expected one of \('warp_per_row', 'row_grouped', 'tiled'\)"):
        runtime.choose_variant(5, 11, "grouped")


def test_float16_runs_through_the_runtime_without_being_declared(fake_cupy: FakeCupy) -> None:
    from fffcore.backends.cupy.runtime import KernelCache, WeightCache, run_cmm, run_fff

    assert "float16" not in CupyBackend.dtypes  # until a GPU run passes `fff check cupy --dtype float16`
    params = FFFParams.random(64, 24, 3, 2, activation="gelu_tanh", dtype="float16", seed=25)
    x = np.random.default_rng(26).standard_normal((6, 64))  # float64 in, float16 out
    kernels, weights = KernelCache(), WeightCache()
    y = run_fff(x, params, kernels, weights)
    logits, nodes = run_cmm(x, params, kernels, weights)
    assert y.dtype == np.float16 and logits.dtype == np.float16 and nodes.dtype == np.int64
    check_against_oracle(x.astype(np.float16), params, logits, nodes, y)


def test_bfloat16_runs_through_the_runtime_on_raw_16_bit_words_of_torch_tensors(fake_cupy: FakeCupy) -> None:
    torch = pytest.importorskip("torch", reason="bfloat16 layers come as torch tensors")
    from fffcore.backends.cupy import runtime

    wide = FFFParams.random(64, 24, 3, 2, activation="gelu", dtype="float32", seed=43)
    as_bf16 = {name: torch.from_numpy(getattr(wide, name)).to(torch.bfloat16) for name in ("w_in", "b_in", "w_out")}
    params = FFFParams(as_bf16["w_in"], as_bf16["b_in"], as_bf16["w_out"], "gelu")
    x = torch.from_numpy(rows_for(wide, 9, seed=44)).to(torch.bfloat16)
    kernels, weights = runtime.KernelCache(), runtime.WeightCache()
    y = runtime.run_fff(x, params, kernels, weights)
    logits, nodes = runtime.run_cmm(x, params, kernels, weights)
    assert y.dtype is torch.bfloat16 and logits.dtype is torch.bfloat16 and nodes.dtype is torch.int64
    assert y.shape == (9, 24) and logits.shape == nodes.shape == (9, 2, 4)
    exact = FFFParams(*(as_bf16[name].float().numpy() for name in ("w_in", "b_in", "w_out")), "gelu")
    check_against_oracle(
        x.float().numpy(),
        exact,
        logits.float().numpy(),
        nodes.numpy(),
        y.float().numpy(),
        dtype="bfloat16",
        accumulation="float32",
    )
    with pytest.raises(TypeError, match="x: bfloat16 layers take torch bfloat16 tensors, got ndarray"):
        runtime.run_fff(np.zeros((1, 64), np.float32), params, kernels, weights)


def test_backend_rejects_torch_params(fake_cupy: FakeCupy) -> None:
    torch = pytest.importorskip("torch")
    params = FFFParams(torch.zeros(1, 3, 4), None, torch.zeros(1, 3, 2))
    with pytest.raises(TypeError, match="params: the cupy backend takes numpy or cupy parameters, got torch"):
        CupyBackend().fff(np.zeros((2, 4), np.float32), params)


def test_backend_copies_strided_device_params_and_rejects_other_devices(fake_cupy: FakeCupy) -> None:
    host_params = FFFParams.random(32, 16, 2, 1, dtype="float32", seed=19)
    params = FFFParams(host_params.w_in, host_params.b_in, host_params.w_out)
    wide = np.repeat(np.asarray(host_params.w_out), 2, axis=2)  # every column twice: [:, :, ::2] is w_out again
    object.__setattr__(params, "w_in", device(fake_cupy, host_params.w_in))
    object.__setattr__(params, "b_in", device(fake_cupy, host_params.b_in))
    object.__setattr__(params, "w_out", device(fake_cupy, wide)[:, :, ::2])
    assert not params.w_out.flags.c_contiguous
    x = rows_for(host_params, 3, seed=20)
    y = CupyBackend().fff(x, params)
    logits, nodes = ReferenceBackend().cmm(x, host_params)
    check_against_oracle(x, host_params, logits, nodes, y)

    class OtherDeviceArray(FakeDeviceArray):
        @property
        def device(self) -> Any:
            return types.SimpleNamespace(id=1)

    object.__setattr__(params, "w_out", np.asarray(host_params.w_out).view(OtherDeviceArray))
    with pytest.raises(ValueError, match=r"params\.w_out: expected an array on CUDA device 0 like x, got device 1"):
        CupyBackend().fff(x, params)
