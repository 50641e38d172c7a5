"""Speed ratios of the ``torch`` backend against the paper's PyTorch FFF and a dense torch feedforward.

    python -m benchmarks.studies.torch_ratios            # float32, width 768, depth 11, batch 4096, CPU
    python -m benchmarks.studies.torch_ratios --repeats 21 --threads 1
    python -m benchmarks.studies.torch_ratios --repeats 21 --device cuda

Every implementation is timed in the same process, round-robin (one call of
each per round), so a busy machine slows all of them alike; the report gives
per-implementation medians and the ratios of medians. Before timing, each FFF
result is checked once against the NumPy reference.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fffcore.benchmarks.timing import round_robin
from fffcore.params import FFFParams


def build(args: argparse.Namespace) -> tuple[dict[str, Callable[[], Any]], Any, FFFParams]:
    """The timed callables (each of no argument) by name, the input, and the layer."""
    import torch

    import fffcore
    from fffcore.benchmarks.baselines import make_dense_torch, make_paper_torch_fff
    from fffcore.torch import to_torch

    params = FFFParams.random(args.width, args.width, args.depth, args.trees, dtype=args.dtype, seed=0)
    on_device = to_torch(params, args.device)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.width, generator=generator).to(args.device, on_device.w_in.dtype)
    paper = make_paper_torch_fff(params, device=args.device)
    dense = make_dense_torch(args.width, args.hidden, args.width, dtype=args.dtype, device=args.device)
    synchronize = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def timed(function: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            result = function()
            synchronize()  # GPU timings must include the work, not just its launch
            return result

        return call

    return (
        {
            "torch backend": timed(lambda: fffcore.fff(x, on_device, backend="torch")),
            "paper torch FFF": timed(lambda: paper(x)),
            f"dense torch (hidden {args.hidden})": timed(lambda: dense(x)),
        },
        x,
        params,
    )


def check(functions: dict[str, Callable[[], Any]], x: Any, params: FFFParams) -> None:
    """Each FFF result against the reference, once, untimed (rows that took a near-tie branch may differ)."""
    import fffcore

    rows = slice(0, 256)
    expected = fffcore.fff(x[rows].cpu().numpy(), params, backend="reference")
    for name in ("torch backend", "paper torch FFF"):
        got = functions[name]()[rows].cpu().numpy()
        close = np.isclose(got, expected, rtol=1e-3, atol=1e-4).all(axis=1)
        if close.mean() < 0.95:
            raise SystemExit(f"{name}: only {close.mean():.1%} of checked rows match the reference")


def measure(functions: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call, ``repeats`` rounds of one call each, after one warm-up round."""
    return round_robin(functions, repeats, warm_up_rounds=1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=768, help="d_in = d_out (default 768)")
    parser.add_argument("--depth", type=int, default=11)
    parser.add_argument("--trees", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=3072, help="hidden width of the dense feedforward")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args(argv)

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    functions, x, params = build(args)
    check(functions, x, params)
    times = measure(functions, args.repeats)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ours = medians["torch backend"]
    print(
        f"width {args.width}, depth {args.depth}, trees {args.trees}, batch {args.batch}, {args.dtype}, "
        f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} rounds"
    )
    for name, median in medians.items():
        spread = f"{min(times[name]) * 1e3:.1f}-{max(times[name]) * 1e3:.1f}"
        ratio = "" if name == "torch backend" else f"   torch backend is {median / ours:.2f}x faster"
        print(f"  {name:28s} median {median * 1e3:8.1f} ms  (range {spread} ms){ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
