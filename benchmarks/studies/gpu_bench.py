"""GPU benchmark: the cupy backend's fused FFF against torch's dense feedforward (cuBLAS), with a results file.

Run by ``benchmarks/gpu_check.sh`` on a machine with an NVIDIA GPU, from the repository root::

    python -m benchmarks.studies.gpu_bench --out benchmarks/results/gpu_<stamp>.json

The case table (width 768, depth 11, one tree, gelu; batches 1, 128, 4096,
16384, 65536; float32, bfloat16 and float16) is UltraFastBERT's feedforward against
BERT-base's dense ``Linear(768, 3072) -> GELU -> Linear(3072, 768)`` in the same dtype. float32
dense is timed twice: in true float32 (torch's default) and with TF32 matrix
products allowed (``torch.backends.cuda.matmul.allow_tf32``), the fastest
float32 dense layer a user can ask cuBLAS for. Each (dtype, batch) is
measured on its own: a failure is recorded with its reason and the next case
runs. Every FFF result is checked once, untimed, against the float64 oracle.

The 16-bit rows run the kernels' 16-bit variants (2-byte storage, float32 arithmetic), which the
backend builds but does not declare yet, through its runtime: float16 on cupy arrays, bfloat16 on
the raw 16-bit words of torch bfloat16 tensors (``fff_dtype`` names the kernels timed). Every row
also times the other kernel variants (the row-grouped pair in ``fff_grouped_seconds``, with whether
its output has the warp-per-row kernel's bits; the rest in ``variant_seconds``), and, on an H100 or
H200, compares the warp-per-row time with the memory floor of ``benchmarks/gpu_model.py``.

Then ``small_batches[]`` (``benchmarks/studies/small_batches.py``: ``FFFInference`` at batches 1 and
128 from torch tensors, eager, replayed from a CUDA graph and under
``torch.compile(mode="reduce-overhead")``, with the kernels and allocations of one call), and
``training[]`` (``benchmarks/studies/training.py``: one training step of the FFF layer, the dense
layer and the masked layer at batch 16384 in bfloat16 and float32). ``targets[]`` says, for each
target, the measured value and whether it was met.

``--dry-run`` runs the whole script on the CPU (reference backend, torch or
numpy dense, host clock, small batches), so everything but the GPU is
exercised anywhere; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import platform
import statistics
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.studies import small_batches as small_batches_study
from fffcore.backends.cupy.kernel_plan import WARPS_PER_BLOCK, flops_and_bytes
from fffcore.benchmarks.gpu_model import GPUS, GPUSpec, floor_bytes, paper_layer
from fffcore.benchmarks.gpu_report import CaseResult, format_table, grouped_crossover
from fffcore.benchmarks.timing import WALL, Stopwatch, rotating, round_robin, seconds_per_call
from fffcore.params import FFFParams
from fffcore.reference.oracle import evaluate_path, oracle_cmm

WIDTH = 768
DEPTH = 11
HIDDEN = 3072
BATCHES = (1, 128, 4096, 16384, 65536)
DTYPES = ("float32", "bfloat16", "float16")
DRY_RUN_BATCHES = (1, 64)
#: Bytes per stored element of each benchmark dtype (numpy has no bfloat16).
ITEMSIZE = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
#: The targets, judged at TARGET_BATCH: FFF at least TARGET_SPEEDUP times dense (float32: TF32 dense) and,
#: in the 16-bit dtypes, at most FLOOR_FACTOR times the memory floor of benchmarks/gpu_model.py.
TARGET_BATCH = 16384
TARGET_SPEEDUP = 8.0
FLOOR_FACTOR = 3.0
#: Training: a step at TRAINING_BATCH in bfloat16 at least these many times the dense and masked layers' steps.
TRAINING_BATCH = 16384
TRAINING_DTYPES = ("bfloat16", "float32")
TRAINING_TARGETS = {"speedup_vs_dense": 5.0, "speedup_vs_masked": 20.0}
DRY_RUN_TRAINING_BATCH = 64
#: Distinct inputs the timed calls rotate through, so repeated calls do not all hit one buffer in L2.
ROTATING_INPUTS = 3
#: Each timed sample lasts at least this long, so event resolution and launch gaps average out.
MIN_SAMPLE_SECONDS = 2e-3
SAMPLES = 15
#: Rows checked against the float64 oracle (the oracle runs on the CPU).
CHECKED_ROWS = 256
#: The exit code gpu_check.sh records for a step it had no time left to start.
NOT_STARTED = 200
#: Warps per block tried at the largest float32 batch (the backend's default is 8).
WARPS_SWEEP = (2, 4, 8, 16, 32)


@dataclass
class Platform:
    """Where the benchmark runs: how to build inputs and layers, and how to time a call.

    ``make_layer(float32 params, dtype)`` returns the FFF layer in ``dtype`` where the platform computes
    (cupy arrays; for bfloat16, torch bfloat16 tensors whose raw 16-bit words the kernels read) and
    float parameters holding exactly its values, for the oracle. ``as_fff_input(x, dtype)`` turns a
    benchmark input (for dense) into that layer's input, outside the timed region.
    ``make_fff(layer, variant, warps_per_block)`` is the layer's call with a kernel variant of
    ``variants`` (None: what users call) and block size; ``make_cmm(layer)`` its cmm.
    ``make_fff_torch(float32 params, dtype)`` is fffcore's torch backend on the platform's tensors
    (None without torch). ``time(call, inputs)`` returns (median seconds per call, first-call
    seconds); ``call(x)`` takes one of ``inputs``.
    """

    name: str
    device: str
    make_input: Callable[[int, str, int], Any]
    as_fff_input: Callable[[Any, str], Any]
    make_layer: Callable[[FFFParams, str], tuple[Any, FFFParams]]
    make_fff: Callable[[Any, str | None, int], Callable[[Any], Any]]
    make_cmm: Callable[[Any], Callable[[Any], tuple[Any, Any]]]
    variants: tuple[str, ...]
    make_fff_torch: Callable[[FFFParams, str], Callable[[Any], Any]] | None
    make_dense: Callable[[str], Callable[[Any], Any]]
    make_dense_tf32: Callable[[], Callable[[Any], Any]] | None
    make_paper_fff: Callable[[FFFParams], Callable[[Any], Any]] | None
    to_numpy: Callable[[Any], np.ndarray]
    time: Callable[[Callable[[Any], Any], Sequence[Any]], tuple[float, float]]
    describe: Callable[[], dict[str, Any]]


# --- timing ----------------------------------------------------------------------------------------


def time_with(
    call: Callable[[Any], Any], inputs: Sequence[Any], stopwatch: Stopwatch, samples: int = SAMPLES
) -> tuple[float, float]:
    """Median seconds per call over ``samples`` samples, and the first call's seconds.

    ``stopwatch`` reads device events on a GPU, the host clock otherwise. Each sample runs enough calls
    to last MIN_SAMPLE_SECONDS, rotating through ``inputs``.
    """
    first = seconds_per_call(lambda: call(inputs[0]), 1, stopwatch)
    second = seconds_per_call(lambda: call(inputs[1 % len(inputs)]), 1, stopwatch)
    number = max(1, math.ceil(MIN_SAMPLE_SECONDS / max(second, 1e-9)))
    per_call = round_robin({"call": rotating(call, inputs)}, samples, number=number, stopwatch=stopwatch)["call"]
    return statistics.median(per_call), first


def cupy_event_stopwatch() -> Stopwatch:
    """CUDA events on cupy's current stream (where the cupy backend launches)."""
    import cupy

    def start() -> Any:
        event = cupy.cuda.Event()
        event.record()
        return event

    def stop(begin: Any) -> float:
        end = cupy.cuda.Event()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(begin, end) / 1e3

    return Stopwatch(start, stop)


