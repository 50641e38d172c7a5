"""Soak: many mixed calls over every backend available here, watching memory, file descriptors and threads.

    python -m fffcore.benchmarks.soak                    # 100,000 calls
    python -m fffcore.benchmarks.soak --calls 20000 --json soak.json

The calls cycle through every available CPU backend, every dtype it declares, ``fff`` and
``cmm``, numpy arrays and torch tensors (where torch is installed), batches from 0 to 1500 rows
(across the numba kernels' thresholds) and several layers, from the main thread and from a pool
of threads at once. Each case's first result is kept, and every later result of the same case
must be bit-identical to it: a soak that drifts is a failure, not a slow run.

Reported at the start (after one warm-up pass over every case, which compiles kernels and
fills caches), and at the end: resident memory (VmRSS), open file descriptors and the
process's threads (the kernel's count, which includes numba's and torch's pools). What grows
between the two is what a long-running server would leak.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Batch sizes of the mix: empty, one row, the small-kernel range, blocks, and past the parallel threshold.
BATCHES = (0, 1, 3, 8, 9, 64, 65, 200, 1500)
#: Layers of the mix: (d_in, d_out, depth, trees).
LAYERS = ((32, 16, 5, 1), (64, 64, 9, 2), (768, 768, 11, 1))
#: Threads calling at once in the threaded part of the mix.
THREADS = 4


@dataclass(frozen=True)
class Snapshot:
    """What the process holds at one moment."""

    rss_mib: float
    open_fds: int
    threads: int


@dataclass(frozen=True)
class Case:
    backend: str
    dtype: str
    layer: int
    batch: int
    array_type: str
    operation: str


def snapshot() -> Snapshot:
    """Resident memory, open file descriptors and OS threads of this process (Linux /proc)."""
    status = Path("/proc/self/status").read_text().splitlines()
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in status if ":" in line}
    rss_kib = float(fields["VmRSS"].split()[0])
    return Snapshot(round(rss_kib / 1024, 1), len(os.listdir("/proc/self/fd")), int(fields["Threads"]))


def available_cases() -> list[Case]:
    """Every (backend, dtype, layer, batch, array type, operation) of the mix that can run here."""
    import importlib.util

    import fffcore

    torch_here = importlib.util.find_spec("torch") is not None
    cases = []
    for row in fffcore.list_backends():
        if not row.available or "cpu" not in row.devices:
            continue
        for dtype in row.dtypes:
            kinds = ["numpy"] if dtype != "bfloat16" else []
            if torch_here:
                kinds.append("torch")
            for layer in range(len(LAYERS)):
                for batch in BATCHES:
                    if LAYERS[layer][0] == 768 and batch > 65:
                        continue  # large batches of the paper's layer would take most of the soak's time
                    for kind in kinds:
                        for operation in ("fff", "cmm"):
                            cases.append(Case(row.name, dtype, layer, batch, kind, operation))
    return cases


class Mix:
    """The arrays of every case, built once, and each case's first result."""

    def __init__(self, cases: Sequence[Case], seed: int = 0) -> None:
        import fffcore

        self.cases = list(cases)
        rng = np.random.default_rng(seed)
        self.params: dict[tuple[int, str, str], Any] = {}
        self.inputs: dict[Case, Any] = {}
        for case in self.cases:
            d_in, d_out, depth, trees = LAYERS[case.layer]
            key = (case.layer, case.dtype, case.array_type)
            if key not in self.params:
                base = fffcore.FFFParams.random(d_in, d_out, depth, trees, dtype="float32", seed=case.layer)
                self.params[key] = _in_array_type(base, case.dtype, case.array_type)
            x = rng.standard_normal((case.batch, d_in)).astype(np.float32)
            self.inputs[case] = _input_in(x, case.dtype, case.array_type)
        self.first: dict[Case, tuple[np.ndarray, ...]] = {}
        self._lock = threading.Lock()

    def call(self, case: Case) -> None:
        """One call; the first result of a case is kept, later ones must match it bit for bit."""
        import fffcore

        params = self.params[(case.layer, case.dtype, case.array_type)]
        function = fffcore.fff if case.operation == "fff" else fffcore.cmm
        result = function(self.inputs[case], params, backend=case.backend)
        parts = tuple(_as_numpy(part) for part in (result if isinstance(result, tuple) else (result,)))
        with self._lock:
            first = self.first.setdefault(case, parts)
        for kept, now in zip(first, parts, strict=True):
            if not np.array_equal(kept, now, equal_nan=True):
                raise AssertionError(f"{case}: a later call returned a different result than the first")


