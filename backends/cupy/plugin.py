"""Registers the CUDA kernels as the backend ``cupy``.

Importing this module imports neither cupy nor anything that touches a
device: the registry may load it on machines without either.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from fffcore.backend import Availability, Backend
from fffcore.backends.cupy.availability import INSTALL, cupy_availability
from fffcore.backends.cupy.kernel_plan import SUPPORTED_DTYPES
from fffcore.backends.cupy.runtime import KernelCache, WeightCache, run_cmm, run_fff
from fffcore.hookspecs import hookimpl
from fffcore.params import FFFParams

#: Set to 1 to declare the float16 variant too, for trying it with ``fff check cupy --dtype float16``.
FLOAT16_VARIABLE = "FFFCORE_CUPY_FLOAT16"


class CupyBackend(Backend):
    """Fused FFF and CMM CUDA kernels compiled with NVRTC through ``cupy.RawModule``.

    cupy arrays are computed on their own device and returned there; numpy
    arrays are copied to the current device and the result back. numpy
    parameters are copied to each device once, per :class:`FFFParams` object.
    """

    name = "cupy"
    description = "CUDA kernels through cupy/NVRTC: a warp per row, fused FFF in one launch"
    array_types = ("cupy", "numpy")
    devices = ("cuda",)
    dtypes = SUPPORTED_DTYPES
    priority = 80
    install = INSTALL
    # The 16-bit kernels sum in float32 and round each logit and output once (fff_kernels.cu), so the
    # conformance suite judges them with float32 sums at full width, not 16-bit ones at small widths.
    accumulation_dtypes: ClassVar[dict[str, str]] = {"float16": "float32", "bfloat16": "float32"}

    def __init__(self) -> None:
        if os.environ.get(FLOAT16_VARIABLE) == "1":  # experimental until a GPU run passes the suite with it
            self.dtypes = (*SUPPORTED_DTYPES, "float16")  # type: ignore[misc]  # instance shadows the ClassVar
        self._kernels = KernelCache()
        self._weights = WeightCache()

    def availability(self) -> Availability:
        return cupy_availability()

    def version(self) -> str:
        try:
            import cupy
        except Exception:  # the version is for reports; a missing cupy is reported by availability()
            return ""
        return str(cupy.__version__)

    def cmm(self, x: Any, params: FFFParams) -> tuple[Any, Any]:
        return run_cmm(x, params, self._kernels, self._weights)

    def fff(self, x: Any, params: FFFParams) -> Any:
        return run_fff(x, params, self._kernels, self._weights)


@hookimpl
def register_backends(register: Any) -> None:
    register(CupyBackend())
