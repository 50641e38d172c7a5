"""Host-side planning of the CUDA kernels, with no cupy import: testable on any CPU.

Everything the cupy backend decides before a launch lives here, as plain
functions of shapes, dtypes and pointer addresses:

* :func:`kernel_config`: the compile-time variant (dtype, activation, bias,
  vector widths, how much of ``x`` each lane keeps in registers). One variant
  is compiled per distinct config; the config is the cache key.
* :func:`compile_options`: the ``-D`` macros and flags that turn
  ``fff_kernels.cu`` into that variant, identical for NVRTC and nvcc.
* :func:`plan_fff_launches` / :func:`plan_cmm_launch`: grid, block and
  dynamic shared memory for any batch, including 0 (no launch) and 1, and the
  tree groups of the fused ``fff`` kernel.
* :func:`grouped_fff_launches` and :func:`tiled_fff_launches`: the same for
  the row-grouped and the tiled variants of ``fff``.

The kernel itself is described in ``fff_kernels.cu``; this module mirrors
its constants (:data:`THREADS_PER_WARP`, the activation codes, the shared
memory layout) and is tested against it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

from fffcore.spec import ACTIVATIONS

#: The source file of every kernel, shipped as package data of ``fffcore.backends.cupy``.
KERNEL_SOURCE_FILE = "fff_kernels.cu"
#: Kernel entry points (``extern "C"``, so their names are not mangled).
FFF_KERNEL_NAME = "fff_forward"
CMM_KERNEL_NAME = "fff_conditional_matmul"
#: The row-grouped variant's two kernels: the top levels of every row, then the rest in sorted order.
TOP_WALK_KERNEL_NAME = "fff_top_walk"
SORTED_KERNEL_NAME = "fff_forward_sorted"
#: The tiled variant's kernel: a block walks a tile of rows level by level, x in shared memory.
TILED_KERNEL_NAME = "fff_forward_tiled"
#: Every kernel of the source.
KERNEL_NAMES = (FFF_KERNEL_NAME, CMM_KERNEL_NAME, TOP_WALK_KERNEL_NAME, SORTED_KERNEL_NAME, TILED_KERNEL_NAME)
#: Rows per subtree the row-grouped variant aims at when it chooses how many top levels to walk
#: before sorting (about two blocks of warps, so neighbouring warps share their deep nodes).
GROUPED_ROWS_PER_SUBTREE = 64

THREADS_PER_WARP = 32
#: One load or store instruction moves this many bytes per lane when the data allows it.
VECTOR_BYTES = 16
#: Warps in a block when there are enough rows: 256 threads, enough to hide
#: memory latency with several resident blocks per multiprocessor.
WARPS_PER_BLOCK = 8
#: A block has at most 1024 threads.
MAX_WARPS_PER_BLOCK = 32
#: The kernel keeps ``x`` in registers when each lane's share is at most this
#: many bytes (in the compute dtype): 256 bytes is 64 float32 registers, which
#: with the output accumulators and addresses stays well under the 255-register
#: limit; larger rows are read from memory at every level instead.
X_REGISTER_BYTES_PER_LANE = 256
#: Dynamic shared memory every CUDA device grants a block without an opt-in.
SHARED_BYTES_PER_BLOCK = 48 * 1024
#: Dynamic shared memory a block may opt into on Hopper (sm_90; ``sharedMemPerBlockOptin``, 227 KiB):
#: the tiled plan's limit when it is not told the device's own.
HOPPER_SHARED_BYTES_OPTIN = 227 * 1024
#: Rows of a tile at most: the tiled kernel stores positions and rows of a tile in one byte each
#: (``FFF_TILE_MAX_ROWS``), and 128 rows already share each top-level fetch 128 ways.
TILE_MAX_ROWS = 128
#: Rows of a tile at least: with fewer, a tile shares too little to pay for its level-by-level walk,
#: and the tiled variant is unavailable for the layer.
TILE_MIN_ROWS = 8
#: Output columns one thread of the tiled kernel sums per chunk, at most, in units of the block's
#: threads (``FFF_TILE_COLUMN_GROUPS``): each keeps its w_out value in a register.
TILE_COLUMN_GROUPS = 4
#: Grid size cap; the kernels loop over rows with a grid-sized stride, so any
#: cap is correct. 2**31 - 1 is the hardware limit of gridDim.x.
MAX_BLOCKS = 2**31 - 1
#: Each lane of the cmm kernel keeps one level of the path, so a path has at most 32 levels.
MAX_LEVELS = THREADS_PER_WARP
#: Node indices are int32 in the kernel: depth 30 has 2**31 - 1 nodes, the most that fits.
MAX_DEPTH = 30
#: Compute capability the kernels are written and compile-tested for: warp-synchronous
#: code with ``__syncwarp`` and ``*_sync`` shuffles under independent thread scheduling (Volta on).
#: The compile test covers sm_75 and sm_90 only: CUDA 13's nvcc has dropped sm_70, which the
#: CUDA 12 NVRTC that cupy-cuda12x ships still builds.
MIN_COMPUTE_CAPABILITY = (7, 0)

#: Activation codes, the ``FFF_ACTIVATION`` macro of the kernel source.
ACTIVATION_CODES: dict[str, int] = {name: code for code, name in enumerate(ACTIVATIONS)}


@dataclass(frozen=True)
class DtypeTraits:
    """How one params dtype is stored and computed in the kernel.

    Attributes:
        name: numpy dtype name of the parameters, ``x`` and the results.
        storage_code: the ``FFF_STORAGE`` macro.
        itemsize: bytes per stored element.
        compute_itemsize: bytes per element of the arithmetic type (the same
            as the storage for float32 and float64, as the spec asks; float32
            for float16).
    """

    name: str
    storage_code: int
    itemsize: int
    compute_itemsize: int


#: The dtypes the kernel source is built for. float16 and bfloat16 are stored in
#: 2 bytes and computed in float32 (each logit rounded to the 16-bit dtype before
#: its branch); they are compiled and emulated but not declared by the backend
#: until a GPU run passes the conformance suite with them (see docs/cupy.md).
DTYPE_TRAITS: dict[str, DtypeTraits] = {
    "float32": DtypeTraits("float32", 1, 4, 4),
    "float64": DtypeTraits("float64", 2, 8, 8),
    "float16": DtypeTraits("float16", 3, 2, 4),
    "bfloat16": DtypeTraits("bfloat16", 4, 2, 4),
}
KERNEL_DTYPES: tuple[str, ...] = tuple(DTYPE_TRAITS)
#: The dtypes the backend declares.
SUPPORTED_DTYPES: tuple[str, ...] = ("float32", "float64")


@dataclass(frozen=True)
class KernelConfig:
    """One compiled variant of ``fff_kernels.cu``; also its cache key (with the device).

    Attributes:
        dtype: params dtype name (``"float32"``, ``"float64"``, ``"float16"``).
        activation: activation name of the spec.
        has_bias: whether ``b_in`` is read.
        vec_in: elements per load of ``x`` and ``w_in`` rows (16 bytes' worth, or 1).
        vec_out: elements per load of ``w_out`` rows and store of ``y`` (16 bytes' worth, or 1).
        x_chunks: chunks of ``32 * vec_in`` elements of ``x`` each warp keeps in
            registers; 0 means ``x`` is re-read from memory at every level.
        warps_per_block: warps per block, a ``__launch_bounds__`` of the variant.
    """

    dtype: str
    activation: str
    has_bias: bool
    vec_in: int
    vec_out: int
    x_chunks: int
    warps_per_block: int = WARPS_PER_BLOCK


@dataclass(frozen=True)
class LaunchGeometry:
    """One kernel launch: ``grid`` blocks of ``block`` threads with ``shared_bytes`` of dynamic shared memory."""

    grid: int
    block: int
    shared_bytes: int


@dataclass(frozen=True)
class TreeGroup:
    """Trees ``[tree_begin, tree_begin + tree_count)`` summed by one fused launch.

    ``accumulate`` is False for the first group, whose launch writes ``y``;
    later groups (only when the paths of all trees do not fit in shared
    memory together) add to it.
    """

    tree_begin: int
    tree_count: int
    accumulate: bool


@dataclass(frozen=True)
class FFFLaunchPlan:
    """The fused ``fff`` launches of one call: one geometry, one launch per tree group."""

    geometry: LaunchGeometry
    groups: tuple[TreeGroup, ...]


def dtype_traits(dtype: str) -> DtypeTraits:
    """The traits of a params dtype; TypeError naming the supported ones otherwise."""
    traits = DTYPE_TRAITS.get(dtype)
    if traits is None:
        raise TypeError(f"params: the cupy kernels compute in {', '.join(KERNEL_DTYPES)}, got {dtype}")
    return traits


def vector_width(length: int, itemsize: int, addresses: tuple[int, ...]) -> int:
    """Elements per vector access of rows of ``length`` elements at the given base addresses.

    A 16-byte access needs every row start 16-byte aligned: the row length in
    bytes and every base address must be multiples of 16. Otherwise the
    kernel falls back to one element per access (correct, slower).
    """
    return _vector_width(length, itemsize, _aligned(addresses))


def _aligned(addresses: tuple[int, ...]) -> bool:
    return all(address % VECTOR_BYTES == 0 for address in addresses)


def _vector_width(length: int, itemsize: int, aligned: bool) -> int:
    if aligned and (length * itemsize) % VECTOR_BYTES == 0:
        return VECTOR_BYTES // itemsize
    return 1


def register_chunks(d_in: int, vec_in: int, compute_itemsize: int) -> int:
    """Chunks of ``32 * vec_in`` elements of ``x`` kept in registers; 0 when they would not fit.

    The count is part of the compiled variant, so it is bucketed to keep the
    number of variants small: exact up to 8 chunks (the common widths, where
    every register counts), then the next power of two. Chunks past ``d_in``
    are masked off in the kernel, so a larger bucket is always correct.
    """
    chunks = -(-d_in // (THREADS_PER_WARP * vec_in))
    if chunks > 8:
        chunks = 1 << (chunks - 1).bit_length()
    if chunks * vec_in * compute_itemsize > X_REGISTER_BYTES_PER_LANE:
        return 0
    return chunks


def check_depth(depth: int) -> None:
    """ValueError when a tree is deeper than the kernel's int32 node indices allow."""
    if depth > MAX_DEPTH:
        raise ValueError(f"params.depth: the cupy backend supports depth <= {MAX_DEPTH}, got {depth}")


def kernel_config(
    *,
    dtype: str,
    activation: str,
    has_bias: bool,
    d_in: int,
    d_out: int,
    in_addresses: tuple[int, ...],
    out_addresses: tuple[int, ...],
    warps_per_block: int = WARPS_PER_BLOCK,
) -> KernelConfig:
    """The kernel variant for one call.

    Args:
        dtype: params dtype name.
        activation: activation name.
        has_bias: whether the layer has ``b_in``.
        d_in, d_out: row lengths of ``x``/``w_in`` and ``w_out``/``y``.
        in_addresses: device addresses of ``x`` and ``w_in`` (the rows read with ``vec_in``).
        out_addresses: device addresses of ``w_out`` and ``y`` (the rows read or written with ``vec_out``).
        warps_per_block: warps per block of the launch.
    """
    return _kernel_config(
        dtype, activation, has_bias, d_in, d_out, _aligned(in_addresses), _aligned(out_addresses), warps_per_block
    )


# Cached: the backend asks once per call, and only the alignment of the addresses matters.
@functools.lru_cache(maxsize=1024)
def _kernel_config(
    dtype: str,
    activation: str,
    has_bias: bool,
    d_in: int,
    d_out: int,
    in_aligned: bool,
    out_aligned: bool,
    warps_per_block: int,
) -> KernelConfig:
    traits = dtype_traits(dtype)
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"params.activation: expected one of {ACTIVATIONS}, got {activation!r}")
    if not 1 <= warps_per_block <= MAX_WARPS_PER_BLOCK:
        raise ValueError(f"warps_per_block: expected 1 to {MAX_WARPS_PER_BLOCK} (1024 threads), got {warps_per_block}")
    vec_in = _vector_width(d_in, traits.itemsize, in_aligned)
    vec_out = _vector_width(d_out, traits.itemsize, out_aligned)
    return KernelConfig(
        dtype=dtype,
        activation=activation,
        has_bias=has_bias,
        vec_in=vec_in,
        vec_out=vec_out,
        x_chunks=register_chunks(d_in, vec_in, traits.compute_itemsize),
        warps_per_block=warps_per_block,
    )


def compile_options(config: KernelConfig) -> tuple[str, ...]:
    """Options that compile ``fff_kernels.cu`` into ``config``'s variant, for NVRTC and nvcc alike.

    No fast-math: ``erfc``, ``tanh`` and ``exp`` must keep their accuracy, and
    NaN and infinities their IEEE meaning (NaN logits go left, act(-inf) is a limit).
    """
    traits = dtype_traits(config.dtype)
    return (
        "-std=c++17",
        f"-DFFF_STORAGE={traits.storage_code}",
        f"-DFFF_ACTIVATION={ACTIVATION_CODES[config.activation]}",
        f"-DFFF_HAS_BIAS={int(config.has_bias)}",
        f"-DFFF_VEC_IN={config.vec_in}",
        f"-DFFF_VEC_OUT={config.vec_out}",
        f"-DFFF_X_CHUNKS={config.x_chunks}",
        f"-DFFF_WARPS_PER_BLOCK={config.warps_per_block}",
    )


@functools.lru_cache(maxsize=1)
def kernel_source() -> str:
    """The CUDA C source of every kernel, read once from the package data."""
    return resources.files(__package__).joinpath(KERNEL_SOURCE_FILE).read_text(encoding="utf-8")


def warps_for_rows(rows: int, warps_per_block: int = WARPS_PER_BLOCK) -> int:
    """Warps per block: ``warps_per_block``, or fewer when there are fewer rows (one warp per row)."""
    return max(1, min(warps_per_block, rows))


def path_entry_bytes(compute_itemsize: int) -> int:
    """Shared memory per visited node of one warp: the activated logit plus an int32 node index."""
    return compute_itemsize + 4


def shared_bytes_for(warps: int, tree_count: int, levels: int, compute_itemsize: int) -> int:
    """Dynamic shared memory of an ``fff`` launch: every warp's path through ``tree_count`` trees.

    Layout, as the kernel reads it: all warps' activated logits first
    (``warps * tree_count * levels`` compute elements, so 8-byte aligned for
    float64), then all warps' int32 nodes.
    """
    return warps * tree_count * levels * path_entry_bytes(compute_itemsize)


def trees_per_launch(warps: int, levels: int, compute_itemsize: int, shared_limit: int = SHARED_BYTES_PER_BLOCK) -> int:
    """The most trees whose paths fit in ``shared_limit`` bytes for a block of ``warps`` warps."""
    per_tree = shared_bytes_for(warps, 1, levels, compute_itemsize)
    return max(1, shared_limit // per_tree)


def _grid_for(rows: int, warps: int, max_blocks: int) -> int:
    return min(-(-rows // warps), max_blocks)


def plan_fff_launches(
    rows: int,
    trees: int,
    depth: int,
    compute_itemsize: int,
    *,
    warps_per_block: int = WARPS_PER_BLOCK,
    shared_limit: int = SHARED_BYTES_PER_BLOCK,
    max_blocks: int = MAX_BLOCKS,
) -> FFFLaunchPlan:
    """Launches of the fused ``fff`` kernel for ``rows`` rows (one warp per row).

    Rows = 0 gives no groups (nothing to launch; the caller returns an empty
    result). All trees go into one launch when their paths fit in shared
    memory, so ``y`` is written once; otherwise trees are split into groups
    and every group after the first accumulates into ``y``.
    """
    _check_counts(rows=rows, trees=trees)
    check_depth(depth)
    levels = depth + 1
    warps = warps_for_rows(rows, warps_per_block)
    per_launch = min(trees, trees_per_launch(warps, levels, compute_itemsize, shared_limit))
    if shared_bytes_for(warps, per_launch, levels, compute_itemsize) > shared_limit:
        raise ValueError(
            f"params.depth: one tree of depth {depth} needs "
            f"{shared_bytes_for(warps, 1, levels, compute_itemsize)} bytes of shared memory per block, "
            f"more than the {shared_limit} available"
        )
    geometry = LaunchGeometry(
        grid=_grid_for(rows, warps, max_blocks) if rows else 0,
        block=warps * THREADS_PER_WARP,
        shared_bytes=shared_bytes_for(warps, per_launch, levels, compute_itemsize),
    )
    if rows == 0:
        return FFFLaunchPlan(geometry, ())
    groups = tuple(TreeGroup(begin, min(per_launch, trees - begin), begin > 0) for begin in range(0, trees, per_launch))
    return FFFLaunchPlan(geometry, groups)


def plan_cmm_launch(
    rows: int,
    depth: int,
    *,
    warps_per_block: int = WARPS_PER_BLOCK,
    max_blocks: int = MAX_BLOCKS,
) -> LaunchGeometry | None:
    """The one ``cmm`` launch for ``rows`` rows (one warp per row, every tree); None when rows = 0."""
    _check_counts(rows=rows, trees=1)
    check_depth(depth)
    if rows == 0:
        return None
    warps = warps_for_rows(rows, warps_per_block)
    return LaunchGeometry(grid=_grid_for(rows, warps, max_blocks), block=warps * THREADS_PER_WARP, shared_bytes=0)


def _check_counts(*, rows: int, trees: int) -> None:
    if rows < 0:
        raise ValueError(f"x: expected a batch of rows >= 0, got {rows}")
    if trees < 1:
        raise ValueError(f"params.trees: expected >= 1, got {trees}")


#: numpy dtypes of the scalar arguments of each kernel, after its pointer arguments.
FFF_SCALAR_DTYPES: tuple[str, ...] = ("int64", "int32", "int32", "int32", "int32", "int32", "int32")
CMM_SCALAR_DTYPES: tuple[str, ...] = ("int64", "int32", "int32", "int32")


@dataclass(frozen=True)
class KernelLaunch:
    """One launch: which kernel, its geometry, and its scalar arguments (typed by ``*_SCALAR_DTYPES``).

    The pointer arguments come first and are the caller's: for ``fff_forward``
    ``x, w_in, b_in, w_out, y`` then ``rows, depth, d_in, d_out, tree_begin,
    tree_count, accumulate``; for ``fff_conditional_matmul`` ``x, w_in, b_in,
    logits, path`` then ``rows, trees, depth, d_in``. Without a bias, any valid
    pointer stands in for ``b_in``: the variant never reads it.
    """

    kernel: str
    geometry: LaunchGeometry
    scalars: tuple[int, ...]


# Cached, like the other per-call plans: every argument is an int, and plans are immutable.
@functools.lru_cache(maxsize=1024)
def fff_launches(
    rows: int,
    trees: int,
    depth: int,
    d_in: int,
    d_out: int,
    compute_itemsize: int,
    *,
    warps_per_block: int = WARPS_PER_BLOCK,
    shared_limit: int = SHARED_BYTES_PER_BLOCK,
    max_blocks: int = MAX_BLOCKS,
) -> tuple[KernelLaunch, ...]:
    """Every launch of one fused ``fff`` call, in order; empty when ``rows`` is 0."""
    plan = plan_fff_launches(
        rows,
        trees,
        depth,
        compute_itemsize,
        warps_per_block=warps_per_block,
        shared_limit=shared_limit,
        max_blocks=max_blocks,
    )
    return tuple(
        KernelLaunch(
            FFF_KERNEL_NAME,
            plan.geometry,
            (rows, depth, d_in, d_out, group.tree_begin, group.tree_count, int(group.accumulate)),
        )
        for group in plan.groups
    )


@functools.lru_cache(maxsize=1024)
def cmm_launches(
    rows: int,
    trees: int,
    depth: int,
    d_in: int,
    *,
    warps_per_block: int = WARPS_PER_BLOCK,
    max_blocks: int = MAX_BLOCKS,
) -> tuple[KernelLaunch, ...]:
    """The launches of one ``cmm`` call: one, or none when ``rows`` is 0."""
    _check_counts(rows=rows, trees=trees)
    geometry = plan_cmm_launch(rows, depth, warps_per_block=warps_per_block, max_blocks=max_blocks)
    if geometry is None:
        return ()
    return (KernelLaunch(CMM_KERNEL_NAME, geometry, (rows, trees, depth, d_in)),)


#: numpy dtypes of the scalar arguments of the row-grouped kernels, after their pointer arguments.
TOP_WALK_SCALAR_DTYPES: tuple[str, ...] = ("int64", "int32", "int32", "int32", "int32", "int32")
SORTED_SCALAR_DTYPES: tuple[str, ...] = ("int64", "int32", "int32", "int32", "int32", "int32", "int32", "int32")


@dataclass(frozen=True)
class GroupedStep:
    """One tree group of the row-grouped ``fff``: the top-levels launch, a sort, the sorted launch.

    Pointer arguments, the caller's: ``top_walk`` takes ``x, w_in, b_in, top_acts, top_path,
    keys`` then ``rows, depth, d_in, tree_begin, tree_count, top_levels``; ``sorted`` takes
    ``x, w_in, b_in, w_out, y, order, top_acts, top_path`` then ``rows, depth, d_in, d_out,
    tree_begin, tree_count, accumulate, top_levels``. Between them the caller sets ``order``
    (int64 row indices) to the rows sorted by ``keys``. Scratch per row: ``top_acts`` holds
    ``tree_count * top_levels`` compute elements, ``top_path`` ``tree_count * (top_levels + 1)``
    int32, ``keys`` one int32.
    """

    top_walk: KernelLaunch
    sorted: KernelLaunch
    top_levels: int
    tree_count: int


def grouped_top_levels(rows: int, depth: int) -> int:
    """Levels walked before the sort: about log2(rows / GROUPED_ROWS_PER_SUBTREE), from 1 to ``depth``."""
    wanted = max(1, (max(rows, 1) // GROUPED_ROWS_PER_SUBTREE).bit_length() - 1)
    return max(1, min(depth, wanted))


@functools.lru_cache(maxsize=1024)
def grouped_fff_launches(
    rows: int,
    trees: int,
    depth: int,
    d_in: int,
    d_out: int,
    compute_itemsize: int,
    *,
    warps_per_block: int = WARPS_PER_BLOCK,
    shared_limit: int = SHARED_BYTES_PER_BLOCK,
    max_blocks: int = MAX_BLOCKS,
) -> tuple[GroupedStep, ...]:
    """The row-grouped ``fff`` of one call, one step per tree group; empty when ``rows`` is 0.

    Needs depth >= 1 (with one level there is nothing to walk after the sort): ValueError otherwise.
    The groups, geometry and shared memory of the sorted launch are those of :func:`fff_launches`.
    """
    if depth < 1:
        raise ValueError(f"params.depth: the row-grouped kernels need depth >= 1, got {depth}")
    plan = plan_fff_launches(
        rows,
        trees,
        depth,
        compute_itemsize,
        warps_per_block=warps_per_block,
        shared_limit=shared_limit,
        max_blocks=max_blocks,
    )
    top_levels = grouped_top_levels(rows, depth)
    top_geometry = LaunchGeometry(plan.geometry.grid, plan.geometry.block, 0)
    return tuple(
        GroupedStep(
            KernelLaunch(
                TOP_WALK_KERNEL_NAME,
                top_geometry,
                (rows, depth, d_in, group.tree_begin, group.tree_count, top_levels),
            ),
            KernelLaunch(
                SORTED_KERNEL_NAME,
                plan.geometry,
                (rows, depth, d_in, d_out, group.tree_begin, group.tree_count, int(group.accumulate), top_levels),
            ),
            top_levels,
            group.tree_count,
        )
        for group in plan.groups
    )


#: numpy dtypes of the tiled kernel's scalar arguments, after its pointer arguments.
TILED_SCALAR_DTYPES: tuple[str, ...] = ("int64", "int32", "int32", "int32", "int32", "int32", "int32", "int32", "int32")
#: Shared memory per position of the tiled kernel's scratch: its child, and its run's first and
#: last position at two consecutive levels (int32 each).
TILE_SCRATCH_INTS_PER_ROW = 5


@dataclass(frozen=True)
class TileShape:
    """The tile of the tiled ``fff`` kernel for one layer and block size, and its shared memory.

    Attributes:
        rows: rows per tile, a power of two from :data:`TILE_MIN_ROWS` to :data:`TILE_MAX_ROWS`.
        out_columns: output columns summed per chunk: a multiple of the block's threads, at
            most :data:`TILE_COLUMN_GROUPS` of them, no more than ``d_out`` needs.
        tile_bytes: the x tile, (rows, d_in) storage elements, whose memory then holds the chunk's
            sums, (rows, out_columns) compute elements; the larger of the two, rounded up to 16 bytes.
        tree_bytes: per tree of a launch: each level's activated logit (compute), node (int32) and
            row (one byte) per position.
        scratch_bytes: the walk's scratch, :data:`TILE_SCRATCH_INTS_PER_ROW` int32 per row.
    """

    rows: int
    out_columns: int
    tile_bytes: int
    tree_bytes: int
    scratch_bytes: int

    def shared_bytes(self, tree_count: int) -> int:
        """Dynamic shared memory of a launch that walks ``tree_count`` trees, laid out as the kernel's
        ``tile_layout`` reads it: tile, activated logits, nodes, scratch, rows."""
        return self.tile_bytes + self.scratch_bytes + tree_count * self.tree_bytes


def tile_shape(
    tile_rows: int, d_in: int, d_out: int, levels: int, itemsize: int, compute_itemsize: int, threads: int
) -> TileShape:
    """The shape and shared memory of a tile of ``tile_rows`` rows for a block of ``threads`` threads."""
    x_bytes = tile_rows * d_in * itemsize
    one_group = tile_rows * threads * compute_itemsize  # the sums of one column per thread
    base = max(x_bytes, one_group)
    # As many columns per thread as the tile's memory holds, up to the registers and d_out's need.
    groups = max(1, min(TILE_COLUMN_GROUPS, -(-d_out // threads), base // one_group))
    return TileShape(
        rows=tile_rows,
        out_columns=groups * threads,
        tile_bytes=-(-base // 16) * 16,
        tree_bytes=levels * tile_rows * (compute_itemsize + 4 + 1),
        scratch_bytes=TILE_SCRATCH_INTS_PER_ROW * tile_rows * 4,
    )


def choose_tile(
    d_in: int, d_out: int, levels: int, itemsize: int, compute_itemsize: int, threads: int, shared_limit: int
) -> TileShape:
    """The tile of the most rows (a power of two up to :data:`TILE_MAX_ROWS`) whose x and one tree's
    walk fit in ``shared_limit`` bytes; ValueError when that is fewer than :data:`TILE_MIN_ROWS` rows."""
    tile_rows = TILE_MAX_ROWS
    while tile_rows >= TILE_MIN_ROWS:
        shape = tile_shape(tile_rows, d_in, d_out, levels, itemsize, compute_itemsize, threads)
        if shape.shared_bytes(1) <= shared_limit:
            return shape
        tile_rows //= 2
    smallest = tile_shape(TILE_MIN_ROWS, d_in, d_out, levels, itemsize, compute_itemsize, threads)
    raise ValueError(
        f"params: the tiled variant needs a tile of at least {TILE_MIN_ROWS} rows in shared memory; "
        f"{TILE_MIN_ROWS} rows of x (d_in {d_in}, {itemsize}-byte elements) and the walk of one tree of "
        f"{levels} levels need {smallest.shared_bytes(1)} bytes, more than the {shared_limit} available"
    )


@dataclass(frozen=True)
class TiledLaunchPlan:
    """The tiled ``fff`` launches of one call: one geometry, one launch per tree group, one tile shape."""

    geometry: LaunchGeometry
    groups: tuple[TreeGroup, ...]
    tile: TileShape


def plan_tiled_launches(
    rows: int,
    trees: int,
    depth: int,
    d_in: int,
    d_out: int,
    itemsize: int,
    compute_itemsize: int,
    *,
    warps_per_block: int = WARPS_PER_BLOCK,
    shared_limit: int = HOPPER_SHARED_BYTES_OPTIN,
    max_blocks: int = MAX_BLOCKS,
) -> TiledLaunchPlan:
    """Launches of the tiled ``fff`` kernel: one block per tile of consecutive rows (tiles strided
    over the grid past ``max_blocks``), always ``warps_per_block`` warps, as many trees per launch as
    their walks fit beside the tile; later groups accumulate into ``y``. Rows = 0 gives no groups.

    ``shared_limit`` is the device's opt-in dynamic shared memory per block; launches above
    :data:`SHARED_BYTES_PER_BLOCK` need the kernel's limit raised to their ``shared_bytes``.
    """
    _check_counts(rows=rows, trees=trees)
    check_depth(depth)
    if not 1 <= warps_per_block <= MAX_WARPS_PER_BLOCK:
        raise ValueError(f"warps_per_block: expected 1 to {MAX_WARPS_PER_BLOCK} (1024 threads), got {warps_per_block}")
    levels = depth + 1
    threads = warps_per_block * THREADS_PER_WARP
    tile = choose_tile(d_in, d_out, levels, itemsize, compute_itemsize, threads, shared_limit)
    room = (shared_limit - tile.shared_bytes(0)) // tile.tree_bytes
    per_launch = min(trees, room)
    tiles = -(-rows // tile.rows)
    geometry = LaunchGeometry(min(tiles, max_blocks), threads, tile.shared_bytes(per_launch))
    groups = tuple(TreeGroup(begin, min(per_launch, trees - begin), begin > 0) for begin in range(0, trees, per_launch))
    return TiledLaunchPlan(geometry, groups if rows else (), tile)


@functools.lru_cache(maxsize=1024)
def tiled_fff_launches(
    rows: int,
    trees: int,
    depth: int,
    d_in: int,
    d_out: int,
    itemsize: int,
    compute_itemsize: int,
    *,
    warps_per_block: int = WARPS_PER_BLOCK,
    shared_limit: int = HOPPER_SHARED_BYTES_OPTIN,
    max_blocks: int = MAX_BLOCKS,
) -> tuple[KernelLaunch, ...]:
    """Every launch of one tiled ``fff`` call, in order; empty when ``rows`` is 0.

    Pointer arguments, the caller's: ``x, w_in, b_in, w_out, y``; then ``rows, depth, d_in, d_out,
    tree_begin, tree_count, accumulate, tile_rows, out_columns``.
    """
    plan = plan_tiled_launches(
        rows,
        trees,
        depth,
        d_in,
        d_out,
        itemsize,
        compute_itemsize,
        warps_per_block=warps_per_block,
        shared_limit=shared_limit,
        max_blocks=max_blocks,
    )
    return tuple(
        KernelLaunch(
            TILED_KERNEL_NAME,
            plan.geometry,
            (
                rows,
                depth,
                d_in,
                d_out,
                group.tree_begin,
                group.tree_count,
                int(group.accumulate),
                plan.tile.rows,
                plan.tile.out_columns,
            ),
        )
        for group in plan.groups
    )


def flops_and_bytes(rows: int, trees: int, depth: int, d_in: int, d_out: int, itemsize: int) -> tuple[int, int]:
    """Floating-point operations and the fewest device-memory bytes of one ``fff`` call.

    Operations: per row, tree and level one dot product (2 d_in) and one
    scaled row added to the output (2 d_out). Bytes: ``x`` read and ``y``
    written once, and every weight row at most once (all of ``w_in``,
    ``b_in``, ``w_out`` or, for small batches, only the visited rows).
    """
    levels = depth + 1
    flops = rows * trees * levels * 2 * (d_in + d_out)
    visited = min(trees * (2**levels - 1), rows * trees * levels)
    weight_bytes = visited * (d_in + d_out + 1) * itemsize
    return flops, rows * (d_in + d_out) * itemsize + weight_bytes


def check_compute_capability(major: int, minor: int) -> str:
    """An empty string when the device is new enough, else why it is not."""
    if (major, minor) < MIN_COMPUTE_CAPABILITY:
        need = ".".join(map(str, MIN_COMPUTE_CAPABILITY))
        return f"compute capability {major}.{minor} is older than the {need} the kernels need"
    return ""
