"""Moving benchmark inputs and outputs between array libraries, and waiting for devices.

Each function dispatches on the array library's name through a small table,
and imports torch or cupy only when an array of theirs is involved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fffcore.arrays import array_type


def _to_torch(x: np.ndarray, device: str) -> Any:
    import torch

    return torch.from_numpy(np.array(x)).to(device)  # np.array: a writable copy, torch wants one


def _to_cupy(x: np.ndarray, device: str) -> Any:
    import cupy

    return cupy.asarray(x)


_TO_LIBRARY: dict[str, Callable[[np.ndarray, str], Any]] = {
    "numpy": lambda x, device: x,
    "torch": _to_torch,
    "cupy": _to_cupy,
}


def to_library(x: np.ndarray, library: str, device: str = "cpu") -> Any:
    """``x`` (numpy) as an array of ``library`` on ``device``; numpy input is returned as is."""
    convert = _TO_LIBRARY.get(library)
    if convert is None:
        raise ValueError(f"library: expected one of {sorted(_TO_LIBRARY)}, got {library!r}")
    return convert(x, device)


def to_numpy(y: Any) -> np.ndarray:
    """Any numpy, torch or cupy array as a numpy array (copied off the device when needed)."""
    kind = array_type(y)
    if kind == "torch":
        return y.detach().cpu().numpy()
    if kind == "cupy":
        return y.get()
    return np.asarray(y)


def synchronize(y: Any) -> None:
    """Wait until the device that computed ``y`` has finished, so a timer around the call is honest.

    CPU arrays need nothing; CUDA arrays of torch and cupy are launched
    asynchronously and would otherwise be timed at launch.
    """
    kind = array_type(y)
    if kind == "torch" and y.device.type == "cuda":
        import torch

        torch.cuda.synchronize(y.device)
    elif kind == "cupy":
        import cupy

        cupy.cuda.get_current_stream().synchronize()
