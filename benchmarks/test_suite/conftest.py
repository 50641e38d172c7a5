"""Options and parametrisation of the pytest-benchmark suite in this directory.

The cases come from :mod:`fffcore.benchmarks.cases`, the same table ``fff
compare`` uses. Nothing here runs in the default test command (its testpaths
are ``tests/``) or is installed; run the suite from the repository root with
``pytest benchmarks/``. The folder's name starts with ``test`` because pytest
reads the conftest.py of such subfolders of the folder it is given before it
parses the command line, so these options are known to ``pytest benchmarks/``.
"""

from __future__ import annotations

from typing import Any

import pytest

from fffcore.benchmarks import cases as case_table


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fffcore benchmarks")
    group.addoption(
        "--bench-shapes",
        default="paper,depth,trees",
        help=f"comma-separated shape families from {', '.join(case_table.FAMILIES)} (default: paper,depth,trees)",
    )
    group.addoption(
        "--bench-batches",
        default=",".join(str(b) for b in case_table.PAPER_BATCHES),
        help="batch sizes of the paper's setting (default: %(default)s)",
    )
    group.addoption(
        "--bench-sweep-batch",
        type=int,
        default=case_table.SWEEP_BATCH,
        help="batch size of the depth and trees sweeps (default: %(default)s)",
    )
    group.addoption("--bench-dtype", default="float32", choices=("float32", "float64"), help="parameter dtype")
    group.addoption(
        "--bench-implementations",
        default="",
        help="comma-separated implementation ids or prefixes to keep, e.g. 'fff,dense:torch' (default: all)",
    )
    group.addoption("--bench-threads", type=int, default=None, help="threads for every pool (default: available cores)")


def _patterns(config: pytest.Config) -> list[str]:
    return [p.strip() for p in config.getoption("--bench-implementations").split(",") if p.strip()]


def _selected_cases(config: pytest.Config) -> list[case_table.Case]:
    families = [f.strip() for f in config.getoption("--bench-shapes").split(",") if f.strip()]
    batches = [int(b) for b in config.getoption("--bench-batches").split(",") if b.strip()]
    shapes = case_table.shapes_for(
        families,
        batches=batches,
        sweep_batch=config.getoption("--bench-sweep-batch"),
        dtype=config.getoption("--bench-dtype"),
    )
    return case_table.select_implementations(case_table.cases_for(shapes), _patterns(config))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_case" in metafunc.fixturenames:
        selected = _selected_cases(metafunc.config)
        metafunc.parametrize("bench_case", selected, ids=[case.id for case in selected])
    if "bench_backend" in metafunc.fixturenames:
        # The first-call cases follow --bench-implementations too: a backend is kept when fff:<name> is.
        tiny = case_table.tiny_shapes()[0]
        kept = case_table.select_implementations(
            [case_table.Case(tiny, f"fff:{name}") for name in case_table.backend_names()], _patterns(metafunc.config)
        )
        names = [case.implementation.split(":", 1)[1] for case in kept]
        metafunc.parametrize("bench_backend", names, ids=names)


@pytest.fixture(scope="session", autouse=True)
def pinned_threads(request: pytest.FixtureRequest) -> dict[str, str]:
    """Pin numpy's BLAS, torch and numba to one thread count for the whole session."""
    from fffcore.benchmarks.machine import available_cores, pin_threads

    return pin_threads(request.config.getoption("--bench-threads") or available_cores())


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Record fffcore's view of the machine (library versions, thread settings) in saved benchmark runs."""
    from fffcore.benchmarks.machine import describe_machine, thread_settings

    machine_info["fffcore"] = describe_machine(thread_settings())
