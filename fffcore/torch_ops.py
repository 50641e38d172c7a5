"""The FFF layer as torch custom operators: ``torch.ops.fffcore.fff`` and ``torch.ops.fffcore.cmm``.

Registered with :mod:`torch.library` when this module is imported (``import
fffcore.torch`` does it), each with a fake implementation that gives the
result's shape, dtype and device without computing it. torch's tracers
(``torch.compile``, ``torch.export``, ``torch.jit.trace``) then record one
opaque operation per call, which runs the chosen backend anew on every input,
instead of tracing into numpy or numba code they cannot see (and would replay
as a constant).

Signatures::

    fffcore::fff(Tensor x, Tensor w_in, Tensor? b_in, Tensor w_out, str activation, str? backend) -> Tensor
    fffcore::cmm(Tensor x, Tensor w_in, Tensor? b_in, Tensor w_out, str activation, str? backend)
        -> (Tensor, Tensor)

with the shapes of :class:`fffcore.FFFParams` (``w_in`` (K, N, d_in), ``b_in``
(K, N) or None, ``w_out`` (K, N, d_out)) and ``x`` (..., d_in). ``fff`` returns
(..., d_out) in the weights' dtype on ``x``'s device; ``cmm`` returns logits
(..., K, D+1) in the weights' dtype and nodes (..., K, D+1) int64. The
backend is chosen per call as by :func:`fffcore.fff` (None: automatically).

Inference only: the operators have no gradient. Called with inputs that
require grad while grad mode is on, their results require grad, and
``backward`` through them raises a ``RuntimeError`` that says so.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import torch

from fffcore.api import run_cmm, run_fff
from fffcore.params import FFFParams

__all__ = ["cmm_op", "fff_op", "params_from_tensors"]

#: Parameter sets kept, most recently used first; one per layer of a model in use is enough.
_CACHE_SIZE = 256
_cache: OrderedDict[tuple[Any, ...], FFFParams] = OrderedDict()
_cache_lock = threading.Lock()


def params_from_tensors(
    w_in: torch.Tensor, b_in: torch.Tensor | None, w_out: torch.Tensor, activation: str
) -> FFFParams:
    """:class:`FFFParams` over these tensors, validated once and reused while their contents stay the same.

    The key holds each tensor's storage address, shape, strides, dtype, device and version
    counter (bumped by every in-place write, ``load_state_dict`` included). The cached
    parameters keep their tensors alive, so no other tensor can take that address while the
    entry exists. Tensors without a version counter (made under ``torch.inference_mode``) are
    validated on every call.
    """
    try:
        key = (activation, *(_stamp(t) for t in (w_in, b_in, w_out)))
    except RuntimeError:  # inference tensors track no version
        return FFFParams(w_in, b_in, w_out, activation)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    params = FFFParams(w_in, b_in, w_out, activation)
    with _cache_lock:
        _cache[key] = params
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return params


def _stamp(tensor: torch.Tensor | None) -> tuple[Any, ...] | None:
    if tensor is None:
        return None
    return (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device, tensor._version)


@torch.library.custom_op("fffcore::fff", mutates_args=())
def fff_op(
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor | None,
    w_out: torch.Tensor,
    activation: str,
    backend: str | None = None,
) -> torch.Tensor:
    """The FFF layer of (..., d_in) ``x``: (..., d_out) in the weights' dtype, on ``x``'s device."""
    y = run_fff(x, params_from_tensors(w_in, b_in, w_out, activation), backend)
    return y.clone() if _aliases(y, x) else y


@fff_op.register_fake
def _fff_fake(x: torch.Tensor, w_in: torch.Tensor, b_in: Any, w_out: torch.Tensor, *options: Any) -> torch.Tensor:
    _check_shapes(x, w_in, w_out)
    return x.new_empty((*x.shape[:-1], w_out.shape[2]), dtype=w_out.dtype)


@torch.library.custom_op("fffcore::cmm", mutates_args=())
def cmm_op(
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor | None,
    w_out: torch.Tensor,
    activation: str,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CMM of (..., d_in) ``x``: logits (..., K, D+1) in the weights' dtype and nodes (..., K, D+1) int64."""
    logits, nodes = run_cmm(x, params_from_tensors(w_in, b_in, w_out, activation), backend)
    return logits, nodes


@cmm_op.register_fake
def _cmm_fake(
    x: torch.Tensor, w_in: torch.Tensor, b_in: Any, w_out: torch.Tensor, *options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_shapes(x, w_in, w_out)
    trees, n_nodes = w_in.shape[0], w_in.shape[1]
    levels = (n_nodes + 1).bit_length() - 1
    shape = (*x.shape[:-1], trees, levels)
    return x.new_empty(shape, dtype=w_in.dtype), x.new_empty(shape, dtype=torch.int64)


def _check_shapes(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> None:
    """The shape checks the real call makes, so a traced graph fails where eager would."""
    if w_in.dim() != 3 or w_out.dim() != 3:
        raise ValueError(f"w_in, w_out: expected 3-D tensors, got shapes {tuple(w_in.shape)} and {tuple(w_out.shape)}")
    if x.dim() < 1 or x.shape[-1] != w_in.shape[2]:
        raise ValueError(f"x: expected shape (..., {w_in.shape[2]}) to match w_in, got {tuple(x.shape)}")


def _aliases(y: torch.Tensor, x: torch.Tensor) -> bool:
    # A custom operator's outputs must not share memory with its inputs; no backend returns x
    # itself, but an empty result may report the same (null) address.
    return y.numel() > 0 and y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


def _no_gradient(ctx: Any, *grads: Any) -> Any:
    raise RuntimeError(
        "fffcore's FFF operators are for inference and have no gradient; call them under torch.no_grad() "
        "or on detached tensors"
    )


def _keep_nothing(ctx: Any, inputs: Any, output: Any) -> None:
    return None


fff_op.register_autograd(_no_gradient, setup_context=_keep_nothing)
cmm_op.register_autograd(_no_gradient, setup_context=_keep_nothing)
