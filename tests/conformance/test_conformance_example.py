"""The example third-party backend (examples/fffcore-example-backend) registers through its entry point and conforms.

CI installs it (``pip install -e examples/fffcore-example-backend``); elsewhere these tests skip.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

if importlib.util.find_spec("fffcore_example_backend") is None:
    pytest.skip(
        "the example backend is not installed: pip install -e examples/fffcore-example-backend",
        allow_module_level=True,
    )

import fffcore
from fffcore.registry import BUILTIN_PLUGINS, registry

EXAMPLE = "example-loop"


def test_example_registers_through_the_entry_point_below_the_reference():
    current = registry()
    assert EXAMPLE in current.backends
    assert current.plugin_of[EXAMPLE] not in BUILTIN_PLUGINS  # it came from the entry point, not from fffcore
    assert current.backends[EXAMPLE].priority < current.backends["reference"].priority


def test_example_appears_in_fff_backends():
    done = subprocess.run(
        [sys.executable, "-m", "fffcore.cli", "backends"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"{EXAMPLE}  available" in done.stdout


def test_example_is_never_chosen_automatically():
    import numpy as np

    params = fffcore.FFFParams.random(4, 2, 1, seed=0)

    assert fffcore.resolve_backend(np.zeros((1, 4)), fffcore.FFFParams.random(4, 2, 1, seed=0)).name != EXAMPLE
    assert fffcore.fff(np.zeros((1, 4)), params, backend=EXAMPLE).shape == (1, 2)


def test_example_passes_fff_check():
    pytest.importorskip("hypothesis", reason="fff check needs Hypothesis")
    command = [sys.executable, "-m", "fffcore.cli", "check", EXAMPLE, "--max-examples", "20", "--seed", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    from fffcore.conformance.properties import PROPERTIES

    forward = sum(not prop.backward for prop in PROPERTIES)  # the example computes no gradients
    assert f"{forward} passed, 0 failed, {len(PROPERTIES) - forward} skipped" in done.stdout
    assert "SKIP  gradients_along_path" in done.stdout and "does not declare backward" in done.stdout
