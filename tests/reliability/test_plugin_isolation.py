"""A plugin that raises anything but KeyboardInterrupt, even SystemExit, is listed as broken; the rest works."""

from __future__ import annotations

import numpy as np
import pytest

import fffcore
from fffcore import registry as registry_module
from fffcore.backend import Availability
from fffcore.cli import main
from fffcore.hookspecs import ENTRY_POINT_GROUP, hookimpl
from tests.fakes import FakeBackend, plugin_with

PARAMS = fffcore.FFFParams.random(3, 2, 1, seed=0)
X = np.ones((2, 3), np.float32)


class _EntryPointRaising:
    """An entry point whose import raises ``error``."""

    group = ENTRY_POINT_GROUP

    def __init__(self, name: str, error: BaseException) -> None:
        self.name = name
        self.error = error

    def load(self):
        raise self.error


@pytest.mark.parametrize("error", [SystemExit(1), GeneratorExit(), BaseException("odd")])
def test_a_plugin_raising_a_base_exception_on_import_is_broken_and_the_rest_works(error, monkeypatch, use_registry):
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [_EntryPointRaising("exiting", error)])
    use_registry(("good", plugin_with(FakeBackend("good"))))
    rows = {row.name: row for row in fffcore.list_backends()}
    assert rows["exiting"].broken and not rows["exiting"].available
    assert rows["exiting"].reason.startswith(f"plugin failed to load: {type(error).__name__}")
    np.testing.assert_array_equal(fffcore.fff(X, PARAMS, backend="good"), fffcore.fff(X, PARAMS, backend="reference"))
    assert main(["backends"]) == 0


def test_a_hook_calling_sys_exit_marks_only_its_plugin_broken(use_registry):
    class Exiting:
        @hookimpl
        def register_backends(self, register):
            raise SystemExit(3)

    registry = use_registry(("exiting", Exiting()), ("good", plugin_with(FakeBackend("good"))))
    assert [b.name for b in registry.broken] == ["exiting"]
    assert "good" in registry.backends
    fffcore.fff(X, PARAMS, backend="good")


def test_an_availability_check_calling_sys_exit_makes_only_that_backend_unavailable(use_registry):
    class ExitingCheck(FakeBackend):
        def availability(self) -> Availability:
            raise SystemExit("no")

    use_registry(("odd", plugin_with(ExitingCheck("odd"), FakeBackend("good"))))
    rows = {row.name: row for row in fffcore.list_backends()}
    assert not rows["odd"].available and "SystemExit" in rows["odd"].reason
    assert rows["good"].available
    with pytest.raises(fffcore.BackendUnavailableError, match="SystemExit"):
        fffcore.fff(X, PARAMS, backend="odd")


def test_keyboard_interrupt_while_loading_a_plugin_still_stops_the_program(monkeypatch, use_registry):
    monkeypatch.setattr(
        registry_module, "entry_points", lambda group: [_EntryPointRaising("interrupted", KeyboardInterrupt())]
    )
    with pytest.raises(KeyboardInterrupt):
        use_registry()
