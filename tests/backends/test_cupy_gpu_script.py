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
    assert {
        "cupy FFF row-grouped, float32",
        "cupy FFF, bfloat16 kernels",
        "dense cuBLAS, bfloat16",
        "cupy FFF, float16",
        "dense cuBLAS, float16",
    } <= set(labels)
    assert code == 0, report
    assert report["schema"] == 2 and report["mode"] == "dry-run"
    assert report["layer"]["width"] == 768 and report["layer"]["depth"] == 11
    cases = {(r["dtype"], r["batch"]) for r in report["results"]}
    assert cases == {(dtype, batch) for dtype in ("float32", "bfloat16", "float16") for batch in (1, 3)}
    for result in report["results"]:
        assert result["errors"] == []
        assert result["fff_dtype"] == result["dtype"]  # each dtype timed on its own kernels
        assert result["fff_seconds"] > 0 and result["dense_seconds"] > 0
        assert result["speedup_vs_dense"] == pytest.approx(result["dense_seconds"] / result["fff_seconds"])
        assert result["check"]["passed"] and result["check"]["valid_path"]
        assert result["check"]["relative_error"] <= result["check"]["bound"]
        assert result["fff_grouped_seconds"] > 0 and result["grouped_same_bits"] is True
        assert result["floor_seconds"] is None  # no GPU, no floor
        for variant, seconds in result["variant_seconds"].items():
            assert seconds > 0 and result["variant_checks"][variant]["passed"], variant
        if result["dtype"] != "float16":
            assert result["fff_torch_seconds"] > 0
    assert set(report["grouped_crossover_batch"]) == {"float32", "bfloat16", "float16"}
    sweep = report["warps_sweep"]
    assert [row["warps_per_block"] for row in sweep] == list(gpu_bench.WARPS_SWEEP)
    assert all(row["batch"] == 3 and row["fff_seconds"] > 0 for row in sweep)

    small = {(row["dtype"], row["batch"]): row for row in report["small_batches"]}
    assert set(small) == {("float32", 1), ("float32", 128), ("bfloat16", 1), ("bfloat16", 128)}
    for row in small.values():
        assert row["errors"] == [] and row["fff_seconds"] > 0 and row["dense_seconds"] > 0
        assert row["compiled_matches_eager"] is True and row["fff_compiled_seconds"] > 0
        assert row["kernel_launches"] is None and "need a CUDA device" in row["skipped"][0]
    training = {entry["dtype"]: entry for entry in report["training"]}
    assert set(training) == set(gpu_bench.TRAINING_DTYPES)
    for entry in training.values():
        assert entry["errors"] == [] and entry["batch"] == gpu_bench.DRY_RUN_TRAINING_BATCH
        assert entry["fff_step_seconds"] == min(entry["fff_step_seconds_by_backend"].values())
        assert entry["speedup_vs_masked"] == pytest.approx(entry["masked_step_seconds"] / entry["fff_step_seconds"])
    judged = {target["target"]: target for target in report["targets"]}
    assert judged["float32 at batch 16384: times TF32 dense"]["met"] is None  # not measured in a dry run
    assert (
        judged["float32 at batch 1 from torch (numba): times dense"]["value"]
        == small[("float32", 1)]["speedup_vs_dense"]
    )


def test_the_grouped_crossover_is_the_batch_from_which_grouping_stays_faster() -> None:
    def case(batch: int, warp: float, grouped: float) -> gpu_report.CaseResult:
        return gpu_report.CaseResult("float32", batch, "float32", fff_seconds=warp, fff_grouped_seconds=grouped)

    results = [case(1, 1.0, 2.0), case(128, 1.0, 0.9), case(4096, 1.0, 1.1), case(16384, 2.0, 1.0), case(65536, 8, 3)]
    assert gpu_report.grouped_crossover(results) == {"float32": 16384}
    assert gpu_report.grouped_crossover(results[:3]) == {"float32": None}
    assert gpu_report.grouped_crossover([gpu_report.CaseResult("float32", 1, "float32", fff_seconds=1.0)]) == {}


