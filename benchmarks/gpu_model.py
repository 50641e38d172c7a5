"""A performance model of the cupy backend's CUDA kernels: bytes moved and predicted time, computed, not measured.

For one call of an FFF layer on ``B`` rows, each kernel variant of ``backends/cupy/fff_kernels.cu``
is described by its *phases* (a kernel, or the device sort between the row-grouped kernels): the
bytes it moves through HBM and through L2, and how many kernels it launches. A phase takes

    max(HBM bytes / HBM bandwidth, L2 bytes / L2 bandwidth) + launches * LAUNCH_SECONDS

and a call the sum over its phases. The *floor* is the least any kernel must move (``x`` read and
``y`` written once, each weight row the batch visits read once) at HBM bandwidth, with no launch
cost; the *share of the floor* is floor / predicted time, at most 1.

Assumptions (each a constant below, with where it comes from):

* Rows branch left and right with equal probability, independently: a batch of ``B`` rows visits
  ``m (1 - (1 - 1/m)^B)`` of the ``m = 2^l`` nodes of level ``l`` (:func:`expected_distinct`).
  Trained trees are less balanced, which concentrates rows on fewer nodes.
* Everything a kernel reads or writes passes through L2. In row order (the warp-per-row kernel,
  cmm and the top walk) each warp fetches every weight row its row visits; the model credits no
  sharing between rows (an upper bound: the top levels, visited by every row, partly hit in L1).
  In sorted order (the row-grouped kernel after the sort) the rows of one block are neighbours in
  one subtree, so a weight row they all read is fetched once per block (its warps share the SM's L1).
* Weight rows come from HBM once when every weight row the batch visits fits in L2; otherwise each
  fetch beyond the first misses with probability ``1 - L2 size / visited weight bytes``.
* Scalars: bfloat16 and float16 store 2 bytes and compute in float32; float32 and float64 store
  and compute in their own size (``fffcore.backends.cupy.kernel_plan.DTYPE_TRAITS``).

Print the tables with ``python -m benchmarks.gpu_model`` (from the checkout's root).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fffcore.backends.cupy.kernel_plan import (
    DTYPE_TRAITS,
    MAX_DEPTH,
    WARPS_PER_BLOCK,
    grouped_top_levels,
    plan_fff_launches,
)

#: Seconds one kernel launch adds to a call: an assumed figure, the order of the gap between two
#: small dependent kernels on one CUDA stream. Host-side Python (``fffcore.fff``'s checks, cupy's
#: allocation and launch calls) comes on top and is not modelled.
LAUNCH_SECONDS = 3e-6
#: Kernels the device sort of the row-grouped variant launches (``cupy.argsort`` of int32 keys): an
#: assumption for an LSD radix sort with 8-bit digits: an index fill, a histogram and four digit passes.
SORT_LAUNCHES = 6
#: Bytes the device sort moves per row: an assumption for the same radix sort of (int32 key, int64
#: index) pairs: the index fill writes 8, the histogram reads 4, each of the four digit passes reads
#: and writes a key and an index (4 * 2 * 12 = 96).
SORT_BYTES_PER_ROW = 8 + 4 + 96
#: Bytes of one stored node index in the scratch of the row-grouped variant (int32 in the kernel).
NODE_INDEX_BYTES = 4
#: Bytes of one node index in cmm's output (int64, as ``fffcore.cmm`` returns it).
CMM_NODE_BYTES = 8
#: Bytes per element of the row order the sort returns (int64, which ``fff_forward_sorted`` reads).
ORDER_BYTES = 8
#: Storage bytes per element of each layer dtype, from the backend's own table.
STORAGE_BYTES: dict[str, int] = {name: traits.itemsize for name, traits in DTYPE_TRAITS.items()}
#: Bytes per element of the arithmetic type (the row-grouped scratch holds activated logits in it).
COMPUTE_BYTES: dict[str, int] = {name: traits.compute_itemsize for name, traits in DTYPE_TRAITS.items()}
#: The dense feedforward layer the FFF replaces: Linear(d, HIDDEN_FACTOR * d), activation, Linear back
#: (BERT-base: width 768, hidden 3072).
DENSE_HIDDEN_FACTOR = 4
#: The measured dense times this model's speedups are taken against, relative to the checkout's root.
H200_RESULTS_FILE = Path("benchmarks/results/gpu-h200-20261129.json")
#: The variants of ``fff`` the backend has (``runtime.FFF_VARIANTS``) and cmm.
KERNELS = ("warp_per_row", "row_grouped", "cmm")


@dataclass(frozen=True)
class GPUSpec:
    """A GPU as the model sees it.

    Attributes:
        name: what it is called in tables.
        hbm_bytes_per_second: peak HBM bandwidth, bytes per second.
        l2_bytes: L2 cache size, bytes.
        l2_bytes_per_second: assumed L2 bandwidth, bytes per second (no vendor publishes it).
    """

    name: str
    hbm_bytes_per_second: float
    l2_bytes: int
    l2_bytes_per_second: float


#: Assumed L2 bandwidth of a Hopper GPU, bytes per second: NVIDIA's A100 whitepaper gives the A100's L2
#: read bandwidth as 5120 bytes per clock; assuming Hopper's is no narrower, at the H100 SXM's and H200's
#: 1.98 GHz boost clock (NVIDIA's spec sheets) that is about 10.1 TB/s. An assumption, not a spec figure;
#: the float32 times measured on an H200 (``H200_RESULTS_FILE``) are 1.05-1.3x what it predicts.
HOPPER_L2_BYTES_PER_SECOND = 5120 * 1.98e9

#: NVIDIA H100 SXM5: 3.35 TB/s of HBM3 (NVIDIA's H100 datasheet); 50 MB of L2 (NVIDIA's H100 whitepaper;
#: the device reports 50 MiB).
H100_SXM = GPUSpec("H100 SXM", 3.35e12, 50 * 2**20, HOPPER_L2_BYTES_PER_SECOND)
#: NVIDIA H200 SXM: 4.8 TB/s of HBM3e (NVIDIA's H200 datasheet); 60 MiB of L2, as the device reported it
#: (``machine.l2_bytes`` = 62914560 in ``H200_RESULTS_FILE``).
H200_SXM = GPUSpec("H200 SXM", 4.8e12, 60 * 2**20, HOPPER_L2_BYTES_PER_SECOND)
GPUS: tuple[GPUSpec, ...] = (H100_SXM, H200_SXM)


@dataclass(frozen=True)
class Layer:
    """An FFF layer's shape: ``trees`` trees of depth ``depth`` (``depth + 1`` levels), stored in ``dtype``."""

    d_in: int
    d_out: int
    depth: int
    trees: int = 1
    dtype: str = "float32"
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("d_in", "d_out", "trees"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if not isinstance(self.depth, int) or not 0 <= self.depth <= MAX_DEPTH:
            raise ValueError(f"depth: expected an integer from 0 to {MAX_DEPTH}, got {self.depth!r}")
        if self.dtype not in STORAGE_BYTES:
            raise ValueError(f"dtype: expected one of {', '.join(STORAGE_BYTES)}, got {self.dtype!r}")

    @property
    def levels(self) -> int:
        return self.depth + 1

    @property
    def itemsize(self) -> int:
        """Bytes per stored element."""
        return STORAGE_BYTES[self.dtype]

    @property
    def in_row_bytes(self) -> int:
        """Bytes of one node's ``w_in`` row and its bias."""
        return (self.d_in + int(self.bias)) * self.itemsize

    @property
    def out_row_bytes(self) -> int:
        """Bytes of one node's ``w_out`` row."""
        return self.d_out * self.itemsize


@dataclass(frozen=True)
class Phase:
    """One step of a call: ``launches`` kernels moving ``hbm_bytes`` through HBM and ``l2_bytes`` through L2."""

    name: str
    launches: int
    hbm_bytes: float
    l2_bytes: float

    def seconds(self, gpu: GPUSpec) -> float:
        """Predicted seconds: the slower of HBM and L2, plus the launches."""
        return (
            max(self.hbm_bytes / gpu.hbm_bytes_per_second, self.l2_bytes / gpu.l2_bytes_per_second)
            + self.launches * LAUNCH_SECONDS
        )


@dataclass(frozen=True)
class Prediction:
    """The model's figures for one kernel variant, layer, batch and GPU (bytes, seconds)."""

    kernel: str
    layer: Layer
    batch: int
    gpu: GPUSpec
    phases: tuple[Phase, ...]
    floor_bytes: float

    @property
    def hbm_bytes(self) -> float:
        return sum(phase.hbm_bytes for phase in self.phases)

    @property
    def l2_bytes(self) -> float:
        return sum(phase.l2_bytes for phase in self.phases)

    @property
    def launches(self) -> int:
        return sum(phase.launches for phase in self.phases)

    @property
    def seconds(self) -> float:
        """Predicted seconds per call (0 for an empty batch, which launches nothing)."""
        return sum(phase.seconds(self.gpu) for phase in self.phases)

    @property
    def floor_seconds(self) -> float:
        """The floor's bytes at HBM bandwidth, seconds."""
        return self.floor_bytes / self.gpu.hbm_bytes_per_second

    @property
    def share_of_floor(self) -> float:
        """floor / predicted time, from 0 to 1 (1 for an empty batch)."""
        return self.floor_seconds / self.seconds if self.seconds else 1.0


def expected_distinct(draws: float, choices: int) -> float:
    """Expected number of distinct values among ``draws`` uniform draws from ``choices`` values."""
    if choices == 1:
        return 1.0 if draws > 0 else 0.0
    return choices * -math.expm1(draws * math.log1p(-1.0 / choices))


def visited_nodes(layer: Layer, batch: int, level: int) -> float:
    """Expected nodes of ``level`` that ``batch`` rows visit in one tree."""
    return expected_distinct(batch, 2**level)


def visited_weight_bytes(layer: Layer, batch: int, *, w_out: bool = True) -> float:
    """Bytes of every weight row (``w_in`` with its bias, and ``w_out`` unless told not) the batch visits."""
    row = layer.in_row_bytes + (layer.out_row_bytes if w_out else 0)
    return layer.trees * row * sum(visited_nodes(layer, batch, level) for level in range(layer.levels))


def floor_bytes(layer: Layer, batch: int) -> float:
    """The least an ``fff`` call moves: ``x`` read and ``y`` written once, each visited weight row once."""
    return batch * (layer.d_in + layer.d_out) * layer.itemsize + visited_weight_bytes(layer, batch)


def cmm_floor_bytes(layer: Layer, batch: int) -> float:
    """The least a cmm call moves: ``x``, the logits and nodes it writes, each visited ``w_in`` row once."""
    outputs = batch * layer.trees * layer.levels * (layer.itemsize + CMM_NODE_BYTES)
    return batch * layer.d_in * layer.itemsize + outputs + visited_weight_bytes(layer, batch, w_out=False)


def miss_fraction(weight_bytes: float, gpu: GPUSpec) -> float:
    """Share of repeated weight fetches that miss L2: 0 when the visited weights fit, else the part L2 cannot hold."""
    return 0.0 if weight_bytes <= gpu.l2_bytes else 1.0 - gpu.l2_bytes / weight_bytes


def _weights_from_hbm(first_touch: float, fetched: float, miss: float) -> float:
    return first_touch + max(0.0, fetched - first_touch) * miss


def _check_batch(batch: int) -> None:
    if not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch: expected an integer >= 0, got {batch!r}")


def _check_gpu(gpu: GPUSpec) -> None:
    for name in ("hbm_bytes_per_second", "l2_bytes", "l2_bytes_per_second"):
        if not getattr(gpu, name) > 0:
            raise ValueError(f"gpu.{name}: expected a positive number, got {getattr(gpu, name)!r}")


def _tree_groups(layer: Layer, batch: int) -> tuple[tuple[int, bool], ...]:
    """(trees, accumulates) of each launch, as the backend splits trees by shared memory."""
    plan = plan_fff_launches(batch, layer.trees, layer.depth, COMPUTE_BYTES[layer.dtype])
    return tuple((group.tree_count, group.accumulate) for group in plan.groups)


def warp_per_row(layer: Layer, batch: int, gpu: GPUSpec, *, tile_rows: int | None = None) -> Prediction:
    """``fff_forward``: one warp per row reads ``x`` once, walks ``depth + 1`` levels per tree fetching one
    ``w_in`` row each, sweeps the same number of ``w_out`` rows, and writes ``y``; one launch per tree group.

    ``tile_rows``: None for the present kernel (no fetch shared between rows). A number: a what-if where
    a block walks a tile of that many consecutive rows level by level, keeping their ``x`` on chip, and
    fetches each weight row once for all the tile's rows that visit it.
    """
    _check_batch(batch)
    _check_gpu(gpu)
    if tile_rows is not None and (not isinstance(tile_rows, int) or tile_rows < 1):
        raise ValueError(f"tile_rows: expected an integer >= 1 or None, got {tile_rows!r}")
    tile = 1 if tile_rows is None else tile_rows
    per_tree = sum(_tile_fetches(batch, level, tile) for level in range(layer.levels))
    visited = visited_weight_bytes(layer, batch)
    miss = miss_fraction(visited, gpu)
    phases = []
    for index, (trees, accumulate) in enumerate(_tree_groups(layer, batch)):
        share = trees / layer.trees
        rows_io = batch * (layer.d_in + layer.d_out * (2 if accumulate else 1)) * layer.itemsize
        fetched = trees * per_tree * (layer.in_row_bytes + layer.out_row_bytes)
        hbm = rows_io + _weights_from_hbm(visited * share, fetched, miss)
        phases.append(Phase(f"fff_forward, trees group {index}", 1, hbm, rows_io + fetched))
    name = "warp_per_row" if tile_rows is None else f"warp_per_row, tiles of {tile_rows} rows"
    return Prediction(name, layer, batch, gpu, tuple(phases), floor_bytes(layer, batch))


def _sorted_fetches(batch: int, top_levels: int, level: int, group_rows: float) -> float:
    """Fetches of the nodes of ``level`` by the sorted walk when ``group_rows`` neighbouring sorted rows
    share each fetch: above the sort's level a node's rows are contiguous; below it, rows of one
    subtree are in row order, so a group's rows spread over the subtree's nodes at random."""
    if level <= top_levels:
        nodes = expected_distinct(batch, 2**level)
        return nodes + (batch - nodes) / group_rows
    subtrees = expected_distinct(batch, 2**top_levels)
    rows_per_subtree = batch / subtrees
    groups_per_subtree = 1 + (rows_per_subtree - 1) / group_rows
    rows_per_group = rows_per_subtree / groups_per_subtree
    return subtrees * groups_per_subtree * expected_distinct(rows_per_group, 2 ** (level - top_levels))


def _tile_fetches(batch: int, level: int, tile_rows: int) -> float:
    """Fetches of the nodes of ``level`` by a walk in row order whose tiles of ``tile_rows`` rows share each fetch."""
    rows = min(tile_rows, batch)
    if rows <= 1:
        return float(batch)
    return batch / rows * expected_distinct(rows, 2**level)


def row_grouped(layer: Layer, batch: int, gpu: GPUSpec, *, group_rows: int | None = None) -> Prediction:
    """``fff_top_walk``, a device sort, ``fff_forward_sorted``, per tree group.

    The top walk reads ``x`` and walks the top ``T = kernel_plan.grouped_top_levels(B, depth)`` levels,
    writing per row and tree ``T`` activated logits (compute dtype) and ``T + 1`` int32 nodes, and an
    int32 key; the sort orders rows by key; the sorted walk reads ``x`` again (from L2 when ``x`` and the
    visited weights fit there together), the scratch and the order, walks levels ``T`` to ``depth``,
    sweeps every level's ``w_out`` row and writes ``y``. Only the first tree of a group is sorted by;
    its other trees are walked in row order.

    ``group_rows``: rows that share one fetch of a weight row they all read. None: the present kernels
    (in sorted order a block's ``WARPS_PER_BLOCK`` warps; in row order none). A number: a what-if where
    both kernels fetch each weight row once per tile of that many rows (the top walk's tiles in row
    order, the sorted walk's in sorted order).
    """
    _check_batch(batch)
    _check_gpu(gpu)
    if group_rows is not None and (not isinstance(group_rows, int) or group_rows < 1):
        raise ValueError(f"group_rows: expected an integer >= 1 or None, got {group_rows!r}")
    if layer.depth < 1:
        raise ValueError(f"layer.depth: the row-grouped kernels need depth >= 1, got {layer.depth}")
    sorted_share = WARPS_PER_BLOCK if group_rows is None else group_rows
    top_tile = 1 if group_rows is None else group_rows
    top = grouped_top_levels(batch, layer.depth)
    item = layer.itemsize
    visited = visited_weight_bytes(layer, batch)
    miss = miss_fraction(visited, gpu)
    x_bytes = batch * layer.d_in * item
    x_again_from_hbm = 0.0 if x_bytes + visited <= gpu.l2_bytes else x_bytes
    phases = []
    for index, (trees, accumulate) in enumerate(_tree_groups(layer, batch) if batch else ()):
        scratch = batch * trees * (top * COMPUTE_BYTES[layer.dtype] + (top + 1) * NODE_INDEX_BYTES)
        keys = batch * NODE_INDEX_BYTES
        top_first = trees * layer.in_row_bytes * sum(visited_nodes(layer, batch, level) for level in range(top))
        top_fetched = trees * layer.in_row_bytes * sum(_tile_fetches(batch, level, top_tile) for level in range(top))
        top_io = x_bytes + scratch + keys
        phases.append(
            Phase(
                f"fff_top_walk, trees group {index}",
                1,
                top_io + _weights_from_hbm(top_first, top_fetched, miss),
                top_io + top_fetched,
            )
        )
        sort_bytes = batch * SORT_BYTES_PER_ROW
        phases.append(Phase(f"sort, trees group {index}", SORT_LAUNCHES, sort_bytes, sort_bytes))
        fetched = 0.0
        for tree in range(trees):
            for level in range(layer.levels):
                if tree == 0:
                    count = _sorted_fetches(batch, top, level, sorted_share)
                else:
                    count = _tile_fetches(batch, level, top_tile)
                fetched += count * (layer.out_row_bytes + (layer.in_row_bytes if level >= top else 0))
        first = visited * trees / layer.trees - top_first
        y_bytes = batch * layer.d_out * item * (2 if accumulate else 1)
        reads = scratch + batch * ORDER_BYTES
        hbm = x_again_from_hbm + y_bytes + reads + _weights_from_hbm(first, fetched, miss)
        phases.append(Phase(f"fff_forward_sorted, trees group {index}", 1, hbm, x_bytes + y_bytes + reads + fetched))
    name = "row_grouped" if group_rows is None else f"row_grouped, {group_rows} rows per fetch"
    return Prediction(name, layer, batch, gpu, tuple(phases), floor_bytes(layer, batch))


def cmm(layer: Layer, batch: int, gpu: GPUSpec) -> Prediction:
    """``fff_conditional_matmul``: one warp per row reads ``x``, walks every tree fetching one ``w_in`` row
    per level, and writes the logits (the layer's dtype) and nodes (int64); one launch."""
    _check_batch(batch)
    _check_gpu(gpu)
    visited = visited_weight_bytes(layer, batch, w_out=False)
    outputs = batch * layer.trees * layer.levels * (layer.itemsize + CMM_NODE_BYTES)
    rows_io = batch * layer.d_in * layer.itemsize + outputs
    fetched = batch * layer.trees * layer.levels * layer.in_row_bytes
    hbm = rows_io + _weights_from_hbm(visited, fetched, miss_fraction(visited, gpu))
    phases = (Phase("fff_conditional_matmul", 1, hbm, rows_io + fetched),) if batch else ()
    return Prediction("cmm", layer, batch, gpu, phases, cmm_floor_bytes(layer, batch))


def predict(kernel: str, layer: Layer, batch: int, gpu: GPUSpec) -> Prediction:
    """The prediction for one of :data:`KERNELS`; ValueError naming ``kernel`` for any other."""
    models = {"warp_per_row": warp_per_row, "row_grouped": row_grouped, "cmm": cmm}
    if kernel not in models:
        raise ValueError(f"kernel: expected one of {', '.join(KERNELS)}, got {kernel!r}")
    return models[kernel](layer, batch, gpu)


@dataclass(frozen=True)
class DenseCost:
    """The dense layer Linear(d_in, h), activation, Linear(h, d_out) with ``h = 4 d_in``: bytes and FLOPs."""

    hidden: int
    least_bytes: float
    flops: float


def dense_cost(layer: Layer, batch: int) -> DenseCost:
    """The least bytes (``x``, ``y`` and both weight matrices with their biases once; the hidden
    activations never leave the chip) and the FLOPs (two matrix products, 2 multiply-adds counted as
    2 operations each) of the dense layer an FFF of ``layer``'s widths replaces."""
    _check_batch(batch)
    hidden = DENSE_HIDDEN_FACTOR * layer.d_in
    weights = layer.d_in * hidden + hidden + hidden * layer.d_out + layer.d_out
    least = (batch * (layer.d_in + layer.d_out) + weights) * layer.itemsize
    flops = 2.0 * batch * hidden * (layer.d_in + layer.d_out)
    return DenseCost(hidden, least, flops)


def measured_dense_seconds(path: Path | str = H200_RESULTS_FILE) -> dict[tuple[str, int], dict[str, float]]:
    """The dense times of a GPU results file, seconds per call: ``{(dtype, batch): {"dense": s,
    "dense_tf32": s}}`` from each row's ``dense_seconds`` and ``dense_tf32_seconds`` (where present);
    the file's ``layer`` must be width 768, depth 11, one tree (ValueError otherwise)."""
    report: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    shape = report.get("layer", {})
    if (shape.get("width"), shape.get("depth"), shape.get("trees")) != (768, 11, 1):
        raise ValueError(f"path: {path} is not a width-768, depth-11, one-tree run: layer {shape}")
    times: dict[tuple[str, int], dict[str, float]] = {}
    for row in report.get("results", []):
        found = {
            name: float(row[field])
            for name, field in (("dense", "dense_seconds"), ("dense_tf32", "dense_tf32_seconds"))
            if row.get(field)
        }
        if found:
            times[(str(row["dtype"]), int(row["batch"]))] = found
    return times


#: The layer of the tables: UltraFastBERT-1x11's feedforward (width 768, depth 11, one tree, with bias).
PAPER_WIDTH, PAPER_DEPTH = 768, 11
TABLE_BATCHES = (1, 128, 4096, 16384, 65536)
TABLE_DTYPES = ("float32", "bfloat16")
#: The what-if the documentation weighs: one launch in which a block walks a tile of this many rows level
#: by level and fetches each weight row once for the tile (x of 128 bfloat16 rows is 192 KiB, within the
#: 227 KiB of shared memory a Hopper block may opt into, per NVIDIA's Hopper tuning guide).
WHAT_IF_TILE_ROWS = 128


def paper_layer(dtype: str) -> Layer:
    """Width 768, depth 11, one tree, with bias, stored in ``dtype``."""
    return Layer(PAPER_WIDTH, PAPER_WIDTH, PAPER_DEPTH, 1, dtype, True)


def _format_bytes(value: float) -> str:
    if value >= 1e9:
        return f"{value / 1e9:.2f} GB"
    if value >= 1e6:
        return f"{value / 1e6:.1f} MB"
    return f"{value / 1e3:.0f} kB"


def _format_seconds(value: float) -> str:
    return f"{value * 1e3:.2f} ms" if value >= 1e-3 else f"{value * 1e6:.1f} µs"


def _bytes_cell(predictions: list[Prediction], attribute: str) -> str:
    cells = dict.fromkeys(_format_bytes(getattr(p, attribute)) for p in predictions)
    return " / ".join(cells)


def kernel_table(kernel: str, tile_rows: int | None = None) -> str:
    """A Markdown table of one kernel at the paper's layer: bytes, predicted time and share of the floor
    on each GPU of :data:`GPUS` (where the GPUs' bytes differ, H100 / H200)."""
    header = ["dtype", "batch", "HBM bytes", "L2 bytes"]
    for gpu in GPUS:
        header += [f"{gpu.name} time", f"{gpu.name} share"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dtype in TABLE_DTYPES:
        for batch in TABLE_BATCHES:
            layer = paper_layer(dtype)
            if tile_rows is None:
                predictions = [predict(kernel, layer, batch, gpu) for gpu in GPUS]
            else:
                predictions = [warp_per_row(layer, batch, gpu, tile_rows=tile_rows) for gpu in GPUS]
            cells = [dtype, str(batch), _bytes_cell(predictions, "hbm_bytes"), _bytes_cell(predictions, "l2_bytes")]
            for p in predictions:
                cells += [_format_seconds(p.seconds), f"{p.share_of_floor:.0%}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def floor_table() -> str:
    """A Markdown table of the floor and of the dense layer's least bytes and FLOPs at the paper's layer."""
    lines = [
        "| dtype | batch | floor bytes | " + " | ".join(f"{gpu.name} floor" for gpu in GPUS) + " | dense least bytes | "
        "dense FLOPs |",
        "|" + "---|" * (5 + len(GPUS)),
    ]
    for dtype in TABLE_DTYPES:
        for batch in TABLE_BATCHES:
            layer = paper_layer(dtype)
            floor = floor_bytes(layer, batch)
            dense = dense_cost(layer, batch)
            times = " | ".join(_format_seconds(floor / gpu.hbm_bytes_per_second) for gpu in GPUS)
            lines.append(
                f"| {dtype} | {batch} | {_format_bytes(floor)} | {times} | {_format_bytes(dense.least_bytes)} | "
                f"{dense.flops / 1e9:.3g} GFLOP |"
            )
    return "\n".join(lines)


def speedup_table(results_file: Path | str = H200_RESULTS_FILE) -> str:
    """A Markdown table of the predicted H200 times against the dense times measured on an H200."""
    dense = measured_dense_seconds(results_file)
    what_if = f"tiles of {WHAT_IF_TILE_ROWS} rows (what-if)"
    lines = [
        f"| dtype | batch | measured dense | warp-per-row | row-grouped | {what_if} |",
        "|---|---|---|---|---|---|",
    ]
    for dtype in TABLE_DTYPES:
        for batch in TABLE_BATCHES:
            times = dense.get((dtype, batch))
            if not times:
                continue
            layer = paper_layer(dtype)
            predicted = (
                warp_per_row(layer, batch, H200_SXM).seconds,
                row_grouped(layer, batch, H200_SXM).seconds,
                warp_per_row(layer, batch, H200_SXM, tile_rows=WHAT_IF_TILE_ROWS).seconds,
            )
            for kind in ("dense", "dense_tf32"):
                if kind not in times:
                    continue
                label = "TF32" if kind == "dense_tf32" else dtype
                cells = [f"{_format_seconds(s)} ({times[kind] / s:.1f}x)" for s in predicted]
                lines.append(f"| {dtype} | {batch} | {_format_seconds(times[kind])} ({label}) | " + " | ".join(cells))
    return "\n".join(line if line.endswith("|") else line + " |" for line in lines)


def main() -> None:
    """Print every table of the model at the paper's layer (width 768, depth 11, one tree)."""
    print("Floor (x, y and the visited weights once, at HBM bandwidth) and the dense layer (hidden 3072)\n")
    print(floor_table())
    for kernel in KERNELS:
        print(f"\n{kernel}: predicted per call\n")
        print(kernel_table(kernel))
    print(f"\nwhat-if: one launch, a block per tile of {WHAT_IF_TILE_ROWS} rows sharing each weight-row fetch\n")
    print(kernel_table("warp_per_row", tile_rows=WHAT_IF_TILE_ROWS))
    print(f"\nPredicted H200 time and speedup over the dense times measured in {H200_RESULTS_FILE}\n")
    print(speedup_table())


if __name__ == "__main__":
    main()
