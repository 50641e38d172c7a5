"""Presenting a comparison: the table (like Table 2 of the paper) and the JSON record."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fffcore.benchmarks.cases import Shape
from fffcore.benchmarks.comparison import OK, WRONG, Result, shapes_of, speedups, suspect_ratios
from fffcore.benchmarks.roofline import probe_size

JSON_FORMAT = "fffcore-compare/1"


def three_digits(value: float) -> str:
    """``value`` with three significant digits and no exponent: 0.0123, 1.23, 12.3, 123, 1234."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def format_seconds(seconds: float) -> str:
    """``12.3 us``, ``4.56 ms``, ``1.20 s``: three significant digits in a fitting unit."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{three_digits(seconds / scale)} {unit}"
    return f"{three_digits(seconds / 1e-9)} ns"


def format_rate(per_second: float) -> str:
    """``1.23M``, ``45.6k``, ``789``."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if per_second >= scale:
            return f"{three_digits(per_second / scale)}{suffix}"
    return three_digits(per_second)


def format_speedup(value: float | None) -> str:
    return "-" if value is None else f"{three_digits(value)}x"


def format_table(results: Sequence[Result]) -> str:
    """One block per shape: time per call (median, IQR spread), rows/s, per-row speedups, check, notes."""
    blocks = [
        _format_block(shape, [r for r in results if r.case.shape == shape], results) for shape in shapes_of(results)
    ]
    return "\n\n".join(blocks)


