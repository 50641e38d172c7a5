"""Small calls on a busy machine: each at its idle time and with every core held by other processes.

    python -m benchmarks.studies.busy_machine                    # 128 rows, width 768, depth 11, float32
    python -m benchmarks.studies.busy_machine --rows 1,128,4096 --runs 3 --json busy.json

Times, for ``--seconds`` each, first on the machine as it is (run it idle), then while other
processes (``--busy``, default one per core) multiply matrices in a loop with numpy on every core:

- ``torch``: ``fffcore.fff`` on a CPU tensor with the torch backend, which runs each call on torch's
  whole pool or on one thread, whichever has been faster lately for the layer and the batch size;
- ``torch, whole pool``: the same kernels always on torch's whole pool (the backend without its
  choice of threads), for comparison;
- ``FFFInference``: the torch module on a CPU tensor, which reaches numba through a zero-copy view;
- ``dense torch``: ``nn.Linear(768, 3072)``, gelu, ``nn.Linear(3072, 768)`` at the same rows.

Each figure is the median of per-call times, every call on the next of 8 inputs; the contestants
are timed in turns of 20 ms, so that each meets the same load. The busy phase reports each as a
multiple of its idle time; the target for the torch backend is at most 3x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from fffcore.benchmarks.machine import available_cores, cpu_model, load_average
from fffcore.benchmarks.timing import rotating

#: Seconds of calls of one contestant before the next takes its turn.
TURN_SECONDS = 0.02

#: What each other process runs: numpy matrix products in a loop on OpenBLAS's whole thread pool, as
#: another numerical job on the machine would (a pure Python busy loop, holding one core without a
#: thread pool, slowed the calls timed here far less).
OTHER_WORK = (
    "import numpy as np\na = np.ones((512, 512), dtype=np.float32)\nwhile True:\n    a = (a @ a) * np.float32(1e-3)\n"
)


def contestants(rows: int, width: int, depth: int) -> dict[str, Callable[[], Any]]:
    """The calls timed, each on 8 fresh inputs of ``rows`` rows in turn."""
    import torch

    import fffcore
    from fffcore.backends.torch.kernels import fff_rows
    from fffcore.backends.torch.prepared import torch_layer
    from fffcore.torch import FFFInference

    params = fffcore.FFFParams.random(d_in=width, d_out=width, depth=depth, trees=1, seed=0)
    inputs = [torch.randn(rows, width) for _ in range(8)]
    layer = torch_layer(params, torch.device("cpu"))
    module = FFFInference(params).eval()
    dense = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width))

    def whole_pool(x: Any) -> Any:
        with torch.no_grad():
            return fff_rows(x, layer, params.activation)

    def inference(x: Any) -> Any:
        with torch.no_grad():
            return module(x)

    def dense_layer(x: Any) -> Any:
        with torch.no_grad():
            return dense(x)

    return {
        "torch": rotating(lambda x: fffcore.fff(x, params, backend="torch"), inputs),
        "torch, whole pool": rotating(whole_pool, inputs),
        "FFFInference": rotating(inference, inputs),
        "dense torch": rotating(dense_layer, inputs),
    }


def phase(calls: dict[str, Callable[[], Any]], seconds: float) -> dict[str, float]:
    """The median seconds per call of each of ``calls``, timed in turns (a few calls of each, then the
    next) for ``seconds`` per call in all, so that every one meets the same load; after 0.5 s of
    untimed turns."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for timed, duration in ((False, 0.5), (True, seconds * len(calls))):
        until = time.perf_counter() + duration
        while time.perf_counter() < until or (timed and min(len(t) for t in times.values()) < 5):
            for name, call in calls.items():
                turn_ends = time.perf_counter() + TURN_SECONDS
                while True:
                    start = time.perf_counter()
                    call()
                    end = time.perf_counter()
                    if timed:
                        times[name].append(end - start)
                    if end >= turn_ends:
                        break
    return {name: statistics.median(values) for name, values in times.items()}


def run(rows_list: Sequence[int], width: int, depth: int, seconds: float, busy: int) -> dict[str, Any]:
    import torch

    results = []
    for rows in rows_list:
        calls = contestants(rows, width, depth)
        idle = phase(calls, seconds)
        spinners = [subprocess.Popen([sys.executable, "-c", OTHER_WORK]) for _ in range(busy)]
        try:
            time.sleep(1.0)  # the other processes started and computing
            loaded = phase(calls, seconds)
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
        time.sleep(1.0)  # the cores idle again before the next batch size
        for name in calls:
            results.append(
                {
                    "rows": rows,
                    "call": name,
                    "idle_s": idle[name],
                    "busy_s": loaded[name],
                    "busy_over_idle": loaded[name] / idle[name],
                }
            )
    return {
        "machine": {"cpu": cpu_model(), "cores": available_cores(), "torch_threads": torch.get_num_threads()},
        "settings": {"width": width, "depth": depth, "seconds": seconds, "busy_processes": busy},
        "load_average_at_end": load_average(),
        "results": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="128", help="comma-separated batch sizes (default 128)")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--depth", type=int, default=11)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of timed calls per figure")
    parser.add_argument("--busy", type=int, default=available_cores(), help="busy processes (default: one per core)")
    parser.add_argument(
        "--runs", type=int, default=1, help="idle and busy phases, one after the other, this many times"
    )
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    arguments = parser.parse_args(argv)
    rows_list = [int(part) for part in arguments.rows.split(",")]
    runs = []
    for number in range(1, arguments.runs + 1):
        report = run(rows_list, arguments.width, arguments.depth, arguments.seconds, arguments.busy)
        runs.append(report)
        print(
            f"run {number}: {report['machine']['cpu']}, {report['machine']['cores']} cores; "
            f"{arguments.busy} busy processes"
        )
        print(f"{'rows':>6}  {'call':18} {'idle':>10} {'busy':>10} {'busy/idle':>9}")
        for entry in report["results"]:
            print(
                f"{entry['rows']:>6}  {entry['call']:18} {entry['idle_s'] * 1e3:8.3f}ms {entry['busy_s'] * 1e3:8.3f}ms "
                f"{entry['busy_over_idle']:8.1f}x"
            )
    if arguments.json:
        with open(arguments.json, "w", encoding="utf-8") as out:
            json.dump({"runs": runs}, out, indent=2)
            out.write("\n")
        print(f"wrote {arguments.json}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
