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

``fff`` is differentiable: its gradients with respect to ``x``, ``w_in``, ``b_in`` and ``w_out``
are those of :func:`fffcore.fff_backward` (the paths held fixed), computed by
``fffcore::fff_backward`` with the backend chosen as for the forward pass among those that
declare ``backward``. ``cmm`` has no gradient: ``backward`` through it raises a ``RuntimeError``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import torch

from fffcore.arrays import inspect_array
from fffcore.params import FFFParams, layer_shape
from fffcore.plan import Plan, check_input_shape, plan_for

__all__ = ["cmm_op", "fff_backward_op", "fff_op", "params_from_tensors"]

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
    params = params_from_tensors(w_in, b_in, w_out, activation)
    y = _plan(x, params, backend).fff(x, params)
    return y.clone() if _aliases(y, x) else y


@fff_op.register_fake
def _fff_fake(x: torch.Tensor, w_in: torch.Tensor, b_in: Any, w_out: torch.Tensor, *options: Any) -> torch.Tensor:
    _check_shapes(x, w_in, b_in, w_out)
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
    params = params_from_tensors(w_in, b_in, w_out, activation)
    return _plan(x, params, backend).cmm(x, params)


@cmm_op.register_fake
def _cmm_fake(
    x: torch.Tensor, w_in: torch.Tensor, b_in: Any, w_out: torch.Tensor, *options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_shapes(x, w_in, b_in, w_out)
    trees, n_nodes = w_in.shape[0], w_in.shape[1]
    levels = (n_nodes + 1).bit_length() - 1
    shape = (*x.shape[:-1], trees, levels)
    return x.new_empty(shape, dtype=w_in.dtype), x.new_empty(shape, dtype=torch.int64)


def _plan(x: torch.Tensor, params: FFFParams, backend: str | None, *, backward: bool = False) -> Plan:
    """The call's plan, as :func:`fffcore.fff` takes it, without its refusal to be traced: torch
    records these operators as one operation each, so tracing them loses nothing."""
    x, kind, device = inspect_array(x)
    return plan_for(x, kind, device, params, backend, backward=backward)


def _check_shapes(x: torch.Tensor, w_in: torch.Tensor, b_in: Any, w_out: torch.Tensor) -> None:
    """The shape checks the real call makes, so a traced graph fails where eager would."""
    _, _, _, d_in, _ = layer_shape(tuple(w_in.shape), None if b_in is None else tuple(b_in.shape), tuple(w_out.shape))
    check_input_shape(tuple(x.shape), d_in)


def _aliases(y: torch.Tensor, x: torch.Tensor) -> bool:
    # A custom operator's outputs must not share memory with its inputs; no backend returns x
    # itself, but an empty result may report the same (null) address.
    return y.numel() > 0 and y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


@torch.library.custom_op("fffcore::fff_backward", mutates_args=())
def fff_backward_op(
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor | None,
    w_out: torch.Tensor,
    activation: str,
    backend: str | None,
    grad_y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``fffcore::fff`` given ``grad_y``: for x, w_in, b_in (empty for a layer without bias), w_out."""
    params = params_from_tensors(w_in, b_in, w_out, activation)
    grad_y = grad_y.to(w_in.dtype)
    grad_x, grad_w_in, grad_b_in, grad_w_out = _plan(x, params, backend, backward=True).backward(
        x, params, grad_y, "torch"
    )
    results = [grad_x, grad_w_in, grad_b_in if grad_b_in is not None else w_in.new_empty(0), grad_w_out]
    results = [torch.as_tensor(r, device=x.device) for r in results]
    inputs = (x, w_in, b_in, w_out, grad_y)
    # An operator's outputs must not share memory with its inputs.
    return tuple(r.clone() if any(t is not None and _aliases(r, t) for t in inputs) else r for r in results)


@fff_backward_op.register_fake
def _fff_backward_fake(
    x: torch.Tensor, w_in: torch.Tensor, b_in: Any, w_out: torch.Tensor, activation: str, backend: Any, grad_y: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    bias = torch.empty_like(b_in) if b_in is not None else w_in.new_empty(0)
    return x.new_empty(x.shape, dtype=w_in.dtype), torch.empty_like(w_in), bias, torch.empty_like(w_out)


def _fff_gradients(ctx: Any, grad_y: torch.Tensor) -> Any:
    x, w_in, b_in, w_out = ctx.saved_tensors
    grad_x, grad_w_in, grad_b_in, grad_w_out = fff_backward_op(
        x, w_in, b_in if ctx.has_bias else None, w_out, ctx.activation, ctx.backend, grad_y.contiguous()
    )
    return (
        grad_x.to(x.dtype) if ctx.needs_input_grad[0] else None,
        grad_w_in if ctx.needs_input_grad[1] else None,
        grad_b_in if ctx.has_bias and ctx.needs_input_grad[2] else None,
        grad_w_out if ctx.needs_input_grad[3] else None,
        None,
        None,
    )


def _keep_inputs(ctx: Any, inputs: Any, output: Any) -> None:
    x, w_in, b_in, w_out, activation, *rest = inputs
    ctx.has_bias = b_in is not None
    ctx.activation = activation
    ctx.backend = rest[0] if rest else None
    ctx.save_for_backward(x, w_in, b_in if b_in is not None else w_in.new_empty(0), w_out)


def _no_gradient(ctx: Any, *grads: Any) -> Any:
    raise RuntimeError(
        "fffcore::cmm has no gradient (the paths it returns are integers and the logits are the forward "
        "pass's); differentiate fffcore::fff, or call cmm under torch.no_grad() or on detached tensors"
    )


def _keep_nothing(ctx: Any, inputs: Any, output: Any) -> None:
    return None


fff_op.register_autograd(_fff_gradients, setup_context=_keep_inputs)
cmm_op.register_autograd(_no_gradient, setup_context=_keep_nothing)
