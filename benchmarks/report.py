"""Presenting a comparison: the table (like Table 2 of the paper) and the JSON record."""

from __future__ import annotations

import json
import math
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fffcore.benchmarks.cases import Shape
from fffcore.benchmarks.comparison import (
    OK,
    WRONG,
    Result,
    behind_under_load,
    shapes_of,
    speedups,
    suspect_ratios,
)
from fffcore.benchmarks.roofline import probe_size
from fffcore.benchmarks.timing import Timing
from fffcore.files import write_atomically

JSON_FORMAT = "fffcore-compare/1"
#: The largest results file ``fff compare`` reads (``--compare``, ``--gpu-results``): 16 MiB. Its own
#: ``--json`` of every family and batch is under 1 MiB; parsing takes about ten times a file's size in
#: memory, so a larger file is refused (checked with ``os.stat`` before a byte is read), not loaded.
MAX_FILE_BYTES = 16 * 1024 * 1024
#: The deepest nesting of arrays and objects accepted in a results file (theirs is 4 or 5 levels).
MAX_NESTING = 32


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


def format_spread(timing: Timing) -> str:
    """Where the middle half of the samples lies around their median: ``-2%/+3%``; an upper quartile
    twice the median or more as a factor, ``-5%/x3.4``, which reads better than ``+240%``."""
    median = timing.median
    if median <= 0:
        return "-"
    q1, q3 = timing.quartiles
    upper = q3 / median
    high = f"x{upper:.1f}" if upper >= 2 else f"+{100 * (upper - 1):.0f}%"
    return f"-{100 * (1 - q1 / median):.0f}%/{high}"


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
    impossible_shares: list[str] = []
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
            impossible_shares.append(result.case.implementation)
        check = "ok" if result.check is not None else "n/a"
        table.append(
            [
                result.case.implementation,
                result.where,
                check,
                rows_text,
                format_seconds(result.timing.median),
                format_spread(result.timing),
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
    if impossible_shares:
        notes.append(
            f"? of bw above 100% ({', '.join(impossible_shares)}): the bandwidth probe ran slow (other processes "
            "held a core while it read); not a result to quote"
        )
    lines.extend(dict.fromkeys(notes))
    return "\n".join(lines)


#: The legend's entries: a column (or mark) and what it means, each wrapped on its own.
LEGEND = (
    ("time/call", "median; spread: the quartiles around it (xN: N times the median)"),
    (
        "vs",
        "speedup per row; 'vs dense H': over the best dense layer of H neurons (numpy, torch; 1 thread, all)",
    ),
    ("check", "ok: equals the float64 oracle within rounding bounds; n/a: a dense layer"),
    ("GB/s", "the least bytes a call must move (x, y, visited weights once), per second"),
    ("GFLOP/s", "the least floating-point work of a call, per second"),
    ("of bw", "the GB/s over this machine's read rate from a working set of that size"),
    ("?", "impossible (over the theoretical limit, or of bw over 100%): not a result; see its note"),
)
#: Width of the legend where the terminal's is unknown (a log, a pipe), and the widest it gets.
LEGEND_COLUMNS = 100


def legend(threads: dict[str, str], columns: int | None = None) -> str:
    """What the columns mean and how the run was pinned, wrapped at ``columns`` (the terminal's width,
    at most :data:`LEGEND_COLUMNS`) with each meaning indented under the next."""
    import shutil
    import textwrap

    width = columns or min(LEGEND_COLUMNS, shutil.get_terminal_size((LEGEND_COLUMNS, 24)).columns)
    entries = [*LEGEND, ("threads", "; ".join(f"{pool}: {count}" for pool, count in threads.items()))]
    indent = 2 + max(len(name) for name, _ in entries)
    lines = []
    for name, meaning in entries:
        lines.extend(
            textwrap.wrap(
                meaning,
                width=max(width, indent + 20),
                initial_indent=name.ljust(indent),
                subsequent_indent=" " * indent,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)


def load_warning(results: Sequence[Result], cores: int) -> str | None:
    """One line naming the FFF rows that fell behind dense while other processes held cores, or None."""
    behind = behind_under_load(results)
    if not behind:
        return None
    busiest = max(r.others_cores or 0.0 for r in behind)
    where = ", ".join(f"{r.case.implementation} at {r.case.shape.batch} rows" for r in behind)
    return (
        f"warning: {where} fell behind dense while other processes held up to {busiest:.1f} of {cores} cores: "
        "those times show the machine's load, not the backend; rerun on an idle machine"
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
        if result.others_cores is not None:
            entry["others_cores"] = result.others_cores
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
    """Write ``record`` to ``path`` whole or not at all: into a file beside it, then renamed over it, so a
    full disk or an interruption never leaves a truncated file (or an earlier run's file half replaced)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, (json.dumps(record, indent=2) + "\n").encode("utf-8"))


def read_json_file(path: str | Path, option: str, max_bytes: int | None = None) -> Any:
    """The parsed JSON of ``path``, read only if it is at most ``max_bytes`` (default
    :data:`MAX_FILE_BYTES`) and nested at most :data:`MAX_NESTING` levels; otherwise a one-line
    ValueError naming ``option`` and the file.

    The size is checked with ``os.stat`` before reading, and the read stops one byte past the limit, so
    neither a huge file nor one that grows (or a device such as ``/dev/zero``) is loaded into memory.
    """
    shown = printable(str(path))
    max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            raise ValueError(f"{option}: {shown} is {size:,} bytes, over the {_mib(max_bytes)} limit on results files")
        with open(path, "rb") as file:
            raw = file.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise ValueError(f"{option}: {shown} is over the {_mib(max_bytes)} limit on results files")
        data = json.loads(raw.decode("utf-8"))
    except OSError as error:
        raise ValueError(f"{option}: cannot read {shown}: {printable(error.strerror or str(error))}") from None
    except RecursionError:
        raise ValueError(f"{option}: {shown} is nested deeper than {MAX_NESTING} levels") from None
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{option}: cannot read {shown}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{option}: cannot read {shown}: not JSON: {error}") from None
    if _nesting(data) > MAX_NESTING:
        raise ValueError(f"{option}: {shown} is nested deeper than {MAX_NESTING} levels")
    return data


def _mib(size: int) -> str:
    return f"{size // 2**20} MiB" if size % 2**20 == 0 else f"{size:,}-byte"


def _nesting(value: Any) -> int:
    """How many arrays and objects deep ``value`` goes (0 for a number or string), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_NESTING:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


#: Characters shown as themselves even though they format text: bidirectional overrides and isolates
#: are not among them (they reorder what a terminal shows), so they are replaced like control characters.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def printable(text: Any, keep: str = "") -> str:
    """``text`` (made a string) safe to print on a terminal: every control character (ESC, carriage
    return, backspace, DEL, the C1 range, bidirectional overrides) other than those in ``keep`` (say
    ``"\\n\\t"``) is replaced by a visible escape such as ``\\x1b``, so text read from a file can neither
    move the cursor, recolour, retitle or clear the terminal nor hide what it says."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(
        char
        if char in keep or not (unicodedata.category(char) == "Cc" or char in _BIDI_CONTROLS)
        else (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
        for char in text
    )