def _format_block(shape: Shape, rows: Sequence[Result], everything: Sequence[Result]) -> str:
    limits = ", ".join(f"{h}/{shape.visited} = {format_speedup(shape.limit(h))}" for h in shape.dense_hidden)
    header = [
        "implementation",
        "input",
        "check",
        "rows",
        "time/call",
        "spread",
        "rows/s",
        *[f"vs dense {h}" for h in shape.dense_hidden],
        "vs reference",
        "GB/s",
        "GFLOP/s",
        "of bw",
    ]
    table = []
    notes = []
    for result in rows:
        if result.status not in (OK, WRONG):
            notes.append(f"{result.case.implementation}: {result.status}: {result.reason}")
            continue
        capped = result.rows < shape.batch
        rows_text = f"{result.rows}*" if capped else str(result.rows)
        if capped:
            notes.append(
                f"* {result.case.implementation} timed on the first {result.rows} of {shape.batch} rows; "
                "its rows/s and speedups are per row"
            )
        if result.status == WRONG:
            notes.append(f"{result.case.implementation}: WRONG, no time reported: {result.reason}")
            table.append([result.case.implementation, result.where, WRONG, rows_text] + ["-"] * (len(header) - 4))
            continue
        assert result.timing is not None
        ratios = speedups(everything, result)
        suspects = {entry["over"]: entry for entry in suspect_ratios(everything, result)}
        for entry in suspects.values():
            notes.append(
                f"? {result.case.implementation}: {format_speedup(entry['ratio'])} over {entry['over']} is above "
                f"the theoretical limit {format_speedup(entry['limit'])}: not a result to quote; likely cause: "
                f"{entry['likely_cause']}"
            )
        share = result.bandwidth_share
        if share is not None and share > 1:
            notes.append(
                f"? {result.case.implementation}: {100 * share:.0f}% of the measured bandwidth is impossible: the "
                "bandwidth probe was disturbed (another process held a core while it read); not a result to quote"
            )
        check = "ok" if result.check is not None else "n/a"
        table.append(
            [
                result.case.implementation,
                result.where,
                check,
                rows_text,
                format_seconds(result.timing.median),
                f"±{100 * result.timing.spread / 2:.0f}%",
                format_rate(result.rows_per_second),
                *[
                    format_speedup(ratios[f"dense{h}"]) + ("?" if f"dense{h}" in suspects else "")
                    for h in shape.dense_hidden
                ],
                format_speedup(ratios["reference"]),
                "-" if result.achieved_bandwidth is None else f"{result.achieved_bandwidth / 1e9:.1f}",
                "-" if result.achieved_flops is None else f"{result.achieved_flops / 1e9:.1f}",
                "-" if share is None else f"{100 * share:.0f}%" + ("?" if share > 1 else ""),
            ]
        )
    lines = [shape.describe(), f"theoretical limit (dense neurons / visited neurons): {limits}"]
    if table:
        widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
        lines.append(
            "  ".join(h.ljust(w) if i < 4 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))
        )
        for row in table:
            lines.append(
                "  ".join(
                    str(c).ljust(w) if i < 4 else str(c).rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
    lines.extend(dict.fromkeys(notes))
    return "\n".join(lines)


def legend(threads: dict[str, str]) -> str:
    """What the columns mean and how the run was pinned."""
    pinned = "; ".join(f"{pool}: {count}" for pool, count in threads.items())
    return (
        "time/call: median over the samples; spread: half the interquartile range, relative to the median; "
        "rows/s and 'vs' speedups per row, within this run ('?': above the theoretical limit, not a result; "
        "see the note); 'vs dense H' is over the fastest of the numpy and "
        "torch dense layers of H hidden neurons, each at one thread and at all; check 'ok': the output agrees "
        "with the float64 oracle within derived rounding bounds, 'n/a': a dense layer (another function); "
        "GB/s: the least a call must move (x, y and each visited weight row once) over its time; GFLOP/s: its "
        "least floating-point work (two per multiply-add of the dot products and the output sums) over its "
        "time; of bw: the GB/s over what this machine reads per second from a working set of the same size, "
        f"measured after the timings.\nthreads: {pinned}"
    )


def results_to_json(results: Sequence[Result], machine: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready record of the run: machine, settings, shapes (with limits) and one entry per case."""
    shapes = []
    for shape in shapes_of(results):
        entry = asdict(shape)
        entry.update(
            id=shape.id,
            neurons=shape.neurons,
            visited=shape.visited,
            limits={str(h): shape.limit(h) for h in shape.dense_hidden},
        )
        shapes.append(entry)
    entries = []
    for result in results:
        entry: dict[str, Any] = {
            "shape": result.case.shape.id,
            "family": result.case.shape.family,
            "implementation": result.case.implementation,
            "kind": result.kind,
            "status": result.status,
            "reason": result.reason,
            "rows": result.rows,
            "batch": result.case.shape.batch,
            "input": result.where,
            "version": result.version,
        }
        if result.timing is not None:
            q1, q3 = result.timing.quartiles
            entry["timing"] = {
                "median_s": result.timing.median,
                "q1_s": q1,
                "q3_s": q3,
                "samples_s": result.timing.samples,
                "calls_per_sample": result.timing.number,
                "first_call_s": result.timing.first_call,
            }
        if result.timed:
            entry["rows_per_second"] = result.rows_per_second
            entry["speedups"] = speedups(results, result)
            suspects = suspect_ratios(results, result)
            if suspects:
                entry["suspect"] = suspects
        if result.check is not None:
            entry["check"] = asdict(result.check)
        if result.traffic is not None:
            entry["roofline"] = {
                **asdict(result.traffic),
                "achieved_bytes_per_s": result.achieved_bandwidth,
                "achieved_flops_per_s": result.achieved_flops,
                "machine_read_bytes_per_s": None if result.bandwidth is None else result.bandwidth[0],
                "measured_with": None if result.bandwidth is None else result.bandwidth[1],
                "probe_bytes": probe_size(result.traffic.bytes),
                "share": result.bandwidth_share,
                "share_impossible": result.bandwidth_share is not None and result.bandwidth_share > 1,
            }
        entries.append(entry)
    return {"format": JSON_FORMAT, "machine": machine, "settings": settings, "shapes": shapes, "results": entries}


def write_json(path: str | Path, record: dict[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
