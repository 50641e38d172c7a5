"""Moving inputs into torch and results back into the caller's array type.

torch input stays on its device and is converted only when its dtype differs
from the parameters' (``Tensor.to`` returns the tensor itself otherwise): no
host round trip, no copy. numpy input is wrapped with ``torch.from_numpy``
(shared memory, no copy) when it is already a writable C-contiguous array of
the right dtype, copied otherwise; results go back with ``Tensor.numpy()``,
which shares the result's memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fffcore import forking
from fffcore.arrays import array_type
from fffcore.backends.torch.prepared import torch_dtype


def compute_rows(x: Any, dtype: str) -> Any:
    """(B, d_in) ``x`` as a tensor of ``dtype``: torch input on its own device, numpy input on the CPU.

    Never writes to ``x``; the result may share its memory, so callers must not write to it either.
    In a forked child, first limits torch to one thread (see :mod:`fffcore.forking`).
    """
    import torch

    forking.limit_torch_in_forked_child()
    if isinstance(x, torch.Tensor):
        return x.to(dtype=torch_dtype(dtype))
    if dtype == "bfloat16":  # the result would have to come back as numpy, which has no bfloat16
        raise TypeError("x: numpy arrays cannot carry bfloat16 results; pass a torch tensor for bfloat16 parameters")
    rows = np.ascontiguousarray(x, dtype=dtype)
    if not rows.flags.writeable:
        # torch.from_numpy warns on read-only memory (torch has no read-only tensors); we
        # never write to it, but a copy keeps the warning away and costs one pass over x.
        rows = rows.copy()
    return torch.from_numpy(rows)


def to_input_type(result: Any, x: Any) -> Any:
    """A result tensor in the array type of the caller's ``x``: the tensor itself, or a numpy view of it."""
    if array_type(x) == "numpy":
        return result.numpy()
    return result
