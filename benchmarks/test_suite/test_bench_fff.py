"""The pytest-benchmark suite: every backend and baseline on every selected shape.

One test per (shape, implementation) case from :mod:`fffcore.benchmarks.cases`;
``benchmark.group`` is the shape, so each group lists every implementation of
one shape side by side (``--benchmark-group-by=group``, the default). Each
timed output is checked once against the float64 oracle, untimed; a wrong
output fails the test. Examples::

    pytest benchmarks/ --bench-shapes paper                      # the paper's setting, batches 1..16384
    pytest benchmarks/ --bench-shapes depth --benchmark-save=depth
    pytest benchmarks/ --bench-shapes depth --benchmark-compare   # against the last saved run
    pytest benchmarks/ --bench-shapes tiny --benchmark-disable    # smoke: every case once
"""

from __future__ import annotations

from typing import Any

import pytest

from fffcore.benchmarks.cases import Case, tiny_shapes
from fffcore.benchmarks.comparison import check_prepared
from fffcore.benchmarks.implementations import Unavailable, prepare


def test_first_call(benchmark: Any, bench_backend: str) -> None:
    """The first call of each backend in this process: JIT compilation or loading compiled code from cache.

    Runs before the timed cases (pytest keeps file order), on a tiny layer,
    in its own group, one round: it is a one-off cost, not a throughput.
    """
    case = Case(tiny_shapes()[0], f"fff:{bench_backend}")
    try:
        prepared = prepare(case)
    except Unavailable as why:
        pytest.skip(str(why))
    benchmark.group = "first call in the process (compile or cache load), tiny layer"
    benchmark.pedantic(prepared.call, rounds=1, iterations=1)
    check = check_prepared(prepared)
    assert check is not None and check.ok, check.detail if check else "no check"


def test_layer(benchmark: Any, bench_case: Case) -> None:
    """Time one implementation on one shape (a new input of its pool each call), then check its output, untimed."""
    try:
        prepared = prepare(bench_case)
    except Unavailable as why:
        pytest.skip(str(why))
    prepared.call()  # warm-up outside the timed region: compilation, caches, first allocations
    shape = bench_case.shape
    benchmark.group = shape.group
    benchmark.extra_info.update(
        implementation=bench_case.implementation,
        kind=prepared.kind,
        input=prepared.where,
        version=prepared.version,
        rows=prepared.rows,
        visited_neurons=shape.visited,
        dense_hidden=list(shape.dense_hidden),
    )
    benchmark(prepared.call)
    check = check_prepared(prepared)
    assert check is None or check.ok, f"{bench_case.id}: {check.detail}"
