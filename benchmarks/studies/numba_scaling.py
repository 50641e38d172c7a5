"""The numba backend's headline ratio, batch-1 latency, compile times, and scaling tables.

Run from the repository root (each section can be run alone)::

    python -m benchmarks.studies.numba_scaling headline   # ratio to the best dense layer and to the reference
    python -m benchmarks.studies.numba_scaling latency    # one row through fffcore.fff, dispatch included
    python -m benchmarks.studies.numba_scaling breakdown  # where the time goes, stage by stage, one thread
    python -m benchmarks.studies.numba_scaling compile    # cold and warm-cache first calls in fresh processes
    python -m benchmarks.studies.numba_scaling depth      # time against depth 0..14
    python -m benchmarks.studies.numba_scaling batch      # time against batch 1..16384
    python -m benchmarks.studies.numba_scaling threads    # serial, parallel, gated at medium batches
    python -m benchmarks.studies.numba_scaling threads --busy 2   # the same beside 2 busy processes
    python -m benchmarks.studies.numba_scaling all

The machine may be shared, so every ratio is taken within one repetition
(the implementations run back to back, interleaved) and the median over
repetitions is reported, next to the median times. "Dense" is the faster of
numpy ``gelu(x @ W1) @ W2`` and torch ``Linear-GELU-Linear`` built by
:mod:`fffcore.benchmarks.baselines`, measured in the same repetition.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import fffcore
from fffcore import FFFParams
from fffcore.benchmarks.baselines import make_dense_numpy, make_dense_torch
from fffcore.benchmarks.timing import WALL, host_stopwatch, rotating, round_robin, seconds_per_call

WIDTH = 768
DEPTH = 11
BATCH = 4096
HIDDEN = 3072  # BERT-base's feedforward width, the headline's dense layer
#: CPU time of this process: what a descheduled process does not inflate (the breakdown's stages run on one thread).
CPU = host_stopwatch(time.process_time)


def sized_seconds_per_call(call: Callable[[], Any], min_seconds: float = 0.02) -> float:
    """Mean seconds of one call over enough back-to-back calls to last ``min_seconds`` (the number of
    calls doubles, at least, until a run of them lasts that long; that run is the sample)."""
    number = 1
    while True:
        elapsed = seconds_per_call(call, number) * number
        if elapsed >= min_seconds:
            return elapsed / number
        number = max(number * 2, int(number * min_seconds / max(elapsed, 1e-9)) + 1)


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int, min_seconds: float = 0.02) -> dict[str, list[float]]:
    """Seconds per call of each implementation, ``repeats`` rounds, the implementations in turn each round,
    after one warm-up round (compilation, first allocations, BLAS thread start)."""
    return round_robin(calls, repeats, warm_up_rounds=1, sample=lambda call: sized_seconds_per_call(call, min_seconds))


def dense_calls(x: np.ndarray, hidden: int, d_out: int) -> dict[str, Callable[[], Any]]:
    import torch

    dense_numpy = make_dense_numpy(x.shape[1], hidden, d_out, str(x.dtype))
    dense_torch = make_dense_torch(x.shape[1], hidden, d_out, str(x.dtype))
    x_torch = torch.from_numpy(x)
    return {"dense numpy": lambda: dense_numpy(x), "dense torch": lambda: dense_torch(x_torch)}


def best_dense_times(times: dict[str, list[float]]) -> list[float]:
    """Per repetition: the faster dense layer's time."""
    return [min(a, b) for a, b in zip(times["dense numpy"], times["dense torch"], strict=True)]


def best_dense_ratios(times: dict[str, list[float]], name: str) -> list[float]:
    """Per repetition: the faster dense layer's time over ``name``'s."""
    return [min(a, b) / t for a, b, t in zip(times["dense numpy"], times["dense torch"], times[name], strict=True)]


def layer_and_input(depth: int, batch: int, trees: int = 1, dtype: str = "float32") -> tuple[FFFParams, np.ndarray]:
    params = FFFParams.random(WIDTH, WIDTH, depth, trees, dtype=dtype, seed=0)
    x = np.random.default_rng(1).standard_normal((batch, WIDTH)).astype(dtype)
    return params, x


