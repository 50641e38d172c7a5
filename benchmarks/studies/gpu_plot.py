"""The GPU plot: time per call against batch size, each FFF implementation beside the dense layers.

Drawn from a ``benchmarks/studies/gpu_bench.py`` results file (``gpu_bench --plot PATH`` draws it after
the run, ``python -m benchmarks.studies.gpu_plot RESULTS.json PLOT.png`` from a file). Both axes
are logarithmic; dense layers are dashed, FFF implementations solid, the paper's FFF dash-dotted.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: (results field, label, line style) for each dtype's rows, in legend order; "a.b" is field b of object a.
#: "{fff_dtype}" in a label is replaced by the rows' fff_dtype (files of schema 1 timed the float16
#: variant on bfloat16 rows, and the bfloat16 kernels in fff_bfloat16_seconds).
SERIES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "float32": (
        ("fff_seconds", "cupy FFF, float32", "-"),
        ("fff_grouped_seconds", "cupy FFF row-grouped, float32", "-"),
        ("variant_seconds.tiled", "cupy FFF tiled, float32", "-"),
        ("fff_torch_seconds", "torch backend FFF, float32", "-"),
        ("paper_fff_seconds", "paper's FFF (gather + bmm), float32", "-."),
        ("dense_seconds", "dense cuBLAS, float32", "--"),
        ("dense_tf32_seconds", "dense cuBLAS, TF32", "--"),
    ),
    "bfloat16": (
        ("fff_bfloat16_seconds", "cupy FFF, bfloat16", "-"),
        ("fff_seconds", "cupy FFF, {fff_dtype} kernels", "-"),
        ("fff_grouped_seconds", "cupy FFF row-grouped, {fff_dtype} kernels", "-"),
        ("variant_seconds.tiled", "cupy FFF tiled, {fff_dtype} kernels", "-"),
        ("fff_torch_seconds", "torch backend FFF, bfloat16", "-"),
        ("dense_seconds", "dense cuBLAS, bfloat16", "--"),
    ),
    "float16": (
        ("fff_seconds", "cupy FFF, float16", "-"),
        ("fff_grouped_seconds", "cupy FFF row-grouped, float16", "-"),
        ("variant_seconds.tiled", "cupy FFF tiled, float16", "-"),
        ("dense_seconds", "dense cuBLAS, float16", "--"),
    ),
}


def _field(row: dict[str, Any], path: str) -> Any:
    """``row[a][b]`` for ``"a.b"``, ``row[a]`` for ``"a"``; None where missing."""
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def series(report: dict[str, Any]) -> list[tuple[str, str, list[tuple[int, float]]]]:
    """(label, style, [(batch, seconds)]) for every measured series of ``report``, in legend order."""
    found = []
    for dtype, fields in SERIES.items():
        rows = sorted((r for r in report.get("results", []) if r.get("dtype") == dtype), key=lambda r: r["batch"])
        fff_dtype = next((str(r.get("fff_dtype")) for r in rows), dtype)
        for field, label, style in fields:
            points = [(int(r["batch"]), float(_field(r, field))) for r in rows if _field(r, field)]
            if points:
                found.append((label.replace("{fff_dtype}", fff_dtype), style, points))
    return found


def plot_gpu(report: dict[str, Any], path: str | Path) -> None:
    """Write a PNG of time per call against batch for every measured series.

    Raises:
        ValueError: when ``report`` holds no timed case.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    lines = series(report)
    if not lines:
        raise ValueError("report: no timed case to plot")
    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    for label, style, points in lines:
        batches, seconds = zip(*points, strict=True)
        axes.plot(batches, [s * 1e3 for s in seconds], style, marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("batch (rows per call)")
    axes.set_ylabel("time per call (ms, log scale)")
    layer = report.get("layer", {})
    machine = report.get("machine") or {}
    axes.set_title(
        f"FFF vs dense on {machine.get('gpu') or 'no GPU (dry run)'}: width {layer.get('width')}, "
        f"depth {layer.get('depth')}, dense hidden {layer.get('dense_hidden')}",
        fontsize=10,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot a GPU benchmark results file.")
    parser.add_argument("results", type=Path, help="a JSON file written by benchmarks/studies/gpu_bench.py")
    parser.add_argument("plot", type=Path, help="the PNG to write")
    arguments = parser.parse_args(argv)
    plot_gpu(json.loads(arguments.results.read_text(encoding="utf-8")), arguments.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
