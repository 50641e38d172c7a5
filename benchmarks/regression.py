"""``fff compare --compare PREVIOUS.json``: each FFF row against the same case of an earlier run.

The measure compared is each FFF row's speedup over the best dense layer of the same run, not its
time: both runs measure their own dense layers, so the ratio carries over between machines and
loads that shift every absolute time (these machines are shared and noisy), while a change in the
FFF code moves it. Times are shown beside it for reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fffcore.benchmarks.report import JSON_FORMAT, format_seconds, format_speedup


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
    """A results file of ``fff compare --json``; ValueError saying what is wrong with it otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"--compare: cannot read {path}: {error}") from error
    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
        raise ValueError(f"--compare: {path} is not an `fff compare --json` file (format {JSON_FORMAT})")
    return data


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
    source = (previous.get("machine") or {}).get("source", "unknown source")
    date = (previous.get("machine") or {}).get("date_utc", "unknown date")
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
