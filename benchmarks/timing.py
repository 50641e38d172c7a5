"""Timing calls: the one timing helper of the engine behind ``fff compare`` and of every study in
benchmarks/studies/.

:func:`time_call` times one implementation the way ``fff compare`` does: warm-up, calibrated
repetitions, median and spread. Each implementation is timed on its own, start to finish, rather than
in turns with the others: BLAS, OpenMP and numba thread pools keep spinning for a while after each
call, so alternating libraries makes each one run against the previous one's spinning threads
(measured here: a 1-row dense layer took about 1.5x longer in turns with torch than on its own). The
warm-up calls absorb what is left of the previous implementation's spinning.

The studies build their own schedules from smaller parts: :func:`seconds_per_call` read on a
:class:`Stopwatch` (the host clock, with a device's synchronisation where work is queued, or a GPU's
events), :func:`rotating` inputs, and :func:`round_robin`, which times implementations in turns so
that the ratios taken within one round stay fair on a shared machine.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: A sample runs the call this long at least, so timer resolution and loop overhead stay negligible.
MIN_SAMPLE_SECONDS = 0.002
#: Untimed calls run this long at least before the samples (and at least two calls): the thread
#: pools of the implementation timed before go idle (OpenMP runtimes keep their threads spinning
#: for a while after a parallel region, taking cores from the next one), and a backend that
#: adapts to the machine (numba's choice between one thread and all) settles on idle cores.
WARM_UP_SECONDS = 0.5
REPEATS = 7
MIN_REPEATS = 3
#: Seconds of sampling per implementation; past it, its sampling stops once MIN_REPEATS samples are taken.
BUDGET_SECONDS = 1.0

#: Seconds now, on any fixed origin: :func:`time.perf_counter` (or :func:`time.process_time`, or a fake in tests).
Clock = Callable[[], float]


@dataclass(frozen=True)
class Stopwatch:
    """Measures a stretch of calls: ``start()`` returns a mark; ``stop(mark)`` the seconds since it,
    once the work issued in between has finished (so a GPU's queued work is timed, not its launch)."""

    start: Callable[[], Any]
    stop: Callable[[Any], float]


def host_stopwatch(clock: Clock = time.perf_counter, synchronize: Callable[[], None] | None = None) -> Stopwatch:
    """A stopwatch on ``clock``. ``synchronize()``, where given, waits for a device's queued work before
    each reading: at the start, so earlier work is not counted; at the stop, so the calls' work is."""

    def start() -> float:
        if synchronize is not None:
            synchronize()
        return clock()

    def stop(mark: float) -> float:
        if synchronize is not None:
            synchronize()
        return clock() - mark

    return Stopwatch(start, stop)


#: Wall time on the host, for calls that wait for their own work.
WALL = host_stopwatch()


@dataclass
class Timing:
    """Seconds per call of one implementation on one input.

    Attributes:
        samples: seconds per call, one value per sample (each the mean of ``number`` calls).
        number: calls per sample.
        first_call: seconds of the first call in the process (compilation, cache loading, first allocations).
        output: the output of the last timed call (what the check examines).
    """

    samples: list[float]
    number: int
    first_call: float
    output: Any = field(default=None, repr=False)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def quartiles(self) -> tuple[float, float]:
        """The 25th and 75th percentiles of the samples (the median itself when there is one sample)."""
        if len(self.samples) < 2:
            return self.median, self.median
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q1, q3

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median: 0.05 means the middle half of the samples spans 5%."""
        q1, q3 = self.quartiles
        return (q3 - q1) / self.median if self.median > 0 else 0.0


def warm_up(
    call: Callable[[], Any],
    min_sample: float = MIN_SAMPLE_SECONDS,
    seconds: float = WARM_UP_SECONDS,
    clock: Clock = time.perf_counter,
) -> Timing:
    """Untimed calls: the first is recorded as ``first_call``; then calls for ``seconds`` (and
    ``min_sample``) at least, the mean of the last ``min_sample`` seconds of which sets the calls
    per sample.

    Calibrating on steady calls rather than on the second one matters for calls of a few
    microseconds: the second still finds caches cold (a fresh input, the first of each input
    of a pool), so it would set too few calls per sample, and the first samples would still be
    warming up. Returns a :class:`Timing` without samples yet.
    """
    start = clock()
    call()
    first_call = clock() - start
    began = clock()
    while True:
        calls = 0
        start = clock()
        while True:
            output = call()
            calls += 1
            elapsed = clock() - start
            if elapsed >= min_sample:
                break
        if clock() - began >= seconds:
            break
    number = max(1, math.ceil(min_sample / max(elapsed / calls, 1e-9)))
    return Timing([], number, first_call, output)


def take_sample(call: Callable[[], Any], timing: Timing, clock: Clock = time.perf_counter) -> None:
    """Run ``call`` ``timing.number`` times and append the mean seconds per call."""
    start = clock()
    for _ in range(timing.number):
        timing.output = call()
    timing.samples.append((clock() - start) / timing.number)


def time_call(
    call: Callable[[], Any],
    *,
    repeats: int = REPEATS,
    min_repeats: int = MIN_REPEATS,
    budget: float = BUDGET_SECONDS,
    min_sample: float = MIN_SAMPLE_SECONDS,
    warm_up_seconds: float = WARM_UP_SECONDS,
    after_each: Callable[[], None] | None = None,
    clock: Clock = time.perf_counter,
) -> Timing:
    """Time ``call`` (which must wait for its device itself): warm-up, then up to ``repeats`` samples.

    Sampling stops early, never under ``min_repeats`` samples, once the next
    sample would overrun ``budget`` seconds. ``after_each()`` is called after
    the warm-up and after each sample (for progress). ``clock`` reads the time (a fake one in tests).
    """
    if repeats < 1 or min_repeats < 1:
        raise ValueError(f"repeats, min_repeats: expected >= 1, got {repeats}, {min_repeats}")
    timing = warm_up(call, min_sample, warm_up_seconds, clock)
    if after_each is not None:
        after_each()
    began = clock()
    while len(timing.samples) < repeats:
        take_sample(call, timing, clock)
        if after_each is not None:
            after_each()
        spent = clock() - began
        if len(timing.samples) >= min(min_repeats, repeats) and spent + timing.samples[-1] * timing.number > budget:
            break
    return timing


# --- the parts the studies build their schedules from ------------------------------------------


def seconds_per_call(call: Callable[[], Any], number: int = 1, stopwatch: Stopwatch = WALL) -> float:
    """Mean seconds per call of ``number`` calls of ``call`` in a row, read once around them all."""
    mark = stopwatch.start()
    for _ in range(number):
        call()
    return stopwatch.stop(mark) / number


def rotating(call: Callable[[Any], Any], inputs: Sequence[Any]) -> Callable[[], Any]:
    """``call`` on the next of ``inputs`` each time, the first first: a timed call that does not read
    the same input (from a warm cache) every time."""
    cycle = itertools.cycle(inputs)
    return lambda: call(next(cycle))


def round_robin(
    calls: Mapping[str, Callable[[], Any]],
    rounds: int,
    *,
    warm_up_rounds: int = 0,
    number: int = 1,
    stopwatch: Stopwatch = WALL,
    sample: Callable[[Callable[[], Any]], float] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls``, timed in turns: each round takes one sample of each, in
    order; ``warm_up_rounds`` untimed rounds first. In turns, a change of load on the machine hits every
    implementation alike, so the ratios of per-round samples stay fair.

    A sample is :func:`seconds_per_call` of ``number`` calls on ``stopwatch``, or ``sample(call)``
    where given (for samples that size themselves). Returns name -> ``rounds`` samples, in order.
    """
    take = sample if sample is not None else (lambda call: seconds_per_call(call, number, stopwatch))
    for _ in range(warm_up_rounds):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            samples[name].append(take(call))
    return samples