def test_a_failing_step_is_recorded_and_the_rest_still_runs(tmp_path: Path) -> None:
    broken_platform = gpu_bench.dry_run_platform()

    def broken_fff(layer: object, variant: object, warps: object) -> object:
        raise RuntimeError("cudaErrorLaunchFailure: unspecified launch failure")

    broken = dataclasses.replace(broken_platform, make_fff=broken_fff)
    out = tmp_path / "results.json"
    log = tmp_path / "check_cupy.log"
    log.write_text("line 1\nFAIL  valid_paths\n", encoding="utf-8")
    code = gpu_bench.main(
        ["--batches", "2", "--dtypes", "float32", "--out", str(out), "--step", f"check_cupy=1:{log}"]
        + ["--no-small-batches", "--no-training"],
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
    assert report["targets"] and all(target["met"] is None for target in report["targets"])


def test_the_targets_are_judged_at_the_target_batch_on_the_fastest_variant() -> None:
    batch = gpu_bench.TARGET_BATCH
    passed, failed = {"passed": True}, {"passed": False}
    float32 = gpu_report.CaseResult(
        "float32", batch, "float32", fff_seconds=100e-6, dense_tf32_seconds=600e-6, check=passed
    )
    float32.variant_seconds, float32.variant_checks = {"tiled": 60e-6}, {"tiled": passed}
    bf16 = gpu_report.CaseResult(
        "bfloat16", batch, "bfloat16", fff_seconds=40e-6, fff_grouped_seconds=30e-6, dense_seconds=288e-6, check=passed
    )
    # The fastest variant's output failed its check: it does not count.
    bf16.variant_seconds, bf16.variant_checks = {"tiled": 10e-6}, {"row_grouped": passed, "tiled": failed}
    bf16.floor_seconds = 13e-6
    other = gpu_report.CaseResult("float16", 1, "float16", fff_seconds=1e-6, dense_seconds=100e-6, check=passed)
    training = [
        {"dtype": "bfloat16", "batch": gpu_bench.TRAINING_BATCH, "speedup_vs_dense": 6.0, "speedup_vs_masked": 12.0}
    ]
    small = [
        {"dtype": "float32", "batch": 1, "backend": "cupy", "speedup_vs_dense": 5.0, "kernel_launches": 2.0},
        {"dtype": "bfloat16", "batch": 1, "backend": "torch", "speedup_vs_dense": 2.0, "kernel_launches": 30.0},
    ]
    judged = {t["target"]: t for t in gpu_bench.target_summary([float32, bf16, other], small, training)}
    tf32 = judged[f"float32 at batch {batch}: times TF32 dense"]
    assert tf32["value"] == pytest.approx(10.0) and tf32["met"] and tf32["detail"] == "tiled"
    dense = judged[f"bfloat16 at batch {batch}: times bfloat16 dense"]
    assert dense["value"] == pytest.approx(9.6) and dense["met"] and dense["detail"] == "row_grouped"
    floor = judged[f"bfloat16 at batch {batch}: times the memory floor"]
    assert floor["value"] == pytest.approx(30 / 13) and floor["met"]
    assert judged[f"float16 at batch {batch}: times float16 dense"]["met"] is None  # batch 1 is not the target's
    assert judged["float32 at batch 1 from torch (cupy): times dense"]["met"] is True
    assert judged["float32 at batch 1 from torch (cupy): kernel launches per call"]["met"] is False
    assert judged["bfloat16 at batch 1 from torch (torch): times dense"]["met"] is False
    assert "bfloat16 at batch 1 from torch (torch): kernel launches per call" not in judged  # cupy's promise only
    prefix = f"training step, bfloat16, batch {gpu_bench.TRAINING_BATCH}: speedup vs "
    assert judged[prefix + "dense"]["met"] is True and judged[prefix + "masked"]["met"] is False
    table = gpu_report.format_table([float32, bf16, other])
    assert len(table.splitlines()) == 4 and "0.0600" in table  # the tiled column, in ms


def test_the_floor_is_the_models_for_sxm_h100_and_h200_only() -> None:
    assert gpu_bench.floor_gpu({"gpu": "NVIDIA H100 80GB HBM3"}).name == "H100 SXM"
    assert gpu_bench.floor_gpu({"gpu": "NVIDIA H200"}).name == "H200 SXM"
    assert gpu_bench.floor_gpu({"gpu": "NVIDIA H100 PCIe"}) is None
    assert gpu_bench.floor_gpu({"gpu": None}) is None


def test_a_results_file_with_a_variant_time_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    row = {"dtype": "float32", "batch": 1, "fff_dtype": "float32", "variant_seconds": {"tiled": "fast"}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": [row]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"results\[0\]\.variant_seconds\.tiled: expected a number"):
        gpu_report.read_report(path)


def test_timing_takes_the_median_of_samples() -> None:
    ticks = iter(np.arange(0, 1000, 1.0))  # a clock that advances one second per reading
    stopwatch = Stopwatch(start=lambda: next(ticks), stop=lambda mark: next(ticks) - mark)
    seconds, first = gpu_bench.time_with(lambda x: x, [0, 1], stopwatch, samples=5)
    assert first == 1.0 and seconds == 1.0  # one call per sample (each "lasts" a second), read back exactly


def test_steps_map_exit_codes() -> None:
    assert gpu_bench.read_step("a=0:")["status"] == "passed"
    assert gpu_bench.read_step("a=124:")["status"] == "timed out"
    assert gpu_bench.read_step(f"a={gpu_bench.NOT_STARTED}:")["status"] == "not started"
    assert gpu_bench.read_step("a=2:/nonexistent/log")["log_tail"].startswith("(log unreadable")


def rehearse(tmp_path: Path, **settings: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """gpu_check.sh run as a rehearsal (GPU_CHECK_DRY_RUN=1) with ``settings``, writing into ``tmp_path``:
    the finished process and its results file."""
    env = dict(
        os.environ,
        GPU_CHECK_DRY_RUN="1",
        GPU_CHECK_RESULTS_DIR=str(tmp_path),
        PYTHON=sys.executable,
        GPU_CHECK_COPY_TO="",
        OUT="",
        **settings,
    )
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600, check=False)
    (results,) = tmp_path.glob("gpu_*.json")
    return run, read(results)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_the_whole_script_in_dry_run_records_the_gpu_steps_as_failed(tmp_path: Path) -> None:
    run, report = rehearse(tmp_path, FFF_CHECK_EXAMPLES="1", FFF_CHECK_THOROUGH_EXAMPLES="1", GPU_CHECK_SEEDS="0")
    steps = {step["name"]: step for step in report["steps"]}
    gpu_checks = [
        f"check_{name}seed0"
        for name in ("cupy_", "cupy_thorough_", "cupy_float16_", "torch_cuda_", "torch_cuda_thorough_")
    ]
    assert set(steps) == {"backends", "cuda_tests", *gpu_checks}
    assert steps["cuda_tests"]["status"] == "passed", steps["cuda_tests"]  # the CUDA tests skip with a reason here
    assert steps["backends"]["status"] == "passed"
    for name in gpu_checks:
        runs_here = _torch_cuda_runs_here() if "torch" in name else _cupy_runs_here()
        if runs_here:
            assert steps[name]["status"] == "passed", steps[name]
        else:
            # failed for the right reason: `fff check` ran and said why it cannot run on cuda here
            assert steps[name]["status"] == "failed", steps[name]
            reason = "nothing can run on cuda here" if "torch" in name else "backend 'cupy' is unavailable"
            assert reason in steps[name]["log_tail"], steps[name]
    assert len(report["results"]) == 6, run.stdout + run.stderr  # the benchmark ran after the failed steps
    assert "results:" in run.stdout
    # A dry run expects the GPU steps to fail; it exits 0 when the rest passed, so a rehearsal can pass.
    assert run.returncode == 0, run.stdout[-3000:]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_jobs_that_cannot_start_before_the_deadline_are_recorded_as_not_started(tmp_path: Path) -> None:
    # A correctness phase of 5 s leaves no job the 10 s it needs to start: each one is recorded, none runs.
    run, report = rehearse(
        tmp_path,
        GPU_CHECK_SEEDS="0 1",
        GPU_CHECK_CORRECTNESS_SECONDS="5",
        GPU_CHECK_BENCH_OPTIONS="--dtypes float32 --batches 1 --no-small-batches --no-training",
    )
    steps = {step["name"]: step["status"] for step in report["steps"]}
    assert len(steps) == 1 + 2 * 5 + 1  # backends, five checks per seed, the CUDA tests
    assert steps.pop("backends") == "passed"
    assert set(steps.values()) == {"not started"}, steps
    assert run.returncode == 1  # the CUDA tests did not run: not a pass, even in a dry run
    assert [r["batch"] for r in report["results"]] == [1]  # the benchmark still ran, as asked


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
    quick = ["--dtypes", "float32", "--no-small-batches", "--no-training"]
    assert gpu_bench.main(["--dry-run", "--batches", "1,3", "--out", str(out), *quick]) == 0
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
    copies = tmp_path / "copies"
    env = {**os.environ, "PYTHON": str(broken), "GPU_CHECK_RESULTS_DIR": str(results), "GPU_CHECK_COPY_TO": str(copies)}
    env.pop("OUT", None)
    run = subprocess.run([bash, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1
    assert "cannot import fffcore" in run.stdout and "No module named 'pluggy'" in run.stdout
    assert "=== backends" not in run.stdout  # nothing else ran
    (written,) = results.glob("gpu_*.json")
    report = read(written)
    assert report["mode"] == "gpu" and "fffcore could not be imported" in report["errors"][0]
    # Ended early, it still hands the results file and its logs to the copy folder.
    assert (copies / written.name).read_bytes() == written.read_bytes()
    assert len(list(copies.glob("gpu_check_logs_*.tar.gz"))) == 1
