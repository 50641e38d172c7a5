"""UltraFastBERT (crammedBERT-FFF) weights: to and from ``FFFParams``.

UltraFastBERT stores one FFF layer as two linear maps:

- ``linear_in.weight`` (K*N, d_in) and ``linear_in.bias`` (K*N,): tree k owns rows k*N .. k*N+N-1,
  in heap order;
- ``linear_out.weight`` (d_out, K*N), no bias;

with K = ``parallel_size`` (trees) and N = 2**(depth+1) - 1. Its forward computes every logit,
masks all but the visited nodes and applies GELU; fffcore computes only the visited ones, with
the same branch rule (``logit > 0``).

The shapes fix K*N but not K and N apart (4095 rows are 1 tree of depth 11 or 4095 trees of depth
0, among others), so the caller gives ``depth`` or ``trees`` unless the layer is a single tree,
which is assumed when neither is given and K*N is a valid node count.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from fffcore.params import FFFParams
from fffcore.spec import DEFAULT_ACTIVATION, depth_from_node_count, node_count

IN_WEIGHT = "linear_in.weight"
IN_BIAS = "linear_in.bias"
OUT_WEIGHT = "linear_out.weight"


def params_from_state_dict(
    state_dict: Mapping[str, Any],
    prefix: str = "",
    *,
    depth: int | None = None,
    trees: int | None = None,
    activation: str = DEFAULT_ACTIVATION,
    dtype: str | None = None,
) -> FFFParams:
    """Build numpy ``FFFParams`` from one UltraFastBERT FFF layer in a state dict.

    Args:
        state_dict: maps names to torch tensors or numpy arrays; other keys are ignored.
        prefix: the layer's key prefix, e.g. ``"encoder.layers.3.ffn."``.
        depth, trees: the tree shape; one suffices, neither means a single tree.
        activation: UltraFastBERT uses exact GELU.
        dtype: convert to this numpy dtype (needed for bfloat16 tensors, which numpy lacks);
            None keeps the stored dtype.

    Returns:
        FFFParams with w_in (K, N, d_in), b_in (K, N) (None when the state dict has no bias) and
        w_out (K, N, d_out).
    """
    w_in = _numpy(_lookup(state_dict, prefix, IN_WEIGHT), prefix + IN_WEIGHT, dtype)
    w_out = _numpy(_lookup(state_dict, prefix, OUT_WEIGHT), prefix + OUT_WEIGHT, dtype)
    bias_key = prefix + IN_BIAS
    b_in = _numpy(state_dict[bias_key], bias_key, dtype) if bias_key in state_dict else None

    if w_in.ndim != 2:
        raise ValueError(f"{prefix}{IN_WEIGHT}: expected shape (trees*nodes, d_in), got {w_in.shape}")
    total, d_in = w_in.shape
    if w_out.ndim != 2 or w_out.shape[1] != total:
        raise ValueError(
            f"{prefix}{OUT_WEIGHT}: expected shape (d_out, {total}) to match {IN_WEIGHT}, got {w_out.shape}"
        )
    if b_in is not None and b_in.shape != (total,):
        raise ValueError(f"{prefix}{IN_BIAS}: expected shape ({total},) to match {IN_WEIGHT}, got {b_in.shape}")
    trees, n_nodes = _tree_shape(total, depth, trees, prefix)
    return FFFParams(
        w_in.reshape(trees, n_nodes, d_in),
        None if b_in is None else b_in.reshape(trees, n_nodes),
        np.ascontiguousarray(w_out.T).reshape(trees, n_nodes, w_out.shape[0]),
        activation,
    )


def state_dict_from_params(params: FFFParams, prefix: str = "", *, as_torch: bool = False) -> dict[str, Any]:
    """Export numpy ``params`` in UltraFastBERT's layout (the inverse of :func:`params_from_state_dict`).

    A layer without bias exports a zero ``linear_in.bias``, since that layout always has one.
    Arrays are new copies; ``as_torch`` returns torch tensors instead of numpy arrays.
    """
    if params.array_type != "numpy":
        raise TypeError(f"params: expected numpy parameters, got {params.array_type}")
    total = params.trees * params.n_nodes
    w_in = np.array(params.w_in).reshape(total, params.d_in)
    b_in = np.zeros(total, params.dtype) if params.b_in is None else np.array(params.b_in).reshape(total)
    w_out = np.ascontiguousarray(np.asarray(params.w_out).reshape(total, params.d_out).T)
    exported = {prefix + IN_WEIGHT: w_in, prefix + IN_BIAS: b_in, prefix + OUT_WEIGHT: w_out}
    if as_torch:
        import torch

        return {key: torch.from_numpy(value) for key, value in exported.items()}
    return exported


def load_state_dict(path: str | PathLike[str]) -> dict[str, Any]:
    """Read a state dict from a ``.safetensors`` file (needs the safetensors package) or a ``torch.save`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError as error:
            raise ImportError(f"reading {path.name} needs safetensors: pip install safetensors") from error
        return dict(load_file(str(path)))
    import torch

    loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping):
        raise TypeError(f"path: expected a saved state dict, got {type(loaded).__name__}")
    return dict(loaded)


def _tree_shape(total: int, depth: int | None, trees: int | None, prefix: str) -> tuple[int, int]:
    """(K, N) with K * N == total, from whichever of depth and trees was given."""
    where = f"{prefix}{IN_WEIGHT}"
    if depth is not None:
        n_nodes = node_count(depth)
        if total % n_nodes or (trees is not None and trees * n_nodes != total):
            raise ValueError(f"{where}: {total} rows do not make {trees or 'whole'} trees of depth {depth}")
        return total // n_nodes, n_nodes
    if trees is not None:
        if trees < 1 or total % trees or depth_from_node_count(total // trees) is None:
            raise ValueError(f"{where}: {total} rows do not split into {trees} trees of 2**(depth+1)-1 nodes")
        return trees, total // trees
    if depth_from_node_count(total) is None:
        raise ValueError(
            f"{where}: {total} rows are not one tree (2**(depth+1)-1 nodes); pass depth= or trees= "
            "(UltraFastBERT's parallel_size)"
        )
    return 1, total


def _lookup(state_dict: Mapping[str, Any], prefix: str, name: str) -> Any:
    key = prefix + name
    if key not in state_dict:
        near = sorted(k for k in state_dict if k.endswith(name))[:5]
        hint = f"; keys ending in {name!r}: {near}" if near else ""
        raise KeyError(f"state_dict: no key {key!r}{hint}")
    return state_dict[key]


def _numpy(value: Any, key: str, dtype: str | None) -> np.ndarray:
    """A torch tensor or array-like as a numpy array (a copy), optionally converted to ``dtype``."""
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu()
        if dtype is not None or str(value.dtype) == "torch.bfloat16":
            if dtype is None:
                raise TypeError(f"{key}: bfloat16 has no numpy dtype; pass dtype='float32'")
            value = value.float()
        value = value.numpy()
    array = np.array(value)
    if dtype is not None:
        array = array.astype(dtype)
    return array
