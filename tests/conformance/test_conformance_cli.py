"""``fff check`` and the pytest plugin: what a backend author runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from fffcore.cli import main
from fffcore.conformance.properties import PROPERTY_NAMES
from tests.conformance import conformance_broken_backends as broken
from tests.conformance.conformance_registry import registry_with

needs_hypothesis = pytest.mark.skipif(
    importlib.util.find_spec("hypothesis") is None,
    reason="the conformance suite needs Hypothesis: pip install 'fffcore[conformance]'",
)


def test_check_without_hypothesis_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # makes `import hypothesis` raise ImportError
    assert main(["check", "reference"]) == 2
    error = capsys.readouterr().err
    assert "Hypothesis" in error and "pip install 'fffcore[conformance]'" in error


def test_pytest_plugin_imports_cheaply_and_without_hypothesis():
    """pytest loads the plugin in every run: it must import neither Hypothesis nor the suite itself."""
    script = (
        "import sys; sys.modules['hypothesis'] = None; import fffcore.conformance.pytest_plugin; "
        "loaded = [m for m in ('fffcore.conformance.properties', 'numpy') if m in sys.modules]; print(loaded)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "fffcore.conformance.properties" not in done.stdout


@needs_hypothesis
def test_check_reference_passes_and_lists_every_property(capsys):
    assert main(["check", "reference", "--max-examples", "5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    for name in PROPERTY_NAMES:
        assert f"PASS  {name}" in out
    assert f"{len(PROPERTY_NAMES)} passed, 0 failed" in out and "seed 3" in out


@needs_hypothesis
def test_check_broken_backend_exits_1_and_shows_the_minimal_example(capsys):
    with registry_with(("broken", broken)):
        code = main(
            ["check", "broken-no-bias", "--max-examples", "30", "--seed", "0", "--property", "logits_along_path"]
        )
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  logits_along_path" in out
    assert "logits_along_path: " in out and "minimal failing example:" in out and "bias=True" in out
    assert "0 passed, 1 failed" in out


@needs_hypothesis
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["check", "no-such-backend"], "unknown backend"),
        (["check", "reference", "--dtype", "float16"], "declares float32, float64"),
        (["check", "reference", "--device", "cuda"], "declares cpu"),
        (["check", "reference", "--property", "nonsense"], "expected one of"),
        (["check", "reference", "--max-examples", "0"], "--max-examples"),
    ],
)
def test_check_refuses_what_it_cannot_run_with_exit_2(arguments, message, capsys):
    assert main(arguments) == 2
    assert message in capsys.readouterr().err


@needs_hypothesis
def test_check_thorough_says_so_and_how_to_repeat_it(capsys):
    arguments = ["check", "reference", "--thorough", "--seed", "4", "--property", "output_along_path"]
    assert main([*arguments, "--max-examples", "5"]) == 0
    out = capsys.readouterr().out
    assert "up to 5 examples per property, thorough" in out and "PASS  output_along_path" in out
    # 5 drawn, 4 deep (float32 and float64, numpy and bridged torch) and 20 coverage cases (x 5 activations)
    assert " 29 examples" in out
    with registry_with(("broken", broken)):
        assert main(["check", "broken-no-bias", "--thorough", "--max-examples", "5", "--seed", "4"]) == 1
    assert "--thorough --property" in capsys.readouterr().out


@needs_hypothesis
def test_check_dtype_filter_runs_only_that_dtype(capsys):
    assert main(["check", "reference", "--dtype", "float32", "--max-examples", "3", "--property", "result_types"]) == 0
    assert "dtypes: float32;" in capsys.readouterr().out


@needs_hypothesis
def test_pytest_plugin_runs_the_suite_and_names_the_backend_in_the_header(tmp_path):
    command = [sys.executable, "-m", "pytest", "--pyargs", "fffcore.conformance", "--fff-backend", "reference"]
    command += ["--fff-max-examples", "5", "-p", "no:cacheprovider"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fffcore conformance: backend reference " in done.stdout
    assert "seed 0, 5 examples per property" in done.stdout
    assert f"{len(PROPERTY_NAMES)} passed" in done.stdout


def test_pytest_plugin_skips_without_a_backend(tmp_path):
    command = [sys.executable, "-m", "pytest", "--pyargs", "fffcore.conformance", "-p", "no:cacheprovider", "-rs"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pass --fff-backend NAME" in done.stdout
