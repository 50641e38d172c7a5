"""Running a set of cases: time each, check each timed output, derive the speedups.

This is the machinery behind ``fff compare``; the command only parses
arguments, pins threads and prints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fffcore.benchmarks.cases import Case, Shape
from fffcore.benchmarks.check import CheckResult, check_fff_output
from fffcore.benchmarks.cpu_use import others_cores, read_cpu_use
from fffcore.benchmarks.implementations import Prepared, Unavailable, prepare
from fffcore.benchmarks.roofline import Traffic, fff_traffic, probe_size, read_bandwidth
from fffcore.benchmarks.timing import BUDGET_SECONDS, REPEATS, Timing, time_call
from fffcore.benchmarks.transfer import to_numpy
from fffcore.registry import registry

#: The reference evaluates erf through Python's math.erfc element by element and
#: gathers weights with fancy indexing: tens of microseconds a row. It is timed
#: on at most this many rows of each batch and compared per row.
REFERENCE_ROWS = 1024
DEFAULT_ROW_CAPS: dict[str, int] = {"fff:reference": REFERENCE_ROWS}

OK, WRONG, SKIPPED, FAILED = "ok", "WRONG", "skipped", "failed"


@dataclass
class Result:
    """One case's outcome.

    Attributes:
        case: the shape and implementation.
        kind: ``"fff"``, ``"dense"`` or ``"paper"`` (empty when skipped before preparing).
        status: ``ok``; ``WRONG`` (the output failed the check: no time is reported);
            ``skipped`` (cannot run here); ``failed`` (raised while running).
        reason: why it was skipped, failed or wrong; for ``ok``, what the check found.
        rows: rows per timed call (fewer than the batch when capped).
        where: array library and device of the input.
        version: version of the library behind it.
        timing: the measurement (None unless it ran).
        check: the correctness check (None for dense layers, which compute another function).
        traffic: for fffcore backends, the least a call must move and compute (:mod:`.roofline`).
        bandwidth: bytes per second this machine reads from a working set of the traffic's size,
            and how that was measured (set by :func:`add_bandwidth`, after the timings).
        others_cores: cores' worth of busy time other processes took while it was timed
            (:mod:`.cpu_use`; None where the OS does not tell).
    """

    case: Case
    kind: str
    status: str
    reason: str
    rows: int = 0
    where: str = ""
    version: str = ""
    timing: Timing | None = None
    check: CheckResult | None = None
    traffic: Traffic | None = None
    bandwidth: tuple[float, str] | None = None
    others_cores: float | None = None

    @property
    def achieved_bandwidth(self) -> float | None:
        """Bytes per second of the least traffic a call must move, at the measured time."""
        return self._per_second(lambda traffic: traffic.bytes)

    @property
    def achieved_flops(self) -> float | None:
        """Floating-point operations per second a call's least work takes, at the measured time."""
        return self._per_second(lambda traffic: traffic.flops)

    def _per_second(self, amount: Callable[[Traffic], int]) -> float | None:
        if not self.timed or self.traffic is None:
            return None
        assert self.timing is not None
        return amount(self.traffic) / self.timing.median

    @property
    def bandwidth_share(self) -> float | None:
        """The achieved bandwidth over what the machine reads from a working set of the same size."""
        achieved = self.achieved_bandwidth
        if achieved is None or self.bandwidth is None:
            return None
        return achieved / self.bandwidth[0]

    @property
    def timed(self) -> bool:
        """Whether the result has a time worth reporting (it ran and was not wrong)."""
        return self.status == OK and self.timing is not None

    @property
    def seconds_per_row(self) -> float:
        assert self.timing is not None
        return self.timing.median / self.rows

    @property
    def rows_per_second(self) -> float:
        return 1.0 / self.seconds_per_row


#: Rates the duration estimate assumes, per thread: a dense layer's multiply-adds (BLAS on one core of a
#: current x86 server: 20 G per second), and seconds per row of the FFF implementations.
DENSE_FMA_PER_SECOND = 20e9
FFF_SECONDS_PER_ROW = {"fff:reference": 15e-6, "paper:torch": 25e-6}
FFF_SECONDS_PER_ROW_DEFAULT = 2e-6


def estimate_seconds(
    cases: Sequence[Case], row_caps: Mapping[str, int] | None, repeats: int, budget: float, threads: int
) -> float:
    """A rough duration of :func:`run_comparison` on ``cases`` (within a factor of two on the machines
    measured): per case the warm-up, the sampling budget, the calls the minimum of samples needs
    past the budget, and the first call, from each call's expected time."""
    from fffcore.benchmarks.cases import ONE_THREAD
    from fffcore.benchmarks.timing import MIN_REPEATS, WARM_UP_SECONDS

    caps = DEFAULT_ROW_CAPS if row_caps is None else row_caps
    total = 0.0
    for case in cases:
        shape = case.shape
        rows = min(shape.batch, caps.get(case.implementation, shape.batch))
        family, _, rest = case.implementation.partition(":")
        if family == "dense":
            library, hidden = rest.split(":")
            used = 1 if library.endswith(ONE_THREAD) else threads
            call = 2 * rows * int(hidden) * (shape.d_in + shape.d_out) / 2 / (DENSE_FMA_PER_SECOND * used)
        else:
            per_row = FFF_SECONDS_PER_ROW.get(case.implementation, FFF_SECONDS_PER_ROW_DEFAULT)
            call = rows * per_row * shape.trees * (shape.depth + 1) / 12
        sampled = min(budget, repeats * call) + max(0.0, MIN_REPEATS * call - budget)
        total += WARM_UP_SECONDS + 2 * call + sampled
    return total


