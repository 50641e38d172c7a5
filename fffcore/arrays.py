"""What an array is: its library, its device, and whether fffcore can compute with it.

Found without importing the array's library: ``type(x).__module__`` names it, and the answer is
cached per class. :func:`inspect_array` is the one place a call's ``x`` is looked at.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

_ARRAY_TYPE_BY_CLASS: dict[type, str] = {}


def array_type(x: Any) -> str:
    """The array library of ``x``: ``"numpy"``, ``"torch"``, ``"cupy"``, or the top-level module name.

    Read from ``type(x).__module__`` and cached per class, so asking never
    imports torch or cupy and costs a dictionary lookup after the first time.
    numpy's masked arrays are ``"numpy.ma"``: no backend takes them, since
    computing on their data would silently ignore the mask.
    """
    cls = type(x)
    name = _ARRAY_TYPE_BY_CLASS.get(cls)
    if name is None:
        module = cls.__module__ or ""
        name = "numpy.ma" if module.startswith("numpy.ma") else module.split(".", 1)[0]
        # numpy scalars and arrays live in "numpy"; torch.Tensor subclasses may be
        # defined elsewhere, so fall back to the MRO before giving up.
        if name not in ("numpy", "numpy.ma", "torch", "cupy"):
            for base in cls.__mro__[1:]:
                base_module = (base.__module__ or "").split(".", 1)[0]
                if base_module in ("numpy", "torch", "cupy"):
                    name = base_module
                    break
        _ARRAY_TYPE_BY_CLASS[cls] = name
    return name


def array_device(x: Any, kind: str) -> str:
    """The device type ``x`` lives on: ``"cpu"`` for numpy, ``"cuda"`` for cupy, torch's own otherwise."""
    if kind == "numpy":
        return "cpu"
    if kind == "torch":
        # is_cpu and is_cuda are plain flags; x.device builds a new object on every access.
        return "cpu" if x.is_cpu else ("cuda" if x.is_cuda else str(x.device.type))
    if kind == "cupy":
        return "cuda"
    device = getattr(x, "device", "cpu")
    return str(getattr(device, "type", device))


def describe_device(x: Any, kind: str) -> str:
    """``x``'s library and device for error messages, e.g. ``"a torch tensor on cuda:0"``."""
    if kind == "torch":
        return f"a torch tensor on {x.device}"
    if kind == "cupy":
        return f"a cupy array on cuda:{x.device.id}"
    return f"a {kind} array on {array_device(x, kind)}"


def inspect_array(x: Any, name: str = "x") -> tuple[Any, str, str]:
    """``(x, array type, device)``: the argument as an array fffcore can hand on, looked at once.

    numpy, torch and cupy arrays come back as they are (numpy scalars too, as 0-D arrays would);
    anything else with a ``shape`` and a ``dtype`` (a Dask array) is taken as it is;
    lists and scalars become numpy arrays. Refused here with a ``TypeError`` naming ``name``:
    numpy masked arrays (their mask would be ignored), sparse torch tensors and meta tensors
    (no values), and what numpy cannot turn into an array.
    """
    kind = array_type(x)
    if kind == "numpy":
        return x, kind, "cpu"
    if kind == "torch":
        if x.layout is not sys.modules["torch"].strided or x.is_meta:  # the common case asks no more
            require_dense_tensor(x, name)
        return x, kind, array_device(x, kind)
    if kind == "cupy":
        return x, kind, "cuda"
    if kind == "numpy.ma":
        raise masked_array_error(name)
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        try:
            x = np.asarray(x)
        except Exception as error:  # ragged lists and the like
            raise TypeError(f"{name}: expected an array, got {type(x).__name__}: {error}") from error
        return x, "numpy", "cpu"
    return x, kind, array_device(x, kind)


def require_dense_tensor(tensor: Any, name: str) -> None:
    """Raise a TypeError naming ``name`` unless the torch ``tensor`` is dense and holds values.

    Sparse layouts and the meta device (shapes without data) reach no kernel: they are refused
    here, where the argument's name is known, rather than deep inside a backend.
    """
    torch = sys.modules["torch"]  # a torch tensor exists, so torch is imported
    if tensor.layout is not torch.strided:
        raise TypeError(f"{name}: expected a dense (strided) torch tensor, got layout {tensor.layout}; use .to_dense()")
    if tensor.is_meta:
        raise TypeError(
            f"{name}: a torch tensor on the meta device holds no values to compute with; "
            "materialise it first (for a module: .to_empty(device=...) and load its weights)"
        )


def masked_array_error(name: str) -> TypeError:
    """The error for a numpy masked array given as ``name``."""
    return TypeError(
        f"{name}: expected a plain array, got a numpy masked array, whose mask fffcore would ignore; "
        f"pass {name}.filled(value) to choose what masked entries hold, "
        f"or np.asarray({name}) for the data under the mask"
    )


def numpy_rows(x: Any, dtype: str) -> Any:
    """``x`` as a C-contiguous numpy array of ``dtype``, copied only when it is not one already.

    For numpy backends: the core hands them (B, d_in) views that may be
    strided or of another floating dtype. When ``x`` already is such an array
    it is returned itself, not a copy, so callers must only read the result.
    """
    return np.ascontiguousarray(x, dtype=dtype)


def host_values(array: Any) -> Any:
    """A numpy array holding ``array``'s values bit for bit (bfloat16 as its 16-bit patterns): to hash or save."""
    kind = array_type(array)
    if kind == "numpy":
        return array
    if kind == "cupy":
        return array.get()
    if kind == "torch":
        import torch

        host = array.detach().cpu()
        return (host.view(torch.int16) if host.dtype == torch.bfloat16 else host).numpy()
    raise TypeError(f"expected a numpy, torch or cupy array, got {kind}")