def _in_array_type(params: Any, dtype: str, kind: str) -> Any:
    import fffcore

    if kind == "numpy":
        return params.astype(dtype)
    import torch

    arrays = (params.w_in, params.b_in, params.w_out)
    return fffcore.FFFParams(*(torch.from_numpy(np.array(a)).to(getattr(torch, dtype)) for a in arrays))


def _input_in(x: np.ndarray, dtype: str, kind: str) -> Any:
    if kind == "numpy":
        return x.astype(dtype)
    import torch

    return torch.from_numpy(x).to(getattr(torch, dtype))


def _as_numpy(part: Any) -> np.ndarray:
    if isinstance(part, np.ndarray):
        return part
    import torch

    return part.float().numpy() if part.dtype == torch.bfloat16 else part.numpy()


@dataclass(frozen=True)
class SoakResult:
    calls: int
    threaded_calls: int
    seconds: float
    backends: list[str]
    cases: int
    start: Snapshot
    end: Snapshot
    machine: str


def soak(calls: int, seed: int = 0, progress: Any = None) -> SoakResult:
    """Warm up on every case, snapshot, run ``calls`` calls (a quarter from :data:`THREADS` threads), snapshot."""
    cases = available_cases()
    mix = Mix(cases, seed)
    for case in cases:  # warm-up: compile kernels, fill caches, keep each case's first result
        mix.call(case)
    start = snapshot()
    rng = np.random.default_rng(seed + 1)
    order = rng.integers(0, len(cases), calls)
    serial = calls - calls // 4
    began = time.perf_counter()
    for done, index in enumerate(order[:serial]):
        mix.call(cases[index])
        if progress is not None and done % 10000 == 0:
            progress(done, calls)
    with ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(mix.call, cases[index]) for index in order[serial:]]:
            future.result()
    seconds = time.perf_counter() - began
    end = snapshot()
    from fffcore.benchmarks.machine import cpu_model

    return SoakResult(
        calls=calls,
        threaded_calls=calls - serial,
        seconds=round(seconds, 1),
        backends=sorted({case.backend for case in cases}),
        cases=len(cases),
        start=start,
        end=end,
        machine=f"{cpu_model()}, {os.cpu_count()} cores",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fffcore.benchmarks.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100_000, help="calls after the warm-up (default 100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the result here")
    arguments = parser.parse_args(argv)
    if arguments.calls < 1:
        parser.error(f"--calls: expected a positive integer, got {arguments.calls}")

    def progress(done: int, total: int) -> None:
        print(f"  {done}/{total} calls", file=sys.stderr, flush=True)

    result = soak(arguments.calls, arguments.seed, progress)
    print(f"{result.calls} calls ({result.threaded_calls} from {THREADS} threads at once) in {result.seconds} s")
    print(f"backends: {', '.join(result.backends)}; {result.cases} cases; {result.machine}")
    print(f"{'':<18}{'start':>10}{'end':>10}")
    for name, unit in (("rss_mib", "MiB"), ("open_fds", ""), ("threads", "")):
        label = f"{name.replace('_', ' ')}{f' ({unit})' if unit else ''}"
        print(f"{label:<18}{getattr(result.start, name):>10}{getattr(result.end, name):>10}")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {arguments.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
