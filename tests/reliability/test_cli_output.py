"""The command line: an output path that cannot be written is refused before any work, a closed pipe ends
quietly, and the files ``fff compare`` reads are checked before the run and printed without control characters."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc

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


# -- files fff compare reads: checked before the run, printed without control characters -------------------------

EARLIER = {"format": "fffcore-compare/1", "machine": {"source": "abc123"}, "results": []}
MAX_FILE_BYTES = 16 * 1024 * 1024  # the documented cap on files fff compare reads
GOOD_ROW = {"shape": "tiny", "implementation": "fff:reference", "kind": "fff", "speedups": {"dense30": 2.0}}


def _nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("earlier", "message"),
    [
        ({**EARLIER, "results": [1]}, "results[0]: expected an object"),
        ({**EARLIER, "results": {"shape": "tiny"}}, "results: expected an array"),
        ({**EARLIER, "results": [{**GOOD_ROW, "shape": 3}]}, "results[0].shape: expected a string"),
        ({**EARLIER, "results": [{**GOOD_ROW, "speedups": "fast"}]}, "results[0].speedups: expected an object"),
        (
            {**EARLIER, "results": [{**GOOD_ROW, "speedups": {"dense30": "2x"}, "timing": {"median_s": 1.0}}]},
            "results[0].speedups.dense30: expected a positive number",
        ),
        ({**EARLIER, "results": [GOOD_ROW]}, "results[0].timing: expected an object"),
        (
            {**EARLIER, "results": [{**GOOD_ROW, "timing": {"median_s": "1 ms"}}]},
            "results[0].timing.median_s: expected a number",
        ),
        ({**EARLIER, "machine": ["abc"]}, "machine: expected an object"),
        ({**EARLIER, "machine": {"source": 7}}, "machine.source: expected a string"),
        ({**EARLIER, "settings": _nested(200)}, "is nested deeper than 32 levels"),
    ],
)
def test_compare_refuses_a_malformed_earlier_file_before_running_anything(
    earlier, message, tmp_path, monkeypatch, capsys
):
    ran = []
    monkeypatch.setattr("fffcore.benchmarks.comparison.run_comparison", lambda *a, **k: ran.append(1) or [])
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    assert main(["compare", "--backends", "reference", "--baselines", "none", "--quiet", "--compare", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fff compare: --compare: {path}") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert ran == []  # refused before the benchmark ran


def test_compare_refuses_an_earlier_file_over_the_size_cap_without_reading_it(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr("fffcore.benchmarks.comparison.run_comparison", lambda *a, **k: ran.append(1) or [])
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used, and a read would fail as JSON anyway
    tracemalloc.start()
    try:
        code = main(["compare", "--backends", "reference", "--baselines", "none", "--quiet", "--compare", str(huge)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2 and ran == []
    assert "over the 16 MiB limit on results files" in capsys.readouterr().err
    assert peak < MAX_FILE_BYTES // 4  # refused from os.stat, not read


def test_compare_writes_its_json_before_comparing_so_a_failure_there_loses_nothing(tmp_path, monkeypatch, capsys):
    from fffcore.benchmarks import regression

    def broken(previous, current):
        raise KeyError("speedups")  # whatever goes wrong after the run

    monkeypatch.setattr(regression, "changes", broken)
    earlier, out = tmp_path / "earlier.json", tmp_path / "run.json"
    earlier.write_text(json.dumps(EARLIER))
    run = ["compare", "--shapes", "tiny", "--backends", "reference", "--baselines", "none", "--repeats", "2"]
    assert main([*run, "--budget", "0.05", "--quiet", "--compare", str(earlier), "--json", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"fff compare: --compare: could not compare with {earlier}" in err and "Traceback" not in err
    record = json.loads(out.read_text())
    assert [r["implementation"] for r in record["results"]] == ["fff:reference"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def _gpu_file(tmp_path, content) -> str:
    path = tmp_path / "gpu.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


GPU_ROW = {"dtype": "float32", "batch": 1, "fff_dtype": "float32", "fff_seconds": 1e-5, "dense_seconds": 2e-5}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([GPU_ROW], "the top level: expected an object, got an array"),
        ({"results": [{**GPU_ROW, "batch": "one"}]}, "results[0].batch: expected an integer, got a string"),
        ({"results": [{**GPU_ROW, "fff_seconds": "fast"}]}, "results[0].fff_seconds: expected a number or null"),
        ({"results": [{**GPU_ROW, "dtype": 32}]}, "results[0].dtype: expected a string, got a number"),
        ({"results": [{**GPU_ROW, "check": [1]}]}, "results[0].check: expected an object, got an array"),
        ({"results": [{**GPU_ROW, "errors": "boom"}]}, "results[0].errors: expected an array"),
        ({"results": {"0": GPU_ROW}}, "results: expected an array or null, got an object"),
        ({"machine": "H200", "results": []}, "machine: expected an object or null, got a string"),
        ({"layer": {"width": "wide"}}, "layer.width: expected an integer or null, got a string"),
        ({"steps": ["backends"]}, "steps[0]: expected an object, got a string"),
        ({"steps": [{"name": "backends", "status": 0}]}, "steps[0].status: expected a string or null, got a number"),
        ({"errors": [{"message": "x"}]}, "errors[0]: expected a string, got an object"),
        ({"results": [{"dtype": "float32", "batch": 1}]}, "results[0]: missing fff_dtype"),
        ("[" * 100_000 + "]" * 100_000, "is nested deeper than 32 levels"),
        (_nested(100), "is nested deeper than 32 levels"),
    ],
)
def test_gpu_results_refuses_a_malformed_file_in_one_line(content, message, tmp_path, capsys):
    path = _gpu_file(tmp_path, content)
    assert main(["compare", "--gpu-results", path]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"fff compare: --gpu-results: {path}") and message in captured.err, captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.out == ""  # nothing printed before the file was known to be good


def test_gpu_results_prints_file_text_with_control_characters_escaped(tmp_path, capsys):
    hostile = "\x1b]0;pwned\x07\x1b[2J\r\x08\x9b31m\u202e"
    report = {
        "mode": f"gpu{hostile}",
        "created": hostile,
        "machine": {"gpu": f"H200{hostile}"},
        "steps": [{"name": f"backends{hostile}", "status": "passed\nfake line"}],
        "results": [{**GPU_ROW, "dtype": f"f32{hostile}", "fff_dtype": hostile}],
        "errors": [f"first line\n\tsecond line{hostile}"],
    }
    assert main(["compare", "--gpu-results", _gpu_file(tmp_path, report)]) == 0
    out = capsys.readouterr().out
    for char in "\x1b\x07\r\x08\x9b\u202e":
        assert char not in out
    assert "H200\\x1b]0;pwned\\x07" in out and "\\u202e" in out
    assert "passed\\x0afake line" in out  # a one-line field stays one line
    assert "error: first line\n\tsecond line\\x1b" in out  # an error message keeps its lines and tabs


def test_gpu_results_refuses_a_file_over_the_size_cap_without_reading_it(tmp_path, capsys):
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)
    tracemalloc.start()
    try:
        code = main(["compare", "--gpu-results", str(huge)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2
    err = capsys.readouterr().err
    assert f"{huge} is {MAX_FILE_BYTES + 1:,} bytes, over the 16 MiB limit on results files" in err
    assert peak < MAX_FILE_BYTES // 4  # refused from os.stat, not read
