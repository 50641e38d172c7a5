"""Every refusal names the argument or the environment variable it comes from, and what was expected."""

from __future__ import annotations

import numpy as np
import pytest

import fffcore
from fffcore.cli import main

PARAMS = fffcore.FFFParams.random(6, 4, 2, seed=0)
X = np.ones((2, 6), np.float32)


def test_an_unknown_backend_in_the_environment_is_named_as_coming_from_it(monkeypatch):
    monkeypatch.setenv("FFFCORE_BACKEND", "nosuch")
    message = r"FFFCORE_BACKEND='nosuch' in the environment: unknown backend 'nosuch'"
    with pytest.raises(fffcore.UnknownBackendError, match=message):
        fffcore.fff(X, PARAMS)
    with pytest.raises(fffcore.UnknownBackendError, match=message):
        fffcore.resolve_backend(X, PARAMS)
    # a name given in the call is the call's own: the variable is not blamed for it
    with pytest.raises(fffcore.UnknownBackendError, match=r"^unknown backend 'other'"):
        fffcore.fff(X, PARAMS, backend="other")


def test_the_environment_variable_is_stripped_and_blank_means_automatic(monkeypatch):
    expected = fffcore.fff(X, PARAMS, backend="reference")
    monkeypatch.setenv("FFFCORE_BACKEND", " reference\n")
    assert fffcore.resolve_backend(X, PARAMS).name == "reference"
    np.testing.assert_array_equal(fffcore.fff(X, PARAMS), expected)
    monkeypatch.setenv("FFFCORE_BACKEND", "  ")
    assert fffcore.resolve_backend(X, PARAMS).name == fffcore.resolve_backend(X, PARAMS, backend=None).name


def test_fff_backends_warns_and_exits_1_when_the_environment_names_a_backend_that_cannot_run(monkeypatch, capsys):
    monkeypatch.setenv("FFFCORE_BACKEND", "nosuch")
    assert main(["backends"]) == 1
    captured = capsys.readouterr()
    assert "reference" in captured.out  # the listing is still printed
    assert "warning: FFFCORE_BACKEND='nosuch' in the environment: unknown backend" in captured.err
    assert main(["backends", "--json"]) == 1
    assert "warning: FFFCORE_BACKEND='nosuch'" in capsys.readouterr().err
    monkeypatch.setenv("FFFCORE_BACKEND", "reference")
    assert main(["backends"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", [["numba"], 3, None, b"numba"])
def test_use_backend_refuses_what_is_not_a_name_with_a_type_error(name):
    with pytest.raises(TypeError, match=r"use_backend: expected a backend name \(str\), got"):
        with fffcore.use_backend(name):
            pass


@pytest.mark.parametrize("argument", ["w_in", "b_in", "w_out"])
def test_parameters_given_none_say_which_one(argument):
    arrays = {"w_in": PARAMS.w_in, "b_in": PARAMS.b_in, "w_out": PARAMS.w_out, argument: None}
    if argument == "b_in":  # None is how a layer without bias is spelled
        assert not fffcore.FFFParams(**arrays).has_bias
        return
    with pytest.raises(TypeError, match=rf"^{argument}: expected an array, got None"):
        fffcore.FFFParams(**arrays)


def test_masked_arrays_are_refused_rather_than_their_mask_ignored():
    masked = np.ma.masked_array(X, mask=np.eye(2, 6, dtype=bool))
    for backend in (None, "reference", "numba"):
        with pytest.raises(TypeError, match=r"^x: expected a plain array, got a numpy masked array"):
            fffcore.fff(masked, PARAMS, backend=backend)
        with pytest.raises(TypeError, match=r"^x: expected a plain array, got a numpy masked array"):
            fffcore.cmm(masked, PARAMS, backend=backend)
    with pytest.raises(TypeError, match=r"^w_in: expected a plain array, got a numpy masked array"):
        fffcore.FFFParams(np.ma.masked_array(PARAMS.w_in), PARAMS.b_in, PARAMS.w_out)
    # what the message suggests works
    filled = fffcore.fff(masked.filled(0.0), PARAMS)
    np.testing.assert_array_equal(filled, fffcore.fff(np.where(masked.mask, 0, X), PARAMS))


class TestTorchTensorsWithoutValues:
    torch = pytest.importorskip("torch")

    @pytest.mark.parametrize("backend", [None, "reference", "numba", "torch"])
    def test_sparse_and_meta_inputs_are_refused_naming_x(self, backend):
        torch = self.torch
        sparse = r"^x: expected a dense \(strided\) torch tensor, got layout torch.sparse_coo"
        with pytest.raises(TypeError, match=sparse):
            fffcore.fff(torch.from_numpy(X).to_sparse(), PARAMS, backend=backend)
        with pytest.raises(TypeError, match=r"^x: a torch tensor on the meta device holds no values"):
            fffcore.fff(torch.empty(2, 6, device="meta"), PARAMS, backend=backend)

    @pytest.mark.parametrize("kind", ["sparse", "meta"])
    def test_sparse_and_meta_parameters_are_refused_naming_the_array(self, kind):
        torch = self.torch

        def tensor(array):
            return torch.tensor(array).to_sparse() if kind == "sparse" else torch.empty(array.shape, device="meta")

        expected = "expected a dense" if kind == "sparse" else "on the meta device holds no values"
        with pytest.raises(TypeError, match=rf"^w_in: .*{expected}"):
            fffcore.FFFParams(tensor(PARAMS.w_in), tensor(PARAMS.b_in), tensor(PARAMS.w_out))
