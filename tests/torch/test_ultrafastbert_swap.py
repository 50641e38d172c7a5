"""Trained-layout FFF modules: every backend matches UltraFastBERT's masking forward, and swapping keeps outputs."""

from __future__ import annotations

import numpy as np
import pytest

import fffcore
from fffcore.ultrafastbert import (
    activation_name,
    activation_of_module,
    is_ultrafastbert_fff,
    params_from_module,
    swap_fff_modules,
)

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


# Strictness: a module is swapped only when its tree shape and activation are established, by
# explicit arguments or by its own attributes, and everything present agrees with its weights.


class DenseMLP(torch.nn.Module):
    """An ordinary dense MLP that happens to have UltraFastBERT's layout: 4095 hidden units, no FFF attributes."""

    def __init__(self, d_in: int = 24, d_out: int = 16, hidden: int = 4095) -> None:
        super().__init__()
        self.linear_in = torch.nn.Linear(d_in, hidden)
        self.linear_out = torch.nn.Linear(hidden, d_out, bias=False)
        self.act = torch.nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_out(self.act(self.linear_in(x)))


class CustomGELU(torch.nn.Module):
    """Exact GELU under a class fffcore does not know."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x)


def _block(depth: int = 2, trees: int = 3, activation: str = "gelu", seed: int = 0):
    return make_masking_fff_module(24, 16, depth=depth, parallel_size=trees, seed=seed, activation=activation)


def _without_tree_attributes(block):
    del block.depth, block.parallel_size  # its forward reads them: the block can then only be swapped
    return block


def _assert_swap_matches_masking_forward(block, prepare=None, **kwargs):
    """Swap ``block`` (inside a model) in float64 and compare with its own masking forward.

    ``prepare(block)``, when given, alters the block after its forward has run (its forward
    needs ``depth`` and ``parallel_size``, which some tests then delete) and before the swap.
    """
    block = block.double()
    x = _inputs(3, torch.float64)
    with torch.no_grad():
        expected = block(x).numpy()
    if prepare is not None:
        prepare(block)
    params = params_from_module(block, **kwargs)
    model = torch.nn.Sequential(block)
    assert swap_fff_modules(model, **kwargs) == ["0"]
    assert model[0].activation == params.activation
    with torch.no_grad():
        got = model(x)
    assert got.dtype == torch.float64 and got.shape == (3, 5, 16)
    # Both follow the same paths (random float64 logits are never within rounding of 0). Each logit
    # is off by at most gamma(d_in + 1, 2**-53) * logit_scale (< 3e-15 logit_scale at d_in = 24); the
    # activations' slopes are <= 1.13 (gelu, gelu_tanh), <= 1.1 (silu), 1 (relu, identity), and torch
    # evaluates them within a few ulps; the masking forward then sums over all K*N <= 21 columns
    # (zeros outside the path), adding gamma(21, 2**-53) relative to sum |act| |w_out|. So
    # 1e-12 * sum (|act| + logit_scale) |w_out| is far above the rounding (< 1e-13 of it) and far
    # below any difference of semantics (a wrong activation or path moves outputs by ~1e-2).
    rows = x.reshape(-1, 24).numpy()
    along = evaluate_path(rows, params, fffcore.cmm(rows, params).nodes)
    tree = np.arange(params.trees)[None, :, None]
    magnitude = np.abs(params.w_out[tree, fffcore.cmm(rows, params).nodes])  # (B, K, L, d_out)
    scale = along.output_scale + np.einsum("bkl,bklo->bo", along.logit_scale, magnitude)
    np.testing.assert_array_less(np.abs(got.numpy() - expected).reshape(-1, 16), 1e-12 * scale + 1e-300)


def test_dense_look_alike_without_tree_attributes_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(24, 24), DenseMLP()).eval()
    x = _inputs(4, torch.float32)
    with torch.no_grad():
        before = model(x)
    with pytest.raises(ValueError) as refusal:
        swap_fff_modules(model)
    message = str(refusal.value)
    assert "  1 (DenseMLP): its tree shape cannot be established" in message
    assert "depth and parallel_size attributes" in message and "found neither" in message
    assert "4095 hidden units" in message and "ordinary dense MLP" in message
    assert "pass depth= or trees=" in message
    assert "no activation attribute" in message
    assert isinstance(model[1], DenseMLP)
    with torch.no_grad():
        assert torch.equal(model(x), before)


@pytest.mark.parametrize(
    ("attribute", "value", "pattern"),
    [
        ("n_nodes", 5, r"its n_nodes attribute is 5 but its weights and tree shape give 7 nodes per tree"),
        ("input_width", 23, r"its input_width attribute is 23 but linear_in.weight \(21, 24\) gives 24"),
        ("output_width", 17, r"its output_width attribute is 17 but linear_out.weight \(16, 21\) gives 16"),
        ("parallel_size", 2, r"21 rows, which do not fit 2 trees \(its parallel_size attribute\) and depth 2"),
        ("depth", "2", r"its depth attribute is '2', expected an int >= 0"),
    ],
)
def test_attributes_that_contradict_the_weights_are_refused(attribute, value, pattern):
    block = _block()
    setattr(block, attribute, value)
    model = torch.nn.Sequential(block)
    with pytest.raises(ValueError, match=r"  0 \(MaskingFFF\): " + ".*" + pattern):
        swap_fff_modules(model)
    with pytest.raises(ValueError, match=r"module \(MaskingFFF\): .*" + pattern):
        params_from_module(block)
    assert model[0] is block


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"depth": 3}, r"depth=3 was passed but its depth attribute is 2; pass depth=2 or leave depth out"),
        ({"trees": 1}, r"trees=1 was passed but its parallel_size attribute is 3"),
        ({"depth": 0, "trees": 21}, r"depth=0 was passed but its depth attribute is 2.*trees=21 was passed"),
    ],
)
def test_explicit_tree_shape_contradicting_the_attributes_is_refused(kwargs, pattern):
    model = torch.nn.Sequential(_block())
    with pytest.raises(ValueError, match=pattern):
        swap_fff_modules(model, **kwargs)
    with pytest.raises(ValueError, match=pattern):
        params_from_module(model[0], **kwargs)
    assert type(model[0]).__name__ == "MaskingFFF"


def test_explicit_activation_contradicting_the_module_is_refused():
    model = torch.nn.Sequential(_block(activation="relu"))
    pattern = r"activation='gelu' was passed but its activation attribute ReLU\(\) is 'relu'.*activation='relu'"
    with pytest.raises(ValueError, match=pattern):
        swap_fff_modules(model, activation="gelu")
    with pytest.raises(ValueError, match=pattern):
        params_from_module(model[0], activation="gelu")
    assert swap_fff_modules(model, activation="relu") == ["0"]
    assert model[0].activation == "relu"


def test_unknown_activation_object_is_refused_until_named():
    block = _block()
    block.activation = CustomGELU()
    model = torch.nn.Sequential(block)
    with pytest.raises(
        ValueError,
        match=r"its activation attribute is CustomGELU\(\), which is not one fffcore "
        r"recognises .* pass activation= with its name",
    ):
        swap_fff_modules(model)
    with pytest.raises(ValueError, match=r"module \(MaskingFFF\): its activation attribute is CustomGELU"):
        activation_of_module(block)
    assert model[0] is block
    _assert_swap_matches_masking_forward(block, activation="gelu")  # CustomGELU is exact GELU


def test_missing_activation_is_refused():
    block = _block()
    del block.activation
    model = torch.nn.Sequential(block)
    with pytest.raises(
        ValueError,
        match=r"no activation attribute, so the activation it applies cannot be known; "
        r"pass activation=",
    ):
        swap_fff_modules(model)
    with pytest.raises(ValueError, match=r"no activation attribute"):
        params_from_module(block)
    assert params_from_module(block, activation="silu").activation == "silu"


def test_nothing_is_swapped_when_one_module_is_refused_and_every_refusal_is_listed():
    good, lookalike, wrong = _block(seed=1), DenseMLP(), _block(seed=2)
    wrong.n_nodes = 8
    model = torch.nn.Sequential(good, torch.nn.Sequential(lookalike, torch.nn.Linear(16, 24)), wrong)
    with pytest.raises(ValueError) as refusal:
        swap_fff_modules(model)
    lines = str(refusal.value).splitlines()
    assert lines[0] == (
        "model: refused 2 of 3 modules with UltraFastBERT's FFF layout (linear_in, linear_out); nothing was replaced:"
    )
    assert [line.split(":")[0] for line in lines[1:]] == ["  1.0 (DenseMLP)", "  2 (MaskingFFF)"]
    assert model[0] is good and model[1][0] is lookalike and model[2] is wrong


@pytest.mark.parametrize("kwargs", [{"depth": 2}, {"trees": 3}, {"depth": 2, "trees": 3}], ids=str)
def test_explicit_depth_or_trees_make_a_look_alike_swappable(kwargs):
    lookalike = _without_tree_attributes(_block(seed=5))
    with pytest.raises(ValueError, match="its tree shape cannot be established"):
        swap_fff_modules(torch.nn.Sequential(lookalike))
    _assert_swap_matches_masking_forward(_block(seed=5), prepare=_without_tree_attributes, **kwargs)


def test_explicit_tree_shape_must_still_fit_the_weights():
    block = _without_tree_attributes(_block())  # 21 rows
    with pytest.raises(ValueError, match=r"21 rows, which do not fit depth 3 \(passed\)"):
        swap_fff_modules(torch.nn.Sequential(block), depth=3)
    with pytest.raises(ValueError, match=r"21 rows, which do not fit 2 trees \(passed\)"):
        swap_fff_modules(torch.nn.Sequential(block), trees=2)
    block.n_nodes = 21  # 1 tree of depth 3 would need 15; 21 trees of depth 0 need 1 each
    with pytest.raises(ValueError, match=r"its n_nodes attribute is 21 but .* give 1 nodes per tree"):
        swap_fff_modules(torch.nn.Sequential(block), trees=21)


@pytest.mark.parametrize("activation", fffcore.ACTIVATIONS)
def test_stand_ins_swap_with_their_own_activation(activation):
    block = _block(depth=3, trees=2, activation=activation, seed=7)
    assert activation_of_module(block) == activation
    _assert_swap_matches_masking_forward(block)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (torch.nn.GELU(), "gelu"),
        (torch.nn.GELU(approximate="tanh"), "gelu_tanh"),
        (torch.nn.ReLU(inplace=True), "relu"),
        (torch.nn.SiLU(), "silu"),
        (torch.nn.Identity(), "identity"),
        (torch.nn.GELU, "gelu"),
        (torch.nn.ReLU, "relu"),
        (torch.nn.functional.gelu, "gelu"),
        (torch.nn.functional.relu, "relu"),
        (torch.nn.functional.silu, "silu"),
        ("gelu_tanh", "gelu_tanh"),
        ("tanh", None),
        (torch.nn.Tanh(), None),
        (CustomGELU(), None),
        (type("ReLUSubclass", (torch.nn.ReLU,), {})(), None),
        (torch.tanh, None),
        (3, None),
    ],
    ids=repr,
)
def test_activation_names(value, expected):
    assert activation_name(value) == expected


def test_module_arguments_are_checked():
    model = torch.nn.Sequential(_block())
    with pytest.raises(ValueError, match=r"depth: expected an int >= 0 or None, got -1"):
        swap_fff_modules(model, depth=-1)
    with pytest.raises(ValueError, match=r"trees: expected an int >= 1 or None, got 0"):
        params_from_module(model[0], trees=0)
    with pytest.raises(ValueError, match=r"activation: expected one of \('gelu'.* got 'tanh'"):
        swap_fff_modules(model, activation="tanh")
    with pytest.raises(TypeError, match=r"activation: expected a name among .* got GELU"):
        swap_fff_modules(model, activation=torch.nn.GELU())
    with pytest.raises(TypeError, match=r"module: expected UltraFastBERT's FFF layout"):
        params_from_module(torch.nn.Linear(3, 4))


def test_module_shared_under_two_names_is_replaced_at_both():
    block = _block()
    model = torch.nn.Sequential(block, torch.nn.Linear(16, 24), block)
    assert swap_fff_modules(model) == ["0", "2"]
    assert model[0] is model[2] and type(model[0]).__name__ == "FFFInference"


def test_swapped_state_dict_saves_and_loads_into_another_swapped_model(tmp_path):
    def build(seed: int):
        model = torch.nn.Sequential(torch.nn.Linear(24, 24), _block(seed=seed), torch.nn.Tanh()).eval()
        with torch.no_grad():
            model[0].weight.copy_(torch.randn((24, 24), generator=torch.Generator().manual_seed(seed)))
        assert swap_fff_modules(model) == ["1"]
        return model

    saved, other = build(11), build(12)
    x = _inputs(5, torch.float32)
    path = tmp_path / "swapped.pt"
    torch.save(saved.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert {"1.w_in", "1.b_in", "1.w_out"} <= set(state)
    with torch.no_grad():
        expected = saved(x)
        assert not torch.equal(other(x), expected)
        other.load_state_dict(state)
        assert torch.equal(other(x), expected)  # same weights, same backend, same code path
