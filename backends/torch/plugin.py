"""Registers the PyTorch backend as ``torch``."""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

from fffcore.backend import AVAILABLE, Availability, Backend
from fffcore.hookspecs import hookimpl
from fffcore.params import FFFParams
from fffcore.registry import one_line

INSTALL = "pip install 'fffcore[torch]'"


class TorchBackend(Backend):
    """torch tensors in and out on their own device; numpy in and out on the CPU.

    The parameters are converted to torch once per (params, device) and
    cached (:func:`fffcore.backends.torch.prepared.torch_layer`); the work is
    in :mod:`fffcore.backends.torch.kernels`, on the CPU on one thread for small
    calls and on torch's whole pool otherwise (:mod:`fffcore.backends.torch.threads`).
    """

    name = "torch"
    description = "PyTorch: tensors in and out on their own device (CPU, CUDA), numpy on the CPU"
    array_types = ("torch", "numpy")
    devices = ("cpu", "cuda")
    # float16 and bfloat16 pass `fff check torch` (their CPU matrix products run in float32, see kernels._matmul).
    dtypes = ("float16", "bfloat16", "float32", "float64")
    # Dot products and the output sum run in float32 for 16-bit storage (kernels._matmul, embedding_bag).
    accumulation_dtypes: ClassVar[dict[str, str]] = {"float16": "float32", "bfloat16": "float32"}
    priority = 50
    backward = True
    install = INSTALL
    # On the CPU, subtrees below the dense top (6 levels, 64 subtrees) are grouped from 8 rows
    # per subtree on average (kernels.MIN_GROUP_ROWS): 512 rows.
    batch_thresholds = (512,)

    def availability(self) -> Availability:
        # find_spec tells "not installed" apart from "broken" without importing. It raises
        # ValueError when torch is in sys.modules as None, the usual way to block an import.
        # Importing costs a second or two, paid once: the registry caches the answer, and automatic
        # selection asks only when no faster backend is available.
        try:
            found = importlib.util.find_spec("torch") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return Availability(False, "torch is not installed", INSTALL)
        try:  # a broken install (missing shared library, ABI mismatch) must not surface at the first call
            import torch  # noqa: F401
        except Exception as error:
            return Availability(False, f"torch is installed but fails to import: {one_line(error)}", INSTALL)
        return AVAILABLE

    def version(self) -> str:
        import torch

        return str(torch.__version__)

    def cmm(self, x: Any, params: FFFParams) -> tuple[Any, Any]:
        from fffcore.backends.torch.conversion import compute_rows, to_input_type
        from fffcore.backends.torch.kernels import cmm_rows
        from fffcore.backends.torch.prepared import torch_layer
        from fffcore.backends.torch.threads import run_on_cpu_threads

        rows = compute_rows(x, params.dtype)
        layer = torch_layer(params, rows.device)
        items = rows.shape[0] * params.trees
        logits, nodes = run_on_cpu_threads(items, rows.device.type, lambda: cmm_rows(rows, layer))
        return to_input_type(logits, x), to_input_type(nodes, x)

    def fff(self, x: Any, params: FFFParams) -> Any:
        from fffcore.backends.torch.conversion import compute_rows, to_input_type
        from fffcore.backends.torch.kernels import fff_rows
        from fffcore.backends.torch.prepared import torch_layer
        from fffcore.backends.torch.threads import run_on_cpu_threads

        rows = compute_rows(x, params.dtype)
        layer = torch_layer(params, rows.device)
        items = rows.shape[0] * params.trees
        y = run_on_cpu_threads(items, rows.device.type, lambda: fff_rows(rows, layer, params.activation))
        return to_input_type(y, x)

    def fff_backward(self, x: Any, params: FFFParams, grad_y: Any) -> tuple[Any, Any, Any, Any]:
        from fffcore.backends.torch.backward import fff_backward_rows
        from fffcore.backends.torch.conversion import compute_rows, to_input_type
        from fffcore.backends.torch.kernels import cmm_rows
        from fffcore.backends.torch.prepared import torch_layer

        rows = compute_rows(x, params.dtype)
        grads = compute_rows(grad_y, params.dtype)
        layer = torch_layer(params, rows.device)  # the weights on this device, converted once
        logits, nodes = cmm_rows(rows, layer)
        w_in = layer.w_in_rows.view(layer.trees, layer.n_nodes, layer.d_in)
        w_out = layer.w_out_rows.view(layer.trees, layer.n_nodes, layer.d_out)
        b_in = None if layer.b_in_rows is None else layer.b_in_rows.view(layer.trees, layer.n_nodes)
        result = fff_backward_rows(rows, grads, logits, nodes, w_in, b_in, w_out, params.activation)
        return tuple(None if r is None else to_input_type(r, x) for r in result)  # type: ignore[return-value]


@hookimpl
def register_backends(register: Any) -> None:
    register(TorchBackend())
