"""Array adapters: build a backend's input in its array type and device, and read results back as numpy.

One small class per array library in :data:`ADAPTERS`; the library is imported
only inside the methods, so listing adapters never imports torch or cupy.
bfloat16 is an adapter concern: numpy has no bfloat16, so only adapters whose
library has one (torch) can build bfloat16 parameters and inputs, and cases
that need it are skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

import numpy as np

from fffcore.arrays import array_type
from fffcore.spec import dtype_name

#: Memory layouts the suite gives inputs and parameters (each library offers those it can hold,
#: :attr:`ArrayAdapter.layouts`); the first is the plain one every draw shrinks to.
LAYOUTS: tuple[str, ...] = ("contiguous", "transposed", "strided", "byteswapped", "readonly")


class ArrayAdapter:
    """Converts float64/int64 numpy arrays to one array library and back.

    Attributes:
        name: the array type, as :func:`fffcore.arrays.array_type` spells it.
        dtypes: floating dtypes this library can hold.
        layouts: the memory layouts of :data:`LAYOUTS` this library can give an array.
    """

    name: ClassVar[str]
    dtypes: ClassVar[tuple[str, ...]]
    layouts: ClassVar[tuple[str, ...]] = LAYOUTS[:3]  # contiguous, transposed, strided: every library

    def unavailable_reason(self, device: str) -> str | None:
        """None when arrays can be built on ``device`` here; otherwise why not."""
        raise NotImplementedError

    def from_numpy(self, values: np.ndarray, dtype: str, device: str) -> Any:
        """A new contiguous array of ``values`` converted to ``dtype`` (any numpy dtype name or bfloat16)."""
        raise NotImplementedError

    def to_numpy(self, array: Any) -> np.ndarray:
        """A numpy copy of ``array``; bfloat16 becomes float32, which holds every bfloat16 value exactly."""
        raise NotImplementedError

    def device_of(self, array: Any) -> str:
        """``"cpu"`` or ``"cuda"`` (the device kind, without an index)."""
        raise NotImplementedError

    def reversed_axes(self, array: Any) -> Any:
        """A view of ``array`` with its axes in reverse order (the transpose of a matrix)."""
        return array.transpose()

    def is_own(self, array: Any) -> bool:
        return array_type(array) == self.name

    def dtype_of(self, array: Any) -> str:
        return dtype_name(array.dtype)


class NumpyAdapter(ArrayAdapter):
    name = "numpy"
    dtypes = ("float16", "float32", "float64")
    layouts = LAYOUTS

    def unavailable_reason(self, device: str) -> str | None:
        return None if device == "cpu" else f"numpy arrays live on the cpu, not {device}"

    def from_numpy(self, values: np.ndarray, dtype: str, device: str) -> np.ndarray:
        return np.array(values, dtype=dtype, copy=True)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.array(array, copy=True)

    def device_of(self, array: Any) -> str:
        return "cpu"


class TorchAdapter(ArrayAdapter):
    name = "torch"
    dtypes = ("float16", "bfloat16", "float32", "float64")

    def unavailable_reason(self, device: str) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed"
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "torch reports no CUDA device"
        elif device != "cpu":
            return f"unknown device {device!r}"
        return None

    def from_numpy(self, values: np.ndarray, dtype: str, device: str) -> Any:
        import torch

        target = getattr(torch, dtype)
        return torch.from_numpy(np.array(values, order="C", copy=True)).to(device=device, dtype=target).contiguous()

    def to_numpy(self, array: Any) -> np.ndarray:
        import torch

        array = array.detach().cpu()
        if array.dtype == torch.bfloat16:
            array = array.float()
        return array.numpy().copy()

    def device_of(self, array: Any) -> str:
        return str(array.device.type)

    def reversed_axes(self, array: Any) -> Any:
        return array.permute(*reversed(range(array.dim())))


class CupyAdapter(ArrayAdapter):
    name = "cupy"
    dtypes = ("float16", "float32", "float64")

    def unavailable_reason(self, device: str) -> str | None:
        if device != "cuda":
            return f"cupy arrays live on cuda, not {device}"
        if importlib.util.find_spec("cupy") is None:
            return "cupy is not installed"
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
        except Exception as error:  # no driver, no device
            return f"cupy cannot reach a CUDA device: {error}"
        return None

    def from_numpy(self, values: np.ndarray, dtype: str, device: str) -> Any:
        import cupy

        return cupy.asarray(np.asarray(values, dtype=dtype))

    def to_numpy(self, array: Any) -> np.ndarray:
        import cupy

        return cupy.asnumpy(array)

    def device_of(self, array: Any) -> str:
        return "cuda"


ADAPTERS: dict[str, ArrayAdapter] = {
    adapter.name: adapter for adapter in (NumpyAdapter(), TorchAdapter(), CupyAdapter())
}


def adapter_for(kind: str) -> ArrayAdapter | None:
    """The adapter of an array type, or None when the suite has none."""
    return ADAPTERS.get(kind)


def with_layout(adapter: ArrayAdapter, values: np.ndarray, dtype: str, device: str, layout: str) -> Any:
    """``values`` as an array of ``adapter``'s type whose memory layout is ``layout``.

    Layouts: ``"contiguous"``; ``"transposed"``, stored with its axes reversed (a
    transposed view of a contiguous array, Fortran order); ``"strided"``, every
    other column of an array twice as wide, so the last axis has stride 2;
    numpy only: ``"byteswapped"``, contiguous in the byte order that is not the
    machine's, and ``"readonly"``, a contiguous array that cannot be written.
    The logical values are the same in every layout.
    """
    if layout not in adapter.layouts:
        raise ValueError(f"layout: expected one of {adapter.layouts} for {adapter.name} arrays, got {layout!r}")
    if layout == "transposed" and values.ndim >= 2:
        return adapter.reversed_axes(adapter.from_numpy(np.ascontiguousarray(values.T), dtype, device))
    if layout in ("strided", "transposed"):  # a 1-D "transposed" array is just strided
        wide = np.zeros((*values.shape[:-1], 2 * values.shape[-1]), dtype=values.dtype)
        wide[..., ::2] = values
        return adapter.from_numpy(wide, dtype, device)[..., ::2]
    array = adapter.from_numpy(values, dtype, device)
    if layout == "byteswapped":
        return array.astype(array.dtype.newbyteorder())
    if layout == "readonly":
        array.flags.writeable = False
    return array


def round_to_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` rounded to ``dtype`` and widened back to float64 (bfloat16 through torch)."""
    if dtype == "bfloat16":
        torch_adapter = ADAPTERS["torch"]
        return torch_adapter.to_numpy(torch_adapter.from_numpy(values, dtype, "cpu")).astype(np.float64)
    with np.errstate(over="ignore"):  # beyond the dtype's range is +-inf, as any backend's conversion gives
        return np.asarray(values).astype(dtype).astype(np.float64)