#: ``progress(done, total, label)``: units done of the total (one per warm-up and per sample), and what runs now.
ProgressCallback = Callable[[int, int, str], None]


def run_comparison(
    cases: Sequence[Case],
    *,
    row_caps: Mapping[str, int] | None = None,
    repeats: int = REPEATS,
    budget: float = BUDGET_SECONDS,
    progress: ProgressCallback | None = None,
) -> list[Result]:
    """Time and check every case, one after the other; the results come in the order of ``cases``.

    Args:
        cases: what to run.
        row_caps: implementation id -> most rows to time it on (default :data:`DEFAULT_ROW_CAPS`).
        repeats: samples per case (fewer when ``budget`` runs out, never under 3).
        budget: seconds of sampling per case.
        progress: called as work advances, for a progress bar.
    """
    caps = DEFAULT_ROW_CAPS if row_caps is None else row_caps
    units_per_case = 1 + repeats  # a warm-up and up to ``repeats`` samples
    total = units_per_case * len(cases)
    results = []
    for index, case in enumerate(cases):
        done = units_per_case * index

        def advance(case: Case = case) -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(min(done, total), total, case.id)

        if progress is not None:
            progress(done, total, case.id)
        results.append(
            run_case(case, rows=caps.get(case.implementation), repeats=repeats, budget=budget, after_each=advance)
        )
    if progress is not None and cases:
        progress(total, total, "done")
    return results


def run_case(
    case: Case,
    *,
    rows: int | None = None,
    repeats: int = REPEATS,
    budget: float = BUDGET_SECONDS,
    after_each: Callable[[], None] | None = None,
) -> Result:
    """Prepare, time and check one case; never raises for an implementation's fault."""
    prepared = _prepare(case, rows)
    if isinstance(prepared, Result):
        return prepared
    before = read_cpu_use()
    try:
        timing: Timing | Exception = time_call(prepared.call, repeats=repeats, budget=budget, after_each=after_each)
    except Exception as error:  # a broken implementation must not end the whole comparison
        timing = error
    others = others_cores(before, read_cpu_use())
    result = _checked(prepared, timing)
    result.others_cores = others
    return result


def _prepare(case: Case, rows: int | None) -> Prepared | Result:
    try:
        return prepare(case, rows)
    except Unavailable as why:
        return Result(case, "", SKIPPED, str(why))
    except Exception as error:  # a broken implementation must not end the whole comparison
        return Result(case, "", FAILED, f"preparing raised {_one_line(error)}")


def _checked(prepared: Prepared, timing: Timing | Exception) -> Result:
    """The result of a timed implementation: failed, WRONG or ok, after checking its last timed output."""
    case = prepared.case
    base = {"kind": prepared.kind, "rows": prepared.rows, "where": prepared.where, "version": prepared.version}
    if isinstance(timing, Exception):
        return Result(case, status=FAILED, reason=f"calling raised {_one_line(timing)}", **base)
    try:
        check = check_prepared(prepared)
    except Exception as error:
        return Result(case, status=FAILED, reason=f"checking raised {_one_line(error)}", timing=timing, **base)
    timing.output = None  # the check is done; do not keep large outputs alive
    if check is not None and not check.ok:
        return Result(case, status=WRONG, reason=check.detail, timing=timing, check=check, **base)
    reason = check.detail if check is not None else "dense baseline (another function): output shape and finiteness"
    traffic = None
    if prepared.kind == "fff" and prepared.path is not None and prepared.params is not None:
        traffic = fff_traffic(prepared.params, prepared.path())
    return Result(case, status=OK, reason=reason, timing=timing, check=check, traffic=traffic, **base)


def add_bandwidth(results: Sequence[Result]) -> None:
    """Measure, for each result with a traffic, the machine's read bandwidth at its working-set size
    (one probe per size: :func:`fffcore.benchmarks.roofline.read_bandwidth`). Run after the timings,
    so the probe does not disturb them."""
    for result in results:
        if result.timed and result.traffic is not None:
            result.bandwidth = read_bandwidth(probe_size(result.traffic.bytes))


