"""The GPU check script and its benchmark, exercised on the CPU (dry run): everything but the GPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.studies import gpu_bench
from fffcore.benchmarks import gpu_report
from fffcore.benchmarks.timing import Stopwatch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_script_parses() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    subprocess.run([bash, "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK), "gpu_check.sh must be executable"


def test_dry_run_measures_checks_and_writes_every_case(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    code = gpu_bench.main(["--dry-run", "--batches", "1,3", "--out", str(out), "--plot", str(tmp_path / "gpu.png")])
    report = read(out)
    if importlib.util.find_spec("matplotlib") is None:  # the plot is optional: said, not an error
        assert "matplotlib is not installed" in report["plot_skipped"]
    else:
        assert (tmp_path / "gpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["plot"].endswith("gpu.png")
    from benchmarks.studies.gpu_plot import series

    labels = [label for label, _, _ in series(report)]
    assert {"cupy FFF row-grouped, float32", "cupy FFF, bfloat16", "dense cuBLAS, bfloat16"} <= set(labels)
    assert code == 0, report
    assert report["mode"] == "dry-run" and report["layer"]["width"] == 768 and report["layer"]["depth"] == 11
    cases = {(r["dtype"], r["batch"]) for r in report["results"]}
    assert cases == {("float32", 1), ("float32", 3), ("bfloat16", 1), ("bfloat16", 3)}
    for result in report["results"]:
        assert result["errors"] == []
        assert result["fff_seconds"] > 0 and result["dense_seconds"] > 0
        assert result["speedup_vs_dense"] == pytest.approx(result["dense_seconds"] / result["fff_seconds"])
        assert result["check"]["passed"] and result["check"]["valid_path"]
        assert result["check"]["relative_error"] <= result["check"]["bound"]
        assert result["fff_grouped_seconds"] > 0 and result["grouped_same_bits"] is True
        assert result["fff_torch_seconds"] > 0
    assert set(report["grouped_crossover_batch"]) == {"float32", "float16"}
    bf16 = [r for r in report["results"] if r["dtype"] == "bfloat16"]
    assert all(r["fff_dtype"] == "float16" for r in bf16)  # said plainly: no bfloat16 arrays in numpy or cupy
    # and beside it the bfloat16 layer on raw 16-bit words of torch tensors, checked against the oracle
    assert all(r["fff_bfloat16_seconds"] > 0 and r["check_bfloat16"]["passed"] for r in bf16)
    assert all(r["speedup_bfloat16_vs_dense"] > 0 for r in bf16)
    sweep = report["warps_sweep"]
    assert [row["warps_per_block"] for row in sweep] == list(gpu_bench.WARPS_SWEEP)
    assert all(row["batch"] == 3 and row["fff_seconds"] > 0 for row in sweep)


def test_the_grouped_crossover_is_the_batch_from_which_grouping_stays_faster() -> None:
    def case(batch: int, warp: float, grouped: float) -> gpu_report.CaseResult:
        return gpu_report.CaseResult("float32", batch, "float32", fff_seconds=warp, fff_grouped_seconds=grouped)

    results = [case(1, 1.0, 2.0), case(128, 1.0, 0.9), case(4096, 1.0, 1.1), case(16384, 2.0, 1.0), case(65536, 8, 3)]
    assert gpu_report.grouped_crossover(results) == {"float32": 16384}
    assert gpu_report.grouped_crossover(results[:3]) == {"float32": None}
    assert gpu_report.grouped_crossover([gpu_report.CaseResult("float32", 1, "float32", fff_seconds=1.0)]) == {}


def test_a_failing_step_is_recorded_and_the_rest_still_runs(tmp_path: Path) -> None:
    broken_platform = gpu_bench.dry_run_platform()

    def broken_fff(params: object) -> object:
        raise RuntimeError("cudaErrorLaunchFailure: unspecified launch failure")

    broken = dataclasses.replace(broken_platform, make_fff=broken_fff)
    out = tmp_path / "results.json"
    log = tmp_path / "check_cupy.log"
    log.write_text("line 1\nFAIL  valid_paths\n", encoding="utf-8")
    code = gpu_bench.main(
        ["--batches", "2", "--dtypes", "float32", "--out", str(out), "--step", f"check_cupy=1:{log}"],
        platform_factory=lambda: broken,
    )
    report = read(out)
    assert code == 1
    (result,) = report["results"]
    assert result["fff_seconds"] is None and result["dense_seconds"] > 0  # dense still measured
    assert result["errors"][0].startswith("fff: RuntimeError: cudaErrorLaunchFailure")
    assert report["steps"] == [
        {"name": "check_cupy", "exit_code": 1, "status": "failed", "log_tail": "line 1\nFAIL  valid_paths"}
    ]


def test_no_platform_still_writes_a_report(tmp_path: Path) -> None:
    def no_gpu() -> gpu_bench.Platform:
        raise RuntimeError("torch sees no CUDA device")

    out = tmp_path / "results.json"
    assert gpu_bench.main(["--out", str(out)], platform_factory=no_gpu) == 1
    report = read(out)
    assert report["results"] == [] and report["errors"][0].startswith("platform: RuntimeError: torch sees no CUDA")
    assert report["target"]["by_dtype"] == {}


def test_the_target_is_judged_at_the_target_batch() -> None:
    fast = gpu_report.CaseResult("float32", gpu_bench.TARGET_BATCH, "float32", speedup_vs_dense=12.5)
    slow = gpu_report.CaseResult("bfloat16", gpu_bench.TARGET_BATCH, "float32", speedup_vs_dense=3.0)
    other = gpu_report.CaseResult("float32", 1, "float32", speedup_vs_dense=0.5)
    summary = gpu_bench.target_summary([fast, slow, other])
    assert summary["by_dtype"]["float32"]["met"] and not summary["by_dtype"]["bfloat16"]["met"]
    table = gpu_report.format_table([fast, slow, other])
    assert len(table.splitlines()) == 4 and "12.50" in table


def test_timing_takes_the_median_of_samples() -> None:
    ticks = iter(np.arange(0, 1000, 1.0))  # a clock that advances one second per reading
    stopwatch = Stopwatch(start=lambda: next(ticks), stop=lambda mark: next(ticks) - mark)
    seconds, first = gpu_bench.time_with(lambda x: x, [0, 1], stopwatch, samples=5)
    assert first == 1.0 and seconds == 1.0  # one call per sample (each "lasts" a second), read back exactly


def test_steps_map_exit_codes() -> None:
    assert gpu_bench.read_step("a=0:")["status"] == "passed"
    assert gpu_bench.read_step("a=124:")["status"] == "timed out"
    assert gpu_bench.read_step("a=2:/nonexistent/log")["log_tail"].startswith("(log unreadable")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_the_whole_script_in_dry_run_records_the_gpu_steps_as_failed(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        GPU_CHECK_DRY_RUN="1",
        GPU_CHECK_RESULTS_DIR=str(tmp_path),
        PYTHON=sys.executable,
        FFF_CHECK_EXAMPLES="1",
        GPU_CHECK_COPY_TO="",
        OUT="",
    )
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600, check=False)
    (results,) = tmp_path.glob("gpu_*.json")
    report = read(results)
    steps = {step["name"]: step for step in report["steps"]}
    assert set(steps) == {
        "backends",
        "check_cupy",
        "check_cupy_float16",
        "check_torch_cuda",
        "cuda_tests",
        "torch_module",
    }
    assert steps["cuda_tests"]["status"] == "passed", steps["cuda_tests"]  # the CUDA tests skip with a reason here
    assert steps["backends"]["status"] == "passed"
    if not _cupy_runs_here():
        for name in ("check_cupy", "check_cupy_float16"):
            # failed for the right reason: `fff check cupy` ran and said why cupy cannot run here
            assert steps[name]["status"] == "failed", steps[name]
            assert "backend 'cupy' is unavailable" in steps[name]["log_tail"], steps[name]
    if not _torch_cuda_runs_here():
        assert steps["torch_module"]["status"] == "failed" and "no CUDA device" in steps["torch_module"]["log_tail"]
        assert steps["check_torch_cuda"]["status"] == "failed", steps["check_torch_cuda"]
        assert "nothing can run on cuda here" in steps["check_torch_cuda"]["log_tail"], steps["check_torch_cuda"]
    else:
        assert steps["check_torch_cuda"]["status"] == "passed", steps["check_torch_cuda"]
    assert len(report["results"]) == 4, run.stdout + run.stderr  # the benchmark ran after the failed step
    assert "results:" in run.stdout
    # A dry run expects the GPU steps to fail; it exits 0 when the rest passed, so a rehearsal can pass.
    assert run.returncode == 0, run.stdout[-3000:]


def _cupy_runs_here() -> bool:
    from fffcore.backends.cupy.availability import cupy_availability

    return cupy_availability().available


def _torch_cuda_runs_here() -> bool:
    """Whether `fff check torch --device cuda` has a CUDA device to run on."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def test_fff_compare_prints_a_gpu_results_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fffcore.cli import main

    out = tmp_path / "results.json"
    assert gpu_bench.main(["--dry-run", "--batches", "1,3", "--dtypes", "float32", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["compare", "--gpu-results", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("GPU benchmark (dry-run, ")
    lines = [line for line in printed.splitlines() if line.startswith("float32 ")]
    assert [line.split()[1] for line in lines] == ["1", "3"] and all(line.endswith(" ok") for line in lines)
    assert "row-grouped kernels faster than warp-per-row, float32: " in printed
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    assert main(["compare", "--gpu-results", str(tmp_path / "broken.json")]) == 2
    assert "--gpu-results: cannot read" in capsys.readouterr().err


def test_an_interpreter_that_cannot_import_fffcore_stops_the_script_with_a_results_file(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    # An image whose Python lacks a dependency (pluggy here): the import check fails.
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'pluggy'\" >&2\nexit 1\n")
    broken.chmod(0o755)
    results = tmp_path / "results"
    env = {**os.environ, "PYTHON": str(broken), "GPU_CHECK_RESULTS_DIR": str(results)}
    env.pop("OUT", None)
    run = subprocess.run([bash, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1
    assert "cannot import fffcore" in run.stdout and "No module named 'pluggy'" in run.stdout
    assert "=== backends" not in run.stdout  # nothing else ran
    (written,) = results.glob("gpu_*.json")
    report = read(written)
    assert report["mode"] == "gpu" and "fffcore could not be imported" in report["errors"][0]
