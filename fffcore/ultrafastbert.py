"""UltraFastBERT (crammedBERT-FFF) weights and modules: to and from ``FFFParams``.

UltraFastBERT stores one FFF layer as two linear maps:

- ``linear_in.weight`` (K*N, d_in) and ``linear_in.bias`` (K*N,): tree k owns rows k*N .. k*N+N-1,
  in heap order;
- ``linear_out.weight`` (d_out, K*N), no bias;

with K = ``parallel_size`` (trees) and N = 2**(depth+1) - 1. Its forward computes every logit,
masks all but the visited nodes and applies its activation (exact GELU by default); fffcore
computes only the visited ones, with the same branch rule (``logit > 0``).

The shapes fix K*N but not K and N apart (4095 rows are 1 tree of depth 11 or 4095 trees of depth
0, among others), nor the activation, and an ordinary dense MLP with ``linear_in`` and
``linear_out`` layers of K*N hidden units has the same shapes. Hence two sets of rules:

- State dicts (:func:`params_from_state_dict`) carry only the weights: the caller gives ``depth``
  or ``trees`` unless the layer is a single tree, which is assumed when neither is given and K*N
  is a valid node count; the activation is the caller's (default exact GELU).
- Modules (:func:`params_from_module`, :func:`swap_fff_modules`) assume nothing. The tree shape
  and the activation come from explicit arguments or from the module's own attributes, those of
  crammedBERT-FFF's ``FFF`` (``depth``, ``parallel_size``, ``n_nodes``, ``input_width``,
  ``output_width``, ``activation``); every attribute present must agree with the weights and
  with the arguments, and a module whose tree shape or activation cannot be established is
  refused with a ``ValueError`` saying why and how to proceed.
"""

from __future__ import annotations

import importlib.util
import numbers
import sys
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from fffcore.params import FFFParams
from fffcore.spec import ACTIVATIONS, DEFAULT_ACTIVATION, depth_from_node_count, node_count

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
    The layout alone does not make a module an FFF layer (a dense MLP can have it):
    :func:`params_from_module` and :func:`swap_fff_modules` check the rest.
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


def activation_name(activation: Any) -> str | None:
    """fffcore's name (one of :data:`fffcore.ACTIVATIONS`) for an activation, or None when it is not recognised.

    Recognised: a name among ``ACTIVATIONS``; instances of ``torch.nn.GELU`` (``approximate='none'``
    is ``"gelu"``, ``'tanh'`` is ``"gelu_tanh"``), ``torch.nn.ReLU``, ``torch.nn.SiLU`` and
    ``torch.nn.Identity``; those classes themselves (the class ``GELU`` is exact GELU, its default);
    and ``torch.nn.functional.gelu``, ``relu`` and ``silu``. Subclasses are not recognised, since
    they may compute something else. torch is never imported here: an object can only be one of
    torch's once torch has been imported.
    """
    if isinstance(activation, str):
        return activation if activation in ACTIVATIONS else None
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "nn"):
        return None
    nn = torch.nn
    classes = ((nn.GELU, "gelu"), (nn.ReLU, "relu"), (nn.SiLU, "silu"), (nn.Identity, "identity"))
    functions = ((nn.functional.gelu, "gelu"), (nn.functional.relu, "relu"), (nn.functional.silu, "silu"))
    if type(activation) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(getattr(activation, "approximate", None))
    for known, name in classes:
        if activation is known or type(activation) is known:
            return name
    for known, name in functions:
        if activation is known:
            return name
    return None


def activation_of_module(module: Any) -> str:
    """The activation an UltraFastBERT FFF module applies, as fffcore's name, read from its ``activation`` attribute.

    crammedBERT-FFF's ``FFF`` keeps a module instance there (``nn.GELU()`` by default); the values
    :func:`activation_name` recognises are accepted.

    Raises:
        ValueError: the module has no ``activation`` attribute (or it is None), or holds an
            activation that is not recognised.
    """
    found = getattr(module, "activation", None)
    if found is None:
        raise ValueError(f"module ({type(module).__name__}): {_NO_ACTIVATION}")
    name = activation_name(found)
    if name is None:
        raise ValueError(f"module ({type(module).__name__}): {_unknown_activation(found)}")
    return name


