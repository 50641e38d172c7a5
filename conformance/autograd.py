"""The gradients torch's autograd gives through ``torch.ops.fffcore.fff``, against ``fffcore.fff_backward``.

A model trains through the custom operator: ``y = torch.ops.fffcore.fff(x, w_in, b_in, w_out,
activation, backend)``, a loss, ``loss.backward()``. With ``loss = (y * g).sum()`` autograd hands the
operator ``dL/dy = g`` exactly, so the gradients it leaves in ``x.grad``, ``w_in.grad``, ``b_in.grad``
and ``w_out.grad`` must be, bit for bit, those ``fffcore.fff_backward(x, params, g)`` returns for the
same backend (``x.grad`` in x's dtype, as autograd requires), and must exist for every tensor that
asked for one.
"""

from __future__ import annotations

import numpy as np

from fffcore.conformance.adapters import ADAPTERS
from fffcore.conformance.backward import call_backward, upstream_of
from fffcore.conformance.cases import Case
from fffcore.conformance.checks import PropertyFailure, first_difference
from fffcore.conformance.target import Target


def check_autograd(target: Target, case: Case) -> None:
    """Compare ``loss.backward()`` through the operator with ``fff_backward`` on one torch case."""
    import torch

    import fffcore.torch  # noqa: F401  (registers torch.ops.fffcore)

    if case.array_type != "torch" or case.params_array_type != "torch":
        raise AssertionError(f"conformance suite bug: an autograd case needs torch tensors, got {case!r}")
    built = case.build()
    layer = case.layer
    # Leaf tensors over the same memory, in the case's layouts, that ask for gradients.
    leaves = {
        "x": built.x.detach().requires_grad_(True),
        "w_in": built.params.w_in.detach().requires_grad_(True),
        "b_in": None if built.params.b_in is None else built.params.b_in.detach().requires_grad_(True),
        "w_out": built.params.w_out.detach().requires_grad_(True),
    }
    upstream = upstream_of(built)
    g = ADAPTERS["torch"].from_numpy(
        upstream.rows.reshape((*built.x.shape[:-1], layer.d_out)), layer.dtype, case.device
    )
    try:
        y = torch.ops.fffcore.fff(
            leaves["x"], leaves["w_in"], leaves["b_in"], leaves["w_out"], layer.activation, target.backend
        )
        (y * g).sum().backward()
    except Exception as error:
        raise PropertyFailure(
            f"loss.backward() through torch.ops.fffcore.fff raised {type(error).__name__}: {error}"
        ) from error
    direct = call_backward(target, built, g)
    for name, leaf in leaves.items():
        if leaf is None:
            continue
        if leaf.grad is None:
            raise PropertyFailure(f"{name}.grad: None after loss.backward(), expected the gradient fff_backward gives")
        got = leaf.grad
        if got.dtype != leaf.dtype or tuple(got.shape) != tuple(leaf.shape) or got.device != leaf.device:
            raise PropertyFailure(
                f"{name}.grad: {got.dtype} {tuple(got.shape)} on {got.device}, expected {leaf.dtype} "
                f"{tuple(leaf.shape)} on {leaf.device} like {name}"
            )
        actual = ADAPTERS["torch"].to_numpy(got).astype(np.float64)
        expected = np.asarray(direct[name], dtype=np.float64)
        if name == "x":  # fff_backward's is in the parameters' dtype; autograd's in x's, converted once
            torch_adapter = ADAPTERS["torch"]
            expected = torch_adapter.to_numpy(torch_adapter.from_numpy(expected, layer.dtype, "cpu").to(leaf.dtype))
            expected = expected.astype(np.float64).reshape(actual.shape)
        index = first_difference(expected, actual)
        if index is not None:
            raise PropertyFailure(
                f"{name}.grad{list(index)}: {actual[index]!r} through autograd, {expected[index]!r} from "
                f"fff_backward (with grad_y = dL/dy; they must be identical)"
            )
