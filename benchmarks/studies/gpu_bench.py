"""GPU benchmark: the cupy backend's fused FFF against torch's dense feedforward (cuBLAS), with a results file.

Run by ``benchmarks/gpu_check.sh`` on a machine with an NVIDIA GPU, from the repository root::

    python -m benchmarks.studies.gpu_bench --out benchmarks/results/gpu_<stamp>.json

The case table (width 768, depth 11, one tree, gelu; batches 1, 128, 4096,
16384, 65536; float32 and bfloat16) is UltraFastBERT's feedforward against
BERT-base's dense ``Linear(768, 3072) -> GELU -> Linear(3072, 768)``. float32
dense is timed twice: in true float32 (torch's default) and with TF32 matrix
products allowed (``torch.backends.cuda.matmul.allow_tf32``), the fastest
float32 dense layer a user can ask cuBLAS for. Each (dtype, batch) is
measured on its own: a failure is recorded with its reason and the next case
runs. Every FFF result is checked once, untimed, against the float64 oracle.

The bfloat16 rows time dense bfloat16 against two FFF layers the backend builds
but does not declare yet, both with 2-byte storage and float32 arithmetic: the
float16 variant (``fff_seconds``; ``fff_dtype`` says so) and the bfloat16 kernels
fed the raw 16-bit words of torch bfloat16 tensors through DLPack
(``fff_bfloat16_seconds``), each checked against the oracle. Every row also
times the row-grouped kernels (``fff_grouped_seconds``) and records whether
their output has the warp-per-row kernel's bits.

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

from fffcore.backends.cupy.kernel_plan import flops_and_bytes
from fffcore.benchmarks.gpu_report import CaseResult, format_table, grouped_crossover
from fffcore.benchmarks.timing import WALL, Stopwatch, rotating, round_robin, seconds_per_call
from fffcore.params import FFFParams
from fffcore.reference.oracle import evaluate_path, oracle_cmm

WIDTH = 768
DEPTH = 11
HIDDEN = 3072
BATCHES = (1, 128, 4096, 16384, 65536)
DTYPES = ("float32", "bfloat16")
DRY_RUN_BATCHES = (1, 64)
#: FFF must be at least this many times faster than dense at batch TARGET_BATCH to meet the target.
TARGET_SPEEDUP = 10.0
TARGET_BATCH = 16384
#: Distinct inputs the timed calls rotate through, so repeated calls do not all hit one buffer in L2.
ROTATING_INPUTS = 3
#: Each timed sample lasts at least this long, so event resolution and launch gaps average out.
MIN_SAMPLE_SECONDS = 2e-3
SAMPLES = 15
#: Rows checked against the float64 oracle (the oracle runs on the CPU).
CHECKED_ROWS = 256
#: Warps per block tried at the largest float32 batch (the backend's default is 8).
WARPS_SWEEP = (2, 4, 8, 16, 32)
#: FFF dtype measured for each benchmark dtype. Neither numpy nor cupy has bfloat16, so the bfloat16
#: rows run the kernels' float16 variant (2-byte storage, float32 arithmetic), which the backend
#: builds but does not declare yet: it is called through the runtime, not through fffcore.fff.
FFF_DTYPE = {"float32": "float32", "bfloat16": "float16", "float64": "float64"}


@dataclass
class Platform:
    """Where the benchmark runs: how to build inputs and layers, and how to time a call.

    ``time(call, inputs)`` returns (median seconds per call, first-call seconds);
    ``call(x)`` takes one of ``inputs``. ``as_fff_input(x, dtype)`` turns a
    benchmark input (for dense) into the FFF layer's input of that dtype,
    outside the timed region.
    ``make_fff_tuned(params, warps_per_block)`` builds the FFF call with
    another block size, for the sweep; ``make_fff_grouped(params)`` the
    row-grouped kernels' call (None where there are none);
    ``make_fff_bfloat16(float32 params)`` the bfloat16 layer's ``fff`` and
    ``cmm`` calls on bfloat16 inputs and the float32 parameters holding exactly
    its bfloat16 values (None where there is no bfloat16 layer);
    ``make_fff_torch(float32 params, dtype)`` fffcore's torch backend on the
    platform's tensors, the layer in ``dtype`` (None without torch).
    """

    name: str
    device: str
    make_input: Callable[[int, str, int], Any]
    as_fff_input: Callable[[Any, str], Any]
    make_fff: Callable[[FFFParams], Callable[[Any], Any]]
    make_fff_tuned: Callable[[FFFParams, int], Callable[[Any], Any]]
    make_fff_grouped: Callable[[FFFParams], Callable[[Any], Any]] | None
    make_fff_bfloat16: Callable[[FFFParams], tuple[Callable[[Any], Any], Callable[[Any], Any], FFFParams]] | None
    make_fff_torch: Callable[[FFFParams, str], Callable[[Any], Any]] | None
    make_cmm: Callable[[FFFParams], Callable[[Any], tuple[Any, Any]]]
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
    from fffcore.benchmarks.baselines import make_dense_torch, make_paper_torch_fff

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    backend = fffcore.get_backend("cupy")  # raises with the reason when cupy cannot run here

    def make_input(batch: int, dtype: str, seed: int) -> Any:
        generator = torch.Generator(device="cuda").manual_seed(seed)
        return torch.randn((batch, WIDTH), generator=generator, device="cuda", dtype=getattr(torch, dtype))

    def as_cupy(x: Any, dtype: str) -> Any:
        return cupy.from_dlpack(x.to(getattr(torch, dtype)).contiguous())

    def on_device(params: FFFParams) -> FFFParams:
        return FFFParams(
            cupy.asarray(params.w_in),
            None if params.b_in is None else cupy.asarray(params.b_in),
            cupy.asarray(params.w_out),
            params.activation,
        )

    from fffcore.backends.cupy.kernel_plan import SUPPORTED_DTYPES
    from fffcore.backends.cupy.runtime import KernelCache, WeightCache, run_cmm, run_fff

    kernels, weights = KernelCache(), WeightCache()

    def make_fff(params: FFFParams) -> Callable[[Any], Any]:
        device_params = on_device(params)
        if params.dtype in SUPPORTED_DTYPES:  # what users call
            return lambda x: fffcore.fff(x, device_params, backend="cupy")
        return lambda x: run_fff(x, device_params, kernels, weights)  # undeclared dtypes: the runtime itself

    def make_cmm(params: FFFParams) -> Callable[[Any], tuple[Any, Any]]:
        return lambda x: run_cmm(x, params, kernels, weights)

    def make_fff_tuned(params: FFFParams, warps: int) -> Callable[[Any], Any]:
        device_params = on_device(params)
        return lambda x: run_fff(x, device_params, kernels, weights, warps_per_block=warps)

    def make_fff_grouped(params: FFFParams) -> Callable[[Any], Any]:
        device_params = on_device(params)
        return lambda x: run_fff(x, device_params, kernels, weights, variant="row_grouped")

    def make_fff_bfloat16(params: FFFParams) -> tuple[Callable[[Any], Any], Callable[[Any], Any], FFFParams]:
        layer, exact = bfloat16_layer(params, device="cuda")
        return (lambda x: run_fff(x, layer, kernels, weights)), (lambda x: run_cmm(x, layer, kernels, weights)), exact

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
        as_fff_input=as_cupy,
        make_fff=make_fff,
        make_fff_tuned=make_fff_tuned,
        make_fff_grouped=make_fff_grouped,
        make_fff_bfloat16=make_fff_bfloat16,
        make_fff_torch=lambda params, dtype: torch_backend_call(params, dtype, "cuda"),
        make_cmm=make_cmm,
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
    """Everything on the CPU: the reference backend for FFF, torch (or numpy) for dense, the host clock."""
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

    def as_numpy(x: Any, dtype: str) -> np.ndarray:
        return (x.float().numpy() if torch is not None else np.asarray(x)).astype(dtype)

    # The reference backend's methods, called directly: they also run float16 (in float16).
    reference = ReferenceBackend()

    def make_dense(dtype: str) -> Callable[[Any], Any]:
        if torch is not None:
            from fffcore.benchmarks.baselines import make_dense_torch

            return make_dense_torch(WIDTH, HIDDEN, WIDTH, dtype=dtype)
        return make_dense_numpy(WIDTH, HIDDEN, WIDTH)

    return Platform(
        name="dry-run",
        device="cpu",
        make_input=make_input,
        as_fff_input=as_numpy,
        make_fff=lambda params: lambda x: reference.fff(x, params),
        make_fff_tuned=lambda params, warps: lambda x: reference.fff(x, params),
        make_fff_grouped=lambda params: lambda x: reference.fff(x, params),
        make_fff_bfloat16=None if torch is None else lambda params: _reference_bfloat16(reference, params),
        make_fff_torch=None if torch is None else lambda params, dtype: torch_backend_call(params, dtype, "cpu"),
        make_cmm=lambda params: lambda x: reference.cmm(x, params),
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


def _reference_bfloat16(
    reference: Any, params: FFFParams
) -> tuple[Callable[[Any], Any], Callable[[Any], Any], FFFParams]:
    """The dry run's stand-in for the bfloat16 kernels: the reference on the exact values, rounded to bfloat16."""
    import torch

    _, exact = bfloat16_layer(params)

    def fff(x: Any) -> Any:
        return torch.from_numpy(reference.fff(x.float().numpy(), exact)).to(torch.bfloat16)

    def cmm(x: Any) -> tuple[Any, Any]:
        logits, nodes = reference.cmm(x.float().numpy(), exact)
        return torch.from_numpy(logits).to(torch.bfloat16), torch.from_numpy(nodes)

    return fff, cmm, exact


