"""The README's headline table, generated from a committed ``fff compare --json`` results file.

Run from the repository root::

    python -m benchmarks.studies.headline benchmarks/results/cpu-epyc-2cores.json

prints the markdown table; ``tests/docs/test_readme.py`` checks that the README holds exactly this
table for the file it names, so the headline cannot drift from the measurements.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fffcore.benchmarks.report import format_seconds, format_speedup

#: The dense width the headline compares against: BERT-base's feedforward.
HEADLINE_HIDDEN = 3072
#: FFF implementations in the headline, in this order, with their column titles.
COLUMNS = {
    "fff:numba": "`fff:numba`",
    "fff:torch": "`fff:torch`",
    "fff:reference": "`fff:reference`",
    "paper:torch": "paper's PyTorch FFF",
}


def headline_table(results: dict[str, Any]) -> str:
    """Markdown: per batch of the paper's shape, the best dense layer and each FFF implementation's
    time per call and speedup over it, and numba's share of the memory bandwidth."""
    rows = [r for r in results["results"] if r["family"] == "paper" and r["status"] == "ok"]
    batches = sorted({r["batch"] for r in rows})
    present = [name for name in COLUMNS if any(r["implementation"] == name for r in rows)]
    header = ["batch", f"best dense, hidden {HEADLINE_HIDDEN}", *(COLUMNS[name] for name in present)]
    header.append("`fff:numba` share of bandwidth")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for batch in batches:
        at_batch = {r["implementation"]: r for r in rows if r["batch"] == batch}
        dense = _best_dense(at_batch.values())
        cells = [str(batch), f"{format_seconds(dense['timing']['median_s'])} ({_dense_name(dense)})" if dense else "-"]
        for name in present:
            cells.append(_fff_cell(at_batch.get(name)))
        numba = at_batch.get("fff:numba")
        share = (numba or {}).get("roofline", {}).get("share") if numba else None
        cells.append("-" if share is None else f"{share:.0%}" + ("?" if share > 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best_dense(results: Any) -> dict[str, Any] | None:
    dense = [r for r in results if r["kind"] == "dense" and r["implementation"].endswith(f":{HEADLINE_HIDDEN}")]
    return min(dense, key=lambda r: r["timing"]["median_s"] / r["rows"], default=None)


def _dense_name(result: dict[str, Any]) -> str:
    library = result["implementation"].split(":")[1]
    return library.replace("-1thread", ", 1 thread")


def _fff_cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    time = format_seconds(result["timing"]["median_s"])
    rows = f" on {result['rows']} rows" if result["rows"] != result["batch"] else ""
    return f"{time}{rows} ({format_speedup(result['speedups'].get(f'dense{HEADLINE_HIDDEN}'))})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the README's headline table from an `fff compare --json` file.")
    parser.add_argument("results", type=Path, help="a JSON file written by `fff compare --json`")
    args = parser.parse_args(argv)
    print(headline_table(json.loads(args.results.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
