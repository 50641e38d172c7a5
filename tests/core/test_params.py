"""FFFParams: construction, the random initialiser, and every validation error."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fffcore
from fffcore import FFFParams


def _arrays(trees=1, depth=2, d_in=4, d_out=3, dtype=np.float32):
    n = 2 ** (depth + 1) - 1
    return (np.ones((trees, n, d_in), dtype), np.ones((trees, n), dtype), np.ones((trees, n, d_out), dtype))


def test_derived_attributes():
    params = FFFParams(*_arrays(trees=2, depth=3, d_in=5, d_out=6))
    assert (params.trees, params.depth, params.n_nodes, params.d_in, params.d_out) == (2, 3, 15, 5, 6)
    assert params.dtype == "float32"
    assert params.has_bias
    assert params.activation == "gelu"
    assert params.array_type == "numpy"
    assert "depth=3" in repr(params)


def test_parameters_are_read_only_views_and_callers_arrays_stay_writable():
    w_in, b_in, w_out = _arrays()
    params = FFFParams(w_in, b_in, w_out)
    assert not params.w_in.flags.writeable
    assert w_in.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        params.w_out[0, 0, 0] = 5.0


def test_random_follows_ultrafastbert_initialisation():
    params = FFFParams.random(d_in=64, d_out=32, depth=3, trees=2, seed=0, dtype=np.float64)
    assert np.abs(params.w_in).max() <= 1 / math.sqrt(64)
    assert np.abs(params.b_in).max() <= 1 / math.sqrt(64)
    assert np.abs(params.w_out).max() <= 1 / math.sqrt(4 * 2)
    # Uniform draws fill most of their interval.
    assert np.abs(params.w_out).max() > 0.9 / math.sqrt(8)
    again = FFFParams.random(d_in=64, d_out=32, depth=3, trees=2, seed=0, dtype=np.float32)
    np.testing.assert_array_equal(again.w_in, params.w_in.astype(np.float32))
    assert FFFParams.random(4, 4, 1, bias=False, seed=0).b_in is None


def test_astype_and_with_activation():
    params = FFFParams.random(4, 3, 1, seed=0)
    wide = params.astype("float64")
    assert wide.dtype == "float64"
    np.testing.assert_array_equal(wide.w_in, params.w_in.astype(np.float64))
    assert params.with_activation("relu").activation == "relu"


@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        (lambda a: (a[0][0], a[1], a[2]), ValueError, r"w_in: expected a 3-D array .* got 2-D"),
        (lambda a: (a[0][:, :6], a[1][:, :6], a[2][:, :6]), ValueError, r"w_in: the node count .* got 6"),
        (lambda a: (a[0][:0], a[1][:0], a[2][:0]), ValueError, r"w_in: expected at least 1 tree"),
        (lambda a: (a[0][:, :, :0], a[1], a[2]), ValueError, r"w_in: expected d_in >= 1"),
        (lambda a: (a[0], a[1], a[2][:, :3]), ValueError, r"w_out: expected shape \(1, 7, d_out\)"),
        (lambda a: (a[0], a[1], np.ones((2, 7, 3), np.float32)), ValueError, r"w_out: .* got \(2, 7, 3\)"),
        (lambda a: (a[0], a[1], a[2][:, :, :0]), ValueError, r"w_out: expected d_out >= 1"),
        (lambda a: (a[0], a[1][:, :3], a[2]), ValueError, r"b_in: expected shape \(1, 7\) .* got \(1, 3\)"),
        (lambda a: (a[0].astype(np.int32), None, a[2].astype(np.int32)), TypeError, r"w_in: expected a floating"),
        (lambda a: (a[0], a[1].astype(np.float64), a[2]), TypeError, r"b_in: expected dtype float32 .* float64"),
        (lambda a: (a[0], a[1], a[2].astype(np.float64)), TypeError, r"w_out: expected dtype float32"),
        (lambda a: (a[0].astype(bool), None, a[2].astype(bool)), TypeError, r"w_in: expected a floating .* bool"),
        (lambda a: (a[0].astype(complex), None, a[2]), TypeError, r"w_in: expected a floating .* complex128"),
        (lambda a: ([[1.0, 2.0], [3.0]], None, a[2]), TypeError, r"w_in: expected an array"),
    ],
)
def test_validation_errors_name_the_argument(change, error, pattern):
    with pytest.raises(error, match=pattern):
        FFFParams(*change(_arrays()))


def test_unknown_activation():
    with pytest.raises(ValueError, match=r"activation: expected one of .*gelu.* got 'tanh'"):
        FFFParams(*_arrays(), activation="tanh")


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"depth": -1}, ValueError, r"depth: expected an int >= 0, got -1"),
        ({"trees": 0}, ValueError, r"trees: expected an int >= 1, got 0"),
        ({"d_in": 2.5}, TypeError, r"d_in: expected an int, got float"),
        ({"d_out": True}, TypeError, r"d_out: expected an int, got bool"),
        ({"dtype": "int32"}, TypeError, r"dtype: expected a numpy floating dtype, got int32"),
        ({"dtype": "no-such-type"}, TypeError, r"dtype: expected a numpy floating dtype"),
    ],
)
def test_random_validation(kwargs, error, pattern):
    arguments = {"d_in": 4, "d_out": 3, "depth": 1, **kwargs}
    with pytest.raises(error, match=pattern):
        FFFParams.random(**arguments)


@pytest.mark.parametrize(
    ("x", "error", "pattern"),
    [
        (np.ones((2, 5), np.float32), ValueError, r"x: expected shape \(\.\.\., 4\) .* got \(2, 5\)"),
        (np.float32(1.0), ValueError, r"x: expected an array of shape \(\.\.\., 4\), got a 0-D array"),
        (np.ones((2, 4), np.int64), TypeError, r"x: expected a real floating dtype .* got int64"),
        (np.ones((2, 4), bool), TypeError, r"x: expected a real floating dtype .* got bool"),
        (np.ones((2, 4), np.complex64), TypeError, r"x: expected a real floating dtype .* got complex64"),
        ([[1, 2, 3, 4]], TypeError, r"x: expected a real floating dtype .* got int64"),
        ([[1.0, 2.0], [3.0]], TypeError, r"x: expected an array"),
    ],
)
@pytest.mark.parametrize("operation", [fffcore.fff, fffcore.cmm])
def test_call_validation_errors(operation, x, error, pattern):
    params = FFFParams.random(4, 3, 1, seed=0)
    with pytest.raises(error, match=pattern):
        operation(x, params, backend="reference")


def test_params_must_be_fffparams():
    with pytest.raises(TypeError, match="params: expected FFFParams, got dict"):
        fffcore.fff(np.ones((1, 4), np.float32), {"w_in": 1})


def test_lists_are_accepted_as_numpy():
    params = FFFParams.random(2, 3, 1, seed=0, dtype=np.float64)
    y = fffcore.fff([[0.5, -1.0]], params, backend="reference")
    np.testing.assert_array_equal(y, fffcore.fff(np.array([[0.5, -1.0]]), params, backend="reference"))


def test_backend_capabilities_are_checked_before_dispatch():
    half = FFFParams.random(4, 3, 1, seed=0, dtype=np.float16)
    with pytest.raises(TypeError, match=r"params: backend 'reference' computes in float32, float64, got float16"):
        fffcore.fff(np.ones((1, 4), np.float16), half, backend="reference")


def test_parameters_on_the_meta_device_are_refused_at_construction():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"^w_in: a torch tensor on the meta device holds no values"):
        FFFParams(torch.ones(1, 3, 4, device="meta"), None, torch.ones(1, 3, 2, device="meta"))


def test_cpu_tensor_parameters_reach_a_numpy_backend_as_views():
    torch = pytest.importorskip("torch")
    numpy_params = FFFParams.random(4, 3, 2, seed=0)
    params = FFFParams(*(torch.tensor(a) for a in (numpy_params.w_in, numpy_params.b_in, numpy_params.w_out)))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(
        fffcore.fff(x, params, backend="reference"), fffcore.fff(x, numpy_params, backend="reference")
    )


@pytest.mark.parametrize(
    "backend", [row.name for row in fffcore.list_backends() if row.available and "cpu" in row.devices]
)
def test_non_native_byte_order_is_converted_once_and_computes_the_same(backend):
    native = FFFParams.random(16, 8, 3, seed=0)
    swapped_order = FFFParams(
        *(np.asarray(a).astype(a.dtype.newbyteorder()) for a in (native.w_in, native.b_in, native.w_out))
    )
    assert swapped_order.dtype == "float32"
    assert all(
        a.dtype.isnative and not a.flags.writeable
        for a in (swapped_order.w_in, swapped_order.b_in, swapped_order.w_out)
    )
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    for rows in (x, x[:1], x.astype(x.dtype.newbyteorder())):  # big batch, one row, and x itself swapped
        np.testing.assert_array_equal(
            fffcore.fff(rows, swapped_order, backend=backend), fffcore.fff(x[: len(rows)], native, backend=backend)
        )


class _OtherLibraryArray:
    """A stand-in for an array of a third library: shape and dtype, and a module of its own."""

    __module__ = "otherlib"

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.shape = values.shape
        self.dtype = values.dtype


@pytest.mark.parametrize(
    ("libraries", "found"),
    [
        (("numpy", "numpy", "torch"), "'numpy', 'torch'"),
        (("torch", "numpy", "torch"), "'numpy', 'torch'"),
        (("numpy", None, "torch"), "'numpy', 'torch'"),
        (("numpy", "otherlib", "torch"), "'numpy', 'otherlib', 'torch'"),
    ],
)
def test_arrays_of_different_libraries_are_refused_naming_the_arguments(libraries, found):
    # Backends take all three arrays from one library (a numpy kernel cannot read a torch tensor,
    # and the reverse), so a mix must fail at construction, not inside some backend later.
    torch = pytest.importorskip("torch")
    convert = {
        "numpy": lambda a: a,
        "torch": torch.from_numpy,
        "otherlib": _OtherLibraryArray,
        None: lambda a: None,
    }
    arrays = [convert[library](a) for library, a in zip(libraries, _arrays(), strict=True)]
    with pytest.raises(TypeError, match=rf"^w_in, b_in, w_out: expected one array type, got \[{found}\]$"):
        FFFParams(*arrays)
