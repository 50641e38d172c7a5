"""The backward pass in torch, on any device: gradients along the paths the forward pass takes.

For each block of rows: gather the visited nodes' weight rows, ``h = g . w_out[k, n]``,
``dz = h * act'(z)``, the input gradient ``sum dz * w_in[k, n]``, and the parameter gradients added
node by node: with ``index_add_`` on the CPU, and on CUDA with ``index_put_(accumulate=True)``, which
sorts the visits by node rather than adding them atomically in any order, so that two calls give the
same bits on either device (torch's reproducibility notes list ``index_add_`` on CUDA as
nondeterministic, ``index_put_`` with ``accumulate=True`` only on the CPU). 16-bit layers are
computed in float32 and rounded once, as their forward pass is.
"""

from __future__ import annotations

from typing import Any

#: Bytes of gathered weight rows a block of rows may hold (two (R, K, L, d) tensors).
BLOCK_BYTES = 64 << 20


def add_rows(target: Any, index: Any, values: Any) -> None:
    """``target[index[i]] += values[i]`` for every i, in an order fixed by the data on every device."""
    if target.device.type == "cpu":
        target.index_add_(0, index, values)
    else:
        target.index_put_((index,), values, accumulate=True)


def fff_backward_rows(x: Any, g: Any, logits: Any, nodes: Any, w_in: Any, b_in: Any, w_out: Any, activation: str):
    """Gradients of (B, d_in) ``x`` and the layer (``w_in`` (K, N, d_in), ``b_in`` (K, N) or None,
    ``w_out`` (K, N, d_out), all tensors on x's device) given (B, d_out) ``g``, along ``logits`` and
    ``nodes`` (B, K, L) from the backend's ``cmm``. Returns tensors in the layer's dtype."""
    import torch

    from fffcore.backends.torch.activations import activate, slope

    dtype = w_in.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    x, g, w_in, w_out = (t.to(work) for t in (x, g, w_in, w_out))
    trees, n_nodes, d_in = w_in.shape
    d_out = w_out.shape[2]
    rows, _, levels = logits.shape
    grad_x = torch.empty_like(x)
    grad_w_in = torch.zeros((trees * n_nodes, d_in), dtype=work, device=x.device)
    grad_w_out = torch.zeros((trees * n_nodes, d_out), dtype=work, device=x.device)
    grad_b_in = torch.zeros(trees * n_nodes, dtype=work, device=x.device)
    w_in_rows, w_out_rows = w_in.reshape(-1, d_in), w_out.reshape(-1, d_out)
    offsets = (torch.arange(trees, device=x.device) * n_nodes)[None, :, None]
    step = max(1, BLOCK_BYTES // max(1, trees * levels * (d_in + d_out) * x.element_size()))
    with torch.no_grad():
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            flat = (nodes[start:stop] + offsets).reshape(-1)  # (R*K*L,) row of each visit in the *_rows tensors
            z = logits[start:stop]
            dz = torch.einsum("ro,rvo->rv", g[start:stop], w_out_rows[flat].view(stop - start, -1, d_out))
            dz = dz.view(z.shape) * slope(activation, z).to(work)
            visited_w_in = w_in_rows[flat].view(stop - start, -1, d_in)
            grad_x[start:stop] = torch.einsum("rv,rvi->ri", dz.view(stop - start, -1), visited_w_in)
            add_rows(grad_w_in, flat, (dz[..., None] * x[start:stop, None, None, :]).reshape(-1, d_in))
            add_rows(grad_b_in, flat, dz.reshape(-1))
            activated = activate(activation, z).to(work)
            add_rows(grad_w_out, flat, (activated[..., None] * g[start:stop, None, None, :]).reshape(-1, d_out))
    return (
        grad_x.to(dtype),
        grad_w_in.view(trees, n_nodes, d_in).to(dtype),
        None if b_in is None else grad_b_in.view(trees, n_nodes).to(dtype),
        grad_w_out.view(trees, n_nodes, d_out).to(dtype),
    )