def naive_walk() -> Callable[..., None]:
    """The starting point the kernels are measured against: one row at a time, parallel over rows.

    Each row walks its own path, a dot product per level and an axpy into its
    output row, gelu with bias; compiled here (not cached) with the backend's
    fast-math flags.
    """
    import math

    from numba import njit, prange

    from fffcore.backends.numba.kernels import SAFE_FASTMATH

    @njit(parallel=True, fastmath=SAFE_FASTMATH)
    def walk(x, w_in, b_in, w_out, y):
        levels = int(math.log2(w_in.shape[1] + 1) + 0.5)
        for r in prange(x.shape[0]):
            for j in range(y.shape[1]):
                y[r, j] = 0
            node = 0
            for _ in range(levels):
                s = y.dtype.type(0)
                for i in range(x.shape[1]):
                    s += x[r, i] * w_in[0, node, i]
                s += b_in[0, node]
                a = y.dtype.type(0.5 * s * math.erfc(-s * 0.7071067811865476))
                for j in range(y.shape[1]):
                    y[r, j] += a * w_out[0, node, j]
                node = 2 * node + 1 + (1 if s > 0 else 0)

    return walk


def headline(repeats: int) -> dict[str, float]:
    """float32, width 768 in and out, depth 11, 1 tree, batch 4096, every thread numba was given."""
    params, x = layer_and_input(DEPTH, BATCH)
    naive = naive_walk()
    y_naive = np.empty((BATCH, WIDTH), np.float32)
    calls = {
        **dense_calls(x, HIDDEN, WIDTH),
        "reference": lambda: fffcore.fff(x, params, backend="reference"),
        "naive walk": lambda: naive(x, params.w_in, params.b_in, params.w_out, y_naive),
        "numba fff": lambda: fffcore.fff(x, params, backend="numba"),
        "numba cmm": lambda: fffcore.cmm(x, params, backend="numba"),
    }
    times = interleaved(calls, repeats, min_seconds=0.05)
    dense = best_dense_ratios(times, "numba fff")
    reference = [r / t for r, t in zip(times["reference"], times["numba fff"], strict=True)]
    naive_ratio = best_dense_ratios(times, "naive walk")
    import numba

    print(
        f"headline: float32, d_in = d_out = {WIDTH}, depth {DEPTH}, 1 tree, batch {BATCH}, "
        f"numba threads {numba.get_num_threads()}, dense hidden {HIDDEN}, {repeats} repetitions"
    )
    for name, values in times.items():
        print(f"  {name:12s} median {statistics.median(values) * 1e3:9.3f} ms   min {min(values) * 1e3:9.3f} ms")
    print(
        f"  best dense / numba fff: median {statistics.median(dense):6.1f}x  (per repetition: "
        + ", ".join(f"{r:.1f}" for r in dense)
        + ")"
    )
    print(f"  reference / numba fff:  median {statistics.median(reference):6.1f}x")
    print(f"  best dense / naive walk: median {statistics.median(naive_ratio):5.1f}x  (the starting point)")
    return {"dense_ratio": statistics.median(dense), "reference_ratio": statistics.median(reference)}


def latency(repeats: int) -> None:
    """One row through ``fffcore.fff`` (validation, backend selection, dispatch, kernel), in microseconds."""
    params, x = layer_and_input(DEPTH, 1)
    row = x[0]
    calls = {
        "fff(x[0]) automatic": lambda: fffcore.fff(row, params),
        "fff(x, backend=numba)": lambda: fffcore.fff(x, params, backend="numba"),
        "cmm(x, backend=numba)": lambda: fffcore.cmm(x, params, backend="numba"),
    }
    assert fffcore.resolve_backend(x, params).name == "numba"  # numba is the automatic choice
    times = interleaved(calls, repeats, min_seconds=0.05)
    print(f"batch-1 latency: float32, width {WIDTH}, depth {DEPTH}, 1 tree ({repeats} repetitions)")
    for name, values in times.items():
        print(f"  {name:24s} median {statistics.median(values) * 1e6:8.1f} us   min {min(values) * 1e6:8.1f} us")


