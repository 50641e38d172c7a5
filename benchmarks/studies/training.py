"""Training FFF layers: the time of one training step, and a demonstration that an FFF layer learns.

    python -m benchmarks.studies.training                  # step times at batch 4096, then the demonstration
    python -m benchmarks.studies.training --json training.json

**Step.** One training step (forward, mean squared error against a fixed target, backward, an SGD update
of every weight) of a width-768, depth-11 layer at batch 4096, float32, on the CPU, for:

- ``fffcore:numba`` and ``fffcore:torch``: :class:`fffcore.torch.FFFLayer` with that backend, whose
  backward pass follows the paths;
- ``masked``: UltraFastBERT's training layer (:mod:`fffcore.benchmarks.masking`): every neuron's logit,
  a 0/1 mask of the visited ones, a dense output layer, torch autograd;
- ``dense 3072``: ``Linear(768, 3072) -> GELU -> Linear(3072, 768)``, torch autograd.

Every implementation runs round-robin in one process (a round times one step of each) and medians
are reported, with their ratios, because the machine is shared.

**Demonstration.** A regression task (targets from a fixed random two-layer network) learned by an
``FFFLayer`` and by the masked layer, from the same initial weights, in float64, with plain SGD: the two
take the same paths, so their losses must fall together (they differ only by rounding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fffcore.benchmarks.timing import rotating, round_robin


def masked_layer(d_in: int, d_out: int, depth: int, seed: int, dtype: Any) -> Any:
    from fffcore.benchmarks.masking import make_masking_fff_module

    return make_masking_fff_module(d_in, d_out, depth, seed=seed).to(dtype)


def fff_layer_like(masked: Any, backend: str | None) -> Any:
    """An :class:`~fffcore.torch.FFFLayer` holding the masked layer's weights (so the same paths)."""
    import torch

    from fffcore.torch import FFFLayer

    trees, n_nodes = masked.parallel_size, masked.n_nodes
    weight = masked.linear_in.weight
    layer = FFFLayer(masked.input_width, masked.output_width, masked.depth, trees, backend=backend, dtype=weight.dtype)
    with torch.no_grad():
        layer.w_in.copy_(weight.view(trees, n_nodes, -1))
        layer.b_in.copy_(masked.linear_in.bias.view(trees, n_nodes))
        layer.w_out.copy_(masked.linear_out.weight.t().reshape(trees, n_nodes, -1))
    return layer


def dense_layer(width: int, hidden: int, dtype: Any) -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, width)).to(
        dtype
    )


