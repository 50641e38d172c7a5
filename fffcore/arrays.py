"""Which library an array belongs to, found without importing that library."""

from __future__ import annotations

import sys
from typing import Any

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
    import numpy as np

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
