"""Training through torch: the differentiable ``torch.ops.fffcore.fff`` and the trainable ``FFFLayer``."""

from __future__ import annotations

import pytest

import fffcore
from fffcore.spec import ACTIVATIONS

torch = pytest.importorskip("torch", reason="training needs PyTorch: pip install 'fffcore[torch]'")

from fffcore.torch import FFFLayer  # noqa: E402  (after the skip: it imports torch)


def backends_here() -> list[str]:
    return [row.name for row in fffcore.list_backends() if row.available and row.backward and "cpu" in row.devices]


@pytest.mark.parametrize("backend", backends_here())
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_passes_in_float64_away_from_ties(backend, activation):
    generator = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in ((9, 6), (2, 15, 6), (2, 15), (2, 15, 5))
    ]

    def layer(x, w_in, b_in, w_out):
        return torch.ops.fffcore.fff(x, w_in, b_in, w_out, activation, backend)

    # gradcheck perturbs each input by 1e-6; with normal data no logit lies that close to a tie here.
    z = torch.einsum("bi,kni->bkn", tensors[0], tensors[1]) + tensors[2]
    assert float(z.detach().abs().min()) > 1e-4
    assert torch.autograd.gradcheck(layer, tensors, eps=1e-6, atol=1e-7)


def test_a_layer_without_bias_and_an_input_that_needs_no_gradient():
    layer = FFFLayer(6, 4, depth=3, bias=False, dtype=torch.float64)
    x = torch.randn(5, 6, dtype=torch.float64)
    layer(x).square().sum().backward()
    assert layer.b_in is None and layer.w_in.grad is not None and layer.w_out.grad is not None and x.grad is None


def test_fff_layer_is_initialised_as_ultrafastbert_and_trains_with_any_optimizer():
    torch.manual_seed(0)
    layer = FFFLayer(16, 4, depth=4, trees=2)
    assert float(layer.w_in.abs().max()) <= 16**-0.5 and float(layer.w_out.abs().max()) <= (5 * 2) ** -0.5
    assert {name for name, _ in layer.named_parameters()} == {"w_in", "b_in", "w_out"}
    x = torch.randn(512, 16)
    target = torch.tanh(x @ torch.randn(16, 4))
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        loss = torch.nn.functional.mse_loss(layer(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]
    snapshot = layer.params()
    assert isinstance(snapshot, fffcore.FFFParams) and snapshot.depth == 4 and snapshot.trees == 2


def test_an_fff_layer_learns_as_the_masked_layer_does_from_the_same_weights():
    from benchmarks.studies.training import learning_demonstration

    demo = learning_demonstration(width=12, depth=4, rows=256, steps=60, learning_rate=0.5)
    ours, theirs = demo["losses"]["fffcore"], demo["losses"]["masked"]
    assert ours[-1] < 0.9 * ours[0]  # it learns
    # float64 with equal gradients up to rounding: the curves agree to far better than 1e-9 relative
    assert max(abs(a - b) / b for a, b in zip(ours, theirs, strict=True)) < 1e-9


def test_cmm_has_no_gradient_and_says_so():
    w_in = torch.randn(1, 7, 4, requires_grad=True)
    logits, _ = torch.ops.fffcore.cmm(torch.randn(3, 4), w_in, None, torch.randn(1, 7, 2), "gelu", None)
    with pytest.raises(RuntimeError, match="fffcore::cmm has no gradient"):
        logits.sum().backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() is False)")
def test_an_fff_layer_trains_on_cuda_with_the_gradients_of_the_cpu():
    torch.manual_seed(0)
    layer = FFFLayer(32, 16, depth=5, trees=2, dtype=torch.float64)
    x, target = torch.randn(300, 32, dtype=torch.float64), torch.randn(300, 16, dtype=torch.float64)
    torch.nn.functional.mse_loss(layer(x), target).backward()
    on_cpu = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    layer.cuda()
    torch.nn.functional.mse_loss(layer(x.cuda()), target.cuda()).backward()
    for cpu_grad, parameter in zip(on_cpu, layer.parameters(), strict=True):
        # float64 sums in another order (atomic adds on CUDA): relative 1e-10 of the largest element
        torch.testing.assert_close(parameter.grad.cpu(), cpu_grad, rtol=0, atol=1e-10 * float(cpu_grad.abs().max()))
