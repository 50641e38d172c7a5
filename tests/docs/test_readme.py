"""The README runs and says what was measured: its PyTorch example runs as written, its headline table is generated."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(name: str) -> str:
    """The fenced code between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in README.md."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- {name}:start -->\s*```\w*\n(.*?)```\s*<!-- {name}:end -->", text, re.S)
    assert found, f"README.md has no {name} block"
    return found.group(1)


def test_the_torch_example_runs_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch", reason="the example needs PyTorch: pip install 'fffcore[torch]'")
    code = readme_block("torch-example")
    here = os.getcwd()
    os.chdir(tmp_path)  # the example writes layer.pt and swapped.pt
    try:
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    finally:
        os.chdir(here)
    printed = capsys.readouterr().out
    import fffcore

    numba_here = any(row.name == "numba" and row.available for row in fffcore.list_backends())
    assert f"backend=None (automatic: {'numba' if numba_here else 'torch'})" in printed  # as the comment says
    assert "torch.Size([8, 64])" in printed
    assert "['1']" in printed
    assert (tmp_path / "layer.pt").is_file() and (tmp_path / "swapped.pt").is_file()


def test_the_headline_table_is_generated_from_the_results_file_it_names() -> None:
    from benchmarks.studies.headline import headline_table

    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- headline:start (\S+) -->\n(.*?)\n<!-- headline:end -->", text, re.S)
    assert found, "README.md has no headline table between <!-- headline:start FILE --> and <!-- headline:end -->"
    results = README.parent / found.group(1)
    expected = headline_table(json.loads(results.read_text(encoding="utf-8")))
    assert found.group(2).strip() == expected, f"regenerate: python -m benchmarks.studies.headline {found.group(1)}"
