"""The torch custom operators: FFFInference under torch.compile, torch.export and torch.jit.trace equals eager."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the custom operators need PyTorch: pip install 'fffcore[torch]'")

import fffcore  # noqa: E402
from fffcore import FFFParams  # noqa: E402
from fffcore.torch import FFFInference  # noqa: E402
from fffcore.torch_ops import cmm_op, fff_op, params_from_tensors  # noqa: E402

PARAMS = FFFParams.random(12, 5, 4, trees=2, seed=0)
CPU_BACKENDS = [None] + [row.name for row in fffcore.list_backends() if row.available and "cpu" in row.devices]


def _model(backend: str | None) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 12), FFFInference(PARAMS, backend=backend), torch.nn.Tanh()).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(6, 12, generator=generator), torch.randn(6, 12, generator=generator)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compile_fullgraph_equals_eager_on_a_new_input(backend):
    model = _model(backend)
    first, second = _inputs()
    compiled = torch.compile(model, fullgraph=True)
    compiled(first)
    # Bit-identical: the compiled graph runs the same backend on the same rows as eager does.
    assert torch.equal(compiled(second), model(second))


@pytest.mark.filterwarnings("ignore:`torch.jit")  # deprecated in favour of compile and export, still used
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_jit_trace_equals_eager_on_a_new_input(backend):
    model = _model(backend)
    first, second = _inputs()
    traced = torch.jit.trace(model, (first,))
    assert "fffcore::fff" in str(traced.inlined_graph)  # recorded as one operation, not as a constant
    assert torch.equal(traced(second), model(second))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_export_equals_eager_on_a_new_input(backend):
    model = _model(backend)
    first, second = _inputs()
    exported = torch.export.export(model, (first,))
    assert any("fffcore.fff" in str(node.target) for node in exported.graph.nodes)
    assert torch.equal(exported.module()(second), model(second))


def test_export_with_a_dynamic_batch():
    model = _model(None)
    batch = torch.export.Dim("batch", min=2, max=1024)
    exported = torch.export.export(model, (torch.randn(4, 12),), dynamic_shapes=({0: batch},))
    x = torch.randn(37, 12)
    assert torch.equal(exported.module()(x), model(x))


def test_cmm_op_under_compile_equals_eager():
    block = FFFInference(PARAMS)

    def paths(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cmm_op(x, block.w_in, block.b_in, block.w_out, block.activation, None)

    first, second = _inputs()
    compiled = torch.compile(paths, fullgraph=True)
    compiled(first)
    logits, nodes = compiled(second)
    eager = fffcore.cmm(second, PARAMS)
    assert nodes.dtype == torch.int64 and nodes.shape == (6, 2, 5)
    assert torch.equal(nodes, eager.nodes) and torch.equal(logits, eager.logits)


def test_the_operators_pass_torchs_own_checks():
    block = FFFInference(PARAMS)
    x = torch.randn(3, 2, 12)
    torch.library.opcheck(fff_op, (x, block.w_in, block.b_in, block.w_out, "gelu", None))
    torch.library.opcheck(cmm_op, (x, block.w_in, block.b_in, block.w_out, "gelu", "reference"))


def test_fake_implementation_checks_shapes():
    block = FFFInference(PARAMS)
    # torch wraps the fake implementation's ValueError in its own error type, keeping the message.
    with pytest.raises(Exception, match=r"x: expected shape \(\.\.\., 12\) to match params.d_in, got \(2, 7\)"):
        torch.compile(lambda x: fff_op(x, block.w_in, block.b_in, block.w_out, "gelu", None), fullgraph=True)(
            torch.randn(2, 7)
        )


def test_module_output_is_detached_even_when_the_input_requires_grad():
    model = _model(None)
    x = torch.randn(3, 12, requires_grad=True)
    y = model[1](x)
    assert not y.requires_grad
    torch.testing.assert_close(y, model[1](x.detach()), rtol=0, atol=0)


def test_backward_through_the_operator_gives_the_gradients_along_the_paths():
    block = FFFInference(PARAMS)
    x = torch.randn(3, 12, requires_grad=True)
    y = fff_op(x, block.w_in, block.b_in, block.w_out, "gelu", None)
    y.sum().backward()
    expected = fffcore.fff_backward(x.detach().numpy(), PARAMS, np.ones((3, PARAMS.d_out), np.float32))
    torch.testing.assert_close(x.grad, torch.from_numpy(expected.x))


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_tracing_fffcore_fff_directly_is_a_clear_error():
    def direct(x: torch.Tensor) -> torch.Tensor:
        return fffcore.fff(x, PARAMS)

    with pytest.raises(RuntimeError, match=r"cannot be traced or compiled by torch.*torch\.ops\.fffcore\.fff"):
        torch.jit.trace(direct, (torch.randn(2, 12),))


def test_parameters_are_validated_once_and_rebuilt_after_an_in_place_write():
    block = FFFInference(PARAMS)
    first = params_from_tensors(block.w_in, block.b_in, block.w_out, "gelu")
    assert params_from_tensors(block.w_in, block.b_in, block.w_out, "gelu") is first
    with torch.no_grad():
        block.w_out.mul_(2)
    rebuilt = params_from_tensors(block.w_in, block.b_in, block.w_out, "gelu")
    assert rebuilt is not first
    x = torch.randn(4, 12)
    y = fff_op(x, block.w_in, block.b_in, block.w_out, "gelu", "reference")
    torch.testing.assert_close(y, 2 * torch.from_numpy(fffcore.fff(x.numpy(), PARAMS, backend="reference")))


cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() is False)"
)


@cuda
def test_compile_on_cuda_tensors_equals_eager():
    model = _model(None).to("cuda")
    first, second = (x.to("cuda") for x in _inputs())
    compiled = torch.compile(model, fullgraph=True)
    compiled(first)
    y = compiled(second)
    assert y.device == second.device
    assert torch.equal(y, model(second))
    expected = fffcore.fff(model[0](second).detach().cpu().numpy(), PARAMS, backend="reference")
    np.testing.assert_allclose(model[1](model[0](second)).cpu().numpy(), expected, rtol=1e-5, atol=1e-5)


@cuda
def test_reduce_overhead_compile_replays_equal_eager_calls():
    # torch's CUDA graphs warm up on the first call, record on the second and replay from the third:
    # each input below is new, so only a replay that runs the layer's kernels on it can match.
    model = _model(None).to("cuda").eval()
    compiled = torch.compile(model, mode="reduce-overhead")
    generator = torch.Generator(device="cuda").manual_seed(5)
    with torch.inference_mode():
        for _ in range(5):
            x = torch.randn(8, 12, generator=generator, device="cuda")
            # The FFF layer's bits are the eager ones; the compiled tanh may round an ulp apart, which
            # float32's default tolerances (rtol 1.3e-6, atol 1e-5) cover. A stale replay would not be close.
            torch.testing.assert_close(compiled(x).clone(), model(x))


def test_repr_names_the_backend_the_automatic_choice_takes():
    block = FFFInference(PARAMS)
    expected = fffcore.resolve_backend(torch.zeros(1, 12), block.params()).name
    assert f"backend=None (automatic: {expected})" in repr(block)
    assert "backend='reference'" in repr(FFFInference(PARAMS, backend="reference"))