# --- one case --------------------------------------------------------------------------------------


def check_fff(platform_: Platform, params: FFFParams, x_fff: Any, y: Any) -> dict[str, Any]:
    """Compare the first CHECKED_ROWS rows with the float64 oracle evaluated along the backend's own path.

    The backend's nodes must be a valid path (each child chosen by its own
    logit) and, along it, ``||y - y64|| / ||y64||`` must stay under
    ``100 sqrt(d_in) eps_c + 8 u_s``: rounding errors of a d_in-term sum in the
    arithmetic dtype (eps_c) grow like sqrt(d_in) eps_c, with a factor 100 for
    the activation's and the tree sum's rounding; the stored dtype's unit
    roundoff u_s enters through the logits and the output, each rounded once
    to it (the 16-bit dtypes store, float32 computes), with room for the
    activation's slope (at most 1.13) and the norm. Also reports how many rows
    took the float64 path.
    """
    cmm = platform_.make_cmm(params)
    return check_along_path(platform_, params, params.dtype, cmm, x_fff, y)


def check_along_path(
    platform_: Platform, exact: FFFParams, storage: str, cmm: Callable[[Any], Any], x_fff: Any, y: Any
) -> dict[str, Any]:
    """:func:`check_fff` for a layer stored in ``storage`` whose values ``exact`` holds in a wider dtype."""
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


