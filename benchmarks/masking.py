"""UltraFastBERT's masking FFF, rebuilt from its description: the implementation its users ran.

It computes every neuron's logit with one dense ``linear_in``, walks the trees to mark the visited
nodes in a 0/1 mask, multiplies the activated logits (GELU by default) by the mask and applies a
dense ``linear_out``: the arithmetic of a dense layer of K*N neurons, to use K*(D+1) of them.
fffcore's tests use it as the training semantics to match, and the benchmarks as the baseline
swapped modules replace.
"""

from __future__ import annotations

import math
from typing import Any


def make_masking_fff_module(
    d_in: int, d_out: int, depth: int, parallel_size: int = 1, seed: int = 0, activation: str = "gelu"
) -> Any:
    """A torch module with UltraFastBERT's FFF layout and masking forward, randomly initialised.

    Attributes follow crammedBERT-FFF's ``FFF``: ``input_width`` (d_in), ``output_width`` (d_out),
    ``depth``, ``parallel_size``, ``n_nodes`` (2**(depth+1)-1, per tree), ``linear_in``
    (d_in -> K*N, with bias), ``linear_out`` (K*N -> d_out, no bias) and ``activation``, a module
    instance applied in the forward: ``activation`` names it among fffcore's activations
    (``"gelu"``: ``nn.GELU()``, the original's default; ``"gelu_tanh"``:
    ``nn.GELU(approximate="tanh")``; ``"relu"``, ``"silu"``, ``"identity"``). Initialisation is
    UltraFastBERT's (uniform in +-1/sqrt(d_in) in, +-1/sqrt((depth+1)*K) out) from ``seed``, in
    float32. The forward takes (..., d_in) and returns (..., d_out) in the weights' dtype.
    """
    import torch

    modules = {
        "gelu": lambda: torch.nn.GELU(),
        "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh"),
        "relu": lambda: torch.nn.ReLU(),
        "silu": lambda: torch.nn.SiLU(),
        "identity": lambda: torch.nn.Identity(),
    }
    if activation not in modules:
        raise ValueError(f"activation: expected one of {tuple(modules)}, got {activation!r}")

    class MaskingFFF(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_width = d_in
            self.output_width = d_out
            self.depth = depth
            self.parallel_size = parallel_size
            self.n_nodes = 2 ** (depth + 1) - 1
            total = parallel_size * self.n_nodes
            self.linear_in = torch.nn.Linear(d_in, total, bias=True)
            self.linear_out = torch.nn.Linear(total, d_out, bias=False)
            self.activation = modules[activation]()
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                in_bound = 1.0 / math.sqrt(d_in)
                out_bound = 1.0 / math.sqrt((depth + 1) * parallel_size)
                for tensor, bound in (
                    (self.linear_in.weight, in_bound),
                    (self.linear_in.bias, in_bound),
                    (self.linear_out.weight, out_bound),
                ):
                    tensor.copy_((torch.rand(tensor.shape, generator=generator) * 2 - 1) * bound)

        def forward(self, x: Any) -> Any:
            leading = x.shape[:-1]
            rows = x.reshape(-1, x.shape[-1])
            batch = rows.shape[0]
            logits = self.linear_in(rows)  # (B, K*N): every neuron
            decisions = (logits > 0).view(batch, self.parallel_size, self.n_nodes).long()
            mask = torch.zeros((batch, self.parallel_size, self.n_nodes), dtype=logits.dtype, device=logits.device)
            node = torch.zeros((batch, self.parallel_size, 1), dtype=torch.long, device=logits.device)
            for _ in range(self.depth + 1):
                mask.scatter_(2, node, 1.0)
                node = 2 * node + 1 + decisions.gather(2, node)
            activated = self.activation(logits) * mask.view(batch, -1)
            return self.linear_out(activated).reshape(*leading, -1)

    return MaskingFFF()
