"""The NumPy reference pinned by hand-computed trees, exact ties, NaN, shapes and a per-row loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fffcore
from fffcore import FFFParams
from fffcore.reference import activate, evaluate_path, oracle_cmm, oracle_fff


def _params(w_in, b_in, w_out, activation="identity", dtype=np.float64) -> FFFParams:
    return FFFParams(
        np.asarray(w_in, dtype),
        None if b_in is None else np.asarray(b_in, dtype),
        np.asarray(w_out, dtype),
        activation,
    )


def test_depth_zero_single_tree_is_one_neuron():
    params = _params([[[1.0, 2.0]]], [[0.5]], [[[3.0, -1.0, 2.0]]])
    x = np.array([[1.0, 1.0], [-2.0, 0.0]])
    result = fffcore.cmm(x, params, backend="reference")
    np.testing.assert_array_equal(result.logits, [[[3.5]], [[-1.5]]])
    np.testing.assert_array_equal(result.nodes, [[[0]], [[0]]])
    np.testing.assert_array_equal(fffcore.fff(x, params, backend="reference"), [[10.5, -3.5, 7.0], [-4.5, 1.5, -3.0]])


def test_depth_one_goes_right_on_positive_and_left_on_negative():
    # Root weights pick x0; left child (node 1) weights pick x1, right child (node 2) weights pick -x1.
    w_in = [[[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]]
    w_out = [[[1.0], [10.0], [100.0]]]
    params = _params(w_in, None, w_out)
    x = np.array([[2.0, 3.0], [-2.0, 3.0]])
    result = fffcore.cmm(x, params, backend="reference")
    # Row 0: root logit 2 > 0, right child 2, logit -3. Row 1: root logit -2, left child 1, logit 3.
    np.testing.assert_array_equal(result.nodes, [[[0, 2]], [[0, 1]]])
    np.testing.assert_array_equal(result.logits, [[[2.0, -3.0]], [[-2.0, 3.0]]])
    np.testing.assert_array_equal(fffcore.fff(x, params, backend="reference"), [[2.0 - 300.0], [-2.0 + 30.0]])


def test_depth_two_two_trees_with_bias_relu():
    # Tree 0 always goes right (bias +1 everywhere, zero weights): nodes 0, 2, 6.
    # Tree 1 always goes left (bias -1 everywhere): nodes 0, 1, 3.
    n = 7
    w_in = np.zeros((2, n, 1))
    b_in = np.stack([np.ones(n), -np.ones(n)])
    w_out = np.arange(2 * n, dtype=np.float64).reshape(2, n, 1)  # w_out[k, node] = 7k + node
    params = _params(w_in, b_in, w_out, activation="relu")
    x = np.array([[5.0]])
    result = fffcore.cmm(x, params, backend="reference")
    np.testing.assert_array_equal(result.nodes, [[[0, 2, 6], [0, 1, 3]]])
    np.testing.assert_array_equal(result.logits, [[[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]])
    # relu(1) * (0 + 2 + 6) from tree 0; relu(-1) = 0 for tree 1.
    np.testing.assert_array_equal(fffcore.fff(x, params, backend="reference"), [[8.0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_tie_goes_left(dtype):
    # 1*2 + (-2)*1 + 0 = 0 exactly: the root logit is an exact zero, so the row goes to node 1.
    w_in = [[[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]]
    params = _params(w_in, [[0.0, 0.0, 0.0]], [[[1.0], [2.0], [3.0]]], dtype=dtype)
    result = fffcore.cmm(np.array([[2.0, -2.0]], dtype), params, backend="reference")
    assert result.logits[0, 0, 0] == 0.0
    np.testing.assert_array_equal(result.nodes, [[[0, 1]]])


def test_nan_goes_left_and_propagates():
    w_in = [[[1.0], [1.0], [1.0]]]
    params = _params(w_in, None, [[[1.0], [2.0], [3.0]]], activation="gelu")
    result = fffcore.cmm(np.array([[np.nan]]), params, backend="reference")
    np.testing.assert_array_equal(result.nodes, [[[0, 1]]])
    assert np.isnan(result.logits).all()
    assert np.isnan(fffcore.fff(np.array([[np.nan]]), params, backend="reference")).all()


def test_infinite_input_goes_right_and_activation_keeps_infinity():
    params = _params([[[1.0], [1.0], [-1.0]]], None, [[[1.0], [1.0], [1.0]]], activation="gelu")
    result = fffcore.cmm(np.array([[np.inf]]), params, backend="reference")
    np.testing.assert_array_equal(result.nodes, [[[0, 2]]])
    np.testing.assert_array_equal(result.logits, [[[np.inf, -np.inf]]])
    # gelu(+inf) = +inf, gelu(-inf) = 0 (the limit): the output is +inf, not NaN.
    np.testing.assert_array_equal(fffcore.fff(np.array([[np.inf]]), params, backend="reference"), [[np.inf]])


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("gelu", 1.0, 0.5 * (1 + math.erf(1 / math.sqrt(2)))),
        ("gelu", -3.0, -3.0 * 0.5 * math.erfc(3 / math.sqrt(2))),
        ("gelu_tanh", 1.0, 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (1 + 0.044715)))),
        ("relu", -2.0, 0.0),
        ("silu", 2.0, 2.0 / (1 + math.exp(-2.0))),
        ("identity", -7.5, -7.5),
    ],
)
def test_activation_values(name, value, expected):
    # The expected values are written differently from the implementation: a 1-ulp difference in
    # erfc's argument z moves erfc(z) by 2 z^2 ulps relative (its log-derivative is ~2z), ~9e-16 at
    # z = 2.1, plus a few roundings: allow 4e-15.
    assert activate(name, np.array([value]))[0] == pytest.approx(expected, rel=4e-15, abs=0)


@pytest.mark.parametrize("name", fffcore.ACTIVATIONS)
def test_activation_special_values(name):
    values = activate(name, np.array([np.nan, np.inf, -np.inf]))
    assert np.isnan(values[0])
    assert values[1] == np.inf
    assert values[2] == (-np.inf if name == "identity" else 0.0)


def test_leading_dimensions_are_kept():
    params = FFFParams.random(5, 3, depth=2, trees=2, seed=1)
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    result = fffcore.cmm(x, params, backend="reference")
    assert result.logits.shape == (2, 3, 4, 2, 3)
    assert result.nodes.shape == (2, 3, 4, 2, 3)
    assert result.nodes.dtype == np.int64
    y = fffcore.fff(x, params, backend="reference")
    assert y.shape == (2, 3, 4, 3)
    np.testing.assert_array_equal(y.reshape(-1, 3), fffcore.fff(x.reshape(-1, 5), params, backend="reference"))
    single = fffcore.fff(x[0, 0, 0], params, backend="reference")
    assert single.shape == (3,)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0, 5), (0, 0, 5)])
def test_empty_batch(shape):
    params = FFFParams.random(5, 3, depth=1, seed=1)
    x = np.zeros(shape, np.float32)
    result = fffcore.cmm(x, params, backend="reference")
    assert result.logits.shape == (*shape[:-1], 1, 2)
    assert result.nodes.dtype == np.int64
    y = fffcore.fff(x, params, backend="reference")
    assert y.shape == (*shape[:-1], 3)
    assert y.dtype == np.float32


def _per_row_fff(x: np.ndarray, params: FFFParams) -> tuple[np.ndarray, np.ndarray]:
    """The spec written as the most literal loop: one row, one tree, one level at a time, in float64."""
    w_in = params.w_in.astype(np.float64)
    w_out = params.w_out.astype(np.float64)
    b_in = None if params.b_in is None else params.b_in.astype(np.float64)
    rows = x.astype(np.float64)
    nodes = np.zeros((len(rows), params.trees, params.depth + 1), np.int64)
    y = np.zeros((len(rows), params.d_out))
    for b, row in enumerate(rows):
        for k in range(params.trees):
            node = 0
            for level in range(params.depth + 1):
                logit = math.fsum(float(a) * float(w) for a, w in zip(row, w_in[k, node], strict=True))
                if b_in is not None:
                    logit += b_in[k, node]
                nodes[b, k, level] = node
                y[b] += activate(params.activation, np.array([logit]))[0] * w_out[k, node]
                node = 2 * node + 1 + (1 if logit > 0 else 0)
    return nodes, y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", fffcore.ACTIVATIONS)
def test_reference_matches_a_per_row_loop(dtype, activation):
    rng = np.random.default_rng(7)
    params = FFFParams.random(12, 6, depth=3, trees=2, activation=activation, dtype=dtype, seed=3)
    x = rng.standard_normal((40, 12)).astype(dtype)
    expected_nodes, expected = _per_row_fff(x, params)
    result = fffcore.cmm(x, params, backend="reference")
    along = evaluate_path(x, params, expected_nodes)
    u = np.finfo(dtype).eps / 2
    # Rounding in the working dtype (<= 13 u s, see below) can only flip a branch whose logit is that
    # close to zero; these draws have none, so the paths must agree exactly.
    assert np.all(np.abs(oracle_cmm(x, params)[0]) > 16 * u * along.logit_scale)
    np.testing.assert_array_equal(result.nodes, expected_nodes)
    y = fffcore.fff(x, params, backend="reference")
    # Derived bound, u = eps / 2 of the working dtype. Each logit is a 12-term dot product plus a bias:
    # error <= gamma_13 * s ~ 13 u s, s = sum |x w| + |b| (logit_scale). The activation's slope is at
    # most 1.13 (gelu; 1.1 silu, 1 relu/identity) and it rounds once more (u |act|). Each output element
    # sums 8 terms act * w_out with |w_out| <= 1/sqrt(8) (UltraFastBERT's initialisation), so the
    # logit errors contribute <= 8 * 0.354 * 1.13 * 13 u max(s) ~ 42 u max(s), and the products and the
    # 8-term sum <= 10 u * output_scale. 64 u * (output_scale + max s) covers both with margin.
    magnitude = along.output_scale + along.logit_scale.max(axis=(1, 2))[:, None]
    assert np.all(np.abs(y - expected) <= 64 * u * magnitude)


def test_oracle_along_a_given_path_uses_that_path():
    params = FFFParams.random(4, 2, depth=1, seed=0, dtype=np.float64, activation="identity")
    x = np.random.default_rng(0).standard_normal((3, 4))
    forced = np.array([[[0, 1]], [[0, 2]], [[0, 1]]])
    evaluation = evaluate_path(x, params, forced)
    for b in range(3):
        node = forced[b, 0, 1]
        logit = x[b] @ params.w_in[0, node] + params.b_in[0, node]
        assert evaluation.logits[b, 0, 1] == pytest.approx(logit, rel=1e-14)
        root = x[b] @ params.w_in[0, 0] + params.b_in[0, 0]
        expected = root * params.w_out[0, 0] + logit * params.w_out[0, node]
        np.testing.assert_allclose(evaluation.output[b], expected, rtol=1e-13)
    assert np.all(evaluation.logit_scale >= np.abs(evaluation.logits))
    assert np.all(evaluation.output_scale >= np.abs(evaluation.output))


_SCALAR_ACTIVATIONS = {
    "gelu": lambda z: 0.5 * z * math.erfc(-z / math.sqrt(2.0)),
    "gelu_tanh": lambda z: 0.5 * z * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3))),
    "relu": lambda z: max(z, 0.0),
    "silu": lambda z: z / (1.0 + math.exp(-z)),
    "identity": lambda z: z,
}


def _dense_masked_fff(x: np.ndarray, params: FFFParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The layer as a dense layer with a mask, in float64, sharing no code with the reference.

    Every node's logit is computed for every row with one matmul per tree; an explicit loop walks
    each row down each tree and marks the nodes it visits; the output is the masked dense layer,
    ``y = sum_k (act(logits_k) * mask_k) @ w_out[k]``. Returns the nodes (B, K, D+1), the output
    (B, d_out) and its scale ``sum_k (|act(logits_k)| * mask_k) @ |w_out[k]|`` (B, d_out).
    """
    rows = np.asarray(x).astype(params.dtype).astype(np.float64)  # the oracle rounds x to the layer's dtype first
    w_in, w_out = np.asarray(params.w_in, np.float64), np.asarray(params.w_out, np.float64)
    b_in = np.zeros(w_in.shape[:2]) if params.b_in is None else np.asarray(params.b_in, np.float64)
    activation = np.vectorize(_SCALAR_ACTIVATIONS[params.activation], otypes=[np.float64])
    nodes = np.zeros((len(rows), params.trees, params.depth + 1), np.int64)
    y = np.zeros((len(rows), params.d_out))
    scale = np.zeros((len(rows), params.d_out))
    for k in range(params.trees):
        logits = rows @ w_in[k].T + b_in[k]  # (B, N): every node, visited or not
        mask = np.zeros_like(logits)
        for b in range(len(rows)):
            node = 0
            for level in range(params.depth + 1):
                mask[b, node] = 1.0
                nodes[b, k, level] = node
                node = 2 * node + 2 if logits[b, node] > 0 else 2 * node + 1
        activated = activation(logits)
        y += (activated * mask) @ w_out[k]
        scale += (np.abs(activated) * mask) @ np.abs(w_out[k])
    return nodes, y, scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", fffcore.ACTIVATIONS)
