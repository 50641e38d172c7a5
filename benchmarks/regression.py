"""``fff compare --compare PREVIOUS.json``: each FFF row against the same case of an earlier run.

The measure compared is each FFF row's speedup over the best dense layer of the same run, not its
time: both runs measure their own dense layers, so the ratio carries over between machines and
loads that shift every absolute time (these machines are shared and noisy), while a change in the
FFF code moves it. Times are shown beside it for reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fffcore.benchmarks.report import JSON_FORMAT, format_seconds, format_speedup, printable, read_json_file


@dataclass(frozen=True)
class Change:
    """One FFF case in both runs: its speedups over the best dense layer and its times per call."""

    shape: str
    implementation: str
    over: str
    before: float
    after: float
    seconds_before: float
    seconds_after: float

    @property
    def relative(self) -> float:
        """The speedup's relative change: -0.1 is 10% slower relative to the dense layer."""
        return self.after / self.before - 1


def read_results(path: str | Path) -> dict[str, Any]:
    """A results file of ``fff compare --json``, checked before any benchmark runs: at most 16 MiB, nested
    at most 32 levels, an object of this format whose every field the comparison reads has the type
    ``fff compare --json`` writes. A ValueError naming the file and what is wrong with it otherwise."""
    data = read_json_file(path, "--compare")
    shown = printable(str(path))
    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
        raise ValueError(f"--compare: {shown} is not an `fff compare --json` file (format {JSON_FORMAT})")
    try:
        _check_results(data)
    except ValueError as error:
        raise ValueError(f"--compare: {shown} is not a valid `fff compare --json` file: {error}") from None
    return data


def _check_results(data: dict[str, Any]) -> None:
    """A ValueError naming the first field of ``data`` that :func:`changes` and :func:`report` read with
    the wrong type: ``results`` an array of objects with string ``shape`` and ``implementation``;
    ``speedups`` an object of positive finite numbers or nulls; beside speedups, ``timing.median_s`` a
    finite number >= 0; ``machine`` an object with string ``source`` and ``date_utc``."""
    machine = data.get("machine")
    if machine is not None:
        _expect(isinstance(machine, dict), "machine", "an object", machine)
        for key in ("source", "date_utc"):
            if machine.get(key) is not None:
                _expect(isinstance(machine[key], str), f"machine.{key}", "a string", machine[key])
    results = data.get("results")
    if results is None:
        return
    _expect(isinstance(results, list), "results", "an array", results)
    for index, entry in enumerate(results):
        where = f"results[{index}]"
        _expect(isinstance(entry, dict), where, "an object", entry)
        for key in ("shape", "implementation"):
            _expect(isinstance(entry.get(key), str), f"{where}.{key}", "a string", entry.get(key))
        if entry.get("kind") is not None:
            _expect(isinstance(entry["kind"], str), f"{where}.kind", "a string", entry["kind"])
        speedups = entry.get("speedups")
        if not speedups:
            continue
        _expect(isinstance(speedups, dict), f"{where}.speedups", "an object", speedups)
        for over, value in speedups.items():
            if value is not None:
                _expect(_number(value) and value > 0, f"{where}.speedups.{over}", "a positive number or null", value)
        timing = entry.get("timing")
        _expect(isinstance(timing, dict), f"{where}.timing", "an object (beside speedups)", timing)
        median = timing.get("median_s")
        _expect(_number(median) and median >= 0, f"{where}.timing.median_s", "a number of seconds >= 0", median)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _expect(ok: bool, where: str, expected: str, value: Any) -> None:
    if not ok:
        got = "missing" if value is None else printable(repr(value)[:40])
        raise ValueError(f"{printable(where)}: expected {expected}, got {got}")


def changes(previous: dict[str, Any], current: dict[str, Any]) -> list[Change]:
    """Every timed FFF case of ``current`` that ``previous`` also timed, with a dense speedup in both."""
    before = {(r["shape"], r["implementation"]): r for r in previous.get("results", []) if r.get("speedups")}
    found = []
    for result in current.get("results", []):
        if result.get("kind") != "fff" or not result.get("speedups"):
            continue
        old = before.get((result["shape"], result["implementation"]))
        if old is None:
            continue
        for over, after in result["speedups"].items():
            if over.startswith("dense") and after and old["speedups"].get(over):
                found.append(
                    Change(
                        result["shape"],
                        result["implementation"],
                        over,
                        old["speedups"][over],
                        after,
                        old["timing"]["median_s"],
                        result["timing"]["median_s"],
                    )
                )
                break  # the first dense width: the one the table leads with
    return found


def report(found: list[Change], previous: dict[str, Any], threshold: float | None) -> tuple[list[str], list[Change]]:
    """Lines describing every change, and the regressions: speedups that fell by more than ``threshold``."""
    source = printable((previous.get("machine") or {}).get("source") or "unknown source")
    date = printable((previous.get("machine") or {}).get("date_utc") or "unknown date")
    lines = [f"compared with an earlier run ({source}, {date}): speedup over the best dense layer, before -> now"]
    regressions = [c for c in found if threshold is not None and c.relative < -threshold]
    for change in found:
        flag = "  REGRESSION" if change in regressions else ""
        lines.append(
            f"  {change.implementation} {change.shape} vs {change.over}: {format_speedup(change.before)} -> "
            f"{format_speedup(change.after)} ({change.relative:+.0%}); time {format_seconds(change.seconds_before)} "
            f"-> {format_seconds(change.seconds_after)}{flag}"
        )
    if not found:
        lines.append("  no FFF case was timed in both runs")
    return lines, regressions


def parse_threshold(text: str) -> float:
    """``"10%"`` or ``"10"`` -> 0.10; ValueError naming the option otherwise."""
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError as error:
        raise ValueError(f"--fail-on-regression: expected a percentage such as 10%, got {text!r}") from error
    if not 0 < value < 100:
        raise ValueError(f"--fail-on-regression: expected a percentage between 0 and 100, got {text!r}")
    return value / 100
