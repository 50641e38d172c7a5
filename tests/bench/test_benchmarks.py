"""The benchmark machinery: the case table, the output check, timing, ``fff compare``, and the suite's smoke run.

The pytest-benchmark suite itself lives in ``benchmarks/`` and never runs
here; these tests only check that it collects and that a tiny case runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fffcore.benchmarks import cases as case_table
from fffcore.benchmarks.check import check_fff_output
from fffcore.benchmarks.comparison import OK, WRONG, run_comparison
from fffcore.benchmarks.report import format_seconds, format_speedup, format_table, three_digits
from fffcore.benchmarks.timing import time_call
from fffcore.cli import main
from fffcore.params import FFFParams
from fffcore.reference.oracle import evaluate_path, oracle_cmm
from tests.fakes import FakeBackend, plugin_with

REPO = Path(__file__).resolve().parents[2]


class ScaledBackend(FakeBackend):
    """Right path, output 1% too large: fast and wrong, and must be reported so."""

    def fff(self, x, params):
        return super().fff(x, params) * np.float32(1.01)


def _fast(cases):
    return run_comparison(cases, repeats=2, budget=0.05)


# -- the case table ---------------------------------------------------------------------------------------------


def test_paper_setting_limits_match_the_paper():
    shape = case_table.paper_shapes([128])[0]
    assert (shape.d_in, shape.d_out, shape.depth, shape.trees) == (768, 768, 11, 1)
    assert shape.visited == 12 and shape.neurons == 4095
    assert shape.limit(3072) == 256
    assert shape.limit(4095) == pytest.approx(341.25)


def test_trees_family_is_ultrafastbert_k_by_d():
    shapes = case_table.trees_shapes()
    pairs = [(s.trees, s.depth) for s in shapes]
    assert pairs == list(case_table.TREES_BY_DEPTH)
    assert pairs[0] == (3072, 0) and pairs[-1] == (1, 11)
    assert all(3072 <= s.neurons <= 4608 for s in shapes)


def test_cases_cover_every_backend_and_baseline_once():
    shapes = case_table.shapes_for(["paper"], batches=[1, 4096])
    cases = case_table.cases_for(shapes)
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids))
    for name in case_table.backend_names():
        assert f"paper/d768-D11-K1-B4096-float32/fff:{name}" in ids
    for implementation in ("dense:numpy:3072", "dense:torch:4095", "paper:torch"):
        assert f"paper/d768-D11-K1-B1-float32/{implementation}" in ids


def test_unknown_shape_family_is_rejected():
    with pytest.raises(ValueError, match="unknown"):
        case_table.shapes_for(["papr"])


def test_select_implementations_by_prefix():
    cases = case_table.cases_for(case_table.tiny_shapes(), ["reference"])
    kept = case_table.select_implementations(cases, ["fff", "dense:numpy"])
    assert sorted(c.implementation for c in kept) == ["dense:numpy:30", "fff:reference"]


# -- the check --------------------------------------------------------------------------------------------------


@pytest.fixture
def small_layer():
    params = FFFParams.random(d_in=12, d_out=5, depth=3, trees=2, seed=3)
    x = np.random.default_rng(4).standard_normal((40, 12)).astype(np.float32)
    return params, x


def test_check_accepts_the_reference(small_layer):
    params, x = small_layer
    from fffcore import cmm, fff

    result = check_fff_output(x, params, fff(x, params, backend="reference"), cmm(x, params, backend="reference").nodes)
    assert result.ok, result.detail
    assert result.rows_checked == 40 and 0 < result.worst <= 1


def test_check_rejects_a_scaled_output(small_layer):
    params, x = small_layer
    from fffcore import cmm, fff

    nodes = cmm(x, params, backend="reference").nodes
    result = check_fff_output(x, params, fff(x, params, backend="reference") * np.float32(1.001), nodes)
    assert not result.ok
    assert "float64 oracle" in result.detail


def test_check_rejects_a_branch_outside_the_band(small_layer):
    params, x = small_layer
    _, nodes = oracle_cmm(x, params)
    flipped = nodes.copy()
    # Row 0, tree 0: take the other child at the root and then always the left child.
    flipped[0, 0, 1] = 3 - nodes[0, 0, 1]
    for level in range(2, params.depth + 1):
        flipped[0, 0, level] = 2 * flipped[0, 0, level - 1] + 1
    output = evaluate_path(x, params, flipped).output.astype(np.float32)
    result = check_fff_output(x, params, output, flipped)
    assert not result.ok
    assert "row 0 tree 0 level 0" in result.detail


def test_check_rejects_a_path_that_skips_a_level(small_layer):
    params, x = small_layer
    _, nodes = oracle_cmm(x, params)
    nodes[5, 1, 2] = 0
    result = check_fff_output(x, params, np.zeros((40, 5), np.float32), nodes)
    assert not result.ok and "row 5 tree 1" in result.detail


def test_check_allows_either_branch_at_a_near_tie():
    w_in = np.zeros((1, 3, 2), np.float32)
    w_in[0, 0] = [1.0, -1.0]  # root logit of x = (1, 1) is exactly 0: a tie, inside the band
    w_in[0, 1:] = [[0.5, 0.25], [-0.5, 0.75]]
    params = FFFParams(w_in, np.zeros((1, 3), np.float32), np.ones((1, 3, 2), np.float32))
    x = np.ones((1, 2), np.float32)
    right = np.array([[[0, 2]]])  # the spec sends the tie left; right is within rounding of it
    output = evaluate_path(x, params, right).output.astype(np.float32)
    result = check_fff_output(x, params, output, right)
    assert result.ok, result.detail
    assert result.near_ties == 1


def test_check_without_a_path_leaves_out_rows_with_a_near_tie():
    w_in = np.zeros((1, 3, 2), np.float32)
    w_in[0, 0] = [1.0, -1.0]
    w_in[0, 1:] = [[0.5, 0.25], [-0.5, 0.75]]
    params = FFFParams(w_in, np.zeros((1, 3), np.float32), np.ones((1, 3, 2), np.float32))
    x = np.array([[1.0, 1.0], [2.0, 1.0]], np.float32)  # row 0 ties at the root, row 1 does not
    output = np.stack([np.full(2, 99.0), evaluate_path(x, params, np.array([[[0, 2]]] * 2)).output[1]])
    result = check_fff_output(x, params, output.astype(np.float32), None)
    assert result.ok, result.detail
    assert (result.rows_checked, result.rows_skipped) == (1, 1)


# -- timing and formatting --------------------------------------------------------------------------------------


def test_time_call_warms_up_then_samples():
    calls = []
    timing = time_call(
        lambda: calls.append(1) or len(calls), repeats=4, budget=10.0, min_sample=0.0, warm_up_seconds=0.0
    )
    assert len(timing.samples) == 4
    assert len(calls) == 2 + 4 * timing.number
    assert timing.output == len(calls)
    assert timing.first_call >= 0 and timing.median > 0


class FakeClock:
    """A clock that moves only when a call says how long it took: timings without racing a real clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_call_sets_calls_per_sample_from_steady_calls():
    # The first two calls are slow (cold caches), the rest fast: calibrating on the second call
    # alone would give ceil(2**-6 / 2**-7) = 2 calls per sample; the steady calls give 2**-6 / 2**-13.
    # Powers of two, so that the fake clock's sums are exact.
    clock = FakeClock()
    durations = iter([2.0**-7, 2.0**-7])

    def call() -> None:
        clock.now += next(durations, 2.0**-13)

    timing = time_call(call, repeats=1, budget=10.0, min_sample=2.0**-6, clock=clock)
    assert timing.first_call == 2.0**-7
    assert timing.number == 2**7
    assert timing.samples == [2.0**-13]


