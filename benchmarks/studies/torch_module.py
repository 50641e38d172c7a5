"""FFF layers in PyTorch models: ``FFFInference`` on torch tensors against the best dense layer.

    python -m benchmarks.studies.torch_module                      # CPU, width 768, depth 11, batches 1, 128, 4096
    python -m benchmarks.studies.torch_module --json out.json
    python -m benchmarks.studies.torch_module --device cuda --batches 1,128,4096,16384

What a PyTorch user runs: ``fffcore.torch.FFFInference`` called on float32 tensors, with the
automatic choice of backend and with each backend that computes on the device, beside the dense
feedforward block it replaces (``Linear(768, 3072) -> GELU -> Linear(3072, 768)``). On the CPU
"best dense" is the fastest of numpy and torch, each at one thread and at every core; on CUDA,
torch's cuBLAS in true float32 and with TF32 allowed. Every call takes a fresh input, drawn in
turn from a pool of pre-built ones, so successive calls follow different paths through the tree
and find different weights in cache, as in real inference.

At batch 1 it also measures what the zero-copy bridge costs: ``fffcore.fff`` on a CPU tensor
against the same call on the numpy array it views, and against calling the backend directly,
interleaved round by round so that both see the same machine.

Every FFF variant's output is checked once, untimed, against the float64 oracle along its own
path before its time is reported; a speed-up above the theoretical limit (the dense hidden width
over the neurons a row visits) is reported as a measurement error, not as a result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fffcore.benchmarks.timing import WALL, host_stopwatch, rotating, round_robin, seconds_per_call
from fffcore.params import FFFParams

WIDTH = 768
DEPTH = 11
HIDDEN = 3072
CPU_BATCHES = (1, 128, 4096)
#: Bytes of input the pool may hold; small batches get up to MAX_POOL distinct inputs.
POOL_BYTES = 256 * 2**20
MAX_POOL = 64
#: One sample runs calls for at least this long, so timer resolution does not matter.
MIN_SAMPLE_SECONDS = 0.02
SAMPLES = 9
MIN_SAMPLES = 3
#: Seconds of sampling per variant; past it sampling stops once MIN_SAMPLES samples are taken.
BUDGET_SECONDS = 2.0
BRIDGE_ROUNDS = 15
BRIDGE_CALLS = 2000


@dataclass
class Measured:
    """One variant at one batch: seconds per call (median of samples) and, for FFF, the check."""

    variant: str
    kind: str  # "fff" or "dense"
    seconds: float | None = None
    samples: list[float] = field(default_factory=list)
    backend: str = ""
    threads: str = ""
    check: str = ""
    error: str = ""


def pool_size(batch: int, width: int) -> int:
    """How many distinct inputs to rotate through: as many as fit POOL_BYTES, 2 to MAX_POOL."""
    return int(max(2, min(MAX_POOL, POOL_BYTES // (batch * width * 4))))


def make_pool(batch: int, width: int, count: int, device: str) -> list[Any]:
    import torch

    generator = torch.Generator().manual_seed(batch)
    return [torch.randn(batch, width, generator=generator).to(device) for _ in range(count)]


def time_rotating(call: Callable[[Any], Any], pool: Sequence[Any], synchronize: Callable[[], None]) -> list[float]:
    """Seconds per call, one value per sample; each call takes the next input of ``pool``. The device
    is synchronised around each sample, not each call, so a GPU's calls queue as in use."""
    stopwatch = host_stopwatch(synchronize=synchronize)
    for x in pool[: min(len(pool), 3)]:  # warm-up: compilation, first allocations, thread start-up
        call(x)
    one = max(seconds_per_call(lambda: call(pool[0]), 1, stopwatch), 1e-7)
    per_sample = max(1, int(MIN_SAMPLE_SECONDS / one))
    next_call = rotating(call, pool)
    samples: list[float] = []
    began = WALL.start()
    while len(samples) < SAMPLES:
        samples.append(seconds_per_call(next_call, per_sample, stopwatch))
        if len(samples) >= MIN_SAMPLES and WALL.stop(began) > BUDGET_SECONDS:
            break
    return samples


def check_output(params: FFFParams, x: Any, y: Any, backend: str) -> str:
    """'' when ``y`` (the output for ``x``) passes the float64 check along the backend's own path, else why not."""
    import fffcore
    from fffcore.benchmarks.check import check_fff_output
    from fffcore.benchmarks.transfer import to_numpy
    from fffcore.registry import registry

    rows = to_numpy(x)
    nodes = to_numpy(fffcore.cmm(x, params, backend=backend).nodes)
    accumulation = registry().get(backend).accumulation_dtypes.get(params.dtype)
    result = check_fff_output(rows, params, to_numpy(y), nodes, accumulation=accumulation)
    return "" if result.ok else result.detail


