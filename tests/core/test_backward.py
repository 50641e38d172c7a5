"""The backward pass (:mod:`fffcore.backward`): the spec's gradients in the reference, numba and torch."""

from __future__ import annotations

import numpy as np
import pytest

import fffcore
from fffcore.spec import ACTIVATIONS
from tests.fakes import FakeBackend, plugin_with


def masked_dense_gradients(x, params, grad_y):
    """Autograd of the dense layer UltraFastBERT trains: every node's logit, masked to the given paths."""
    torch = pytest.importorskip("torch")
    nodes = fffcore.cmm(x, params, backend="reference").nodes
    trees, n_nodes, _ = params.w_in.shape
    mask = np.zeros((x.shape[0], trees, n_nodes))
    rows, tree, _ = np.indices(nodes.shape)
    mask[rows, tree, nodes] = 1.0
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, params.w_in, params.b_in, params.w_out)]
    x_t, w_in, b_in, w_out = tensors
    logits = torch.einsum("bi,kni->bkn", x_t, w_in) + b_in
    activation = {
        "gelu": torch.nn.functional.gelu,
        "gelu_tanh": lambda z: torch.nn.functional.gelu(z, approximate="tanh"),
        "relu": torch.relu,
        "silu": torch.nn.functional.silu,
        "identity": lambda z: z,
    }[params.activation]
    y = torch.einsum("bkn,kno->bo", activation(logits) * torch.tensor(mask), w_out)
    y.backward(torch.tensor(grad_y))
    return [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_the_reference_gradients_are_the_masked_dense_layers_autograd(activation):
    params = fffcore.FFFParams.random(d_in=12, d_out=7, depth=4, trees=2, dtype="float64", seed=1)
    params = params.with_activation(activation)
    rng = np.random.default_rng(2)
    x, grad_y = rng.standard_normal((40, 12)), rng.standard_normal((40, 7))
    ours = fffcore.fff_backward(x, params, grad_y, backend="reference")
    theirs = masked_dense_gradients(x, params, grad_y)
    for name, got, expected in zip(("x", "w_in", "b_in", "w_out"), ours, theirs, strict=True):
        # float64 sums of at most 40 * 5 terms of size ~1: 1e-12 leaves three orders of magnitude of room
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, err_msg=name)


def available(name: str) -> bool:
    return any(row.name == name and row.available for row in fffcore.list_backends())


FAST = [
    pytest.param(n, marks=pytest.mark.skipif(not available(n), reason=f"{n} is not installed"))
    for n in ("numba", "torch")
]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("bias", [True, False])
def test_fast_backends_match_the_reference(backend, bias):
    params = fffcore.FFFParams.random(d_in=40, d_out=24, depth=6, trees=3, dtype="float64", seed=3, bias=bias)
    rng = np.random.default_rng(4)
    x, grad_y = rng.standard_normal((700, 40)), rng.standard_normal((700, 24))
    want = fffcore.fff_backward(x, params, grad_y, backend="reference")
    got = fffcore.fff_backward(x, params, grad_y, backend=backend)
    assert (got.b_in is None) == (not bias)
    for name in ("x", "w_in", "b_in", "w_out"):
        if getattr(want, name) is None:
            continue
        # float64 sums in another order: relative 1e-12 of each array's largest element bounds it well
        expected, actual = getattr(want, name), np.asarray(getattr(got, name))
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12 * np.abs(expected).max(), err_msg=name)


@pytest.mark.skipif(not available("numba"), reason="numba is not installed")
def test_numba_gradients_are_the_same_bits_on_one_thread_and_on_all():
    import numba

    params = fffcore.FFFParams.random(d_in=64, d_out=48, depth=8, seed=5)
    rng = np.random.default_rng(6)
    x, grad_y = rng.standard_normal((3000, 64), dtype=np.float32), rng.standard_normal((3000, 48), dtype=np.float32)
    everywhere = fffcore.fff_backward(x, params, grad_y, backend="numba")
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        alone = fffcore.fff_backward(x, params, grad_y, backend="numba")
    finally:
        numba.set_num_threads(previous)
    for name in ("x", "w_in", "b_in", "w_out"):
        np.testing.assert_array_equal(getattr(alone, name), getattr(everywhere, name), err_msg=name)


class ForwardOnly(FakeBackend):
    """The reference's forward pass without its backward."""

    backward = False


def test_bad_calls_are_refused_naming_the_argument(use_registry):
    params = fffcore.FFFParams.random(d_in=8, d_out=4, depth=2, seed=7)
    x = np.ones((3, 8), np.float32)
    with pytest.raises(ValueError, match=r"grad_y: expected shape \(3, 4\)"):
        fffcore.fff_backward(x, params, np.ones((3, 5), np.float32))
    with pytest.raises(TypeError, match="grad_y: expected a real floating dtype"):
        fffcore.fff_backward(x, params, np.ones((3, 4), np.int64))
    use_registry(("forward_only", plugin_with(ForwardOnly("forward_only", priority=1000))))
    with pytest.raises(TypeError, match="'forward_only' does not implement the backward pass"):
        fffcore.fff_backward(x, params, np.ones((3, 4), np.float32), backend="forward_only")
    # Chosen automatically, the forward's backend lacks it: the best one that has it computes it.
    assert fffcore.resolve_backend(x, params).name == "forward_only"
    grads = fffcore.fff_backward(x, params, np.ones((3, 4), np.float32))
    reference = fffcore.fff_backward(x, params, np.ones((3, 4), np.float32), backend="reference")
    np.testing.assert_allclose(grads.w_in, reference.w_in, rtol=1e-6, atol=1e-6)


def test_fff_backends_says_which_backends_compute_the_backward_pass():
    rows = {row.name: row for row in fffcore.list_backends()}
    assert rows["reference"].backward is True
    if "numba" in rows:
        assert rows["numba"].backward is True


class WrongSlope(FakeBackend):
    """The reference's gradients with the derivative of gelu taken as 1 (a plausible bug)."""

    def fff_backward(self, x, params, grad_y):
        return super().fff_backward(x, params.with_activation("identity"), grad_y)


class OffByOneRow(FakeBackend):
    """The reference's gradients, the last row's input gradient dropped."""

    def fff_backward(self, x, params, grad_y):
        grad_x, grad_w_in, grad_b_in, grad_w_out = super().fff_backward(x, params, grad_y)
        if len(grad_x):
            grad_x = grad_x.copy()
            grad_x[-1] = 0
        return grad_x, grad_w_in, grad_b_in, grad_w_out


@pytest.mark.parametrize("broken", [WrongSlope, OffByOneRow])
def test_the_gradient_properties_fail_a_wrong_backward(use_registry, broken):
    pytest.importorskip("hypothesis")
    from fffcore.conformance.runner import run_suite

    use_registry(("broken", plugin_with(broken("broken"))))
    report = run_suite("broken", max_examples=30, seed=0, properties=["gradients_along_path"])
    (result,) = report.results
    assert result.status == "fail", result
    assert "grad" in result.message and "float64 along the backend's own path" in result.message
    honest = run_suite("reference", max_examples=30, seed=0, properties=["gradients_along_path", "exact_gradients"])
    assert all(r.status == "pass" for r in honest.results), honest.results
