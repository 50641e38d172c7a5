"""The results file of the GPU benchmark study (benchmarks/studies/gpu_bench.py), read and printed.

``fff compare --gpu-results FILE`` and the study itself print a results file through these, so the
command needs no GPU, no cupy and none of the study's measuring code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    #: fffcore's torch backend on the same tensors (bfloat16 rows: a bfloat16 layer).
    fff_torch_seconds: float | None = None
    #: bfloat16 rows only: the bfloat16 kernels on torch tensors' raw words (cupy runtime), checked too.
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
    does not know are left out, so files written by later versions still read)."""
    names = {f.name for f in dataclasses.fields(CaseResult)}
    return [CaseResult(**{k: v for k, v in row.items() if k in names}) for row in report.get("results", [])]


def read_report(path: Path) -> dict[str, Any]:
    """A results file as written by the study: a JSON object (OSError, ValueError when it cannot be read)."""
    return json.loads(path.read_text(encoding="utf-8"))


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
    """A fixed-width table of the results, one line per case."""

    def ms(value: float | None) -> str:
        return f"{value * 1e3:10.4f}" if value is not None else f"{'-':>10}"

    lines = [
        f"{'dtype':<9} {'batch':>6} {'fff dtype':<9} {'fff ms':>10} {'dense ms':>10} {'tf32 ms':>10} "
        f"{'paper ms':>10} {'grouped ms':>10} {'bf16 ms':>10} {'torch ms':>10} {'speedup':>8} {'vs tf32':>8} "
        f"{'fff GB/s':>9} check",
    ]
    for r in results:
        speedup = f"{r.speedup_vs_dense:8.2f}" if r.speedup_vs_dense is not None else f"{'-':>8}"
        tf32 = f"{r.speedup_vs_dense_tf32:8.2f}" if r.speedup_vs_dense_tf32 is not None else f"{'-':>8}"
        bandwidth = f"{r.fff_effective_gb_per_s:9.1f}" if r.fff_effective_gb_per_s is not None else f"{'-':>9}"
        check = "-" if not r.check else ("ok" if r.check.get("passed") else "FAILED")
        if r.errors:
            check += f" ({len(r.errors)} error{'s' if len(r.errors) > 1 else ''})"
        lines.append(
            f"{r.dtype:<9} {r.batch:>6} {r.fff_dtype:<9} {ms(r.fff_seconds)} {ms(r.dense_seconds)} "
            f"{ms(r.dense_tf32_seconds)} {ms(r.paper_fff_seconds)} {ms(r.fff_grouped_seconds)} "
            f"{ms(r.fff_bfloat16_seconds)} {ms(r.fff_torch_seconds)} {speedup} {tf32} "
            f"{bandwidth} {check}"
        )
    return "\n".join(lines)
