"""16-bit test backends that accumulate in float32, correct and broken, for the suite's 16-bit bands.

Each computes a 16-bit layer as real 16-bit backends do: x rounded to the
storage dtype, logits as float32 dot products rounded once to storage, the
activation of those storage logits, the tree sum in float32 rounded once to
storage; and each declares it (``accumulation_dtypes``). float16 takes numpy
arrays, bfloat16 torch tensors (numpy has no bfloat16). The broken variants
have one bug each, which the suite must catch at 16 bits (:data:`EXPECTED_FAILURES`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fffcore import Backend, hookimpl
from fffcore.params import FFFParams
from fffcore.reference.fff import fff_output
from tests.conformance.conformance_broken_backends import walk

#: Bugs: "" (correct), zeros (fff returns all zeros), level-skipped (the tree sum leaves out
#: the deepest level), no-bias (b_in never added, in cmm and fff).
BUGS = ("", "zeros", "level-skipped", "no-bias")

#: The property that must catch each bug.
BUG_PROPERTIES = {"zeros": "output_along_path", "level-skipped": "output_along_path", "no-bias": "logits_along_path"}


class Wide16(Backend):
    """A 16-bit layer computed in float32 and rounded once to 16 bits; ``bug`` names a deliberate bug."""

    storage: str = "float16"
    bug: str = ""
    devices = ("cpu",)
    priority = -100

    def __init__(self, storage: str, bug: str = "") -> None:
        self.storage = storage
        self.bug = bug
        self.name = f"test-wide-{storage}" + (f"-{bug}" if bug else "")  # type: ignore[misc]
        self.array_types = ("numpy",) if storage == "float16" else ("torch",)  # type: ignore[misc]
        self.dtypes = (storage, "float32", "float64")  # type: ignore[misc]
        self.accumulation_dtypes = {storage: "float32"}  # type: ignore[misc]

    def availability(self):
        from fffcore.backend import AVAILABLE, Availability

        if self.storage == "bfloat16":
            import importlib.util

            if importlib.util.find_spec("torch") is None:
                return Availability(False, "torch is not installed")
        return AVAILABLE

    def _float32(self, array: Any, dtype: str) -> np.ndarray:
        """``array`` rounded to ``dtype`` (the storage dtype), then as float32 numpy (exact)."""
        if dtype == "bfloat16":  # numpy has no bfloat16: round with torch
            import torch

            tensor = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
            return tensor.detach().cpu().to(torch.bfloat16).to(torch.float32).numpy()
        if not isinstance(array, np.ndarray) and self.storage == "bfloat16":
            array = array.detach().cpu().numpy()
        return np.asarray(array).astype(dtype).astype(np.float32)

    def _back(self, array: np.ndarray, dtype: str) -> Any:
        if self.storage == "bfloat16":
            import torch

            return torch.from_numpy(np.ascontiguousarray(array)).to(getattr(torch, dtype))
        return array.astype(dtype)

    def _walk(self, x: Any, params: FFFParams) -> tuple[np.ndarray, np.ndarray, FFFParams]:
        dtype = params.dtype
        wide = FFFParams(
            *(None if w is None else self._float32(w, dtype) for w in (params.w_in, params.b_in, params.w_out)),
            params.activation,
        )
        logits32, nodes = walk(self._float32(x, dtype), wide, bias=self.bug != "no-bias")
        # the logit is rounded once to storage; the branch was taken on the float32 value (same sign)
        return self._float32(logits32, dtype), nodes, wide

    def cmm(self, x: Any, params: FFFParams) -> tuple[Any, Any]:
        logits, nodes, _ = self._walk(x, params)
        nodes_out = nodes if self.storage == "float16" else _torch_int64(nodes)
        return self._back(logits, params.dtype), nodes_out

    def fff(self, x: Any, params: FFFParams) -> Any:
        logits, nodes, wide = self._walk(x, params)
        if self.bug == "level-skipped":
            logits, nodes = logits[:, :, :-1], nodes[:, :, :-1]
        output = fff_output(logits, nodes, wide.w_out, params.activation)  # float32 activation, products, sum
        if self.bug == "zeros":
            output = np.zeros_like(output)
        return self._back(output, params.dtype)


def _torch_int64(nodes: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(nodes))


BACKENDS = tuple(Wide16(storage, bug) for storage in ("float16", "bfloat16") for bug in BUGS)


@hookimpl
def register_backends(register: Any) -> None:
    for backend in BACKENDS:
        register(backend)
