"""The kernel source compiles, warning-free, for Hopper (sm_90) and an older GPU (sm_75), with nvcc and NVRTC.

nvcc gets exactly the options the backend hands NVRTC (kernel_plan.compile_options)
plus the target, ``-Werror all-warnings`` and ``-Xptxas -v``; the registers, stack
frame and spills ptxas reports are printed with the test output (``-s`` not
needed). The variant the benchmark runs (float32 gelu, width 768) must not
spill on sm_90, nor may the tiled kernel in any variant (it keeps one w_in row
and a few w_out values in registers, its rows' x and sums in shared memory).
The NVRTC test compiles the same variants as cupy.RawModule
would (cupy adds ``--device-as-default-execution-space`` and the target) and
needs cupy with its NVRTC library, but no GPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fffcore.backends.cupy import kernel_plan
from fffcore.backends.cupy.kernel_plan import KernelConfig, compile_options, kernel_config, kernel_source

SOURCE_PATH = Path(kernel_plan.__file__).resolve().parent / kernel_plan.KERNEL_SOURCE_FILE
ARCHITECTURES = ("sm_90", "sm_75")


def config(dtype: str, activation: str, bias: bool, d_in: int, d_out: int, aligned: bool = True) -> KernelConfig:
    return kernel_config(
        dtype=dtype,
        activation=activation,
        has_bias=bias,
        d_in=d_in,
        d_out=d_out,
        in_addresses=(0 if aligned else 4,),
        out_addresses=(0,),
    )


BENCHMARK_VARIANT = "float32-gelu-768"
# One variant per code path: registers vs streamed x, vector widths 8/4/2/1, every activation and storage type,
# with and without bias.
VARIANTS = {
    BENCHMARK_VARIANT: config("float32", "gelu", True, 768, 768),
    "float64-gelu_tanh-768": config("float64", "gelu_tanh", True, 768, 768),
    "float32-silu-4096-streamed-nobias": config("float32", "silu", False, 4096, 1024),
    "float32-relu-unaligned": config("float32", "relu", True, 100, 30, aligned=False),
    "float64-identity-13": config("float64", "identity", False, 13, 7),
    "float16-gelu-768": config("float16", "gelu", True, 768, 768),
    "bfloat16-silu-768": config("bfloat16", "silu", True, 768, 768),
}

PTXAS_FUNCTION = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")


def parse_ptxas(log: str) -> list[dict[str, object]]:
    """One entry per (kernel, architecture): registers, stack frame bytes, spill store and load bytes."""
    entries: list[dict[str, object]] = []
    for line in log.splitlines():
        if match := PTXAS_FUNCTION.search(line):
            entries.append({"kernel": match.group(1), "arch": match.group(2)})
        elif (match := PTXAS_FRAME.search(line)) and entries:
            frame, stores, loads = (int(group) for group in match.groups())
            entries[-1].update(stack=frame, spill_stores=stores, spill_loads=loads)
        elif (match := PTXAS_REGISTERS.search(line)) and entries:
            entries[-1]["registers"] = int(match.group(1))
    return entries


def test_parse_ptxas_reads_registers_and_spills() -> None:
    log = (
        "ptxas info    : Compiling entry function 'fff_forward' for 'sm_90'\n"
        "ptxas info    : Function properties for fff_forward\n"
        "    8 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 80 registers, used 0 barriers, 8 bytes cumulative stack size\n"
    )
    assert parse_ptxas(log) == [
        {"kernel": "fff_forward", "arch": "sm_90", "stack": 8, "spill_stores": 8, "spill_loads": 12, "registers": 80}
    ]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_nvcc_compiles_without_warnings(variant: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH (install the CUDA toolkit to run the compile test)")
    targets = [f"-gencode=arch=compute_{arch[3:]},code={arch}" for arch in ARCHITECTURES]
    command = [
        nvcc,
        *compile_options(VARIANTS[variant]),
        *targets,
        "--fatbin",
        "-Werror",
        "all-warnings",
        "-Xptxas",
        "-v",
        "-x",
        "cu",
        str(SOURCE_PATH),
        "-o",
        str(tmp_path / "kernels.fatbin"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"nvcc failed for {variant}:\n{' '.join(command)}\n{log}"
    assert "warning" not in log.lower(), log

    entries = parse_ptxas(log)
    expected = {(kernel, arch) for kernel in kernel_plan.KERNEL_NAMES for arch in ARCHITECTURES}
    assert {(e["kernel"], e["arch"]) for e in entries} == expected
    with capsys.disabled():
        for entry in entries:
            print(
                f"\n  [ptxas] {variant:<36} {entry['kernel']:<24} {entry['arch']}: "
                f"{entry['registers']:>3} registers, {entry['stack']} B stack, "
                f"{entry['spill_stores']} B spill stores, {entry['spill_loads']} B spill loads",
                end="",
            )
    hopper = [e for e in entries if e["arch"] == "sm_90"]
    must_not_spill = hopper if variant == BENCHMARK_VARIANT else []
    must_not_spill += [e for e in hopper if e["kernel"] == kernel_plan.TILED_KERNEL_NAME]
    assert all(e["spill_stores"] == 0 and e["spill_loads"] == 0 for e in must_not_spill), must_not_spill


def _nvrtc_or_skip():  # cupy's module, untyped
    cupy = pytest.importorskip("cupy", reason="the NVRTC compile test needs cupy (and its NVRTC library)")
    nvrtc = cupy.cuda.nvrtc
    try:
        nvrtc.getVersion()
    except Exception as error:
        pytest.skip(f"cupy cannot load NVRTC here: {error}")
    return nvrtc


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_nvrtc_compiles_without_warnings(variant: str, arch: str) -> None:
    nvrtc = _nvrtc_or_skip()
    program = nvrtc.createProgram(kernel_source(), kernel_plan.KERNEL_SOURCE_FILE, [], [])
    try:
        options = [*compile_options(VARIANTS[variant]), f"-arch={arch}", "--device-as-default-execution-space"]
        try:
            nvrtc.compileProgram(program, options)
        except Exception as error:
            pytest.fail(f"NVRTC failed for {variant} on {arch}: {error}\n{nvrtc.getProgramLog(program)}")
        log = nvrtc.getProgramLog(program)
        assert "warning" not in log.lower(), log
        assert len(nvrtc.getCUBIN(program)) > 0
    finally:
        nvrtc.destroyProgram(program)