def test_oracle_matches_a_dense_masked_layer_in_float64(dtype, activation):
    params = FFFParams.random(9, 4, depth=4, trees=3, activation=activation, dtype=dtype, seed=5)
    x = np.random.default_rng(1).standard_normal((20, 9))
    expected_nodes, expected, scale = _dense_masked_fff(x, params)
    logits, nodes = oracle_cmm(x, params)
    # Both sides compute the logits in float64 (error <= ~10 eps * logit scale); a draw with a
    # logit that close to zero could legitimately branch differently, and these draws have none.
    assert np.all(np.abs(logits) > 1e-12 * evaluate_path(x, params, nodes).logit_scale)
    np.testing.assert_array_equal(nodes, expected_nodes)
    # Same path, same float64 terms summed in another order: the outputs differ by a few ulps of
    # the scale of the sum (its sum of absolute terms), so 64 eps * scale is a bound with margin.
    output = oracle_fff(x, params)
    assert output.dtype == np.float64
    bound = 64 * np.finfo(np.float64).eps * scale
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(output - expected) - bound), output.shape))
    assert np.all(np.abs(output - expected) <= bound), (
        f"(row, column) {worst}: oracle {float(output[worst])!r}, dense masked layer {float(expected[worst])!r} "
        f"+- {float(bound[worst]):.3g}"
    )


def test_inputs_are_not_modified():
    params = FFFParams.random(6, 3, depth=2, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    before = x.copy()
    fffcore.fff(x, params, backend="reference")
    fffcore.cmm(x[:, ::-1], params, backend="reference")
    np.testing.assert_array_equal(x, before)


def test_float64_input_with_float32_params_is_rounded_to_float32():
    params = FFFParams.random(6, 3, depth=2, seed=0)
    x64 = np.random.default_rng(0).standard_normal((4, 6))
    y = fffcore.fff(x64, params, backend="reference")
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, fffcore.fff(x64.astype(np.float32), params, backend="reference"))
