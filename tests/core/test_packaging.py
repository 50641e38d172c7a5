"""The wheel holds the library and nothing else, every library module under its fffcore.* name, and each
imports from an installed wheel, away from the checkout.

One wheel is built per test session, from a scratch copy of the files a build reads (so no build/ or
egg-info folder is left in the checkout, and nothing stale in them can leak into the wheel).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Root folder of the checkout -> the package it becomes (setup.py's mapping, restated to test it).
ROOTS = {
    "fffcore": "fffcore",
    "backends": "fffcore.backends",
    "reference": "fffcore.reference",
    "conformance": "fffcore.conformance",
    "benchmarks": "fffcore.benchmarks",
}
#: Folders under the roots that belong to the repository only: the studies, the pytest-benchmark suite.
REPOSITORY_ONLY = ("benchmarks/studies", "benchmarks/test_suite")
#: The one test-named module that is library: the conformance suite as pytest tests, for
#: ``pytest --pyargs fffcore.conformance --fff-backend NAME``.
LIBRARY_TEST_MODULES = {"fffcore/conformance/test_conformance_suite.py"}
#: Data files the library reads at run time.
PACKAGE_DATA = {"fffcore/py.typed", "fffcore/backends/cupy/fff_kernels.cu"}
#: Modules that import cupy at module level, which is not installed here (and cannot be without a GPU).
NEEDS_CUPY = {"fffcore.backends.cupy.runtime"}
#: What a build reads: pyproject.toml, setup.py, the README (the long description) and the roots.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", *ROOTS)


def library_files() -> dict[str, Path]:
    """Wheel path (``fffcore/backends/numba/kernels.py``) -> the checkout's file, for every library module."""
    found = {}
    for folder, package in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if "__pycache__" in path.parts or relative.startswith(REPOSITORY_ONLY):
                continue
            inside = path.relative_to(REPO / folder).as_posix()
            found[f"{package.replace('.', '/')}/{inside}"] = path
    return found


def module_name(wheel_path: str) -> str:
    return wheel_path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools: pip install 'setuptools>=68'")
    source = tmp_path_factory.mktemp("source")
    ignored = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    for name in BUILD_INPUTS:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=ignored)
        else:
            shutil.copy2(origin, source / name)
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."]
    built = subprocess.run(command, cwd=source, capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("fffcore-*.whl")
    return path


@pytest.fixture(scope="module")
def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name for name in archive.namelist() if ".dist-info/" not in name}


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("installed")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target)]
    command.append(str(wheel))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def run_installed(installed: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python -S ARGV`` that sees the installed wheel and this environment's third-party libraries only:
    no site processing, so neither the checkout's editable install nor the checkout itself is on the path."""
    libraries = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), *libraries])}
    environment.pop("PYTHONSTARTUP", None)
    return subprocess.run(
        [sys.executable, "-S", *argv],
        cwd=installed.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_every_library_module_is_in_the_wheel_under_its_fffcore_name(wheel_files: set[str]) -> None:
    expected = set(library_files())
    assert "fffcore/backends/numba/kernels.py" in expected and "fffcore/benchmarks/gpu_report.py" in expected
    missing = sorted(expected - wheel_files)
    assert not missing, f"library modules missing from the wheel: {missing}"
    assert PACKAGE_DATA <= wheel_files, f"package data missing: {sorted(PACKAGE_DATA - wheel_files)}"


def test_the_wheel_holds_nothing_else(wheel_files: set[str]) -> None:
    extra = sorted(wheel_files - set(library_files()) - PACKAGE_DATA)
    assert not extra, f"not library, yet in the wheel: {extra}"
    test_like = sorted(
        name
        for name in wheel_files
        if name.rsplit("/", 1)[-1].startswith(("test_", "conftest")) and name not in LIBRARY_TEST_MODULES
    )
    assert not test_like, f"tests in the wheel: {test_like}"
    assert not [name for name in wheel_files if name.startswith(("tests/", "fffcore/benchmarks/studies/"))]
    assert {name.split("/", 1)[0] for name in wheel_files} == {"fffcore"}


def test_every_library_module_imports_from_the_installed_wheel(installed: Path) -> None:
    modules = sorted(module_name(path) for path in library_files())
    wanted = [name for name in modules if name not in NEEDS_CUPY or importlib.util.find_spec("cupy") is not None]
    script = (
        "import importlib, json, sys\n"
        "failed = {}\n"
        f"for name in {wanted!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        failed[name] = f'{type(error).__name__}: {error}'\n"
        "import fffcore\n"
        "print(json.dumps({'failed': failed, 'from': fffcore.__file__,\n"
        "                  'checkout': [m for m in sys.modules if m.split('.')[0] in ('benchmarks', 'tests')]}))\n"
    )
    run = run_installed(installed, "-c", script)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(report["from"]).is_relative_to(installed), report["from"]
    assert report["failed"] == {}, report["failed"]
    assert report["checkout"] == []


def test_fff_compare_prints_gpu_results_from_the_installed_wheel(installed: Path) -> None:
    """--gpu-results needs the report module of the library only, not the GPU study (which is not installed)."""
    results = REPO / "benchmarks" / "results" / "gpu-h200-20261129.json"
    run = run_installed(installed, "-m", "fffcore.cli", "compare", "--gpu-results", str(results))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("GPU benchmark (gpu, ") and "float32     4096" in run.stdout