def params_from_module(
    module: Any,
    *,
    depth: int | None = None,
    trees: int | None = None,
    activation: str | None = None,
    dtype: str | None = None,
) -> FFFParams:
    """numpy ``FFFParams`` from one FFF module with UltraFastBERT's layout, checked against its attributes.

    Args:
        module: a torch module with ``linear_in`` (d_in -> K*N, bias optional) and ``linear_out``
            (K*N -> d_out, no bias), such as crammedBERT-FFF's ``FFF``.
        depth, trees: the tree shape (``trees`` is UltraFastBERT's ``parallel_size``); None reads
            the module's ``depth`` and ``parallel_size`` attributes. Given values must agree with
            the attributes that exist.
        activation: one of :data:`fffcore.ACTIVATIONS`; None reads the module's ``activation``
            attribute (see :func:`activation_name`). A given name must agree with the attribute
            when that is recognised; it is needed when the attribute is missing or not recognised.
        dtype: convert the weights to this numpy dtype (needed for bfloat16 modules); None keeps theirs.

    Returns:
        FFFParams with w_in (K, N, d_in), b_in (K, N) or None, w_out (K, N, d_out).

    Raises:
        TypeError: the module lacks the layout.
        ValueError: the tree shape or the activation cannot be established, or the module's
            ``depth``, ``parallel_size``, ``n_nodes``, ``input_width``, ``output_width`` or
            ``activation`` contradict its weights or the arguments. The message lists every problem.
    """
    _check_module_arguments(depth, trees, activation)
    if not is_ultrafastbert_fff(module):
        raise TypeError(
            f"module: expected UltraFastBERT's FFF layout (linear_in, linear_out without bias), "
            f"got {type(module).__name__}"
        )
    problems, params = _params_or_problems(module, depth, trees, activation, dtype)
    if params is None:
        raise ValueError(f"module ({type(module).__name__}): " + "; ".join(problems))
    return params


def swap_fff_modules(
    model: Any,
    backend: str | None = None,
    *,
    depth: int | None = None,
    trees: int | None = None,
    activation: str | None = None,
) -> list[str]:
    """Replace every UltraFastBERT FFF module inside ``model`` with :class:`fffcore.torch.FFFInference`.

    Candidates are the submodules with UltraFastBERT's layout (:func:`is_ultrafastbert_fff`; one
    inside another candidate goes with it). Each is read as :func:`params_from_module` reads it:
    the tree shape and activation from ``depth``, ``trees`` and ``activation`` when given, else
    from the module's own attributes, and every attribute present must agree with its weights and
    with the arguments. A candidate with neither a ``depth`` nor a ``parallel_size`` attribute, when
    neither ``depth`` nor ``trees`` is given, may be an ordinary dense MLP of the same shapes and is
    refused; so is one whose activation is missing, not recognised, or not the one given.

    All or nothing: every candidate is checked, and its replacement built, before any is put in
    place. If any candidate is refused, a ``ValueError`` lists each refused module on its own line
    (qualified name, class, what was expected and what was found, how to proceed) and ``model``
    is left unchanged.

    Each replacement computes only the visited neurons on ``backend`` (None: chosen per call, see
    :mod:`fffcore.plan`), keeps the original module's device and dtype, and accepts the same
    (..., d_in) inputs, returning (..., d_out). Replacements are for inference: their weights are
    buffers (``w_in``, ``b_in``, ``w_out``), not parameters, and are saved in ``model.state_dict()``.
    A module registered under several names is replaced by one shared replacement at each of them.

    Args:
        model: a ``torch.nn.Module`` containing the FFF modules (not one itself).
        backend: an fffcore backend name, or None.
        depth, trees: the tree shape of every candidate (``trees`` is ``parallel_size``), or None.
        activation: the activation of every candidate (one of :data:`fffcore.ACTIVATIONS`), or None.

    Returns:
        The qualified names of the modules replaced, in the order of
        ``model.named_modules(remove_duplicate=False)``.
    """
    from fffcore.torch import FFFInference

    _check_module_arguments(depth, trees, activation)
    if is_ultrafastbert_fff(model):
        raise ValueError("model: is itself an FFF module; wrap it in a parent module, or build FFFInference directly")

    found: list[tuple[str, int]] = []  # (qualified name, id of the module), in model order
    names_of: dict[int, list[str]] = {}
    modules: dict[int, Any] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if not name or not is_ultrafastbert_fff(module):
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue  # inside a candidate, which is replaced whole
        found.append((name, id(module)))
        names_of.setdefault(id(module), []).append(name)
        modules[id(module)] = module

    refused: list[str] = []
    replacements: dict[int, Any] = {}
    for key, module in modules.items():
        weight = module.linear_in.weight
        problems, params = _params_or_problems(
            module, depth, trees, activation, "float32" if _is_bfloat16(weight) else None
        )
        if params is None:
            refused.append(f"  {', '.join(names_of[key])} ({type(module).__name__}): " + "; ".join(problems))
            continue
        replacements[key] = FFFInference(params, backend=backend, device=weight.device, dtype=weight.dtype)
    if refused:
        raise ValueError(
            f"model: refused {len(refused)} of {len(modules)} modules with UltraFastBERT's FFF layout "
            "(linear_in, linear_out); nothing was replaced:\n" + "\n".join(refused)
        )

    for name, key in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, replacements[key])
    return [name for name, _ in found]