def test_time_call_warms_up_for_its_warm_up_seconds_before_sampling():
    stamps: list[float] = []
    timing = time_call(lambda: stamps.append(time.perf_counter()), repeats=1, min_sample=0.0, warm_up_seconds=0.05)
    first_sampled = stamps[-timing.number]  # the last calls were the one sample
    assert first_sampled - stamps[0] >= 0.05


def test_time_call_stops_at_the_budget_after_the_minimum():
    timing = time_call(
        lambda: sum(range(20000)), repeats=1000, min_repeats=3, budget=0.0, min_sample=0.0, warm_up_seconds=0.0
    )
    assert len(timing.samples) == 3


@pytest.mark.parametrize(
    ("value", "text"), [(0.0123, "0.0123"), (1.234, "1.23"), (12.34, "12.3"), (123.4, "123"), (4095 / 12, "341")]
)
def test_three_significant_digits(value, text):
    assert three_digits(value) == text


def test_time_and_speedup_formats():
    assert format_seconds(2.5e-5) == "25.0 us"
    assert format_seconds(0.128) == "128 ms"
    assert format_speedup(None) == "-"
    assert format_speedup(256.0) == "256x"


# -- comparison and fff compare ---------------------------------------------------------------------------------


def test_comparison_times_and_checks_every_case():
    results = _fast(case_table.cases_for(case_table.tiny_shapes(), ["reference"]))
    by_id = {r.case.implementation: r for r in results}
    assert by_id["fff:reference"].status == OK and by_id["fff:reference"].check.ok
    assert by_id["dense:numpy:30"].status == OK and by_id["dense:numpy:30"].check is None
    assert all(r.timed for r in results if r.status == OK)
    table = format_table(results)
    assert "theoretical limit (dense neurons / visited neurons): 30/8 = 3.75x" in table
    assert "vs dense 30" in table and "vs reference" in table


