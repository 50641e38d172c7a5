"""Time one swapped UltraFastBERT layer against the masking implementation its users ran.

    python -m benchmarks.studies.ultrafastbert_swap [--batch 4096] [--width 768] [--depth 11]

Builds a masking FFF module (UltraFastBERT's layout and forward, random weights), swaps it for
fffcore's inference module on each available CPU backend, checks every output against the float64
oracle, and prints the median time per call and the speedup over the masking forward, all measured
in one run (the ratios are what carries over between machines).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import fffcore
from fffcore.benchmarks.timing import round_robin


def _median_seconds(call: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median seconds of one call over ``repeats`` calls after one warm-up call (compilation, caches,
    first allocations), and the range of the calls."""
    times = round_robin({"call": call}, repeats, warm_up_rounds=1)["call"]
    return statistics.median(times), max(times) - min(times)


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from fffcore.benchmarks.check import check_fff_output
    from fffcore.benchmarks.masking import make_masking_fff_module
    from fffcore.ultrafastbert import params_from_module, swap_fff_modules

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--depth", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=7)
    arguments = parser.parse_args(argv)

    x = torch.randn((arguments.batch, arguments.width), generator=torch.Generator().manual_seed(0))
    masking = torch.nn.Sequential(make_masking_fff_module(arguments.width, arguments.width, arguments.depth)).eval()
    params = params_from_module(masking[0])
    rows = x.numpy()
    print(
        f"one FFF layer: width {arguments.width}, depth {arguments.depth} ({params.n_nodes} neurons, "
        f"{arguments.depth + 1} visited), batch {arguments.batch}, float32, torch threads {torch.get_num_threads()}"
    )

    with torch.inference_mode():
        baseline, spread = _median_seconds(lambda: masking(x), arguments.repeats)
    print(f"{'masking (UltraFastBERT)':<28} {baseline * 1e3:9.2f} ms  ±{spread * 1e3:.2f}      1.0x")
    for row in fffcore.list_backends():
        if not row.available or "cpu" not in row.devices or row.name == "reference":
            continue
        model = torch.nn.Sequential(make_masking_fff_module(arguments.width, arguments.width, arguments.depth)).eval()
        swap_fff_modules(model, backend=row.name)
        with torch.inference_mode():
            output = model(x)
            verdict = check_fff_output(rows, params, output.numpy(), None)
            seconds, spread = _median_seconds(lambda m=model: m(x), arguments.repeats)
        status = "" if verdict.ok else f"  WRONG: {verdict.detail}"
        label = f"swapped, {row.name}"
        print(f"{label:<28} {seconds * 1e3:9.2f} ms  ±{spread * 1e3:.2f}  {baseline / seconds:8.1f}x{status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
