"""``fffcore.torch``: ``to_torch`` and the ``FFFInference`` module inside torch models."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fffcore.torch needs PyTorch: pip install 'fffcore[torch]'")

import fffcore  # noqa: E402
from fffcore import FFFParams  # noqa: E402
from fffcore.torch import FFFInference, to_torch  # noqa: E402


def test_import_fffcore_alone_does_not_import_torch():
    code = "import sys, fffcore; assert 'torch' not in sys.modules and 'fffcore.torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_to_torch_copies_onto_the_device_in_the_requested_dtype():
    params = FFFParams.random(6, 3, 2, 2, seed=0)
    moved = to_torch(params, "cpu", torch.float64)
    assert moved.array_type == "torch" and moved.dtype == "float64"
    assert moved.w_in.device.type == "cpu" and moved.w_in.dtype == torch.float64
    np.testing.assert_array_equal(moved.w_in.numpy(), params.w_in.astype(np.float64))
    assert moved.activation == params.activation and moved.depth == params.depth
    same = to_torch(moved)
    assert same.w_in.data_ptr() != moved.w_in.data_ptr()  # a copy: the caller's tensors are never shared
    with pytest.raises(TypeError, match="dtype"):
        to_torch(params, dtype="int32")
    with pytest.raises(TypeError, match="params"):
        to_torch(params.w_in)


def test_module_inside_sequential_matches_the_reference():
    torch.manual_seed(0)
    params = FFFParams.random(16, 16, 6, 2, seed=1, activation="gelu")
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), FFFInference(params), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)
    ).eval()
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        y = model(x)
        hidden = model[0](x)
        ffn = fffcore.fff(hidden.numpy(), params, backend="reference")
        expected = model[3](model[2](torch.from_numpy(ffn)))
    assert y.shape == (3, 5, 4)
    # Both compute in float32; the only differences are in rounding (and near-tie branches, which this
    # random layer with 16 inputs does not have at the hidden values seen here), well inside 1e-5.
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_module_output_never_requires_grad():
    block = FFFInference(FFFParams.random(4, 4, 3, seed=0))
    x = torch.randn(2, 4, requires_grad=True)
    y = block(x)
    assert not y.requires_grad and y.grad_fn is None
    with torch.inference_mode():
        assert block(torch.randn(2, 4)).shape == (2, 4)


def test_module_follows_to_and_reloads_its_state():
    params = FFFParams.random(4, 3, 3, seed=0)
    block = FFFInference(params)
    assert [name for name, _ in block.named_buffers()] == ["w_in", "b_in", "w_out"]
    assert list(block.parameters()) == []
    x = torch.randn(5, 4, dtype=torch.float64)
    assert block(x).dtype == torch.float32  # computes in the weights' dtype
    first = block.params()
    assert block.params() is first  # built once while the buffers stay the same
    block.to(torch.float64)
    assert block.params() is not first and block.params().dtype == "float64"
    np.testing.assert_allclose(block(x).numpy(), fffcore.fff(x.numpy(), params.astype("float64"), backend="reference"))

    clone = FFFInference(FFFParams.random(4, 3, 3, seed=9), dtype=torch.float64)
    clone(x)  # caches conversions of the old weights, which the load below must not reuse
    clone.load_state_dict(block.state_dict())  # writes into the buffers in place
    assert torch.equal(clone(x), block(x))


def test_module_sees_in_place_weight_changes_even_with_cached_copies():
    # Two trees: the backend caches a copy of the top levels' weights (not a view), and deep
    # trees with many rows also cache per-subtree copies; both must follow in-place writes.
    block = FFFInference(FFFParams.random(4, 3, 7, 2, seed=0))
    x = torch.randn(4000, 4)
    before = block(x)
    with torch.no_grad():
        block.w_in.neg_()
    after = block(x)
    assert not torch.equal(after, before)
    fresh = FFFInference(FFFParams(block.w_in.clone(), block.b_in.clone(), block.w_out.clone(), block.activation))
    assert torch.equal(after, fresh(x))


def test_module_without_bias_and_repr():
    params = FFFParams.random(4, 3, 2, 3, seed=0, bias=False, activation="relu")
    block = FFFInference(params, backend="torch")
    assert block.b_in is None
    assert "trees=3, depth=2, d_in=4, d_out=3, activation='relu', bias=False" in repr(block)
    x = torch.randn(6, 4)
    torch.testing.assert_close(block(x), torch.from_numpy(fffcore.fff(x.numpy(), params, backend="reference")))


def test_module_rejects_a_backend_that_is_not_a_name():
    with pytest.raises(TypeError, match="backend"):
        FFFInference(FFFParams.random(4, 3, 2, seed=0), backend=object())


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_module_calls_numpy_only_backends_through_the_host(backend):
    params = FFFParams.random(6, 3, 4, 2, seed=3)
    block = FFFInference(params, backend=backend)
    x = torch.randn(2, 5, 6)
    y = block(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 5, 3) and y.device == x.device
    expected = fffcore.fff(x.numpy(), params, backend="reference")
    torch.testing.assert_close(y, torch.from_numpy(expected), rtol=1e-5, atol=1e-6)
    if backend == "reference":
        from fffcore.plan import plan_for

        numpy_params = plan_for(x, "torch", "cpu", block.params(), backend).bridged_params
        assert plan_for(x, "torch", "cpu", block.params(), backend).bridged_params is numpy_params  # converted once
        assert np.shares_memory(numpy_params.w_in, block.w_in.numpy())  # CPU buffers are not even copied


def test_module_with_a_numpy_only_backend_rejects_bfloat16_clearly():
    block = FFFInference(FFFParams.random(6, 3, 2, seed=3), backend="reference", dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16"):
        block(torch.randn(2, 6))
    with pytest.raises(TypeError, match=r"x: expected a torch\.Tensor"):
        block(np.zeros((2, 6), np.float32))


def test_a_module_built_under_inference_mode_works_and_sees_writes():
    params = FFFParams.random(6, 3, 3, seed=4)
    x = torch.randn(5, 6)
    expected = torch.from_numpy(fffcore.fff(x.numpy(), params, backend="reference"))
    with torch.inference_mode():
        block = FFFInference(params)  # its buffers are inference tensors, which keep no version counter
        torch.testing.assert_close(block(x), expected)
        block.w_out.mul_(2)  # allowed in inference mode, and not tracked: the module must not cache
        torch.testing.assert_close(block(x), 2 * expected)
