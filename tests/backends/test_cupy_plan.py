"""Host-side planning of the cupy backend, on the CPU: geometry, variants, options, and agreement with the source."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fffcore.backends.cupy import kernel_plan
from fffcore.backends.cupy.kernel_plan import (
    KernelConfig,
    LaunchGeometry,
    TreeGroup,
    check_compute_capability,
    choose_tile,
    cmm_launches,
    compile_options,
    dtype_traits,
    fff_launches,
    kernel_config,
    kernel_source,
    plan_cmm_launch,
    plan_fff_launches,
    plan_tiled_launches,
    register_chunks,
    shared_bytes_for,
    tile_shape,
    tiled_fff_launches,
    vector_width,
)
from fffcore.spec import ACTIVATIONS

SOURCE = kernel_source()


def config_for(dtype: str = "float32", d_in: int = 768, d_out: int = 768, **overrides: object) -> KernelConfig:
    arguments: dict = dict(
        dtype=dtype, activation="gelu", has_bias=True, d_in=d_in, d_out=d_out, in_addresses=(256,), out_addresses=(512,)
    )
    arguments.update(overrides)
    return kernel_config(**arguments)


# --- launch geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "grid", "block"),
    [(1, 1, 32), (2, 1, 64), (7, 1, 224), (8, 1, 256), (9, 2, 256), (4096, 512, 256), (16384, 2048, 256)],
)
def test_one_warp_per_row(rows: int, grid: int, block: int) -> None:
    plan = plan_fff_launches(rows, 1, 11, 4)
    assert (plan.geometry.grid, plan.geometry.block) == (grid, block)
    assert plan.geometry.grid * plan.geometry.block >= 32 * rows  # every row has a warp
    assert plan_cmm_launch(rows, 11) == LaunchGeometry(grid, block, 0)


def test_an_empty_batch_launches_nothing() -> None:
    assert plan_fff_launches(0, 3, 4, 4).groups == ()
    assert plan_cmm_launch(0, 4) is None
    assert fff_launches(0, 3, 4, 16, 8, 4) == ()
    assert cmm_launches(0, 3, 4, 16) == ()


def test_the_grid_is_capped_and_rows_are_strided() -> None:
    plan = plan_fff_launches(10_000, 1, 3, 4, max_blocks=7)
    assert plan.geometry.grid == 7  # the kernel's grid-stride loop covers the other rows


def test_shared_memory_holds_every_warps_path() -> None:
    # UltraFastBERT's layer: 8 warps x 12 levels x (4-byte activation + 4-byte node).
    plan = plan_fff_launches(16384, 1, 11, 4)
    assert plan.geometry.shared_bytes == 8 * 12 * 8 == shared_bytes_for(8, 1, 12, 4)
    assert plan.groups == (TreeGroup(0, 1, False),)


def test_all_trees_in_one_launch_when_their_paths_fit() -> None:
    plan = plan_fff_launches(100, 16, 11, 8)
    assert plan.groups == (TreeGroup(0, 16, False),)  # y written once
    assert plan.geometry.shared_bytes == 8 * 16 * 12 * 12 <= kernel_plan.SHARED_BYTES_PER_BLOCK


def test_trees_beyond_shared_memory_are_grouped_and_accumulated() -> None:
    per_tree = shared_bytes_for(8, 1, 12, 4)
    plan = plan_fff_launches(100, 100, 11, 4)
    fit = kernel_plan.SHARED_BYTES_PER_BLOCK // per_tree
    assert plan.groups[0] == TreeGroup(0, fit, False)
    assert all(group.accumulate for group in plan.groups[1:])
    assert sum(group.tree_count for group in plan.groups) == 100
    assert [g.tree_begin for g in plan.groups] == list(range(0, 100, fit))
    assert plan.geometry.shared_bytes <= kernel_plan.SHARED_BYTES_PER_BLOCK


def test_fff_launch_arguments_follow_the_kernel_signature() -> None:
    launches = fff_launches(5, 2, 3, 16, 8, 4)
    assert [launch.scalars for launch in launches] == [(5, 3, 16, 8, 0, 2, 0)]
    assert launches[0].kernel == kernel_plan.FFF_KERNEL_NAME
    (cmm,) = cmm_launches(5, 2, 3, 16)
    assert cmm.scalars == (5, 2, 3, 16) and cmm.kernel == kernel_plan.CMM_KERNEL_NAME


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: plan_fff_launches(-1, 1, 3, 4), "x: expected a batch of rows >= 0, got -1"),
        (lambda: plan_fff_launches(4, 0, 3, 4), "params.trees: expected >= 1, got 0"),
        (lambda: plan_fff_launches(4, 1, 31, 4), "params.depth: the cupy backend supports depth <= 30, got 31"),
        (lambda: plan_cmm_launch(4, 31), "params.depth: the cupy backend supports depth <= 30, got 31"),
        (lambda: plan_fff_launches(4, 1, 30, 8, shared_limit=100), "params.depth: one tree of depth 30 needs"),
    ],
)
def test_impossible_launches_are_rejected_with_the_argument_named(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()  # type: ignore[operator]


def test_the_deepest_supported_tree_still_fits() -> None:
    plan = plan_fff_launches(3, 1, kernel_plan.MAX_DEPTH, 8)
    assert plan.geometry.shared_bytes == 3 * 31 * 12
    assert kernel_plan.MAX_DEPTH + 1 <= kernel_plan.MAX_LEVELS  # the cmm kernel keeps one level per lane


# --- dtype dispatch and variants -------------------------------------------------------------------


def test_dtypes_dispatch_to_their_storage() -> None:
    assert dtype_traits("float32").storage_code == 1 and dtype_traits("float32").itemsize == 4
    assert dtype_traits("float64").storage_code == 2 and dtype_traits("float64").compute_itemsize == 8
    half = dtype_traits("float16")
    assert (half.storage_code, half.itemsize, half.compute_itemsize) == (3, 2, 4)
    brain = dtype_traits("bfloat16")
    assert (brain.storage_code, brain.itemsize, brain.compute_itemsize) == (4, 2, 4)
    for unsupported in ("int32", "float128"):
        with pytest.raises(
            TypeError,
            match=f"params: the cupy kernels compute in float32, float64, float16, bfloat16, got {unsupported}",
        ):
            dtype_traits(unsupported)


def test_the_backend_declares_the_accumulation_the_kernels_do() -> None:
    from fffcore.backends.cupy.plugin import CupyBackend

    for dtype, traits in kernel_plan.DTYPE_TRAITS.items():
        accumulates = CupyBackend.accumulation_dtypes.get(dtype, dtype)
        assert np.dtype(accumulates).itemsize == traits.compute_itemsize, dtype


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_dtypes_are_built_but_not_declared(dtype: str) -> None:
    assert kernel_plan.SUPPORTED_DTYPES == ("float32", "float64")
    config = config_for(dtype)
    assert (config.vec_in, config.x_chunks) == (8, 3)  # 8 halves per 16 bytes; 3 x 8 floats in registers


@pytest.mark.parametrize("warps", [0, 33])
def test_block_sizes_beyond_the_hardware_are_rejected(warps: int) -> None:
    with pytest.raises(ValueError, match=rf"warps_per_block: expected 1 to 32 \(1024 threads\), got {warps}"):
        config_for(warps_per_block=warps)


def test_an_unknown_activation_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"params\.activation: expected one of"):
        config_for(activation="tanh")


@pytest.mark.parametrize(
    ("length", "itemsize", "addresses", "width"),
    [
        (768, 4, (0, 4096), 4),
        (768, 8, (0, 4096), 2),
        (5, 4, (0,), 1),  # 20-byte rows: the second row starts mid-vector
        (6, 8, (0,), 2),  # 48-byte rows are fine
        (768, 4, (4,), 1),  # a misaligned base
        (768, 4, (0, 8), 1),
    ],
)
def test_vector_width(length: int, itemsize: int, addresses: tuple[int, ...], width: int) -> None:
    assert vector_width(length, itemsize, addresses) == width


@pytest.mark.parametrize(
    ("d_in", "vec", "itemsize", "chunks"),
    [
        (768, 4, 4, 6),  # exact up to 8 chunks
        (1024, 4, 4, 8),
        (1025, 4, 4, 16),  # 9 chunks: bucketed to the next power of two
        (768, 2, 8, 16),  # 12 chunks: bucketed, and 16 x 2 doubles = 256 bytes still fit
        (2048, 4, 4, 16),
        (2049, 1, 4, 0),  # 65 chunks of 4 bytes -> 128 chunks, over the budget: streamed
        (4096, 4, 4, 0),
        (1, 4, 4, 1),
    ],
)
def test_x_stays_in_registers_up_to_the_budget(d_in: int, vec: int, itemsize: int, chunks: int) -> None:
    assert register_chunks(d_in, vec, itemsize) == chunks
    if chunks:
        assert chunks * 32 * vec >= d_in
        assert chunks * vec * itemsize <= kernel_plan.X_REGISTER_BYTES_PER_LANE


def test_register_buckets_keep_the_variants_few() -> None:
    buckets = {register_chunks(d_in, 1, 4) for d_in in range(1, 5000)}
    assert buckets == {0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64}


def test_the_benchmark_layer_compiles_to_the_register_variant() -> None:
    config = config_for()
    assert (config.vec_in, config.vec_out, config.x_chunks) == (4, 4, 6)


def test_compile_options_name_every_macro_and_no_fast_math() -> None:
    options = compile_options(config_for("float64", activation="silu", has_bias=False))
    assert options == (
        "-std=c++17",
        "-DFFF_STORAGE=2",
        "-DFFF_ACTIVATION=3",
        "-DFFF_HAS_BIAS=0",
        "-DFFF_VEC_IN=2",
        "-DFFF_VEC_OUT=2",
        "-DFFF_X_CHUNKS=16",
        "-DFFF_WARPS_PER_BLOCK=8",
    )
    assert not any("fast" in option for option in options)


def test_configs_are_cache_keys() -> None:
    assert config_for() == config_for() and hash(config_for()) == hash(config_for())
    variants = {
        config_for(),
        config_for("float64"),
        config_for(activation="relu"),
        config_for(has_bias=False),
        config_for(in_addresses=(4,)),
        config_for(d_in=4096),
    }
    assert len(variants) == 6
    assert len({compile_options(config) for config in variants}) == 6  # one compiled variant per key


# --- agreement with fff_kernels.cu ----------------------------------------------------------------


def test_every_required_macro_is_set_by_the_options() -> None:
    required = set(re.findall(r"#ifndef (FFF_\w+)\n#error", SOURCE))
    set_by_options = {option[2:].split("=")[0] for option in compile_options(config_for()) if option.startswith("-D")}
    assert required == set_by_options


def test_activation_codes_match_the_source() -> None:
    branches = re.findall(r"#(?:el)?if FFF_ACTIVATION == (\d)\n(?:    // (\w+):)?", SOURCE)
    codes = {int(code): name for code, name in branches}
    assert sorted(codes) == list(range(len(ACTIVATIONS)))
    for name, code in kernel_plan.ACTIVATION_CODES.items():
        assert codes[code] in (name, ""), f"FFF_ACTIVATION == {code} is {codes[code]!r} in the source, {name!r} here"
    assert ACTIVATIONS[-1] == "identity" and codes[len(ACTIVATIONS) - 1] == ""  # identity needs no comment


def test_storage_codes_match_the_source() -> None:
    for dtype, scalar in (
        ("float32", "float"),
        ("float64", "double"),
        ("float16", "unsigned short"),
        ("bfloat16", "unsigned short"),
    ):
        code = dtype_traits(dtype).storage_code
        assert re.search(rf"FFF_STORAGE == {code}\ntypedef {scalar} scalar_t;", SOURCE)


def _scalar_parameters(kernel: str) -> list[str]:
    match = re.search(rf"{kernel}\(([^)]*)\)", SOURCE)
    assert match, f"{kernel} not found in the source"
    parameters = [p.strip() for p in match.group(1).split(",")]
    widths = {"long long": "int64", "int": "int32"}
    return [widths[re.sub(r"\s+\w+$", "", p)] for p in parameters if "*" not in p]


def test_scalar_argument_widths_match_the_kernel_signatures() -> None:
    assert _scalar_parameters(kernel_plan.FFF_KERNEL_NAME) == list(kernel_plan.FFF_SCALAR_DTYPES)
    assert _scalar_parameters(kernel_plan.CMM_KERNEL_NAME) == list(kernel_plan.CMM_SCALAR_DTYPES)
    assert _scalar_parameters(kernel_plan.TILED_KERNEL_NAME) == list(kernel_plan.TILED_SCALAR_DTYPES)
    for name in (kernel_plan.FFF_KERNEL_NAME, kernel_plan.CMM_KERNEL_NAME, kernel_plan.TILED_KERNEL_NAME):
        assert re.search(rf'extern "C" __global__ void __launch_bounds__\([^)]*\)\n{name}\(', SOURCE)


def test_the_source_includes_nothing() -> None:
    # NVRTC compiles without include paths; the CUDA math functions it needs are built in.
    assert "#include" not in SOURCE


# --- the rest of the host side ---------------------------------------------------------------------


def test_compute_capability_threshold() -> None:
    assert check_compute_capability(9, 0) == ""
    assert check_compute_capability(7, 0) == ""
    assert check_compute_capability(6, 1) == "compute capability 6.1 is older than the 7.0 the kernels need"


def test_flops_and_bytes_of_the_benchmark_layer() -> None:
    flops, moved = kernel_plan.flops_and_bytes(16384, 1, 11, 768, 768, 4)
    assert flops == 16384 * 12 * 2 * (768 + 768)
    # x and y once, plus every one of the 4095 nodes' w_in row, bias and w_out row once.
    assert moved == 16384 * 1536 * 4 + 4095 * 1537 * 4
    _, one_row = kernel_plan.flops_and_bytes(1, 1, 11, 768, 768, 4)
    assert one_row == 1536 * 4 + 12 * 1537 * 4  # a single row touches only its 12 nodes
    # About 4.8 FLOP per byte, under an H200's float32 balance point (67 TFLOP/s over 4.8 TB/s, about 14):
    # the layer is memory-bound, so the kernel is designed around loads, not arithmetic.
    assert flops / moved < 67e12 / 4.8e12


# --- the tiled variant ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "tile_rows", "trees_per_launch"),
    [("bfloat16", 128, 2), ("float16", 128, 2), ("float32", 64, 5), ("float64", 32, 7)],
)
def test_tiles_of_the_benchmark_layer_on_hopper(dtype: str, tile_rows: int, trees_per_launch: int) -> None:
    traits = dtype_traits(dtype)
    plan = plan_tiled_launches(16384, 16, 11, 768, 768, traits.itemsize, traits.compute_itemsize)
    assert plan.tile.rows == tile_rows
    # x of the tile is 192 KiB in every dtype at width 768; the walks of the trees fill the rest.
    assert plan.tile.tile_bytes == tile_rows * 768 * traits.itemsize == 196608
    assert plan.groups[0] == TreeGroup(0, trees_per_launch, False)
    assert all(group.accumulate for group in plan.groups[1:])
    assert sum(group.tree_count for group in plan.groups) == 16
    assert plan.geometry == LaunchGeometry(16384 // tile_rows, 256, plan.tile.shared_bytes(trees_per_launch))
    assert plan.geometry.shared_bytes <= kernel_plan.HOPPER_SHARED_BYTES_OPTIN == 232448
    assert plan.tile.shared_bytes(trees_per_launch + 1) > kernel_plan.HOPPER_SHARED_BYTES_OPTIN


def test_the_tile_layout_adds_up() -> None:
    # float32, width 768, depth 11, 8 warps, 64 rows: x (64 x 768 x 4), then per tree 12 levels of
    # (4-byte act, 4-byte node, 1-byte row) per row, then 5 int32 of scratch per row.
    shape = tile_shape(64, 768, 768, 12, 4, 4, 256)
    assert (shape.tile_bytes, shape.tree_bytes, shape.scratch_bytes) == (196608, 12 * 64 * 9, 5 * 64 * 4)
    assert shape.shared_bytes(2) == 196608 + 2 * 12 * 64 * 9 + 5 * 64 * 4
    # Three columns per thread cover the 768 outputs in one chunk; the sums (64 x 768 x 4) fill the x tile.
    assert shape.out_columns == 768 and 64 * shape.out_columns * 4 <= shape.tile_bytes


@pytest.mark.parametrize(
    ("d_in", "d_out", "itemsize", "compute_itemsize", "threads", "out_columns", "tile_bytes"),
    [
        (768, 768, 2, 4, 256, 256, 128 * 768 * 2),  # 16-bit x holds the sums of one column per thread
        (8, 8, 4, 4, 64, 64, 128 * 64 * 4),  # narrow x: the tile is sized by the sums instead
        (4096, 4096, 4, 4, 256, 1024, 128 * 4096 * 4),  # four columns per thread at most
        (4096, 300, 4, 4, 256, 512, 128 * 4096 * 4),  # no more than d_out needs
        (5, 12, 8, 8, 32, 32, 128 * 32 * 8 // 16 * 16),
        (3, 1, 4, 4, 32, 32, 128 * 32 * 4),
    ],
)
def test_output_chunks_fit_in_the_x_tile(
    d_in: int, d_out: int, itemsize: int, compute_itemsize: int, threads: int, out_columns: int, tile_bytes: int
) -> None:
    shape = tile_shape(128, d_in, d_out, 4, itemsize, compute_itemsize, threads)
    assert (shape.out_columns, shape.tile_bytes) == (out_columns, tile_bytes)
    assert shape.out_columns % threads == 0
    assert shape.out_columns <= kernel_plan.TILE_COLUMN_GROUPS * threads
    assert 128 * shape.out_columns * compute_itemsize <= shape.tile_bytes
    assert 128 * d_in * itemsize <= shape.tile_bytes and shape.tile_bytes % 16 == 0


def test_the_tile_halves_until_it_fits_and_stops_at_8_rows() -> None:
    # float32 at width 4096: x of 8 rows is 128 KiB; 16 rows would be 256 KiB.
    plan = plan_tiled_launches(100, 1, 11, 4096, 4096, 4, 4)
    assert plan.tile.rows == 8 and plan.geometry.grid == 13
    assert choose_tile(768, 768, 12, 4, 4, 256, 100_000).rows == 16  # a device with less to opt into
    message = (
        "params: the tiled variant needs a tile of at least 8 rows in shared memory; 8 rows of x "
        "(d_in 4096, 8-byte elements) and the walk of one tree of 12 levels need"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        plan_tiled_launches(100, 1, 11, 4096, 4096, 8, 8)


def test_tiled_launches_cover_every_row_and_follow_the_kernel_signature() -> None:
    launches = tiled_fff_launches(200, 3, 4, 96, 64, 4, 4, warps_per_block=2, shared_limit=20_000)
    (launch,) = launches
    assert launch.kernel == kernel_plan.TILED_KERNEL_NAME
    tile_rows, out_columns = launch.scalars[7:]
    assert launch.scalars == (200, 4, 96, 64, 0, 3, 0, tile_rows, out_columns)
    assert tile_rows == 32 and launch.geometry.grid * tile_rows >= 200
    assert launch.geometry.block == 64 and out_columns == 64
    assert len(launch.scalars) == len(kernel_plan.TILED_SCALAR_DTYPES)
    # The grid is capped; the kernel strides over the other tiles.
    (capped,) = tiled_fff_launches(200, 3, 4, 96, 64, 4, 4, warps_per_block=2, shared_limit=20_000, max_blocks=3)
    assert capped.geometry.grid == 3
    assert tiled_fff_launches(0, 3, 4, 96, 64, 4, 4) == ()


def test_tiled_tree_groups_when_the_walks_do_not_fit_together() -> None:
    one = tile_shape(8, 32, 12, 3, 8, 8, 64)
    plan = plan_tiled_launches(19, 5, 2, 32, 12, 8, 8, warps_per_block=2, shared_limit=one.shared_bytes(2))
    assert plan.tile.rows == 8
    assert plan.groups == (TreeGroup(0, 2, False), TreeGroup(2, 2, True), TreeGroup(4, 1, True))
    assert plan.geometry.shared_bytes == one.shared_bytes(2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: plan_tiled_launches(-1, 1, 3, 8, 8, 4, 4), "x: expected a batch of rows >= 0, got -1"),
        (lambda: plan_tiled_launches(4, 0, 3, 8, 8, 4, 4), "params.trees: expected >= 1, got 0"),
        (lambda: plan_tiled_launches(4, 1, 31, 8, 8, 4, 4), "params.depth: the cupy backend supports depth <= 30"),
        (
            lambda: plan_tiled_launches(4, 1, 3, 8, 8, 4, 4, warps_per_block=33),
            "warps_per_block: expected 1 to 32 (1024 threads), got 33",
        ),
    ],
)
def test_impossible_tiled_launches_are_rejected_with_the_argument_named(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()  # type: ignore[operator]


def test_tile_constants_match_the_source() -> None:
    assert re.search(rf"#define FFF_TILE_MAX_ROWS {kernel_plan.TILE_MAX_ROWS}\n", SOURCE)
    assert re.search(rf"#define FFF_TILE_COLUMN_GROUPS {kernel_plan.TILE_COLUMN_GROUPS}\n", SOURCE)
    # Positions and rows of a tile are stored as bytes.
    assert kernel_plan.TILE_MAX_ROWS <= 256 and kernel_plan.TILE_MIN_ROWS <= kernel_plan.TILE_MAX_ROWS
    assert kernel_plan.HOPPER_SHARED_BYTES_OPTIN == 227 * 1024
