"""Correct test backends that declare the optional dtypes, so the suite's float16 and bfloat16 paths run.

No built-in CPU backend declares float16 or bfloat16; without these, the
suite's tolerances for them and its bfloat16 adapter path would go untested.
Both delegate to the reference, so they are correct by construction and the
suite must pass them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fffcore import Backend, hookimpl
from fffcore.params import FFFParams
from fffcore.reference.plugin import ReferenceBackend


class Float16Reference(ReferenceBackend):
    """The reference, also declaring float16 (numpy computes it in float16; no wider accumulation is declared,
    so the suite draws d_in up to 94 only for it)."""

    name = "test-reference-float16"
    dtypes = ("float16", "float32", "float64")


class TorchBfloat16(Backend):
    """torch tensors in and out; bfloat16 computed as float32 on bfloat16 values, then rounded to bfloat16."""

    name = "test-torch-bfloat16"
    array_types = ("torch",)
    devices = ("cpu",)
    dtypes = ("bfloat16", "float32", "float64")
    # what it does: the reference in float32, rounded once to bfloat16
    accumulation_dtypes: ClassVar[dict[str, str]] = {"bfloat16": "float32"}
    priority = -100

    @staticmethod
    def _numpy_params(params: FFFParams) -> tuple[FFFParams, str]:
        import torch

        # torch-only, so its parameters come as tensors; bfloat16 is computed in float32 (holds it exactly)
        dtype = "float32" if params.dtype == "bfloat16" else params.dtype
        arrays = [
            None if w is None else w.detach().cpu().to(getattr(torch, dtype)).numpy()
            for w in (params.w_in, params.b_in, params.w_out)
        ]
        return FFFParams(*arrays, params.activation), dtype

    @staticmethod
    def _numpy_rows(x: Any, params: FFFParams, dtype: str) -> np.ndarray:
        import torch

        rows = x.detach().cpu().to(getattr(torch, params.dtype))  # round to the working dtype first
        return rows.to(getattr(torch, dtype)).numpy()

    def cmm(self, x: Any, params: FFFParams) -> tuple[Any, Any]:
        import torch

        wide, dtype = self._numpy_params(params)
        logits, nodes = ReferenceBackend().cmm(self._numpy_rows(x, params, dtype), wide)
        return torch.from_numpy(logits).to(getattr(torch, params.dtype)), torch.from_numpy(nodes)

    def fff(self, x: Any, params: FFFParams) -> Any:
        import torch

        wide, dtype = self._numpy_params(params)
        output = ReferenceBackend().fff(self._numpy_rows(x, params, dtype), wide)
        return torch.from_numpy(output).to(getattr(torch, params.dtype))


@hookimpl
def register_backends(register: Any) -> None:
    register(Float16Reference())
    register(TorchBfloat16())
