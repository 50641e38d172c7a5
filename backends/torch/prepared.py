"""Layer parameters as torch tensors on one device, built once per (params, device) and cached.

The backend computes in ``params.dtype`` (the spec's dtype rule), so a
prepared set is keyed by the :class:`~fffcore.FFFParams` object and the
device only. Parameters that are already torch tensors of that device are
used as they are (views, no copy); numpy parameters, or tensors on another
device, are copied once. numpy arrays inside ``FFFParams`` are read-only, so
they are copied with ``torch.tensor`` (``torch.from_numpy`` would share
memory torch believes writable and warn).

The cache is keyed weakly on the ``FFFParams`` object (frozen, compared by
identity), so it dies with it. Like ``FFFParams`` itself, the cache assumes
the parameters are not changed in place after construction.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fffcore.params import FFFParams

#: The top levels of every tree evaluated for all their nodes with one matrix product
#: (6 levels are 63 nodes): see :mod:`fffcore.backends.torch.kernels` for why.
DENSE_LEVELS = 6


@dataclass(frozen=True)
class TorchLayer:
    """One layer's parameters on one device, in the layouts the kernels use.

    Attributes:
        w_in_rows: (K*N, d_in) the node weights of all trees, tree after tree (a view of w_in).
        b_in_rows: (K*N,) the node biases, or None.
        w_out_rows: (K*N, d_out) the output weights, tree after tree.
        dense_w_in_t: (d_in, K*M) the weights of the top ``dense_levels`` levels
            of every tree (M = 2**dense_levels - 1 nodes each), transposed for ``x @ .``.
        dense_b_in: (K*M,) their biases, tree after tree, or None.
        tree_offsets: (K,) int64, ``k * N``: a tree's first row in the ``*_rows`` tensors.
        dense_levels: how many top levels are evaluated densely (at least 1, at most D+1).
        trees, levels, n_nodes, d_in, d_out: the layer's sizes (levels = D+1).
    """

    w_in_rows: Any
    b_in_rows: Any
    w_out_rows: Any
    dense_w_in_t: Any
    dense_b_in: Any
    tree_offsets: Any
    dense_levels: int
    trees: int
    levels: int
    n_nodes: int
    d_in: int
    d_out: int
    subtrees: dict[tuple[int, int], tuple[Any, Any]] = field(default_factory=dict, compare=False, repr=False)


def torch_dtype(name: str) -> Any:
    """The torch dtype of a canonical dtype name (``"float32"`` -> ``torch.float32``)."""
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a dtype torch knows, got {name!r}")
    return dtype


def dense_level_count(levels: int) -> int:
    """How many top levels to evaluate densely: DENSE_LEVELS, or all of a shallower tree."""
    return min(levels, DENSE_LEVELS)


def subtree_weights(layer: TorchLayer, first: int, count: int) -> tuple[Any, Any]:
    """The weights of every subtree of ``count`` levels rooted at level ``first``, built once and cached.

    Returns:
        ``(weights_t, biases)``: weights_t (K * 2**first, d_in, M) with M = 2**count - 1,
        the nodes of each subtree in its own heap order, transposed for ``rows @ weights_t[g]``
        (subtree ``k * 2**first + j`` is the one rooted at the j-th node of level ``first``
        of tree k); biases (K * 2**first * M,) in the same order, or None. A copy of those
        levels' rows of ``w_in``, so a layer's cache holds at most one extra copy of ``w_in``.
    """
    import torch

    key = (first, count)
    found = layer.subtrees.get(key)
    if found is not None:
        return found
    with _cache_lock:
        found = layer.subtrees.get(key)
        if found is None:
            device = layer.w_in_rows.device
            width, size = 1 << first, (1 << count) - 1
            roots = torch.arange(width, device=device) + (width - 1)  # heap indices of level `first`
            local = torch.arange(size, device=device)
            depth = torch.log2((local + 1).to(torch.float64)).floor().to(torch.int64)  # exact for these small ints
            heap = roots.view(width, 1) * (1 << depth).view(1, size) + local.view(1, size)  # (width, M)
            rows = (layer.tree_offsets.view(-1, 1, 1) + heap.view(1, width, size)).view(-1)
            weights = layer.w_in_rows.index_select(0, rows).view(layer.trees * width, size, layer.d_in)
            weights_t = weights.transpose(1, 2).contiguous()  # BLAS is fastest on contiguous (d_in, M)
            biases = None if layer.b_in_rows is None else layer.b_in_rows.index_select(0, rows)
            found = (weights_t, biases)
            layer.subtrees[key] = found
    return found


_cache: weakref.WeakKeyDictionary[FFFParams, dict[Any, TorchLayer]] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()  # guards both caches: layers per (params, device) and their subtrees


def torch_layer(params: FFFParams, device: Any) -> TorchLayer:
    """The parameters on ``device`` in ``params.dtype``, built on the first call and cached.

    Args:
        params: validated parameters (numpy or torch arrays).
        device: a ``torch.device``.

    Returns:
        The cached :class:`TorchLayer` for (params, device).
    """
    per_device = _cache.get(params)
    layer = None if per_device is None else per_device.get(device)
    if layer is not None:
        return layer
    with _cache_lock:  # build once even when several threads ask at the same time
        per_device = _cache.setdefault(params, {})
        layer = per_device.get(device)
        if layer is None:
            layer = _build(params, device)
            per_device[device] = layer
    return layer


def cached_devices(params: FFFParams) -> list[Any]:
    """The devices ``params`` has been prepared for (for tests and diagnostics)."""
    return list(_cache.get(params, {}))


def as_tensor(array: Any, device: Any, dtype: Any) -> Any:
    """``array`` as a contiguous tensor on ``device`` of ``dtype``; no copy when it already is one."""
    import torch

    if isinstance(array, torch.Tensor):
        return array.detach().to(device=device, dtype=dtype).contiguous()
    # A copy: FFFParams keeps numpy arrays read-only, and torch wants writable memory.
    return torch.tensor(np.asarray(array), device=device, dtype=dtype)


def _build(params: FFFParams, device: Any) -> TorchLayer:
    import torch

    dtype = torch_dtype(params.dtype)
    trees, n_nodes, d_in, d_out = params.trees, params.n_nodes, params.d_in, params.d_out
    levels = params.depth + 1
    w_in = as_tensor(params.w_in, device, dtype)
    w_out = as_tensor(params.w_out, device, dtype)
    b_in = None if params.b_in is None else as_tensor(params.b_in, device, dtype)

    dense_levels = dense_level_count(levels)
    dense_nodes = (1 << dense_levels) - 1  # heap order puts the top levels first: a prefix of each tree
    # (K, M, d_in) -> (K*M, d_in): a view for one tree, a small copy for several.
    dense_w_in_t = w_in[:, :dense_nodes, :].reshape(trees * dense_nodes, d_in).t()
    return TorchLayer(
        w_in_rows=w_in.view(trees * n_nodes, d_in),
        b_in_rows=None if b_in is None else b_in.view(trees * n_nodes),
        w_out_rows=w_out.view(trees * n_nodes, d_out),
        dense_w_in_t=dense_w_in_t,
        dense_b_in=None if b_in is None else b_in[:, :dense_nodes].reshape(-1),
        tree_offsets=torch.arange(trees, device=device, dtype=torch.int64) * n_nodes,
        dense_levels=dense_levels,
        trees=trees,
        levels=levels,
        n_nodes=n_nodes,
        d_in=d_in,
        d_out=d_out,
    )
