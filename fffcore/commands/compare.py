"""``fff compare``: time backends and baselines side by side, check them, print the paper-style table.

The machinery lives in :mod:`fffcore.benchmarks`; this module parses
arguments, pins threads, shows progress and writes the outputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

#: Batch sizes of the default run at the paper's setting: the paper's own. The
#: whole default run (built-in CPU backends, dense baselines at one thread and at
#: all, the paper's FFF) takes about three minutes on 2 quiet cores (195 s
#: measured on a 2-core AMD EPYC, numba's first compilation included).
DEFAULT_BATCHES = "1,128,4096,16384"
DEFAULT_SHAPES = "paper"
#: A 1-minute load average before the run at or above this says other processes kept most of a core busy.
BUSY_LOAD_BEFORE = 0.75
BASELINES = ("dense", "paper")


def add_parser(subparsers: Any) -> None:
    from fffcore.benchmarks.cases import FAMILIES, SWEEP_BATCH
    from fffcore.benchmarks.comparison import REFERENCE_ROWS
    from fffcore.benchmarks.timing import BUDGET_SECONDS, REPEATS

    parser = subparsers.add_parser(
        "compare",
        help="time backends and dense baselines side by side and print a speedup table",
        description=(
            "Time fffcore backends, dense feedforward layers and the paper's PyTorch FFF on the same inputs, "
            "check every FFF output against the float64 oracle, and print time per call, rows/s and speedups "
            "(over the best dense layer, over the reference) beside the theoretical limit."
        ),
    )
    parser.add_argument(
        "--backends",
        default="builtin",
        help="comma-separated backend names, 'builtin' (the built-in CPU backends, the default), 'all' "
        "(every registered backend) or 'none'",
    )
    parser.add_argument(
        "--baselines", default=",".join(BASELINES), help="comma-separated from 'dense', 'paper', or 'none'"
    )
    parser.add_argument(
        "--shapes",
        default=DEFAULT_SHAPES,
        help=f"comma-separated shape families from {', '.join(FAMILIES)} (default {DEFAULT_SHAPES}; --plot adds depth)",
    )
    parser.add_argument(
        "--batches", default=DEFAULT_BATCHES, help=f"batch sizes of the 'paper' shapes (default {DEFAULT_BATCHES})"
    )
    parser.add_argument("--sweep-batch", type=int, default=SWEEP_BATCH, help="batch size of the depth and trees sweeps")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="parameter and input dtype")
    parser.add_argument("--threads", type=int, default=None, help="threads for every pool (default: available cores)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed samples per case")
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS, help="seconds of sampling per case at most")
    parser.add_argument(
        "--reference-rows", type=int, default=REFERENCE_ROWS, help="most rows the slow reference is timed on"
    )
    parser.add_argument("--json", metavar="PATH", help="write machine-readable results here")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of time against depth here (runs the depth sweep)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the arguments, list the cases and the estimated duration, and stop without timing anything",
    )
    parser.add_argument(
        "--compare",
        metavar="PREVIOUS",
        help="after the table, compare each FFF row's speedup over the best dense layer with this earlier "
        "`fff compare --json` file",
    )
    parser.add_argument(
        "--fail-on-regression",
        metavar="PERCENT",
        help="with --compare: exit 1 when an FFF row's speedup fell by more than this (for example 10%%)",
    )
    parser.add_argument(
        "--gpu-results",
        metavar="PATH",
        help="print the table of a GPU benchmark results file (benchmarks/studies/gpu_bench.py) instead of measuring",
    )
    parser.set_defaults(func=run)


def run(arguments: argparse.Namespace) -> int:
    if arguments.gpu_results is not None:
        return print_gpu_results(arguments.gpu_results)
    from fffcore.benchmarks import cases as case_table
    from fffcore.benchmarks.comparison import add_bandwidth, estimate_seconds, run_comparison
    from fffcore.benchmarks.machine import (
        available_cores,
        describe_machine,
        load_average,
        pin_threads,
        thread_settings,
    )
    from fffcore.benchmarks.report import format_table, legend, load_warning, results_to_json, write_json
    from fffcore.commands.progress import Progress

    try:
        for option, value in (
            ("--threads", arguments.threads),
            ("--repeats", arguments.repeats),
            ("--reference-rows", arguments.reference_rows),
            ("--sweep-batch", arguments.sweep_batch),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{option}: expected a positive integer, got {value}")
        if arguments.budget < 0:
            raise ValueError(f"--budget: expected seconds >= 0, got {arguments.budget}")
        batches = _positive_ints(arguments.batches, "--batches")
        families = _names(arguments.shapes)
        if arguments.plot and "depth" not in families:
            families.append("depth")
            print("--plot: adding the depth sweep (shapes 'depth') to the run", file=sys.stderr)
        shapes = case_table.shapes_for(
            families, batches=batches, sweep_batch=arguments.sweep_batch, dtype=arguments.dtype
        )
        backends = _backends(arguments.backends)
        baselines = _baselines(arguments.baselines)
        for option, path in (("--json", arguments.json), ("--plot", arguments.plot)):
            if path is not None:
                _require_writable(path, option)
        previous = threshold = None
        if arguments.fail_on_regression is not None and arguments.compare is None:
            raise ValueError("--fail-on-regression: needs --compare PREVIOUS.json to compare with")
        if arguments.compare is not None:
            from fffcore.benchmarks.regression import parse_threshold, read_results

            previous = read_results(arguments.compare)
            if arguments.fail_on_regression is not None:
                threshold = parse_threshold(arguments.fail_on_regression)
    except ValueError as error:
        print(f"fff compare: {error}", file=sys.stderr)
        return 2
    if arguments.plot and importlib.util.find_spec("matplotlib") is None:
        print("fff compare: --plot needs matplotlib; fix: pip install 'fffcore[bench]'", file=sys.stderr)
        return 2
    threads = arguments.threads or available_cores()
    pin_threads(threads)

    cases = case_table.cases_for(shapes, backends)
    cases = [c for c in cases if c.implementation.startswith("fff:") or c.implementation.split(":")[0] in baselines]
    row_caps = {"fff:reference": arguments.reference_rows}
    progress = None if arguments.quiet else Progress(sys.stderr, unit="step", description="fff compare")
    estimate = estimate_seconds(cases, row_caps, arguments.repeats, arguments.budget, threads)
    print(
        f"fff compare: {len(cases)} cases, about {_duration(estimate)} (estimated from the layer sizes)",
        file=sys.stderr,
    )
    if arguments.dry_run:
        print(_case_plan(cases, row_caps))
        return 0
    _prepare_kernels(cases)
    load_before = load_average()
    started = time.perf_counter()
    try:
        results = run_comparison(
            cases, row_caps=row_caps, repeats=arguments.repeats, budget=arguments.budget, progress=progress
        )
    finally:
        if progress is not None:  # the bar ends before the table, also when interrupted
            progress.close()
    elapsed = time.perf_counter() - started
    add_bandwidth(results)  # after the timings, so that the probe does not disturb them
    in_force = thread_settings()  # after the run: torch and numba report once they have been imported
    load_after = load_average()
    # The results go to disk before anything else is done with them, so that nothing that fails later (the
    # table, the comparison, the plot) can lose a run of minutes.
    json_error = None
    if arguments.json:
        settings = {
            "arguments": {k: v for k, v in vars(arguments).items() if k not in ("func", "command")},
            "threads": threads,
            "repeats": arguments.repeats,
            "budget_s": arguments.budget,
            "row_caps": row_caps,
            "elapsed_s": elapsed,
            "load_average_before": load_before,
            "load_average_after": load_after,
        }
        try:
            write_json(arguments.json, results_to_json(results, describe_machine(in_force), settings))
        except OSError as error:  # checked before the run, but a disk can fill up meanwhile
            json_error = error

    print(format_table(results))
    print()
    print(legend(in_force))
    print(f"{len(cases)} cases in {elapsed:.0f} s")
    if load_before is not None and load_after is not None:
        # Before the run this process had not started computing, so its load was other processes': most
        # of a core's worth already slows any timing that wants every core.
        busy = load_before[0] >= BUSY_LOAD_BEFORE or max(load_before[0], load_after[0]) > available_cores()
        note = (
            "; other processes competed for the cores, so absolute times are inflated: read the ratios" if busy else ""
        )
        loads = f"{load_before[0]:.1f}/{load_after[0]:.1f}"
        print(f"load average (1 min) before/after: {loads} on {available_cores()} cores{note}")
    warning = load_warning(results, available_cores())
    if warning is not None:
        print(warning)
    failed = False
    if previous is not None:
        failed = not _compare_with_previous(results, previous, threshold, arguments.compare)
    if json_error is not None:
        print(
            f"fff compare: could not write {arguments.json}: {json_error}; the table above holds the results",
            file=sys.stderr,
        )
        failed = True
    elif arguments.json:
        print(f"wrote {arguments.json}")
    if arguments.plot:
        from fffcore.benchmarks.plot import plot_depth

        try:
            plot_depth(results, arguments.plot, title_note=f"threads: {threads}; {_cpu_note()}")
        except ValueError as error:
            print(f"fff compare: no plot: {error}", file=sys.stderr)
            return 1
        print(f"wrote {arguments.plot}")
    wrong = [r for r in results if r.status in ("WRONG", "failed")]
    return 1 if wrong or failed else 0


def _compare_with_previous(results: list[Any], previous: dict[str, Any], threshold: float | None, path: str) -> bool:
    """Print each FFF row against the earlier run ``previous`` (``--compare``): False when a row fell by
    more than ``threshold`` or the comparison itself failed (said on stderr; the results are already
    written by then)."""
    from fffcore.benchmarks.regression import changes, report
    from fffcore.benchmarks.report import printable, results_to_json

    try:
        current = results_to_json(results, {}, {})
        lines, regressions = report(changes(previous, current), previous, threshold)
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as error:
        # read_results checked every field used, so this is a bug; say so in one line rather than a traceback
        print(f"fff compare: --compare: could not compare with {printable(path)}: {error!r}", file=sys.stderr)
        return False
    print("\n".join(lines))
    if regressions:
        print(f"fff compare: {len(regressions)} FFF rows fell by more than {threshold:.0%}", file=sys.stderr)
    return not regressions


def _prepare_kernels(cases: list[Any]) -> None:
    """Compile (or load) the FFF backends' kernels for the cases' dtypes before anything is timed
    (``fffcore.warmup``), so that no timing waits for a compiler, nor runs beside one."""
    import fffcore
    from fffcore.warmup import warmup

    timed = {c.implementation.split(":", 1)[1] for c in cases if c.implementation.startswith("fff:")}
    rows = [row for row in fffcore.list_backends() if row.available and row.name in timed]
    backends = sorted(row.name for row in rows)
    dtypes = sorted({c.shape.dtype for c in cases} & {dtype for row in rows for dtype in row.dtypes})
    if not backends or not dtypes:
        return
    started = time.perf_counter()
    warmup(dtypes=dtypes, backends=backends)
    seconds = time.perf_counter() - started
    if seconds > 1.0:
        print(
            f"fff compare: compiled the kernels first, in {seconds:.0f} s (numba keeps them on disk; "
            "`fff warmup` does it ahead of time)",
            file=sys.stderr,
        )


def _case_plan(cases: list[Any], row_caps: dict[str, int]) -> str:
    """One line per case that a run would time, in the order it would time them (``--dry-run``), with
    what a run would skip and why."""
    from fffcore.benchmarks.implementations import availability

    reasons = {implementation: availability(implementation) for implementation in {c.implementation for c in cases}}
    lines = []
    for case in cases:
        shape = case.shape
        cap = row_caps.get(case.implementation)
        note = f"  timed on {cap} of its rows" if cap is not None and cap < shape.batch else ""
        if reasons[case.implementation]:
            note = f"  skipped: {reasons[case.implementation]}"
        lines.append(f"{shape.family:6} {shape.id:26} {case.implementation}{note}")
    return "\n".join(lines)


def _require_writable(path: str, option: str) -> None:
    """A ValueError naming ``option`` unless ``path`` can be written, found before any work is done.

    Probed by opening it for appending (creating its folder as the write would); a file that did
    not exist before is removed again.
    """
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{option}: expected a file path, got the folder {path}")
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8"):
            pass
    except OSError as error:
        raise ValueError(f"{option}: cannot write {path}: {error.strerror or error}") from None
    if not existed:
        target.unlink()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} minutes"


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _positive_ints(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in _names(text)]
    except ValueError as error:
        raise ValueError(f"{option}: expected comma-separated positive integers, got {text!r}") from error
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{option}: expected comma-separated positive integers, got {text!r}")
    return values


def _backends(text: str) -> list[str]:
    """Backend names from ``--backends``; 'builtin' keeps the built-in CPU backends, available or not."""
    from fffcore import list_backends
    from fffcore.registry import BUILTIN_PLUGINS

    infos = [info for info in list_backends() if not info.broken]
    names = _names(text)
    if names == ["builtin"]:
        return [i.name for i in infos if i.plugin in BUILTIN_PLUGINS and "cpu" in i.devices]
    if names == ["all"]:
        return [i.name for i in infos]
    if names == ["none"]:
        return []
    known = {i.name for i in infos}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--backends: unknown {unknown}; registered: {', '.join(sorted(known))}")
    return names


def _baselines(text: str) -> list[str]:
    names = _names(text)
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"--baselines: expected names from {BASELINES} or 'none', got {unknown}")
    return names


def _cpu_note() -> str:
    from fffcore.benchmarks.machine import cpu_model

    return cpu_model()


def print_gpu_results(path: str) -> int:
    """Print a results file of the GPU benchmark study as a table: 0, or 2 when it cannot be read.

    The file is checked before anything is printed (at most 16 MiB, a JSON object nested at most 32
    levels, every printed field of the type the study writes), and every text it holds is printed with
    its control characters escaped, so a file cannot drive the terminal.
    """
    from fffcore.benchmarks.gpu_report import format_table, grouped_crossover, read_case_results, read_report
    from fffcore.benchmarks.report import printable

    try:
        report = read_report(Path(path))
        results = read_case_results(report)
    except ValueError as error:
        print(f"fff compare: {error}", file=sys.stderr)
        return 2
    machine = report.get("machine") or {}
    layer = report.get("layer") or {}
    header = (
        f"GPU benchmark ({report.get('mode') or '?'}, {report.get('created') or 'date unknown'}): "
        f"{machine.get('gpu') or 'no GPU'}; width {layer.get('width')}, depth {layer.get('depth')}, "
        f"dense hidden {layer.get('dense_hidden')}; medians per call"
    )
    print(printable(header))
    for step in report.get("steps") or []:
        print(printable(f"  step {step.get('name')}: {step.get('status')}"))
    print(format_table(results))
    crossover = grouped_crossover(results)
    if not crossover:
        print("row-grouped kernels: not measured in this file")
    for dtype, batch in crossover.items():
        where = f"from batch {batch}" if batch is not None else "at no measured batch"
        print(printable(f"row-grouped kernels faster than warp-per-row, {dtype}: {where}"))
    for error in report.get("errors") or []:
        print(f"error: {printable(error, keep=chr(10) + chr(9))}")
    return 0
