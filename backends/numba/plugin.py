"""Registers the Numba CPU backend as ``numba`` (priority 100, above the reference).

Importing this module never imports numba. The availability check does, once
per process and guarded, so that an install that cannot load (numba refuses
numpy releases newer than it supports, llvmlite may miss its shared library)
is listed as unavailable with the reason instead of failing the first call;
automatic selection asks it only for numpy input, before the kernels' first
use imports numba anyway.

Numba's own environment variables can stop it too, each found here with its own fix rather
than failing the first call with a traceback: ``NUMBA_DISABLE_JIT`` (no compiler: the kernels
would be plain Python functions), a ``NUMBA_THREADING_LAYER`` or
``NUMBA_THREADING_LAYER_PRIORITY`` numba does not know, and a ``NUMBA_NUM_THREADS`` below 1
(numba then refuses to import). A known threading layer that cannot load here (``tbb`` without
TBB) shows only when numba starts its threads; :mod:`.calls` reports it then.
"""

from __future__ import annotations

import importlib.util
import os
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

#: Values of ``NUMBA_THREADING_LAYER`` numba accepts: a purpose, or one of the layers themselves.
THREADING_LAYERS = ("default", "safe", "threadsafe", "forksafe", "tbb", "omp", "workqueue")
_LAYER_NAMES = {"tbb", "omp", "workqueue"}


def _setting(name: str, value: Any) -> str:
    """``NAME=value`` as the user wrote it (numba may also read it from a ``.numba_config.yaml``)."""
    return f"{name}={os.environ.get(name, value)}"


def settings_problem(config: Any) -> Availability | None:
    """Why numba, imported, cannot run the kernels with these settings (``numba.config``), or None."""
    if config.DISABLE_JIT:
        return Availability(
            False,
            f"{_setting('NUMBA_DISABLE_JIT', config.DISABLE_JIT)} turns numba's compiler off",
            "unset NUMBA_DISABLE_JIT",
        )
    layer = str(config.THREADING_LAYER).lower()
    if layer not in THREADING_LAYERS:
        return Availability(
            False,
            f"{_setting('NUMBA_THREADING_LAYER', config.THREADING_LAYER)} is not a threading layer numba knows",
            f"set NUMBA_THREADING_LAYER to one of {', '.join(THREADING_LAYERS)}, or unset it (numba then picks one)",
        )
    priority = list(config.THREADING_LAYER_PRIORITY)
    if len(priority) != len(_LAYER_NAMES) or set(priority) != _LAYER_NAMES:
        return Availability(
            False,
            f"NUMBA_THREADING_LAYER_PRIORITY={' '.join(map(str, priority))!r} "
            "is not an order of tbb, omp and workqueue",
            "set NUMBA_THREADING_LAYER_PRIORITY to all three, space-separated (e.g. 'tbb omp workqueue'), or unset it",
        )
    return None


def import_problem(error: BaseException) -> Availability:
    """Why ``import numba`` raised ``error``: a setting of numba's that it refuses, or a broken install."""
    threads = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    try:
        too_few = int(threads) < 1
    except ValueError:
        too_few = False
    if too_few:
        return Availability(
            False,
            f"NUMBA_NUM_THREADS={threads} is not a number of threads (numba refuses to import: {one_line(error)})",
            "set NUMBA_NUM_THREADS to a positive number, or unset it to use every core",
        )
    return Availability(False, f"numba is installed but fails to import: {one_line(error)}", INSTALL)


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
            import numba
        except Exception as error:
            return import_problem(error)
        return settings_problem(numba.config) or AVAILABLE

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
