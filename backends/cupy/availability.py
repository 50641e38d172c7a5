"""Whether the cupy backend can run here, and if not, precisely why. Never raises.

The checks, in order, each with its own reason:

1. cupy is installed (``importlib.util.find_spec``, no import);
2. cupy imports;
3. the CUDA runtime finds a driver and at least one device;
4. some device has the compute capability the kernels need;
5. NVRTC, the run-time compiler the kernels are built with, loads.

The cupy module is passed in by the caller (or imported here), so every path
is tested on a CPU with a stand-in module.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from fffcore.backend import AVAILABLE, Availability
from fffcore.backends.cupy.kernel_plan import MIN_COMPUTE_CAPABILITY, check_compute_capability
from fffcore.registry import one_line

INSTALL = "pip install 'fffcore[cupy]' (or cupy-cuda13x for CUDA 13 drivers)"
DRIVER_FIX = "run on a machine with an NVIDIA GPU and a driver new enough for cupy's CUDA version (see nvidia-smi)"


def cupy_availability(
    find_spec: Callable[[str], Any] = importlib.util.find_spec,
    import_module: Callable[[str], Any] = importlib.import_module,
) -> Availability:
    """Run the checks above; ``find_spec`` and ``import_module`` are replaceable for tests."""
    try:
        if find_spec("cupy") is None:
            return Availability(False, "cupy is not installed", INSTALL)
    except Exception as error:  # a broken installation can make find_spec itself raise
        return Availability(False, f"looking for cupy raised {one_line(error)}", INSTALL)
    try:
        cupy = import_module("cupy")
    except Exception as error:
        return Availability(False, f"cupy is installed but failed to import: {one_line(error)}", INSTALL)
    version = getattr(cupy, "__version__", "?")
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as error:  # CUDARuntimeError: no driver, driver too old, no device
        return Availability(
            False, f"cupy {version} found no usable CUDA device or driver: {one_line(error)}", DRIVER_FIX
        )
    if count < 1:
        return Availability(False, f"cupy {version} found no CUDA device", DRIVER_FIX)
    try:
        too_old = []
        for device_id in range(count):
            major, minor = compute_capability(cupy, device_id)
            reason = check_compute_capability(major, minor)
            if not reason:
                break
            too_old.append(f"device {device_id}: {reason}")
        else:
            need = ".".join(map(str, MIN_COMPUTE_CAPABILITY))
            return Availability(False, "; ".join(too_old), f"use a GPU of compute capability {need} or newer")
    except Exception as error:
        return Availability(False, f"cupy {version} could not query the CUDA device: {one_line(error)}", DRIVER_FIX)
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as error:  # cupy wheels load NVRTC lazily, from pip's nvidia-cuda-nvrtc or the CUDA toolkit
        return Availability(
            False,
            f"cupy {version} cannot load NVRTC, the CUDA run-time compiler: {one_line(error)}",
            "pip install 'cupy-cuda12x[ctk]' (or install the CUDA toolkit)",
        )
    return AVAILABLE


def compute_capability(cupy: Any, device_id: int) -> tuple[int, int]:
    """(major, minor) of a device; cupy reports it as a string such as ``"90"``."""
    text = str(cupy.cuda.Device(device_id).compute_capability)
    return int(text[:-1]), int(text[-1])
