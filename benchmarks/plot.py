"""The depth plot: time per call against tree depth, FFF implementations beside dense layers of equal width.

A dense layer with as many neurons as a depth-D tree (2**(D+1) - 1) costs
twice as much per extra level; an FFF row visits D + 1 of them. On a log time
axis the dense lines climb steadily (about 2x per level) while the FFF lines
climb far less (their work grows linearly with depth, plus per-level overheads
that some implementations pay at every level): the exponential gap the paper is
about.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fffcore.benchmarks.comparison import Result

#: Line styles by kind: FFF implementations solid, the paper's FFF dash-dotted, dense layers dashed.
STYLES = {"fff": "-", "paper": "-.", "dense": "--"}


def depth_results(results: Sequence[Result]) -> list[Result]:
    return [r for r in results if r.case.shape.family == "depth" and r.timed]


def depth_lines(
    timed: Sequence[Result],
) -> tuple[dict[str, list[tuple[int, float, float, float]]], dict[str, str]]:
    """Per plotted line, its points ``(depth, median, first quartile, third quartile)`` in µs per row,
    sorted by depth, and each line's kind."""
    lines: dict[str, list[tuple[int, float, float, float]]] = {}
    kinds: dict[str, str] = {}
    for result in timed:
        implementation = result.case.implementation
        # dense:<library>:<hidden>: the hidden width changes with depth, so one line per library.
        if result.kind == "dense":
            implementation = implementation.rsplit(":", 1)[0] + " (equal width)"
        assert result.timing is not None
        q1, q3 = result.timing.quartiles
        per_row = 1e6 / result.rows  # seconds per call -> microseconds per row
        point = (result.case.shape.depth, result.seconds_per_row * 1e6, q1 * per_row, q3 * per_row)
        lines.setdefault(implementation, []).append(point)
        kinds[implementation] = result.kind

    for points in lines.values():
        points.sort()
    return lines, kinds


def plot_depth(results: Sequence[Result], path: str | Path, title_note: str = "") -> None:
    """Write a PNG of median time per row against depth for every timed implementation of the depth sweep.

    Raises:
        ValueError: when ``results`` hold no timed depth-sweep case.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    timed = depth_results(results)
    if not timed:
        raise ValueError("results: no timed case of the depth sweep to plot (run with the 'depth' shapes)")
    shape = timed[0].case.shape
    lines, kinds = depth_lines(timed)

    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    for implementation, points in lines.items():
        depths, micros, lows, highs = zip(*points, strict=True)
        style = STYLES.get(kinds[implementation], "-")
        (line,) = axes.plot(depths, micros, style, marker="o", label=implementation)
        # The middle half of the samples: the spread the table prints, as a band.
        axes.fill_between(depths, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_yscale("log")
    axes.set_xlabel("tree depth D (dense layers: 2^(D+1) - 1 neurons)")
    axes.set_ylabel("time per row (µs, log scale; band: middle half of the samples)")
    axes.set_xticks(sorted({point[0] for points in lines.values() for point in points}))
    title = f"FFF vs dense feedforward, width {shape.d_in}, batch {shape.batch}, {shape.dtype}"
    axes.set_title(title + (f"\n{title_note}" if title_note else ""), fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target)
    plt.close(figure)
