"""Small batches from torch tensors: what one ``FFFInference`` call costs, launches and allocates.

Run by the GPU benchmark (``benchmarks/studies/gpu_bench.py``), or alone::

    python -m benchmarks.studies.small_batches --device cuda --json small.json

At width 768, depth 11, batches 1 and 128, float32 and bfloat16, for ``FFFInference`` (the automatic
choice of backend) and the dense layer it replaces (``Linear(768, 3072) -> GELU -> Linear(3072, 768)``):

* ``fff_seconds``, ``dense_seconds``: eager calls, one fresh input per call from a pool;
* ``fff_graph_seconds``, ``dense_graph_seconds``: the same call captured once in a CUDA graph
  (``torch.cuda.graph``) and replayed, the input copied into the captured one first; the replayed
  output is checked against the eager one;
* ``fff_compiled_seconds``: a module holding ``FFFInference`` under
  ``torch.compile(mode="reduce-overhead")`` (torch's CUDA graphs), its output checked likewise;
* ``kernel_launches``, ``torch_allocations``, ``cupy_allocations``: per eager call, counted by
  torch's profiler (CUDA kernels), torch's allocator statistics and a cupy memory hook.

A step that fails (a capture that is refused, a compile that raises) is recorded with its reason and
the rest still runs. On the CPU (``--device cpu``, the rehearsal) the eager and compiled calls run and
the CUDA-only columns stay empty with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fffcore.benchmarks.timing import WALL
from fffcore.params import FFFParams

WIDTH = 768
DEPTH = 11
HIDDEN = 3072
BATCHES = (1, 128)
DTYPES = ("float32", "bfloat16")
#: Distinct inputs the eager calls rotate through (paths and cached weights differ between calls).
POOL = 16
#: Calls counted by the profiler and the allocation counters.
COUNTED_CALLS = 10
#: FFF must be at least this many times faster than dense (eager against eager) at each small batch.
TARGET_SPEEDUP = 4.0


@dataclass
class SmallBatchResult:
    """One (dtype, batch): seconds per call (medians), what an eager call launches and allocates, errors."""

    dtype: str
    batch: int
    backend: str = ""
    fff_seconds: float | None = None
    fff_graph_seconds: float | None = None
    fff_compiled_seconds: float | None = None
    dense_seconds: float | None = None
    dense_graph_seconds: float | None = None
    speedup_vs_dense: float | None = None
    kernel_launches: float | None = None
    torch_allocations: float | None = None
    cupy_allocations: float | None = None
    graph_matches_eager: bool | None = None
    compiled_matches_eager: bool | None = None
    #: What was not measured here and why (the CUDA-only columns on the CPU).
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def captured(call: Callable[[Any], Any], example: Any) -> tuple[Callable[[Any], Any], Any]:
    """``call`` captured in a CUDA graph on a copy of ``example``: (replay(x) -> output, the graph).

    ``replay`` copies ``x`` into the captured input and replays; it returns the captured output tensor,
    which the next replay overwrites. Warm-up calls run on a side stream first, as torch requires.
    """
    import torch

    static_x = example.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            call(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = call(static_x)

    def replay(x: Any) -> Any:
        static_x.copy_(x)
        graph.replay()
        return static_y

    return replay, graph


def launches_per_call(call: Callable[[], Any]) -> float:
    """CUDA kernels per call, counted by torch's profiler over COUNTED_CALLS calls (copies and sets not counted)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        for _ in range(COUNTED_CALLS):
            call()
        torch.cuda.synchronize()
    kernels = [
        event
        for event in profiler.events()
        if event.device_type == torch.autograd.DeviceType.CUDA and not event.name.startswith(("Memcpy", "Memset"))
    ]
    return len(kernels) / COUNTED_CALLS


def allocations_per_call(call: Callable[[], Any]) -> tuple[float, float | None]:
    """(torch allocations, cupy pool allocations) per call over COUNTED_CALLS calls (cupy: None without cupy)."""
    import torch

    counter = _cupy_counter()
    before = torch.cuda.memory_stats().get("allocation.all.allocated", 0)
    if counter is None:
        for _ in range(COUNTED_CALLS):
            call()
    else:
        with counter:
            for _ in range(COUNTED_CALLS):
                call()
    torch_count = (torch.cuda.memory_stats().get("allocation.all.allocated", 0) - before) / COUNTED_CALLS
    return torch_count, None if counter is None else counter.count / COUNTED_CALLS


def _cupy_counter() -> Any:
    """A cupy memory hook counting allocations from cupy's pool (a context manager), or None without cupy."""
    try:
        import cupy
    except ImportError:
        return None

    class AllocationCounter(cupy.cuda.MemoryHook):
        name = "fffcore_allocation_counter"

        def __init__(self) -> None:
            self.count = 0

        def malloc_preprocess(self, **kwargs: Any) -> None:
            self.count += 1

    return AllocationCounter()


#: ``timed(call, inputs)``: median seconds per call of ``call`` on each of ``inputs`` in turn.
Timer = Callable[[Callable[[Any], Any], Sequence[Any]], float]


