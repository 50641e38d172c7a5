"""Running the properties under Hypothesis and reporting, property by property.

Hypothesis is imported only inside :func:`run_property`, so this module (and
``fff check --help``) loads without it. Every run uses its own ``settings``
object (no global profile is touched): a fixed seed, no example database (so
nothing is written into the caller's directory), no deadline (first calls may
compile), quiet output; the minimal failing example is printed by us, as a
``Case`` that :func:`reproduce` replays.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fffcore.conformance.cases import Case
from fffcore.conformance.checks import PropertyFailure
from fffcore.conformance.properties import PROPERTIES, Property, get_property
from fffcore.conformance.target import Target, resolve_target

#: Arrays up to this many elements are printed in full in a failure report.
PRINTED_ELEMENTS = 64


@dataclass(frozen=True)
class PropertyResult:
    """The outcome of one property: ``status`` is "pass", "fail" or "skip"."""

    name: str
    status: str
    examples: int
    seconds: float
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass(frozen=True)
class SuiteReport:
    """Every property's result on one target."""

    target: Target
    seed: int
    max_examples: int
    results: tuple[PropertyResult, ...]

    @property
    def passed(self) -> bool:
        return all(result.status != "fail" for result in self.results)

    @property
    def failed(self) -> tuple[PropertyResult, ...]:
        return tuple(result for result in self.results if result.status == "fail")


def examples_for(prop: Property, max_examples: int) -> int:
    """A property's share of ``max_examples`` (the costly ones, like threads, run fewer)."""
    return max(1, round(max_examples * prop.budget))