_FIRST_CALL = """
import json
import numpy as np, fffcore
from fffcore.benchmarks.timing import seconds_per_call
params = fffcore.FFFParams.random(768, 768, 11, 1, dtype="{dtype}", seed=0)
x = np.random.default_rng(1).standard_normal((4096, 768)).astype("{dtype}")
seconds = {{}}
for name, call in (
    ("fff 1 row (row groups, serial)", lambda: fffcore.fff(x[:1], params, backend="numba")),
    ("fff 64 rows (row groups, parallel)", lambda: fffcore.fff(x[:64], params, backend="numba")),
    ("fff 4096 rows (blocked walk, parallel)", lambda: fffcore.fff(x, params, backend="numba")),
    ("cmm 1 row", lambda: fffcore.cmm(x[:1], params, backend="numba")),
    ("cmm 64 rows", lambda: fffcore.cmm(x[:64], params, backend="numba")),
    ("cmm 4096 rows", lambda: fffcore.cmm(x, params, backend="numba")),
    ("fff 4096 rows, second call", lambda: fffcore.fff(x, params, backend="numba")),
):
    seconds[name] = seconds_per_call(call)
from fffcore.backends.numba.kernels import cache_statistics
print(json.dumps({{"seconds": seconds, **cache_statistics()}}))
"""

_WARMUP = """
import json, fffcore
from fffcore.benchmarks.timing import seconds_per_call
print(json.dumps({{"seconds": seconds_per_call(lambda: fffcore.warmup(["{dtype}"], ["numba"]))}}))
"""


def compile_times() -> None:
    """First calls in a fresh process (after ``import numba`` is paid by the first): with an empty cache
    (cold: compiles), then in a second process with the cache the first left (warm: loads); and
    ``fffcore.warmup`` of one dtype on an empty cache (every kernel, serial and parallel)."""
    for dtype in ("float32", "float64"):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache}
            print(f"first calls in fresh processes (NUMBA_CACHE_DIR={cache}, initially empty)")
            for label in ("cold", "warm cache"):
                seen = _run_python(_FIRST_CALL.format(dtype=dtype), env)
                calls = ", ".join(f"{name} {value:.3f} s" for name, value in seen["seconds"].items())
                print(f"  {dtype} {label} (cache hits {seen['hits']}, misses {seen['misses']}): {calls}")
        with tempfile.TemporaryDirectory() as cache:
            seen = _run_python(_WARMUP.format(dtype=dtype), {**os.environ, "NUMBA_CACHE_DIR": cache})
            print(f"  {dtype} fffcore.warmup on an empty cache: {seen['seconds']:.1f} s")


def _run_python(source: str, env: dict[str, str]) -> Any:
    """Run ``source`` in a fresh interpreter; its last line of output, parsed as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_thread_cpu_seconds(call: Callable[[], Any], repeats: int) -> float:
    """Median CPU seconds of ``call`` with Numba limited to one thread (no waiting on other threads)."""
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        samples = round_robin({"call": call}, repeats, warm_up_rounds=1, stopwatch=CPU)["call"]
    finally:
        numba.set_num_threads(previous)
    return statistics.median(samples)


def depth_table(repeats: int, batch: int) -> None:
    """numba fff against depth 0..14 at ``batch`` rows, beside a dense layer of as many neurons (2**(D+1) - 1).

    Besides the wall time on every thread (what a user sees, waits included),
    the CPU time on one thread shows the work itself, which should grow
    linearly with depth.
    """
    print(f"time against depth: float32, width {WIDTH}, 1 tree, batch {batch}; dense hidden = nodes = 2**(D+1)-1")
    print(
        f"  {'depth':>5} {'nodes':>6} {'numba ms':>10} {'dense ms':>10} {'dense/numba':>12} "
        f"{'1-thread CPU ms':>16} {'per level':>10}"
    )
    for depth in range(0, 15):
        params, x = layer_and_input(depth, batch)

        def numba_call(x: np.ndarray = x, params: FFFParams = params) -> Any:
            return fffcore.fff(x, params, backend="numba")

        calls = {**dense_calls(x, params.n_nodes, WIDTH), "numba": numba_call}
        rounds = repeats if depth < 13 else max(1, repeats // 2)
        times = interleaved(calls, rounds, min_seconds=0.02)
        numba_ms = statistics.median(times["numba"]) * 1e3
        dense_ms = statistics.median(best_dense_times(times)) * 1e3
        ratio = statistics.median(best_dense_ratios(times, "numba"))
        cpu_ms = one_thread_cpu_seconds(numba_call, max(3, repeats)) * 1e3
        print(
            f"  {depth:5d} {params.n_nodes:6d} {numba_ms:10.3f} {dense_ms:10.3f} {ratio:11.1f}x "
            f"{cpu_ms:16.3f} {cpu_ms / (depth + 1):10.3f}",
            flush=True,
        )


def batch_table(repeats: int) -> None:
    """numba fff against batch 1..16384 at depth 11, beside the headline's dense layer (hidden 3072)."""
    params, _ = layer_and_input(DEPTH, 1)
    print(f"time against batch: float32, width {WIDTH}, depth {DEPTH}, 1 tree; dense hidden {HIDDEN}")
    print(f"  {'batch':>6} {'numba ms':>10} {'us/row':>8} {'dense ms':>10} {'dense/numba':>12}")
    for batch in (1, 4, 16, 64, 256, 1024, 4096, 16384):
        x = np.random.default_rng(1).standard_normal((batch, WIDTH)).astype(np.float32)
        calls = {**dense_calls(x, HIDDEN, WIDTH), "numba": lambda x=x: fffcore.fff(x, params, backend="numba")}
        times = interleaved(calls, repeats, min_seconds=0.02)
        numba_ms = statistics.median(times["numba"]) * 1e3
        dense_ms = statistics.median(best_dense_times(times)) * 1e3
        ratio = statistics.median(best_dense_ratios(times, "numba"))
        print(
            f"  {batch:6d} {numba_ms:10.3f} {numba_ms * 1e3 / batch:8.2f} {dense_ms:10.3f} {ratio:11.1f}x", flush=True
        )


