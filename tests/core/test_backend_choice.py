"""Which backend a call runs on: argument, then context, then FFFCORE_BACKEND, then automatic by array type."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fffcore
from fffcore.plan import BACKEND_VARIABLE
from tests.fakes import FakeBackend, plugin_with

X = np.ones((2, 3), np.float32)
PARAMS = fffcore.FFFParams.random(3, 2, 1, seed=0)


def select_backend(x, name=None):
    return fffcore.resolve_backend(x, PARAMS, name)


@pytest.fixture
def fakes(use_registry, monkeypatch):
    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)
    # Priorities above every built-in backend's, so the automatic choice is among the fakes.
    backends = {
        "slow": FakeBackend("slow", priority=1001),
        "fast": FakeBackend("fast", priority=1010),
        "faster_but_off": FakeBackend("faster_but_off", priority=1099, available=False),
        "context": FakeBackend("context"),
        "environment": FakeBackend("environment"),
        "explicit": FakeBackend("explicit"),
    }
    use_registry(("fakes", plugin_with(*backends.values())))
    return backends


def test_automatic_choice_takes_the_fastest_available(fakes):
    assert select_backend(X).name == "fast"


def test_environment_beats_automatic(fakes, monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "environment")
    assert select_backend(X).name == "environment"


def test_context_beats_environment(fakes, monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "environment")
    with fffcore.use_backend("context"):
        assert select_backend(X).name == "context"
    assert select_backend(X).name == "environment"


def test_argument_beats_context(fakes, monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "environment")
    with fffcore.use_backend("context"):
        assert select_backend(X, "explicit").name == "explicit"


def test_the_chosen_backend_is_the_one_that_runs(fakes):
    params = fffcore.FFFParams.random(3, 2, 1, seed=0)
    with fffcore.use_backend("context"):
        fffcore.fff(X, params)
    fffcore.fff(X, params, backend="explicit")
    assert fakes["context"].calls == ["fff"]
    assert fakes["explicit"].calls == ["fff"]


def test_contexts_nest_and_restore(fakes):
    with fffcore.use_backend("slow"):
        with fffcore.use_backend("context"):
            assert select_backend(X).name == "context"
        assert select_backend(X).name == "slow"
    assert select_backend(X).name == "fast"


def test_context_is_per_thread(fakes):
    seen = []
    with fffcore.use_backend("context"):
        thread = threading.Thread(target=lambda: seen.append(select_backend(X).name))
        thread.start()
        thread.join()
    assert seen == ["fast"]


def test_use_backend_checks_the_name_on_entry(fakes):
    with pytest.raises(fffcore.UnknownBackendError, match="known backends"):
        with fffcore.use_backend("nope"):
            pass
    with pytest.raises(fffcore.BackendUnavailableError, match="fakelib is not installed; to fix: pip install fakelib"):
        with fffcore.use_backend("faster_but_off"):
            pass


def test_unknown_name_in_environment_is_an_error(fakes, monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "nope")
    with pytest.raises(fffcore.UnknownBackendError, match="unknown backend 'nope'"):
        select_backend(X)


def test_empty_environment_variable_means_automatic(fakes, monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "")
    assert select_backend(X).name == "fast"


def test_backend_argument_must_be_a_string(fakes):
    with pytest.raises(TypeError, match="backend: expected a backend name"):
        select_backend(X, 3)


def test_array_type_without_backend(fakes):
    class Foreign:
        __module__ = "jax.numpy"
        shape = (1, 3)
        dtype = np.dtype("float32")

    with pytest.raises(TypeError, match="x: no available backend takes jax arrays on cpu"):
        select_backend(Foreign())


def test_backend_that_takes_no_array_type_of_the_call(use_registry):
    use_registry(("only_cupy", plugin_with(FakeBackend("only_cupy", array_types=("cupy",), devices=("cpu",)))))
    params = fffcore.FFFParams.random(3, 2, 1, seed=0)
    # No bridge leads from numpy arrays to cupy arrays on the CPU.
    with pytest.raises(TypeError, match="x: backend 'only_cupy' accepts cupy arrays, got numpy"):
        fffcore.fff(X, params, backend="only_cupy")
