"""Which library an array belongs to, found without importing that library."""

from __future__ import annotations

from typing import Any

_ARRAY_TYPE_BY_CLASS: dict[type, str] = {}


def array_type(x: Any) -> str:
    """The array library of ``x``: ``"numpy"``, ``"torch"``, ``"cupy"``, or the top-level module name.

    Read from ``type(x).__module__`` and cached per class, so asking never
    imports torch or cupy and costs a dictionary lookup after the first time.
    """
    cls = type(x)
    name = _ARRAY_TYPE_BY_CLASS.get(cls)
    if name is None:
        module = cls.__module__ or ""
        name = module.split(".", 1)[0]
        # numpy scalars and arrays live in "numpy"; torch.Tensor subclasses may be
        # defined elsewhere, so fall back to the MRO before giving up.
        if name not in ("numpy", "torch", "cupy"):
            for base in cls.__mro__[1:]:
                base_module = (base.__module__ or "").split(".", 1)[0]
                if base_module in ("numpy", "torch", "cupy"):
                    name = base_module
                    break
        _ARRAY_TYPE_BY_CLASS[cls] = name
    return name


def numpy_rows(x: Any, dtype: str) -> Any:
    """``x`` as a C-contiguous numpy array of ``dtype``, copied only when it is not one already.

    For numpy backends: the core hands them (B, d_in) views that may be
    strided or of another floating dtype. When ``x`` already is such an array
    it is returned itself, not a copy, so callers must only read the result.
    """
    import numpy as np

    return np.ascontiguousarray(x, dtype=dtype)