def test_a_fast_wrong_backend_is_reported_wrong_not_fast(use_registry):
    use_registry(("scaled", plugin_with(ScaledBackend("scaled"))))
    results = _fast(case_table.cases_for(case_table.tiny_shapes(), ["reference", "scaled"]))
    scaled = next(r for r in results if r.case.implementation == "fff:scaled")
    assert scaled.status == WRONG
    assert "float64 oracle" in scaled.reason
    row = next(line for line in format_table(results).splitlines() if line.startswith("fff:scaled"))
    assert "WRONG" in row and " us" not in row and "ms" not in row


class RaisingBackend(FakeBackend):
    def fff(self, x, params):
        raise RuntimeError("kernel exploded")


def test_a_raising_backend_is_reported_failed_and_the_rest_still_run(use_registry):
    use_registry(("raising", plugin_with(RaisingBackend("raising"))))
    results = _fast(case_table.cases_for(case_table.tiny_shapes(), ["raising", "reference"]))
    statuses = {r.case.implementation: (r.status, r.reason) for r in results}
    assert statuses["fff:raising"] == ("failed", "calling raised RuntimeError: kernel exploded")
    assert statuses["fff:reference"][0] == OK


def test_an_unavailable_backend_is_skipped_with_its_reason(use_registry):
    use_registry(("off", plugin_with(FakeBackend("off", available=False))))
    results = _fast([case_table.Case(case_table.tiny_shapes()[0], "fff:off")])
    assert results[0].status == "skipped"
    assert "fakelib is not installed" in results[0].reason
    assert "pip install fakelib" in format_table(results)


