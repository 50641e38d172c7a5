"""Timing a call: warm-up, calibrated repetitions, median and spread.

Each implementation is timed on its own, start to finish, rather than in
turns with the others: BLAS, OpenMP and numba thread pools keep spinning for
a while after each call, so alternating libraries makes each one run against
the previous one's spinning threads (measured here: a 1-row dense layer took
about 1.5x longer in turns with torch than on its own). The warm-up calls
absorb what is left of the previous implementation's spinning.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
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
    call: Callable[[], Any], min_sample: float = MIN_SAMPLE_SECONDS, seconds: float = WARM_UP_SECONDS
) -> Timing:
    """Untimed calls: the first is recorded as ``first_call``; then calls for ``seconds`` (and
    ``min_sample``) at least, the mean of the last ``min_sample`` seconds of which sets the calls
    per sample.

    Calibrating on steady calls rather than on the second one matters for calls of a few
    microseconds: the second still finds caches cold (a fresh input, the first of each input
    of a pool), so it would set too few calls per sample, and the first samples would still be
    warming up. Returns a :class:`Timing` without samples yet.
    """
    start = time.perf_counter()
    call()
    first_call = time.perf_counter() - start
    began = time.perf_counter()
    while True:
        calls = 0
        start = time.perf_counter()
        while True:
            output = call()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_sample:
                break
        if time.perf_counter() - began >= seconds:
            break
    number = max(1, math.ceil(min_sample / max(elapsed / calls, 1e-9)))
    return Timing([], number, first_call, output)


def take_sample(call: Callable[[], Any], timing: Timing) -> None:
    """Run ``call`` ``timing.number`` times and append the mean seconds per call."""
    start = time.perf_counter()
    for _ in range(timing.number):
        timing.output = call()
    timing.samples.append((time.perf_counter() - start) / timing.number)


def time_call(
    call: Callable[[], Any],
    *,
    repeats: int = REPEATS,
    min_repeats: int = MIN_REPEATS,
    budget: float = BUDGET_SECONDS,
    min_sample: float = MIN_SAMPLE_SECONDS,
    warm_up_seconds: float = WARM_UP_SECONDS,
    after_each: Callable[[], None] | None = None,
) -> Timing:
    """Time ``call`` (which must wait for its device itself): warm-up, then up to ``repeats`` samples.

    Sampling stops early, never under ``min_repeats`` samples, once the next
    sample would overrun ``budget`` seconds. ``after_each()`` is called after
    the warm-up and after each sample (for progress).
    """
    if repeats < 1 or min_repeats < 1:
        raise ValueError(f"repeats, min_repeats: expected >= 1, got {repeats}, {min_repeats}")
    timing = warm_up(call, min_sample, warm_up_seconds)
    if after_each is not None:
        after_each()
    began = time.perf_counter()
    while len(timing.samples) < repeats:
        take_sample(call, timing)
        if after_each is not None:
            after_each()
        spent = time.perf_counter() - began
        if len(timing.samples) >= min(min_repeats, repeats) and spent + timing.samples[-1] * timing.number > budget:
            break
    return timing
