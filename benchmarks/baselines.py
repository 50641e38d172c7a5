"""What FFF is measured against: dense feedforward layers and the paper's PyTorch FFF.

Each ``make_*`` builds its weights once and returns a callable of one argument,
the (B, d_in) input, so timing loops measure the layer and nothing else.
torch is imported only inside the torch builders.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from fffcore.params import FFFParams

_TANH_GELU_SCALE = math.sqrt(2.0 / math.pi)


def make_dense_numpy(
    d_in: int, hidden: int, d_out: int, dtype: str = "float32", seed: int = 0
) -> Callable[[np.ndarray], np.ndarray]:
    """numpy ``gelu(x @ W1 + b1) @ W2 + b2``, BERT's feedforward block.

    numpy has no erf, so the GELU is the tanh approximation, evaluated in place
    to keep its cost (a few passes over the (B, hidden) activations) small next
    to the two matrix products, which dominate and run in numpy's BLAS.
    """
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((d_in, hidden)) / math.sqrt(d_in)).astype(dtype)
    b1 = np.zeros(hidden, dtype)
    w2 = (rng.standard_normal((hidden, d_out)) / math.sqrt(hidden)).astype(dtype)
    b2 = np.zeros(d_out, dtype)
    half, cubic, scale = (np.asarray(v, dtype) for v in (0.5, 0.044715, _TANH_GELU_SCALE))

    def dense(x: np.ndarray) -> np.ndarray:
        h = x @ w1
        h += b1
        inner = h * h
        inner *= cubic
        inner += 1
        inner *= h
        inner *= scale
        np.tanh(inner, out=inner)
        inner += 1
        inner *= half
        h *= inner
        y = h @ w2
        y += b2
        return y

    return dense


def make_dense_torch(
    d_in: int, hidden: int, d_out: int, dtype: str = "float32", seed: int = 0, device: str = "cpu"
) -> Callable[[Any], Any]:
    """torch ``Linear -> GELU (exact) -> Linear`` under ``inference_mode``; cuBLAS on CUDA, the CPU BLAS otherwise."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    layer = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, d_out))
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) / math.sqrt(parameter.shape[-1]))
    layer = layer.to(device=device, dtype=torch_dtype).eval()

    def dense(x: Any) -> Any:
        with torch.inference_mode():
            return layer(x)

    return dense


def make_paper_torch_fff(params: FFFParams, device: str = "cpu") -> Callable[[Any], Any]:
    """UltraFastBERT's PyTorch FFF approach, rebuilt from its description.

    Per tree and level: ``index_select`` the current node's row of ``w_in`` for
    every input row, a batched (B, 1, d_in) x (B, d_in, 1) product for the
    logits, and the next node; then one gather of the visited ``w_out`` rows
    (B, L, d_out) and a ``bmm`` with the activated logits. The branch follows
    fffcore's spec (``logit > 0``; the paper's benchmark used ``>= 0``). Only
    ``gelu`` layers are built, as in the paper.
    """
    import torch

    if params.activation != "gelu":
        raise ValueError(f"params: the paper's approach uses gelu, got activation {params.activation!r}")
    # torch.tensor copies: FFFParams arrays are read-only and torch wants writable memory.
    w_in = torch.tensor(np.asarray(params.w_in), device=device)
    w_out = torch.tensor(np.asarray(params.w_out), device=device)
    b_in = None if params.b_in is None else torch.tensor(np.asarray(params.b_in), device=device)
    levels = params.depth + 1

    def paper_fff(x: Any) -> Any:
        with torch.inference_mode():
            rows = x.shape[0]
            y = torch.zeros((rows, params.d_out), dtype=x.dtype, device=x.device)
            for tree in range(params.trees):
                node = torch.zeros(rows, dtype=torch.long, device=x.device)
                logits = []
                nodes = []
                for _ in range(levels):
                    weights = w_in[tree].index_select(0, node)  # (B, d_in)
                    logit = torch.bmm(x.unsqueeze(1), weights.unsqueeze(2)).view(rows)
                    if b_in is not None:
                        logit = logit + b_in[tree].index_select(0, node)
                    logits.append(logit)
                    nodes.append(node)
                    node = 2 * node + 1 + (logit > 0).long()
                activated = torch.nn.functional.gelu(torch.stack(logits, dim=1))  # (B, L)
                rows_out = w_out[tree][torch.stack(nodes, dim=1)]  # (B, L, d_out)
                y += torch.bmm(activated.unsqueeze(1), rows_out).view(rows, params.d_out)
            return y

    return paper_fff