def fff_variants(params: FFFParams, device: str) -> list[tuple[str, str | None]]:
    """(label, backend) pairs: the automatic choice, then every available backend computing on ``device``."""
    import fffcore

    names = [
        row.name
        for row in fffcore.list_backends()
        if row.available and device in row.devices and row.name != "reference" and params.dtype in row.dtypes
    ]
    return [("FFFInference, automatic", None)] + [(f"FFFInference, {name}", name) for name in names]


def measure_fff(params: FFFParams, pool: Sequence[Any], device: str, synchronize: Callable[[], None]) -> list[Measured]:
    import fffcore
    from fffcore.torch import FFFInference

    results = []
    for label, backend in fff_variants(params, device):
        measured = Measured(label, "fff")
        try:
            module = FFFInference(params, backend=backend, device=device).eval()
            measured.backend = fffcore.resolve_backend(pool[0], module.params(), backend).name
            problem = check_output(params, pool[0], module(pool[0]), measured.backend)
            if problem:
                measured.check = f"WRONG: {problem}"
            else:
                measured.check = "ok"
                measured.samples = time_rotating(module, pool, synchronize)
                measured.seconds = statistics.median(measured.samples)
        except Exception as error:  # one broken variant must not end the run
            measured.error = f"{type(error).__name__}: {error}"
        results.append(measured)
    return results


def measure_dense_cpu(pool: Sequence[Any], cores: int) -> list[Measured]:
    """numpy and torch dense layers, each at one thread and at ``cores`` threads."""
    import torch

    from fffcore.benchmarks.baselines import make_dense_numpy, make_dense_torch
    from fffcore.benchmarks.machine import pin_threads

    numpy_pool = [x.numpy() for x in pool]
    layers = {
        "numpy": (make_dense_numpy(WIDTH, HIDDEN, WIDTH), numpy_pool),
        "torch": (make_dense_torch(WIDTH, HIDDEN, WIDTH), pool),
    }
    results = []
    for threads in sorted({1, cores}):
        pin_threads(threads)
        for library, (layer, inputs) in layers.items():
            measured = Measured(f"dense {library}, {threads} thread{'s' if threads > 1 else ''}", "dense")
            measured.threads = str(threads)
            with torch.inference_mode():
                measured.samples = time_rotating(layer, inputs, lambda: None)
            measured.seconds = statistics.median(measured.samples)
            results.append(measured)
    pin_threads(cores)
    return results


def measure_dense_cuda(pool: Sequence[Any], synchronize: Callable[[], None]) -> list[Measured]:
    import torch

    from fffcore.benchmarks.baselines import make_dense_torch

    layer = make_dense_torch(WIDTH, HIDDEN, WIDTH, device="cuda")
    results = []
    for label, tf32 in (("dense torch, float32", False), ("dense torch, TF32", True)):
        matmul = torch.backends.cuda.matmul
        before, matmul.allow_tf32 = matmul.allow_tf32, tf32
        try:
            measured = Measured(label, "dense")
            measured.samples = time_rotating(layer, pool, synchronize)
            measured.seconds = statistics.median(measured.samples)
        finally:
            matmul.allow_tf32 = before
        results.append(measured)
    return results


def bridge_overhead(params: FFFParams) -> dict[str, Any]:
    """At batch 1 on the CPU: what ``fffcore.fff`` on a tensor costs over the numpy array it views.

    Interleaved: each round times BRIDGE_CALLS calls of each variant back to back, and the
    per-round differences are summarised by their median.
    """
    import torch

    import fffcore

    backend = fffcore.resolve_backend(torch.zeros(1, WIDTH), params).name
    chosen = fffcore.get_backend(backend)
    tensors = make_pool(1, WIDTH, MAX_POOL, "cpu")
    arrays = [x.numpy().copy() for x in tensors]
    variants: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
        "backend.fff, numpy": (lambda x: chosen.fff(x, params), arrays),
        "fffcore.fff, numpy": (lambda x: fffcore.fff(x, params, backend=backend), arrays),
        "fffcore.fff, torch": (lambda x: fffcore.fff(x, params, backend=backend), tensors),
    }
    for call, inputs in variants.values():  # warm-up
        for x in inputs:
            call(x)
    calls = {name: rotating(call, inputs) for name, (call, inputs) in variants.items()}
    rounds = round_robin(calls, BRIDGE_ROUNDS, number=BRIDGE_CALLS)
    medians = {name: statistics.median(values) for name, values in rounds.items()}

    def added(slower: str, faster: str) -> float:
        return statistics.median(a - b for a, b in zip(rounds[slower], rounds[faster], strict=True))

    return {
        "backend": backend,
        "seconds": medians,
        "bridge_over_numpy_call": added("fffcore.fff, torch", "fffcore.fff, numpy"),
        "bridge_over_backend_call": added("fffcore.fff, torch", "backend.fff, numpy"),
    }


def theoretical_limit(params: FFFParams) -> float:
    """Dense hidden neurons over the neurons one row visits: no FFF can beat dense by more, per row."""
    return HIDDEN / (params.trees * (params.depth + 1))