def measure(dtype: str, batch: int, device: str, timed: Timer) -> SmallBatchResult:
    """Every column of one (dtype, batch); never raises (each failure is an entry of ``errors``)."""
    import torch

    import fffcore
    from fffcore.benchmarks.baselines import make_dense_torch
    from fffcore.torch import FFFInference

    result = SmallBatchResult(dtype=dtype, batch=batch)
    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator(device=device).manual_seed(batch)
    pool = [torch.randn((batch, WIDTH), generator=generator, device=device, dtype=torch_dtype) for _ in range(POOL)]
    params = FFFParams.random(WIDTH, WIDTH, DEPTH, seed=0)
    module = FFFInference(params, device=device, dtype=torch_dtype).eval()
    dense = make_dense_torch(WIDTH, HIDDEN, WIDTH, dtype=dtype, device=device)
    try:
        result.backend = fffcore.resolve_backend(pool[0], module.params(), None).name
        result.fff_seconds = timed(module, pool)
        result.dense_seconds = timed(dense, pool)
        result.speedup_vs_dense = result.dense_seconds / result.fff_seconds
    except Exception as error:
        result.errors.append(f"eager: {_one_line(error)}")
        return result

    if device != "cuda":
        result.skipped.append("kernel launches, allocations and CUDA graphs: need a CUDA device")
    else:
        one_call = lambda: module(pool[1])  # noqa: E731
        _try(result, "kernel launches", lambda: setattr(result, "kernel_launches", launches_per_call(one_call)))
        _try(result, "allocations", lambda: _set_allocations(result, one_call))
        _try(result, "fff CUDA graph", lambda: _time_graph(result, "fff", module, pool, True, timed))
        _try(result, "dense CUDA graph", lambda: _time_graph(result, "dense", dense, pool, False, timed))

    def compiled() -> None:
        call = torch.compile(_holder(module), mode="reduce-overhead")
        with torch.inference_mode():
            for x in pool[:3]:  # torch's CUDA graphs warm up, record, then replay from the third call
                call(x)
            # A replay on an input the warm-up and the recording never saw, against the eager call.
            result.compiled_matches_eager = bool(torch.equal(call(pool[3]).clone(), module(pool[3])))
            result.fff_compiled_seconds = timed(call, pool)

    _try(result, "torch.compile", compiled)
    return result


def _holder(layer: Any) -> Any:
    """A module holding ``layer``, of a class of its own: torch.compile keeps its compiled versions per
    code object, so compiling ``torch.nn.Sequential`` here would count against every other Sequential
    of the process (8 by default, then an error with ``fullgraph=True``)."""
    import torch

    class FFFHolder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            return self.inner(x)

    return FFFHolder(layer)


def _set_allocations(result: SmallBatchResult, call: Callable[[], Any]) -> None:
    result.torch_allocations, result.cupy_allocations = allocations_per_call(call)


def _time_graph(
    result: SmallBatchResult,
    which: str,
    call: Callable[[Any], Any],
    pool: Sequence[Any],
    check: bool,
    timed: Timer,
) -> None:
    """Capture ``call`` in a CUDA graph, time its replays and (``check``) compare a replay with the eager call."""
    import torch

    with torch.inference_mode():
        replay, _graph = captured(call, pool[0])
        if check:
            # An input the capture never saw: equal only if the replay ran the call's kernels on it.
            result.graph_matches_eager = bool(torch.equal(replay(pool[1]).clone(), call(pool[1])))
        setattr(result, f"{which}_graph_seconds", timed(replay, pool))


def _try(result: SmallBatchResult, what: str, step: Callable[[], None]) -> None:
    try:
        step()
    except Exception as error:  # one refused step must not end the run
        result.errors.append(f"{what}: {_one_line(error)}")


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def run(device: str, dtypes: Sequence[str] = DTYPES, batches: Sequence[int] = BATCHES) -> list[dict[str, Any]]:
    """Every (dtype, batch) on ``device``, as dictionaries for a results file (CUDA events on CUDA)."""
    from benchmarks.studies.gpu_bench import time_with, torch_event_stopwatch

    stopwatch = torch_event_stopwatch() if device == "cuda" else WALL

    def timed(call: Callable[[Any], Any], inputs: Sequence[Any]) -> float:
        return time_with(call, inputs, stopwatch)[0]

    return [asdict(measure(dtype, batch, device, timed)) for dtype in dtypes for batch in batches]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    arguments = parser.parse_args(argv)
    rows = run(arguments.device)
    for row in rows:
        cells = ", ".join(
            f"{name} {row[name] * 1e6:.1f} us"
            for name in ("fff_seconds", "fff_graph_seconds", "fff_compiled_seconds", "dense_seconds")
            if row[name] is not None
        )
        print(f"{row['dtype']} batch {row['batch']} ({row['backend']}): {cells}")
        for note in row["skipped"] + row["errors"]:
            print(f"  {note}")
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
