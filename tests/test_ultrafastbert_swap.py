"""Trained-layout FFF modules: every backend matches UltraFastBERT's masking forward, and swapping keeps outputs."""

from __future__ import annotations

import numpy as np
import pytest

import fffcore
from fffcore.ultrafastbert import is_ultrafastbert_fff, params_from_module, swap_fff_modules

torch = pytest.importorskip("torch")
from fffcore.benchmarks.check import check_fff_output  # noqa: E402
from fffcore.benchmarks.masking import make_masking_fff_module  # noqa: E402  (needs torch)
from fffcore.reference.oracle import evaluate_path  # noqa: E402

BACKENDS = [
    row.name for row in fffcore.list_backends() if row.available and row.name in ("reference", "numba", "torch")
]


@pytest.fixture(params=[(1, 3), (4, 2), (1, 6)], ids=lambda p: f"K{p[0]}xD{p[1]}")
def masking_model(request):
    trees, depth = request.param
    block = make_masking_fff_module(d_in=24, d_out=16, depth=depth, parallel_size=trees, seed=trees * 10 + depth)
    return torch.nn.Sequential(torch.nn.Linear(24, 24), block, torch.nn.Tanh()).eval()


def _inputs(seed: int, dtype) -> torch.Tensor:
    return torch.randn((3, 5, 24), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_layout_is_recognised_by_its_parameters():
    block = make_masking_fff_module(8, 4, depth=2, parallel_size=3)
    assert is_ultrafastbert_fff(block)
    assert not is_ultrafastbert_fff(torch.nn.Linear(8, 4))
    params = params_from_module(block)
    assert (params.trees, params.depth, params.d_in, params.d_out) == (3, 2, 8, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_matches_the_masking_forward_in_float64(masking_model, backend):
    model = masking_model.double()
    block = model[1]
    x = _inputs(1, torch.float64)
    with torch.no_grad():
        hidden = model[0](x)
        expected = block(hidden).numpy()
    params = params_from_module(block)
    got = fffcore.fff(hidden.numpy(), params, backend=backend)
    # In float64 the rounding band of a branch is ~1e-14 * sum|x w|; random logits are never that
    # close to zero, so both follow the same paths and differ only by rounding. Bound (see
    # fffcore.conformance.tolerances): gamma(d_in + 3, 2**-53) on each logit, propagated through
    # GELU (slope <= 1.13) and the 2**-53-scale tree sum: 1e-12 relative to sum |act| |w_out| is
    # far above it (~1e-14) and far below any semantic difference.
    along = evaluate_path(
        hidden.reshape(-1, 24).numpy(),
        params,
        fffcore.cmm(hidden.numpy(), params).nodes.reshape(-1, params.trees, params.depth + 1),
    )
    scale = along.output_scale.reshape(expected.shape)
    np.testing.assert_array_less(np.abs(got - expected), 1e-12 * (scale + 1e-300))


@pytest.mark.parametrize("backend", BACKENDS)
def test_swapped_model_gives_the_same_outputs_in_float32(masking_model, backend):
    x = _inputs(2, torch.float32)
    with torch.no_grad():
        hidden = masking_model[0](x)
        block_before = masking_model[1](hidden).numpy()
        before = masking_model(x).numpy()
    params = params_from_module(masking_model[1])
    assert swap_fff_modules(masking_model, backend=backend) == ["1"]
    assert type(masking_model[1]).__name__ == "FFFInference"
    with torch.no_grad():
        block_after = masking_model[1](hidden)
        after = masking_model(x)
    assert after.dtype == torch.float32 and after.shape == (3, 5, 16)
    # Both blocks compute in float32 in different summation orders: each must agree with the
    # float64 oracle within the derived float32 bounds (near-tie rows, which may rightly branch
    # either way, are left out and counted by the check).
    rows = hidden.reshape(-1, 24).numpy()
    for output in (block_before, block_after.numpy()):
        verdict = check_fff_output(rows, params, output.reshape(-1, 16), None)
        assert verdict.ok, verdict.detail
        assert verdict.rows_skipped <= 1
    # tanh is 1-Lipschitz and rounds once on each side (<= u, as |tanh| <= 1): the models may differ
    # by the blocks' difference plus 2u; allow 4u for libm's last-bit differences.
    u = np.finfo(np.float32).eps / 2
    difference = np.abs(block_after.numpy() - block_before)
    assert np.all(np.abs(after.numpy() - before) <= difference + 4 * u)


def test_model_that_is_itself_an_fff_module_is_refused():
    with pytest.raises(ValueError, match="is itself an FFF module"):
        swap_fff_modules(make_masking_fff_module(8, 4, depth=1))