def run_case(platform_: Platform, dtype: str, batch: int, seed: int = 0) -> CaseResult:
    """Time FFF, dense (and the paper's torch FFF where available) for one (dtype, batch); never raises."""
    fff_dtype = FFF_DTYPE[dtype]
    result = CaseResult(dtype=dtype, batch=batch, fff_dtype=fff_dtype)
    params = FFFParams.random(WIDTH, WIDTH, DEPTH, 1, dtype=fff_dtype, seed=seed)
    try:
        inputs = [platform_.make_input(batch, dtype, seed + k) for k in range(ROTATING_INPUTS)]
    except Exception as error:
        result.errors.append(f"inputs: {_one_line(error)}")
        return result

    try:
        fff_inputs = [platform_.as_fff_input(x, fff_dtype) for x in inputs]
        call = platform_.make_fff(params)
        result.fff_seconds, result.fff_first_call_seconds = platform_.time(call, fff_inputs)
        flops, moved = flops_and_bytes(batch, 1, DEPTH, WIDTH, WIDTH, np.dtype(fff_dtype).itemsize)
        result.fff_effective_gb_per_s = moved / result.fff_seconds / 1e9
        result.fff_gflop_per_s = flops / result.fff_seconds / 1e9
        result.check = check_fff(platform_, params, fff_inputs[0], call(fff_inputs[0]))
        if not result.check["passed"]:
            result.errors.append(f"fff: the check against the float64 oracle failed: {result.check}")
    except Exception as error:
        result.errors.append(f"fff: {_one_line(error)}\n{_traceback_tail()}")

    if platform_.make_fff_grouped is not None and result.fff_seconds is not None:
        try:
            grouped = platform_.make_fff_grouped(params)
            result.fff_grouped_seconds, _ = platform_.time(grouped, fff_inputs)
            same = platform_.to_numpy(grouped(fff_inputs[0])) == platform_.to_numpy(call(fff_inputs[0]))
            result.grouped_same_bits = bool(np.all(same))
            if not result.grouped_same_bits:
                result.errors.append("fff grouped: the output differs from the warp-per-row kernel's")
        except Exception as error:
            result.errors.append(f"fff grouped: {_one_line(error)}\n{_traceback_tail()}")

    if platform_.make_fff_torch is not None and dtype in ("float32", "bfloat16"):
        try:
            wide = FFFParams.random(WIDTH, WIDTH, DEPTH, 1, dtype="float32", seed=seed)
            result.fff_torch_seconds, _ = platform_.time(platform_.make_fff_torch(wide, dtype), inputs)
        except Exception as error:
            result.errors.append(f"fff torch: {_one_line(error)}\n{_traceback_tail()}")

    if dtype == "bfloat16" and platform_.make_fff_bfloat16 is not None:
        try:
            wide = FFFParams.random(WIDTH, WIDTH, DEPTH, 1, dtype="float32", seed=seed)
            fff_bf16, cmm_bf16, exact = platform_.make_fff_bfloat16(wide)
            result.fff_bfloat16_seconds, _ = platform_.time(fff_bf16, inputs)
            result.check_bfloat16 = check_along_path(
                platform_, exact, "bfloat16", cmm_bf16, inputs[0], fff_bf16(inputs[0])
            )
            if not result.check_bfloat16["passed"]:
                result.errors.append(
                    f"fff bfloat16: the check against the float64 oracle failed: {result.check_bfloat16}"
                )
        except Exception as error:
            result.errors.append(f"fff bfloat16: {_one_line(error)}\n{_traceback_tail()}")

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

    if platform_.make_paper_fff is not None and fff_dtype == dtype:
        try:
            paper = platform_.make_paper_fff(params)
            result.paper_fff_seconds, _ = platform_.time(paper, inputs)
        except Exception as error:
            result.errors.append(f"paper fff: {_one_line(error)}")

    if result.fff_seconds and result.dense_seconds:
        result.speedup_vs_dense = result.dense_seconds / result.fff_seconds
    if result.fff_bfloat16_seconds and result.dense_seconds:
        result.speedup_bfloat16_vs_dense = result.dense_seconds / result.fff_bfloat16_seconds
    if result.fff_seconds and result.dense_tf32_seconds:
        result.speedup_vs_dense_tf32 = result.dense_tf32_seconds / result.fff_seconds
    return result