def breakdown(repeats: int) -> None:
    """Where the fused layer's time goes, stage by stage, on one thread (CPU seconds of this process).

    Calls the kernel's stages one by one (the same compiled code the backend
    runs, serially), on the headline case and on a "one path" twin of it whose
    every row takes the leftmost path (w_in = 0, b_in = -1), so every weight
    row it reads is shared and cache-resident: the difference between the two
    is the cost of fetching weights that rows do not share.
    """
    from fffcore.backends.numba import kernels

    params, x = layer_and_input(DEPTH, BATCH)
    one_path = FFFParams(np.zeros_like(params.w_in), -np.ones_like(params.b_in), params.w_out, params.activation)
    rows = x.view()
    rows.flags.writeable = False
    levels = DEPTH + 1
    block = kernels.DEFAULT_BLOCK
    split = kernels.choose_split(BATCH, levels, block)
    code = list(fffcore.spec.ACTIVATIONS).index(params.activation)
    blocks = range(0, BATCH, block)

    def stages(layer: FFFParams) -> dict[str, float]:
        logits = np.empty((BATCH, 1, levels), x.dtype)
        nodes = np.empty((BATCH, 1, levels), np.int64)
        node_at_split = np.zeros(BATCH, np.int64)
        y = np.empty((BATCH, WIDTH), x.dtype)
        w_in, b_in, w_out = layer.w_in, layer.b_in, layer.w_out
        seconds = {}
        start = CPU.start()
        for lo in blocks:
            kernels._top_block(
                rows, w_in, b_in, True, 0, 0, logits, nodes, lo, min(BATCH, lo + block), split, node_at_split
            )
        seconds[f"top walk, levels 0-{split - 1}"] = CPU.stop(start)
        start = CPU.start()
        sorted_rows = kernels._sort_by_node(node_at_split, layer.n_nodes)
        seconds["sort by subtree"] = CPU.stop(start)
        orders = [sorted_rows[lo : lo + block].copy() for lo in blocks]
        start = CPU.start()
        for order in orders:
            kernels._deep_block(
                rows, w_in, b_in, True, 0, 0, logits, nodes, order, split, node_at_split, y, w_out, code, False, True
            )
        seconds[f"deep walk, levels {split}-{levels - 1}"] = CPU.stop(start)
        start = CPU.start()
        for order in orders:
            kernels._output_rows(y, order, logits, nodes, w_out, 0, code, True)
        seconds["output, all levels"] = CPU.stop(start)
        return seconds

    stages(params)  # compile or load
    runs = {"random": [stages(params) for _ in range(repeats)], "one path": [stages(one_path) for _ in range(repeats)]}
    print(
        f"breakdown: float32, width {WIDTH}, depth {DEPTH}, batch {BATCH}, block {block}, split {split}, one thread, "
        f"CPU ms (median of {repeats}); ns per row and level in brackets (per row for the sort)"
    )
    print(f"  {'stage':28s} {'random paths':>22s} {'one path (cached)':>22s}")
    for stage in runs["random"][0]:
        level_count = {"top": split, "deep": levels - split, "output,": levels}.get(stage.split()[0], 1)
        cells = []
        for kind in ("random", "one path"):
            ms = statistics.median(run[stage] for run in runs[kind]) * 1e3
            cells.append(f"{ms:9.2f} ({ms * 1e6 / (BATCH * level_count):6.0f} ns)")
        print(f"  {stage:28s} {cells[0]:>22s} {cells[1]:>22s}")
    for kind in ("random", "one path"):
        total = statistics.median(sum(run.values()) for run in runs[kind]) * 1e3
        print(f"  {'total ' + kind:28s} {total:9.2f} ms")
    # The floor no kernel can go under: reading x once and writing y once (25 MiB here).
    y = np.empty((BATCH, WIDTH), x.dtype)
    floor = round_robin({"floor": lambda: np.copyto(y, x)}, repeats, stopwatch=CPU)["floor"]
    print(f"  {'floor: read x, write y':28s} {statistics.median(floor) * 1e3:9.2f} ms (np.copyto into a warm array)")


