"""What `fff compare` prints reads well: spreads, the wrapped legend, and the warning about a busy machine."""

from __future__ import annotations

import os
import time

import pytest

from fffcore.benchmarks import cases as case_table
from fffcore.benchmarks.cases import Case
from fffcore.benchmarks.comparison import OK, Result, behind_under_load
from fffcore.benchmarks.cpu_use import CpuReading, others_cores, read_cpu_use
from fffcore.benchmarks.report import format_spread, legend, load_warning, results_to_json
from fffcore.benchmarks.timing import Timing


def timed(implementation: str, kind: str, seconds: float, others: float | None = None, batch: int = 128) -> Result:
    (shape,) = case_table.shapes_for(["paper"], batches=[batch])
    result = Result(
        Case(shape, implementation), kind, OK, "", batch, "numpy/cpu", "", Timing([seconds] * 3, 1, seconds)
    )
    result.others_cores = others
    return result


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([1.0, 1.0, 1.0], "-0%/+0%"),
        ([0.97, 1.0, 1.05], "-2%/+2%"),  # quartiles halfway between the median and each end (inclusive method)
        ([0.9, 1.0, 11.0], "-5%/x6.0"),  # an upper quartile 6 times the median reads as a factor, not "+500%"
    ],
)
def test_the_spread_gives_each_quartile_around_the_median(samples, expected):
    assert format_spread(Timing(samples, 1, samples[0])) == expected


def test_the_legend_is_wrapped_to_the_width_with_each_meaning_under_the_next():
    text = legend({"numpy BLAS": "2 (OpenBLAS)", "torch intra-op": "2", "numba": "2"}, columns=72)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 72
    indent = len("time/call") + 2  # the longest name and two spaces
    starts = [line for line in lines if not line.startswith(" ")]
    assert [line[:indent].strip() for line in starts] == [
        "time/call",
        "vs",
        "check",
        "GB/s",
        "GFLOP/s",
        "of bw",
        "?",
    ] + ["threads"]
    assert all(line[indent - 2 : indent] == "  " and line[indent] != " " for line in lines)  # meanings in one column
    assert len(text) < 750  # the legend of old: one line of about 900 characters, then the threads line


def test_a_backend_behind_dense_on_a_busy_machine_gets_one_line_of_warning():
    dense = timed("dense:numpy:3072", "dense", 1e-3)
    slow_and_busy = timed("fff:torch", "fff", 5e-3, others=1.6)
    slow_but_idle = timed("fff:reference", "fff", 5e-3, others=0.1)
    fast_and_busy = timed("fff:numba", "fff", 1e-4, others=1.6)
    results = [slow_and_busy, slow_but_idle, fast_and_busy, dense]
    assert behind_under_load(results) == [slow_and_busy]
    warning = load_warning(results, cores=2)
    assert warning is not None and "\n" not in warning
    assert "fff:torch at 128 rows fell behind dense while other processes held up to 1.6 of 2 cores" in warning
    assert load_warning([slow_but_idle, fast_and_busy, dense], cores=2) is None
    assert results_to_json(results, {}, {})["results"][0]["others_cores"] == pytest.approx(1.6)


def test_other_processes_are_what_the_machine_was_busy_with_besides_this_one(monkeypatch):
    monkeypatch.setattr(os, "sysconf", lambda name: 100)  # 100 ticks a second
    before = CpuReading(machine_ticks=1000, own_ticks=50, seconds=10.0)
    # 2 s later: the machine was busy 300 ticks, 100 of them this process: 200 ticks = 1 core's worth
    after = CpuReading(machine_ticks=1300, own_ticks=150, seconds=12.0)
    assert others_cores(before, after) == pytest.approx(1.0)
    assert others_cores(before, CpuReading(1010, 60, 10.1)) is None  # too short for 100 Hz counters
    assert others_cores(None, after) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc (Linux)")
def test_this_process_spinning_is_not_counted_as_other_processes():
    before = read_cpu_use()
    spent = time.process_time()
    while time.process_time() - spent < 0.3:  # 0.3 s of this process's own CPU time, however busy the machine
        pass
    after = read_cpu_use()
    assert before is not None and after is not None
    ticks = os.sysconf("SC_CLK_TCK")
    assert after.own_ticks - before.own_ticks >= 0.25 * ticks  # the kernel's count of the same (to a tick or two)
    others = others_cores(before, after)
    assert others is not None and 0 <= others <= os.cpu_count()
