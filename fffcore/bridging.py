"""Handing one library's arrays to a backend that computes on another's, without copying.

A backend computes on the array types it declares. When a call's ``x`` (or
its parameters) belongs to another library but lives on a device the backend
computes on, the core hands the backend a view of the same memory and turns
the result back into the caller's library, on the caller's device:

===============  ================  ==============================  ===================================
caller           backend's arrays  in (shares memory)              out (shares memory)
===============  ================  ==============================  ===================================
torch, CPU       numpy             ``Tensor.numpy()``              ``torch.from_numpy``
numpy            torch             ``torch.from_numpy``            ``Tensor.numpy()``
torch, CUDA      cupy              a view built from its address   ``torch.from_dlpack``
cupy             torch             ``torch.from_dlpack``           ``cupy.from_dlpack``
===============  ================  ==============================  ===================================

On a CUDA stream other than torch's default one (a side stream, or the stream
torch captures a CUDA graph on, as ``torch.cuda.graph`` and
``torch.compile(mode="reduce-overhead")`` do), the call runs inside the
bridge's ``call_context``: cupy launches on torch's current stream, so its
work is ordered after torch's and recorded by a capture, and cupy's memory
(the output, any copy) comes from tensors torch allocates on that stream, so
it lives in torch's caching allocator (in a capture, the graph's pool); the
result is the tensor torch allocated for it. Either way cupy's work runs on
torch's current stream, so the address view serves on every stream.

Copies are made only where sharing is impossible, once per call for ``x`` and once per parameters
object for the weights (the core keeps the bridged parameters in the call's plan,
:mod:`fffcore.plan`): a bfloat16 tensor for a library without bfloat16 (numpy, cupy) is first
converted, by torch, to the parameters' dtype (the dtype of the computation anyway); a read-only
numpy array, or one in the byte order that is not the machine's, is copied for torch, which has
neither; and a backend that needs contiguous rows copies a strided view itself, as it would for its
own arrays. A tensor on a device the backend does not compute on is never moved:
that is a ``TypeError`` naming both devices.

Nothing here imports torch or cupy unless the caller's arrays are theirs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fffcore.spec import dtype_name


@dataclass(frozen=True)
class Bridge:
    """How arrays of one library on one device reach a backend's library, and how results come back.

    Attributes:
        source: the caller's array type (``"torch"``, ``"numpy"``, ``"cupy"``).
        device: the device type both sides live on (``"cpu"``, ``"cuda"``).
        target: the backend's array type.
        to_target: ``(x, dtype)`` -> ``x`` in the target library, sharing memory
            unless the docstring of this module says otherwise; ``dtype`` is
            the parameters' dtype, used only when ``x`` must be converted anyway.
        to_source: a result of the backend -> the same data in the caller's library.
        call_context: ``x`` (the caller's array) -> a context manager the whole call (both
            conversions included) runs in, or None when it needs none; None: never one.
    """

    source: str
    device: str
    target: str
    to_target: Callable[[Any, str], Any]
    to_source: Callable[[Any], Any]
    call_context: Callable[[Any], contextlib.AbstractContextManager[None] | None] | None = None


def find_bridge(source: str, device: str, targets: tuple[str, ...]) -> Bridge | None:
    """The first bridge from ``source`` arrays on ``device`` to one of ``targets``, or None."""
    for target in targets:
        bridge = _BRIDGES.get((source, device, target))
        if bridge is not None:
            return bridge
    return None


# --- torch <-> numpy, on the CPU -------------------------------------------------------------------


def _torch() -> Any:
    """torch itself; only called with a tensor in hand, so it is imported already."""
    return sys.modules["torch"]


def _torch_to_numpy(x: Any, dtype: str) -> np.ndarray:
    try:
        # The common case first: a dense CPU tensor of a numpy dtype that needs no gradient.
        # Tensor.numpy() refuses everything else, which the slower path below then sorts out.
        return x.numpy()
    except (RuntimeError, TypeError):
        pass
    torch = _torch()
    if x.requires_grad:  # inference only: the result never carries a graph
        x = x.detach()
    if x.dtype is torch.bfloat16:  # numpy has no bfloat16: one conversion, by torch
        x = x.to(getattr(torch, dtype))
    return x.numpy()


def _numpy_to_torch(x: Any, dtype: str) -> Any:
    import torch

    if not x.flags.writeable or not x.dtype.isnative or any(stride < 0 for stride in x.strides):
        # torch has no read-only tensors, no byte order but the machine's and no negative strides: one copy
        x = np.array(x, dtype=dtype if dtype != "bfloat16" else x.dtype.newbyteorder("="))
    return torch.from_numpy(x)


def _numpy_result_to_torch(y: Any) -> Any:
    if not y.flags.writeable:
        y = y.copy()
    return _torch().from_numpy(y)


def _torch_result_to_numpy(y: Any) -> np.ndarray:
    if y.requires_grad:
        y = y.detach()
    return y.numpy()


# --- torch <-> cupy, on CUDA -----------------------------------------------------------------------


def _torch_to_cupy(x: Any, dtype: str) -> Any:
    import cupy

    torch = _torch()
    if x.requires_grad:
        x = x.detach()
    if x.dtype is torch.bfloat16:  # cupy's kernels take no bfloat16: one conversion, by torch
        x = x.to(getattr(torch, dtype))
    # cupy's work runs on torch's current stream (the default stream is both's; any other through
    # the call's context), so it is ordered after torch's without DLPack's exchange of streams.
    return cupy_view_of(cupy, x)


def _torch_stream_context(x: Any) -> contextlib.AbstractContextManager[None] | None:
    """None on torch's default stream (which is cupy's too); elsewhere, :func:`_on_torch_stream`."""
    torch = _torch()
    device_index = x.device.index
    stream = _current_stream(torch, device_index)
    if stream == 0:
        return None
    return _on_torch_stream(stream, device_index)


#: The tensors behind cupy's allocations in the running call on a torch stream, by address
#: (:func:`_on_torch_stream`); None outside such a call.
_call_allocations: contextvars.ContextVar[dict[int, Any] | None] = contextvars.ContextVar(
    "fffcore_torch_allocations", default=None
)


@contextlib.contextmanager
def _on_torch_stream(stream: int, device_index: int) -> Iterator[None]:
    """cupy's work on the CUDA stream ``stream`` of device ``device_index``, its memory from torch."""
    import cupy

    allocations: dict[int, Any] = {}
    token = _call_allocations.set(allocations)
    try:
        with cupy.cuda.Device(device_index), cupy.cuda.ExternalStream(stream, device_index):
            with cupy.cuda.using_allocator(functools.partial(_torch_allocation, allocations)):
                yield
    finally:
        _call_allocations.reset(token)