def training_step(model: Any, learning_rate: float) -> Callable[[Any, Any], float]:
    """``step(x, target) -> loss``: forward, MSE, backward, SGD update of every parameter."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)

    def step(x: Any, target: Any) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def time_steps(
    width: int, depth: int, batch: int, rounds: int, device: str = "cpu", dtype: str = "float32"
) -> dict[str, Any]:
    """Median seconds per training step of each implementation, measured round-robin.

    Layers and tensors in ``dtype`` on ``device``; the fffcore layers are one per available backend
    that trains (declares ``backward``) on that device in that dtype. Each step ends by reading its
    loss, which waits for the device, so the host clock times whole steps on CUDA too.
    """
    import torch

    import fffcore

    torch_dtype = getattr(torch, dtype)
    masked = masked_layer(width, width, depth, seed=0, dtype=torch_dtype).to(device)
    models = {"masked": masked, "dense 3072": dense_layer(width, 3072, torch_dtype).to(device)}
    for row in fffcore.list_backends():
        trains_here = row.available and row.backward and device in row.devices and dtype in row.dtypes
        if trains_here and row.name != "reference":
            layer = fff_layer_like(masked_layer(width, width, depth, 0, torch_dtype), row.name)
            models[f"fffcore:{row.name}"] = layer.to(device)
    generator = torch.Generator(device=device).manual_seed(1)
    inputs = [torch.randn(batch, width, generator=generator, device=device, dtype=torch_dtype) for _ in range(4)]
    target = torch.randn(batch, width, generator=generator, device=device, dtype=torch_dtype)
    steps = {name: training_step(model, 1e-3) for name, model in models.items()}
    for step in steps.values():  # warm-up: compilation, first allocations
        step(inputs[0], target)
    # Every implementation steps on the same input in a round, the next of the four each round.
    calls = {name: rotating(lambda x, step=step: step(x, target), inputs) for name, step in steps.items()}
    times = round_robin(calls, rounds)
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    return {
        "width": width,
        "depth": depth,
        "batch": batch,
        "device": device,
        "dtype": dtype,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "seconds": medians,
        "range": {name: [min(s), max(s)] for name, s in times.items()},
        "speedups": {
            name: {"over masked": medians["masked"] / m, "over dense 3072": medians["dense 3072"] / m}
            for name, m in medians.items()
            if name.startswith("fffcore:")
        },
    }


def learning_demonstration(
    width: int = 32, depth: int = 5, rows: int = 2048, steps: int = 300, learning_rate: float = 0.5
) -> dict[str, Any]:
    """Losses of an FFFLayer and of the masked layer from the same weights, learning one task in float64."""
    import torch

    generator = torch.Generator().manual_seed(2)
    x = torch.randn(rows, width, generator=generator, dtype=torch.float64)
    teacher_in = torch.randn(width, 4 * width, generator=generator, dtype=torch.float64) / width**0.5
    teacher_out = torch.randn(4 * width, width, generator=generator, dtype=torch.float64) / (4 * width) ** 0.5
    target = torch.tanh(x @ teacher_in) @ teacher_out
    masked = masked_layer(width, width, depth, seed=3, dtype=torch.float64)
    ours = fff_layer_like(masked, None)
    losses: dict[str, list[float]] = {"fffcore": [], "masked": []}
    for name, model in (("fffcore", ours), ("masked", masked)):
        step = training_step(model, learning_rate)
        losses[name] = [step(x, target) for _ in range(steps)]
    return {
        "width": width,
        "depth": depth,
        "rows": rows,
        "steps": steps,
        "learning_rate": learning_rate,
        "losses": losses,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.training", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--depth", type=int, default=11)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", metavar="PATH")
    arguments = parser.parse_args(argv)
    from fffcore.benchmarks.machine import cpu_model

    steps = time_steps(arguments.width, arguments.depth, arguments.batch, arguments.rounds)
    print(
        f"training step: width {steps['width']}, depth {steps['depth']}, batch {steps['batch']}, float32, "
        f"{cpu_model()}, torch threads {steps['threads']}, median of {steps['rounds']} rounds"
    )
    for name, seconds in steps["seconds"].items():
        low, high = steps["range"][name]
        extra = ""
        if name in steps["speedups"]:
            ratios = steps["speedups"][name]
            extra = f"   {ratios['over masked']:.1f}x the masked layer, {ratios['over dense 3072']:.1f}x dense 3072"
        print(f"  {name:14} {seconds * 1e3:9.1f} ms  (range {low * 1e3:.1f}-{high * 1e3:.1f}){extra}")
    demo = learning_demonstration()
    ours, theirs = demo["losses"]["fffcore"], demo["losses"]["masked"]
    print(f"learning: width {demo['width']}, depth {demo['depth']}, {demo['rows']} rows, SGD, float64")
    for index in (0, 9, 49, 99, demo["steps"] - 1):
        print(f"  step {index + 1:4}: loss {ours[index]:.6f} (fffcore)  {theirs[index]:.6f} (masked)")
    if arguments.json:
        Path(arguments.json).write_text(
            json.dumps({"cpu": cpu_model(), "step": steps, "learning": demo}, indent=2) + "\n"
        )
        print(f"wrote {arguments.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