def run_sweep(platform_: Platform, batch: int, seed: int = 0) -> list[dict[str, Any]]:
    """FFF float32 seconds per call for each block size of WARPS_SWEEP; failures recorded, never raised."""
    params = FFFParams.random(WIDTH, WIDTH, DEPTH, 1, dtype="float32", seed=seed)
    rows: list[dict[str, Any]] = []
    try:
        inputs = [platform_.as_fff_input(platform_.make_input(batch, "float32", seed + k), "float32") for k in range(2)]
    except Exception as error:
        return [{"batch": batch, "error": f"inputs: {_one_line(error)}"}]
    for warps in WARPS_SWEEP:
        row: dict[str, Any] = {"batch": batch, "warps_per_block": warps}
        try:
            row["fff_seconds"], _ = platform_.time(platform_.make_fff_tuned(params, warps), inputs)
        except Exception as error:
            row["error"] = _one_line(error)
        rows.append(row)
    return rows


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
    status = "passed" if code == 0 else ("timed out" if code in (124, 137) else "failed")
    return {"name": name, "exit_code": code, "status": status, "log_tail": tail}


def target_summary(results: list[CaseResult]) -> dict[str, Any]:
    """Whether FFF is at least TARGET_SPEEDUP times faster than dense at TARGET_BATCH, per dtype."""
    summary = {}
    for result in results:
        if result.batch == TARGET_BATCH:
            met = result.speedup_vs_dense is not None and result.speedup_vs_dense >= TARGET_SPEEDUP
            summary[result.dtype] = {"speedup": result.speedup_vs_dense, "fff_dtype": result.fff_dtype, "met": met}
    return {"batch": TARGET_BATCH, "min_speedup": TARGET_SPEEDUP, "by_dtype": summary}


def main(argv: Sequence[str] | None = None, platform_factory: Callable[[], Platform] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON results file to write")
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU with small batches (no GPU needed)")
    parser.add_argument("--batches", type=lambda text: tuple(int(b) for b in text.split(",")), default=None)
    parser.add_argument("--dtypes", type=lambda text: tuple(text.split(",")), default=DTYPES)
    parser.add_argument("--step", action="append", default=[], metavar="NAME=CODE:LOG", help="a prior step's outcome")
    parser.add_argument("--plot", type=Path, default=None, help="also draw time per call against batch here (PNG)")
    arguments = parser.parse_args(argv)
    batches = arguments.batches or (DRY_RUN_BATCHES if arguments.dry_run else BATCHES)

    report: dict[str, Any] = {
        "schema": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "dry-run" if arguments.dry_run else "gpu",
        "layer": {"width": WIDTH, "depth": DEPTH, "trees": 1, "activation": "gelu", "dense_hidden": HIDDEN},
        "host": {"python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__},
        "steps": [read_step(spec) for spec in arguments.step],
        "results": [],
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
        for dtype in arguments.dtypes:
            for batch in batches:
                print(f"measuring {dtype} batch {batch} ...", flush=True)
                result = run_case(platform_, dtype, batch)
                results.append(result)
                report["results"] = [asdict(r) for r in results]
                _write(arguments.out, report)  # after every case, so a later crash keeps what was measured
    if platform_ is not None and "float32" in arguments.dtypes:
        print(f"block-size sweep at batch {max(batches)} ...", flush=True)
        report["warps_sweep"] = run_sweep(platform_, max(batches))
    report["target"] = target_summary(results)
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
    for result in results:
        for error in result.errors:
            print(f"error in {result.dtype} batch {result.batch}: {error}", file=sys.stderr)
    for error in report["errors"]:
        print(f"error: {error}", file=sys.stderr)
    print(f"results written to {arguments.out}")
    failed = bool(report["errors"]) or any(r.errors for r in results)
    return 1 if failed else 0


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