def check_prepared(prepared: Prepared) -> CheckResult | None:
    """Check the output on the pool's first input (one more call, untimed): FFF implementations
    against the float64 oracle, dense layers for shape and finiteness."""
    y = to_numpy(prepared.check_call())
    if prepared.params is None:
        expected = (prepared.rows, prepared.case.shape.d_out)
        if tuple(y.shape) != expected or not np.all(np.isfinite(y)):
            return CheckResult(False, f"dense output of shape {tuple(y.shape)} (expected {expected}) or not finite", 0)
        return None
    nodes = prepared.path() if prepared.path is not None else None
    accumulation = None
    if prepared.kind == "fff":  # a backend may declare a wider accumulation for 16-bit storage
        backend = registry().get(prepared.case.implementation.split(":", 1)[1])
        accumulation = backend.accumulation_dtypes.get(prepared.params.dtype)
    return check_fff_output(prepared.x, prepared.params, y, nodes, accumulation=accumulation)


def best_dense(results: Sequence[Result], shape: Shape, hidden: int) -> Result | None:
    """The fastest (per row) timed dense layer of ``hidden`` neurons at ``shape``."""
    dense = [
        r
        for r in results
        if r.case.shape == shape and r.kind == "dense" and r.timed and r.case.implementation.endswith(f":{hidden}")
    ]
    return min(dense, key=lambda r: r.seconds_per_row, default=None)


def reference_result(results: Sequence[Result], shape: Shape) -> Result | None:
    return next(
        (r for r in results if r.case.shape == shape and r.case.implementation == "fff:reference" and r.timed), None
    )


def speedups(results: Sequence[Result], result: Result) -> dict[str, float | None]:
    """Per-row speedups of ``result``: over the best dense layer of each hidden width, and over the reference."""
    shape = result.case.shape
    out: dict[str, float | None] = {}
    for hidden in shape.dense_hidden:
        dense = best_dense(results, shape, hidden)
        out[f"dense{hidden}"] = dense.seconds_per_row / result.seconds_per_row if dense and result.timed else None
    reference = reference_result(results, shape)
    out["reference"] = reference.seconds_per_row / result.seconds_per_row if reference and result.timed else None
    return out


#: Relative spread (interquartile range over the median) above which a timing is called unsteady.
UNSTEADY_SPREAD = 0.25
#: Dense layers narrower than this cost mostly their fixed overheads (two BLAS calls and several
#: activation passes per call), which a limit that counts neurons leaves out.
NARROW_DENSE = 32


#: Other processes holding at least this many cores' worth of busy time while a case ran slowed it:
#: half a core is enough to take a core from a call that wants every core, part of the time.
BUSY_OTHERS_CORES = 0.5


def behind_under_load(results: Sequence[Result]) -> list[Result]:
    """The timed FFF results slower than the best dense layer of some width while other processes held
    at least :data:`BUSY_OTHERS_CORES` cores: their times say more about the machine's load than about them."""
    behind = []
    for result in results:
        if result.kind != "fff" or not result.timed or result.others_cores is None:
            continue
        slower = any(
            ratio is not None and ratio < 1 for key, ratio in speedups(results, result).items() if key != "reference"
        )
        if slower and result.others_cores >= BUSY_OTHERS_CORES:
            behind.append(result)
    return behind


def suspect_ratios(results: Sequence[Result], result: Result) -> list[dict[str, Any]]:
    """The speedups of an FFF ``result`` over a dense layer that exceed the theoretical limit (dense
    neurons over visited neurons): impossible for a correct measurement, so never a result. Each
    entry: ``over`` (``denseH``), ``ratio``, ``limit`` and ``likely_cause``."""
    if result.kind != "fff" or not result.timed:
        return []
    shape = result.case.shape
    ratios = speedups(results, result)
    found = []
    for hidden in shape.dense_hidden:
        ratio = ratios[f"dense{hidden}"]
        if ratio is None or ratio <= shape.limit(hidden):
            continue
        dense = best_dense(results, shape, hidden)
        found.append(
            {
                "over": f"dense{hidden}",
                "ratio": ratio,
                "limit": shape.limit(hidden),
                "likely_cause": _likely_cause(dense, result, hidden),
            }
        )
    return found


def _likely_cause(dense: Result | None, fff: Result, hidden: int) -> str:
    assert fff.timing is not None
    if hidden < NARROW_DENSE:
        return (
            f"a dense layer of {hidden} neurons costs mostly its fixed overheads (separate matrix products and "
            "activation passes), which a limit counting neurons leaves out"
        )
    if dense is not None and dense.timing is not None and dense.timing.spread > UNSTEADY_SPREAD:
        return (
            f"the dense layer's samples varied by {dense.timing.spread:.0%} of their median: it was likely slowed "
            "by other processes while it ran"
        )
    if fff.timing.spread > UNSTEADY_SPREAD:
        return f"this implementation's samples varied by {fff.timing.spread:.0%} of their median"
    return (
        "the dense layers ran slower than they can (other processes, CPU frequency) or this implementation "
        "skipped work its check did not catch; rerun on a quiet machine"
    )


def shapes_of(results: Sequence[Result]) -> list[Shape]:
    """The shapes of ``results``, each once, in order."""
    return list(dict.fromkeys(r.case.shape for r in results))


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
