"""Parameters are fixed at construction, for every backend alike: numpy values are owned, torch writes are refused."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import fffcore

BASE = fffcore.FFFParams.random(6, 4, 3, trees=2, seed=0)
X = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)


def cpu_backends() -> list[str]:
    return [row.name for row in fffcore.list_backends() if row.available and "cpu" in row.devices]


def test_writing_the_callers_numpy_arrays_changes_no_backends_result():
    arrays = [np.array(a) for a in (BASE.w_in, BASE.b_in, BASE.w_out)]
    params = fffcore.FFFParams(*arrays)
    before = {name: fffcore.fff(X, params, backend=name) for name in cpu_backends()}  # backends cache conversions
    for array in arrays:
        array *= -3.0
    for name, expected in before.items():
        np.testing.assert_array_equal(fffcore.fff(X, params, backend=name), expected, err_msg=name)
    assert not params.w_in.flags.writeable and not np.shares_memory(params.w_in, arrays[0])


def test_copy_false_shares_read_only_views_of_the_callers_arrays():
    arrays = [np.array(a) for a in (BASE.w_in, BASE.b_in, BASE.w_out)]
    params = fffcore.FFFParams(*arrays, copy=False)
    assert np.shares_memory(params.w_in, arrays[0]) and not params.w_in.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        params.w_in[0, 0, 0] = 1.0


class TestTorchParameters:
    torch = pytest.importorskip("torch")

    def params(self):
        return fffcore.FFFParams(*(self.torch.tensor(a) for a in (BASE.w_in, BASE.b_in, BASE.w_out)))

    @pytest.mark.parametrize("written", ["w_in", "b_in", "w_out"])
    def test_a_tensor_written_in_place_is_refused_by_every_backend(self, written):
        params = self.params()
        x = self.torch.from_numpy(X)
        for name in cpu_backends():
            fffcore.fff(x, params, backend=name)  # each backend has seen (and may have converted) the values
        getattr(params, written).mul_(2.0)
        for name in cpu_backends():
            for function in (fffcore.fff, fffcore.cmm):
                with pytest.raises(ValueError, match=rf"^params: {written} changed in place after these FFFParams"):
                    function(x, params, backend=name)

    def test_new_parameters_from_the_written_tensors_compute_with_the_new_values(self):
        params = self.params()
        params.w_out.mul_(2.0)
        fresh = fffcore.FFFParams(params.w_in, params.b_in, params.w_out)
        expected = 2.0 * fffcore.fff(X, BASE, backend="reference")
        for name in cpu_backends():
            got = fffcore.fff(self.torch.from_numpy(X), fresh, backend=name).numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=name)

    def test_a_pickled_copy_is_not_mistaken_for_a_written_one(self):
        params = self.params()
        params.w_in.add_(0.0)
        fresh = fffcore.FFFParams(params.w_in, params.b_in, params.w_out)
        copy = pickle.loads(pickle.dumps(fresh))
        np.testing.assert_array_equal(
            fffcore.fff(self.torch.from_numpy(X), copy).numpy(), fffcore.fff(self.torch.from_numpy(X), fresh).numpy()
        )
