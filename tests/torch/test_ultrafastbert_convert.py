"""UltraFastBERT state dicts to FFFParams and back: layout, inference of the tree shape, errors."""

from __future__ import annotations

import numpy as np
import pytest

from fffcore import FFFParams
from fffcore.ultrafastbert import load_state_dict, params_from_state_dict, state_dict_from_params


def _state_dict(trees: int, depth: int, d_in: int, d_out: int, prefix: str = "", seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    total = trees * (2 ** (depth + 1) - 1)
    return {
        prefix + "linear_in.weight": rng.standard_normal((total, d_in)).astype(np.float32),
        prefix + "linear_in.bias": rng.standard_normal(total).astype(np.float32),
        prefix + "linear_out.weight": rng.standard_normal((d_out, total)).astype(np.float32),
        prefix + "unrelated.weight": np.zeros(3),
    }


def test_layout_tree_k_owns_its_block_of_rows_in_heap_order():
    sd = _state_dict(trees=3, depth=2, d_in=5, d_out=4, prefix="encoder.layers.3.ffn.")
    params = params_from_state_dict(sd, "encoder.layers.3.ffn.", trees=3)
    assert (params.trees, params.depth, params.d_in, params.d_out) == (3, 2, 5, 4)
    w_in, b_in, w_out = (
        sd["encoder.layers.3.ffn." + k] for k in ("linear_in.weight", "linear_in.bias", "linear_out.weight")
    )
    for k in range(3):
        for node in range(7):
            np.testing.assert_array_equal(params.w_in[k, node], w_in[7 * k + node])
            assert params.b_in[k, node] == b_in[7 * k + node]
            np.testing.assert_array_equal(params.w_out[k, node], w_out[:, 7 * k + node])


@pytest.mark.parametrize(("kwargs", "expected"), [({}, (1, 3)), ({"depth": 3}, (1, 3)), ({"trees": 1}, (1, 3))])
def test_single_tree_is_inferred(kwargs, expected):
    params = params_from_state_dict(_state_dict(1, 3, 4, 2), **kwargs)
    assert (params.trees, params.depth) == expected


def test_depth_or_trees_gives_the_other():
    sd = _state_dict(4, 2, 4, 2)  # 28 rows
    assert params_from_state_dict(sd, depth=2).trees == 4
    assert params_from_state_dict(sd, trees=4).depth == 2
    assert params_from_state_dict(sd, trees=28).depth == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({}, ValueError, r"28 rows are not one tree .* pass depth= or trees="),
        ({"depth": 3}, ValueError, r"28 rows do not make whole trees of depth 3"),
        ({"trees": 3}, ValueError, r"28 rows do not split into 3 trees"),
        ({"trees": 2, "depth": 2}, ValueError, r"28 rows do not make 2 trees of depth 2"),
    ],
)
def test_inconsistent_tree_shape(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        params_from_state_dict(_state_dict(4, 2, 4, 2), **kwargs)


def test_missing_key_names_the_key_and_nearby_ones():
    sd = _state_dict(1, 1, 4, 2, prefix="layer.0.")
    with pytest.raises(KeyError, match=r"no key 'layer.1.linear_in.weight'.*layer.0.linear_in.weight"):
        params_from_state_dict(sd, "layer.1.")


def test_mismatched_shapes():
    sd = _state_dict(1, 1, 4, 2)
    bad_out = dict(sd, **{"linear_out.weight": np.zeros((2, 4), np.float32)})
    with pytest.raises(ValueError, match=r"linear_out.weight: expected shape \(d_out, 3\)"):
        params_from_state_dict(bad_out)
    bad_bias = dict(sd, **{"linear_in.bias": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match=r"linear_in.bias: expected shape \(3,\)"):
        params_from_state_dict(bad_bias)


def test_no_bias_and_dtype_conversion():
    sd = _state_dict(1, 1, 4, 2)
    del sd["linear_in.bias"]
    params = params_from_state_dict(sd, dtype="float64")
    assert params.b_in is None
    assert params.dtype == "float64"
    np.testing.assert_array_equal(params.w_in[0], sd["linear_in.weight"])


def test_float64_tensors_keep_their_precision():
    torch = pytest.importorskip("torch")
    sd = {k: torch.from_numpy(v.astype(np.float64) / 3) for k, v in _state_dict(1, 1, 4, 2).items()}
    for dtype in (None, "float64"):
        params = params_from_state_dict(sd, dtype=dtype)
        np.testing.assert_array_equal(params.w_in[0], sd["linear_in.weight"].numpy())


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"depth": -1}, r"depth: expected an int >= 0"), ({"trees": 0}, r"trees: expected an int >= 1")],
)
def test_invalid_tree_shape_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        params_from_state_dict(_state_dict(1, 1, 4, 2), **kwargs)


def test_round_trip_through_the_layout():
    params = FFFParams.random(6, 5, depth=2, trees=3, seed=1)
    again = params_from_state_dict(state_dict_from_params(params, "p."), "p.", trees=3)
    for name in ("w_in", "b_in", "w_out"):
        np.testing.assert_array_equal(getattr(again, name), getattr(params, name))


def test_export_without_bias_writes_zeros():
    params = FFFParams.random(3, 2, depth=1, bias=False, seed=1)
    exported = state_dict_from_params(params)
    np.testing.assert_array_equal(exported["linear_in.bias"], np.zeros(3, np.float32))
    assert exported["linear_out.weight"].shape == (2, 3)


def test_torch_tensors_and_files(tmp_path):
    torch = pytest.importorskip("torch")
    params = FFFParams.random(6, 5, depth=2, trees=2, seed=2)
    tensors = state_dict_from_params(params, "ffn.", as_torch=True)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    path = tmp_path / "layer.pt"
    torch.save(tensors, path)
    loaded = params_from_state_dict(load_state_dict(path), "ffn.", depth=2)
    np.testing.assert_array_equal(loaded.w_out, params.w_out)
    bf16 = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    with pytest.raises(TypeError, match="bfloat16 has no numpy dtype; pass dtype='float32'"):
        params_from_state_dict(bf16, "ffn.", depth=2)
    assert params_from_state_dict(bf16, "ffn.", depth=2, dtype="float32").dtype == "float32"


def test_load_state_dict_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_state_dict(tmp_path / "missing.pt")
