"""The plugin registry: built-ins, entry points, broken plugins, availability."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

import fffcore
from fffcore import registry as registry_module
from fffcore.backend import Availability, Backend
from fffcore.hookspecs import ENTRY_POINT_GROUP, hookimpl
from tests.fakes import FakeBackend, plugin_with


class _RaisingOnLoad:
    """An entry point whose import fails, like a plugin with a missing dependency."""

    name = "exploding"
    group = ENTRY_POINT_GROUP

    def load(self):
        raise ImportError("No module named 'missing_dependency'\nsecond line that must not be shown")


def _entry_point(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def test_reference_is_built_in():
    names = [row.name for row in fffcore.list_backends()]
    assert "reference" in names
    assert isinstance(fffcore.get_backend("reference"), Backend)


def test_broken_plugin_is_listed_and_the_others_keep_working(monkeypatch, use_registry):
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [_RaisingOnLoad()])
    use_registry(("good", plugin_with(FakeBackend("good"))))
    rows = {row.name: row for row in fffcore.list_backends()}
    assert rows["exploding"].broken
    assert not rows["exploding"].available
    assert rows["exploding"].reason == "plugin failed to load: ImportError: No module named 'missing_dependency'"
    assert rows["good"].available and rows["reference"].available
    params = fffcore.FFFParams.random(3, 2, 1, seed=0)
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(fffcore.fff(x, params, backend="good"), fffcore.fff(x, params, backend="reference"))
    with pytest.raises(fffcore.UnknownBackendError, match="plugin 'exploding' failed to load"):
        fffcore.get_backend("exploding")


def test_a_real_entry_point_is_loaded(monkeypatch, use_registry):
    # tests/core/plugin_module_for_tests.py is the plugin: its module-level hookimpl registers "entrypointed".
    monkeypatch.setattr(
        registry_module, "entry_points", lambda group: [_entry_point("mine", "tests.core.plugin_module_for_tests")]
    )
    loaded = use_registry()
    assert "entrypointed" in loaded.backends
    assert loaded.plugin_of["entrypointed"] == "mine"


@pytest.mark.parametrize(
    ("selected", "expected"),
    [(None, {"a", "b"}), ("", set()), ("b", {"b"}), (" a , nothing ", {"a"})],
)
def test_load_plugins_variable_selects_entry_points(monkeypatch, selected, expected):
    found = [_entry_point("a", "x:y"), _entry_point("b", "x:z")]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: found)
    if selected is None:
        monkeypatch.delenv(registry_module.LOAD_PLUGINS_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(registry_module.LOAD_PLUGINS_VARIABLE, selected)
    assert {ep.name for ep in registry_module._selected_entry_points()} == expected


def test_hook_that_raises_marks_only_its_plugin_broken(use_registry):
    class Raising:
        @hookimpl
        def register_backends(self, register):
            register(FakeBackend("half_registered"))
            raise RuntimeError("boom")

    loaded = use_registry(("raising", Raising()), ("fine", plugin_with(FakeBackend("fine"))))
    assert "half_registered" not in loaded.backends
    assert "fine" in loaded.backends
    assert [(b.name, b.reason) for b in loaded.broken] == [("raising", "RuntimeError: boom")]


def test_misspelled_hook_is_reported(use_registry):
    class Misspelled:
        @hookimpl
        def register_backend(self, register):  # missing "s"
            pass

    loaded = use_registry(("misspelled", Misspelled()))
    assert loaded.broken[0].name == "misspelled"
    assert "register_backend" in loaded.broken[0].reason


@pytest.mark.parametrize(
    ("backend", "pattern"),
    [
        (object(), "expects a fffcore.Backend instance, got object"),
        (FakeBackend("reference"), "backend name 'reference' is already registered"),
    ],
)
def test_invalid_registrations_mark_the_plugin_broken(use_registry, backend, pattern):
    loaded = use_registry(("bad", plugin_with(backend)))
    assert loaded.broken[0].name == "bad"
    assert pattern in loaded.broken[0].reason
    assert "reference" in loaded.backends


def test_backend_must_declare_required_dtypes(use_registry):
    class NoFloat64(FakeBackend):
        dtypes = ("float32",)

    loaded = use_registry(("narrow", plugin_with(NoFloat64("narrow"))))
    assert "must declare the required dtypes" in loaded.broken[0].reason


def test_unavailable_backend_error_gives_reason_and_fix(use_registry):
    use_registry(("off", plugin_with(FakeBackend("off", available=False))))
    row = next(row for row in fffcore.list_backends() if row.name == "off")
    assert (row.available, row.reason, row.fix) == (False, "fakelib is not installed", "pip install fakelib")
    with pytest.raises(fffcore.BackendUnavailableError, match="'off' is unavailable: fakelib is not installed; to fix"):
        fffcore.fff(np.ones((1, 3), np.float32), fffcore.FFFParams.random(3, 2, 1), backend="off")


def test_unknown_backend_lists_known_names():
    with pytest.raises(fffcore.UnknownBackendError, match=r"unknown backend 'nope'; known backends: .*reference"):
        fffcore.get_backend("nope")


def test_availability_check_that_raises_is_unavailable_not_an_exception(use_registry):
    class Flaky(FakeBackend):
        def availability(self) -> Availability:
            raise OSError("driver exploded")

    loaded = use_registry(("flaky", plugin_with(Flaky("flaky"))))
    status = loaded.availability("flaky")
    assert not status.available
    assert status.reason == "availability check raised OSError: driver exploded"


def test_availability_is_asked_once(use_registry):
    class Counting(FakeBackend):
        asked = 0

        def availability(self) -> Availability:
            Counting.asked += 1
            return Availability(True)

    loaded = use_registry(("counting", plugin_with(Counting("counting"))))
    for _ in range(3):
        loaded.availability("counting")
        fffcore.list_backends()
    assert Counting.asked == 1


def test_reset_registry_reloads(use_registry):
    use_registry(("extra", plugin_with(FakeBackend("extra"))))
    assert "extra" in registry_module.registry().backends
    registry_module.reset_registry()
    assert "extra" not in registry_module.registry().backends


def test_every_hook_is_documented():
    import inspect

    from fffcore import hookspecs

    hooks = [f for _, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "fffcore_spec")]
    assert [h.__name__ for h in hooks] == ["register_backends"]
    for hook in hooks:
        doc = inspect.getdoc(hook) or ""
        for argument in inspect.signature(hook).parameters:
            assert f"{argument}:" in doc, f"{hook.__name__} does not document {argument}"
