"""The results file of the GPU benchmark study (benchmarks/studies/gpu_bench.py), read and printed.

``fff compare --gpu-results FILE`` and the study itself print a results file through these, so the
command needs no GPU, no cupy and none of the study's measuring code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fffcore.benchmarks.report import printable, read_json_file


@dataclass
class CaseResult:
    """One (dtype, batch) row of the results file; seconds are medians per call."""

    dtype: str
    batch: int
    fff_dtype: str
    fff_seconds: float | None = None
    fff_first_call_seconds: float | None = None
    dense_seconds: float | None = None
    dense_tf32_seconds: float | None = None
    paper_fff_seconds: float | None = None
    #: The row-grouped kernels (cupy), and whether their output has the warp-per-row kernel's bits.
    fff_grouped_seconds: float | None = None
    grouped_same_bits: bool | None = None
    #: Other kernel variants than these two, by name (e.g. "tiled"), and each one's check against the
    #: oracle with whether its output has the warp-per-row kernel's bits.
    variant_seconds: dict[str, float] = field(default_factory=dict)
    variant_checks: dict[str, Any] = field(default_factory=dict)
    #: fffcore's torch backend on the same tensors (bfloat16 rows: a bfloat16 layer).
    fff_torch_seconds: float | None = None
    #: The memory floor of the performance model (benchmarks/gpu_model.py) on the GPU measured, and the
    #: warp-per-row time over it (None where the model has no figures for the GPU).
    floor_seconds: float | None = None
    fff_over_floor: float | None = None
    #: Files of schema 1 only: on bfloat16 rows fff_seconds timed the float16 variant (fff_dtype says
    #: so), and these the bfloat16 kernels on torch tensors' raw words.
    fff_bfloat16_seconds: float | None = None
    speedup_bfloat16_vs_dense: float | None = None
    check_bfloat16: dict[str, Any] = field(default_factory=dict)
    speedup_vs_dense: float | None = None
    speedup_vs_dense_tf32: float | None = None
    fff_effective_gb_per_s: float | None = None
    fff_gflop_per_s: float | None = None
    check: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def read_case_results(report: dict[str, Any]) -> list[CaseResult]:
    """The ``results`` of a parsed results file, each row as a :class:`CaseResult` (fields this version
    does not know are left out, so files written by later versions still read); a ValueError naming the
    row and field when a row is not an object, lacks ``dtype``, ``batch`` or ``fff_dtype``, or has a field
    of the wrong type."""
    rows = report.get("results")
    if rows is None:
        return []
    _expect(isinstance(rows, list), "results", "an array", rows)
    kinds = typing.get_type_hints(CaseResult)
    required = [
        f.name
        for f in dataclasses.fields(CaseResult)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    results = []
    for index, row in enumerate(rows):
        where = f"results[{index}]"
        _expect(isinstance(row, dict), where, "an object", row)
        missing = [name for name in required if name not in row]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        known = {name: value for name, value in row.items() if name in kinds}
        for name, value in known.items():
            _check_type(value, kinds[name], f"{where}.{name}")
        results.append(CaseResult(**known))
    return results


def read_report(path: Path) -> dict[str, Any]:
    """A results file as written by the study: a JSON object whose fields that the table prints have the
    types the study writes (a ValueError saying which and naming the file otherwise). Files over
    :data:`~fffcore.benchmarks.report.MAX_FILE_BYTES` or nested deeper than ``MAX_NESTING`` are refused
    before they are parsed or walked."""
    report = read_json_file(path, "--gpu-results")
    try:
        _expect(isinstance(report, dict), "the top level", "an object", report)
        for name, kind in _REPORT_FIELDS.items():
            if name in report:
                _check_type(report[name], kind, name)
        for name in ("machine", "layer"):
            for key, kind in _NESTED_FIELDS[name].items():
                if isinstance(report.get(name), dict) and key in report[name]:
                    _check_type(report[name][key], kind, f"{name}.{key}")
        for index, step in enumerate(report.get("steps") or []):
            for key in ("name", "status"):
                if key in step:
                    _check_type(step[key], str | None, f"steps[{index}].{key}")
        read_case_results(report)
    except ValueError as error:
        raise ValueError(f"--gpu-results: {printable(str(path))}: {error}") from None
    return report


#: The top-level fields printed, with the types the study writes (absent fields are allowed: older files).
_REPORT_FIELDS: dict[str, Any] = {
    "mode": str | None,
    "created": str | None,
    "machine": dict[str, Any] | None,
    "layer": dict[str, Any] | None,
    "steps": list[dict[str, Any]] | None,
    "errors": list[str] | None,
    "results": list[dict[str, Any]] | None,
}
_NESTED_FIELDS: dict[str, dict[str, Any]] = {
    "machine": {"gpu": str | None},
    "layer": {"width": int | None, "depth": int | None, "dense_hidden": int | None},
}


def _expect(ok: bool, where: str, expected: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{where}: expected {expected}, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _check_type(value: Any, kind: Any, where: str) -> None:
    """A ValueError naming ``where`` unless ``value`` fits the annotation ``kind`` (str, int, float,
    bool, ``X | None``, ``list[X]``, ``dict[str, Any]``). Booleans are not numbers here, and a float
    field takes an integer (JSON writes 2.0 as 2 in some writers)."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None:
        _expect(type(None) in options, where, _describe(kind), value)
        return
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is list and isinstance(value, list):
            (item_kind,) = typing.get_args(option) or (Any,)
            for index, item in enumerate(value):
                _check_type(item, item_kind, f"{where}[{index}]")
            return
        if origin is dict and isinstance(value, dict):
            _, value_kind = typing.get_args(option) or (str, Any)
            if value_kind is not Any:
                for key, item in value.items():
                    _check_type(item, value_kind, f"{where}.{printable(str(key))}")
            return
        if (
            option is Any
            or (option is str and isinstance(value, str))
            or (option is bool and isinstance(value, bool))
            or (option is int and isinstance(value, int) and not isinstance(value, bool))
            or (option is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        ):
            return
    _expect(False, where, _describe(kind), value)


def _describe(kind: Any) -> str:
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    words = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", type(None): "null"}
    return " or ".join(words.get(o, "an array" if typing.get_origin(o) is list else "an object") for o in options)


def grouped_crossover(results: list[CaseResult]) -> dict[str, Any]:
    """Per FFF dtype with both variants timed, the smallest measured batch from which the row-grouped
    kernels were faster than the warp-per-row kernel at that batch and every larger one (None: at none)."""
    crossover: dict[str, Any] = {}
    for fff_dtype in sorted({r.fff_dtype for r in results}):
        timed = sorted(
            (r.batch, r.fff_grouped_seconds < r.fff_seconds)
            for r in results
            if r.fff_dtype == fff_dtype and r.fff_seconds and r.fff_grouped_seconds
        )
        if not timed:
            continue
        batch = None
        for measured, faster in reversed(timed):
            if not faster:
                break
            batch = measured
        crossover[fff_dtype] = batch
    return crossover


def format_table(results: list[CaseResult]) -> str:
    """A fixed-width table of the results, one line per case (text from the file with its control
    characters escaped)."""

    def ms(value: float | None) -> str:
        return f"{value * 1e3:10.4f}" if value is not None else f"{'-':>10}"

    lines = [
        f"{'dtype':<9} {'batch':>6} {'fff dtype':<9} {'fff ms':>10} {'dense ms':>10} {'tf32 ms':>10} "
        f"{'paper ms':>10} {'grouped ms':>10} {'tiled ms':>10} {'torch ms':>10} {'speedup':>8} {'vs tf32':>8} "
        f"{'fff GB/s':>9} {'x floor':>7} check",
    ]
    for r in results:
        speedup = f"{r.speedup_vs_dense:8.2f}" if r.speedup_vs_dense is not None else f"{'-':>8}"
        tf32 = f"{r.speedup_vs_dense_tf32:8.2f}" if r.speedup_vs_dense_tf32 is not None else f"{'-':>8}"
        bandwidth = f"{r.fff_effective_gb_per_s:9.1f}" if r.fff_effective_gb_per_s is not None else f"{'-':>9}"
        floor = f"{r.fff_over_floor:7.1f}" if r.fff_over_floor is not None else f"{'-':>7}"
        tiled = r.variant_seconds.get("tiled")
        check = "-" if not r.check else ("ok" if r.check.get("passed") else "FAILED")
        if r.errors:
            check += f" ({len(r.errors)} error{'s' if len(r.errors) > 1 else ''})"
        lines.append(
            f"{printable(r.dtype):<9} {r.batch:>6} {printable(r.fff_dtype):<9} "
            f"{ms(r.fff_seconds)} {ms(r.dense_seconds)} "
            f"{ms(r.dense_tf32_seconds)} {ms(r.paper_fff_seconds)} {ms(r.fff_grouped_seconds)} "
            f"{ms(tiled)} {ms(r.fff_torch_seconds)} {speedup} {tf32} "
            f"{bandwidth} {floor} {check}"
        )
    return "\n".join(lines)
