"""Registers the reference as the backend ``reference``."""

from __future__ import annotations

from typing import Any

import numpy as np

from fffcore.arrays import numpy_rows
from fffcore.backend import Backend
from fffcore.hookspecs import hookimpl
from fffcore.params import FFFParams
from fffcore.reference.backward import fff_backward
from fffcore.reference.cmm import conditional_matmul
from fffcore.reference.fff import fff_output


class ReferenceBackend(Backend):
    """The NumPy reference: plain, vectorised over rows, never fast."""

    name = "reference"
    description = "pure NumPy reference, level by level (the truth, not fast)"
    array_types = ("numpy",)
    devices = ("cpu",)
    dtypes = ("float32", "float64")
    priority = 0
    backward = True

    def version(self) -> str:
        return np.__version__

    def cmm(self, x: Any, params: FFFParams) -> tuple[np.ndarray, np.ndarray]:
        return conditional_matmul(numpy_rows(x, params.dtype), params.w_in, params.b_in)

    def fff(self, x: Any, params: FFFParams) -> np.ndarray:
        logits, nodes = self.cmm(x, params)
        return fff_output(logits, nodes, params.w_out, params.activation)

    def fff_backward(self, x: Any, params: FFFParams, grad_y: Any) -> tuple[Any, Any, Any, Any]:
        rows = numpy_rows(x, params.dtype)
        return fff_backward(
            rows, params.w_in, params.b_in, params.w_out, params.activation, numpy_rows(grad_y, params.dtype)
        )


@hookimpl
def register_backends(register: Any) -> None:
    register(ReferenceBackend())