THREAD_BATCHES = (8, 16, 32, 64, 128, 256, 512, 1024)


def thread_table(busy: int, seconds: float = 0.3) -> None:
    """Medium batches: the serial kernel, the parallel one, and what ``fffcore.fff`` chooses
    (:class:`fffcore.backends.numba.calls.ThreadChoice`), each call timed on its own, on a fresh
    input from a pool; optionally beside ``busy`` processes that each spin on a core."""
    from fffcore.backends.numba import calls, kernels, sizes

    params = FFFParams.random(WIDTH, WIDTH, DEPTH, dtype="float32", seed=0)
    arguments = calls._layer_arguments(params)

    def serial(x: np.ndarray) -> Any:
        if len(x) < sizes.BLOCKED_MIN_ROWS:
            return calls._row_groups(x, arguments, False)
        return kernels.run_fff(x, *arguments)

    def parallel(x: np.ndarray) -> Any:
        if len(x) < sizes.BLOCKED_MIN_ROWS:
            return calls._row_groups(x, arguments, True)
        return kernels.run_fff(x, *arguments, parallel=True)

    variants = {"serial": serial, "parallel": parallel, "fffcore.fff": lambda x: fffcore.fff(x, params)}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0.0)
        print(
            f"threads: float32, width {WIDTH}, depth {DEPTH}, {busy} busy processes beside; microseconds per call "
            f"(each call timed alone, a fresh input from a pool of 16), {seconds:.1f} s per variant"
        )
        print(f"  {'batch':>6s}" + "".join(f"  {name + ' mean':>18s} {'p90':>8s}" for name in variants))
        rng = np.random.default_rng(2)
        for batch in THREAD_BATCHES:
            pool = [calls._read_only_rows(rng.standard_normal((batch, WIDTH)), "float32") for _ in range(16)]
            line = f"  {batch:6d}"
            for call in variants.values():
                call(pool[0])
                next_call = rotating(call, pool)
                taken = []
                began = WALL.start()
                while WALL.stop(began) < seconds:
                    taken.append(seconds_per_call(next_call))
                line += f"  {statistics.fmean(taken) * 1e6:18.1f} {np.percentile(taken, 90) * 1e6:8.1f}"
            print(line, flush=True)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "section", choices=("headline", "latency", "breakdown", "compile", "depth", "batch", "threads", "all")
    )
    parser.add_argument("--busy", type=int, default=0, help="threads: busy processes to run beside (default 0)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repetitions (default 7)")
    parser.add_argument("--depth-batch", type=int, default=BATCH, help="batch of the depth table (default 4096)")
    args = parser.parse_args(argv)
    every = ("headline", "latency", "breakdown", "compile", "depth", "batch", "threads")
    sections = every if args.section == "all" else (args.section,)
    for section in sections:
        if section == "headline":
            headline(args.repeats)
        elif section == "latency":
            latency(args.repeats)
        elif section == "breakdown":
            breakdown(args.repeats)
        elif section == "compile":
            compile_times()
        elif section == "depth":
            depth_table(args.repeats, args.depth_batch)
        elif section == "threads":
            thread_table(args.busy)
        else:
            batch_table(args.repeats)
        print(flush=True)


if __name__ == "__main__":
    main()