def summarise(batch: int, measured: list[Measured], limit: float) -> dict[str, Any]:
    """The best dense layer and each FFF variant's speed-up over it; ratios above ``limit`` are flagged."""
    dense = [m for m in measured if m.kind == "dense" and m.seconds]
    best = min(dense, key=lambda m: m.seconds or 0.0) if dense else None
    speedups: dict[str, float] = {}
    problems: list[str] = []
    for m in measured:
        if m.kind == "fff" and m.seconds and best is not None and best.seconds:
            ratio = best.seconds / m.seconds
            if ratio > limit:
                problems.append(f"{m.variant}: {ratio:.0f}x exceeds the theoretical {limit:.0f}x: a measurement error")
            else:
                speedups[m.variant] = ratio
    return {
        "batch": batch,
        "best_dense": None if best is None else best.variant,
        "best_dense_seconds": None if best is None else best.seconds,
        "speedup_vs_best_dense": speedups,
        "problems": problems,
        "measured": [asdict(m) for m in measured],
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"FFFInference on {report['device']} tensors: width {WIDTH}, depth {report['depth']}, float32; "
        f"dense hidden {HIDDEN}; fresh input per call",
    ]
    for entry in report["batches"]:
        lines.append(f"\nbatch {entry['batch']} (best dense: {entry['best_dense']})")
        for m in entry["measured"]:
            if m["seconds"] is None:
                lines.append(f"  {m['variant']:<34} {m['error'] or m['check']}")
                continue
            ratio = entry["speedup_vs_best_dense"].get(m["variant"])
            served = f" [{m['backend']}]" if m["backend"] else ""
            shown = f"{ratio:8.1f}x" if ratio is not None else " " * 9
            lines.append(f"  {m['variant'] + served:<34} {m['seconds'] * 1e6:12.1f} us {shown}")
        for problem in entry["problems"]:
            lines.append(f"  ! {problem}")
    bridge = report.get("bridge")
    if bridge:
        seconds = bridge["seconds"]
        lines.append(
            f"\nbatch 1, {bridge['backend']}: backend.fff on numpy {seconds['backend.fff, numpy'] * 1e6:.1f} us, "
            f"fffcore.fff on numpy {seconds['fffcore.fff, numpy'] * 1e6:.1f} us, "
            f"on a torch tensor {seconds['fffcore.fff, torch'] * 1e6:.1f} us: the bridge adds "
            f"{bridge['bridge_over_numpy_call'] * 1e6:.2f} us "
            f"({bridge['bridge_over_backend_call'] * 1e6:.2f} us over the backend called directly)"
        )
    lines.append(f"\ntheoretical limit {report['theoretical_limit']:.0f}x; {report['threads']}")
    load = report.get("load_average")
    if load:
        lines.append(f"load average before/after: {load['before']} / {load['after']} on {report['cores']} cores")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batches", type=lambda text: tuple(int(b) for b in text.split(",")), default=None)
    parser.add_argument("--depth", type=int, default=DEPTH)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    arguments = parser.parse_args(argv)

    import torch

    from fffcore.benchmarks.machine import available_cores, describe_machine, load_average, pin_threads

    cores = available_cores()
    threads = pin_threads(cores)
    params = FFFParams.random(WIDTH, WIDTH, arguments.depth, seed=0)
    device = arguments.device
    if device == "cuda" and not torch.cuda.is_available():
        print("torch sees no CUDA device", file=sys.stderr)
        return 2
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    batches = arguments.batches or (CPU_BATCHES if device == "cpu" else (1, 128, 4096, 16384))
    limit = theoretical_limit(params)
    load_before = load_average()
    entries = []
    for batch in batches:
        print(f"batch {batch} ...", flush=True)
        pool = make_pool(batch, WIDTH, pool_size(batch, WIDTH), device)
        measured = measure_fff(params, pool, device, synchronize)
        measured += measure_dense_cpu(pool, cores) if device == "cpu" else measure_dense_cuda(pool, synchronize)
        entries.append(summarise(batch, measured, limit))
    report: dict[str, Any] = {
        "device": device,
        "depth": arguments.depth,
        "width": WIDTH,
        "hidden": HIDDEN,
        "cores": cores,
        "threads": ", ".join(f"{name}: {value}" for name, value in threads.items()),
        "theoretical_limit": limit,
        "batches": entries,
    }
    if device == "cpu" and 1 in batches:
        report["bridge"] = bridge_overhead(params)
    report["load_average"] = {"before": load_before, "after": load_average()}
    report["machine"] = describe_machine(threads)
    if device == "cuda":
        report["machine"]["gpu"] = torch.cuda.get_device_name()
    print(format_report(report))
    if arguments.json is not None:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {arguments.json}")
    wrong = any(m["check"].startswith("WRONG") or m["error"] for e in entries for m in e["measured"])
    flagged = any(e["problems"] for e in entries)
    return 1 if wrong or flagged else 0


if __name__ == "__main__":
    sys.exit(main())
