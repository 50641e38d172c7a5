"""Registers the Numba CPU backend as ``numba`` (priority 100, above the reference).

Importing this module never imports numba. The availability check does, once
per process and guarded, so that an install that cannot load (numba refuses
numpy releases newer than it supports, llvmlite may miss its shared library)
is listed as unavailable with the reason instead of failing the first call;
automatic selection asks it only for numpy input, before the kernels' first
use imports numba anyway.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from fffcore.backend import AVAILABLE, Availability, Backend
from fffcore.backends.numba.sizes import (
    BLOCKED_MIN_ROWS,
    GROUP_ROWS,
    PARALLEL_MIN_ROWS,
)
from fffcore.hookspecs import hookimpl
from fffcore.params import FFFParams
from fffcore.registry import one_line

INSTALL = "pip install 'fffcore[numba]'"


class NumbaBackend(Backend):
    """Parallel, cached Numba kernels for numpy arrays on the CPU.

    ``x`` is converted to the parameters' dtype and made C-contiguous with
    :func:`fffcore.arrays.numpy_rows`, which copies it once when it is strided
    or of another dtype (never in place). Threads: Numba's, as many as
    ``NUMBA_NUM_THREADS`` (default: every core). Safe to call from several
    threads at once (see :mod:`fffcore.backends.numba.calls`).
    """

    name = "numba"
    description = "Numba CPU kernels: row groups and blocked walks, parallel over rows, cached on disk"
    array_types = ("numpy",)
    devices = ("cpu",)
    dtypes = ("float32", "float64")
    priority = 100
    install = INSTALL
    backward = True
    # Whole groups of four rows from 4, every thread (when that has been faster) from 16, the
    # blocked walk (blocks of 64, a top stage and a sort) from 1536 (backends/numba/sizes.py).
    batch_thresholds = (GROUP_ROWS, PARALLEL_MIN_ROWS, BLOCKED_MIN_ROWS)

    def availability(self) -> Availability:
        if importlib.util.find_spec("numba") is None:
            return Availability(False, "numba is not installed", INSTALL)
        try:
            import numba  # noqa: F401
        except Exception as error:
            return Availability(False, f"numba is installed but fails to import: {one_line(error)}", INSTALL)
        return AVAILABLE

    def version(self) -> str:
        try:
            return package_version("numba")
        except PackageNotFoundError:
            return ""

    def cmm(self, x: Any, params: FFFParams) -> tuple[Any, Any]:
        from fffcore.backends.numba.calls import cmm_rows

        return cmm_rows(x, params)

    def fff(self, x: Any, params: FFFParams) -> Any:
        from fffcore.backends.numba.calls import fff_rows

        return fff_rows(x, params)

    def fff_backward(self, x: Any, params: FFFParams, grad_y: Any) -> tuple[Any, Any, Any, Any]:
        from fffcore.arrays import numpy_rows
        from fffcore.backends.numba.activations import ACTIVATION_CODES
        from fffcore.backends.numba.backward import run_backward
        from fffcore.backends.numba.calls import cmm_rows

        rows = numpy_rows(x, params.dtype)
        logits, nodes = cmm_rows(rows, params)
        grads = numpy_rows(grad_y, params.dtype)
        code = ACTIVATION_CODES[params.activation]
        return run_backward(rows, grads, logits, nodes, params.w_in, params.b_in, params.w_out, code)

    def prepare_fff(self, params: FFFParams) -> Any:
        from fffcore.backends.numba.calls import prepare_fff_rows

        return prepare_fff_rows(params)

    def warmup(self, dtypes: Sequence[str]) -> None:
        from fffcore.backends.numba.calls import warm_up

        warm_up(dtypes)


@hookimpl
def register_backends(register: Any) -> None:
    register(NumbaBackend())
