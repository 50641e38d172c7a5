"""Soak: many mixed calls over every backend available here, watching memory, file descriptors and threads.

    python -m benchmarks.studies.soak                    # 100,000 calls
    python -m benchmarks.studies.soak --calls 20000 --json soak.json

The calls cycle through every available CPU backend, every dtype it declares, ``fff`` and
``cmm``, numpy arrays and torch tensors (where torch is installed), batches from 0 to 1500 rows
(across the numba kernels' thresholds) and several layers, from the main thread and from a pool
of threads at once. Each case's first result is kept, and every later result of the same case
must be bit-identical to it: a soak that drifts is a failure, not a slow run.

Reported after one warm-up pass over every case (which compiles kernels and fills caches) and
after each of ``--parts`` equal parts of the calls: resident memory (VmRSS), open file
descriptors and the process's threads (the kernel's count, which includes numba's and torch's
pools). What keeps growing part after part is what a long-running server would leak.
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

from fffcore.benchmarks.timing import WALL

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


def settled_snapshot(limit: float = 2.0) -> Snapshot:
    """A snapshot once the thread count has held still for half a second (at most ``limit`` s): the
    OpenMP teams of threads that just finished wind down shortly after them, not at once."""
    began = WALL.start()
    last = snapshot()
    steady = 0
    while steady < 5 and WALL.stop(began) < limit:
        time.sleep(0.1)
        now = snapshot()
        steady = steady + 1 if now.threads == last.threads else 0
        last = now
    return last


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
    #: After the warm-up, then after each part of the calls.
    snapshots: list[Snapshot]
    machine: str


def soak(
    calls: int, seed: int = 0, parts: int = 4, progress: Any = None, cases: Sequence[Case] | None = None
) -> SoakResult:
    """Warm up on every case, snapshot, then run ``calls`` calls in ``parts`` equal parts (each with a
    quarter of its calls from :data:`THREADS` threads at once), snapshotting after each part: growth
    in the first parts only is a cache filling up; growth in every part is a leak."""
    cases = list(cases) if cases is not None else available_cases()
    mix = Mix(cases, seed)
    for case in cases:  # warm-up: compile kernels, fill caches, keep each case's first result
        mix.call(case)
    snapshots = [settled_snapshot()]
    order = np.random.default_rng(seed + 1).integers(0, len(cases), calls)
    began = WALL.start()
    done = threaded = 0
    for part in np.array_split(order, parts):
        serial = len(part) - len(part) // 4
        for index in part[:serial]:
            mix.call(cases[index])
            done += 1
            if progress is not None and done % 10000 == 0:
                progress(done, calls)
        with ThreadPoolExecutor(THREADS) as pool:
            for future in [pool.submit(mix.call, cases[index]) for index in part[serial:]]:
                future.result()
        done += len(part) - serial
        threaded += len(part) - serial
        snapshots.append(settled_snapshot())
    seconds = WALL.stop(began)
    from fffcore.benchmarks.machine import cpu_model

    return SoakResult(
        calls=calls,
        threaded_calls=threaded,
        seconds=round(seconds, 1),
        backends=sorted({case.backend for case in cases}),
        cases=len(cases),
        snapshots=snapshots,
        machine=f"{cpu_model()}, {os.cpu_count()} cores",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100_000, help="calls after the warm-up (default 100000)")
    parser.add_argument("--parts", type=int, default=4, help="snapshots taken along the way (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the result here")
    arguments = parser.parse_args(argv)
    if arguments.calls < 1 or not 1 <= arguments.parts <= arguments.calls:
        parser.error(f"--calls and --parts: expected 1 <= parts <= calls, got {arguments.parts} and {arguments.calls}")

    def progress(done: int, total: int) -> None:
        print(f"  {done}/{total} calls", file=sys.stderr, flush=True)

    result = soak(arguments.calls, arguments.seed, arguments.parts, progress)
    print(f"{result.calls} calls ({result.threaded_calls} from {THREADS} threads at once) in {result.seconds} s")
    print(f"backends: {', '.join(result.backends)}; {result.cases} cases; {result.machine}")
    print(f"{'after calls':<14}{'resident MiB':>14}{'open fds':>10}{'threads':>9}")
    counts = [0, *(round(result.calls * (part + 1) / arguments.parts) for part in range(arguments.parts))]
    for count, moment in zip(counts, result.snapshots, strict=True):
        print(f"{count:<14}{moment.rss_mib:>14}{moment.open_fds:>10}{moment.threads:>9}")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {arguments.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
