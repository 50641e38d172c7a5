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
    for name, value, low in (("depth", depth, 0), ("trees", trees, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"{name}: expected an int >= {low} or None, got {value!r}")
    if depth is not None:
        n_nodes = node_count(depth)
        if total % n_nodes or (trees is not None and trees * n_nodes != total):
            raise ValueError(f"{where}: {total} rows do not make {trees or 'whole'} trees of depth {depth}")
        return total // n_nodes, n_nodes
    if trees is not None:
        if total % trees or depth_from_node_count(total // trees) is None:
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
        if _is_bfloat16(value):  # numpy has no bfloat16; float32 holds every bfloat16 value exactly
            if dtype is None:
                raise TypeError(f"{key}: bfloat16 has no numpy dtype; pass dtype='float32'")
            value = value.float()
        value = value.numpy()
    array = np.array(value)
    if dtype is not None:
        array = array.astype(dtype)
    return array


def is_ultrafastbert_fff(module: Any) -> bool:
    """Whether a torch module has UltraFastBERT's FFF layout (duck-typed; the original project is never imported).

    That is: ``linear_in`` and ``linear_out`` submodules with 2-D ``weight`` tensors, where
    ``linear_in`` maps d_in to some K*N and ``linear_out`` maps K*N to d_out without a bias.
    """
    linear_in = getattr(module, "linear_in", None)
    linear_out = getattr(module, "linear_out", None)
    w_in = getattr(linear_in, "weight", None)
    w_out = getattr(linear_out, "weight", None)
    if w_in is None or w_out is None or getattr(linear_out, "bias", None) is not None:
        return False
    if len(getattr(w_in, "shape", ())) != 2 or len(getattr(w_out, "shape", ())) != 2:
        return False
    return w_out.shape[1] == w_in.shape[0]


def params_from_module(module: Any, *, activation: str = DEFAULT_ACTIVATION, dtype: str | None = None) -> FFFParams:
    """numpy ``FFFParams`` from a module with UltraFastBERT's layout; its ``depth`` and ``parallel_size``
    attributes, where present, fix the tree shape."""
    if not is_ultrafastbert_fff(module):
        raise TypeError(
            f"module: expected UltraFastBERT's FFF layout (linear_in, linear_out), got {type(module).__name__}"
        )
    state = {IN_WEIGHT: module.linear_in.weight, OUT_WEIGHT: module.linear_out.weight}
    if getattr(module.linear_in, "bias", None) is not None:
        state[IN_BIAS] = module.linear_in.bias
    depth = getattr(module, "depth", None)
    trees = getattr(module, "parallel_size", None)
    return params_from_state_dict(
        state,
        depth=depth if isinstance(depth, int) else None,
        trees=trees if isinstance(trees, int) else None,
        activation=activation,
        dtype=dtype,
    )


def swap_fff_modules(model: Any, backend: str | None = None, *, activation: str = DEFAULT_ACTIVATION) -> list[str]:
    """Replace every UltraFastBERT-layout FFF module inside ``model`` with :class:`fffcore.torch.FFFInference`.

    Each replacement computes only the visited neurons on ``backend`` (None: chosen per call, see
    :mod:`fffcore.selection`), keeps the original module's device and dtype, and accepts the same
    (..., d_in) inputs. Replacements are for inference: their weights are buffers, not parameters.

    Returns:
        The qualified names (as in ``model.named_modules()``) of the modules replaced, in order.
    """
    from fffcore.torch import FFFInference

    if is_ultrafastbert_fff(model):
        raise ValueError("model: is itself an FFF module; wrap it in a parent module, or build FFFInference directly")
    found = [(name, module) for name, module in model.named_modules() if name and is_ultrafastbert_fff(module)]
    swapped = []
    for name, module in found:
        weight = module.linear_in.weight
        params = params_from_module(module, activation=activation, dtype="float32" if _is_bfloat16(weight) else None)
        replacement = FFFInference(params, backend=backend, device=weight.device, dtype=weight.dtype)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, replacement)
        swapped.append(name)
    return swapped


def _is_bfloat16(tensor: Any) -> bool:
    return str(getattr(tensor, "dtype", "")) == "torch.bfloat16"
