"""The command line: an output path that cannot be written is refused before any work, a closed pipe ends quietly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fffcore.cli import main
from fffcore.commands import compare


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_compare_refuses_an_unwritable_output_before_running_anything(option, tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr("fffcore.benchmarks.comparison.run_comparison", lambda *a, **k: ran.append(1) or [])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for path, reason in ((blocker / "out.json", "cannot write"), (tmp_path, "expected a file path, got the folder")):
        assert main(["compare", option, str(path), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"fff compare: {option}: {reason}" in err and "Traceback" not in err
    assert ran == []  # refused before the benchmark ran


def test_the_writability_probe_leaves_no_file_behind(tmp_path):
    target = tmp_path / "new" / "results.json"
    compare._require_writable(str(target), "--json")
    assert not target.exists()
    kept = tmp_path / "kept.json"
    kept.write_text("{}")
    compare._require_writable(str(kept), "--json")
    assert kept.read_text() == "{}"


def test_a_reader_closing_the_pipe_ends_fff_quietly():
    # stdout's reading end is closed before fff writes a byte, so every write meets a closed pipe
    process = subprocess.Popen(
        [sys.executable, "-m", "fffcore.cli", "backends", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert process.returncode == 1