def _torch_bytes(size: int, device_index: int) -> Any:
    """``size`` bytes as a uint8 tensor from torch's caching allocator, on torch's current stream."""
    torch = _torch()
    return torch.empty(size, dtype=torch.uint8, device=torch.device("cuda", device_index))


def _torch_allocation(allocations: dict[int, Any], size: int) -> Any:
    """cupy's allocator inside :func:`_on_torch_stream`: ``size`` bytes of a tensor torch allocates,
    kept alive by cupy's memory and recorded in ``allocations`` for the result's way back."""
    import cupy

    device_index = cupy.cuda.Device().id
    block = _torch_bytes(size, device_index)
    pointer = int(block.data_ptr())
    allocations[pointer] = block
    return cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(pointer, size, block, device_index), 0)


def _current_stream(torch: Any, device_index: int) -> int:
    """The address of torch's current CUDA stream on a device (0: the default stream)."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # a plain integer, no Stream object
    if raw is not None:
        return int(raw(device_index))
    return int(torch.cuda.current_stream(device_index).cuda_stream)


def cupy_view_of(cupy: Any, x: Any) -> Any:
    """A cupy array over a CUDA tensor's memory, built from its address, shape and strides.

    Only for tensors of torch's default stream, which is also cupy's: work on one stream runs
    in order, so no synchronisation is needed. Measured on an H200, this costs a few
    microseconds where DLPack's exchange, which negotiates streams, costs tens.
    """
    itemsize = x.element_size()
    shape = tuple(x.shape)
    strides = tuple(stride * itemsize for stride in x.stride())
    dtype = dtype_name(x.dtype)
    if x.numel() == 0:
        with cupy.cuda.Device(x.device.index):
            return cupy.empty(shape, dtype)
    extent = itemsize * (1 + sum((size - 1) * stride for size, stride in zip(shape, x.stride(), strict=True)))
    memory = cupy.cuda.UnownedMemory(x.data_ptr(), extent, x, x.device.index)
    return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(memory, 0), strides)


def _cupy_to_torch(x: Any, dtype: str) -> Any:
    import torch

    return torch.from_dlpack(x)


def _torch_result_to_cupy(y: Any) -> Any:
    import cupy

    if y.requires_grad:
        y = y.detach()
    return cupy.from_dlpack(y)


def _cupy_result_to_torch(y: Any) -> Any:
    import torch

    allocations = _call_allocations.get()
    if allocations:
        # Allocated for this call on a torch stream: the result is the tensor torch allocated, so
        # torch (and a CUDA graph's pool) sees memory it owns, not a DLPack view of it.
        owner = allocations.get(int(y.data.ptr))
        if owner is not None and y.flags.c_contiguous and y.nbytes <= owner.numel():
            return owner[: y.nbytes].view(getattr(torch, y.dtype.name)).view(y.shape)
    return torch.from_dlpack(y)


_BRIDGES: dict[tuple[str, str, str], Bridge] = {
    (bridge.source, bridge.device, bridge.target): bridge
    for bridge in (
        Bridge("torch", "cpu", "numpy", _torch_to_numpy, _numpy_result_to_torch),
        Bridge("numpy", "cpu", "torch", _numpy_to_torch, _torch_result_to_numpy),
        Bridge("torch", "cuda", "cupy", _torch_to_cupy, _cupy_result_to_torch, _torch_stream_context),
        Bridge("cupy", "cuda", "torch", _cupy_to_torch, _torch_result_to_cupy),
    )
}


__all__ = ["Bridge", "cupy_view_of", "find_bridge"]