def torch_event_stopwatch() -> Stopwatch:
    """CUDA events on torch's current stream (where cuBLAS runs)."""
    import torch

    def start() -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(begin: Any) -> float:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3

    return Stopwatch(start, stop)


# --- platforms -------------------------------------------------------------------------------------


def gpu_platform() -> Platform:
    """cupy FFF and torch dense on the current CUDA device, timed with CUDA events."""
    import cupy
    import torch

    import fffcore
    from fffcore.backends.cupy.kernel_plan import SUPPORTED_DTYPES, WARPS_PER_BLOCK
    from fffcore.backends.cupy.runtime import FFF_VARIANTS, KernelCache, WeightCache, run_cmm, run_fff
    from fffcore.benchmarks.baselines import make_dense_torch, make_paper_torch_fff

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    backend = fffcore.get_backend("cupy")  # raises with the reason when cupy cannot run here
    kernels, weights = KernelCache(), WeightCache()

    def make_input(batch: int, dtype: str, seed: int) -> Any:
        generator = torch.Generator(device="cuda").manual_seed(seed)
        return torch.randn((batch, WIDTH), generator=generator, device="cuda", dtype=getattr(torch, dtype))

    def as_fff_input(x: Any, dtype: str) -> Any:
        if dtype == "bfloat16":
            return x  # the bfloat16 kernels read the tensor's own 16-bit words
        return cupy.from_dlpack(x.to(getattr(torch, dtype)).contiguous())

    def make_layer(wide: FFFParams, dtype: str) -> tuple[Any, FFFParams]:
        if dtype == "bfloat16":
            return bfloat16_layer(wide, device="cuda")
        exact = wide.astype(dtype)
        layer = FFFParams(
            cupy.asarray(exact.w_in),
            None if exact.b_in is None else cupy.asarray(exact.b_in),
            cupy.asarray(exact.w_out),
            exact.activation,
        )
        return layer, exact

    def make_fff(layer: Any, variant: str | None, warps: int) -> Callable[[Any], Any]:
        if variant is None and warps == WARPS_PER_BLOCK and layer.dtype in SUPPORTED_DTYPES:
            return lambda x: fffcore.fff(x, layer, backend="cupy")  # what users call
        # Undeclared dtypes, other variants and block sizes: the runtime itself.
        return lambda x: run_fff(x, layer, kernels, weights, variant=variant, warps_per_block=warps)

    def make_dense_tf32() -> Callable[[Any], Any]:
        dense = make_dense_torch(WIDTH, HIDDEN, WIDTH, dtype="float32", device="cuda")

        def call(x: Any) -> Any:
            # The global flag, set around each call only, so no other measurement runs in TF32.
            matmul = torch.backends.cuda.matmul
            before, matmul.allow_tf32 = matmul.allow_tf32, True
            try:
                return dense(x)
            finally:
                matmul.allow_tf32 = before

        return call

    cupy_events, torch_events = cupy_event_stopwatch(), torch_event_stopwatch()

    def timed(call: Callable[[Any], Any], inputs: Sequence[Any]) -> tuple[float, float]:
        on_cupy = type(inputs[0]).__module__.startswith("cupy")
        return time_with(call, inputs, cupy_events if on_cupy else torch_events)

    def describe() -> dict[str, Any]:
        properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return {
            "gpu": properties["name"].decode() if isinstance(properties["name"], bytes) else str(properties["name"]),
            "multiprocessors": int(properties["multiProcessorCount"]),
            "l2_bytes": int(properties["l2CacheSize"]),
            "shared_bytes_per_block_optin": int(properties.get("sharedMemPerBlockOptin", 0)),
            "compute_capability": str(cupy.cuda.Device().compute_capability),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cupy": cupy.__version__,
            "cupy_backend": backend.version(),
            "torch": torch.__version__,
            "torch_tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        }

    return Platform(
        name="gpu",
        device="cuda",
        make_input=make_input,
        as_fff_input=as_fff_input,
        make_layer=make_layer,
        make_fff=make_fff,
        make_cmm=lambda layer: lambda x: run_cmm(x, layer, kernels, weights),
        variants=tuple(v for v in FFF_VARIANTS if v != "warp_per_row"),
        make_fff_torch=lambda params, dtype: torch_backend_call(params, dtype, "cuda"),
        make_dense=lambda dtype: make_dense_torch(WIDTH, HIDDEN, WIDTH, dtype=dtype, device="cuda"),
        make_dense_tf32=make_dense_tf32,
        make_paper_fff=lambda params: make_paper_torch_fff(params, device="cuda"),
        to_numpy=lambda array: (
            cupy.asnumpy(array) if type(array).__module__.startswith("cupy") else array.float().cpu().numpy()
        ),
        time=timed,
        describe=describe,
    )


def dry_run_platform() -> Platform:
    """Everything on the CPU: the reference for every FFF variant, torch (or numpy) for dense, the host clock."""
    from fffcore.backends.cupy.runtime import FFF_VARIANTS
    from fffcore.benchmarks.baselines import make_dense_numpy
    from fffcore.reference.plugin import ReferenceBackend

    try:
        import torch
    except ImportError:
        torch = None

    def make_input(batch: int, dtype: str, seed: int) -> Any:
        values = np.random.default_rng(seed).standard_normal((batch, WIDTH))
        if torch is not None:
            return torch.from_numpy(values).to(getattr(torch, dtype))
        return values.astype("float32")

    def as_fff_input(x: Any, dtype: str) -> Any:
        if dtype == "bfloat16":
            return x
        return (x.float().numpy() if torch is not None else np.asarray(x)).astype(dtype)

    # The reference backend's methods, called directly: they also run float16 (in float16).
    reference = ReferenceBackend()

    def make_layer(wide: FFFParams, dtype: str) -> tuple[Any, FFFParams]:
        if dtype == "bfloat16":
            if torch is None:
                raise RuntimeError("bfloat16 layers need torch")
            _, exact = bfloat16_layer(wide)
            return exact, exact  # stands for the bfloat16 layer: the reference on its exact values
        exact = wide.astype(dtype)
        return exact, exact

    def make_fff(layer: FFFParams, variant: str | None, warps: int) -> Callable[[Any], Any]:
        def fff(x: Any) -> Any:
            if torch is not None and torch.is_tensor(x):  # a bfloat16 layer: rounded to bfloat16 as its kernels do
                return torch.from_numpy(reference.fff(x.float().numpy(), layer)).to(torch.bfloat16)
            return reference.fff(x, layer)

        return fff

    def make_cmm(layer: FFFParams) -> Callable[[Any], tuple[Any, Any]]:
        def cmm(x: Any) -> tuple[Any, Any]:
            if torch is not None and torch.is_tensor(x):
                logits, nodes = reference.cmm(x.float().numpy(), layer)
                return torch.from_numpy(logits).to(torch.bfloat16), torch.from_numpy(nodes)
            return reference.cmm(x, layer)

        return cmm

    def make_dense(dtype: str) -> Callable[[Any], Any]:
        if torch is not None:
            from fffcore.benchmarks.baselines import make_dense_torch

            return make_dense_torch(WIDTH, HIDDEN, WIDTH, dtype=dtype)
        return make_dense_numpy(WIDTH, HIDDEN, WIDTH)

    return Platform(
        name="dry-run",
        device="cpu",
        make_input=make_input,
        as_fff_input=as_fff_input,
        make_layer=make_layer,
        make_fff=make_fff,
        make_cmm=make_cmm,
        variants=tuple(v for v in FFF_VARIANTS if v != "warp_per_row"),
        make_fff_torch=None if torch is None else lambda params, dtype: torch_backend_call(params, dtype, "cpu"),
        make_dense=make_dense,
        make_dense_tf32=None,
        make_paper_fff=None,
        to_numpy=lambda array: (
            array.float().numpy() if torch is not None and torch.is_tensor(array) else np.asarray(array)
        ),
        time=lambda call, inputs: time_with(call, inputs, WALL, samples=3),
        describe=lambda: {"gpu": None, "note": "dry run on the CPU: the timings mean nothing"},
    )


def torch_layer(params: FFFParams, dtype: str, device: str) -> FFFParams:
    """float32 ``params`` as torch tensors of ``dtype`` on ``device`` (rounded by torch)."""
    import torch

    # Copies: the parameters' arrays are read-only, which torch tensors cannot express.
    arrays = (params.w_in, params.b_in, params.w_out)
    tensors = [None if a is None else torch.from_numpy(np.array(a)).to(device, getattr(torch, dtype)) for a in arrays]
    return FFFParams(*tensors, params.activation)


def bfloat16_layer(params: FFFParams, device: str = "cpu") -> tuple[FFFParams, FFFParams]:
    """float32 ``params`` rounded to bfloat16 by torch: the layer as torch bfloat16 tensors on
    ``device``, and float32 numpy parameters holding exactly its values (for the oracle)."""
    layer = torch_layer(params, "bfloat16", device)
    arrays = (layer.w_in, layer.b_in, layer.w_out)
    exact = [None if t is None else t.float().cpu().numpy() for t in arrays]
    return layer, FFFParams(*exact, params.activation)


def torch_backend_call(params: FFFParams, dtype: str, device: str) -> Callable[[Any], Any]:
    """``fffcore.fff`` on fffcore's torch backend, the float32 ``params`` as torch tensors of
    ``dtype`` on ``device`` (inputs: torch tensors of that dtype there)."""
    import fffcore

    layer = torch_layer(params, dtype, device)
    return lambda x: fffcore.fff(x, layer, backend="torch")


# --- one case --------------------------------------------------------------------------------------


def check_along_path(
    platform_: Platform, exact: FFFParams, storage: str, cmm: Callable[[Any], Any], x_fff: Any, y: Any
) -> dict[str, Any]:
    """Compare the first CHECKED_ROWS rows of ``y`` with the float64 oracle evaluated along the path
    ``cmm`` takes, for a layer stored in ``storage`` whose values ``exact`` holds.

    The path must be valid (each child chosen by its own logit) and, along it,
    ``||y - y64|| / ||y64||`` must stay under ``100 sqrt(d_in) eps_c + 8 u_s``: rounding errors of a
    d_in-term sum in the arithmetic dtype (eps_c) grow like sqrt(d_in) eps_c, with a factor 100 for
    the activation's and the tree sum's rounding; the stored dtype's unit roundoff u_s enters through
    the logits and the output, each rounded once to it (the 16-bit dtypes store, float32 computes),
    with room for the activation's slope (at most 1.13) and the norm. Also reports how many rows
    took the float64 path.
    """
    rows = min(CHECKED_ROWS, int(x_fff.shape[0]))
    x = platform_.to_numpy(x_fff[:rows]).astype(np.float64)
    logits, nodes = cmm(x_fff[:rows])
    logits, nodes = platform_.to_numpy(logits), platform_.to_numpy(nodes)
    y_rows = platform_.to_numpy(y[:rows]).astype(np.float64)
    valid = bool(np.all(nodes[:, :, 0] == 0)) and bool(
        np.all(nodes[:, :, 1:] == 2 * nodes[:, :, :-1] + 1 + (logits[:, :, :-1] > 0))
    )
    along = evaluate_path(x, exact, nodes)
    error = float(np.linalg.norm(y_rows - along.output) / max(np.linalg.norm(along.output), 1e-300))
    compute_dtype = "float32" if storage in ("float16", "bfloat16") else storage
    storage_unit = {"bfloat16": 2.0**-8}.get(storage) or float(np.finfo(storage).eps) / 2
    bound = 100 * math.sqrt(exact.d_in) * float(np.finfo(compute_dtype).eps) + 8 * storage_unit
    _, oracle_nodes = oracle_cmm(x, exact)
    same_path = float(np.mean(np.all(oracle_nodes == nodes, axis=(1, 2))))
    return {
        "rows": rows,
        "valid_path": valid,
        "relative_error": error,
        "bound": bound,
        "rows_on_float64_path": same_path,
        "passed": valid and error <= bound,
    }


def run_case(platform_: Platform, dtype: str, batch: int, seed: int = 0, floor: GPUSpec | None = None) -> CaseResult:
    """Time every FFF variant and dense (and the paper's torch FFF where available) for one (dtype, batch);
    never raises. ``floor``: the GPU whose memory floor the FFF time is compared with (None: not compared)."""
    result = CaseResult(dtype=dtype, batch=batch, fff_dtype=dtype)
    wide = FFFParams.random(WIDTH, WIDTH, DEPTH, 1, dtype="float32", seed=seed)
    try:
        inputs = [platform_.make_input(batch, dtype, seed + k) for k in range(ROTATING_INPUTS)]
    except Exception as error:
        result.errors.append(f"inputs: {_one_line(error)}")
        return result

    try:
        layer, exact = platform_.make_layer(wide, dtype)
        fff_inputs = [platform_.as_fff_input(x, dtype) for x in inputs]
        cmm = platform_.make_cmm(layer)
        call = platform_.make_fff(layer, None, WARPS_PER_BLOCK)
        result.fff_seconds, result.fff_first_call_seconds = platform_.time(call, fff_inputs)
        flops, moved = flops_and_bytes(batch, 1, DEPTH, WIDTH, WIDTH, ITEMSIZE[dtype])
        result.fff_effective_gb_per_s = moved / result.fff_seconds / 1e9
        result.fff_gflop_per_s = flops / result.fff_seconds / 1e9
        reference_y = call(fff_inputs[0])
        result.check = check_along_path(platform_, exact, dtype, cmm, fff_inputs[0], reference_y)
        if not result.check["passed"]:
            result.errors.append(f"fff: the check against the float64 oracle failed: {result.check}")
    except Exception as error:
        result.errors.append(f"fff: {_one_line(error)}\n{_traceback_tail()}")
        layer = None

    for variant in platform_.variants if layer is not None else ():
        try:
            other = platform_.make_fff(layer, variant, WARPS_PER_BLOCK)
            seconds, _ = platform_.time(other, fff_inputs)
            y = other(fff_inputs[0])
            same = bool(np.all(platform_.to_numpy(y) == platform_.to_numpy(reference_y)))
            check = check_along_path(platform_, exact, dtype, cmm, fff_inputs[0], y)
            result.variant_checks[variant] = {**check, "same_bits_as_warp_per_row": same}
            if variant == "row_grouped":
                result.fff_grouped_seconds, result.grouped_same_bits = seconds, same
                if not same:
                    result.errors.append("fff grouped: the output differs from the warp-per-row kernel's")
            else:
                result.variant_seconds[variant] = seconds
            if not check["passed"]:
                result.errors.append(f"fff {variant}: the check against the float64 oracle failed: {check}")
        except Exception as error:
            result.errors.append(f"fff {variant}: {_one_line(error)}\n{_traceback_tail()}")

    if platform_.make_fff_torch is not None and dtype in ("float32", "bfloat16"):
        try:
            result.fff_torch_seconds, _ = platform_.time(platform_.make_fff_torch(wide, dtype), inputs)
        except Exception as error:
            result.errors.append(f"fff torch: {_one_line(error)}\n{_traceback_tail()}")

    try:
        dense = platform_.make_dense(dtype)
        result.dense_seconds, _ = platform_.time(dense, inputs)
    except Exception as error:
        result.errors.append(f"dense: {_one_line(error)}\n{_traceback_tail()}")

    if platform_.make_dense_tf32 is not None and dtype == "float32":
        try:
            result.dense_tf32_seconds, _ = platform_.time(platform_.make_dense_tf32(), inputs)
        except Exception as error:
            result.errors.append(f"dense tf32: {_one_line(error)}")

    if platform_.make_paper_fff is not None and dtype == "float32":
        try:
            result.paper_fff_seconds, _ = platform_.time(platform_.make_paper_fff(wide), inputs)
        except Exception as error:
            result.errors.append(f"paper fff: {_one_line(error)}")

    if result.fff_seconds and result.dense_seconds:
        result.speedup_vs_dense = result.dense_seconds / result.fff_seconds
    if result.fff_seconds and result.dense_tf32_seconds:
        result.speedup_vs_dense_tf32 = result.dense_tf32_seconds / result.fff_seconds
    if floor is not None and result.fff_seconds:
        result.floor_seconds = floor_bytes(paper_layer(dtype), batch) / floor.hbm_bytes_per_second
        result.fff_over_floor = result.fff_seconds / result.floor_seconds
    return result


def run_sweep(platform_: Platform, batch: int, seed: int = 0) -> list[dict[str, Any]]:
    """FFF float32 seconds per call for each block size of WARPS_SWEEP; failures recorded, never raised."""
    wide = FFFParams.random(WIDTH, WIDTH, DEPTH, 1, dtype="float32", seed=seed)
    rows: list[dict[str, Any]] = []
    try:
        layer, _ = platform_.make_layer(wide, "float32")
        inputs = [platform_.as_fff_input(platform_.make_input(batch, "float32", seed + k), "float32") for k in range(2)]
    except Exception as error:
        return [{"batch": batch, "error": f"inputs: {_one_line(error)}"}]
    for warps in WARPS_SWEEP:
        row: dict[str, Any] = {"batch": batch, "warps_per_block": warps}
        try:
            row["fff_seconds"], _ = platform_.time(platform_.make_fff(layer, "warp_per_row", warps), inputs)
        except Exception as error:
            row["error"] = _one_line(error)
        rows.append(row)
    return rows


def run_training(device: str, dtypes: Sequence[str], batch: int, rounds: int) -> list[dict[str, Any]]:
    """One training step (forward, loss, backward, SGD update) of the FFF layer, the dense layer and the
    masked layer, per dtype (``benchmarks/studies/training.py``); failures recorded, never raised."""
    from benchmarks.studies.training import time_steps

    entries = []
    for dtype in dtypes:
        entry: dict[str, Any] = {"dtype": dtype, "batch": batch, "device": device, "errors": []}
        try:
            measured = time_steps(WIDTH, DEPTH, batch, rounds, device=device, dtype=dtype)
            seconds = measured["seconds"]
            fff = {name.removeprefix("fffcore:"): s for name, s in seconds.items() if name.startswith("fffcore:")}
            entry["fff_step_seconds_by_backend"] = fff
            if not fff:
                raise RuntimeError(f"no fffcore backend trains in {dtype} on {device}")
            entry["backend"] = min(fff, key=fff.__getitem__)
            entry["fff_step_seconds"] = fff[entry["backend"]]
            entry["dense_step_seconds"] = seconds["dense 3072"]
            entry["masked_step_seconds"] = seconds["masked"]
            entry["speedup_vs_dense"] = entry["dense_step_seconds"] / entry["fff_step_seconds"]
            entry["speedup_vs_masked"] = entry["masked_step_seconds"] / entry["fff_step_seconds"]
        except Exception as error:
            entry["errors"].append(f"{_one_line(error)}\n{_traceback_tail()}")
        entries.append(entry)
    return entries


# --- the report ------------------------------------------------------------------------------------


def read_step(spec: str) -> dict[str, Any]:
    """``NAME=EXIT_CODE:LOGFILE`` from gpu_check.sh, as a step record with the log's last lines."""
    name, _, rest = spec.partition("=")
    code_text, _, log_path = rest.partition(":")
    try:
        code = int(code_text)
    except ValueError:
        code = None
    tail = ""
    if log_path:
        try:
            tail = "\n".join(Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
        except OSError as error:
            tail = f"(log unreadable: {error})"
    status = {0: "passed", 124: "timed out", 137: "timed out", NOT_STARTED: "not started"}.get(code, "failed")
    return {"name": name, "exit_code": code, "status": status, "log_tail": tail}


def fastest_fff(result: CaseResult) -> tuple[str, float] | None:
    """The fastest FFF variant timed for a case whose output passed the check against the oracle,
    (name, seconds per call); None when there is none."""
    timed = {"warp_per_row": result.fff_seconds, "row_grouped": result.fff_grouped_seconds, **result.variant_seconds}
    checks = {"warp_per_row": result.check, **result.variant_checks}
    timed = {name: seconds for name, seconds in timed.items() if seconds and checks.get(name, {}).get("passed")}
    if not timed:
        return None
    name = min(timed, key=timed.__getitem__)
    return name, timed[name]


def target_summary(
    results: Sequence[CaseResult], small_batches: Sequence[dict[str, Any]] = (), training: Sequence[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Each target of the GPU work, with the measured value, the limit and whether it was met (None: not measured).

    At TARGET_BATCH the FFF time is the fastest variant's (named in ``detail``), so a variant that meets a
    target is seen before the backend's automatic choice is set to it.
    """
    targets: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, at_least: bool, detail: str = "") -> None:
        met = None if value is None else (value >= limit if at_least else value <= limit)
        targets.append(
            {"target": name, "value": value, "limit": limit, "at_least": at_least, "met": met, "detail": detail}
        )

    by_case = {(r.dtype, r.batch): r for r in results}
    for dtype, dense in (("bfloat16", "bfloat16"), ("float16", "float16"), ("float32", "TF32")):
        result = by_case.get((dtype, TARGET_BATCH))
        fastest = fastest_fff(result) if result is not None else None
        dense_seconds = None
        if result is not None:
            dense_seconds = result.dense_tf32_seconds if dense == "TF32" else result.dense_seconds
        speedup = dense_seconds / fastest[1] if fastest and dense_seconds else None
        detail = fastest[0] if fastest else ""
        add(f"{dtype} at batch {TARGET_BATCH}: times {dense} dense", speedup, TARGET_SPEEDUP, True, detail)
        if dtype != "float32":
            over = fastest[1] / result.floor_seconds if fastest and result.floor_seconds else None
            add(f"{dtype} at batch {TARGET_BATCH}: times the memory floor", over, FLOOR_FACTOR, False, detail)
    for row in small_batches:
        where = f"{row['dtype']} at batch {row['batch']} from torch ({row.get('backend') or '?'})"
        add(f"{where}: times dense", row.get("speedup_vs_dense"), small_batches_study.TARGET_SPEEDUP, True)
        if row.get("backend") == "cupy":  # the fused kernel's promise; the torch backend runs several
            add(f"{where}: kernel launches per call", row.get("kernel_launches"), 1.0, False)
            add(f"{where}: cupy allocations per call (the output)", row.get("cupy_allocations"), 1.0, False)
        # Booleans as 1.0/0.0 against a limit of 1: met when the replayed or compiled output equals the eager one.
        for key, what in (("graph_matches_eager", "CUDA graph replay"), ("compiled_matches_eager", "compiled")):
            value = row.get(key)
            add(f"{where}: {what}, same output", None if value is None else float(value), 1.0, True)
    for entry in training:
        if entry.get("dtype") == "bfloat16" and entry.get("batch") == TRAINING_BATCH:
            for key, limit in TRAINING_TARGETS.items():
                name = f"training step, bfloat16, batch {TRAINING_BATCH}: {key.replace('_', ' ')}"
                add(name, entry.get(key), limit, True, entry.get("backend", ""))
    return targets


def floor_gpu(description: dict[str, Any]) -> GPUSpec | None:
    """The performance model's GPU for a device name (H100 or H200, SXM: the HBM3 parts), or None."""
    name = str(description.get("gpu") or "")
    if "PCIe" in name or "NVL" in name:  # other memory systems than the model's SXM parts
        return None
    for gpu in GPUS:
        if gpu.name.split()[0] in name:
            return gpu
    return None


def main(argv: Sequence[str] | None = None, platform_factory: Callable[[], Platform] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON results file to write")
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU with small batches (no GPU needed)")
    parser.add_argument("--batches", type=lambda text: tuple(int(b) for b in text.split(",")), default=None)
    parser.add_argument("--dtypes", type=lambda text: tuple(text.split(",")), default=DTYPES)
    parser.add_argument("--no-small-batches", action="store_true", help="skip the small-batch and CUDA-graph part")
    parser.add_argument("--no-training", action="store_true", help="skip the training steps")
    parser.add_argument("--step", action="append", default=[], metavar="NAME=CODE:LOG", help="a prior step's outcome")
    parser.add_argument("--plot", type=Path, default=None, help="also draw time per call against batch here (PNG)")
    arguments = parser.parse_args(argv)
    batches = arguments.batches or (DRY_RUN_BATCHES if arguments.dry_run else BATCHES)

    report: dict[str, Any] = {
        "schema": 2,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "dry-run" if arguments.dry_run else "gpu",
        "layer": {"width": WIDTH, "depth": DEPTH, "trees": 1, "activation": "gelu", "dense_hidden": HIDDEN},
        "host": {"python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__},
        "steps": [read_step(spec) for spec in arguments.step],
        "results": [],
        "small_batches": [],
        "training": [],
        "errors": [],
    }
    results: list[CaseResult] = []
    try:
        factory = platform_factory or (dry_run_platform if arguments.dry_run else gpu_platform)
        platform_ = factory()
        report["machine"] = platform_.describe()
    except Exception as error:
        report["errors"].append(f"platform: {_one_line(error)}\n{_traceback_tail()}")
        platform_ = None
    if platform_ is not None:
        floor = floor_gpu(report["machine"])
        for dtype in arguments.dtypes:
            for batch in batches:
                print(f"measuring {dtype} batch {batch} ...", flush=True)
                result = run_case(platform_, dtype, batch, floor=floor)
                results.append(result)
                report["results"] = [asdict(r) for r in results]
                _write_with_targets(arguments.out, report, results)  # a later crash keeps what was measured
        if "float32" in arguments.dtypes:
            print(f"block-size sweep at batch {max(batches)} ...", flush=True)
            report["warps_sweep"] = run_sweep(platform_, max(batches))
        if not arguments.no_small_batches:
            print("small batches from torch tensors, CUDA graphs, torch.compile ...", flush=True)
            device = platform_.device
            report["small_batches"] = _guarded(report, "small batches", lambda: small_batches_study.run(device))
            _write_with_targets(arguments.out, report, results)
        if not arguments.no_training:
            batch = DRY_RUN_TRAINING_BATCH if arguments.dry_run else TRAINING_BATCH
            print(f"training steps at batch {batch} ...", flush=True)
            rounds = 3 if arguments.dry_run else 7
            report["training"] = _guarded(
                report, "training", lambda: run_training(platform_.device, TRAINING_DTYPES, batch, rounds)
            )
            _write_with_targets(arguments.out, report, results)
    report["targets"] = target_summary(results, report["small_batches"], report["training"])
    report["grouped_crossover_batch"] = grouped_crossover(results)
    if arguments.plot is not None and results and importlib.util.find_spec("matplotlib") is None:
        report["plot_skipped"] = "matplotlib is not installed; fix: pip install 'fffcore[bench]'"
        print(f"no plot: {report['plot_skipped']}", file=sys.stderr)
    elif arguments.plot is not None and results:
        try:
            from benchmarks.studies.gpu_plot import plot_gpu

            plot_gpu(report, arguments.plot)
            report["plot"] = str(arguments.plot)
        except Exception as error:  # a plot must not lose the measurements
            report["errors"].append(f"plot: {_one_line(error)}")
    _write(arguments.out, report)
    print(format_table(results))
    for row in report.get("warps_sweep", []):
        timing = f"{row['fff_seconds'] * 1e3:.4f} ms" if "fff_seconds" in row else row.get("error")
        print(f"  {row.get('warps_per_block', '-')} warps per block, batch {row['batch']}: {timing}")
    for target in report["targets"]:
        state = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        value = "-" if target["value"] is None else f"{target['value']:.3g}"
        bound = ">=" if target["at_least"] else "<="
        detail = f" ({target['detail']})" if target["detail"] else ""
        print(f"  target {target['target']}: {value} ({bound} {target['limit']:g}) {state}{detail}")
    for result in results:
        for error in result.errors:
            print(f"error in {result.dtype} batch {result.batch}: {error}", file=sys.stderr)
    for entry in report["small_batches"] + report["training"]:
        for error in entry.get("errors", []):
            print(f"error in {entry['dtype']} batch {entry['batch']}: {error}", file=sys.stderr)
    for error in report["errors"]:
        print(f"error: {error}", file=sys.stderr)
    print(f"results written to {arguments.out}")
    failed = bool(report["errors"]) or any(r.errors for r in results)
    failed = failed or any(entry.get("errors") for entry in report["small_batches"] + report["training"])
    return 1 if failed else 0


def _guarded(report: dict[str, Any], what: str, measure: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``measure()``, or [] with the failure recorded in ``report["errors"]``."""
    try:
        return measure()
    except Exception as error:
        report["errors"].append(f"{what}: {_one_line(error)}\n{_traceback_tail()}")
        return []


def _write_with_targets(path: Path, report: dict[str, Any], results: Sequence[CaseResult]) -> None:
    """The report with its targets judged on what is measured so far, so that a run stopped by its
    time limit still leaves them."""
    report["targets"] = target_summary(results, report["small_batches"], report["training"])
    _write(path, report)


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _traceback_tail(lines: int = 6) -> str:
    return "\n".join(traceback.format_exc().strip().splitlines()[-lines:])


if __name__ == "__main__":
    sys.exit(main())