def run_property(
    prop: Property, target: Target, *, max_examples: int, seed: int, thorough: bool = False
) -> PropertyResult:
    """Run one property on ``max_examples`` drawn cases (scaled by its budget), then its fixed cases;
    shrink and report a failure. ``thorough`` draws from the wider
    :data:`~fffcore.conformance.strategies.THOROUGH_SCOPE` and adds the fixed coverage cases."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as fix_seed

    from fffcore.conformance.strategies import DEFAULT_SCOPE, THOROUGH_SCOPE

    reason = prop.skip_reason(target)
    if reason:
        return PropertyResult(prop.name, "skip", 0, 0.0, reason)
    examples = examples_for(prop, max_examples)
    ran = 0

    @fix_seed(seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        verbosity=Verbosity.quiet,
        report_multiple_bugs=False,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
    )
    @given(prop.strategy(target, THOROUGH_SCOPE if thorough else DEFAULT_SCOPE))
    def property_holds(case: Case) -> None:
        nonlocal ran
        ran += 1
        try:
            prop.check(target, case)
        except PropertyFailure as failure:
            failure.case = case  # type: ignore[attr-defined]
            _drop_frames(failure)
            raise
        except Exception as error:
            failure = PropertyFailure(f"{type(error).__name__}: {error}")
            failure.case = case  # type: ignore[attr-defined]
            _drop_frames(error)
            raise failure from error

    start = time.perf_counter()
    try:
        property_holds()
    except PropertyFailure as failure:
        case = getattr(failure, "case", None)
        message = failure_report(
            prop, target, case, str(failure), seed=seed, max_examples=max_examples, thorough=thorough
        )
        return PropertyResult(prop.name, "fail", ran, time.perf_counter() - start, message)
    except Exception as error:  # Hypothesis' own complaints: flaky failures, unsatisfiable strategies
        message = f"{prop.name}: Hypothesis stopped with {type(error).__name__}: {error}"
        return PropertyResult(prop.name, "fail", ran, time.perf_counter() - start, message)
    # Then the fixed cases, in every run. After the drawn ones, so that a bug the drawn cases find
    # is reported on the small example Hypothesis shrinks it to; a fixed case fails only for a bug
    # that needs deep levels, a large batch or a combination the draws missed, and is reported as it is.
    from fffcore.conformance.fixed import fixed_cases

    for case in fixed_cases(target, prop.style, seed, thorough=thorough, backward=prop.backward):
        ran += 1
        try:
            prop.check(target, case)
        except Exception as error:
            text = str(error) if isinstance(error, PropertyFailure) else f"{type(error).__name__}: {error}"
            message = failure_report(prop, target, case, text, seed=seed, max_examples=max_examples, thorough=thorough)
            return PropertyResult(prop.name, "fail", ran, time.perf_counter() - start, message)
    return PropertyResult(prop.name, "pass", ran, time.perf_counter() - start)


def run_suite(
    backend: str,
    *,
    max_examples: int = 100,
    seed: int = 0,
    dtypes: Sequence[str] | None = None,
    device: str | None = None,
    properties: Sequence[str] | None = None,
    on_result: object = None,
    thorough: bool = False,
) -> SuiteReport:
    """Run every property (or those named) on one registered backend.

    Args:
        backend: the backend's registered name.
        max_examples: examples per property (some properties run a fraction, see :func:`examples_for`).
        seed: Hypothesis' seed; the same seed draws the same cases.
        dtypes: test only these parameter dtypes.
        device: the device native arrays are built on (default: cpu when declared).
        properties: names of the properties to run; default all.
        on_result: called with each :class:`PropertyResult` as soon as it is known (for live output).
        thorough: the release check of ``fff check --thorough``: wider shapes, larger batches, every
            activation with every dtype and array type (see :func:`run_property`).
    """
    target = resolve_target(backend, device=device, dtypes=tuple(dtypes) if dtypes else None)
    chosen = [get_property(name) for name in properties] if properties else list(PROPERTIES)
    results = []
    for prop in chosen:
        result = run_property(prop, target, max_examples=max_examples, seed=seed, thorough=thorough)
        results.append(result)
        if callable(on_result):
            on_result(result)
    return SuiteReport(target, seed, max_examples, tuple(results))


def reproduce(backend: str, property_name: str, case: Case) -> None:
    """Replay one case of one property on ``backend``; raises :class:`PropertyFailure` when it still fails."""
    target = resolve_target(backend, device=case.device if case.array_type != "numpy" else None)
    get_property(property_name).check(target, case)


def failure_report(
    prop: Property,
    target: Target,
    case: Case | None,
    message: str,
    *,
    seed: int,
    max_examples: int,
    thorough: bool = False,
) -> str:
    """The failure, the minimal example with its arrays when small, and how to reproduce it."""
    lines = [f"{prop.name}: {message}", f"  property: {prop.description}"]
    if case is not None:
        lines += ["  minimal failing example:", f"    {case!r}"]
        lines += [f"    {line}" for line in _describe_arrays(case)]
        lines += [
            "  reproduce:",
            '    python -c "from fffcore.conformance.runner import reproduce; from fffcore.conformance.cases import *; '
            f'reproduce({target.backend!r}, {prop.name!r}, {case!r})"',
        ]
    device = f" --device {target.device}" if target.device != "cpu" else ""
    mode = " --thorough" if thorough else ""
    lines.append(
        f"    fff check {target.backend} --seed {seed} --max-examples {max_examples}{device}{mode}"
        f" --property {prop.name}"
    )
    return "\n".join(lines)


def _describe_arrays(case: Case) -> list[str]:
    try:
        built = case.build()
    except Exception as error:  # describing must never hide the failure itself
        return [f"(could not rebuild the arrays: {error})"]
    params = built.oracle_params
    shown = [("x", built.oracle_x.reshape((*case.input.leading, case.layer.d_in)))]
    shown += [("w_in", params.w_in), ("b_in", params.b_in), ("w_out", params.w_out)]
    lines = []
    for name, array in shown:
        if array is None:
            continue
        note = " (as the backend sees it, rounded to the layer's dtype)" if name == "x" else ""
        if array.size <= PRINTED_ELEMENTS:
            text = np.array2string(np.asarray(array), precision=17, separator=", ", max_line_width=100)
            text = text.replace("\n", "\n      ")
            lines.append(f"{name} {tuple(array.shape)}{note} = {text}")
        else:
            lines.append(f"{name} {tuple(array.shape)}{note}: {array.size} values, rebuilt by the case above")
    return lines


def _drop_frames(error: BaseException | None) -> None:
    """Let go of the local variables of the finished frames behind ``error`` and the errors it
    arose from (``__context__``, ``__cause__``). Hypothesis keeps each failing example's error on
    records that only a full garbage collection frees; through its frames, a large-batch case kept
    its arrays alive, tens of megabytes per failing example. The report needs only the message
    and the case."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
