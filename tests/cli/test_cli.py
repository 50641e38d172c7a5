"""The ``fff`` command line: ``fff backends``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from fffcore.cli import main
from tests.fakes import FakeBackend, plugin_with


def test_backends_lists_status_reason_and_fix(use_registry, capsys):
    use_registry(("off", plugin_with(FakeBackend("off", available=False))))
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "reference  available" in out
    assert "off        unavailable" in out
    assert "why: fakelib is not installed" in out
    assert "fix: pip install fakelib" in out


def test_backends_shows_the_automatic_choice_for_typical_inputs(use_registry, capsys, monkeypatch):
    monkeypatch.delenv("FFFCORE_BACKEND", raising=False)
    cpu = FakeBackend("cpu_fast", priority=1000)
    use_registry(("fast", plugin_with(cpu)))
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    listed = out.split("automatic choice (no backend named):")[1].strip().splitlines()
    choices = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in listed)
    assert choices["numpy arrays, float32 layer"] == "cpu_fast"
    assert choices["torch CPU tensors, float32 layer"] == "cpu_fast"  # through the zero-copy bridge


def test_backends_json(use_registry, capsys):
    use_registry(("off", plugin_with(FakeBackend("off", available=False))))
    assert main(["backends", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["reference"]["available"] is True
    assert rows["reference"]["dtypes"] == ["float32", "float64"]
    assert rows["off"]["reason"] == "fakelib is not installed"


def test_backends_say_where_each_came_from_its_library_version_and_priority(use_registry, capsys):
    from importlib.metadata import version

    import numpy as np

    use_registry(("fast", plugin_with(FakeBackend("cpu_fast", priority=1000))))
    assert main(["backends", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    reference = rows["reference"]
    assert reference["package"] == f"fffcore {version('fffcore')}" and reference["priority"] == 0
    assert reference["version"] == np.__version__  # the library it runs on
    assert rows["cpu_fast"]["priority"] == 1000 and rows["cpu_fast"]["package"] == ""  # registered in-process
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert f"from fffcore {version('fffcore')} (plugin fffcore.reference.plugin); library version" in out
    assert "from a plugin registered in this process (plugin fast)" in out and "priority 1000" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "backends" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("fff") is None, reason="the fff console script is not installed (pip install -e .)")
def test_console_script_runs():
    done = subprocess.run(["fff", "backends"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "reference" in done.stdout


def test_module_entry_point_runs():
    done = subprocess.run(
        [sys.executable, "-m", "fffcore.cli", "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("fffcore ")


def test_backends_json_into_a_closed_pipe_stops_quietly():
    # `fff backends --json | head -1`, where head has exited before fff writes: the write fails with EPIPE.
    script = "import sys; from fffcore.cli import main; sys.exit(main(['backends', '--json']))"
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert writer.stdout is not None
    writer.stdout.close()  # the reader is gone long before fff has imported and writes
    _, error = writer.communicate(timeout=120)
    assert b"BrokenPipeError" not in error and b"Traceback" not in error, error.decode()
    assert writer.returncode == 1


def test_compare_prepares_the_timed_backends_kernels_before_timing(monkeypatch):
    import fffcore
    from fffcore.benchmarks.cases import Case, paper_shapes
    from fffcore.commands import compare

    asked = []
    warmup_module = sys.modules["fffcore.warmup"]
    monkeypatch.setattr(warmup_module, "warmup", lambda dtypes, backends: asked.append((dtypes, backends)))
    shapes = paper_shapes((1,)) + paper_shapes((1,), dtype="float64")
    cases = [Case(shape, name) for shape in shapes for name in ("fff:numba", "fff:no-such-backend", "dense:numpy")]
    numba_here = any(row.name == "numba" and row.available for row in fffcore.list_backends())
    compare._prepare_kernels(cases)
    # available FFF backends only, for the cases' dtypes
    assert asked == ([(["float32", "float64"], ["numba"])] if numba_here else [])
    asked.clear()
    compare._prepare_kernels([Case(shapes[0], "dense:numpy")])
    assert asked == []
