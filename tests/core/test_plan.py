"""The plan of a call: made once per parameters, prepared calls used, nothing kept alive."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import fffcore
from fffcore import FFFParams
from tests.fakes import FakeBackend, plugin_with

X = np.ones((3, 4), np.float32)


class PreparingBackend(FakeBackend):
    """Counts how often it is asked to prepare, and answers with a call that records its use."""

    def __init__(self) -> None:
        super().__init__("preparing", priority=1000)
        self.prepared = 0
        self.prepared_calls = 0

    def prepare_fff(self, params):
        self.prepared += 1

        def call(x, params):
            self.prepared_calls += 1
            return self.fff(x, params)

        return call


@pytest.fixture
def preparing(use_registry, monkeypatch):
    monkeypatch.delenv("FFFCORE_BACKEND", raising=False)
    backend = PreparingBackend()
    use_registry(("preparing", plugin_with(backend)))
    return backend


def test_a_prepared_call_is_made_once_per_parameters_and_used_for_every_call(preparing):
    params = FFFParams.random(4, 2, 2, seed=0)
    first = fffcore.fff(X, params)
    fffcore.fff(X[:1], params)
    fffcore.fff(X.reshape(3, 1, 4), params)
    assert preparing.prepared == 1 and preparing.prepared_calls == 3
    np.testing.assert_array_equal(first, fffcore.fff(X, params, backend="reference"))
    fffcore.fff(X, FFFParams.random(4, 2, 2, seed=1))
    assert preparing.prepared == 2


def test_the_dispatch_cache_keeps_no_parameters_alive(preparing):
    params = FFFParams.random(4, 2, 2, seed=0)
    fffcore.fff(X, params)
    preparing.received.clear()  # the fake's own record of its calls
    alive = weakref.ref(params)
    del params
    gc.collect()
    assert alive() is None


def test_a_new_registry_forgets_earlier_decisions(preparing, use_registry):
    params = FFFParams.random(4, 2, 2, seed=0)
    fffcore.fff(X, params)
    other = FakeBackend("other", priority=2000)
    use_registry(("other", plugin_with(other)))
    fffcore.fff(X, params)
    assert other.calls == ["fff"]


def test_the_environment_variable_is_read_on_every_call(preparing, monkeypatch):
    params = FFFParams.random(4, 2, 2, seed=0)
    fffcore.fff(X, params)
    monkeypatch.setenv("FFFCORE_BACKEND", "nosuch")
    with pytest.raises(fffcore.UnknownBackendError, match="nosuch"):
        fffcore.fff(X, params)
    monkeypatch.delenv("FFFCORE_BACKEND")
    fffcore.fff(X, params)


def test_numbas_prepared_call_keeps_no_parameters_alive():
    if not any(row.name == "numba" and row.available for row in fffcore.list_backends()):
        pytest.skip("numba is not available here")
    params = FFFParams.random(4, 2, 2, seed=0)
    fffcore.fff(X[:1], params, backend="numba")
    fffcore.fff(X, params, backend="numba")
    alive = weakref.ref(params)
    del params
    gc.collect()
    assert alive() is None


def test_parameters_hold_the_layer_alone_and_pickle_after_calls(preparing):
    import dataclasses
    import pickle

    params = FFFParams.random(4, 2, 2, seed=0)
    fffcore.fff(X, params)  # a plan with a closure in it, which could not pickle, is made
    assert set(vars(params)) == {field.name for field in dataclasses.fields(FFFParams)}
    copy = pickle.loads(pickle.dumps(params))
    np.testing.assert_array_equal(copy.w_in, params.w_in)
    assert not copy.w_in.flags.writeable and not copy.w_out.flags.writeable  # read-only, as built
    np.testing.assert_array_equal(fffcore.fff(X, copy), fffcore.fff(X, params))