_NO_ACTIVATION = (
    "it has no activation attribute, so the activation it applies cannot be known; "
    f"pass activation= (one of {', '.join(ACTIVATIONS)}; crammedBERT-FFF's default nn.GELU() is 'gelu')"
)


def _unknown_activation(found: Any) -> str:
    shown = repr(found)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return (
        f"its activation attribute is {shown}, which is not one fffcore recognises (expected nn.GELU(), "
        "nn.GELU(approximate='tanh'), nn.ReLU(), nn.SiLU(), nn.Identity(), one of these classes, "
        f"torch.nn.functional.gelu/relu/silu, or a name among {ACTIVATIONS}); if it computes one of "
        "those, pass activation= with its name"
    )


def _check_module_arguments(depth: Any, trees: Any, activation: Any) -> None:
    for name, value, low in (("depth", depth, 0), ("trees", trees, 1)):
        if value is not None and not _is_int(value, low):
            raise ValueError(f"{name}: expected an int >= {low} or None, got {value!r}")
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"activation: expected a name among {ACTIVATIONS} or None, got {type(activation).__name__}")
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS} or None, got {activation!r}")


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _params_or_problems(
    module: Any, depth: int | None, trees: int | None, activation: str | None, dtype: str | None
) -> tuple[list[str], FFFParams | None]:
    """(problems, None) when ``module`` (with the layout) is refused, else ([], its FFFParams)."""
    w_in = module.linear_in.weight
    w_out = module.linear_out.weight
    total, d_in = (int(n) for n in w_in.shape)
    d_out = int(w_out.shape[0])
    problems: list[str] = []

    attributes: dict[str, int] = {}
    for attribute, low in (("depth", 0), ("parallel_size", 1), ("n_nodes", 1), ("input_width", 1), ("output_width", 1)):
        value = getattr(module, attribute, None)
        if value is None:
            continue
        if _is_int(value, low):
            attributes[attribute] = int(value)
        else:
            problems.append(f"its {attribute} attribute is {value!r}, expected an int >= {low}")
    for attribute, actual, weight in (
        ("input_width", d_in, f"linear_in.weight {tuple(w_in.shape)}"),
        ("output_width", d_out, f"linear_out.weight {tuple(w_out.shape)}"),
    ):
        if attribute in attributes and attributes[attribute] != actual:
            problems.append(f"its {attribute} attribute is {attributes[attribute]} but {weight} gives {actual}")

    shape_known = True
    for argument, value, attribute in (("depth", depth, "depth"), ("trees", trees, "parallel_size")):
        if value is not None and attribute in attributes and attributes[attribute] != value:
            problems.append(
                f"{argument}={value} was passed but its {attribute} attribute is {attributes[attribute]}; "
                f"pass {argument}={attributes[attribute]} or leave {argument} out"
            )
            shape_known = False
    depth_source = "passed" if depth is not None else "its depth attribute"
    trees_source = "passed" if trees is not None else "its parallel_size attribute"
    depth = depth if depth is not None else attributes.get("depth")
    trees = trees if trees is not None else attributes.get("parallel_size")
    n_nodes = None
    if depth is None and trees is None:
        problems.append(
            f"its tree shape cannot be established: expected an FFF module with depth and parallel_size "
            f"attributes (as crammedBERT-FFF's FFF has), found neither, and {total} hidden units in "
            "linear_in/linear_out; it may be an ordinary dense MLP, which must not be swapped; "
            "if it really is an FFF layer, pass depth= or trees="
        )
    elif shape_known:
        if depth is not None:
            fits = total % node_count(depth) == 0 and (trees is None or trees * node_count(depth) == total)
            if fits:
                n_nodes = node_count(depth)
        else:
            fits = total % trees == 0 and depth_from_node_count(total // trees) is not None
            if fits:
                n_nodes = total // trees
        if not fits:
            parts = []
            if trees is not None:
                parts.append(f"{trees} trees ({trees_source})")
            if depth is not None:
                parts.append(f"depth {depth} ({depth_source}), 2**(depth+1)-1 = {node_count(depth)} nodes per tree")
            problems.append(
                f"linear_in.weight {tuple(w_in.shape)} has {total} rows, which do not fit {' and '.join(parts)}; "
                "expected parallel_size * (2**(depth+1)-1) rows"
            )
    if n_nodes is not None and "n_nodes" in attributes and attributes["n_nodes"] != n_nodes:
        problems.append(
            f"its n_nodes attribute is {attributes['n_nodes']} but its weights and tree shape give "
            f"{n_nodes} nodes per tree ({total} rows in linear_in.weight)"
        )

    found = getattr(module, "activation", None)
    found_name = None if found is None else activation_name(found)
    if activation is not None:
        if found_name is not None and found_name != activation:
            problems.append(
                f"activation={activation!r} was passed but its activation attribute {found!r} is {found_name!r}; "
                f"a module is only swapped with the activation it applies: pass activation={found_name!r} "
                "or leave activation out"
            )
    elif found is None:
        problems.append(_NO_ACTIVATION)
    elif found_name is None:
        problems.append(_unknown_activation(found))
    else:
        activation = found_name

    if problems or n_nodes is None or activation is None:
        return problems, None
    state = {IN_WEIGHT: w_in, OUT_WEIGHT: w_out}
    if getattr(module.linear_in, "bias", None) is not None:
        state[IN_BIAS] = module.linear_in.bias
    return [], params_from_state_dict(state, trees=total // n_nodes, activation=activation, dtype=dtype)


def _is_bfloat16(tensor: Any) -> bool:
    return str(getattr(tensor, "dtype", "")) == "torch.bfloat16"


# The model classes, registered with transformers' Auto classes on import where transformers and torch are installed.
if importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("torch") is not None:
    from fffcore.ultrafastbert_model import UltraFastBERTConfig as UltraFastBERTConfig
    from fffcore.ultrafastbert_model import UltraFastBERTForMaskedLM as UltraFastBERTForMaskedLM
    from fffcore.ultrafastbert_model import (
        UltraFastBERTForSequenceClassification as UltraFastBERTForSequenceClassification,
    )
    from fffcore.ultrafastbert_model import UltraFastBERTModel as UltraFastBERTModel
    from fffcore.ultrafastbert_model import register

    register()