@pytest.fixture(autouse=True)
def _restore_thread_variables(monkeypatch):
    """``fff compare`` pins threads through the environment; undo that after each test."""
    from fffcore.benchmarks.machine import THREAD_VARIABLES

    for variable in THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def test_fff_compare_prints_the_table_and_writes_json(tmp_path, capsys):
    target = tmp_path / "run.json"
    code = main(
        ["compare", "--shapes", "tiny", "--backends", "reference", "--repeats", "2", "--json", str(target), "--quiet"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "fff:reference" in out and "dense:numpy:30" in out and re.search(r"^threads +numpy BLAS: ", out, re.M)
    record = json.loads(target.read_text())
    assert record["format"] == "fffcore-compare/1"
    assert record["machine"]["cpu"] and record["machine"]["threads"]["numpy BLAS"]
    assert "numpy" in record["machine"]["libraries"]
    statuses = {r["implementation"]: r["status"] for r in record["results"]}
    assert statuses["fff:reference"] == "ok"
    reference = next(r for r in record["results"] if r["implementation"] == "fff:reference")
    assert reference["speedups"]["reference"] == 1.0
    assert reference["timing"]["median_s"] > 0 and reference["check"]["ok"] is True


def test_fff_compare_exits_1_on_a_wrong_backend(use_registry, capsys):
    use_registry(("scaled", plugin_with(ScaledBackend("scaled"))))
    code = main(["compare", "--shapes", "tiny", "--backends", "scaled", "--baselines", "none", "--repeats", "2"])
    assert code == 1
    assert "WRONG" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--backends", "nonesuch"], "unknown ['nonesuch']"),
        (["--baselines", "sparse"], "--baselines: expected names from"),
        (["--shapes", "papr"], "unknown ['papr']"),
        (["--batches", "1,x"], "--batches: expected comma-separated positive integers, got '1,x'"),
        (["--threads", "0"], "--threads: expected a positive integer, got 0"),
    ],
)
def test_fff_compare_rejects_bad_arguments(arguments, message, capsys):
    assert main(["compare", *arguments, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_fff_compare_dry_run_lists_the_cases_and_times_nothing(use_registry, tmp_path, capsys, monkeypatch):
    use_registry(("off", plugin_with(FakeBackend("off", available=False))))
    import fffcore.benchmarks.comparison as comparison

    def must_not_run(*args, **kwargs):
        raise AssertionError("--dry-run timed something")

    monkeypatch.setattr(comparison, "run_comparison", must_not_run)
    target = tmp_path / "run.json"
    arguments = ["compare", "--dry-run", "--backends", "all", "--shapes", "tiny", "--json", str(target)]
    assert main(arguments) == 0
    captured = capsys.readouterr()
    assert re.search(r"fff compare: \d+ cases, about", captured.err)
    listed = captured.out.splitlines()
    assert any(line.split()[-1] == "fff:reference" for line in listed)
    assert any("fff:off  skipped: fakelib is not installed; fix: pip install fakelib" in line for line in listed)
    assert any("dense:numpy-1thread" in line for line in listed)
    assert not target.exists()  # nothing written
    assert main(["compare", "--dry-run", "--shapes", "papr"]) == 2  # arguments are still checked


def test_depth_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from fffcore.benchmarks.plot import plot_depth

    shapes = case_table.depth_shapes(batch=2, depths=(0, 1, 2))
    results = _fast(case_table.select_implementations(case_table.cases_for(shapes, ["reference"]), ["fff", "dense"]))
    target = tmp_path / "depth.png"
    plot_depth(results, target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each point carries the band the plot shades: the middle half of its samples.
    from fffcore.benchmarks.plot import depth_lines

    lines, kinds = depth_lines([r for r in results if r.timed])
    assert set(kinds.values()) == {"fff", "dense"}
    for points in lines.values():
        assert [p[0] for p in points] == [0, 1, 2]
        assert all(low <= median <= high for _, median, low, high in points)


# -- the pytest-benchmark suite ---------------------------------------------------------------------------------


def _pytest(*arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *arguments]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_suite_collects_every_backend_at_the_paper_setting():
    run = _pytest("benchmarks/", "--collect-only", "-q", "--bench-shapes", "paper")
    assert run.returncode == 0, run.stdout + run.stderr
    for batch in case_table.PAPER_BATCHES:
        for name in case_table.backend_names():
            assert f"paper/d768-D11-K1-B{batch}-float32/fff:{name}]" in run.stdout
        assert f"paper/d768-D11-K1-B{batch}-float32/paper:torch]" in run.stdout


def test_suite_smoke_runs_a_tiny_case():
    # The reference and the numpy dense layer only: no JIT compilation or torch import, so it takes seconds.
    run = _pytest(
        "benchmarks/",  # as documented: pytest finds the suite in benchmarks/test_suite/
        "--bench-shapes",
        "tiny",
        "--bench-implementations",
        "fff:reference,dense:numpy",
        "--benchmark-disable",
        "-q",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout  # test_layer for both, test_first_call for the reference


def test_every_timed_call_takes_the_next_input_of_a_pool_and_the_check_uses_the_first():
    from fffcore.benchmarks.implementations import POOL_MAX, input_for, input_pool, pool_size, prepare

    shape = case_table.tiny_shapes()[0]
    pool = input_pool(shape)
    assert pool[0] is input_for(shape) and 2 <= len(pool) <= POOL_MAX
    assert all(not np.array_equal(pool[0], other) for other in pool[1:])
    assert pool_size(16384, 768, "float32") == 2 and pool_size(1, 768, "float32") == POOL_MAX

    prepared = prepare(case_table.Case(shape, "fff:reference"))
    outputs = [np.array(prepared.call()) for _ in range(len(pool) + 1)]
    assert not np.array_equal(outputs[0], outputs[1])  # a new input each call
    np.testing.assert_array_equal(outputs[0], outputs[-1])  # ... cycling through the pool
    np.testing.assert_array_equal(np.asarray(prepared.check_call()), outputs[0])  # checked on the first


def test_traffic_counts_each_visited_weight_row_once_and_the_flops_along_every_path():
    from fffcore.benchmarks.roofline import fff_traffic, probe_size

    params = FFFParams.random(5, 3, 1, dtype="float32", seed=0)  # depth 1: nodes 0, 1, 2
    nodes = np.array([[[0, 1]], [[0, 2]], [[0, 1]]])  # three rows, node 1 visited twice
    traffic = fff_traffic(params, nodes)
    assert traffic.visited_nodes == 3
    assert traffic.bytes == 4 * (3 * 5 + 3 * 3 + 3 * (5 + 3 + 1))  # x, y, and w_in, w_out, b_in rows once
    assert traffic.flops == 3 * 1 * 2 * (2 * 5 + 2 * 3 + 1)
    assert probe_size(1) == 2**20 and probe_size(3 * 2**20) == 4 * 2**20 and probe_size(4 * 2**20) == 4 * 2**20


def test_compare_reports_the_roofline_of_each_fff_row(tmp_path, capsys):
    path = tmp_path / "out.json"
    code = main(
        ["compare", "--shapes", "tiny", "--backends", "reference", "--quiet", "--repeats", "2", "--json", str(path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "GB/s" in out and "of bw" in out
    entries = json.loads(path.read_text())["results"]
    fff = [e for e in entries if e["implementation"] == "fff:reference"]
    assert fff and all(0 < e["roofline"]["share"] for e in fff)
    assert all(e["roofline"]["machine_read_bytes_per_s"] > 0 and e["roofline"]["measured_with"] for e in fff)
    assert all("roofline" not in e for e in entries if e["kind"] == "dense")


# -- ratios above the theoretical limit ---------------------------------------------------------------------


def _timed(case, kind, seconds, spread=0.0):
    from fffcore.benchmarks.comparison import Result
    from fffcore.benchmarks.timing import Timing

    samples = [seconds * (1 - spread / 2), seconds, seconds * (1 + spread / 2)]
    return Result(case, kind, OK, "", case.shape.batch, "numpy/cpu", "", Timing(samples, 1, seconds))


def test_a_ratio_above_the_theoretical_limit_is_flagged_with_its_likely_cause():
    from fffcore.benchmarks.cases import Case
    from fffcore.benchmarks.comparison import suspect_ratios
    from fffcore.benchmarks.report import results_to_json

    (shape,) = case_table.shapes_for(["paper"], batches=[1])  # limits 256x (3072) and 341x (4095)
    fff = _timed(Case(shape, "fff:numba"), "fff", 5e-6)
    # Dense 3072 at 1000x the FFF time with unsteady samples (another process held a core); 4095 plausible.
    dense = [
        _timed(Case(shape, "dense:numpy:3072"), "dense", 5e-3, spread=0.8),
        _timed(Case(shape, "dense:numpy:4095"), "dense", 1e-3),
    ]
    results = [fff, *dense]
    (suspect,) = suspect_ratios(results, fff)
    assert suspect["over"] == "dense3072" and suspect["ratio"] == pytest.approx(1000) and suspect["limit"] == 256
    assert "varied by 40%" in suspect["likely_cause"]  # the interquartile range of 0.6, 1, 1.4 times the median
    table = format_table(results)
    assert "1000x?" in table and "200x?" not in table
    assert "? fff:numba: 1000x over dense3072 is above the theoretical limit 256x: not a result" in table
    entry = results_to_json(results, {}, {})["results"][0]
    assert entry["suspect"][0]["over"] == "dense3072"
    assert suspect_ratios(results, dense[0]) == []  # dense rows are never judged against themselves
    # A one-neuron dense layer (depth 0) is mostly fixed overheads: said so, not blamed on the machine.
    (tiny,) = case_table.depth_shapes(batch=256, depths=(0,))
    fff0 = _timed(Case(tiny, "fff:numba"), "fff", 1e-4)
    (narrow,) = suspect_ratios([fff0, _timed(Case(tiny, "dense:numpy:1"), "dense", 2e-4)], fff0)
    assert (
        narrow["limit"] == 1 and "a dense layer of 1 neurons costs mostly its fixed overheads" in narrow["likely_cause"]
    )


def test_compare_says_other_processes_competed_when_one_kept_a_core_busy(monkeypatch, capsys):
    from fffcore.benchmarks import machine

    monkeypatch.setattr(machine, "load_average", lambda: (1.0, 1.0, 1.0))  # one other process, spinning
    assert main(["compare", "--backends", "reference", "--baselines", "none", "--batches", "1", "--quiet"]) == 0
    assert "other processes competed for the cores" in capsys.readouterr().out
    monkeypatch.setattr(machine, "load_average", lambda: (0.1, 0.1, 0.1))
    assert main(["compare", "--backends", "reference", "--baselines", "none", "--batches", "1", "--quiet"]) == 0
    assert "other processes competed" not in capsys.readouterr().out


def test_the_duration_estimate_follows_the_cases_it_is_given():
    from fffcore.benchmarks.cases import Case
    from fffcore.benchmarks.comparison import estimate_seconds

    (small, large) = case_table.shapes_for(["paper"], batches=[1, 16384])
    one_thread = estimate_seconds([Case(large, "dense:numpy-1thread:3072")], None, 7, 1.0, threads=2)
    two_threads = estimate_seconds([Case(large, "dense:numpy:3072")], None, 7, 1.0, threads=2)
    assert one_thread > two_threads > estimate_seconds([Case(small, "dense:numpy:3072")], None, 7, 1.0, threads=2)
    # 16384 x 3072 x 1536 multiply-adds at 20 G/s per thread; 3 samples (the budget spent), 2 untimed calls, the warm-up
    assert one_thread == pytest.approx(0.5 + 5 * 16384 * 3072 * 1536 / 20e9, rel=1e-6)


# -- comparing with an earlier run ------------------------------------------------------------------------


def test_compare_with_an_earlier_run_reports_and_fails_on_a_regression(tmp_path, capsys):
    first = tmp_path / "first.json"
    run = ["compare", "--backends", "reference", "--baselines", "dense", "--batches", "1", "--quiet"]
    assert main([*run, "--json", str(first)]) == 0
    earlier = json.loads(first.read_text())
    assert earlier["machine"]["source"]  # the commit (or version) that was measured

    def scaled(factor):  # the earlier run, its FFF speedups times factor
        data = json.loads(json.dumps(earlier))
        for entry in data["results"]:
            if entry["kind"] == "fff":
                entry["speedups"] = {k: (v * factor if v else v) for k, v in entry["speedups"].items()}
        path = tmp_path / f"earlier-{factor}.json"
        path.write_text(json.dumps(data))
        return str(path)

    much_faster, much_slower = scaled(1000.0), scaled(0.001)  # far beyond any noise between two runs
    capsys.readouterr()
    assert main([*run, "--compare", much_faster]) == 0  # reported, not judged
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  fff:reference "))
    assert "vs dense3072" in line and "(-100%)" in line and "REGRESSION" not in line
    assert main([*run, "--compare", much_faster, "--fail-on-regression", "10%"]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert main([*run, "--compare", much_slower, "--fail-on-regression", "10%"]) == 0
    assert "REGRESSION" not in capsys.readouterr().out


def test_compare_refuses_a_bad_earlier_file_or_threshold_before_running(tmp_path, capsys):
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    for extra, message in (
        (["--compare", str(tmp_path / "missing.json")], "--compare: cannot read"),
        (["--compare", str(tmp_path / "other.json")], "is not an `fff compare --json` file"),
        (["--fail-on-regression", "10%"], "needs --compare PREVIOUS.json"),
        (["--compare", str(tmp_path / "other.json"), "--fail-on-regression", "ten"], "is not an"),
    ):
        assert main(["compare", "--backends", "reference", "--baselines", "none", *extra]) == 2
        assert message in capsys.readouterr().err


def test_regression_threshold_parsing():
    from fffcore.benchmarks.regression import parse_threshold

    assert parse_threshold("10%") == pytest.approx(0.1) and parse_threshold("2.5") == pytest.approx(0.025)
    for bad in ("ten", "0", "100%", "-5"):
        with pytest.raises(ValueError, match="--fail-on-regression: expected a percentage"):
            parse_threshold(bad)


def test_a_bandwidth_share_above_one_is_flagged_as_a_disturbed_probe():
    from fffcore.benchmarks.cases import Case
    from fffcore.benchmarks.report import results_to_json
    from fffcore.benchmarks.roofline import Traffic

    (shape,) = case_table.shapes_for(["paper"], batches=[128])
    fff = _timed(Case(shape, "fff:numba"), "fff", 1e-4)
    fff.traffic = Traffic(10**7, 10**9, 1000)  # 100 GB/s achieved
    fff.bandwidth = (25e9, "numba, 2 threads")  # a probe that read only 25 GB/s
    table = format_table([fff])
    assert "400%?" in table and "? of bw above 100% (fff:numba): the bandwidth probe ran slow" in table
    assert results_to_json([fff], {}, {})["results"][0]["roofline"]["share_impossible"] is True


def test_best_dense_is_the_fastest_of_every_dense_variant_at_one_thread_and_at_all():
    from fffcore.benchmarks.cases import Case
    from fffcore.benchmarks.comparison import best_dense, speedups

    (shape,) = case_table.shapes_for(["paper"], batches=[1])
    assert {i for i in case_table.implementations_for(shape) if i.startswith("dense:") and i.endswith(":3072")} == {
        "dense:numpy:3072",
        "dense:torch:3072",
        "dense:numpy-1thread:3072",
        "dense:torch-1thread:3072",
    }
    fff = _timed(Case(shape, "fff:numba"), "fff", 5e-6)
    dense = [
        _timed(Case(shape, "dense:numpy:3072"), "dense", 4e-4),
        _timed(Case(shape, "dense:torch:3072"), "dense", 5e-4),
        _timed(Case(shape, "dense:numpy-1thread:3072"), "dense", 2e-4),  # faster at batch 1: no thread hand-off
        _timed(Case(shape, "dense:torch-1thread:3072"), "dense", 3e-4),
    ]
    assert best_dense([fff, *dense], shape, 3072) is dense[2]
    assert speedups([fff, *dense], fff)["dense3072"] == pytest.approx(40)


def test_one_thread_dense_layers_really_run_on_one_thread():
    from fffcore.benchmarks.implementations import thread_setter
    from fffcore.benchmarks.machine import blas_thread_functions

    get_blas, _ = blas_thread_functions()
    set_numpy = thread_setter("numpy")
    previous = set_numpy(1)
    try:
        assert get_blas() == 1
    finally:
        set_numpy(previous)
    assert get_blas() == previous
    torch = pytest.importorskip("torch")
    set_torch = thread_setter("torch")
    previous = set_torch(1)
    try:
        assert torch.get_num_threads() == 1
    finally:
        set_torch(previous)


# -- reading results files: bounded, typed, printed safely --------------------------------------------------------


def test_the_committed_results_files_pass_the_checks_of_the_files_fff_compare_reads():
    from fffcore.benchmarks.gpu_report import read_case_results, read_report
    from fffcore.benchmarks.regression import read_results

    assert read_results(REPO / "benchmarks/results/cpu-epyc-2cores.json")["results"]
    for path in sorted((REPO / "benchmarks/results").glob("gpu-*.json")):
        read_case_results(read_report(path))


def test_results_files_are_capped_at_16_mib_and_32_levels(tmp_path):
    from fffcore.benchmarks.report import MAX_FILE_BYTES, MAX_NESTING, read_json_file

    assert MAX_FILE_BYTES == 16 * 1024 * 1024 and MAX_NESTING == 32
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"a": [1, 2]}))
    assert read_json_file(path, "--x") == {"a": [1, 2]}
    with pytest.raises(ValueError, match=r"--x: .*r\.json is 13 bytes, over the 10-byte limit on results files"):
        read_json_file(path, "--x", max_bytes=10)
    for depth, ok in ((MAX_NESTING, True), (MAX_NESTING + 1, False)):
        path.write_text("[" * depth + "]" * depth)
        if ok:
            read_json_file(path, "--x")
        else:
            with pytest.raises(ValueError, match="nested deeper than 32 levels"):
                read_json_file(path, "--x")
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError, match="not UTF-8 text"):
        read_json_file(path, "--x")


def test_printable_escapes_control_characters_and_keeps_what_it_is_told():
    from fffcore.benchmarks.report import printable

    assert printable("H200 µs ±5% ünïcode") == "H200 µs ±5% ünïcode"
    assert printable("a\x1b[31mb\x07\r\x7f\x9b\u202e") == "a\\x1b[31mb\\x07\\x0d\\x7f\\x9b\\u202e"
    assert printable("one\n\ttwo") == "one\\x0a\\x09two"
    assert printable("one\n\ttwo\x1b", keep="\n\t") == "one\n\ttwo\\x1b"
    assert printable(3) == "3"


def test_gpu_rows_are_checked_field_by_field():
    from fffcore.benchmarks.gpu_report import read_case_results

    row = {"dtype": "float32", "batch": 1, "fff_dtype": "float32", "fff_seconds": 1, "later_field": [1]}
    (result,) = read_case_results({"results": [row]})
    assert result.fff_seconds == 1 and not hasattr(result, "later_field")  # ints are numbers; unknown fields left out
    assert read_case_results({}) == []
    for bad, message in (
        ({**row, "batch": True}, r"results\[0\]\.batch: expected an integer, got a boolean"),
        ({**row, "grouped_same_bits": "yes"}, r"grouped_same_bits: expected a boolean or null, got a string"),
        ({**row, "errors": ["ok", 3]}, r"results\[0\]\.errors\[1\]: expected a string, got a number"),
    ):
        with pytest.raises(ValueError, match=message):
            read_case_results({"results": [bad]})


def test_write_json_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path, monkeypatch):
    import os

    from fffcore.benchmarks.report import write_json

    target = tmp_path / "run.json"
    write_json(target, {"run": 1})
    assert json.loads(target.read_text()) == {"run": 1}

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        write_json(target, {"run": 2})
    assert json.loads(target.read_text()) == {"run": 1}  # the earlier file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
